//! Making peer-controlled text safe for a log line: control characters (newlines, escape
//! sequences, C1 controls) and the invisible characters that reorder text on a terminal are
//! written as `\u{..}` escapes, so nobody can forge a log line, recolour a terminal or hide text.

use std::borrow::Cow;

/// True for characters a log line must not carry raw.
fn unsafe_in_log(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates (the "Trojan Source" characters).
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
        // Line and paragraph separators start new lines in some viewers.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every unsafe character escaped; borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_in_log) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_in_log(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A whole formatted log line: everything escaped except the one newline that ends it.
pub fn escape_line(line: &str) -> Cow<'_, str> {
    match line.strip_suffix('\n') {
        Some(body) => match escape(body) {
            Cow::Borrowed(_) => Cow::Borrowed(line),
            Cow::Owned(mut s) => {
                s.push('\n');
                Cow::Owned(s)
            }
        },
        None => escape(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_escape_sequences_are_written_out() {
        let forged = "app\n2026-11-29T10:00:00Z  INFO session opened user=admin\x1b[2J\u{202E}";
        let safe = escape(forged);
        assert!(
            !safe.chars().any(|c| c.is_control() || c == '\u{202E}'),
            "{safe}"
        );
        assert!(
            safe.contains("\\u{a}2026")
                && safe.contains("\\u{1b}[2J")
                && safe.contains("\\u{202e}"),
            "{safe}"
        );
        assert!(
            matches!(escape("Zoë 张伟 walkie-cli/0.4"), Cow::Borrowed(_)),
            "printable text is untouched"
        );
        assert_eq!(escape_line("one line\n"), "one line\n");
        assert_eq!(escape_line("a\nb\n"), "a\\u{a}b\n");
        assert_eq!(escape_line("tab\there"), "tab\\u{9}here");
    }
}
