//! The replicated store: [`NatsStore`] keeps everything in a NATS JetStream cluster, so that
//! several relays share users, channels, clips and inboxes (`--store nats://HOST:PORT,...`).
//!
//! Same contract as the embedded [`crate::sqlite::SqliteStore`]; what differs is where the
//! bytes live and what "durable" means: a write is acknowledged once a quorum of the stream's
//! replicas (2 of 3) has it. NATS fsyncs on its own schedule, so an acked write survives the
//! loss of any one node, not the simultaneous power loss of a quorum.
//!
//! # Layout (prefix `P`, `walkie` by default; names are encoded by `layout::encode`)
//! ```text
//! KV P_users     key <user>     {token_hash (hex of SHA-256), created_at_ms, nonce}
//! KV P_channels  key <channel>  {members (sorted), created_at_ms, nonce}
//! KV P_clipids   key <clip id>  {from, subject, seq?, done, purged}    the idempotency claim
//! KV P_purged    key c.<channel>.<seq> | d.<a>.<b>.<seq>  the anonymised metadata of a
//!                purged clip (sender "purged-user", no audio), in place of its erased message
//! stream P_clips  P.clip.c.<channel>.<id> | P.clip.d.<a>.<b>.<id>      one metadata message
//!                 per clip (a <= b: the two users of a direct clip); its stream sequence IS
//!                 the clip's seq, so seqs are global, increasing, and never reused
//! stream P_audio  P.audio.<id>.<attempt>.<n>   the Ogg bytes in 512 KiB chunks (max payload
//!                 is 1 MiB), one message per subject
//! stream P_inbox  P.inbox.<user>.<seq>         one message per undelivered (user, clip)
//! ```
//! The KV buckets use the standard `KV_<bucket>` stream layout (the `nats kv` tool reads them),
//! created by this module with `allow_direct` off: every read goes to the stream leader, so a
//! write acked to one relay is seen by the next read of any other (no stale replica reads).
//! Every stream has `replicas` replicas ([`NatsConfig::replicas`]).
//!
//! # Commit protocol ([`Store::commit_clip`])
//! 1. claim: create `P_clipids/<id>` = {from, subject} (compare-and-set on "no value", so one
//!    claim wins cluster-wide); an existing claim from another sender is
//!    [`StoreError::IdConflict`], a finished one from the same sender is a
//!    [`CommitOutcome::Duplicate`], an unfinished one is taken over (step 2 on) unless it
//!    names another target (then it is not a retry: `IdConflict` too);
//! 2. audio: the chunks under a fresh random attempt name, each publish acked;
//! 3. metadata: one message on the clip's subject, published only if that subject has no
//!    message yet (`Nats-Expected-Last-Subject-Sequence: 0`). Its sequence is the seq. This is
//!    the commit point: the clip is now visible to `clip`, `history` and `readable`;
//! 4. the seq is recorded in the claim; 5. an inbox entry per recipient that is a user;
//! 6. the claim is marked done. Then [`CommitOutcome::Stored`].
//!
//! A crash or a cluster failure between two steps leaves no half clip visible (metadata only
//! ever points at complete audio) and the sender's retry (same id) completes the commit from
//! where it stopped, with the same seq. Two concurrent attempts of one clip agree on the one
//! metadata message; the loser deletes its chunks. What a crash can leave behind is invisible:
//! chunks of an attempt that never got its metadata written. A commit interrupted after some
//! inbox entries and retried after a recipient acked may queue the clip for them again.
//!
//! # Purge and retention
//! Both delete with JetStream's secure erase (`STREAM.MSG.DELETE` without `no_erase`): the
//! message is removed and its bytes in the stream's block files are overwritten with random
//! data on every replica. [`Store::purge_user`] scans the whole clip stream in windows of
//! 1024 sequences for clips whose sender is the user; for each: (1) the anonymised record goes
//! to `P_purged` under the clip's seq, (2) the claim is marked purged (sender "purged-user"),
//! (3) its inbox entries are removed, (4) every audio chunk of every attempt is erased, (5)
//! its metadata message is erased. Reads merge the purged records into scans (history,
//! readable: one extra subject listing per call) and `clip` reads the record once the claim
//! says purged, so the clip stays in its conversation, anonymised, with no audio
//! (`clip_audio` is `NotFound`). [`Store::delete_clips_before`] scans the clip stream from its
//! first message in time order and, for each clip stored before the cutoff, removes its inbox
//! entries, erases its audio, deletes its claim and erases its metadata message; it stops at
//! the first clip stored later (clips are stored in time order up to clock skew between
//! relays, so a clip a skewed relay stored a little out of order goes at the next run); then
//! it deletes the purged records older than the cutoff. Both keep the metadata message for
//! last, so that a run interrupted by a crash or a cluster failure is completed by the next.
//!
//! What erasing does not reach: the servers' Raft logs of a replicated stream keep a copy of
//! each write until their next compaction (NATS compacts them after a snapshot, within
//! minutes), and freed disk blocks are not scrubbed. A purge makes the audio unreadable
//! through NATS at once; the bytes leave the servers' disks with that compaction.
//!
//! # Cost of each call (n = messages matched, R = one request to a stream leader)
//! users/channels: one subject listing + one R per key; token_hash/members: one R;
//! commit: ~6 + chunks + 2 x recipients acked publishes/reads; clip: 2 R; clip_audio: 2 + chunks R;
//! pending: one subject listing of the user's undelivered entries + one R per returned clip;
//! ack: 2 R; history: consumers over windows of the clip stream scanned backwards from
//! `before`, each 4 x the last (from 4 x limit), until `limit` clips are found, so the work is
//! proportional to the stream span that holds them; readable: the same backward scan once per
//! channel of the user and twice for direct clips, merged (one page, never the whole stream).
//!
//! # Blocking
//! [`Store`] is synchronous. The store owns a small tokio runtime; each method hands its work
//! to that runtime and blocks the calling thread until it is done. Call it from plain threads
//! or `spawn_blocking` (as the relay does): calling from async code does not panic or deadlock
//! but blocks that executor thread for the duration of the call. Each JetStream request waits
//! up to [`NatsConfig::request_timeout`] and failing calls are retried for up to
//! [`NatsConfig::deadline`], which spans a leader election (up to ~4 s after a node dies).

