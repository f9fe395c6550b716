//! A picture made ready to send, on the user's machine: a PNG, JPEG, WebP or GIF (its first
//! frame) of at most 10 MB, its dimensions read from its header before any pixel is decoded,
//! decoded within a memory limit, scaled to at most 2,560 px a side, and written as a fresh
//! JPEG (or PNG when it has transparency): nothing of the original file but its pixels is
//! kept (no EXIF, no GPS position). The relay checks and encodes what it receives again and
//! makes the thumbnail.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};
use walkie_proto::message::{MAX_PICTURE_FILE, MAX_PICTURE_SIDE, MAX_PICTURE_UPLOAD};

/// Largest width or height of a picture taken.
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels of a picture taken (a 48-megapixel camera's photos fit).
pub const MAX_PIXELS: u64 = 50_000_000;

/// True if `bytes` start like a picture this module takes (PNG, JPEG, WebP or GIF).
pub fn is_picture(bytes: &[u8]) -> bool {
    matches!(
        image::guess_format(bytes),
        Ok(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif)
    )
}

fn too_large(len: u64) -> String {
    format!(
        "{:.1} MB is too large; a picture is at most 10 MB",
        len as f64 / 1e6
    )
}

/// [`prepare`] for a file: one larger than 10 MB is refused from its size, before it is read.
pub fn prepare_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_PICTURE_FILE as u64 {
        return Err(too_large(len));
    }
    prepare(&std::fs::read(path).map_err(|e| e.to_string())?)
}

/// The JPEG or PNG to send for a picture file's bytes, or why it cannot be sent.
pub fn prepare(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() > MAX_PICTURE_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    let formats = [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Gif,
    ];
    let Some(format) = image::guess_format(bytes)
        .ok()
        .filter(|f| formats.contains(f))
    else {
        return Err("not a PNG, JPEG, WebP or GIF picture".into());
    };
    // A GIF decodes to its first frame only, however many it has.
    let mut picture = decode_within(bytes, format, |w, h| {
        if w == 0
            || h == 0
            || w > MAX_SIDE
            || h > MAX_SIDE
            || u64::from(w) * u64::from(h) > MAX_PIXELS
        {
            return Err(format!(
                "{w}×{h} pixels is too large; a picture is at most {} megapixels and {MAX_SIDE} px a side",
                MAX_PIXELS / 1_000_000
            ));
        }
        Ok(())
    })?;
    if picture.width().max(picture.height()) > MAX_PICTURE_SIDE {
        picture = picture.resize(MAX_PICTURE_SIDE, MAX_PICTURE_SIDE, FilterType::Triangle);
    }
    let transparent =
        picture.color().has_alpha() && picture.to_rgba8().pixels().any(|p| p.0[3] < 255);
    if transparent {
        let png = encode(
            &DynamicImage::ImageRgba8(picture.to_rgba8()),
            ImageFormat::Png,
        )?;
        if png.len() <= MAX_PICTURE_UPLOAD {
            return Ok(png);
        }
        // Too large as PNG: on white, as JPEG.
        let mut flat = image::RgbaImage::from_pixel(
            picture.width(),
            picture.height(),
            image::Rgba([255, 255, 255, 255]),
        );
        image::imageops::overlay(&mut flat, &picture.to_rgba8(), 0, 0);
        picture = DynamicImage::ImageRgba8(flat);
    }
    encode(
        &DynamicImage::ImageRgb8(picture.to_rgb8()),
        ImageFormat::Jpeg,
    )
}

/// Decodes a picture of `format` whose size, read from its header before any pixel, `fits`
/// accepts; decoding is capped at 512 MiB and the size `fits` allowed.
pub(crate) fn decode_within(
    bytes: &[u8],
    format: ImageFormat,
    fits: impl Fn(u32, u32) -> Result<(), String>,
) -> Result<DynamicImage, String> {
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| format!("not a readable picture: {e}"))?;
    fits(w, h)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| format!("not a readable picture: {e}"))
}

fn encode(picture: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    let written = match format {
        ImageFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(picture)
        }
        other => picture.write_to(&mut out, other),
    };
    written.map_err(|e| format!("cannot encode the picture: {e}"))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
        });
        let mut out = Cursor::new(Vec::new());
        let rgb = DynamicImage::ImageRgba8(img);
        let picture = if format == ImageFormat::Jpeg {
            DynamicImage::ImageRgb8(rgb.to_rgb8())
        } else {
            rgb
        };
        picture.write_to(&mut out, format).expect("encodes");
        out.into_inner()
    }

    #[test]
    fn every_format_becomes_a_jpeg_and_large_ones_are_scaled() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::WebP,
            ImageFormat::Gif,
        ] {
            let sent = prepare(&encoded(640, 480, format)).expect("prepared");
            let back =
                image::load_from_memory_with_format(&sent, ImageFormat::Jpeg).expect("a JPEG");
            assert_eq!((back.width(), back.height()), (640, 480), "{format:?}");
        }
        let sent = prepare(&encoded(3000, 1000, ImageFormat::Png)).expect("prepared");
        let back = image::load_from_memory(&sent).expect("decodes");
        assert_eq!((back.width(), back.height()), (2560, 853));
    }

    #[test]
    fn transparency_keeps_png() {
        let img = image::RgbaImage::from_fn(50, 50, |x, _| image::Rgba([0, 0, 0, (x * 5) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).expect("encodes");
        let sent = prepare(&out.into_inner()).expect("prepared");
        assert_eq!(image::guess_format(&sent).ok(), Some(ImageFormat::Png));
    }

    #[test]
    fn other_files_truncated_files_and_bombs_are_refused() {
        assert!(
            prepare(b"just text")
                .expect_err("text")
                .contains("not a PNG, JPEG, WebP or GIF")
        );
        let png = encoded(64, 64, ImageFormat::Png);
        assert!(
            prepare(&png[..png.len() / 2])
                .expect_err("truncated")
                .contains("not a readable")
        );
        let mut bomb = png.clone();
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let e = prepare(&bomb).expect_err("a bomb");
        assert!(
            e.contains("too large") || e.contains("not a readable"),
            "{e}"
        );
        assert!(
            prepare(&vec![0xff; MAX_PICTURE_FILE + 1])
                .expect_err("big")
                .contains("at most 10 MB")
        );
    }
}
