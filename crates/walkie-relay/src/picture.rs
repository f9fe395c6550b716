//! Pictures as the relay takes them: a client sends a JPEG or PNG it prepared (decoded from
//! the user's file, scaled to at most 2,560 px a side); the relay trusts none of it. It reads
//! the size before any pixel and refuses what is larger, decodes within a memory limit, and
//! encodes the picture again, so nothing the sender put beside the pixels (EXIF, GPS, text
//! chunks) is kept, along with a thumbnail of at most 320 px a side, made once here.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};
use walkie_proto::message::{
    Content, MAX_PICTURE_SIDE, MAX_PICTURE_UPLOAD, PictureFormat, THUMB_SIDE,
};

/// JPEG quality of stored pictures and thumbnails.
const JPEG_QUALITY: u8 = 85;

/// Why a picture was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PictureError {
    /// More bytes than [`MAX_PICTURE_UPLOAD`].
    #[error("a picture upload is at most {MAX_PICTURE_UPLOAD} bytes, not {0}")]
    TooLarge(usize),
    /// Neither JPEG nor PNG (clients convert WebP and GIF before sending).
    #[error("a picture is sent as JPEG or PNG (the client converts other formats)")]
    Format,
    /// A side longer than [`MAX_PICTURE_SIDE`], read from the header.
    #[error(
        "a picture is at most {MAX_PICTURE_SIDE} px a side, not {0}x{1} (clients scale pictures before sending)"
    )]
    Dimensions(u32, u32),
    /// The decoder could not read it (truncated, corrupt).
    #[error("the picture cannot be read: {0}")]
    Unreadable(String),
}

/// The stored payload (the picture encoded again, then its thumbnail) and its content.
pub fn accept(bytes: &[u8]) -> Result<(Vec<u8>, Content), PictureError> {
    if bytes.len() > MAX_PICTURE_UPLOAD {
        return Err(PictureError::TooLarge(bytes.len()));
    }
    let format = match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Ok(ImageFormat::Png) => ImageFormat::Png,
        _ => return Err(PictureError::Format),
    };
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| PictureError::Unreadable(e.to_string()))?;
    if w == 0 || h == 0 || w > MAX_PICTURE_SIDE || h > MAX_PICTURE_SIDE {
        return Err(PictureError::Dimensions(w, h));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_PICTURE_SIDE);
    limits.max_image_height = Some(MAX_PICTURE_SIDE);
    // 2,560² pixels of 16-bit RGBA is 52 MB; room for the decoder's own buffers.
    limits.max_alloc = Some(128 * 1024 * 1024);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| PictureError::Unreadable(e.to_string()))?;
    // Transparency keeps PNG; everything else is stored as JPEG.
    let stored = if image.color().has_alpha() {
        PictureFormat::Png
    } else {
        PictureFormat::Jpeg
    };
    let full = encode(&image, stored)?;
    let thumb = encode(
        &image.resize(THUMB_SIDE, THUMB_SIDE, FilterType::Triangle),
        stored,
    )?;
    let content = Content::Picture {
        width: w,
        height: h,
        format: stored,
        thumb: thumb.len() as u32,
    };
    Ok(([full, thumb].concat(), content))
}

/// Encodes `image` as `format`, with no metadata.
pub fn encode(image: &DynamicImage, format: PictureFormat) -> Result<Vec<u8>, PictureError> {
    let mut out = Cursor::new(Vec::new());
    let written = match format {
        PictureFormat::Png => image.to_rgba8().write_to(&mut out, ImageFormat::Png),
        PictureFormat::Jpeg => {
            let rgb = image.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                .encode_image(&rgb)
        }
    };
    written.map_err(|e| PictureError::Unreadable(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::message::{Parts, parts};

    fn picture(w: u32, h: u32, format: PictureFormat) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([
                x as u8,
                y as u8,
                90,
                if format == PictureFormat::Png {
                    128
                } else {
                    255
                },
            ])
        });
        encode(&DynamicImage::ImageRgba8(img), format).expect("encodes")
    }

    #[test]
    fn a_picture_is_encoded_again_with_a_thumbnail_and_keeps_its_transparency() {
        for (format, w, h) in [
            (PictureFormat::Jpeg, 1000, 500),
            (PictureFormat::Png, 200, 400),
        ] {
            let (payload, content) = accept(&picture(w, h, format)).expect("accepted");
            let Content::Picture {
                width,
                height,
                format: stored,
                ..
            } = content
            else {
                panic!("{content:?}")
            };
            assert_eq!((width, height, stored), (w, h, format));
            let Ok(Parts::Picture { full, thumb }) = parts(&content, &payload) else {
                panic!("splits")
            };
            let (f, t) = (
                image::load_from_memory(full).expect("full"),
                image::load_from_memory(thumb).expect("thumb"),
            );
            assert_eq!((f.width(), f.height()), (w, h));
            assert_eq!(t.width().max(t.height()), THUMB_SIDE.min(w.max(h)));
        }
    }

    /// What taking a picture costs the relay (decode, a fresh JPEG, a 320 px thumbnail) for a
    /// photo-like 2,560×1,920 JPEG (the largest a client sends); prints the median of 9 runs,
    /// asserts nothing about time: `cargo test --release -p walkie-relay picture_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn picture_cost() {
        let noisy = image::RgbImage::from_fn(2560, 1920, |x, y| {
            let h = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 9;
            image::Rgb([
                ((x / 7 + y / 5) & 255) as u8,
                (h & 63) as u8 + 96,
                ((x ^ y) & 255) as u8,
            ])
        });
        let jpeg = encode(&DynamicImage::ImageRgb8(noisy), PictureFormat::Jpeg).expect("encodes");
        let mut times: Vec<std::time::Duration> = (0..9)
            .map(|_| {
                let t = std::time::Instant::now();
                accept(&jpeg).expect("accepted");
                t.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "picture accept: {} bytes in, median {:?}, max {:?}",
            jpeg.len(),
            times[4],
            times[8]
        );
    }

    #[test]
    fn exif_and_text_chunks_do_not_survive() {
        // A JPEG with an APP1 (EXIF) segment holding a GPS-like marker right after SOI.
        let jpeg = picture(64, 64, PictureFormat::Jpeg);
        let secret = b"Exif\0\0GPS-SECRET-48.8584N";
        let mut app1 = vec![0xff, 0xe1];
        app1.extend_from_slice(&((secret.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(secret);
        let with_exif = [&jpeg[..2], &app1, &jpeg[2..]].concat();
        let (payload, _) = accept(&with_exif).expect("accepted");
        assert!(
            !payload.windows(10).any(|w| w == b"GPS-SECRET"),
            "EXIF dropped"
        );
    }

    #[test]
    fn other_formats_bombs_and_truncated_files_are_refused_with_reasons() {
        assert_eq!(accept(b"GIF89a\x01\x00\x01\x00"), Err(PictureError::Format));
        assert_eq!(accept(b"RIFF\0\0\0\0WEBPVP8 "), Err(PictureError::Format));
        assert_eq!(
            accept(&vec![0; MAX_PICTURE_UPLOAD + 1]),
            Err(PictureError::TooLarge(MAX_PICTURE_UPLOAD + 1))
        );
        let png = picture(100, 100, PictureFormat::Png);
        let mut bomb = png.clone();
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(matches!(
            accept(&bomb),
            Err(PictureError::Dimensions(60_000, 60_000)) | Err(PictureError::Unreadable(_))
        ));
        assert!(matches!(
            accept(&png[..png.len() / 2]),
            Err(PictureError::Unreadable(_))
        ));
    }
}