mod js;
mod layout;
pub mod link;
mod ops;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use self::js::Js;
use self::layout::Layout;
use self::ops::Inner;
use walkie_proto::clip::{ClipId, ClipMeta, Target};

use crate::{ChannelInfo, CommitOutcome, NewClip, Record, Store, StoreError, TokenHash};

/// Where a NATS store lives and how it talks to the cluster.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server addresses, `HOST:PORT` or `nats://HOST:PORT`; entries may be comma-separated
    /// lists themselves. The client fails over between them.
    pub servers: Vec<String>,
    /// Prefix of every stream, bucket and subject name (`[A-Za-z0-9_-]`, at most 32): several
    /// independent stores can share one cluster.
    pub prefix: String,
    /// Replicas of the streams created by this store; `None` picks 3 when the server reports
    /// a cluster of at least 3 servers, else 1. Existing streams keep theirs.
    pub replicas: Option<usize>,
    /// How long one JetStream request or publish ack may take before it is retried.
    pub request_timeout: Duration,
    /// How long one store call keeps retrying before it fails with [`StoreError::Backend`].
    pub deadline: Duration,
}

impl NatsConfig {
    /// The defaults: prefix `walkie`, replicas picked from the cluster size, 5 s requests,
    /// 30 s per call.
    pub fn new(servers: &[String]) -> NatsConfig {
        NatsConfig {
            servers: servers.to_vec(),
            prefix: "walkie".to_string(),
            replicas: None,
            request_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        }
    }
}

/// The steps of a commit, for tests that interrupt one after a given step (see
/// [`NatsStore::commit_clip_interrupted`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// The id is claimed.
    Claim,
    /// The audio chunks are stored.
    Audio,
    /// The metadata message is stored (the commit point).
    Metadata,
    /// The seq is recorded in the claim.
    Seq,
    /// One inbox entry is written.
    FirstInbox,
}

