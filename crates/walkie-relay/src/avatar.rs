//! Avatars as the relay takes them: a client sends a square 256 px PNG (it decoded the user's
//! picture and scaled it); the relay trusts none of it. It reads the PNG's size before any
//! pixel and refuses anything but 256×256, decodes it within a memory limit, and encodes it
//! again, so nothing the client put beside the pixels (text chunks, EXIF, GPS) is kept, along
//! with a 64 px copy for lists.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, imageops::FilterType};

/// Side of the large avatar, in pixels.
pub const LARGE: u32 = 256;
/// Side of the small avatar, in pixels.
pub const SMALL: u32 = 64;
/// Largest PNG a client may send (a 256 px RGBA image stores in less, whatever it shows).
pub const MAX_UPLOAD: usize = 512 * 1024;

/// Why an avatar was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvatarError {
    /// More bytes than [`MAX_UPLOAD`].
    #[error("an avatar upload is at most {MAX_UPLOAD} bytes, not {0}")]
    TooLarge(usize),
    /// Not a PNG the decoder could read.
    #[error("the avatar is not a readable PNG image: {0}")]
    NotPng(String),
    /// Not 256×256.
    #[error(
        "an avatar is a square {LARGE}×{LARGE} PNG, not {0}×{1} (clients scale pictures before sending)"
    )]
    WrongSize(u32, u32),
}

/// The stored forms of an avatar: (256 px PNG, 64 px PNG), both encoded here.
pub fn accept(png: &[u8]) -> Result<(Vec<u8>, Vec<u8>), AvatarError> {
    if png.len() > MAX_UPLOAD {
        return Err(AvatarError::TooLarge(png.len()));
    }
    let mut reader = ImageReader::with_format(Cursor::new(png), ImageFormat::Png);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| AvatarError::NotPng(e.to_string()))?;
    if (w, h) != (LARGE, LARGE) {
        return Err(AvatarError::WrongSize(w, h));
    }
    reader = ImageReader::with_format(Cursor::new(png), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_image_width = Some(LARGE);
    limits.max_image_height = Some(LARGE);
    // 256 × 256 × 16-bit RGBA is 512 KiB; twice that for the decoder's own buffers.
    limits.max_alloc = Some(1024 * 1024);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| AvatarError::NotPng(e.to_string()))?
        .to_rgba8();
    let small = image::imageops::resize(&image, SMALL, SMALL, FilterType::Lanczos3);
    Ok((encode(&image)?, encode(&small)?))
}

fn encode(image: &image::RgbaImage) -> Result<Vec<u8>, AvatarError> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| AvatarError::NotPng(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 128, 255]));
        encode(&img).expect("encodes")
    }

    #[test]
    fn a_256_px_png_is_reencoded_with_a_64_px_copy() {
        let (large, small) = accept(&png(256, 256)).expect("accepted");
        let l = image::load_from_memory(&large).expect("decodes");
        let s = image::load_from_memory(&small).expect("decodes");
        assert_eq!(
            (l.width(), l.height(), s.width(), s.height()),
            (256, 256, 64, 64)
        );
    }

    /// What taking an avatar costs the relay (decode, 64 px copy, two PNG encodes) for a
    /// photo-like 256 px PNG; prints the median of 50 runs, asserts nothing about time:
    /// `cargo test --release -p walkie-relay avatar_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn avatar_cost() {
        let noisy = image::RgbaImage::from_fn(256, 256, |x, y| {
            let h = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7;
            image::Rgba([(h & 255) as u8, (h >> 8) as u8, (x ^ y) as u8, 255])
        });
        let png = encode(&noisy).expect("encodes");
        let mut times: Vec<std::time::Duration> = (0..50)
            .map(|_| {
                let t = std::time::Instant::now();
                accept(&png).expect("accepted");
                t.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "avatar accept: {} bytes in, median {:?}, max {:?}",
            png.len(),
            times[25],
            times[49]
        );
    }

    #[test]
    fn wrong_sizes_bombs_and_other_bytes_are_refused_before_decoding() {
        assert_eq!(
            accept(&png(300, 256)),
            Err(AvatarError::WrongSize(300, 256))
        );
        assert!(matches!(accept(b"GIF89a...."), Err(AvatarError::NotPng(_))));
        assert_eq!(
            accept(&vec![0; MAX_UPLOAD + 1]),
            Err(AvatarError::TooLarge(MAX_UPLOAD + 1))
        );
        // A PNG whose header claims 100 000 × 100 000 pixels: refused from the header alone.
        let mut bomb = png(256, 256);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            accept(&bomb),
            Err(AvatarError::WrongSize(100_000, 100_000)) | Err(AvatarError::NotPng(_))
        ));
    }
}
