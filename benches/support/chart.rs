//! PNG line charts for the benchmarks (fan-out delay against listeners; live speech quality
//! against loss), drawn with plotters' bitmap backend. Text is rasterised with ab_glyph from a TrueType file read at run time
//! (DejaVu Sans by default), so no fontconfig or freetype is needed.

use std::path::Path;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// Fonts tried in order; `WALKIE_BENCH_FONT` overrides.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One line of the chart: a name, a colour index and (x, y) points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (the baseline: quinn alone, measured in the same run).
    pub dashed: bool,
    /// The palette entry to draw it in; `None`: the series' own position.
    pub color: Option<usize>,
}

/// Loads the first font found.
pub fn load_font() -> Result<FontVec, String> {
    let mut tried = Vec::new();
    let env = std::env::var("WALKIE_BENCH_FONT").ok();
    for path in env.iter().map(String::as_str).chain(FONTS.iter().copied()) {
        if let Ok(bytes) = std::fs::read(path) {
            return FontVec::try_from_vec(bytes).map_err(|e| format!("{path}: {e}"));
        }
        tried.push(path.to_string());
    }
    Err(format!(
        "no TrueType font found (tried {}); install fonts-dejavu-core or set WALKIE_BENCH_FONT",
        tried.join(", ")
    ))
}

/// A bitmap backend whose text is drawn with ab_glyph.
struct Glyphs<'a> {
    inner: BitMapBackend<'a>,
    font: &'a FontVec,
}

type Err<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl Glyphs<'_> {
    /// Width and height of `text` at `size` pixels.
    fn measure(&self, text: &str, size: f64) -> (f32, f32) {
        let font = self.font.as_scaled(PxScale::from(size as f32));
        let mut width = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                width += font.kern(p, id);
            }
            width += font.h_advance(id);
            prev = Some(id);
        }
        (width, font.ascent() - font.descent())
    }
}

impl<'a> DrawingBackend for Glyphs<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), Err<'a>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), Err<'a>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Err<'a>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        ul: BackendCoord,
        br: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_rect(ul, br, style, fill)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        c: BackendCoord,
        r: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Err<'a>> {
        self.inner.draw_circle(c, r, style, fill)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), Err<'a>> {
        let (w, h) = self.measure(text, style.size());
        Ok((w.ceil() as u32, h.ceil() as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), Err<'a>> {
        let color = style.color();
        let size = style.size();
        let (w, h) = self.measure(text, size);
        let (w, h) = (w.round() as i32, h.round() as i32);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        let (width, height) = self.get_size();
        let scale = PxScale::from(size as f32);
        let scaled = self.font.as_scaled(scale);
        let ascent = scaled.ascent();
        let mut x = 0.0;
        let mut prev = None;
        let mut result = Ok(());
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(scale, point(x, ascent));
            x += scaled.h_advance(id);
            let Some(outline) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                if coverage <= 0.0 || result.is_err() {
                    return;
                }
                let lx = bounds.min.x as i32 + gx as i32 + dx;
                let ly = bounds.min.y as i32 + gy as i32 + dy;
                let (tx, ty) = trans.transform(lx, ly);
                let (px, py) = (pos.0 + tx, pos.1 + ty);
                if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                    let c = BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    };
                    result = self.inner.draw_pixel((px, py), c);
                }
            });
        }
        result
    }
}

/// Draws on a white `size` canvas with [`Glyphs`] text and writes it to `path` as a PNG.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<Glyphs<'_>, Shift>) -> Result<(), String>,
) -> Result<(), String> {
    let font = load_font()?;
    let (w, h) = size;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let backend = Glyphs {
            inner: BitMapBackend::with_buffer(&mut buf, size),
            font: &font,
        };
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&buf).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// A PNG of fan-out delay (log scale) against listeners (log scale).
pub fn fanout_png(
    path: &Path,
    title: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<(), String> {
    render(path, size, |root| {
        let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
        for &(_, y) in series.iter().flat_map(|s| s.points.iter()) {
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        let (ymin, ymax) = ((ymin / 2.0).max(0.01), ymax * 2.0);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((5f64..2000f64).log_scale(), (ymin..ymax).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("listeners in the channel (N)")
            .y_desc("frame delay, talker send -> listener receive (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        draw_lines(&mut chart, series)?;
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// The axes of a [`lines_png`] chart: descriptions and linear ranges.
pub struct Axes<'a> {
    /// What x is.
    pub x_desc: &'a str,
    /// What y is.
    pub y_desc: &'a str,
    /// The x range shown.
    pub x: std::ops::Range<f64>,
    /// The y range shown.
    pub y: std::ops::Range<f64>,
}

/// A PNG line chart on linear axes.
pub fn lines_png(
    path: &Path,
    title: &str,
    axes: &Axes<'_>,
    series: &[Series],
    size: (u32, u32),
) -> Result<(), String> {
    render(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(axes.x.clone(), axes.y.clone())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        draw_lines(&mut chart, series)?;
        legend(&mut chart, SeriesLabelPosition::LowerLeft)
    })
}

/// The series' legend, boxed, at `at`.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws `series` on `chart`: solid lines with dots, or dashed, each in its own colour.
fn draw_lines<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    series: &[Series],
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
    ];
    for (i, s) in series.iter().enumerate() {
        let color = colors[s.color.unwrap_or(i) % colors.len()];
        let style = Color::stroke_width(&color, 2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], Color::stroke_width(&color, 2))
                });
        } else {
            chart
                .draw_series(LineSeries::new(s.points.clone(), style))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], Color::stroke_width(&color, 2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
