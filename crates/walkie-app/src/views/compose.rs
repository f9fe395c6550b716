//! Writing to a conversation: a text box (Enter sends), a picture by its file's path or
//! dropped on the window, and the doodle canvas (drag with the mouse or a pen; colours,
//! widths, undo; the strokes keep their timing so the recipient watches it being drawn).

use std::time::Instant;

use eframe::egui::{self, Color32, Sense, Ui, vec2};
use walkie_proto::clip::Target;
use walkie_proto::message::doodle::{Colour, Doodle, Stroke};

use super::messages::draw_doodle;
use crate::engine::{Command, Engine};

/// The canvas's size in doodle pixels (and points on screen).
const CANVAS: (u32, u32) = (480, 320);
/// The colours offered: name and value.
const COLOURS: [(&str, [u8; 3]); 6] = [
    ("black", [0x20, 0x20, 0x20]),
    ("red", [0xd0, 0x30, 0x30]),
    ("blue", [0x30, 0x60, 0xd0]),
    ("green", [0x2e, 0x9e, 0x5b]),
    ("orange", [0xe0, 0x8a, 0x10]),
    ("white", [0xff, 0xff, 0xff]),
];

/// What the composer remembers between frames.
#[derive(Default)]
pub struct Composer {
    text: String,
    picture_path: String,
    attach_open: bool,
    /// The doodle canvas, while open.
    pub doodle: Option<Canvas>,
}

/// A doodle being drawn.
pub struct Canvas {
    strokes: Vec<Stroke>,
    drawing: Option<Stroke>,
    colour: usize,
    width: f32,
    started: Instant,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas {
            strokes: Vec::new(),
            drawing: None,
            colour: 0,
            width: 4.0,
            started: Instant::now(),
        }
    }
}

impl Canvas {
    fn ms(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u32::MAX)
            .min(walkie_proto::message::doodle::MAX_TIME_MS)
    }

    fn doodle(&self) -> Doodle {
        Doodle {
            width: CANVAS.0,
            height: CANVAS.1,
            background: Colour::WHITE,
            strokes: self.strokes.clone(),
        }
    }

    /// The canvas: press and drag to draw a stroke.
    fn draw_area(&mut self, ui: &mut Ui) {
        let (rect, resp) =
            ui.allocate_exact_size(vec2(CANVAS.0 as f32, CANVAS.1 as f32), Sense::drag());
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Canvas, true, "doodle canvas"));
        let at = |p: egui::Pos2| {
            let local = p - rect.min;
            (
                local.x.clamp(0.0, CANVAS.0 as f32),
                local.y.clamp(0.0, CANVAS.1 as f32),
            )
        };
        if resp.drag_started()
            && let Some(p) = resp.interact_pointer_pos()
        {
            let (x, y) = at(p);
            let [r, g, b] = COLOURS[self.colour].1;
            self.drawing = Some(Stroke {
                color: Colour([r, g, b, 255]),
                width: self.width,
                points: vec![(x, y, self.ms())],
            });
        }
        if resp.dragged()
            && let (Some(p), Some(stroke)) = (resp.interact_pointer_pos(), self.drawing.as_mut())
        {
            let (x, y) = at(p);
            let t = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
            let moved = stroke
                .points
                .last()
                .is_none_or(|&(lx, ly, _)| (lx - x).abs() + (ly - y).abs() >= 1.0);
            if moved && stroke.points.len() < 5_000 {
                stroke
                    .points
                    .push((x, y, t.min(walkie_proto::message::doodle::MAX_TIME_MS)));
            }
        }
        if resp.drag_stopped()
            && let Some(stroke) = self.drawing.take()
        {
            self.strokes.push(stroke);
        }
        // What is drawn so far (the stroke in progress too), all of it at once.
        let mut shown = self.doodle();
        shown.strokes.extend(self.drawing.clone());
        let mut child = ui.new_child(egui::UiBuilder::new().max_rect(rect));
        draw_doodle(&mut child, &shown, u32::MAX, CANVAS.0 as f32);
    }
}

