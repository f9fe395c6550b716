//! Messages in a conversation: a text as a bubble of text, a picture as its thumbnail (click
//! to open it full size), a doodle drawn stroke by stroke as it was drawn (the first time it
//! is on screen), a recalled one as "message recalled"; your own with read ticks and, while
//! the relay allows it, a Recall button. Textures are made once per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use eframe::egui::{self, Align, Color32, Layout, RichText, Sense, TextureHandle, Ui, vec2};
use walkie_proto::clip::ClipId;
use walkie_proto::message::Content;
use walkie_proto::message::doodle::Doodle;

use super::widgets::{self, ACCENT};
use crate::engine::{Body, ClipView, Command, Engine, Pixels};

/// How long after sending the Recall button shows (the relay's default window).
const RECALL_SHOWN_MS: i64 = 120_000;
/// Widest thumbnail or doodle in a conversation, in points.
const MEDIA_WIDTH: f32 = 240.0;

/// Textures and animations of messages, kept between frames.
#[derive(Default)]
pub struct Media {
    thumbs: HashMap<ClipId, TextureHandle>,
    /// The picture open full size, with its texture once decoded.
    open: Option<(ClipId, Option<TextureHandle>, String)>,
    /// When each doodle was first on screen (it is drawn as it was drawn from then).
    first_seen: HashMap<ClipId, Instant>,
}

/// What a message says to a screen reader (and to the UI tests).
pub fn message_label(c: &ClipView) -> String {
    let what = match (&c.content, &c.body) {
        (Content::Recalled, _) => "message recalled".to_string(),
        (_, Some(Body::Text(t))) => format!("text \"{t}\""),
        (Content::Picture { width, height, .. }, _) => format!("picture {width}x{height}"),
        (Content::Doodle { strokes, .. }, _) => format!("doodle of {strokes} strokes"),
        (content, _) => format!("{} message", content.name()),
    };
    let mut s = format!(
        "{what} from {} at {}",
        c.from,
        widgets::time_text(c.started_at_ms)
    );
    if c.queued {
        s.push_str(", waiting to be sent");
    } else if c.mine && c.content != Content::Recalled {
        if c.played_by.is_empty() {
            s.push_str(", sent");
        } else {
            s.push_str(&format!(", read by {}", c.played_by.join(", ")));
        }
    } else if !c.mine && !c.played {
        s.push_str(", unread");
    }
    s
}

impl Media {
    fn thumb(&mut self, ctx: &egui::Context, id: ClipId, pixels: &Pixels) -> TextureHandle {
        self.thumbs
            .entry(id)
            .or_insert_with(|| {
                ctx.load_texture(
                    format!("thumb-{id}"),
                    egui::ColorImage::from_rgba_unmultiplied(pixels.size, &pixels.rgba),
                    egui::TextureOptions::LINEAR,
                )
            })
            .clone()
    }

