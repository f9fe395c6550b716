//! A doodle as the wire and the files carry it: strokes with colours, widths and timing, as
//! JSON, checked against limits before the relay draws it.
//!
//! ```json
//! {
//!   "width": 640, "height": 480, "background": "#ffffff",
//!   "strokes": [
//!     { "color": "#d03030", "width": 4.0, "points": [[12.0, 30.5, 0], [14.0, 31.0, 16]] }
//!   ]
//! }
//! ```
//! `width` × `height` is the canvas (16 to [`MAX_CANVAS`] px a side); each point is `x`, `y`
//! (inside the canvas) and the milliseconds since the doodle began when it was drawn, so a
//! recipient can watch it being drawn. Colours are `#rrggbb` or `#rrggbbaa`; `background` may
//! be left out (white). Unknown fields are dropped: the relay stores the canonical form
//! [`Doodle::to_json`] writes.

use serde::{Deserialize, Serialize};

use crate::assemble::Refusal;
use crate::wire::ErrorCode;

/// Largest doodle JSON accepted, in bytes.
pub const MAX_JSON: usize = 2 * 1024 * 1024;
/// Longest side of a doodle's canvas, in pixels.
pub const MAX_CANVAS: u32 = 2_048;
/// Smallest side of a doodle's canvas, in pixels.
pub const MIN_CANVAS: u32 = 16;
/// Most strokes in one doodle.
pub const MAX_STROKES: usize = 2_000;
/// Most points over all strokes of one doodle.
pub const MAX_POINTS: usize = 50_000;
/// Widest stroke, in pixels.
pub const MAX_STROKE_WIDTH: f32 = 64.0;
/// Latest point time: ten minutes after the doodle began.
pub const MAX_TIME_MS: u32 = 600_000;

/// A colour, `#rrggbb` or `#rrggbbaa` in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Colour(pub [u8; 4]);

impl Colour {
    /// Opaque white.
    pub const WHITE: Colour = Colour([255, 255, 255, 255]);

    /// Parses `#rrggbb` or `#rrggbbaa`.
    pub fn parse(s: &str) -> Option<Colour> {
        let hex = s.strip_prefix('#')?;
        if !(hex.len() == 6 || hex.len() == 8) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        Some(Colour([
            byte(0)?,
            byte(2)?,
            byte(4)?,
            if hex.len() == 8 { byte(6)? } else { 255 },
        ]))
    }
}

impl std::fmt::Display for Colour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [r, g, b, a] = self.0;
        if a == 255 {
            write!(f, "#{r:02x}{g:02x}{b:02x}")
        } else {
            write!(f, "#{r:02x}{g:02x}{b:02x}{a:02x}")
        }
    }
}

impl Serialize for Colour {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Colour {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Colour::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not a colour like #d03030 or #d0303080"))
        })
    }
}

fn white() -> Colour {
    Colour::WHITE
}

/// One stroke: a colour, a width and the points drawn, in order.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Stroke {
    /// Its colour.
    pub color: Colour,
    /// Its width in pixels.
    pub width: f32,
    /// `[x, y, t_ms]` for each point.
    pub points: Vec<(f32, f32, u32)>,
}

/// A whole doodle.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Doodle {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    /// The canvas colour.
    #[serde(default = "white")]
    pub background: Colour,
    /// The strokes, in the order they were drawn.
    pub strokes: Vec<Stroke>,
}

/// Why a doodle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DoodleError {
    /// More JSON than [`MAX_JSON`].
    #[error("a doodle is at most {MAX_JSON} bytes of JSON, not {0}")]
    TooLarge(usize),
    /// Not JSON of the doodle's shape.
    #[error("not a doodle: {0}")]
    Malformed(String),
    /// Valid JSON that breaks a limit.
    #[error("{0}")]
    Limit(String),
}

impl From<DoodleError> for Refusal {
    fn from(e: DoodleError) -> Self {
        let code = if matches!(e, DoodleError::TooLarge(_)) {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        };
        Refusal::new(code, e.to_string())
    }
}

impl Doodle {
    /// Parses and checks doodle JSON: size first, then shape, then every limit.
    pub fn parse(json: &[u8]) -> Result<Doodle, DoodleError> {
        if json.len() > MAX_JSON {
            return Err(DoodleError::TooLarge(json.len()));
        }
        let doodle: Doodle =
            serde_json::from_slice(json).map_err(|e| DoodleError::Malformed(e.to_string()))?;
        doodle.check()?;
        Ok(doodle)
    }

