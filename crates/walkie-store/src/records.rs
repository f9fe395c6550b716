//! Records: small values under structured keys, written with compare-and-set. The relay keeps
//! everything about people in them (invites, profiles, contacts, who owns a channel); the
//! store only keeps the bytes, as it keeps clips without judging them.
//!
//! A key is a short list of tokens (`["invite", HASH]`, `["user", NAME]`). Every backend
//! stores it in one encoded form, [`record_key`]: each token with [`encode_token`], joined
//! by `.`. The encoding keeps `[A-Za-z0-9_-]` and writes every other byte as `=XX`, so a
//! token never contains a `.` and a prefix of tokens is a prefix of keys.

use crate::StoreError;

/// Largest record value a store accepts (a profile with its contacts stays far below).
pub const MAX_RECORD: usize = 512 * 1024;

/// Most tokens in one key.
pub const MAX_KEY_TOKENS: usize = 4;

/// Longest token, in bytes before encoding.
pub const MAX_TOKEN: usize = 128;

/// A record's value and its revision (never 0: 0 means "absent" to [`crate::Store::put_record`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The bytes last written.
    pub value: Vec<u8>,
    /// Changes on every write of this key.
    pub rev: u64,
}

/// Encodes one token: `[A-Za-z0-9_-]` stay, every other byte becomes `=XX` (hex). Injective;
/// the empty token is `=`, which no other token encodes to.
pub fn encode_token(token: &str) -> String {
    if token.is_empty() {
        return "=".to_string();
    }
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_token`]; `None` if `token` is not an encoded token.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The stored form of a key (tokens encoded and joined by `.`), after checking its shape.
pub fn record_key(tokens: &[&str]) -> Result<String, StoreError> {
    if tokens.is_empty() || tokens.len() > MAX_KEY_TOKENS {
        return Err(StoreError::Corrupt(format!(
            "a record key has 1 to {MAX_KEY_TOKENS} tokens, not {}",
            tokens.len()
        )));
    }
    if let Some(t) = tokens.iter().find(|t| t.len() > MAX_TOKEN) {
        return Err(StoreError::Corrupt(format!(
            "a record key token is at most {MAX_TOKEN} bytes, not {}",
            t.len()
        )));
    }
    Ok(tokens
        .iter()
        .map(|t| encode_token(t))
        .collect::<Vec<_>>()
        .join("."))
}

/// The stored form of every key under `prefix`: the prefix's key and a final `.`.
pub fn record_prefix(prefix: &[&str]) -> Result<String, StoreError> {
    Ok(format!("{}.", record_key(prefix)?))
}

/// A stored key back as tokens; `None` if it is not one [`record_key`] writes.
pub fn parse_record_key(key: &str) -> Option<Vec<String>> {
    key.split('.').map(decode_token).collect()
}

/// Stored keys back as tokens, sorted as tokens (what [`crate::Store::record_keys`] returns);
/// a key [`record_key`] would not write is corruption.
pub fn parse_record_keys<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<Vec<String>>, StoreError> {
    let mut out = keys
        .into_iter()
        .map(|k| {
            parse_record_key(k).ok_or_else(|| StoreError::Corrupt(format!("record key {k:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// Checks a value's size before it is written.
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_RECORD {
        return Err(StoreError::Corrupt(format!(
            "a record is at most {MAX_RECORD} bytes, not {}",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_every_token_and_parse_back() {
        let key = record_key(&["user", "zoë.x", ""]).expect("valid");
        assert_eq!(key, "user.zo=C3=AB=2Ex.=");
        assert_eq!(
            parse_record_key(&key),
            Some(vec!["user".to_string(), "zoë.x".into(), "".into()])
        );
        assert!(
            record_prefix(&["user"])
                .expect("valid")
                .starts_with("user.")
        );
        assert!(
            !key.starts_with(&record_prefix(&["use"]).expect("valid")),
            "a prefix is whole tokens"
        );
    }

    #[test]
    fn bad_keys_and_values_are_refused() {
        assert!(record_key(&[]).is_err());
        assert!(record_key(&["a", "b", "c", "d", "e"]).is_err());
        assert!(record_key(&[&"x".repeat(MAX_TOKEN + 1)]).is_err());
        assert!(check_value(&vec![0; MAX_RECORD + 1]).is_err());
        assert!(check_value(&vec![0; MAX_RECORD]).is_ok());
        assert_eq!(decode_token("=G1"), None);
    }
}