    /// Draws one message's bubble; what the click on it should do is sent to the engine.
    pub fn bubble(&mut self, ui: &mut Ui, c: &ClipView, sender: &str, engine: &Engine) {
        let layout = if c.mine {
            Layout::right_to_left(Align::Min)
        } else {
            Layout::left_to_right(Align::Min)
        };
        ui.with_layout(layout, |ui| {
            let fill = if c.mine {
                ACCENT.gamma_multiply(0.35)
            } else {
                ui.visuals().faint_bg_color
            };
            let frame = egui::Frame::new()
                .fill(fill)
                .corner_radius(10.0)
                .inner_margin(egui::Margin::symmetric(10, 6));
            let inner = frame.show(ui, |ui| {
                ui.set_max_width(MEDIA_WIDTH + 20.0);
                ui.vertical(|ui| {
                    ui.label(
                        RichText::new(format!(
                            "{sender}  ·  {}",
                            widgets::time_text(c.started_at_ms)
                        ))
                        .small(),
                    );
                    self.content(ui, c);
                    self.footer(ui, c, engine);
                });
            });
            let label = message_label(c);
            inner
                .response
                .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, &label));
        });
    }

    fn content(&mut self, ui: &mut Ui, c: &ClipView) {
        match (&c.content, &c.body) {
            (Content::Recalled, _) => {
                ui.label(RichText::new("message recalled").italics().weak());
            }
            (_, Some(Body::Text(text))) => {
                ui.add(egui::Label::new(text.as_str()).wrap());
            }
            (_, Some(Body::Picture { thumb, full })) => {
                let tex = self.thumb(ui.ctx(), c.id, thumb);
                let size = tex.size_vec2();
                let scale = (MEDIA_WIDTH / size.x).min(1.0);
                let resp = ui.add(
                    egui::Image::new(&tex)
                        .fit_to_exact_size(size * scale)
                        .sense(Sense::click()),
                );
                let label = format!("open picture from {}", c.from);
                resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &label));
                if resp.on_hover_text("Click to open it full size").clicked() {
                    self.open = Some((c.id, None, String::new()));
                    self.open_bytes(ui.ctx(), c.id, full);
                }
            }
            (_, Some(Body::Doodle(doodle))) => {
                let since = *self.first_seen.entry(c.id).or_insert_with(Instant::now);
                let elapsed = since.elapsed().as_millis() as u32;
                draw_doodle(ui, doodle, elapsed, MEDIA_WIDTH);
                if elapsed
                    <= doodle
                        .strokes
                        .iter()
                        .flat_map(|s| s.points.iter().map(|p| p.2))
                        .max()
                        .unwrap_or(0)
                {
                    ui.ctx().request_repaint();
                }
            }
            (content, None) => {
                ui.label(RichText::new(format!("{}…", content.name())).weak());
            }
        }
    }

    fn footer(&mut self, ui: &mut Ui, c: &ClipView, engine: &Engine) {
        if !c.mine || c.content == Content::Recalled {
            return;
        }
        ui.horizontal(|ui| {
            let ticks = if c.queued {
                "waiting…".to_string()
            } else if c.played_by.is_empty() {
                "✓ sent".to_string()
            } else {
                format!("✓✓ read by {}", c.played_by.join(", "))
            };
            ui.label(RichText::new(ticks).small().weak());
            let age = walkie_proto::clip::now_ms() - c.started_at_ms;
            if !c.queued && age < RECALL_SHOWN_MS && ui.small_button("Recall").clicked() {
                engine.send(Command::Recall(c.id));
            }
        });
    }

    /// Decodes the picture to open (once) into a texture.
    fn open_bytes(&mut self, ctx: &egui::Context, id: ClipId, full: &Arc<Vec<u8>>) {
        let decoded = image::load_from_memory(full).map(|i| i.to_rgba8());
        if let Some(open) = &mut self.open
            && open.0 == id
        {
            match decoded {
                Ok(img) => {
                    let size = [img.width() as usize, img.height() as usize];
                    open.2 = format!("{}×{}", size[0], size[1]);
                    open.1 = Some(ctx.load_texture(
                        format!("full-{id}"),
                        egui::ColorImage::from_rgba_unmultiplied(size, img.as_raw()),
                        egui::TextureOptions::LINEAR,
                    ));
                }
                Err(e) => open.2 = format!("cannot show the picture: {e}"),
            }
        }
    }

    /// The window of the picture open full size, if any.
    pub fn viewer(&mut self, ctx: &egui::Context) {
        let Some((id, tex, caption)) = &self.open else {
            return;
        };
        let mut keep = true;
        let (id, tex, caption) = (*id, tex.clone(), caption.clone());
        egui::Window::new(format!("Picture {id}"))
            .open(&mut keep)
            .resizable(true)
            .show(ctx, |ui| {
                ui.label(format!("full size {caption}"));
                if let Some(tex) = &tex {
                    egui::ScrollArea::both().max_height(600.0).show(ui, |ui| {
                        ui.add(egui::Image::new(tex).fit_to_original_size(1.0));
                    });
                }
                if ui.button("Close picture").clicked() {
                    self.open = None;
                }
            });
        if !keep {
            self.open = None;
        }
    }
}

/// Draws a doodle `width` points wide: the points drawn within `elapsed_ms` of its start.
pub fn draw_doodle(ui: &mut Ui, doodle: &Doodle, elapsed_ms: u32, width: f32) {
    let scale = width / doodle.width as f32;
    let size = vec2(width, doodle.height as f32 * scale);
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    let [r, g, b, a] = doodle.background.0;
    painter.rect_filled(rect, 4.0, Color32::from_rgba_unmultiplied(r, g, b, a));
    for s in &doodle.strokes {
        let [r, g, b, a] = s.color.0;
        let stroke = egui::Stroke::new(
            (s.width * scale).max(1.0),
            Color32::from_rgba_unmultiplied(r, g, b, a),
        );
        let pts: Vec<egui::Pos2> = s
            .points
            .iter()
            .filter(|p| p.2 <= elapsed_ms)
            .map(|&(x, y, _)| rect.min + vec2(x, y) * scale)
            .collect();
        match pts.len() {
            0 => {}
            1 => {
                painter.circle_filled(pts[0], stroke.width / 2.0, stroke.color);
            }
            _ => {
                painter.add(egui::Shape::line(pts, stroke));
            }
        }
    }
}
