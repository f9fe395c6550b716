//! The relay's commit thread: uploads hand their finished clips to one thread, which commits
//! whatever has gathered since its last commit as one batch ([`Store::commit_clips`]) and
//! answers each upload through a oneshot channel.
//!
//! Before it, each clip's commit was a task on tokio's blocking pool that waited there for
//! its group commit: a thread hand-off and a wake-up per clip, and as many parked threads as
//! clips waiting. Here a waiting upload holds no thread, and the batch gathers by itself
//! while the previous one syncs. The queue is bounded: when it is full, uploads wait for room
//! (the talkers' streams then wait too, and QUIC's flow control pushes back on them).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::error;
use walkie_store::{CommitOutcome, NewClip, Store, StoreError};

use crate::RelayError;
use crate::metrics::Metrics;

/// Clips waiting for the commit thread at most (then uploads wait for room).
const QUEUE: usize = 1024;
/// Clips in one batch at most.
const BATCH: usize = 256;

type Reply = oneshot::Sender<Result<CommitOutcome, StoreError>>;

/// Hands clips to the commit thread.
pub(crate) struct Committer {
    tx: mpsc::Sender<(NewClip, Reply)>,
}

impl Committer {
    /// Starts the commit thread for `store`; it ends once every handle is dropped and the
    /// clips queued by then are committed.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Committer, RelayError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("walkie-commit".into())
            .spawn(move || run(store.as_ref(), &metrics, rx))
            .map_err(|e| RelayError::Task(format!("cannot start the commit thread: {e}")))?;
        Ok(Committer { tx })
    }

    /// Commits `clip` with the next batch; its outcome once it is durable.
    pub async fn commit(&self, clip: NewClip) -> Result<CommitOutcome, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((clip, reply))
            .await
            .map_err(|_| RelayError::Task("the commit thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| RelayError::Task("the commit of this clip failed".into()))?
            .map_err(RelayError::from)
    }
}

/// The commit thread: one batch at a time, of everything queued when it starts.
fn run(store: &dyn Store, metrics: &Metrics, mut rx: mpsc::Receiver<(NewClip, Reply)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.blocking_recv_many(&mut batch, BATCH) > 0 {
        let (clips, replies): (Vec<NewClip>, Vec<Reply>) = batch.drain(..).unzip();
        let sizes: Vec<(bool, usize)> = clips
            .iter()
            .map(|c| (c.meta.content.is_voice(), c.payload.len()))
            .collect();
        let started = Instant::now();
        // A panic in the store fails this batch (its uploads are told, as the replies drop)
        // and not the thread: the next batch is committed as usual.
        match std::panic::catch_unwind(AssertUnwindSafe(|| store.commit_clips(clips))) {
            Ok(outcomes) => {
                metrics.commit_took(started.elapsed());
                for ((voice, bytes), outcome) in sizes.iter().zip(&outcomes) {
                    if matches!(outcome, Ok(CommitOutcome::Stored(_))) {
                        metrics.stored(*voice, *bytes);
                    }
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome); // the upload may be gone (its talker left)
                }
            }
            Err(_) => error!("the store panicked while committing a batch of clips"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use walkie_store::conformance;
    use walkie_store::faulty::FaultyStore;

    fn clip(from: &str) -> NewClip {
        let meta = conformance::meta(from, "crew");
        let payload = conformance::audio(&meta);
        NewClip {
            meta,
            recipients: vec!["bob".into()],
            payload,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_clip_of_many_uploads_is_committed_once_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(walkie_store::sqlite::SqliteStore::open(dir.path()).unwrap());
        conformance::populate(store.as_ref());
        let committer =
            Arc::new(Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap());
        let clips: Vec<NewClip> = (0..300).map(|_| clip("alice")).collect();
        let tasks: Vec<_> = clips
            .iter()
            .cloned()
            .map(|c| {
                let committer = committer.clone();
                tokio::spawn(async move { committer.commit(c).await })
            })
            .collect();
        let mut seqs = HashSet::new();
        for t in tasks {
            match t.await.unwrap().unwrap() {
                CommitOutcome::Stored(seq) => assert!(seqs.insert(seq)),
                d => panic!("a new clip was answered {d:?}"),
            }
        }
        assert_eq!(seqs.len(), 300);
        for c in &clips {
            assert_eq!(store.clip_audio(&c.meta.id).unwrap(), c.payload);
        }
        assert_eq!(store.pending("bob", 0, 1000).unwrap().len(), 300);
        // A resend is answered as the duplicate it is.
        let again = committer.commit(clips[7].clone()).await.unwrap();
        assert!(matches!(again, CommitOutcome::Duplicate(_)));
    }

    #[tokio::test]
    async fn a_failing_store_fails_its_clips_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(walkie_store::sqlite::SqliteStore::open(dir.path()).unwrap());
        let store = Arc::new(FaultyStore::new(inner));
        let committer = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        store.set_disk_full(true);
        let failed = committer.commit(clip("alice")).await;
        assert!(matches!(failed, Err(RelayError::Store(_))), "{failed:?}");
        store.set_disk_full(false);
        let c = clip("alice");
        let stored = committer.commit(c.clone()).await.unwrap();
        assert!(matches!(stored, CommitOutcome::Stored(_)));
        assert_eq!(store.clip_audio(&c.meta.id).unwrap(), c.payload);
    }
}
