//! Background work that needs the relay, done one piece at a time between events: history
//! pages of a conversation, and clip audio (for waveforms, auto-play and replays), with a
//! bounded cache of what was fetched.

use tracing::warn;

use super::audio_clip::ClipAudio;
use super::book;
use super::session;
use super::state::NoticeKind;
use super::worker::Worker;
use walkie_client::{Client, ClientError};
use walkie_proto::clip::{ClipId, ClipMeta, Target};

/// Decoded audio kept for replays, at most.
const AUDIO_CACHE_BYTES: usize = 32 << 20;

/// Background work that needs the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Job {
    /// Load a history page of a conversation (before its oldest clip when `older`).
    Page { target: Target, older: bool },
    /// Fetch a clip's audio (for its waveform, and to play it if it waits for that).
    Audio(ClipId),
}

/// What a background job brought back.
pub(super) enum JobDone {
    /// A history page.
    Page { target: Target, clips: Vec<ClipMeta>, more: bool, older: bool },
    /// A clip's audio.
    Audio(ClipId, ClipAudio),
}

impl Worker {
    /// Shows a conversation and queues its history and waveforms.
    pub fn select(&mut self, target: Target) {
        book::ensure(&mut self.snap.conversations, &target);
        self.snap.selected = Some(target.clone());
        let job = Job::Page { target, older: false };
        if !self.jobs.contains(&job) {
            self.jobs.push_back(job);
        }
    }

    /// Queues waveforms for clips of a conversation that have none.
    pub(super) fn queue_waveforms(&mut self, target: &Target) {
        let Some(conv) = self.snap.conversation(target) else { return };
        let missing: Vec<ClipId> = conv.clips.iter().rev().filter(|c| c.peaks.is_empty() && !c.queued).map(|c| c.id).collect();
        for id in missing {
            if !self.jobs.contains(&Job::Audio(id)) {
                self.jobs.push_back(Job::Audio(id));
            }
        }
    }

    pub(super) async fn run_job(&self, client: &Client, job: &Job) -> Result<JobDone, ClientError> {
        match job {
            Job::Page { target, older } => {
                let before = match older {
                    true => self.snap.conversation(target).and_then(book::oldest_seq),
                    false => None,
                };
                let (clips, more) = session::page(client, target, before).await?;
                Ok(JobDone::Page { target: target.clone(), clips, more, older: *older })
            }
            Job::Audio(id) => {
                if let Some(a) = self.audio.get(id) {
                    return Ok(JobDone::Audio(*id, a.clone()));
                }
                Ok(JobDone::Audio(*id, session::fetch_audio(client, *id).await?))
            }
        }
    }

    /// Remembers a clip's audio (bounded), sets its waveform, and plays it if it waits.
    pub fn got_audio(&mut self, id: ClipId, audio: ClipAudio) {
        if let Ok(p) = audio.peaks() {
            book::set_peaks(&mut self.snap.conversations, id, p);
        }
        if let Some((conv, clip)) = book::find(&self.snap.conversations, id) {
            let mut rc = audio.to_received(id, &clip.from, conv.target.clone(), clip.started_at_ms);
            rc.header.seq = clip.seq;
            if self.autoplay.remove(&id) && !clip.played {
                self.in_player.insert(id);
                self.speaker.queue(rc);
            } else if self.replays.remove(&id) {
                self.in_player.insert(id);
                self.speaker.replay(id, rc);
            }
        }
        if !self.audio.contains_key(&id) {
            self.audio_order.push_back(id);
            self.audio.insert(id, audio);
        }
        let mut total: usize = self.audio.values().map(ClipAudio::bytes).sum();
        while total > AUDIO_CACHE_BYTES {
            let Some(old) = self.audio_order.pop_front() else { break };
            total -= self.audio.remove(&old).map_or(0, |a| a.bytes());
        }
    }

    pub(super) fn job_done(&mut self, job: Job, done: Result<JobDone, ClientError>) {
        match done {
            Ok(JobDone::Page { target, clips, more, older }) => {
                let me = self.snap.me().unwrap_or_default().to_string();
                for meta in &clips {
                    let played = !self.session.as_ref().is_some_and(|s| s.unplayed.contains(&meta.id));
                    book::add_clip(&mut self.snap.conversations, &me, meta, played);
                }
                let conv = book::ensure(&mut self.snap.conversations, &target);
                conv.loading = false;
                if older || conv.clips.len() <= clips.len() {
                    conv.has_older = more;
                }
                self.queue_waveforms(&target);
            }
            Ok(JobDone::Audio(id, audio)) => self.got_audio(id, audio),
            Err(e) => {
                warn!("background {job:?} failed: {e}");
                match job {
                    Job::Page { target, .. } => {
                        if let Some(c) = self.snap.conversations.iter_mut().find(|c| c.target == target) {
                            c.loading = false;
                        }
                        self.notice(NoticeKind::Error, format!("Cannot load the history of {target}: {e}"));
                    }
                    Job::Audio(id) => {
                        self.autoplay.remove(&id);
                        self.replays.remove(&id);
                    }
                }
            }
        }
    }

    /// Marks a clip unplayed or played, persistently.
    pub fn set_unplayed(&mut self, id: ClipId, unplayed: bool) {
        if let Some(s) = &mut self.session
            && let Err(e) = s.unplayed.set(id, unplayed)
        {
            warn!("cannot save played marks: {e}");
        }
    }
}
