//! The JetStream primitives the NATS store is built from, each retried through leader elections:
//! stream set-up, acked publishes (optionally compare-and-set on a subject), reads through the
//! stream leader, subject purges, subject listings and bounded scans.
//!
//! # Retries
//! Every call goes through [`Js::retry`]: an attempt that fails in a way that may be transient
//! (no reply within the request timeout, no responders, "JetStream not available", a broken
//! connection) is repeated with a growing pause until the deadline passes, which turns a NATS
//! node failure (re-election takes up to ~4 s) into a slower call instead of an error. Only
//! answers that are final come back at once: "no message", "wrong last sequence" (a lost
//! compare-and-set) and data that does not parse.
//!
//! Repeating a write is safe because every write here is idempotent: plain publishes go to
//! subjects that keep one message (`max_messages_per_subject = 1`), and compare-and-set
//! publishes recognize their own earlier success (see [`Js::create`]).
//!
//! # Reads go to the leader
//! Reads use `STREAM.MSG.GET` and `STREAM.INFO`, which the stream leader answers, never the
//! "direct get" that any replica may answer from a state that lags: a write acked to one
//! relay is visible to every other relay's next read.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::stream::{
    Config, DeleteMessageErrorKind, DiscardPolicy, LastRawMessageErrorKind, StorageType, Stream,
};
use async_nats::jetstream::{self, Context};
use async_nats::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use futures::StreamExt;

use crate::StoreError;

/// Largest batch asked for at once when scanning.
const SCAN_BATCH: usize = 256;

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Possibly transient: try again until the deadline.
    Retry(String),
    /// Final: give up with this error.
    Stop(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Stop(e)
    }
}

/// A transient failure described by `what` and its cause.
pub(crate) fn transient(what: &str, e: impl std::fmt::Display) -> Fail {
    Fail::Retry(format!("{what}: {e}"))
}

/// A message read back from a stream.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    /// Its subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Its payload.
    pub payload: Bytes,
}

/// The outcome of a compare-and-set publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cas {
    /// Written (or found written by an earlier attempt of this same call) at this sequence.
    Done(u64),
    /// The subject's last sequence was not the expected one: someone else wrote first.
    Lost,
}

/// What a stream is for, which decides its configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// An append-only log: every message is kept (clip metadata).
    Log,
    /// One message per subject, a newer one replaces it (audio chunks, inbox entries).
    LastPerSubject,
    /// A KV bucket in the standard `KV_<bucket>` layout (`$KV.<bucket>.<key>`), so that the
    /// `nats kv` tool can read it; created here because async-nats 0.41+ cannot create buckets
    /// on server 2.9, and with `allow_direct` off so that reads go to the leader.
    Bucket,
}

/// A JetStream context with the store's timeouts.
#[derive(Clone)]
pub(crate) struct Js {
    /// The context; its timeout bounds each request and each publish ack.
    pub ctx: Context,
    /// How long one operation may keep retrying.
    pub deadline: Duration,
    /// Replicas of the streams this store creates.
    pub replicas: usize,
}

