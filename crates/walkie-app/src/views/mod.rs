//! The app's views (egui) over the [engine](crate::engine).
//! Views only: every action is an engine [`Command`], everything shown comes from its
//! [`Snapshot`].
//!
//! | file | shows |
//! |---|---|
//! | `views/mod.rs` | [`WalkieApp`], [`run`]: the window and which screen is up |
//! | `connect.rs` | the connect screen (an invite link; or relay, user, token, certificate or fingerprint) |
//! | `main_window.rs` | the top bar, notices, the conversation list |
//! | `conversation.rs` | one conversation's clips, history paging, export |
//! | `messages.rs` | texts, pictures (thumbnails that open full size), doodles drawn as they were, read ticks, recall |
//! | `compose.rs` | the text box, pictures by path or dropped, the doodle canvas |
//! | `talk_button.rs` | push-to-talk: the held button, Space, Esc, level meter, who is talking |
//! | `settings.rs` | devices, microphone test, noise suppression, bitrate |
//! | `people.rs` | your profile, contacts and requests, channels you make, finding friends |
//! | `avatars.rs` | avatars as textures, drawn beside clips, contacts and people online |
//! | `fonts.rs` | a system CJK font as a fallback, for names in any script |
//! | `widgets.rs` | the waveform, the level meter, times and durations |
//!
//! Keys: hold **Space** to talk (while the window has focus and no text field is being
//! edited), release to send; **Esc** cancels the clip being recorded.

mod avatars;
mod compose;
mod connect;
mod conversation;
mod fonts;
mod main_window;
mod messages;
mod people;
mod settings;
mod talk_button;
mod widgets;

use std::sync::Arc;

use eframe::egui;

use walkie_client::profile::Profile;

use crate::engine::{Engine, EngineOptions, Snapshot};

/// The app: the engine and what the views remember between frames.
pub struct WalkieApp {
    engine: Engine,
    snap: Arc<Snapshot>,
    connect: connect::ConnectForm,
    talk: talk_button::TalkKeys,
    main: main_window::MainState,
    settings: settings::SettingsView,
    people: people::PeoplePanel,
    avatars: avatars::Avatars,
    waker_set: bool,
    /// Whether the window had the focus last frame (the engine is told of changes).
    focused: Option<bool>,
}

impl WalkieApp {
    /// An app over a started engine.
    pub fn new(engine: Engine) -> WalkieApp {
        let snap = engine.snapshot();
        WalkieApp {
            engine,
            snap,
            connect: connect::ConnectForm::default(),
            talk: talk_button::TalkKeys::default(),
            main: main_window::MainState::default(),
            settings: settings::SettingsView::default(),
            people: people::PeoplePanel::default(),
            avatars: avatars::Avatars::default(),
            waker_set: false,
            focused: None,
        }
    }

    /// The engine (tests read its snapshot and wait on it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Draws the whole app into `ui` (the window's root, or a test harness).
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        if !self.waker_set {
            let ctx = ui.ctx().clone();
            // Texts and names come from other people: a character no font has (an emoji, a
            // rare script) is drawn as a box, never a reason to stop drawing.
            ctx.set_missing_glyph_policy(egui::MissingGlyphPolicy::Tofu);
            if fonts::install_fallbacks(&ctx).is_none() {
                tracing::info!(
                    "no CJK font found (install fonts-wqy-microhei): such names show as boxes"
                );
            }
            self.engine.on_change(move || ctx.request_repaint());
            self.waker_set = true;
        }
        self.snap = self.engine.snapshot();
        let snap = self.snap.clone();
        let focused = ui.ctx().input(|i| i.focused);
        if self.focused != Some(focused) {
            self.focused = Some(focused);
            self.engine
                .send(crate::engine::Command::SetFocused(focused));
        }
        if snap.connection.shows_conversations() {
            let panels = main_window::Panels {
                settings: &mut self.settings,
                people: &mut self.people,
                avatars: &mut self.avatars,
            };
            main_window::show(
                ui,
                &snap,
                &self.engine,
                &mut self.main,
                &mut self.talk,
                panels,
            );
        } else {
            connect::show(ui, &snap, &self.engine, &mut self.connect);
        }
    }
}

impl eframe::App for WalkieApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        WalkieApp::ui(self, ui);
    }
}

/// Opens the window. `profile` comes from the command line, the environment and the saved
/// CLI profile; when it is complete the app connects at once, else it shows the connect
/// screen. `demo` starts an in-process relay with alice and bob and connects as alice.
pub fn run(profile: Profile, demo: bool) -> Result<(), String> {
    let opts = EngineOptions {
        profile: Some(profile),
        demo,
        ..EngineOptions::standard().map_err(|e| e.to_string())?
    };
    run_with(opts)
}

/// Opens the window over an engine started with `opts`.
pub fn run_with(opts: EngineOptions) -> Result<(), String> {
    let engine = Engine::start(opts).map_err(|e| e.to_string())?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("walkie")
            .with_inner_size([960.0, 640.0])
            .with_min_inner_size([640.0, 420.0]),
        ..Default::default()
    };
    let result = eframe::run_native(
        "walkie",
        options,
        Box::new(|_cc| Ok(Box::new(WalkieApp::new(engine)))),
    );
    result.map_err(|e| format!("cannot open the window: {e}"))
}
