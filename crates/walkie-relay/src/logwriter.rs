//! The relay's log writer: every line goes to stderr with control characters escaped
//! ([`walkie_proto::logsafe`]), whichever field of whichever message carried them, so a peer
//! cannot forge or recolour a log line through a name, a client string or an error text.

use std::io::{self, Write};

/// Writes formatted log lines to stderr, escaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping(io::stderr().lock())
    }
}

/// A writer that escapes each line written to it (the formatter writes one line per call).
pub struct Escaping<W: Write>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(walkie_proto::logsafe::escape_line(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_with_a_forged_line_stays_on_one_line() {
        let mut out = Escaping(Vec::new());
        let line = "INFO session opened client=evil\n2026-11-29 INFO user removed\x1b[31m\n";
        out.write_all(line.as_bytes()).expect("written");
        let text = String::from_utf8(out.0).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with('\n') && !text.contains('\x1b'), "{text:?}");
    }
}
