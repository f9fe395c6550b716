//! Tokens: generation, hashing for storage, and constant-time verification.
//!
//! A token is 256 random bits written as 64 hex digits. The store keeps only its SHA-256:
//! with 256 bits of entropy a salt or a slow hash adds nothing, and a leaked database does
//! not reveal any token.

use subtle::ConstantTimeEq;

use walkie_store::TokenHash;

/// A fresh random token (64 hex digits).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The hash stored for a token.
pub fn hash_token(token: &str) -> TokenHash {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// True if `token` hashes to `stored`, compared in constant time.
pub fn token_matches(token: &str, stored: &TokenHash) -> bool {
    hash_token(token).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verify_only_themselves() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(token_matches(&a, &hash_token(&a)));
        assert!(!token_matches(&b, &hash_token(&a)));
        assert!(!token_matches("", &hash_token(&a)));
    }
}
