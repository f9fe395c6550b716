//! The connect screen: an invite link with the name you want (one field to paste, two to
//! type); behind "Advanced", the relay address, user name, token, and the relay's
//! certificate file or fingerprint; the profiles used before, one click each; and why the
//! last attempt failed.

use std::path::PathBuf;

use eframe::egui::{self, RichText, Ui};

use super::widgets::ALERT;
use crate::engine::{Command, Connection, Engine, Snapshot};
use walkie_client::profile::Profile;

/// The form's text, kept between frames.
#[derive(Default)]
pub struct ConnectForm {
    link: String,
    login: String,
    display: String,
    relay: String,
    user: String,
    token: String,
    cert: String,
    fingerprint: String,
    /// A profile's CA file, kept as it was (the form has no field for it).
    ca_file: Option<PathBuf>,
    filled: bool,
}

impl ConnectForm {
    fn fill(&mut self, p: &Profile) {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        self.relay = s(&p.relay);
        self.user = s(&p.user);
        self.token = s(&p.token);
        self.cert = p
            .cert
            .as_ref()
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        self.fingerprint = s(&p.fingerprint);
        self.ca_file = p.ca_file.clone();
    }

    fn profile(&self) -> Profile {
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Profile {
            relay: opt(&self.relay),
            user: opt(&self.user),
            token: opt(&self.token),
            cert: opt(&self.cert).map(PathBuf::from),
            fingerprint: opt(&self.fingerprint),
            ca_file: self.ca_file.clone(),
        }
    }
}

fn field(ui: &mut Ui, label: &str, value: &mut String, hint: &str, password: bool) {
    ui.horizontal(|ui| {
        let l = ui.add_sized([110.0, 20.0], egui::Label::new(label));
        let edit = egui::TextEdit::singleline(value)
            .hint_text(hint)
            .password(password)
            .desired_width(360.0);
        ui.add(edit).labelled_by(l.id);
    });
}

/// Draws the connect screen.
pub fn show(ui: &mut Ui, snap: &Snapshot, engine: &Engine, form: &mut ConnectForm) {
    if !form.filled {
        if let Some(p) = snap.profiles.first() {
            form.fill(p);
        }
        form.filled = true;
    }
    egui::CentralPanel::default().show(ui, |ui| {
        ui.vertical_centered(|ui| {
            ui.add_space(24.0);
            ui.heading(RichText::new("walkie").size(32.0));
            ui.label("Push-to-talk voice messages. Connect to a relay to start.");
            ui.add_space(16.0);
        });
        let connecting = matches!(snap.connection, Connection::Connecting(_));
        ui.group(|ui| {
            ui.label(RichText::new("Join with an invite link").strong());
            field(
                ui,
                "Invite link",
                &mut form.link,
                "walkie://host:7300/join/…#sha256:…",
                false,
            );
            field(
                ui,
                "Login name",
                &mut form.login,
                "how others find you: a-z, 0-9 (not needed for a device link)",
                false,
            );
            field(
                ui,
                "Display name",
                &mut form.display,
                "the name people see, in any script",
                false,
            );
            ui.add_space(6.0);
            ui.horizontal(|ui| {
                let join = ui.add_enabled(
                    !connecting && !form.link.trim().is_empty(),
                    egui::Button::new("Join"),
                );
                if join.clicked() {
                    let display = Some(form.display.trim().to_string()).filter(|d| !d.is_empty());
                    engine.send(Command::Join {
                        link: form.link.trim().to_string(),
                        name: form.login.trim().to_string(),
                        display,
                    });
                }
                if connecting {
                    ui.spinner();
                    ui.label("Connecting…");
                }
            });
        });
        ui.add_space(8.0);
        egui::CollapsingHeader::new("Advanced: connect with a user name and token").show(
            ui,
            |ui| {
                field(ui, "Relay", &mut form.relay, "host:7300", false);
                field(ui, "User", &mut form.user, "your user name", false);
                field(
                    ui,
                    "Token",
                    &mut form.token,
                    "from walkie-relay user add",
                    true,
                );
                field(
                    ui,
                    "Certificate",
                    &mut form.cert,
                    "path to the relay's cert.pem",
                    false,
                );
                field(
                    ui,
                    "Fingerprint",
                    &mut form.fingerprint,
                    "or sha256:… as walkie-relay serve prints",
                    false,
                );
                ui.add_space(6.0);
                let connect = ui.add_enabled(!connecting, egui::Button::new("Connect"));
                if connect.clicked() {
                    engine.send(Command::Connect(form.profile()));
                }
            },
        );
        match &snap.connection {
            Connection::Failed(why) | Connection::Lost { why, .. } => {
                ui.add_space(8.0);
                ui.label(RichText::new(why).color(ALERT));
            }
            _ => {}
        }
        if let Some(n) = &snap.notice {
            ui.label(&n.text);
        }
        if !snap.profiles.is_empty() {
            ui.add_space(12.0);
            ui.label(RichText::new("Used before").strong());
            for p in &snap.profiles {
                let name = format!(
                    "{} at {}",
                    p.user.as_deref().unwrap_or("?"),
                    p.relay.as_deref().unwrap_or("?")
                );
                if ui
                    .add_enabled(!connecting, egui::Button::new(&name))
                    .on_hover_text("Fill in the form with this profile")
                    .clicked()
                {
                    form.fill(p);
                }
            }
        }
    });
}