impl Js {
    /// Runs `attempt` until it succeeds, fails finally, or `deadline` has passed.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            tries += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Fail::Stop(e)) => return Err(e),
                Err(Fail::Retry(why)) => {
                    if start.elapsed() + pause > self.deadline {
                        return Err(StoreError::Backend(format!(
                            "{what}: {why} (gave up after {tries} tries in {:.1} s)",
                            start.elapsed().as_secs_f64()
                        )));
                    }
                    tracing::debug!(what, why, tries, "NATS call failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Opens the stream `name`, creating it with `subjects` if it does not exist yet. An
    /// existing stream is used as it is (its replicas may differ from ours).
    pub async fn ensure_stream(
        &self,
        name: String,
        subjects: Vec<String>,
        kind: Kind,
    ) -> Result<Stream, StoreError> {
        let config = Config {
            name: name.clone(),
            subjects,
            storage: StorageType::File,
            num_replicas: self.replicas,
            max_messages_per_subject: match kind {
                Kind::Log => -1,
                Kind::LastPerSubject | Kind::Bucket => 1,
            },
            discard: match kind {
                Kind::Bucket => DiscardPolicy::New,
                Kind::Log | Kind::LastPerSubject => DiscardPolicy::Old,
            },
            allow_rollup: matches!(kind, Kind::Bucket),
            deny_delete: matches!(kind, Kind::Bucket),
            allow_direct: false,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.retry(&format!("opening stream {name}"), || async {
            match self.ctx.get_stream(&name).await {
                Ok(stream) => return Ok(stream),
                Err(e)
                    if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
                Err(e) => return Err(transient("stream info", e)),
            }
            match self.ctx.create_stream(config.clone()).await {
                Ok(stream) => Ok(stream),
                // Created by another store in between, or a real problem: look again.
                Err(e) => Err(transient("stream create", e)),
            }
        })
        .await
    }

    /// Publishes and waits for the ack of a quorum of replicas; `expect` makes it a
    /// compare-and-set on the subject's last sequence (0: the subject has no message).
    /// Without `expect` the result is always [`Cas::Done`].
    pub async fn publish(
        &self,
        what: &str,
        subject: &str,
        payload: Bytes,
        expect: Option<u64>,
    ) -> Result<Cas, StoreError> {
        self.retry(what, || async {
            let mut headers = HeaderMap::new();
            if let Some(seq) = expect {
                headers.insert(
                    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    HeaderValue::from(seq),
                );
            }
            let publish = Publish::build().payload(payload.clone()).headers(headers);
            let ack = match self.ctx.send_publish(subject.to_string(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => Ok(Cas::Done(ack.sequence)),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Cas::Lost),
                Err(e) => Err(transient("publish", e)),
            }
        })
        .await
    }

    /// The last message on `subject`, read through the stream leader.
    pub async fn last(&self, stream: &Stream, subject: &str) -> Result<Option<Msg>, StoreError> {
        self.retry("reading a message", || async {
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some(Msg {
                    subject: m.subject.to_string(),
                    seq: m.sequence,
                    payload: m.payload,
                })),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) if e.kind() == LastRawMessageErrorKind::InvalidSubject => Err(Fail::Stop(
                    StoreError::Corrupt(format!("invalid subject {subject:?}")),
                )),
                Err(e) => Err(transient("message get", e)),
            }
        })
        .await
    }

    /// The message with stream sequence `seq`, read through the stream leader.
    pub async fn by_seq(&self, stream: &Stream, seq: u64) -> Result<Option<Msg>, StoreError> {
        self.retry("reading a message", || async {
            match stream.get_raw_message(seq).await {
                Ok(m) => Ok(Some(Msg {
                    subject: m.subject.to_string(),
                    seq: m.sequence,
                    payload: m.payload,
                })),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(transient("message get", e)),
            }
        })
        .await
    }

    /// How many messages a stream holds now.
    pub async fn messages(&self, stream: &Stream) -> Result<u64, StoreError> {
        self.retry("reading stream info", || async {
            let mut stream = stream.clone();
            stream
                .info()
                .await
                .map(|info| info.state.messages)
                .map_err(|e| transient("stream info", e))
        })
        .await
    }

    /// Removes every message whose subject matches `filter`, leaving no marker behind.
    pub async fn purge(&self, stream: &Stream, filter: &str) -> Result<(), StoreError> {
        self.retry("purging", || async {
            stream
                .purge()
                .filter(filter)
                .await
                .map(|_| ())
                .map_err(|e| transient("purge", e))
        })
        .await
    }

