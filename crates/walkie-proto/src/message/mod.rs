//! Messages beside voice clips: text, pictures and doodles. Their kinds, their limits, how a
//! stored payload is laid out, and the checks the relay runs on what a sender uploads, with
//! no I/O (decoding pictures and drawing doodles is the relay's, with an image library).
//!
//! A message is stored and delivered exactly as a clip is (same ids bound to their sender,
//! same inboxes, same order by the relay's seq); only its payload differs:
//!
//! | kind | payload the sender uploads | payload the relay stores |
//! |---|---|---|
//! | text | UTF-8, at most [`MAX_TEXT_CHARS`] characters | the same bytes |
//! | picture | a JPEG or PNG of at most [`MAX_PICTURE_SIDE`] px a side | the picture encoded again, then a thumbnail of at most [`THUMB_SIDE`] px ([`Content::Picture::thumb`] bytes) |
//! | doodle | strokes as JSON ([`doodle`]) | the strokes as canonical JSON, then a rendered PNG ([`Content::Doodle::png`] bytes) |

pub mod doodle;

use serde::{Deserialize, Serialize};

use crate::assemble::Refusal;
use crate::clip::{ClipId, Target};
use crate::wire::ErrorCode;

/// Longest text, in characters (Unicode scalar values).
pub const MAX_TEXT_CHARS: usize = 4_000;
/// Largest picture a client reads from disk before preparing it.
pub const MAX_PICTURE_FILE: usize = 10 * 1024 * 1024;
/// Largest picture upload the relay reads (the client's prepared JPEG or PNG).
pub const MAX_PICTURE_UPLOAD: usize = 10 * 1024 * 1024;
/// Longest side of a stored picture, in pixels: clients scale larger pictures down to it.
pub const MAX_PICTURE_SIDE: u32 = 2_560;
/// Longest side of a picture's thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 320;
/// Largest payload any message kind stores (a picture with its thumbnail), which is also what a
/// recipient accepts in one delivery.
pub const MAX_STORED_PAYLOAD: usize = 16 * 1024 * 1024;

/// What a sender says it uploads (a clip is not a message: it has its own upload).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// A JPEG or PNG picture.
    Picture,
    /// Strokes as JSON ([`doodle`]).
    Doodle,
}

impl Kind {
    /// The kind's name in the CLI's lines and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Picture => "picture",
            Kind::Doodle => "doodle",
        }
    }

    /// The most bytes a sender may upload for this kind; checked as each chunk arrives,
    /// before it is kept.
    pub fn max_upload(self) -> usize {
        match self {
            // Four bytes per character at most.
            Kind::Text => MAX_TEXT_CHARS * 4,
            Kind::Picture => MAX_PICTURE_UPLOAD,
            Kind::Doodle => doodle::MAX_JSON,
        }
    }
}

/// The first frame of a message's upload stream: the sender-chosen id (bound to the sender as
/// a clip's is), the target and the kind. Chunks of the payload follow, then the end marker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageHeader {
    /// The sender-chosen id.
    pub id: ClipId,
    /// Channel or user.
    pub to: Target,
    /// What follows.
    pub kind: Kind,
}

/// Format of a stored picture.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PictureFormat {
    /// JPEG (pictures without transparency).
    Jpeg,
    /// PNG (pictures with transparency, and thumbnails of them).
    Png,
}

impl PictureFormat {
    /// The file extension.
    pub fn ext(self) -> &'static str {
        match self {
            PictureFormat::Jpeg => "jpg",
            PictureFormat::Png => "png",
        }
    }
}