/// The composer under a conversation.
pub fn show(ui: &mut Ui, to: &Target, engine: &Engine, state: &mut Composer) {
    // A picture file dropped on the window goes to the conversation on screen.
    let dropped: Vec<std::path::PathBuf> = ui.ctx().input(|i| {
        i.raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_path_buf())
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    });
    for path in dropped {
        engine.send(Command::SendPicture {
            to: to.clone(),
            path,
        });
    }
    ui.horizontal(|ui| {
        let l = ui.label("Message");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut state.text)
                    .hint_text("Type, then Enter")
                    .desired_width(ui.available_width() - 230.0),
            )
            .labelled_by(l.id);
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button("Send").clicked() || enter) && !state.text.trim().is_empty() {
            engine.send(Command::SendText {
                to: to.clone(),
                text: std::mem::take(&mut state.text),
            });
            if enter {
                edit.request_focus();
            }
        }
        if ui.button("Picture").clicked() {
            state.attach_open = !state.attach_open;
        }
        if ui.button("Doodle").clicked() {
            state.doodle = if state.doodle.is_some() {
                None
            } else {
                Some(Canvas::default())
            };
        }
    });
    if state.attach_open {
        ui.horizontal(|ui| {
            let l = ui.label("picture file");
            ui.add(
                egui::TextEdit::singleline(&mut state.picture_path)
                    .hint_text("/path/to/photo.jpg (or drop it on the window)")
                    .desired_width(320.0),
            )
            .labelled_by(l.id);
            if ui.button("Attach").clicked() && !state.picture_path.trim().is_empty() {
                engine.send(Command::SendPicture {
                    to: to.clone(),
                    path: state.picture_path.trim().into(),
                });
                state.picture_path.clear();
                state.attach_open = false;
            }
        });
    }
    let mut close = false;
    if let Some(canvas) = &mut state.doodle {
        egui::Window::new("Doodle")
            .resizable(false)
            .collapsible(false)
            .show(ui.ctx(), |ui| {
                ui.horizontal(|ui| {
                    for (i, (name, [r, g, b])) in COLOURS.iter().enumerate() {
                        let (rect, resp) = ui.allocate_exact_size(vec2(22.0, 22.0), Sense::click());
                        ui.painter().circle_filled(
                            rect.center(),
                            9.0,
                            Color32::from_rgb(*r, *g, *b),
                        );
                        if canvas.colour == i {
                            ui.painter().circle_stroke(
                                rect.center(),
                                10.5,
                                egui::Stroke::new(2.0, ui.visuals().text_color()),
                            );
                        }
                        let label = format!("colour {name}");
                        resp.widget_info(|| {
                            egui::WidgetInfo::labeled(egui::Role::Button, true, &label)
                        });
                        if resp.clicked() {
                            canvas.colour = i;
                        }
                    }
                    let l = ui.label("pen width");
                    ui.add(egui::Slider::new(&mut canvas.width, 1.0..=24.0))
                        .labelled_by(l.id);
                });
                canvas.draw_area(ui);
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(!canvas.strokes.is_empty(), egui::Button::new("Undo"))
                        .clicked()
                    {
                        canvas.strokes.pop();
                    }
                    if ui.button("Clear").clicked() {
                        canvas.strokes.clear();
                    }
                    ui.label(format!("{} strokes", canvas.strokes.len()));
                    if ui
                        .add_enabled(!canvas.strokes.is_empty(), egui::Button::new("Send doodle"))
                        .clicked()
                    {
                        engine.send(Command::SendDoodle {
                            to: to.clone(),
                            doodle: canvas.doodle(),
                        });
                        close = true;
                    }
                    if ui.button("Cancel").clicked() {
                        close = true;
                    }
                });
            });
    }
    if close {
        state.doodle = None;
    }
}
