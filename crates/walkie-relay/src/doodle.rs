//! Doodles as the relay takes them: the strokes are parsed and checked against the limits of
//! [`walkie_proto::message::doodle`], stored in their canonical JSON, and drawn once here into
//! a PNG (anti-aliased, round caps and joins) for exports and for clients that only show
//! pictures.

use tiny_skia::{
    Color, LineCap, LineJoin, Paint, PathBuilder, Pixmap, Stroke as SkStroke, Transform,
};
use walkie_proto::assemble::Refusal;
use walkie_proto::message::Content;
use walkie_proto::message::doodle::{Colour, Doodle};
use walkie_proto::wire::ErrorCode;

/// The stored payload (canonical JSON, then the rendered PNG) and its content.
pub fn accept(json: &[u8]) -> Result<(Vec<u8>, Content), Refusal> {
    let doodle = Doodle::parse(json)?;
    let png = render(&doodle).map_err(|m| Refusal::new(ErrorCode::Internal, m))?;
    let content = Content::Doodle {
        width: doodle.width,
        height: doodle.height,
        strokes: doodle.strokes.len() as u32,
        points: doodle.points() as u32,
        png: png.len() as u32,
    };
    Ok(([doodle.to_json(), png].concat(), content))
}

fn colour(c: Colour) -> Color {
    let [r, g, b, a] = c.0;
    Color::from_rgba8(r, g, b, a)
}

/// Draws a checked doodle as a PNG of its canvas size.
pub fn render(doodle: &Doodle) -> Result<Vec<u8>, String> {
    let mut pixmap = Pixmap::new(doodle.width, doodle.height).ok_or("the canvas has no pixels")?;
    pixmap.fill(colour(doodle.background));
    for s in &doodle.strokes {
        let mut paint = Paint::default();
        paint.set_color(colour(s.color));
        paint.anti_alias = true;
        let stroke = SkStroke {
            width: s.width,
            line_cap: LineCap::Round,
            line_join: LineJoin::Round,
            ..SkStroke::default()
        };
        let mut pb = PathBuilder::new();
        let (x0, y0, _) = s.points[0];
        pb.move_to(x0, y0);
        if s.points.len() == 1 {
            // A dot: a zero-length segment, which round caps draw as a disc.
            pb.line_to(x0 + 0.01, y0);
        }
        for &(x, y, _) in &s.points[1..] {
            pb.line_to(x, y);
        }
        if let Some(path) = pb.finish() {
            pixmap.stroke_path(&path, &paint, &stroke, Transform::identity(), None);
        }
    }
    // tiny-skia keeps premultiplied pixels; an opaque background makes them plain RGBA.
    let rgba: Vec<u8> = pixmap
        .pixels()
        .iter()
        .flat_map(|p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue(), c.alpha()]
        })
        .collect();
    let image = image::RgbaImage::from_raw(doodle.width, doodle.height, rgba)
        .ok_or("the canvas size does not match its pixels")?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::message::{Parts, parts};

    #[test]
    fn a_doodle_is_stored_as_json_and_drawn_where_its_strokes_go() {
        let json = br##"{"width": 100, "height": 60, "strokes": [
            {"color": "#ff0000", "width": 6, "points": [[10, 30, 0], [90, 30, 200]]},
            {"color": "#0000ff", "width": 8, "points": [[50, 50, 400]]}]}"##;
        let (payload, content) = accept(json).expect("accepted");
        let Content::Doodle {
            width: 100,
            height: 60,
            strokes: 2,
            points: 3,
            ..
        } = content
        else {
            panic!("{content:?}")
        };
        let Ok(Parts::Doodle { strokes, png }) = parts(&content, &payload) else {
            panic!("splits")
        };
        assert_eq!(Doodle::parse(strokes).expect("canonical").strokes.len(), 2);
        let img = image::load_from_memory(png).expect("a PNG").to_rgba8();
        assert_eq!(img.dimensions(), (100, 60));
        assert_eq!(img.get_pixel(50, 30).0, [255, 0, 0, 255], "on the red line");
        assert_eq!(img.get_pixel(50, 50).0, [0, 0, 255, 255], "the blue dot");
        assert_eq!(img.get_pixel(50, 5).0, [255, 255, 255, 255], "background");
    }

    #[test]
    fn a_bad_doodle_is_refused_before_anything_is_drawn() {
        let refused = accept(br#"{"width": 100000, "height": 100000, "strokes": []}"#).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        assert!(refused.message.contains("canvas"), "{}", refused.message);
        assert_eq!(accept(b"\xff\xfe").unwrap_err().code, ErrorCode::BadRequest);
    }
}
