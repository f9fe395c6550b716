//! A picture made into an avatar on the user's machine: a PNG, JPEG or WebP file of at most
//! 2 MB, its dimensions read from its header before any pixel is decoded (so a small file
//! that claims a huge picture is refused at once), decoded within a memory limit, cropped to
//! its centre square and scaled to 256 px, then written as a fresh PNG: nothing of the
//! original file but its pixels is kept (no EXIF, no GPS position, no camera data). The relay
//! checks and encodes what it receives again.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, imageops::FilterType};

use crate::ClientError;

/// Largest picture file taken.
pub const MAX_FILE: u64 = 2 * 1024 * 1024;
/// Largest width or height taken.
pub const MAX_SIDE: u32 = 8192;
/// Side of the avatar sent.
pub const SIDE: u32 = 256;

fn refuse(path: &Path, why: impl std::fmt::Display) -> ClientError {
    ClientError::Config(format!("{}: {why}", path.display()))
}

/// The 256 px PNG to send for the picture in `path`.
pub fn prepare(path: &Path) -> Result<Vec<u8>, ClientError> {
    let len = std::fs::metadata(path)
        .map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > MAX_FILE {
        return Err(refuse(
            path,
            format!(
                "{:.1} MB is too large; an avatar picture is at most 2 MB",
                len as f64 / 1e6
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes).map_err(|why| refuse(path, why))
}

/// [`prepare`] for bytes in memory (the app's file dialog, tests).
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() as u64 > MAX_FILE {
        return Err("too large; an avatar picture is at most 2 MB".into());
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP));
    let Some(format) = format else {
        return Err("not a PNG, JPEG or WebP picture".into());
    };
    let picture = crate::picture::decode_within(bytes, format, |w, h| {
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(format!(
                "{w}×{h} pixels is too large; an avatar picture is at most {MAX_SIDE}×{MAX_SIDE}"
            ));
        }
        Ok(())
    })?
    .to_rgba8();
    let (w, h) = picture.dimensions();
    let side = w.min(h);
    let square =
        image::imageops::crop_imm(&picture, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let scaled = image::imageops::resize(&square, SIDE, SIDE, FilterType::Lanczos3);
    let mut out = Cursor::new(Vec::new());
    scaled
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| format!("cannot encode the avatar: {e}"))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encodes");
        out.into_inner()
    }

    #[test]
    fn png_and_jpeg_pictures_become_a_256_px_square_png() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let png = from_bytes(&encoded(640, 480, format)).expect("prepared");
            let back = image::load_from_memory_with_format(&png, ImageFormat::Png).expect("a PNG");
            assert_eq!((back.width(), back.height()), (256, 256), "{format:?}");
        }
    }

    #[test]
    fn other_files_and_bombs_are_refused_before_decoding() {
        assert!(
            from_bytes(b"just text")
                .expect_err("text")
                .contains("not a PNG, JPEG or WebP")
        );
        let mut bomb = encoded(16, 16, ImageFormat::Png);
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let e = from_bytes(&bomb).expect_err("a bomb");
        assert!(
            e.contains("too large") || e.contains("not a readable"),
            "{e}"
        );
    }
}
