//! One conversation: every clip as a bubble (sender, time, duration, waveform, played or
//! not, who played yours; click to play, click again to stop) and every message as
//! `messages.rs` draws it. Older items load on demand; the whole conversation exports to a
//! folder. The header mutes notifications and sets the playing speed.

use eframe::egui::{self, Align, Color32, FontId, Layout, RichText, Sense, Ui, vec2};

use super::avatars::Avatars;
use super::messages::Media;
use super::widgets::{self, ACCENT, ALERT};
use crate::engine::{ClipView, Command, Conversation, Engine, Snapshot};

/// Text typed between frames, message textures, the composer.
#[derive(Default)]
pub struct ConversationState {
    export_dir: String,
    /// Thumbnails, the picture open full size, doodle animations.
    pub media: Media,
    /// The text box, pictures, the doodle canvas.
    pub composer: super::compose::Composer,
}

/// What a clip says to a screen reader (and to the UI tests).
pub fn clip_label(c: &ClipView, playing: bool) -> String {
    let mut s = format!(
        "clip from {} at {}, {}",
        c.from,
        widgets::time_text(c.started_at_ms),
        widgets::duration_text(c.duration_ms)
    );
    if playing {
        s.push_str(", playing (click to stop)");
    } else if c.queued {
        s.push_str(", waiting to be sent");
    } else if !c.played {
        s.push_str(", unplayed");
    } else if !c.mine {
        s.push_str(", played");
    }
    if !c.played_by.is_empty() {
        s.push_str(&format!(", played by {}", c.played_by.join(", ")));
    }
    s
}

fn bubble(ui: &mut Ui, c: &ClipView, playing: bool, sender: &str) -> egui::Response {
    let width = 340.0f32.min(ui.available_width());
    let layout = if c.mine {
        Layout::right_to_left(Align::Min)
    } else {
        Layout::left_to_right(Align::Min)
    };
    ui.with_layout(layout, |ui| {
        let (rect, resp) = ui.allocate_exact_size(vec2(width, 58.0), Sense::click());
        let visuals = ui.visuals();
        let base = if c.mine {
            ACCENT.gamma_multiply(0.35)
        } else {
            visuals.faint_bg_color
        };
        let fill = if resp.hovered() {
            base.gamma_multiply(1.4)
        } else {
            base
        };
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 10.0, fill);
        if playing {
            painter.rect_stroke(
                rect,
                10.0,
                egui::Stroke::new(2.0, ACCENT),
                egui::StrokeKind::Inside,
            );
        }
        let text = visuals.text_color();
        let inner = rect.shrink2(vec2(10.0, 6.0));
        let head = format!("{sender}  ·  {}", widgets::time_text(c.started_at_ms));
        painter.text(
            inner.left_top(),
            egui::Align2::LEFT_TOP,
            head,
            FontId::proportional(12.0),
            text,
        );
        let right = if c.queued {
            "waiting…".to_string()
        } else {
            widgets::duration_text(c.duration_ms)
        };
        painter.text(
            inner.right_top(),
            egui::Align2::RIGHT_TOP,
            right,
            FontId::proportional(12.0),
            text,
        );
        widgets::paint_play_icon(
            &painter,
            egui::pos2(inner.left() + 6.0, inner.bottom() - 12.0),
            playing,
            text,
        );
        let wave = egui::Rect::from_min_max(
            egui::pos2(inner.left() + 20.0, inner.top() + 20.0),
            egui::pos2(inner.right() - 14.0, inner.bottom()),
        );
        widgets::paint_waveform(
            ui,
            wave,
            &c.peaks,
            if c.mine {
                ACCENT
            } else {
                text.gamma_multiply(0.7)
            },
        );
        if !c.played && !c.mine {
            painter.circle_filled(
                egui::pos2(inner.right() - 3.0, inner.bottom() - 8.0),
                4.0,
                ALERT,
            );
        }
        let label = clip_label(c, playing);
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &label));
        let resp = resp.on_hover_text("Click to play");
        if !c.played_by.is_empty() {
            ui.label(
                RichText::new(format!("played by {}", c.played_by.join(", ")))
                    .small()
                    .weak(),
            );
        }
        resp
    })
    .inner
}

