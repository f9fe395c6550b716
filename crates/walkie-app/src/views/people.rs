//! People: your display name and avatar; your contacts, with requests to accept; your
//! channels (make one, add people, leave, delete the ones you own); people you may know and
//! people nearby. Every action is an engine command; its outcome shows as the notice.

use std::collections::BTreeMap;

use eframe::egui::{self, RichText, Ui};

use super::avatars::Avatars;
use crate::engine::{Command, Engine, Snapshot};
use walkie_proto::people::{ContactAction, ContactState, GroupAction};

/// What the panel remembers between frames.
#[derive(Default)]
pub struct PeoplePanel {
    /// Shown beside the conversation.
    pub open: bool,
    display: String,
    avatar: String,
    add: String,
    new_channel: String,
    new_members: String,
    invite: BTreeMap<String, String>,
    place: String,
}

fn labelled(ui: &mut Ui, label: &str, value: &mut String, hint: &str) {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(
            egui::TextEdit::singleline(value)
                .hint_text(hint)
                .desired_width(150.0),
        )
        .labelled_by(l.id);
    });
}

/// Draws the people panel.
pub fn show(
    ui: &mut Ui,
    snap: &Snapshot,
    engine: &Engine,
    panel: &mut PeoplePanel,
    avatars: &mut Avatars,
) {
    let people = &snap.people;
    let me = snap.me().unwrap_or_default().to_string();
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.heading("People");
        ui.horizontal(|ui| {
            avatars.show(ui, people, &me, 40.0);
            ui.label(people.name_of(&me));
        });
        labelled(
            ui,
            "Display name",
            &mut panel.display,
            "the name people see",
        );
        if ui.button("Save name").clicked() && !panel.display.trim().is_empty() {
            engine.send(Command::SetDisplayName(panel.display.trim().to_string()));
        }
        labelled(ui, "Avatar file", &mut panel.avatar, "/path/to/picture.jpg");
        if ui
            .button("Set avatar")
            .on_hover_text("PNG, JPEG or WebP, at most 2 MB; only its pixels are sent")
            .clicked()
            && !panel.avatar.trim().is_empty()
        {
            engine.send(Command::SetAvatar(panel.avatar.trim().into()));
        }

        ui.separator();
        ui.label(RichText::new("Contacts").strong());
        for c in &people.contacts {
            ui.horizontal(|ui| {
                avatars.show(ui, people, &c.user, 22.0);
                let state = c.state.map_or("", |s| s.name());
                let presence = if c.online { ", online" } else { "" };
                ui.label(format!("{} ({state}{presence})", people.name_of(&c.user)));
                if c.state == Some(ContactState::Incoming)
                    && ui.button(format!("Accept {}", c.user)).clicked()
                {
                    engine.send(Command::Contact {
                        user: c.user.clone(),
                        action: ContactAction::Accept,
                    });
                }
                if c.state == Some(ContactState::Contact)
                    && ui.small_button(format!("Talk to {}", c.user)).clicked()
                {
                    engine.send(Command::Select(walkie_proto::clip::Target::User(
                        c.user.clone(),
                    )));
                }
                let remove = if c.state == Some(ContactState::Blocked) {
                    "Unblock"
                } else {
                    "Remove"
                };
                if ui.small_button(format!("{remove} {}", c.user)).clicked() {
                    engine.send(Command::Contact {
                        user: c.user.clone(),
                        action: ContactAction::Remove,
                    });
                }
            });
        }
        labelled(ui, "Add contact", &mut panel.add, "@user");
        ui.horizontal(|ui| {
            let who = panel.add.trim().trim_start_matches('@').to_string();
            if ui.button("Ask").clicked() && !who.is_empty() {
                engine.send(Command::Contact {
                    user: who.clone(),
                    action: ContactAction::Add,
                });
                panel.add.clear();
            }
            if ui.button("Block").clicked() && !who.is_empty() {
                engine.send(Command::Contact {
                    user: who,
                    action: ContactAction::Block,
                });
                panel.add.clear();
            }
        });

        ui.separator();
        ui.label(RichText::new("Channels").strong());
        for g in &people.groups {
            let title = g
                .title
                .as_deref()
                .map(|t| format!(" “{t}”"))
                .unwrap_or_default();
            let owner = match g.owner.as_deref() {
                Some(o) if o == me => " (yours)".to_string(),
                Some(o) => format!(" (by @{o})"),
                None => " (by the administrator)".to_string(),
            };
            ui.label(format!(
                "# {}{title}{owner}: {}",
                g.name,
                g.members.join(", ")
            ));
            if g.owner.is_some() {
                let text = panel.invite.entry(g.name.clone()).or_default();
                ui.horizontal(|ui| {
                    let l = ui.label(format!("Add to {}", g.name));
                    ui.add(
                        egui::TextEdit::singleline(text)
                            .hint_text("@user")
                            .desired_width(90.0),
                    )
                    .labelled_by(l.id);
                    if ui.button(format!("Add member to {}", g.name)).clicked()
                        && !text.trim().is_empty()
                    {
                        let user = text.trim().trim_start_matches('@').to_string();
                        engine.send(Command::Group {
                            channel: g.name.clone(),
                            action: GroupAction::Invite { user },
                        });
                        text.clear();
                    }
                });
            }
            ui.horizontal(|ui| {
                if ui.small_button(format!("Leave {}", g.name)).clicked() {
                    engine.send(Command::Group {
                        channel: g.name.clone(),
                        action: GroupAction::Leave,
                    });
                }
                if g.owner.as_deref() == Some(me.as_str())
                    && ui.small_button(format!("Delete {}", g.name)).clicked()
                {
                    engine.send(Command::Group {
                        channel: g.name.clone(),
                        action: GroupAction::Delete,
                    });
                }
            });
        }
        labelled(ui, "New channel", &mut panel.new_channel, "name: a-z, 0-9");
        labelled(ui, "Members", &mut panel.new_members, "bob, carol");
        if ui.button("Create channel").clicked() && !panel.new_channel.trim().is_empty() {
            let members = panel
                .new_members
                .split(',')
                .map(|m| m.trim().trim_start_matches('@').to_string())
                .filter(|m| !m.is_empty())
                .collect();
            engine.send(Command::Group {
                channel: panel.new_channel.trim().to_string(),
                action: GroupAction::Create { members },
            });
            panel.new_channel.clear();
            panel.new_members.clear();
        }

        ui.separator();
        ui.label(RichText::new("Find friends").strong());
        if ui.button("People you may know").clicked() {
            engine.send(Command::Suggest);
        }
        for s in &people.suggestions {
            ui.horizontal(|ui| {
                avatars.show(ui, people, &s.user, 22.0);
                ui.label(format!(
                    "{} ({} in common)",
                    people.name_of(&s.user),
                    s.mutual
                ));
                if ui.small_button(format!("Ask {}", s.user)).clicked() {
                    engine.send(Command::Contact {
                        user: s.user.clone(),
                        action: ContactAction::Add,
                    });
                }
            });
        }
        labelled(ui, "Where you are", &mut panel.place, "a city, or LAT,LON");
        ui.horizontal(|ui| {
            if ui
                .button("People nearby")
                .on_hover_text("Only a ~5 km square is shared, for one hour")
                .clicked()
                && !panel.place.trim().is_empty()
            {
                engine.send(Command::Nearby(Some(panel.place.trim().to_string())));
            }
            if ui.button("Hide me").clicked() {
                engine.send(Command::Nearby(None));
            }
        });
        for n in &people.nearby {
            ui.horizontal(|ui| {
                avatars.show(ui, people, &n.user, 22.0);
                ui.label(format!("{}, {} km", people.name_of(&n.user), n.km));
            });
        }
    });
}
