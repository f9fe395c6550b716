//! The `Store` operations of the NATS store, as async functions over [`super::js`]; the
//! synchronous shell in `nats.rs` runs them on its own runtime. See `nats.rs` for the layout
//! and the commit protocol.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use futures::future::try_join_all;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::CommitStep;
use super::js::{Bucket, Cas, Js, Kind, Msg};
use super::layout::{
    AUDIO_CHUNK, AudioRef, ChannelRec, ClipRec, IdRec, Layout, UserRec, chunk_count, decode,
    encode, json, parse,
};
use walkie_proto::clip::{ClipId, ClipMeta, Target, now_ms};
use walkie_proto::message::Content;

use crate::records::{self, Record};
use crate::{ChannelInfo, CommitOutcome, PURGED_SENDER, StoreError, TokenHash};

/// Random bytes appended to every stored record value: a retried write that finds an equal
/// value then knows it is its own earlier attempt (see [`Bucket::update`]), never another
/// writer's with the same content.
const RECORD_NONCE: usize = 8;

/// Sequences of the clip stream read at once by purge and retention (bounds their memory).
const SWEEP_WINDOW: u64 = 1024;
/// Compare-and-set attempts on one claim before purge gives up (each loss means another
/// writer changed it in between, which only a concurrent purge or commit does).
const CLAIM_TRIES: usize = 16;

/// The opened buckets and streams of one store.
pub(super) struct Inner {
    pub js: Js,
    pub layout: Layout,
    users: Bucket,
    channels: Bucket,
    ids: Bucket,
    purged: Bucket,
    records: Bucket,
    clips: Stream,
    audio: Stream,
    inbox: Stream,
}

/// Fails with a test-visible error when the caller asked to stop after `at`.
fn interrupt(stop: Option<CommitStep>, at: CommitStep) -> Result<(), StoreError> {
    if stop == Some(at) {
        return Err(StoreError::Backend(format!(
            "commit interrupted after {at:?} (test hook)"
        )));
    }
    Ok(())
}

fn user_missing(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "user",
        name: name.to_string(),
    }
}

fn channel_missing(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "channel",
        name: name.to_string(),
    }
}

/// A random token for records and attempt names.
fn nonce() -> u64 {
    rand::random()
}

impl Inner {
    /// Opens every bucket and stream, creating the missing ones.
    pub async fn open(js: Js, layout: Layout) -> Result<Inner, StoreError> {
        let l = &layout;
        let (users, channels, ids, purged, records) = tokio::try_join!(
            Bucket::open(&js, l.users_bucket()),
            Bucket::open(&js, l.channels_bucket()),
            Bucket::open(&js, l.ids_bucket()),
            Bucket::open(&js, l.purged_bucket()),
            Bucket::open(&js, l.records_bucket()),
        )?;
        let (clips, audio, inbox) = tokio::try_join!(
            js.ensure_stream(l.clips_stream(), vec![l.clips_all()], Kind::Log),
            js.ensure_stream(l.audio_stream(), vec![l.audio_all()], Kind::LastPerSubject),
            js.ensure_stream(l.inbox_stream(), vec![l.inbox_all()], Kind::LastPerSubject),
        )?;
        Ok(Inner {
            js,
            layout,
            users,
            channels,
            ids,
            purged,
            records,
            clips,
            audio,
            inbox,
        })
    }

    // ---- users ----