/// A [`Store`] in a NATS JetStream cluster. Cheap to share behind an `Arc`; any number of
/// stores, in any number of processes, may use the same cluster and prefix at once.
pub struct NatsStore {
    inner: Arc<Inner>,
    /// Runs every call; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("prefix", &self.inner.layout.prefix)
            .finish_non_exhaustive()
    }
}

/// Splits `nats://a:1,b:2`-style lists into `nats://HOST:PORT` URLs.
pub fn server_urls(servers: &[String]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bare = s.strip_prefix("nats://").unwrap_or(s);
            format!("nats://{bare}")
        })
        .collect()
}

impl NatsStore {
    /// Connects to the cluster at `servers` with the default [`NatsConfig`] and opens (creating
    /// them on first use) the store's buckets and streams.
    pub fn connect(servers: &[String]) -> Result<NatsStore, StoreError> {
        Self::connect_with(NatsConfig::new(servers))
    }

    /// Connects with an explicit configuration.
    pub fn connect_with(config: NatsConfig) -> Result<NatsStore, StoreError> {
        let layout = Layout::new(&config.prefix)?;
        server_addrs(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walkie-nats")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the NATS store's runtime: {e}"))
            })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let opened = async {
                let js = connect_js(&config, "walkie-store", config.deadline).await?;
                Inner::open(js, layout).await
            };
            let _ = tx.send(opened.await);
        });
        let inner = rx
            .recv()
            .map_err(|_| StoreError::Backend("the NATS store's runtime stopped".into()))??;
        Ok(NatsStore {
            inner: Arc::new(inner),
            runtime: Some(runtime),
        })
    }

    /// The replicas of the streams this store creates.
    pub fn replicas(&self) -> usize {
        self.inner.js.replicas
    }

    /// Runs `f` on the store's runtime and waits for it (see "Blocking" in the module docs).
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Backend("the NATS store is closed".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(Arc::clone(&self.inner));
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("the NATS store's call was cancelled".into()))?
    }

    /// A commit that stops with an error right after `after`, as if the relay had died there.
    /// For tests of the commit protocol's recovery; a later [`Store::commit_clip`] of the same
    /// clip completes it.
    #[doc(hidden)]
    pub fn commit_clip_interrupted(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
        after: CommitStep,
    ) -> Result<CommitOutcome, StoreError> {
        let (meta, recipients, ogg) = (
            meta.clone(),
            recipients.to_vec(),
            Bytes::copy_from_slice(ogg),
        );
        self.run(move |s| async move { s.commit_clip(&meta, &recipients, ogg, Some(after)).await })
    }
}

/// The server addresses of `config`, parsed.
fn server_addrs(config: &NatsConfig) -> Result<Vec<async_nats::ServerAddr>, StoreError> {
    let urls = server_urls(&config.servers);
    if urls.is_empty() {
        return Err(StoreError::Backend("no NATS server given".into()));
    }
    urls.iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Backend(format!("bad NATS server address in {urls:?}: {e}")))
}

/// Connects to the cluster of `config` (retrying until `config.deadline`) with the client
/// name `name`; the returned JetStream handle retries each call for up to `deadline`.
/// Must run inside a tokio runtime, which then drives the connection.
async fn connect_js(config: &NatsConfig, name: &str, deadline: Duration) -> Result<Js, StoreError> {
    Ok(
        connect_client(config, name, deadline, async_nats::ConnectOptions::new)
            .await?
            .1,
    )
}