    /// Checks the limits (the canvas, the counts, each stroke's width and points).
    pub fn check(&self) -> Result<(), DoodleError> {
        let limit = |m: String| Err(DoodleError::Limit(m));
        let side = MIN_CANVAS..=MAX_CANVAS;
        if !side.contains(&self.width) || !side.contains(&self.height) {
            return limit(format!(
                "a doodle's canvas is {MIN_CANVAS} to {MAX_CANVAS} px a side, not {}x{}",
                self.width, self.height
            ));
        }
        if self.strokes.is_empty() {
            return limit("a doodle has at least one stroke".into());
        }
        if self.strokes.len() > MAX_STROKES {
            return limit(format!(
                "a doodle has at most {MAX_STROKES} strokes, not {}",
                self.strokes.len()
            ));
        }
        let points = self.points();
        if points > MAX_POINTS {
            return limit(format!(
                "a doodle has at most {MAX_POINTS} points, not {points}"
            ));
        }
        let (w, h) = (self.width as f32, self.height as f32);
        for (i, s) in self.strokes.iter().enumerate() {
            if !(s.width.is_finite() && s.width >= 0.5 && s.width <= MAX_STROKE_WIDTH) {
                return limit(format!(
                    "stroke {i}: a width is 0.5 to {MAX_STROKE_WIDTH} px, not {}",
                    s.width
                ));
            }
            if s.points.is_empty() {
                return limit(format!("stroke {i} has no points"));
            }
            for &(x, y, t) in &s.points {
                if !(x.is_finite()
                    && y.is_finite()
                    && (0.0..=w).contains(&x)
                    && (0.0..=h).contains(&y))
                {
                    return limit(format!(
                        "stroke {i}: the point ({x}, {y}) is outside the {}x{} canvas",
                        self.width, self.height
                    ));
                }
                if t > MAX_TIME_MS {
                    return limit(format!(
                        "stroke {i}: a point drawn at {t} ms is later than {MAX_TIME_MS} ms"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Points over all strokes.
    pub fn points(&self) -> usize {
        self.strokes.iter().map(|s| s.points.len()).sum()
    }

    /// The canonical JSON the relay stores (what was parsed, nothing else).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"{"width": 320, "height": 200, "extra": "dropped",
        "strokes": [{"color": "#d03030", "width": 4, "points": [[10, 10, 0], [50.5, 60, 16]]},
                    {"color": "#00000080", "width": 1.5, "points": [[0, 200, 40]]}]}"##;

    #[test]
    fn a_doodle_parses_and_stores_canonically() {
        let d = Doodle::parse(GOOD.as_bytes()).expect("parses");
        assert_eq!(
            (d.width, d.height, d.background, d.strokes.len(), d.points()),
            (320, 200, Colour::WHITE, 2, 3)
        );
        assert_eq!(d.strokes[1].color, Colour([0, 0, 0, 0x80]));
        let json = String::from_utf8(d.to_json()).expect("utf-8");
        assert!(
            !json.contains("extra")
                && json.contains("\"#d03030\"")
                && json.contains("\"#00000080\""),
            "{json}"
        );
        assert_eq!(Doodle::parse(json.as_bytes()), Ok(d));
    }

    #[test]
    fn every_limit_is_named_in_its_refusal() {
        let with = |s: &str| Doodle::parse(s.as_bytes()).unwrap_err().to_string();
        assert!(with(r#"{"width": 5000, "height": 100, "strokes": []}"#).contains("5000x100"));
        assert!(with(r#"{"width": 100, "height": 100, "strokes": []}"#).contains("at least one"));
        assert!(with(r##"{"width": 100, "height": 100, "strokes": [{"color": "red", "width": 1, "points": [[1,1,0]]}]}"##).contains("not a colour"));
        assert!(with(r##"{"width": 100, "height": 100, "strokes": [{"color": "#fff000", "width": 100, "points": [[1,1,0]]}]}"##).contains("width"));
        assert!(with(r##"{"width": 100, "height": 100, "strokes": [{"color": "#fff000", "width": 2, "points": [[101,1,0]]}]}"##).contains("outside"));
        assert!(with(r##"{"width": 100, "height": 100, "strokes": [{"color": "#fff000", "width": 2, "points": []}]}"##).contains("no points"));
        assert!(with("[1, 2").contains("not a doodle"));
        assert_eq!(
            Doodle::parse(&vec![b' '; MAX_JSON + 1]),
            Err(DoodleError::TooLarge(MAX_JSON + 1))
        );
        // Too many points, in fewer bytes than the size cap.
        let many = format!(
            r##"{{"width": 100, "height": 100, "strokes": [{{"color": "#000000", "width": 1, "points": [{}]}}]}}"##,
            vec!["[1,1,0]"; MAX_POINTS + 1].join(",")
        );
        assert!(with(&many).contains(&format!("not {}", MAX_POINTS + 1)));
    }
}