/// What a stored item holds, in its metadata: a voice clip, or a message of a kind with the
/// facts about it a list shows without fetching it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Content {
    /// Opus audio (every item stored before messages existed).
    #[default]
    Voice,
    /// Text of this many characters.
    Text {
        /// Characters.
        chars: u32,
    },
    /// A picture, then its thumbnail.
    Picture {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Format of the picture and of its thumbnail.
        format: PictureFormat,
        /// Bytes of the thumbnail at the end of the payload.
        thumb: u32,
    },
    /// A doodle's strokes, then its rendering.
    Doodle {
        /// Canvas width.
        width: u32,
        /// Canvas height.
        height: u32,
        /// Strokes drawn.
        strokes: u32,
        /// Points over all strokes.
        points: u32,
        /// Bytes of the rendered PNG at the end of the payload.
        png: u32,
    },
    /// Recalled by its sender: the payload is gone.
    Recalled,
}

impl Content {
    /// The kind's name: `voice`, `text`, `picture`, `doodle` or `recalled`.
    pub fn name(&self) -> &'static str {
        match self {
            Content::Voice => "voice",
            Content::Text { .. } => "text",
            Content::Picture { .. } => "picture",
            Content::Doodle { .. } => "doodle",
            Content::Recalled => "recalled",
        }
    }

    /// True for a voice clip.
    pub fn is_voice(&self) -> bool {
        matches!(self, Content::Voice)
    }
}

/// A stored payload cut into its parts, as [`Content`] lays it out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Parts<'a> {
    /// Ogg Opus audio.
    Voice(&'a [u8]),
    /// The text.
    Text(&'a str),
    /// The picture and its thumbnail.
    Picture {
        /// The full picture.
        full: &'a [u8],
        /// The thumbnail.
        thumb: &'a [u8],
    },
    /// The strokes (JSON) and the rendered PNG.
    Doodle {
        /// Canonical JSON strokes.
        strokes: &'a [u8],
        /// The rendered PNG.
        png: &'a [u8],
    },
    /// Nothing: recalled.
    Recalled,
}

/// Why a payload does not match its content (a corrupt store or a lying relay).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {kind} payload of {len} bytes does not match its description")]
pub struct PartsError {
    /// The kind's name.
    pub kind: &'static str,
    /// Bytes in the payload.
    pub len: usize,
}

/// Cuts `payload` into the parts `content` describes.
pub fn parts<'a>(content: &Content, payload: &'a [u8]) -> Result<Parts<'a>, PartsError> {
    let bad = || PartsError {
        kind: content.name(),
        len: payload.len(),
    };
    let tail = |n: u32| {
        payload
            .len()
            .checked_sub(n as usize)
            .filter(|&cut| cut > 0)
            .ok_or_else(bad)
    };
    Ok(match content {
        Content::Voice => Parts::Voice(payload),
        Content::Text { .. } => Parts::Text(std::str::from_utf8(payload).map_err(|_| bad())?),
        Content::Picture { thumb, .. } => {
            let cut = tail(*thumb)?;
            Parts::Picture {
                full: &payload[..cut],
                thumb: &payload[cut..],
            }
        }
        Content::Doodle { png, .. } => {
            let cut = tail(*png)?;
            Parts::Doodle {
                strokes: &payload[..cut],
                png: &payload[cut..],
            }
        }
        Content::Recalled => Parts::Recalled,
    })
}