/// Like [`connect_js`], with extra connect options from `options` (event callbacks, say);
/// also returns the plain client for core NATS pub/sub. Once connected, the client
/// reconnects by itself (to any server of the cluster) for as long as it lives.
async fn connect_client(
    config: &NatsConfig,
    name: &str,
    deadline: Duration,
    options: impl Fn() -> async_nats::ConnectOptions,
) -> Result<(async_nats::Client, Js), StoreError> {
    let addrs = server_addrs(config)?;
    let started = std::time::Instant::now();
    let client = loop {
        let opts = options()
            .name(name)
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout));
        match opts.connect(addrs.clone()).await {
            Ok(client) => break client,
            Err(e) if started.elapsed() + Duration::from_millis(200) < config.deadline => {
                tracing::debug!("NATS connect failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot connect to NATS at {addrs:?}: {e}"
                )));
            }
        }
    };
    let replicas = config.replicas.unwrap_or_else(|| {
        // `connect_urls` lists the client URLs of every server in the cluster.
        if client.server_info().connect_urls.len() >= 3 {
            3
        } else {
            1
        }
    });
    let mut ctx = async_nats::jetstream::new(client.clone());
    ctx.set_timeout(config.request_timeout);
    let js = Js {
        ctx,
        deadline,
        replicas,
    };
    Ok((client, js))
}

impl Drop for NatsStore {
    /// Stops the runtime without waiting, which is allowed in async contexts too.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for NatsStore {
    fn add_user(&self, name: &str, token_hash: &TokenHash) -> Result<(), StoreError> {
        let (name, hash) = (name.to_string(), *token_hash);
        self.run(move |s| async move { s.add_user(&name, &hash).await })
    }

    fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.run(move |s| async move { s.remove_user(&name).await })
    }

    fn users(&self) -> Result<Vec<String>, StoreError> {
        self.run(|s| async move { s.users().await })
    }

    fn token_hash(&self, name: &str) -> Result<Option<TokenHash>, StoreError> {
        let name = name.to_string();
        self.run(move |s| async move { s.token_hash(&name).await })
    }

    fn set_token(&self, name: &str, token_hash: &TokenHash) -> Result<bool, StoreError> {
        let (name, hash) = (name.to_string(), *token_hash);
        self.run(move |s| async move { s.set_token(&name, &hash).await })
    }

    fn add_channel(&self, name: &str, members: &[String]) -> Result<(), StoreError> {
        let (name, members) = (name.to_string(), members.to_vec());
        self.run(move |s| async move { s.add_channel(&name, &members).await })
    }

    fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        self.run(|s| async move { s.channels().await })
    }

    fn members(&self, channel: &str) -> Result<Option<Vec<String>>, StoreError> {
        let channel = channel.to_string();
        self.run(move |s| async move { s.members(&channel).await })
    }

    /// Additions are applied before removals, so a name in both lists ends up removed.
    fn update_members(
        &self,
        channel: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let (channel, add, remove) = (channel.to_string(), add.to_vec(), remove.to_vec());
        self.run(move |s| async move { s.change_members(&channel, &add, &remove).await })
    }

    /// The stored `bytes` is the length of `ogg`, whatever `meta.bytes` says.
    fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
    ) -> Result<CommitOutcome, StoreError> {
        let (meta, recipients, ogg) = (
            meta.clone(),
            recipients.to_vec(),
            Bytes::copy_from_slice(ogg),
        );
        self.run(move |s| async move { s.commit_clip(&meta, &recipients, ogg, None).await })
    }

    /// The commits run at once (each is a few round trips to the cluster); a clip whose id
    /// came earlier in the batch runs after all of them, so it sees the earlier one.
    fn commit_clips(&self, clips: Vec<NewClip>) -> Vec<Result<CommitOutcome, StoreError>> {
        let n = clips.len();
        let result = self.run(move |s| async move {
            let mut seen = std::collections::HashSet::new();
            let (first, again): (Vec<_>, Vec<_>) = clips
                .into_iter()
                .enumerate()
                .partition(|(_, c)| seen.insert(c.meta.id));
            let commit = |c: NewClip| {
                let s = Arc::clone(&s);
                async move {
                    s.commit_clip(&c.meta, &c.recipients, Bytes::from(c.payload), None)
                        .await
                }
            };
            let mut out: Vec<(usize, Result<CommitOutcome, StoreError>)> =
                futures::future::join_all(
                    first
                        .into_iter()
                        .map(|(i, c)| async move { (i, commit(c).await) }),
                )
                .await;
            for (i, c) in again {
                out.push((i, commit(c).await));
            }
            out.sort_by_key(|(i, _)| *i);
            Ok(out.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
        });
        match result {
            Ok(outcomes) => outcomes,
            Err(e) => (0..n)
                .map(|_| Err(StoreError::Backend(e.to_string())))
                .collect(),
        }
    }

    fn clip(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        let id = *id;
        self.run(move |s| async move { s.clip(&id).await })
    }

    /// `None` until the claim is marked done (every inbox entry written).
    fn committed(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        let id = *id;
        self.run(move |s| async move { s.committed(&id).await })
    }

    fn clip_audio(&self, id: &ClipId) -> Result<Vec<u8>, StoreError> {
        let id = *id;
        self.run(move |s| async move { s.clip_audio(&id).await })
    }

    fn stored_bytes_of(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        let sender = sender.to_string();
        self.run(move |s| async move { s.stored_bytes_of(&sender).await })
    }

    fn clip_audio_part(&self, id: &ClipId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let id = *id;
        self.run(move |s| async move { s.clip_audio_part(&id, offset, max).await })
    }

    fn pending(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let user = user.to_string();
        self.run(move |s| async move { s.pending(&user, after_seq, limit).await })
    }

    fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError> {
        let (user, id) = (user.to_string(), *id);
        self.run(move |s| async move { s.ack(&user, &id).await })
    }

    fn inbox_depth(&self) -> Result<Option<u64>, StoreError> {
        self.run(move |s| async move { s.inbox_depth().await.map(Some) })
    }

    fn history(
        &self,
        viewer: &str,
        target: &Target,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let (viewer, target) = (viewer.to_string(), target.clone());
        self.run(move |s| async move { s.history(&viewer, &target, limit, before_seq).await })
    }

    fn readable(
        &self,
        user: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let user = user.to_string();
        self.run(move |s| async move { s.readable(&user, limit, before_seq).await })
    }

    fn purge_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_string();
        self.run(move |s| async move { s.purge_user(&user).await })
    }

    /// See "Purge and retention" in the module docs.
    fn clear_inbox(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run(move |s| async move { s.clear_inbox(&key).await })
    }

    fn recall_clip(&self, id: &ClipId, keys: &[String]) -> Result<Option<ClipMeta>, StoreError> {
        let (id, keys) = (*id, keys.to_vec());
        self.run(move |s| async move { s.recall_clip(&id, &keys).await })
    }

    fn delete_channel(&self, name: &str) -> Result<Option<usize>, StoreError> {
        let name = name.to_string();
        self.run(move |s| async move { s.delete_channel(&name).await })
    }

    fn record(&self, key: &[&str]) -> Result<Option<Record>, StoreError> {
        let key: Vec<String> = key.iter().map(|t| t.to_string()).collect();
        self.run(move |s| async move { s.record(&refs(&key)).await })
    }

    fn put_record(&self, key: &[&str], value: &[u8], rev: u64) -> Result<Option<u64>, StoreError> {
        let (key, value): (Vec<String>, Vec<u8>) =
            (key.iter().map(|t| t.to_string()).collect(), value.to_vec());
        self.run(move |s| async move { s.put_record(&refs(&key), &value, rev).await })
    }

    fn delete_record(&self, key: &[&str]) -> Result<(), StoreError> {
        let key: Vec<String> = key.iter().map(|t| t.to_string()).collect();
        self.run(move |s| async move { s.delete_record(&refs(&key)).await })
    }

    fn record_keys(&self, prefix: &[&str]) -> Result<Vec<Vec<String>>, StoreError> {
        let prefix: Vec<String> = prefix.iter().map(|t| t.to_string()).collect();
        self.run(move |s| async move { s.record_keys(&refs(&prefix)).await })
    }

    fn delete_clips_before(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.run(move |s| async move { s.delete_clips_before(before_ms).await })
    }
}

/// Borrows owned key tokens as the `&[&str]` the operations take.
fn refs(tokens: &[String]) -> Vec<&str> {
    tokens.iter().map(String::as_str).collect()
}