/// Draws the conversation's clips (and its history and export controls).
pub fn show(
    ui: &mut Ui,
    conv: &Conversation,
    snap: &Snapshot,
    engine: &Engine,
    state: &mut ConversationState,
    avatars: &mut Avatars,
) {
    let playing = snap.playing;
    ui.horizontal(|ui| {
        ui.heading(conv.label());
        if let Some(online) = conv.online {
            let (color, text) = if online {
                (ACCENT, "online")
            } else {
                (Color32::GRAY, "offline")
            };
            widgets::dot(ui, color, online);
            ui.label(text);
        }
        ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
            let mut muted = snap.settings.muted.contains(&conv.target.to_string());
            if ui
                .checkbox(&mut muted, "Mute")
                .on_hover_text("No desktop notifications from this conversation")
                .changed()
            {
                engine.send(Command::SetMuted {
                    target: conv.target.clone(),
                    muted,
                });
            }
            let mut speed = snap.settings.speed_percent;
            egui::ComboBox::from_label("speed")
                .selected_text(speed_text(speed))
                .width(60.0)
                .show_ui(ui, |ui| {
                    for s in [100, 150, 200] {
                        ui.selectable_value(&mut speed, s, speed_text(s));
                    }
                });
            if speed != snap.settings.speed_percent {
                engine.send(Command::SetSettings(crate::engine::AppSettings {
                    speed_percent: speed,
                    ..snap.settings.clone()
                }));
            }
            let export = ui.button("Export");
            let l = ui.label("to folder");
            ui.add(
                egui::TextEdit::singleline(&mut state.export_dir)
                    .hint_text("/path/to/folder")
                    .desired_width(180.0),
            )
            .labelled_by(l.id);
            if export.clicked() {
                let dir = state.export_dir.trim();
                if !dir.is_empty() {
                    engine.send(Command::Export {
                        target: conv.target.clone(),
                        dir: dir.into(),
                    });
                }
            }
        });
    });
    ui.separator();
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.vertical_centered(|ui| {
                if conv.loading {
                    ui.spinner();
                } else if conv.has_older && ui.button("Load older clips").clicked() {
                    engine.send(Command::LoadOlder(conv.target.clone()));
                }
            });
            if conv.clips.is_empty() {
                ui.label(
                    RichText::new(
                        "No clips yet. Hold the button below (or Space) to say something.",
                    )
                    .weak(),
                );
            }
            for c in &conv.clips {
                let now_playing = playing == Some(c.id);
                // The sender's display name and avatar beside what others said.
                let sender = snap
                    .people
                    .persons
                    .get(&c.from)
                    .and_then(|p| p.display.clone())
                    .unwrap_or_else(|| c.from.clone());
                if !c.content.is_voice() {
                    if c.mine {
                        state.media.bubble(ui, c, &sender, engine);
                    } else {
                        ui.horizontal_top(|ui| {
                            avatars.show(ui, &snap.people, &c.from, 32.0);
                            state.media.bubble(ui, c, &sender, engine);
                        });
                    }
                    ui.add_space(4.0);
                    continue;
                }
                let resp = if c.mine {
                    bubble(ui, c, now_playing, &sender)
                } else {
                    ui.horizontal_top(|ui| {
                        avatars.show(ui, &snap.people, &c.from, 32.0);
                        bubble(ui, c, now_playing, &sender)
                    })
                    .inner
                };
                if resp.clicked() {
                    // A click on the clip that plays stops it; on any other, plays it.
                    engine.send(if now_playing {
                        Command::Stop(c.id)
                    } else {
                        Command::Play(c.id)
                    });
                }
                ui.add_space(4.0);
            }
        });
    state.media.viewer(ui.ctx());
}

fn speed_text(percent: u32) -> String {
    match percent {
        100 => "1x".into(),
        p if p % 100 == 0 => format!("{}x", p / 100),
        p => format!("{}x", p as f32 / 100.0),
    }
}