/// Checks an uploaded text: valid UTF-8, 1 to [`MAX_TEXT_CHARS`] characters, no control
/// characters but newline and tab. Returns the number of characters.
pub fn check_text(bytes: &[u8]) -> Result<u32, Refusal> {
    let bad = |m: String| Refusal::new(ErrorCode::BadRequest, m);
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("a text must be UTF-8: {e}")))?;
    let chars = text.chars().count();
    if text.trim().is_empty() {
        return Err(bad("a text must not be empty".into()));
    }
    if chars > MAX_TEXT_CHARS {
        return Err(bad(format!(
            "a text is at most {MAX_TEXT_CHARS} characters, not {chars}"
        )));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(bad(format!(
            "a text may not hold the control character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(chars as u32)
}

/// What the relay does with a message once it knows who gets it and whether its id is taken
/// (the same rules as a clip's, see [`crate::upload`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Another sender's id, stored or being uploaded: refused as a fetch of it would be
    /// ([`crate::upload::not_readable`]), after costing one of the sender's rate, so ids can
    /// be neither probed nor hijacked.
    Probe,
    /// The sender's own message, stored already (a resend): acknowledged again, nothing read.
    Resend {
        /// Its seq.
        seq: u64,
    },
    /// A new message for these recipients (the sender left out).
    New {
        /// Whose inboxes it goes to.
        recipients: Vec<String>,
    },
}

/// Decides a message's admission from the relay's answer to "who gets it, is the id taken".
pub fn admission(sender: &str, checked: crate::upload::Checked) -> Admission {
    let foreign = |from: Option<&String>| from.is_some_and(|f| f != sender);
    if foreign(checked.stored.as_ref().map(|(from, _)| from)) || foreign(checked.in_flight.as_ref())
    {
        return Admission::Probe;
    }
    if let Some((_, seq)) = checked.stored {
        return Admission::Resend { seq };
    }
    Admission::New {
        recipients: checked
            .recipients
            .into_iter()
            .filter(|r| r != sender)
            .collect(),
    }
}

/// The payload of one message as its upload stream delivers it: chunks kept up to the kind's
/// cap (checked before each chunk is kept), then the end marker with the chunk count.
#[derive(Debug)]
pub struct MessageAssembler {
    kind: Kind,
    bytes: Vec<u8>,
    chunks: u32,
}

impl MessageAssembler {
    /// Starts receiving a message of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            bytes: Vec::new(),
            chunks: 0,
        }
    }

    /// Keeps one chunk, or refuses the message if it would pass the kind's cap (or if the
    /// chunk is empty: a stream of empty chunks would cost the relay without end).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        if chunk.is_empty() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "a message chunk must not be empty",
            ));
        }
        let max = self.kind.max_upload();
        if self.bytes.len().saturating_add(chunk.len()) > max {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("a {} upload is at most {max} bytes", self.kind.name()),
            ));
        }
        self.bytes.extend_from_slice(chunk);
        self.chunks += 1;
        Ok(())
    }

    /// The payload, once the end marker says how many chunks were sent.
    pub fn finish(self, chunks: u32) -> Result<Vec<u8>, Refusal> {
        if chunks != self.chunks {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "the message ended after {} chunks but claims {chunks}",
                    self.chunks
                ),
            ));
        }
        if self.bytes.is_empty() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("a {} message must not be empty", self.kind.name()),
            ));
        }
        Ok(self.bytes)
    }
}

/// The one-line detail of a message in `walkie listen`: the text JSON-escaped, a picture's
/// `WIDTHxHEIGHT BYTES`, a doodle's stroke count, or `recalled`.
pub fn detail(content: &Content, payload: &[u8]) -> String {
    match (content, parts(content, payload)) {
        (_, Ok(Parts::Text(text))) => json_string(text),
        (Content::Picture { width, height, .. }, Ok(Parts::Picture { full, .. })) => {
            format!("{width}x{height} {}", full.len())
        }
        (Content::Doodle { strokes, .. }, _) => strokes.to_string(),
        (Content::Recalled, _) => "recalled".into(),
        (_, _) => format!("{} bytes", payload.len()),
    }
}

