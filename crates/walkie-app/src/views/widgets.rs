//! Small drawing helpers shared by the views: a clip's waveform, an input level meter, and
//! how times and durations read.

use std::time::Duration;

use eframe::egui::{self, Color32, Rect, Stroke, Ui, vec2};

/// Accent colour of the app (the talk button, your clips).
pub const ACCENT: Color32 = Color32::from_rgb(0x2e, 0x9e, 0x5b);
/// Colour of an unplayed mark and of "talking" indicators.
pub const ALERT: Color32 = Color32::from_rgb(0xe0, 0x4f, 0x3c);

/// Paints `peaks` (0..1) as bars in `rect`; bars before `progress` (0..1) are drawn strong.
pub fn paint_waveform(ui: &Ui, rect: Rect, peaks: &[f32], color: Color32) {
    let painter = ui.painter_at(rect);
    if peaks.is_empty() {
        let y = rect.center().y;
        painter.line_segment(
            [egui::pos2(rect.left(), y), egui::pos2(rect.right(), y)],
            Stroke::new(1.0, color.gamma_multiply(0.5)),
        );
        return;
    }
    let step = rect.width() / peaks.len() as f32;
    let bar = (step * 0.6).max(1.0);
    for (i, p) in peaks.iter().enumerate() {
        let h = (p.clamp(0.0, 1.0) * rect.height()).max(2.0);
        let x = rect.left() + step * (i as f32 + 0.5);
        let r = Rect::from_center_size(egui::pos2(x, rect.center().y), vec2(bar, h));
        painter.rect_filled(r, 1.0, color);
    }
}

/// A small round dot (presence, recording, someone talking), drawn rather than typed so it
/// needs no font glyph; `filled` false draws a ring.
pub fn dot(ui: &mut Ui, color: Color32, filled: bool) -> egui::Response {
    let (rect, response) = ui.allocate_exact_size(vec2(12.0, 12.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    if filled {
        painter.circle_filled(rect.center(), 4.5, color);
    } else {
        painter.circle_stroke(rect.center(), 4.0, Stroke::new(1.5, color));
    }
    response
}

/// A play triangle, or a stop square while playing, centred on `center`.
pub fn paint_play_icon(painter: &egui::Painter, center: egui::Pos2, playing: bool, color: Color32) {
    if playing {
        painter.rect_filled(Rect::from_center_size(center, vec2(9.0, 9.0)), 1.0, color);
    } else {
        let pts = vec![
            center + vec2(-4.0, -5.5),
            center + vec2(6.0, 0.0),
            center + vec2(-4.0, 5.5),
        ];
        painter.add(egui::Shape::convex_polygon(pts, color, Stroke::NONE));
    }
}

/// A horizontal meter for an RMS level (0..1), on a -60..0 dBFS scale, with an accessible
/// label saying the level.
pub fn level_meter(ui: &mut Ui, level: f32, width: f32) -> egui::Response {
    let db = 20.0 * level.max(1e-5).log10();
    let fill = ((db + 60.0) / 60.0).clamp(0.0, 1.0);
    let (rect, response) = ui.allocate_exact_size(vec2(width, 10.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
    let mut lit = rect;
    lit.set_width(rect.width() * fill);
    let color = if fill > 0.9 { ALERT } else { ACCENT };
    painter.rect_filled(lit, 3.0, color);
    response.widget_info(|| {
        egui::WidgetInfo::labeled(egui::Role::Meter, true, format!("input level {db:.0} dB"))
    });
    response
}

/// `2.4 s` or `1:05`.
pub fn duration_text(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}:{:02}", ms / 60_000, (ms / 1000) % 60)
    }
}

/// Elapsed talking time: `0:03`.
pub fn clock_text(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// Local wall-clock time of a clip: `14:03:27` today, else `2024-05-01 14:03`.
pub fn time_text(ms: i64) -> String {
    use chrono::{Local, TimeZone};
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) if t.date_naive() == Local::now().date_naive() => t.format("%H:%M:%S").to_string(),
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_clocks_read_naturally() {
        assert_eq!(duration_text(2_400), "2.4 s");
        assert_eq!(duration_text(65_000), "1:05");
        assert_eq!(clock_text(Duration::from_millis(3_900)), "0:03");
        assert_eq!(time_text(chrono::Local::now().timestamp_millis()).len(), 8);
    }
}