    /// Deletes the message with sequence `seq` and overwrites its bytes in the stream's
    /// files on every replica (JetStream's secure erase: `STREAM.MSG.DELETE` without
    /// `no_erase`). A message that is already gone counts as erased.
    pub async fn erase(&self, stream: &Stream, seq: u64) -> Result<(), StoreError> {
        self.retry("erasing a message", || async {
            match stream.delete_message(seq).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let final_answer = matches!(e.kind(), DeleteMessageErrorKind::JetStream(_));
                    // "No message found" is a final answer, as is any JetStream error for a
                    // message that no longer exists; anything else may be transient.
                    match stream.get_raw_message(seq).await {
                        Err(g) if g.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(()),
                        _ if final_answer => Err(Fail::Stop(StoreError::Backend(format!(
                            "erasing message {seq}: {e}"
                        )))),
                        _ => Err(transient("message delete", e)),
                    }
                }
            }
        })
        .await
    }

    /// Every subject with at least one message that matches `filter`, from the stream
    /// leader's subject index (no consumer, no message bodies).
    pub async fn subjects(&self, stream: &Stream, filter: &str) -> Result<Vec<String>, StoreError> {
        self.retry("listing subjects", || async {
            let mut info = stream
                .info_with_subjects(filter)
                .await
                .map_err(|e| transient("stream info", e))?;
            let mut out: HashMap<String, usize> = HashMap::new();
            while let Some(item) = info.next().await {
                let (subject, count) = item.map_err(|e| transient("stream info", e))?;
                out.insert(subject, count);
            }
            Ok(out.into_keys().collect())
        })
        .await
    }

    /// The sequences of the first and last messages in the stream (`last < first` when it
    /// is empty).
    pub async fn span(&self, stream: &Stream) -> Result<(u64, u64), StoreError> {
        self.retry("stream info", || async {
            stream
                .get_info()
                .await
                .map(|info| (info.state.first_sequence, info.state.last_sequence))
                .map_err(|e| transient("stream info", e))
        })
        .await
    }

    /// The sequence of the last message in the stream (0 when it is empty).
    pub async fn last_seq(&self, stream: &Stream) -> Result<u64, StoreError> {
        self.retry("stream info", || async {
            stream
                .get_info()
                .await
                .map(|info| info.state.last_sequence)
                .map_err(|e| transient("stream info", e))
        })
        .await
    }

    /// The messages matching `filter` with `from <= seq < until`, in order. Read in bulk with
    /// a short-lived consumer, then completed through the stream leader: the server may place
    /// the consumer on a replica that is still catching up (a node just restarted), which
    /// holds a prefix of the stream, so whatever that replica lacks at the tail is fetched
    /// with leader reads until the leader has nothing more below `until`. Costs one consumer,
    /// the matching messages from `from` on (at most one batch past `until`) and one leader
    /// read (more only when the replica lagged).
    pub async fn scan(
        &self,
        stream: &Stream,
        filter: &str,
        from: u64,
        until: u64,
    ) -> Result<Vec<Msg>, StoreError> {
        if from >= until {
            return Ok(Vec::new());
        }
        let mut out = self
            .retry("scanning a stream", || {
                self.scan_once(stream, filter, from, until)
            })
            .await?;
        let mut next = out.last().map_or(from, |m| m.seq + 1);
        while next < until {
            match self.next_after(stream, filter, next).await? {
                Some(m) if m.seq < until => {
                    next = m.seq + 1;
                    out.push(m);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// The first message matching `filter` with a sequence of at least `seq`, from the leader.
    async fn next_after(
        &self,
        stream: &Stream,
        filter: &str,
        seq: u64,
    ) -> Result<Option<Msg>, StoreError> {
        self.retry("reading a message", || async {
            match stream.get_first_raw_message_by_subject(filter, seq).await {
                Ok(m) => Ok(Some(Msg {
                    subject: m.subject.to_string(),
                    seq: m.sequence,
                    payload: m.payload,
                })),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(transient("message get", e)),
            }
        })
        .await
    }

    async fn scan_once(
        &self,
        stream: &Stream,
        filter: &str,
        from: u64,
        until: u64,
    ) -> Result<Vec<Msg>, Fail> {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_string(),
                deliver_policy: if from <= 1 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    }
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| transient("consumer create", e))?;
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        let mut idle = 0;
        let result = async {
            while pending > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(SCAN_BATCH)
                    .messages()
                    .await
                    .map_err(|e| transient("fetch", e))?;
                let mut got = 0;
                while let Some(msg) = batch.next().await {
                    let msg = msg.map_err(|e| transient("fetch", e))?;
                    let info = msg.info().map_err(|e| transient("message info", e))?;
                    got += 1;
                    pending = info.pending;
                    if info.stream_sequence >= until {
                        pending = 0;
                        break;
                    }
                    out.push(Msg {
                        subject: msg.subject.to_string(),
                        seq: info.stream_sequence,
                        payload: msg.payload.clone(),
                    });
                }
                if got == 0 {
                    idle += 1;
                    if idle > 3 {
                        return Err(Fail::Retry(format!(
                            "scan of {filter} stalled with {pending} pending"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok(())
        }
        .await;
        // The consumer would expire by itself; deleting it now keeps the leader tidy.
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result.map(|()| out)
    }
}

/// A key-value bucket: one subject per key in a [`Kind::Bucket`] stream, where the last
/// message is the value and its sequence the revision. A deleted key has no message at all.
#[derive(Clone)]
pub(crate) struct Bucket {
    /// The bucket's stream.
    pub stream: Stream,
    /// `$KV.<bucket>.`
    prefix: String,
    /// The bucket name, for messages.
    name: String,
}

impl Bucket {
    /// Opens (creating if needed) bucket `name`.
    pub async fn open(js: &Js, name: String) -> Result<Bucket, StoreError> {
        let prefix = format!("$KV.{name}.");
        let stream = js
            .ensure_stream(
                format!("KV_{name}"),
                vec![format!("{prefix}>")],
                Kind::Bucket,
            )
            .await?;
        Ok(Bucket {
            stream,
            prefix,
            name,
        })
    }

    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value and revision of `key`.
    pub async fn get(&self, js: &Js, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        Ok(js
            .last(&self.stream, &self.subject(key))
            .await?
            .map(|m| (m.payload, m.seq)))
    }

    /// Creates `key` if it has no value. A value equal to ours counts as our own earlier
    /// attempt (records carry a random nonce, so another writer's never is equal).
    pub async fn create(&self, js: &Js, key: &str, value: Bytes) -> Result<Cas, StoreError> {
        self.update(js, key, value, 0).await
    }

    /// Replaces `key` if its revision is still `rev` (0: if it has no value); see [`Bucket::create`].
    pub async fn update(
        &self,
        js: &Js,
        key: &str,
        value: Bytes,
        rev: u64,
    ) -> Result<Cas, StoreError> {
        let what = format!("writing {}", self.name);
        match js
            .publish(&what, &self.subject(key), value.clone(), Some(rev))
            .await?
        {
            Cas::Done(rev) => Ok(Cas::Done(rev)),
            Cas::Lost => match self.get(js, key).await? {
                Some((now, rev)) if now == value => Ok(Cas::Done(rev)),
                _ => Ok(Cas::Lost),
            },
        }
    }

    /// Deletes `key` (and its whole history).
    pub async fn delete(&self, js: &Js, key: &str) -> Result<(), StoreError> {
        js.purge(&self.stream, &self.subject(key)).await
    }

    /// Every key that has a value, unsorted.
    pub async fn keys(&self, js: &Js) -> Result<Vec<String>, StoreError> {
        self.keys_matching(js, ">").await
    }

    /// Every key that has a value and matches `filter` (subject wildcards: `*` one token,
    /// `>` the rest), unsorted.
    pub async fn keys_matching(&self, js: &Js, filter: &str) -> Result<Vec<String>, StoreError> {
        let subjects = js
            .subjects(&self.stream, &format!("{}{filter}", self.prefix))
            .await?;
        Ok(subjects
            .into_iter()
            .filter_map(|s| s.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }
}