    async fn user(&self, name: &str) -> Result<Option<UserRec>, StoreError> {
        match self.users.get(&self.js, &encode(name)).await? {
            Some((bytes, _)) => parse(&format!("user {name:?}"), &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub async fn add_user(&self, name: &str, token_hash: &TokenHash) -> Result<(), StoreError> {
        let rec = UserRec {
            token_hash: hex::encode(token_hash),
            created_at_ms: now_ms(),
            nonce: nonce(),
            stored_bytes: 0,
        };
        match self
            .users
            .create(&self.js, &encode(name), json(&rec)?)
            .await?
        {
            Cas::Done(_) => Ok(()),
            Cas::Lost => Err(StoreError::Exists {
                kind: "user",
                name: name.to_string(),
            }),
        }
    }

    /// Changes `name`'s record with `change`, by compare-and-set (read again after a lost
    /// race); false if the user is unknown. `what` names the change in the error of a record
    /// that kept changing.
    async fn update_user(
        &self,
        name: &str,
        what: &str,
        change: impl Fn(&mut UserRec),
    ) -> Result<bool, StoreError> {
        for _ in 0..8 {
            let Some((bytes, rev)) = self.users.get(&self.js, &encode(name)).await? else {
                return Ok(false);
            };
            let mut rec: UserRec = parse(&format!("user {name:?}"), &bytes)?;
            change(&mut rec);
            rec.nonce = nonce();
            if let Cas::Done(_) = self
                .users
                .update(&self.js, &encode(name), json(&rec)?, rev)
                .await?
            {
                return Ok(true);
            }
        }
        Err(StoreError::Backend(format!(
            "user {name:?} kept changing while {what}"
        )))
    }

    /// Replaces the token hash; false if the user is unknown.
    pub async fn set_token(&self, name: &str, token_hash: &TokenHash) -> Result<bool, StoreError> {
        let hash = hex::encode(token_hash);
        self.update_user(name, "its token was replaced", |rec| {
            rec.token_hash = hash.clone()
        })
        .await
    }

    /// Adds `delta` (negative: takes off) to `user`'s stored bytes; an unknown user has
    /// nothing to count.
    async fn add_usage(&self, user: &str, delta: i64) -> Result<(), StoreError> {
        self.update_user(user, "their stored bytes were counted", |rec| {
            rec.stored_bytes = rec.stored_bytes.saturating_add_signed(delta)
        })
        .await
        .map(|_| ())
    }

    /// Adds to a user's stored bytes; a failure is logged (the count is a quota's, not the truth).
    async fn count_usage(&self, user: &str, delta: i64) {
        if let Err(e) = self.add_usage(user, delta).await {
            warn!(%user, "cannot count stored bytes: {e}");
        }
    }

    pub async fn stored_bytes_of(&self, user: &str) -> Result<Option<u64>, StoreError> {
        Ok(Some(self.user(user).await?.map_or(0, |u| u.stored_bytes)))
    }

    /// Memberships and inbox go first, the user last: an interrupted removal is completed by
    /// calling it again.
    pub async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        if self.user(name).await?.is_none() {
            return Ok(false);
        }
        for (channel, members) in self.channel_list().await? {
            if members.iter().any(|m| m == name) {
                self.change_members(&channel, &[], std::slice::from_ref(&name.to_string()))
                    .await?;
            }
        }
        self.js
            .purge(&self.inbox, &self.layout.inbox_filter(name))
            .await?;
        self.users.delete(&self.js, &encode(name)).await?;
        Ok(true)
    }

    pub async fn users(&self) -> Result<Vec<String>, StoreError> {
        let mut out = self
            .users
            .keys(&self.js)
            .await?
            .into_iter()
            .map(|k| decode(&k).ok_or_else(|| StoreError::Corrupt(format!("user key {k:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    }

    pub async fn token_hash(&self, name: &str) -> Result<Option<TokenHash>, StoreError> {
        let Some(rec) = self.user(name).await? else {
            return Ok(None);
        };
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&rec.token_hash, &mut hash)
            .map_err(|_| StoreError::Corrupt(format!("user {name:?} has a bad token hash")))?;
        Ok(Some(hash))
    }

    /// Fails with `NotFound` for the first name that is not a user.
    async fn require_users(&self, names: &[String]) -> Result<(), StoreError> {
        let found = try_join_all(names.iter().map(|n| self.user(n))).await?;
        match names.iter().zip(found).find(|(_, rec)| rec.is_none()) {
            Some((name, _)) => Err(user_missing(name)),
            None => Ok(()),
        }
    }

    // ---- channels ----

    async fn channel(&self, name: &str) -> Result<Option<(ChannelRec, u64)>, StoreError> {
        match self.channels.get(&self.js, &encode(name)).await? {
            Some((bytes, rev)) => Ok(Some((parse(&format!("channel {name:?}"), &bytes)?, rev))),
            None => Ok(None),
        }
    }

    pub async fn add_channel(&self, name: &str, members: &[String]) -> Result<(), StoreError> {
        self.require_users(members).await?;
        let members: BTreeSet<String> = members.iter().cloned().collect();
        let rec = ChannelRec {
            members: members.into_iter().collect(),
            created_at_ms: now_ms(),
            nonce: nonce(),
        };
        match self
            .channels
            .create(&self.js, &encode(name), json(&rec)?)
            .await?
        {
            Cas::Done(_) => Ok(()),
            Cas::Lost => Err(StoreError::Exists {
                kind: "channel",
                name: name.to_string(),
            }),
        }
    }

    /// Every channel with its members, sorted by name.
    async fn channel_list(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let names = self
            .channels
            .keys(&self.js)
            .await?
            .into_iter()
            .map(|k| decode(&k).ok_or_else(|| StoreError::Corrupt(format!("channel key {k:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let recs = try_join_all(names.iter().map(|n| self.channel(n))).await?;
        let mut out: Vec<(String, Vec<String>)> = names
            .into_iter()
            .zip(recs)
            .filter_map(|(name, rec)| rec.map(|(rec, _)| (name, rec.members)))
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        Ok(self
            .channel_list()
            .await?
            .into_iter()
            .map(|(name, members)| ChannelInfo { name, members })
            .collect())
    }

    pub async fn members(&self, channel: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self.channel(channel).await?.map(|(rec, _)| rec.members))
    }

    /// Additions first, then removals, as one compare-and-set on the channel's key (re-read
    /// and re-applied when another writer got in between).
    pub async fn change_members(
        &self,
        channel: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.require_users(add).await?;
        let key = encode(channel);
        loop {
            let (rec, rev) = self
                .channel(channel)
                .await?
                .ok_or_else(|| channel_missing(channel))?;
            let mut members: BTreeSet<String> = rec.members.iter().cloned().collect();
            members.extend(add.iter().cloned());
            for user in remove {
                members.remove(user);
            }
            let members: Vec<String> = members.into_iter().collect();
            if members == rec.members {
                return Ok(members);
            }
            let next = ChannelRec {
                members: members.clone(),
                created_at_ms: rec.created_at_ms,
                nonce: nonce(),
            };
            if let Cas::Done(_) = self
                .channels
                .update(&self.js, &key, json(&next)?, rev)
                .await?
            {
                return Ok(members);
            }
        }
    }

    // ---- clips ----

    async fn id_rec(&self, key: &str) -> Result<Option<(IdRec, u64)>, StoreError> {
        match self.ids.get(&self.js, key).await? {
            Some((bytes, rev)) => Ok(Some((parse(&format!("clip id {key}"), &bytes)?, rev))),
            None => Ok(None),
        }
    }

    /// Claim, audio, metadata, seq, inboxes, done: see the commit protocol in `nats.rs`.
    pub async fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: Bytes,
        stop: Option<CommitStep>,
    ) -> Result<CommitOutcome, StoreError> {
        let key = meta.id.to_string();
        let size = i64::try_from(ogg.len()).unwrap_or(i64::MAX);
        // 1. Claim the id, or find who has it.
        let (mut rec, mut rev) = loop {
            if let Some(found) = self.id_rec(&key).await? {
                break found;
            }
            let rec = IdRec {
                from: meta.from.clone(),
                subject: self.layout.clip_subject(meta),
                seq: None,
                done: false,
                purged: false,
            };
            if let Cas::Done(rev) = self.ids.create(&self.js, &key, json(&rec)?).await? {
                break (rec, rev);
            }
        };
        if rec.from != meta.from {
            return Err(StoreError::IdConflict(meta.id));
        }
        if rec.done {
            let seq = rec
                .seq
                .ok_or_else(|| StoreError::Corrupt(format!("clip {key} is done without a seq")))?;
            return Ok(CommitOutcome::Duplicate(seq));
        }
        if rec.subject != self.layout.clip_subject(meta) {
            // The same id and sender with another target is not a retry of the claimed clip.
            return Err(StoreError::IdConflict(meta.id));
        }
        interrupt(stop, CommitStep::Claim)?;
        // 2, 3. Audio, then the metadata message whose sequence is the seq (unless an earlier
        // attempt got that far).
        let seq = match rec.seq {
            Some(seq) => seq,
            None => self.store_clip(meta, &rec.subject, ogg, stop).await?,
        };
        // 4. Record the seq with the claim.
        while rec.seq.is_none() {
            let next = IdRec {
                seq: Some(seq),
                ..rec.clone()
            };
            match self.ids.update(&self.js, &key, json(&next)?, rev).await? {
                Cas::Done(r) => (rec, rev) = (next, r),
                Cas::Lost => {
                    (rec, rev) = self
                        .id_rec(&key)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt(format!("clip id {key} vanished")))?
                }
            }
        }
        interrupt(stop, CommitStep::Seq)?;
        // 5. Queue it for each recipient.
        self.queue(recipients, seq, &meta.id, stop).await?;
        // 6. Done: from now on a repeat is a plain duplicate.
        while !rec.done {
            let next = IdRec {
                done: true,
                ..rec.clone()
            };
            match self.ids.update(&self.js, &key, json(&next)?, rev).await? {
                Cas::Done(_) => {
                    // Only the attempt that completes the commit counts it.
                    self.count_usage(&meta.from, size).await;
                    break;
                }
                Cas::Lost => {
                    (rec, rev) = self
                        .id_rec(&key)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt(format!("clip id {key} vanished")))?
                }
            }
        }
        Ok(CommitOutcome::Stored(seq))
    }

    /// Writes the audio chunks of a new attempt, then the metadata message if the subject has
    /// none yet (compare-and-set on "no message"). Returns the seq of the one metadata message.
    async fn store_clip(
        &self,
        meta: &ClipMeta,
        subject: &str,
        ogg: Bytes,
        stop: Option<CommitStep>,
    ) -> Result<u64, StoreError> {
        if let Some(msg) = self.js.last(&self.clips, subject).await? {
            return Ok(msg.seq);
        }
        let attempt = format!("{:016x}", nonce());
        let chunks = chunk_count(ogg.len());
        try_join_all((0..chunks).map(|n| {
            let start = (n as usize * AUDIO_CHUNK).min(ogg.len());
            let end = (start + AUDIO_CHUNK).min(ogg.len());
            let subject = self.layout.audio_subject(&meta.id, &attempt, n);
            let chunk = ogg.slice(start..end);
            async move {
                self.js
                    .publish("storing audio", &subject, chunk, None)
                    .await
            }
        }))
        .await?;
        interrupt(stop, CommitStep::Audio)?;
        let record = ClipRec {
            meta: ClipMeta {
                seq: 0,
                bytes: ogg.len() as u64,
                ..meta.clone()
            },
            audio: AudioRef {
                attempt: attempt.clone(),
                chunks,
                sha256: hex::encode(Sha256::digest(&ogg)),
            },
            stored_at_ms: now_ms(),
        };
        if let Cas::Done(seq) = self
            .js
            .publish("storing clip metadata", subject, json(&record)?, Some(0))
            .await?
        {
            interrupt(stop, CommitStep::Metadata)?;
            return Ok(seq);
        }
        // Another attempt stored it first: use that one, and drop our chunks.
        let msg = self.js.last(&self.clips, subject).await?.ok_or_else(|| {
            StoreError::Backend(format!(
                "clip {} lost a race to a message that is gone",
                meta.id
            ))
        })?;
        let (_, audio) = self.clip_from(msg.clone(), Some(&meta.id))?;
        if audio.attempt != attempt {
            let _ = self
                .js
                .purge(
                    &self.audio,
                    &self.layout.audio_attempt_filter(&meta.id, &attempt),
                )
                .await;
        }
        Ok(msg.seq)
    }

    /// Writes an inbox entry for each distinct recipient that is a user.
    async fn queue(
        &self,
        recipients: &[String],
        seq: u64,
        id: &ClipId,
        stop: Option<CommitStep>,
    ) -> Result<(), StoreError> {
        let distinct: Vec<&String> = recipients
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // A device's key `NAME/DEVICE` is queued while its user exists.
        let user_of = |key: &String| {
            key.split_once('/')
                .map_or(key.clone(), |(u, _)| u.to_string())
        };
        let found = try_join_all(
            distinct
                .iter()
                .map(|k| async move { self.user(&user_of(k)).await }),
        )
        .await?;
        let mut users: Vec<&String> = distinct
            .into_iter()
            .zip(found)
            .filter(|(_, r)| r.is_some())
            .map(|(u, _)| u)
            .collect();
        if stop == Some(CommitStep::FirstInbox) {
            users.truncate(1);
        }
        let payload = Bytes::from(id.to_string());
        try_join_all(users.iter().map(|user| {
            let payload = payload.clone();
            async move {
                let subject = self.layout.inbox_subject(user, seq);
                self.js
                    .publish("queueing a clip", &subject, payload, None)
                    .await
            }
        }))
        .await?;
        interrupt(stop, CommitStep::FirstInbox)
    }

    /// Parses a clips-stream message; checks the id when one is expected.
    fn clip_from(&self, msg: Msg, id: Option<&ClipId>) -> Result<(ClipMeta, AudioRef), StoreError> {
        let rec: ClipRec = parse(&format!("clip message {}", msg.seq), &msg.payload)?;
        if let Some(id) = id
            && rec.meta.id != *id
        {
            return Err(StoreError::Corrupt(format!(
                "clip message {} holds clip {}, not {id}",
                msg.seq, rec.meta.id
            )));
        }
        Ok((
            ClipMeta {
                seq: msg.seq,
                ..rec.meta
            },
            rec.audio,
        ))
    }

    /// The stored metadata and audio reference of a clip, if its metadata is stored.
    async fn clip_rec(&self, id: &ClipId) -> Result<Option<(ClipMeta, AudioRef)>, StoreError> {
        let Some((rec, _)) = self.id_rec(&id.to_string()).await? else {
            return Ok(None);
        };
        if rec.purged {
            let Some(seq) = rec.seq else { return Ok(None) };
            let key = self.layout.purged_key(&rec.subject, seq)?;
            return Ok(self
                .purged_meta(&key)
                .await?
                .map(|meta| (meta, AudioRef::none())));
        }
        let msg = match rec.seq {
            Some(seq) => self.js.by_seq(&self.clips, seq).await?,
            None => self.js.last(&self.clips, &rec.subject).await?,
        };
        match msg {
            Some(msg) if msg.subject == rec.subject => self.clip_from(msg, Some(id)).map(Some),
            Some(msg) => Err(StoreError::Corrupt(format!(
                "clip {id}: message {} is on {}",
                msg.seq, msg.subject
            ))),
            None => Ok(None),
        }
    }

    /// The clip, if its commit is complete (a purged clip's was).
    pub async fn committed(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        match self.id_rec(&id.to_string()).await? {
            Some((rec, _)) if rec.done || rec.purged => self.clip(id).await,
            _ => Ok(None),
        }
    }

    pub async fn clip(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        Ok(self.clip_rec(id).await?.map(|(meta, _)| meta))
    }

    pub async fn clip_audio(&self, id: &ClipId) -> Result<Vec<u8>, StoreError> {
        let (meta, audio) = self
            .clip_rec(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "clip",
                name: id.to_string(),
            })?;
        if audio.chunks == 0 {
            return Err(StoreError::NotFound {
                kind: "clip audio (purged)",
                name: id.to_string(),
            });
        }
        let parts = try_join_all((0..audio.chunks).map(|n| {
            let subject = self.layout.audio_subject(id, &audio.attempt, n);
            async move { self.js.last(&self.audio, &subject).await }
        }))
        .await?;
        let mut out = Vec::with_capacity(usize::try_from(meta.bytes).unwrap_or(0).min(64 << 20));
        for (n, part) in parts.into_iter().enumerate() {
            let part = part
                .ok_or_else(|| StoreError::Corrupt(format!("clip {id} misses audio chunk {n}")))?;
            out.extend_from_slice(&part.payload);
        }
        if out.len() as u64 != meta.bytes || hex::encode(Sha256::digest(&out)) != audio.sha256 {
            return Err(StoreError::Corrupt(format!(
                "clip {id}: the audio does not match its digest"
            )));
        }
        Ok(out)
    }

    /// At most `max` bytes of a clip's audio from `offset`, reading only the chunks that
    /// hold them (a fetch streams a clip without holding it whole; the digest covers the
    /// whole file, so a part is not checked against it).
    pub async fn clip_audio_part(
        &self,
        id: &ClipId,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let (meta, audio) = self
            .clip_rec(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "clip",
                name: id.to_string(),
            })?;
        if audio.chunks == 0 {
            return Err(StoreError::NotFound {
                kind: "clip audio (purged)",
                name: id.to_string(),
            });
        }
        if offset >= meta.bytes || max == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(max as u64).min(meta.bytes);
        let chunk = AUDIO_CHUNK as u64;
        let (first, last) = (offset / chunk, (end - 1) / chunk);
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for n in first..=last {
            let n = u32::try_from(n)
                .map_err(|_| StoreError::Corrupt(format!("clip {id}: chunk {n} out of range")))?;
            let subject = self.layout.audio_subject(id, &audio.attempt, n);
            let part =
                self.js.last(&self.audio, &subject).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("clip {id} misses audio chunk {n}"))
                })?;
            let base = u64::from(n) * chunk;
            let from = usize::try_from(offset.max(base) - base)
                .unwrap_or(usize::MAX)
                .min(part.payload.len());
            let to = usize::try_from(end.min(base + chunk) - base)
                .unwrap_or(usize::MAX)
                .min(part.payload.len());
            out.extend_from_slice(&part.payload[from..to.max(from)]);
        }
        Ok(out)
    }

    // ---- inboxes ----

    pub async fn pending(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let subjects = self
            .js
            .subjects(&self.inbox, &self.layout.inbox_filter(user))
            .await?;
        let mut seqs = subjects
            .iter()
            .map(|s| self.layout.inbox_seq(s))
            .collect::<Result<Vec<_>, _>>()?;
        seqs.retain(|&s| s > after_seq);
        seqs.sort_unstable();
        seqs.truncate(limit);
        let msgs = try_join_all(seqs.iter().map(|&seq| self.js.by_seq(&self.clips, seq))).await?;
        let mut out = Vec::with_capacity(msgs.len());
        for (seq, msg) in seqs.iter().zip(msgs) {
            match msg {
                Some(msg) => out.push(self.clip_from(msg, None)?.0),
                // Recalled: its record in the purged bucket says so, found through the id the
                // inbox entry holds.
                None => match self.recalled_in_inbox(user, *seq).await? {
                    Some(meta) => out.push(meta),
                    // Retention or a purge is deleting that clip: its inbox entry goes next.
                    None => tracing::debug!(user, seq, "inbox entry of a clip being deleted"),
                },
            }
        }
        Ok(out)
    }

    /// The recalled item a user's inbox entry at `seq` names, if it is one.
    async fn recalled_in_inbox(
        &self,
        user: &str,
        seq: u64,
    ) -> Result<Option<ClipMeta>, StoreError> {
        let Some(entry) = self
            .js
            .last(&self.inbox, &self.layout.inbox_subject(user, seq))
            .await?
        else {
            return Ok(None);
        };
        let Ok(id) = std::str::from_utf8(&entry.payload)
            .unwrap_or_default()
            .parse::<ClipId>()
        else {
            return Ok(None);
        };
        Ok(self
            .clip_rec(&id)
            .await?
            .map(|(meta, _)| meta)
            .filter(|m| m.content == Content::Recalled))
    }

    pub async fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError> {
        let Some((rec, _)) = self.id_rec(&id.to_string()).await? else {
            return Ok(());
        };
        let seq = match rec.seq {
            Some(seq) => seq,
            None => match self.js.last(&self.clips, &rec.subject).await? {
                Some(msg) => msg.seq,
                None => return Ok(()),
            },
        };
        self.js
            .purge(&self.inbox, &self.layout.inbox_subject(user, seq))
            .await
    }

    /// Entries in every inbox: an ack purges its entry, so the stream's count is the depth.
    pub async fn inbox_depth(&self) -> Result<u64, StoreError> {
        self.js.messages(&self.inbox).await
    }

    pub async fn clear_inbox(&self, key: &str) -> Result<(), StoreError> {
        self.js
            .purge(&self.inbox, &self.layout.inbox_filter(key))
            .await
    }

    // ---- history ----

    /// The newest `limit` clips matching `filter` with seq < `before`, oldest first: scans
    /// windows of the stream backwards from `before`, each 4 times the last, until `limit`
    /// are found or the start is reached. Purged clips are read from the purged bucket.
    async fn newest(
        &self,
        filter: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let purged = self.purged_seqs(filter).await?;
        let end = self.js.last_seq(&self.clips).await?.saturating_add(1);
        let mut hi = before.map_or(end, |b| b.min(end));
        let mut window = (limit as u64).saturating_mul(4).max(64);
        let mut out: Vec<ClipMeta> = Vec::new();
        while hi > 1 && out.len() < limit {
            let lo = hi.saturating_sub(window).max(1);
            let part = self.js.scan(&self.clips, filter, lo, hi).await?;
            let mut part = self.with_purged(part, &purged, lo, hi).await?;
            part.append(&mut out);
            out = part;
            hi = lo;
            window = window.saturating_mul(4);
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }

    pub async fn history(
        &self,
        viewer: &str,
        target: &Target,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let filter = self.layout.conversation_filter(viewer, target);
        self.newest(&filter, before, limit).await
    }

    /// One page of everything `user` may read: the newest `limit` clips before `before` of
    /// each of their conversations (the same backward scan as [`Inner::history`]), merged, and
    /// the newest `limit` of those.
    pub async fn readable(
        &self,
        user: &str,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let mut filters: Vec<String> = self.layout.direct_filters(user).into();
        for (channel, members) in self.channel_list().await? {
            if members.iter().any(|m| m == user) {
                filters.push(
                    self.layout
                        .conversation_filter(user, &Target::Channel(channel)),
                );
            }
        }
        let parts = try_join_all(filters.iter().map(|f| self.newest(f, before, limit))).await?;
        let mut seen = HashSet::new();
        let mut out: Vec<ClipMeta> = parts
            .into_iter()
            .flatten()
            .filter(|m| seen.insert(m.seq))
            .collect();
        out.sort_by_key(|m| m.seq);
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }

    // ---- purged clips ----

    /// The purged clips whose metadata subjects match the clip filter `filter`: seq -> key
    /// in the purged bucket. One request (a subject listing, no bodies).
    async fn purged_seqs(&self, filter: &str) -> Result<BTreeMap<u64, String>, StoreError> {
        let keys = self
            .purged
            .keys_matching(&self.js, &self.layout.purged_filter(filter))
            .await?;
        keys.into_iter()
            .map(|k| Ok((self.layout.purged_seq(&k)?, k)))
            .collect()
    }

    /// The anonymised metadata of a purged clip.
    async fn purged_meta(&self, key: &str) -> Result<Option<ClipMeta>, StoreError> {
        let Some((bytes, _)) = self.purged.get(&self.js, key).await? else {
            return Ok(None);
        };
        let rec: ClipRec = parse(&format!("purged clip {key}"), &bytes)?;
        Ok(Some(rec.meta))
    }

    /// The clips of scanned messages with `lo <= seq < hi`, merged with the purged clips of
    /// that range (a purged clip's record wins over its message, which is being erased);
    /// sorted by seq.
    async fn with_purged(
        &self,
        msgs: Vec<Msg>,
        purged: &BTreeMap<u64, String>,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            if !purged.contains_key(&msg.seq) {
                out.push(self.clip_from(msg, None)?.0);
            }
        }
        let keys: Vec<&String> = purged.range(lo..hi).map(|(_, k)| k).collect();
        let metas = try_join_all(keys.iter().map(|k| self.purged_meta(k))).await?;
        out.extend(metas.into_iter().flatten());
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    // ---- purge and retention ----

    /// Every clip `user` sent: its audio is erased, its inbox entries removed and its
    /// metadata replaced by an anonymised record. See "Purge and retention" in `nats.rs`.
    pub async fn purge_user(&self, user: &str) -> Result<usize, StoreError> {
        let mut count = 0;
        let (first, last) = self.js.span(&self.clips).await?;
        let mut from = first.max(1);
        while from <= last {
            let until = from
                .saturating_add(SWEEP_WINDOW)
                .min(last.saturating_add(1));
            let msgs = self
                .js
                .scan(&self.clips, &self.layout.clips_all(), from, until)
                .await?;
            for msg in msgs {
                let rec: ClipRec = parse(&format!("clip message {}", msg.seq), &msg.payload)?;
                if rec.meta.from == user {
                    let size = i64::try_from(rec.meta.bytes).unwrap_or(i64::MAX);
                    self.purge_clip(msg.seq, &msg.subject, rec).await?;
                    self.count_usage(user, -size).await;
                    count += 1;
                }
            }
            from = until;
        }
        // Recalled items live on as records in the purged bucket, with their sender's name
        // (and their claim too): the name goes. They had no audio left to count.
        for (_, key) in self.purged_seqs(&self.layout.clips_all()).await? {
            self.forget_sender_of(&key, user).await?;
        }
        Ok(count)
    }

    /// Replaces `user` as the sender of the purged bucket's record `key` (a recalled item),
    /// and of its claim.
    async fn forget_sender_of(&self, key: &str, user: &str) -> Result<(), StoreError> {
        for _ in 0..CLAIM_TRIES {
            let Some((bytes, rev)) = self.purged.get(&self.js, key).await? else {
                return Ok(());
            };
            let mut rec: ClipRec = parse(&format!("purged clip {key}"), &bytes)?;
            if rec.meta.from != user {
                return Ok(());
            }
            rec.meta.from = PURGED_SENDER.to_string();
            let id = rec.meta.id.to_string();
            if let Cas::Done(_) = self.purged.update(&self.js, key, json(&rec)?, rev).await? {
                for _ in 0..CLAIM_TRIES {
                    let Some((claim, rev)) = self.id_rec(&id).await? else {
                        return Ok(());
                    };
                    let next = IdRec {
                        from: PURGED_SENDER.to_string(),
                        ..claim
                    };
                    if let Cas::Done(_) = self.ids.update(&self.js, &id, json(&next)?, rev).await? {
                        return Ok(());
                    }
                }
                return Err(StoreError::Backend(format!(
                    "clip {id}: its claim kept changing while its sender was purged"
                )));
            }
        }
        Err(StoreError::Backend(format!(
            "purged clip {key}: its record kept changing while its sender was purged"
        )))
    }

    /// Recalls one item: a record saying it was recalled goes into the purged bucket (read
    /// instead of its message from then on), the claim is marked, the recipients are queued
    /// again, then the payload and the metadata message are erased. A repeat completes an
    /// interrupted recall.
    pub async fn recall_clip(
        &self,
        id: &ClipId,
        keys: &[String],
    ) -> Result<Option<ClipMeta>, StoreError> {
        let claim = id.to_string();
        let Some((rec, _)) = self.id_rec(&claim).await? else {
            return Ok(None);
        };
        let Some(seq) = rec.seq else { return Ok(None) };
        let key = self.layout.purged_key(&rec.subject, seq)?;
        let recalled = match self.clip_rec(id).await? {
            Some((meta, _)) => ClipMeta {
                content: Content::Recalled,
                bytes: 0,
                packets: 0,
                duration_ms: 0,
                seq,
                ..meta
            },
            None => return Ok(None),
        };
        let record = ClipRec {
            meta: recalled.clone(),
            audio: AudioRef::none(),
            stored_at_ms: now_ms(),
        };
        if !rec.purged {
            // Lost: a record is there already (an earlier, interrupted recall).
            self.purged.create(&self.js, &key, json(&record)?).await?;
            let mut marked = false;
            for _ in 0..CLAIM_TRIES {
                let Some((now, rev)) = self.id_rec(&claim).await? else {
                    break;
                };
                if now.purged {
                    marked = true;
                    break;
                }
                let next = IdRec {
                    purged: true,
                    ..now
                };
                if let Cas::Done(_) = self.ids.update(&self.js, &claim, json(&next)?, rev).await? {
                    marked = true;
                    break;
                }
            }
            if !marked {
                return Err(StoreError::Backend(format!(
                    "clip {id}: its claim kept changing while it was recalled"
                )));
            }
        }
        self.queue(keys, seq, id, None).await?;
        if recalled.from != PURGED_SENDER {
            self.count_usage(
                &recalled.from,
                -i64::try_from(self.clip_bytes_before_recall(seq).await?).unwrap_or(0),
            )
            .await;
        }
        self.erase_audio(id).await?;
        self.js.erase(&self.clips, seq).await?;
        Ok(Some(recalled))
    }

    /// The bytes the metadata message at `seq` recorded (0 once it is erased).
    async fn clip_bytes_before_recall(&self, seq: u64) -> Result<u64, StoreError> {
        Ok(match self.js.by_seq(&self.clips, seq).await? {
            Some(msg) => {
                parse::<ClipRec>(&format!("clip message {seq}"), &msg.payload)?
                    .meta
                    .bytes
            }
            None => 0,
        })
    }

    /// Purges one clip, in an order that a repeat completes and that never shows a half
    /// state: anonymised record, claim, inbox entries, audio, then the metadata message.
    async fn purge_clip(&self, seq: u64, subject: &str, rec: ClipRec) -> Result<(), StoreError> {
        let id = rec.meta.id;
        let anonymised = ClipRec {
            meta: ClipMeta {
                from: PURGED_SENDER.to_string(),
                packets: 0,
                bytes: 0,
                seq,
                ..rec.meta
            },
            audio: AudioRef::none(),
            stored_at_ms: rec.stored_at_ms,
        };
        let key = self.layout.purged_key(subject, seq)?;
        // Lost: a record is there already (an earlier, interrupted purge of this clip).
        self.purged
            .create(&self.js, &key, json(&anonymised)?)
            .await?;
        let claim = id.to_string();
        let mut marked = false;
        for _ in 0..CLAIM_TRIES {
            let Some((rec, rev)) = self.id_rec(&claim).await? else {
                marked = true;
                break;
            };
            if rec.purged {
                marked = true;
                break;
            }
            let next = IdRec {
                from: PURGED_SENDER.to_string(),
                seq: Some(seq),
                purged: true,
                ..rec
            };
            if let Cas::Done(_) = self.ids.update(&self.js, &claim, json(&next)?, rev).await? {
                marked = true;
                break;
            }
        }
        if !marked {
            return Err(StoreError::Backend(format!(
                "clip {id}: its claim kept changing while it was purged"
            )));
        }
        self.js
            .purge(&self.inbox, &self.layout.inbox_clip_filter(seq))
            .await?;
        self.erase_audio(&id).await?;
        self.js.erase(&self.clips, seq).await
    }

    /// Erases every audio chunk of a clip, of every commit attempt (left-overs included).
    async fn erase_audio(&self, id: &ClipId) -> Result<(), StoreError> {
        let subjects = self
            .js
            .subjects(&self.audio, &self.layout.audio_clip_filter(id))
            .await?;
        try_join_all(subjects.iter().map(|subject| async move {
            match self.js.last(&self.audio, subject).await? {
                Some(msg) => self.js.erase(&self.audio, msg.seq).await,
                None => Ok(()),
            }
        }))
        .await?;
        Ok(())
    }

    /// Deletes the clips stored before `before_ms`, oldest first, stopping at the first one
    /// stored later; then the purged records older than that. Returns how many clips with
    /// audio were deleted.
    pub async fn delete_clips_before(&self, before_ms: i64) -> Result<usize, StoreError> {
        let (first, last) = self.js.span(&self.clips).await?;
        let mut cutoff = last.saturating_add(1);
        let mut count = 0;
        let mut from = first.max(1);
        'scan: while from <= last {
            let until = from
                .saturating_add(SWEEP_WINDOW)
                .min(last.saturating_add(1));
            let msgs = self
                .js
                .scan(&self.clips, &self.layout.clips_all(), from, until)
                .await?;
            for msg in msgs {
                let rec: ClipRec = parse(&format!("clip message {}", msg.seq), &msg.payload)?;
                if rec.stored_at_ms >= before_ms {
                    cutoff = msg.seq;
                    break 'scan;
                }
                self.delete_clip(msg.seq, &rec.meta.id).await?;
                self.count_usage(
                    &rec.meta.from,
                    -i64::try_from(rec.meta.bytes).unwrap_or(i64::MAX),
                )
                .await;
                count += 1;
            }
            from = until;
        }
        for (seq, key) in self.purged_seqs(&self.layout.clips_all()).await? {
            if seq >= cutoff {
                break;
            }
            let Some((bytes, _)) = self.purged.get(&self.js, &key).await? else {
                continue;
            };
            let rec: ClipRec = parse(&format!("purged clip {key}"), &bytes)?;
            if rec.stored_at_ms < before_ms {
                self.delete_clip(seq, &rec.meta.id).await?;
                self.purged.delete(&self.js, &key).await?;
            }
        }
        Ok(count)
    }

    /// Deletes a channel's clips (as retention does, purged ones too), then the channel: an
    /// interrupted deletion is finished by calling it again while the channel is still there.
    pub async fn delete_channel(&self, name: &str) -> Result<Option<usize>, StoreError> {
        if self.channel(name).await?.is_none() {
            return Ok(None);
        }
        let filter = self
            .layout
            .conversation_filter("", &Target::Channel(name.to_string()));
        let (first, last) = self.js.span(&self.clips).await?;
        let mut count = 0;
        let mut from = first.max(1);
        while from <= last {
            let until = from
                .saturating_add(SWEEP_WINDOW)
                .min(last.saturating_add(1));
            for msg in self.js.scan(&self.clips, &filter, from, until).await? {
                let rec: ClipRec = parse(&format!("clip message {}", msg.seq), &msg.payload)?;
                self.delete_clip(msg.seq, &rec.meta.id).await?;
                self.count_usage(
                    &rec.meta.from,
                    -i64::try_from(rec.meta.bytes).unwrap_or(i64::MAX),
                )
                .await;
                count += 1;
            }
            from = until;
        }
        for (seq, key) in self.purged_seqs(&filter).await? {
            if let Some((bytes, _)) = self.purged.get(&self.js, &key).await? {
                let rec: ClipRec = parse(&format!("purged clip {key}"), &bytes)?;
                self.delete_clip(seq, &rec.meta.id).await?;
                count += 1;
            }
            self.purged.delete(&self.js, &key).await?;
        }
        self.channels.delete(&self.js, &encode(name)).await?;
        Ok(Some(count))
    }

    // ---- records ----

    pub async fn record(&self, key: &[&str]) -> Result<Option<Record>, StoreError> {
        let key = records::record_key(key)?;
        Ok(self.records.get(&self.js, &key).await?.map(|(bytes, rev)| {
            let keep = bytes.len().saturating_sub(RECORD_NONCE);
            Record {
                value: bytes[..keep].to_vec(),
                rev,
            }
        }))
    }

    pub async fn put_record(
        &self,
        key: &[&str],
        value: &[u8],
        rev: u64,
    ) -> Result<Option<u64>, StoreError> {
        let key = records::record_key(key)?;
        records::check_value(value)?;
        let mut stored = Vec::with_capacity(value.len() + RECORD_NONCE);
        stored.extend_from_slice(value);
        stored.extend_from_slice(&nonce().to_le_bytes());
        match self
            .records
            .update(&self.js, &key, Bytes::from(stored), rev)
            .await?
        {
            Cas::Done(rev) => Ok(Some(rev)),
            Cas::Lost => Ok(None),
        }
    }

    pub async fn delete_record(&self, key: &[&str]) -> Result<(), StoreError> {
        let key = records::record_key(key)?;
        self.records.delete(&self.js, &key).await
    }

    pub async fn record_keys(&self, prefix: &[&str]) -> Result<Vec<Vec<String>>, StoreError> {
        let filter = format!("{}>", records::record_prefix(prefix)?);
        let keys = self.records.keys_matching(&self.js, &filter).await?;
        records::parse_record_keys(&keys)
    }

    /// Deletes one clip: inbox entries, audio, claim, and the metadata message last, so that
    /// the next run finds and finishes an interrupted deletion.
    async fn delete_clip(&self, seq: u64, id: &ClipId) -> Result<(), StoreError> {
        self.js
            .purge(&self.inbox, &self.layout.inbox_clip_filter(seq))
            .await?;
        self.erase_audio(id).await?;
        self.ids.delete(&self.js, &id.to_string()).await?;
        self.js.erase(&self.clips, seq).await
    }
}
