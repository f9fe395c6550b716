//! Display names: what people see beside a login name. Any script (`Zoë`, `张伟`), normalised
//! to NFC so that one name has one spelling, 1-64 characters once trimmed, and none of the
//! characters that hide or reorder text (controls, bidirectional overrides and isolates).

use unicode_normalization::UnicodeNormalization;

/// Longest display name, in characters (Unicode scalar values) after NFC.
pub const MAX_DISPLAY_CHARS: usize = 64;

/// Why a display name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty once surrounding white space is trimmed.
    #[error("a display name cannot be empty")]
    Empty,
    /// Longer than [`MAX_DISPLAY_CHARS`].
    #[error("a display name has at most {MAX_DISPLAY_CHARS} characters, not {0}")]
    TooLong(usize),
    /// Holds a character that would hide or reorder text.
    #[error("a display name cannot contain the character U+{0:04X}")]
    Forbidden(u32),
}

/// True for characters that would hide text or make it read in another order than stored.
fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// The display name as stored: NFC, trimmed, checked. The input's length is checked before
/// normalising so that a huge input costs nothing.
pub fn validate_display_name(name: &str) -> Result<String, NameError> {
    if name.len() > MAX_DISPLAY_CHARS * 4 * 4 {
        return Err(NameError::TooLong(name.chars().count()));
    }
    let nfc: String = name.trim().nfc().collect();
    if let Some(c) = nfc.chars().find(|&c| forbidden(c)) {
        return Err(NameError::Forbidden(u32::from(c)));
    }
    match nfc.chars().count() {
        0 => Err(NameError::Empty),
        n if n > MAX_DISPLAY_CHARS => Err(NameError::TooLong(n)),
        _ => Ok(nfc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_script_is_welcome_and_normalised_to_nfc() {
        assert_eq!(
            validate_display_name("  Zoe\u{0308} Ab  "),
            Ok("Zoë Ab".to_string())
        );
        assert_eq!(validate_display_name("张伟"), Ok("张伟".to_string()));
        assert_eq!(
            validate_display_name("Alice 👩‍🚀"),
            Ok("Alice 👩‍🚀".to_string())
        );
        assert_eq!(
            validate_display_name(&"é".repeat(64)).map(|n| n.chars().count()),
            Ok(64)
        );
    }

    #[test]
    fn empty_long_and_hiding_names_are_refused() {
        assert_eq!(validate_display_name("   "), Err(NameError::Empty));
        assert_eq!(
            validate_display_name(&"a".repeat(65)),
            Err(NameError::TooLong(65))
        );
        assert!(matches!(
            validate_display_name(&"a".repeat(10_000)),
            Err(NameError::TooLong(_))
        ));
        assert_eq!(
            validate_display_name("a\nb"),
            Err(NameError::Forbidden(0x0A))
        );
        assert_eq!(
            validate_display_name("evil\u{202E}gpj.exe"),
            Err(NameError::Forbidden(0x202E))
        );
        assert_eq!(
            validate_display_name("x\u{1b}[31m"),
            Err(NameError::Forbidden(0x1B))
        );
    }
}
