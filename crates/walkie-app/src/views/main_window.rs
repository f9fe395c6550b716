//! The main window: a top bar (who you are, settings, disconnect), the latest notice, the
//! list of channels and contacts (presence, unread counts), the conversation on screen, and
//! the talk area under it.

use eframe::egui::{self, Color32, RichText, Ui};

use super::avatars::Avatars;
use super::conversation::{self, ConversationState};
use super::people::{self, PeoplePanel};
use super::settings::{self, SettingsView};
use super::talk_button::{self, TalkKeys};
use super::widgets::{self, ACCENT, ALERT};
use crate::engine::{Command, Connection, Conversation, Engine, NoticeKind, Snapshot};
use walkie_proto::clip::Target;

/// What the main window remembers between frames.
#[derive(Default)]
pub struct MainState {
    add: String,
    conversation: ConversationState,
}

/// The side panels and what they remember.
pub struct Panels<'a> {
    /// Settings.
    pub settings: &'a mut SettingsView,
    /// People.
    pub people: &'a mut PeoplePanel,
    /// Avatar textures.
    pub avatars: &'a mut Avatars,
}

/// Draws the main window.
pub fn show(
    ui: &mut Ui,
    snap: &Snapshot,
    engine: &Engine,
    state: &mut MainState,
    keys: &mut TalkKeys,
    panels: Panels<'_>,
) {
    let Panels {
        settings: settings_view,
        people: people_panel,
        avatars,
    } = panels;
    egui::Panel::top("top").show(ui, |ui| {
        top_bar(ui, snap, engine, settings_view, people_panel)
    });
    if let Some(n) = &snap.notice {
        egui::Panel::top("notice").show(ui, |ui| {
            ui.horizontal(|ui| {
                let color = match n.kind {
                    NoticeKind::Info => ui.visuals().text_color(),
                    NoticeKind::Busy => Color32::from_rgb(0xd0, 0x8a, 0x10),
                    NoticeKind::Error => ALERT,
                };
                ui.label(RichText::new(&n.text).color(color).strong());
                if ui.small_button("Dismiss").clicked() {
                    engine.send(Command::DismissNotice);
                }
            });
        });
    }
    egui::Panel::left("conversations")
        .default_size(240.0)
        .show(ui, |ui| list(ui, snap, engine, state, avatars));
    if settings_view.open {
        egui::Panel::right("settings")
            .default_size(300.0)
            .show(ui, |ui| settings::show(ui, snap, engine, settings_view));
    }
    if people_panel.open {
        egui::Panel::right("people")
            .default_size(320.0)
            .show(ui, |ui| {
                people::show(ui, snap, engine, people_panel, avatars)
            });
    }
    let selected = snap.selected_conversation();
    if let Some(conv) = selected {
        egui::Panel::bottom("talk").show(ui, |ui| {
            ui.add_space(6.0);
            super::compose::show(ui, &conv.target, engine, &mut state.conversation.composer);
            ui.add_space(6.0);
            talk_button::show(ui, snap, engine, keys, &conv.target);
            ui.add_space(8.0);
        });
    }
    egui::CentralPanel::default().show(ui, |ui| match selected {
        Some(conv) => conversation::show(ui, conv, snap, engine, &mut state.conversation, avatars),
        None => {
            ui.label("No conversations yet: add a channel or @user on the left.");
        }
    });
}

fn top_bar(
    ui: &mut Ui,
    snap: &Snapshot,
    engine: &Engine,
    settings_view: &mut SettingsView,
    people_panel: &mut PeoplePanel,
) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("walkie").strong().size(18.0));
        match &snap.connection {
            Connection::Connected { user, relay } => {
                widgets::dot(ui, ACCENT, true);
                ui.label(format!("{user} at {relay}"));
                if let Some(display) = snap
                    .people
                    .persons
                    .get(user)
                    .and_then(|p| p.display.as_deref())
                {
                    ui.label(RichText::new(display).weak());
                }
            }
            Connection::Lost { why, .. } => {
                ui.spinner();
                ui.label(
                    RichText::new(format!(
                        "{why} Clips you record wait in the outbox and go when the relay is back."
                    ))
                    .color(ALERT),
                );
            }
            _ => {}
        }
        if let Some(p) = &snap.audio_problem {
            ui.label(RichText::new("audio device problem").color(ALERT))
                .on_hover_text(p.as_str());
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui.button("Disconnect").clicked() {
                engine.send(Command::Disconnect);
            }
            if ui
                .selectable_label(settings_view.open, "Settings")
                .clicked()
            {
                settings_view.open = !settings_view.open;
            }
            let waiting = snap
                .people
                .contacts
                .iter()
                .filter(|c| c.state == Some(walkie_proto::people::ContactState::Incoming))
                .count();
            let label = if waiting > 0 {
                format!("People ({waiting} asking)")
            } else {
                "People".to_string()
            };
            if ui.selectable_label(people_panel.open, label).clicked() {
                people_panel.open = !people_panel.open;
            }
            if snap.demo && ui.button("Simulate bob talking").clicked() {
                engine.send(Command::DemoPeerTalk);
            }
        });
    });
}

fn row_text(c: &Conversation) -> String {
    let mut s = match &c.target {
        Target::Channel(name) => format!("# {name}"),
        Target::User(name) => format!("@{name}"),
    };
    if c.talking.is_some() {
        s.push_str("  (talking)");
    }
    if c.unread > 0 {
        s.push_str(&format!("  {} unread", c.unread));
    }
    s
}

fn list(
    ui: &mut Ui,
    snap: &Snapshot,
    engine: &Engine,
    state: &mut MainState,
    avatars: &mut Avatars,
) {
    ui.add_space(4.0);
    ui.label(RichText::new("Channels and contacts").strong());
    ui.add_space(4.0);
    egui::ScrollArea::vertical()
        .max_height(ui.available_height() - 70.0)
        .show(ui, |ui| {
            for c in &snap.conversations {
                ui.horizontal(|ui| {
                    let (color, filled, hover) = match c.online {
                        Some(true) => (ACCENT, true, "online"),
                        Some(false) => (Color32::GRAY, false, "offline"),
                        None => (Color32::TRANSPARENT, true, "channel"),
                    };
                    widgets::dot(ui, color, filled).on_hover_text(hover);
                    if let Target::User(u) = &c.target {
                        avatars.show(ui, &snap.people, u, 20.0);
                    }
                    let selected = snap.selected.as_ref() == Some(&c.target);
                    let mut text = RichText::new(row_text(c));
                    if c.unread > 0 {
                        text = text.strong();
                    }
                    if ui.selectable_label(selected, text).clicked() {
                        engine.send(Command::Select(c.target.clone()));
                    }
                    let shown = match &c.target {
                        Target::User(u) => {
                            snap.people.persons.get(u).and_then(|p| p.display.clone())
                        }
                        Target::Channel(name) => snap
                            .people
                            .groups
                            .iter()
                            .find(|g| &g.name == name)
                            .and_then(|g| g.title.clone()),
                    };
                    if let Some(shown) = shown {
                        ui.label(RichText::new(shown).weak());
                    }
                });
            }
        });
    ui.separator();
    let l = ui.label("Add a channel or @user");
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut state.add)
                .hint_text("crew or @bob")
                .desired_width(130.0),
        )
        .labelled_by(l.id);
        if ui.button("Add").clicked()
            && let Ok(t) = state.add.trim().parse::<Target>()
        {
            engine.send(Command::AddConversation(t));
            state.add.clear();
        }
    });
}
