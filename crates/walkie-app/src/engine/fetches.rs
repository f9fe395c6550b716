//! Background work that needs the relay, done one piece at a time between events: history
//! pages of a conversation, clip audio (for waveforms, auto-play and replays) and message
//! payloads (texts, pictures, doodles listed from history), with a
//! bounded cache of what was fetched and the clips that wait for their audio to play.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use walkie_client::{Client, ClientError};
use walkie_proto::clip::{ClipId, ClipMeta, Target};
use walkie_proto::message::Content;

use super::audio_clip::ClipAudio;

/// Decoded audio kept for replays, at most.
const AUDIO_CACHE_BYTES: usize = 32 << 20;
/// Clips per history page.
pub const PAGE: u32 = 30;
/// How long a background fetch may take before it is given up (and tried again later).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Background work that needs the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Job {
    /// Load a history page of a conversation (before its oldest clip when `older`).
    Page { target: Target, older: bool },
    /// Fetch a clip's audio (for its waveform, and to play it if it waits for that).
    Audio(ClipId),
    /// Fetch a message's payload (a text, a picture, a doodle listed from history).
    Message(ClipId, Content),
}

/// What a background job brought back.
pub(super) enum JobDone {
    /// A history page: oldest first, and whether older clips may remain.
    Page {
        target: Target,
        clips: Vec<ClipMeta>,
        more: bool,
        older: bool,
    },
    /// A clip's audio.
    Audio(ClipId, ClipAudio),
    /// A message's payload.
    Message(ClipId, Content, Vec<u8>),
}

/// The queue of background jobs, the audio cache, and the clips waiting for their audio.
#[derive(Default)]
pub(super) struct Fetches {
    jobs: VecDeque<Job>,
    cache: HashMap<ClipId, ClipAudio>,
    /// Cached ids, oldest first (the first to go when the cache is full).
    order: VecDeque<ClipId>,
    /// Unplayed clips to auto-play once their audio is fetched.
    autoplay: HashSet<ClipId>,
    /// Clips to replay once their audio is fetched.
    replays: HashSet<ClipId>,
}

impl Fetches {
    /// Queues `job` last, unless it is queued already.
    fn later(&mut self, job: Job) {
        if !self.jobs.contains(&job) {
            self.jobs.push_back(job);
        }
    }

    /// Queues `job` first (moving it there if it is queued already).
    fn first(&mut self, job: Job) {
        self.jobs.retain(|j| *j != job);
        self.jobs.push_front(job);
    }

    /// The newest history page of a conversation.
    pub fn page(&mut self, target: Target) {
        self.later(Job::Page {
            target,
            older: false,
        });
    }

    /// The page before the oldest clip shown, before anything else.
    pub fn older_page(&mut self, target: Target) {
        self.first(Job::Page {
            target,
            older: true,
        });
    }

    /// A clip's audio, for its waveform.
    pub fn audio(&mut self, id: ClipId) {
        self.later(Job::Audio(id));
    }

    /// A message's payload, to show it.
    pub fn message(&mut self, id: ClipId, content: Content) {
        self.later(Job::Message(id, content));
    }

    /// Plays `id` once its audio is here (it was never played).
    pub fn autoplay_when_fetched(&mut self, id: ClipId) {
        self.autoplay.insert(id);
        self.first(Job::Audio(id));
    }

    /// Plays `id` again once its audio is here.
    pub fn replay_when_fetched(&mut self, id: ClipId) {
        self.replays.insert(id);
        self.first(Job::Audio(id));
    }

    /// True if `id` waits for its audio to auto-play.
    pub fn waits_to_autoplay(&self, id: ClipId) -> bool {
        self.autoplay.contains(&id)
    }

    /// Whether `id`'s fetched audio should auto-play, or replay (each once).
    pub fn take_waiting(&mut self, id: ClipId) -> (bool, bool) {
        (self.autoplay.remove(&id), self.replays.remove(&id))
    }

    /// The next job, if any (it stays queued until [`Fetches::finished`]).
    pub fn next(&self) -> Option<Job> {
        self.jobs.front().cloned()
    }

    /// `job` ran (well or not): it leaves the queue; a failed fetch plays nothing.
    pub fn finished(&mut self, job: &Job, ok: bool) {
        self.jobs.retain(|j| j != job);
        if let (Job::Audio(id), false) = (job, ok) {
            self.autoplay.remove(id);
            self.replays.remove(id);
        }
    }

    /// Cached audio of a clip.
    pub fn cached(&self, id: ClipId) -> Option<&ClipAudio> {
        self.cache.get(&id)
    }

    /// Keeps a clip's audio, dropping the oldest beyond the cache's size.
    pub fn keep(&mut self, id: ClipId, audio: ClipAudio) {
        if !self.cache.contains_key(&id) {
            self.order.push_back(id);
            self.cache.insert(id, audio);
        }
        let mut total: usize = self.cache.values().map(ClipAudio::bytes).sum();
        while total > AUDIO_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            total -= self.cache.remove(&old).map_or(0, |a| a.bytes());
        }
    }

    /// The connection is gone: queued jobs go (auto-plays too unless `keep_autoplay`).
    pub fn drop_jobs(&mut self, keep_autoplay: bool) {
        self.jobs.clear();
        if !keep_autoplay {
            self.autoplay.clear();
        }
    }
}

/// Runs one job against the relay; `before_seq` is where an older page ends.
pub(super) async fn run(
    client: &Client,
    job: &Job,
    before_seq: Option<u64>,
    cached: Option<&ClipAudio>,
) -> Result<JobDone, ClientError> {
    match job {
        Job::Page { target, older } => {
            let before = if *older { before_seq } else { None };
            let clips = client.history(Some(target.clone()), PAGE, before).await?;
            let more = clips.len() as u32 >= PAGE;
            Ok(JobDone::Page {
                target: target.clone(),
                clips,
                more,
                older: *older,
            })
        }
        Job::Audio(id) => {
            if let Some(a) = cached {
                return Ok(JobDone::Audio(*id, a.clone()));
            }
            let (_, bytes) = tokio::time::timeout(FETCH_TIMEOUT, client.fetch(*id))
                .await
                .map_err(|_| ClientError::Timeout(FETCH_TIMEOUT))??;
            Ok(JobDone::Audio(*id, ClipAudio::from_ogg(&bytes)?))
        }
        Job::Message(id, content) => {
            let (_, bytes) = tokio::time::timeout(FETCH_TIMEOUT, client.fetch(*id))
                .await
                .map_err(|_| ClientError::Timeout(FETCH_TIMEOUT))??;
            Ok(JobDone::Message(*id, *content, bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_queue_once_and_urgent_ones_go_first() {
        let mut f = Fetches::default();
        let (a, b) = (ClipId([1; 16]), ClipId([2; 16]));
        f.audio(a);
        f.audio(a);
        f.page("crew".parse().expect("target"));
        f.autoplay_when_fetched(b);
        assert_eq!(f.next(), Some(Job::Audio(b)));
        f.finished(&Job::Audio(b), false);
        assert!(!f.waits_to_autoplay(b), "a failed fetch plays nothing");
        assert_eq!(f.next(), Some(Job::Audio(a)));
        f.finished(&Job::Audio(a), true);
        assert!(matches!(f.next(), Some(Job::Page { older: false, .. })));
        f.replay_when_fetched(a);
        assert_eq!(f.take_waiting(a), (false, true));
        assert_eq!(f.take_waiting(a), (false, false), "each once");
    }
}
