//! Push-to-talk: a large button held with the mouse, or Space held while the window has
//! focus. Releasing sends; dragging off the button before letting go, or Esc, cancels (like
//! WeChat's slide-to-cancel). While talking: a level meter and the elapsed time. Someone
//! else talking shows as "bob is talking".

use std::time::Duration;

use eframe::egui::{self, Color32, RichText, Sense, Ui, vec2};

use super::widgets::{self, ACCENT, ALERT};
use crate::engine::{Command, Engine, Snapshot, Talk};
use walkie_proto::clip::Target;

/// How often the meter redraws while talking.
const METER_RATE: Duration = Duration::from_millis(50);

/// What holds the talk key down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Mouse,
    Space,
}

/// The talk key's state between frames.
#[derive(Default)]
pub struct TalkKeys {
    held: Option<Holder>,
    /// Esc was pressed while held: the release does nothing more.
    cancelled: bool,
    /// The pointer left the button while held: letting go cancels.
    off_button: bool,
}

impl TalkKeys {
    fn press(&mut self, by: Holder, engine: &Engine, to: &Target) {
        self.held = Some(by);
        self.cancelled = false;
        self.off_button = false;
        engine.send(Command::TalkStart(to.clone()));
    }

    fn let_go(&mut self, engine: &Engine, send: bool) {
        if !self.cancelled {
            engine.send(if send {
                Command::TalkRelease
            } else {
                Command::TalkCancel
            });
        }
        self.held = None;
        self.off_button = false;
    }
}

/// Draws the talk area for conversation `to`.
pub fn show(ui: &mut Ui, snap: &Snapshot, engine: &Engine, keys: &mut TalkKeys, to: &Target) {
    ui.vertical_centered(|ui| {
        live_indicator(ui, snap, to);
        let talking = matches!(snap.talk, Talk::Talking { .. });
        let (text, fill) = match (keys.held.is_some() && !keys.cancelled, keys.off_button) {
            (true, true) => ("Release to cancel", ALERT),
            (true, false) => ("Release to send", ACCENT),
            (false, _) => ("Hold to talk", ACCENT.gamma_multiply(0.85)),
        };
        let button = egui::Button::new(RichText::new(text).size(20.0).color(Color32::WHITE))
            .fill(fill)
            .min_size(vec2(260.0, 72.0))
            .corner_radius(36.0)
            .sense(Sense::click_and_drag());
        let resp = ui.add(button);
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, "Hold to talk"));
        // The mouse: press on the button starts, release sends, release elsewhere cancels.
        if keys.held.is_none() && resp.is_pointer_button_down_on() {
            keys.press(Holder::Mouse, engine, to);
        }
        if keys.held == Some(Holder::Mouse) {
            keys.off_button = !resp.contains_pointer();
            if !ui.input(|i| i.pointer.primary_down()) {
                let send = !keys.off_button;
                keys.let_go(engine, send);
            }
        }
        // Space, unless a text field takes the keyboard.
        let typing = ui.ctx().egui_wants_keyboard_input();
        let (space_down, space_up, esc) = ui.input(|i| {
            (
                i.key_pressed(egui::Key::Space),
                i.key_released(egui::Key::Space),
                i.key_pressed(egui::Key::Escape),
            )
        });
        if keys.held.is_none() && space_down && !typing {
            keys.press(Holder::Space, engine, to);
        } else if keys.held == Some(Holder::Space) && space_up {
            keys.let_go(engine, true);
        }
        if esc && (keys.held.is_some() || talking) && !keys.cancelled {
            engine.send(Command::TalkCancel);
            keys.cancelled = keys.held.is_some();
        }
        status_line(ui, snap, keys);
        if keys.held.is_some() || talking {
            ui.ctx().request_repaint_after(METER_RATE);
        }
    });
}

/// Level and elapsed time while talking; "Sending…" after release; the keys otherwise.
fn status_line(ui: &mut Ui, snap: &Snapshot, keys: &TalkKeys) {
    match &snap.talk {
        Talk::Talking { control, to } => {
            ui.horizontal(|ui| {
                ui.add_space((ui.available_width() - 340.0).max(0.0) / 2.0);
                widgets::dot(ui, ALERT, true);
                ui.label(RichText::new(widgets::clock_text(control.elapsed())).monospace());
                widgets::level_meter(ui, control.level(), 200.0);
                ui.label(format!("to {to}"));
            });
            let hint = if keys.off_button {
                "Let go here to cancel"
            } else {
                "Esc cancels"
            };
            ui.label(RichText::new(hint).weak());
        }
        Talk::Sending { to } => {
            ui.horizontal(|ui| {
                ui.add_space((ui.available_width() - 120.0).max(0.0) / 2.0);
                ui.spinner();
                ui.label(format!("Sending to {to}…"));
            });
        }
        Talk::Idle => {
            ui.label(RichText::new("Hold Space or the button to talk · release to send · Esc or drag off to cancel").weak());
        }
    }
}

/// "bob is talking" for this conversation (or elsewhere).
fn live_indicator(ui: &mut Ui, snap: &Snapshot, to: &Target) {
    let here = snap.conversation(to).and_then(|c| c.talking.clone());
    let text = match (here, snap.someone_talking()) {
        (Some(who), _) => Some(format!("{who} is talking…")),
        (None, Some((who, place))) => Some(format!("{who} is talking on {place}…")),
        (None, None) => None,
    };
    match text {
        Some(t) => {
            ui.horizontal(|ui| {
                ui.add_space((ui.available_width() - 200.0).max(0.0) / 2.0);
                widgets::dot(ui, ALERT, true);
                ui.label(RichText::new(t).color(ALERT).strong());
            });
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
        None => {
            ui.label(" ");
        }
    }
}
