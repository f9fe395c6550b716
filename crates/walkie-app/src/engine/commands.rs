//! What the engine does for each [`Command`] from the app (talking is in `talking.rs`).

use tokio::sync::mpsc;

use super::book;
use super::export;
use super::jobs::Job;
use super::state::NoticeKind;
use super::worker::Worker;
use super::{AppSettings, Command};
use walkie_client::Client;
use walkie_proto::clip::ClipId;

impl Worker {
    pub(super) async fn command(&mut self, cmd: Command, client: &mut Option<Client>, rx: &mut mpsc::UnboundedReceiver<Command>) {
        match cmd {
            Command::Connect(p) => {
                self.reconnect = None;
                self.connect(p, client, rx).await;
            }
            Command::Disconnect => {
                self.reconnect = None;
                self.profile = None;
                self.disconnect(client).await;
            }
            Command::Select(t) => self.select(t),
            Command::AddConversation(t) => {
                let name = t.to_string();
                if !self.snap.settings.conversations.contains(&name) {
                    self.snap.settings.conversations.push(name);
                    self.file.settings = self.snap.settings.clone();
                    self.save_file();
                }
                if client.is_some() {
                    self.select(t);
                }
            }
            Command::TalkStart(to) => match client.as_ref() {
                Some(c) => self.talk(c, to, rx).await,
                None => self.notice(NoticeKind::Error, "Not connected: the clip cannot be sent now."),
            },
            // Release and cancel outside a clip: the clip already ended (refused or too long).
            Command::TalkRelease | Command::TalkCancel => {}
            Command::Play(id) => self.play(id),
            Command::LoadOlder(t) => {
                if let Some(c) = self.snap.conversations.iter_mut().find(|c| c.target == t) {
                    c.loading = true;
                }
                self.jobs.push_front(Job::Page { target: t, older: true });
            }
            Command::Export { target, dir } => match client.as_ref() {
                Some(c) => {
                    self.notice(NoticeKind::Info, format!("Exporting {target} to {}…", dir.display()));
                    self.publish();
                    match export::export(c, &target, &dir).await {
                        Ok(n) => self.notice(NoticeKind::Info, format!("Exported {n} clip(s) of {target} to {}.", dir.display())),
                        Err(e) => self.notice(NoticeKind::Error, format!("Export failed: {e}")),
                    }
                }
                None => self.notice(NoticeKind::Error, "Not connected: export needs the relay."),
            },
            Command::SetSettings(s) => self.apply_settings(s),
            Command::RefreshDevices => self.list_devices(),
            Command::MicTest => self.mic_test(),
            Command::DismissNotice => self.snap.notice = None,
            Command::DemoPeerTalk => match &self.demo {
                Some(d) => d.bob_talks(),
                None => self.notice(NoticeKind::Error, "Only the demo has a simulated bob."),
            },
            Command::Shutdown => {}
        }
    }

    fn apply_settings(&mut self, s: AppSettings) {
        let old = std::mem::replace(&mut self.snap.settings, s);
        self.file.settings = self.snap.settings.clone();
        self.save_file();
        let new = &self.snap.settings;
        if new.input_device != old.input_device || new.noise_suppression != old.noise_suppression {
            self.mic.configure(self.input_spec(), self.snap.settings.noise_suppression);
            if self.session.is_some() {
                self.start_audio();
            }
        } else if new.output_device != old.output_device && self.session.is_some() {
            self.start_audio();
        }
    }

    /// Plays a clip (again): now if its audio is here, else once fetched. An unplayed clip
    /// already waiting for its turn is left to play then.
    fn play(&mut self, id: ClipId) {
        let Some((conv, clip)) = book::find(&self.snap.conversations, id) else { return };
        if self.in_player.contains(&id) || self.autoplay.contains(&id) {
            return;
        }
        let rc = self.audio.get(&id).map(|a| a.to_received(id, &clip.from, conv.target.clone(), clip.started_at_ms));
        match rc {
            Some(rc) => {
                self.in_player.insert(id);
                self.speaker.replay(id, rc);
            }
            None => {
                self.replays.insert(id);
                self.jobs.retain(|j| *j != Job::Audio(id));
                self.jobs.push_front(Job::Audio(id));
            }
        }
    }
}