/// `s` as a JSON string literal on one line (control characters, quotes and backslashes
/// escaped, so a text cannot move a terminal's cursor or break a line-based reader).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_checked_for_encoding_length_and_controls() {
        assert_eq!(check_text("héllo 你好".as_bytes()), Ok(8));
        assert_eq!(check_text(b"two\nlines\tand a tab"), Ok(19));
        assert!(
            check_text(&[0x66, 0xff, 0x66])
                .unwrap_err()
                .message
                .contains("UTF-8")
        );
        assert!(check_text(b"  \n").unwrap_err().message.contains("empty"));
        assert!(
            check_text(b"a\x1b[2Jb")
                .unwrap_err()
                .message
                .contains("U+001B")
        );
        assert_eq!(check_text("字".repeat(4000).as_bytes()), Ok(4000));
        assert!(
            check_text("字".repeat(4001).as_bytes())
                .unwrap_err()
                .message
                .contains("4001")
        );
    }

    #[test]
    fn the_assembler_refuses_past_the_cap_before_keeping_and_checks_the_count() {
        let mut a = MessageAssembler::new(Kind::Text);
        a.push(&[b'a'; 10_000]).expect("fits");
        let refused = a.push(&[b'a'; 6_001]).unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooLarge);
        assert_eq!(a.bytes.len(), 10_000, "the refused chunk was not kept");
        assert!(a.finish(2).unwrap_err().message.contains("claims 2"));
        assert!(
            MessageAssembler::new(Kind::Text)
                .push(b"")
                .unwrap_err()
                .message
                .contains("empty")
        );
        let mut b = MessageAssembler::new(Kind::Picture);
        b.push(b"ab").expect("fits");
        b.push(b"cd").expect("fits");
        assert_eq!(b.finish(2), Ok(b"abcd".to_vec()));
        assert!(MessageAssembler::new(Kind::Doodle).finish(0).is_err());
    }

    #[test]
    fn admission_follows_the_clip_rules_for_ids() {
        use crate::upload::Checked;
        let checked = |stored: Option<(&str, u64)>, in_flight: Option<&str>| Checked {
            recipients: vec!["alice".into(), "bob".into()],
            stored: stored.map(|(f, s)| (f.to_string(), s)),
            in_flight: in_flight.map(String::from),
        };
        assert_eq!(
            admission("alice", checked(None, None)),
            Admission::New {
                recipients: vec!["bob".into()]
            }
        );
        assert_eq!(
            admission("alice", checked(Some(("alice", 9)), None)),
            Admission::Resend { seq: 9 }
        );
        assert_eq!(
            admission("alice", checked(Some(("bob", 9)), None)),
            Admission::Probe
        );
        assert_eq!(
            admission("alice", checked(None, Some("bob"))),
            Admission::Probe
        );
        assert_eq!(
            admission("alice", checked(None, Some("alice"))),
            Admission::New {
                recipients: vec!["bob".into()]
            }
        );
    }

    #[test]
    fn payloads_split_as_their_content_says_and_lies_are_caught() {
        let pic = Content::Picture {
            width: 2,
            height: 1,
            format: PictureFormat::Png,
            thumb: 3,
        };
        assert_eq!(
            parts(&pic, b"fullthb"),
            Ok(Parts::Picture {
                full: b"full",
                thumb: b"thb"
            })
        );
        assert!(
            parts(&pic, b"thb").is_err(),
            "no full picture before the thumbnail"
        );
        let big = Content::Doodle {
            width: 1,
            height: 1,
            strokes: 1,
            points: 1,
            png: u32::MAX,
        };
        assert!(parts(&big, b"abc").is_err());
        assert!(parts(&Content::Text { chars: 1 }, &[0xff]).is_err());
        assert_eq!(parts(&Content::Recalled, b""), Ok(Parts::Recalled));
    }

    #[test]
    fn details_are_one_line_and_escape_what_a_terminal_would_obey() {
        let text = "say \"hi\"\n\x1b[31m\u{2028}";
        let line = detail(&Content::Text { chars: 9 }, text.as_bytes());
        assert_eq!(line, r#""say \"hi\"\n\u001b[31m\u2028""#);
        let back: String = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back, text);
        let pic = Content::Picture {
            width: 640,
            height: 480,
            format: PictureFormat::Jpeg,
            thumb: 2,
        };
        assert_eq!(detail(&pic, b"12345xx"), "640x480 5");
        let doodle = Content::Doodle {
            width: 1,
            height: 1,
            strokes: 7,
            points: 9,
            png: 1,
        };
        assert_eq!(detail(&doodle, b"{}p"), "7");
    }
}
