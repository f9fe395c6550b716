//! Whole client operations, shared by the CLI, the demo and tests: sending through the
//! outbox with retries, listening, exporting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::warn;

use walkie_media::audio::{self, wav};
use walkie_media::codec::{self, EncodedClip, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, ClipMeta, Target, now_ms};
use walkie_proto::message::{Content, Kind, MessageHeader, Parts, parts};
use walkie_proto::received::{ReceivedClip, ReceivedMessage};
use walkie_proto::wire::{ErrorCode, MAX_HISTORY_PAGE};

use crate::outbox::Outbox;
use crate::{Client, ClientConfig, ClientError, Event};

/// What happened to the clips of an outbox flush.
#[derive(Debug, Default)]
pub struct FlushReport {
    /// Clips the relay acknowledged, with their sequence numbers.
    pub stored: Vec<(ClipId, u64)>,
    /// Clips the relay refused for good, moved to `failed/`, with the reason.
    pub rejected: Vec<(ClipId, ClientError)>,
    /// The transient failure that stopped the flush early, if any (the rest stays queued).
    pub interrupted: Option<ClientError>,
}

impl FlushReport {
    /// Adds what `other` stored and refused to this report; returns what interrupted `other`.
    pub fn absorb(&mut self, other: FlushReport) -> Option<ClientError> {
        self.stored.extend(other.stored);
        self.rejected.extend(other.rejected);
        other.interrupted
    }

    /// True once `id` was stored or refused for good.
    pub fn settled(&self, id: ClipId) -> bool {
        self.stored.iter().any(|(s, _)| *s == id) || self.rejected.iter().any(|(r, _)| *r == id)
    }
}

/// The longest WAV file queued when the relay's own limit is not known (ten minutes: more
/// than any relay is set to accept, and what a recipient accepts in one clip).
pub const MAX_WAV_MS: u32 = 600_000;

/// Encodes a WAV file of at most [`MAX_WAV_MS`] and queues it in the outbox; returns the
/// header to send.
pub fn queue_wav(
    outbox: &Outbox,
    wav: &Path,
    to: Target,
    enc: &EncoderConfig,
) -> Result<(ClipHeader, EncodedClip), ClientError> {
    queue_wav_within(outbox, wav, to, enc, MAX_WAV_MS)
}

/// Encodes a WAV file and queues it in the outbox; a file longer than `max_ms` (the relay's
/// longest clip) is refused from its header before anything is decoded or queued.
pub fn queue_wav_within(
    outbox: &Outbox,
    wav: &Path,
    to: Target,
    enc: &EncoderConfig,
    max_ms: u32,
) -> Result<(ClipHeader, EncodedClip), ClientError> {
    let pcm =
        audio::load_wav_48k_mono_within(wav, u64::from(max_ms)).map_err(codec::CodecError::from)?;
    if pcm.is_empty() {
        return Err(ClientError::Config(format!(
            "{}: the WAV file has no audio",
            wav.display()
        )));
    }
    let clip = codec::encode_pcm(&pcm, enc)?;
    let header = ClipHeader {
        id: ClipId::random(),
        to,
        started_at_ms: now_ms(),
        codec: clip.params,
    };
    outbox.add(&header, &clip)?;
    Ok((header, clip))
}

/// Sends every queued clip over `client`. A transient failure stops the flush (the clips
/// stay queued, see [`FlushReport::interrupted`]); a permanent refusal moves the clip to
/// `failed/`.
pub async fn flush(client: &Client, outbox: &Outbox) -> Result<FlushReport, ClientError> {
    let mut report = FlushReport::default();
    for entry in outbox.pending()? {
        let id = entry.header.id;
        let sent = match entry.message {
            Some(kind) => match outbox.load_message(&id) {
                Ok(payload) => {
                    let header = MessageHeader {
                        id,
                        to: entry.header.to.clone(),
                        kind,
                    };
                    client.send_message(&header, &payload).await
                }
                Err(e) => Err(e),
            },
            None => match outbox.load(&id) {
                Ok((packets, samples)) => client.send_clip(&entry.header, &packets, samples).await,
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok((seq, _)) => {
                outbox.remove(&id)?;
                report.stored.push((id, seq));
            }
            Err(e) if e.is_transient() => {
                report.interrupted = Some(e);
                return Ok(report);
            }
            Err(e) => {
                if let Err(move_err) = outbox.reject(&id, &e.to_string()) {
                    warn!("cannot move refused clip {id} aside: {move_err}");
                }
                report.rejected.push((id, e));
            }
        }
    }
    Ok(report)
}

/// Longest pause between two attempts to reach the relay.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// Connects and flushes the outbox, retrying with backoff for up to `retry_for`, until
/// `want` (if given) is acknowledged or refused. Returns the report of everything sent.
pub async fn flush_with_retry(
    cfg: &ClientConfig,
    outbox: &Outbox,
    want: Option<ClipId>,
    retry_for: Duration,
) -> Result<FlushReport, ClientError> {
    let deadline = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(200);
    let mut total = FlushReport::default();
    loop {
        let attempt = async {
            let client = Client::connect(cfg).await?;
            let r = flush(&client, outbox).await;
            client.close().await;
            r
        }
        .await;
        let err = match attempt {
            Ok(report) => match total.absorb(report) {
                None => return Ok(total),
                Some(e) => e,
            },
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        if want.is_some_and(|id| total.settled(id)) {
            return Ok(total);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(err);
        }
        let wait = match &err {
            ClientError::Refused(e) => match e.code {
                ErrorCode::Busy { retry_after_ms } => Duration::from_millis(retry_after_ms.into()),
                _ => backoff,
            },
            _ => backoff,
        };
        // Jitter (50-150%) spreads a crowd of clients refused together over time.
        let wait = wait.mul_f64(rand::random_range(0.5..1.5));
        warn!(
            "relay unavailable ({err}); retrying in {} ms",
            wait.as_millis()
        );
        tokio::time::sleep(wait.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Options of [`listen`].
#[derive(Clone, Debug, Default)]
pub struct ListenOptions {
    /// Write `CLIPID.opus` and `CLIPID.wav` here.
    pub save_dir: Option<PathBuf>,
    /// Stop after this many clips.
    pub count: Option<usize>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

/// Something [`listen_items`] received.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    /// A complete clip.
    Clip(&'a ReceivedClip),
    /// A message, or the news that one was recalled.
    Message(&'a ReceivedMessage),
}

/// Receives the backlog then live clips, calling `on_clip` for each complete clip after it
/// is saved and before it is acknowledged (messages are received, saved and acknowledged as
/// [`listen_items`] does, and not passed on). Returns the number of clips and messages
/// received.
pub async fn listen(
    client: &mut Client,
    opts: &ListenOptions,
    mut on_clip: impl FnMut(&ReceivedClip),
) -> Result<usize, ClientError> {
    listen_items(client, opts, |item| {
        if let Item::Clip(clip) = item {
            on_clip(clip);
        }
    })
    .await
}

/// Receives the backlog then live items (clips and messages, in the relay's order), calling
/// `on_item` for each after it is saved and before it is acknowledged. A text, picture or
/// doodle passed to `on_item` is shown to the user, so its sender gets a read receipt. A
/// recall removes what was saved of the message and does not count as an item. Returns the
/// number of clips and messages received.
pub async fn listen_items(
    client: &mut Client,
    opts: &ListenOptions,
    mut on_item: impl FnMut(Item<'_>),
) -> Result<usize, ClientError> {
    if let Some(dir) = &opts.save_dir {
        std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut seen = std::collections::HashSet::new();
    let mut received = 0;
    while opts.count.is_none_or(|n| received < n) {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), client.next_event()).await {
                Ok(e) => e,
                Err(_) => {
                    return Err(ClientError::Timeout(opts.timeout.unwrap_or_default()));
                }
            },
            None => client.next_event().await,
        };
        let Some(event) = next else {
            return Err(ClientError::Closed(
                client
                    .close_reason()
                    .unwrap_or_else(|| "the relay closed the connection".into()),
            ));
        };
        match event {
            Event::Clip(clip) => {
                let id = clip.header.id;
                if seen.insert(id) {
                    if let Some(dir) = &opts.save_dir {
                        save_clip(dir, &clip)?;
                    }
                    on_item(Item::Clip(&clip));
                    received += 1;
                }
                client.ack(id).await?;
            }
            Event::Message(message) => {
                if take_message(client, opts.save_dir.as_deref(), &mut seen, &message, |m| {
                    on_item(Item::Message(m))
                })
                .await?
                {
                    received += 1;
                }
            }
            Event::Error(e) => warn!("relay error: {} ({})", e.message, e.code.name()),
            Event::LiveStarted(_)
            | Event::LivePacket(..)
            | Event::Aborted(_)
            | Event::Channels(_)
            | Event::Online(_)
            | Event::Presence(..)
            | Event::PlayedBy(..)
            | Event::ContactChanged(_) => {}
        }
    }
    Ok(received)
}

/// What a listener does with a message pushed by the relay. A new one is saved into
/// `save_dir` (if any), shown (`show`), marked read for its sender; a recall deletes what was
/// saved and is shown; a message seen already is not shown again. Every one is acknowledged.
/// True for a new message.
pub async fn take_message(
    client: &Client,
    save_dir: Option<&Path>,
    seen: &mut std::collections::HashSet<ClipId>,
    m: &ReceivedMessage,
    show: impl FnOnce(&ReceivedMessage),
) -> Result<bool, ClientError> {
    let id = m.header.id;
    let new = if m.header.content == Content::Recalled {
        if let Some(dir) = save_dir {
            forget_message(dir, id)?;
        }
        show(m);
        false
    } else if seen.insert(id) {
        if let Some(dir) = save_dir {
            save_message(dir, m)?;
        }
        show(m);
        client.played(id).await?;
        true
    } else {
        false
    };
    client.ack(id).await?;
    Ok(new)
}

/// The line `walkie listen` prints for a message: `ID FROM TARGET KIND DETAIL`, KIND being
/// `text` (DETAIL: the text as a JSON string), `picture` (`WIDTHxHEIGHT BYTES`), `doodle`
/// (the stroke count) or `recalled` (DETAIL: `-`).
pub fn message_line(m: &ReceivedMessage) -> String {
    let h = &m.header;
    let detail = if h.content == Content::Recalled {
        "-".to_string()
    } else {
        m.detail()
    };
    format!(
        "{} {} {} {} {}",
        h.id,
        h.from,
        h.to,
        h.content.name(),
        detail
    )
}

/// The files a message is saved as, by kind: `ID.txt`; `ID.jpg` or `ID.png` for a picture;
/// `ID.doodle.json` and `ID.png` for a doodle. Empty for a recalled one.
pub fn message_files(id: ClipId, content: &Content, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    match parts(content, payload) {
        Ok(Parts::Text(text)) => vec![(format!("{id}.txt"), text.as_bytes().to_vec())],
        Ok(Parts::Picture { full, .. }) => {
            let ext = match content {
                Content::Picture { format, .. } => format.ext(),
                _ => "bin",
            };
            vec![(format!("{id}.{ext}"), full.to_vec())]
        }
        Ok(Parts::Doodle { strokes, png }) => vec![
            (format!("{id}.doodle.json"), strokes.to_vec()),
            (format!("{id}.png"), png.to_vec()),
        ],
        Ok(Parts::Voice(ogg)) => vec![(format!("{id}.opus"), ogg.to_vec())],
        Ok(Parts::Recalled) | Err(_) => Vec::new(),
    }
}

/// Writes a received message's files into `dir` (see [`message_files`]).
pub fn save_message(dir: &Path, message: &ReceivedMessage) -> Result<(), ClientError> {
    for (name, bytes) in message_files(message.header.id, &message.header.content, &message.payload)
    {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ClientError::Io { path, source })?;
    }
    Ok(())
}

/// Deletes whatever was saved in `dir` of a message that was recalled.
pub fn forget_message(dir: &Path, id: ClipId) -> Result<(), ClientError> {
    for ext in ["txt", "jpg", "png", "doodle.json"] {
        let path = dir.join(format!("{id}.{ext}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ClientError::Io { path, source }),
        }
    }
    Ok(())
}

/// Sends a message through the outbox: queued durably, then flushed over `first` (a
/// connection made already, closed after) and, until the relay stores or refuses it, over new
/// connections with retries for up to `retry_for`. Returns its id and seq.
pub async fn send_message(
    cfg: &ClientConfig,
    first: Option<Client>,
    outbox: &Outbox,
    to: Target,
    kind: Kind,
    payload: &[u8],
    retry_for: Duration,
) -> Result<(ClipId, u64), ClientError> {
    let header = outbox.add_message(to, kind, payload)?;
    let mut report = FlushReport::default();
    if let Some(client) = first {
        // An interruption here is retried below.
        if let Ok(r) = flush(&client, outbox).await {
            report.absorb(r);
        }
        client.close().await;
    }
    if !report.settled(header.id) {
        report.absorb(flush_with_retry(cfg, outbox, Some(header.id), retry_for).await?);
    }
    if let Some((_, e)) = report.rejected.into_iter().find(|(r, _)| *r == header.id) {
        return Err(e);
    }
    match report.stored.iter().find(|(s, _)| *s == header.id) {
        Some((_, seq)) => Ok((header.id, *seq)),
        None => Err(ClientError::Timeout(retry_for)),
    }
}

/// Writes `DIR/CLIPID.opus` and `DIR/CLIPID.wav` (48 kHz mono 16-bit).
pub fn save_clip(dir: &Path, clip: &ReceivedClip) -> Result<(), ClientError> {
    let id = clip.header.id;
    let opus_path = dir.join(format!("{id}.opus"));
    std::fs::write(&opus_path, clip.ogg()?).map_err(|source| ClientError::Io {
        path: opus_path,
        source,
    })?;
    let pcm = codec::decode_clip(clip)?;
    wav::write_wav_mono16(&dir.join(format!("{id}.wav")), 48_000, &pcm)
        .map_err(codec::CodecError::from)?;
    Ok(())
}

/// Every clip the user may read, oldest first, fetched page by page.
pub async fn all_readable(client: &Client) -> Result<Vec<ClipMeta>, ClientError> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = client.history(None, MAX_HISTORY_PAGE, before).await?;
        let Some(first) = page.first() else { break };
        before = Some(first.seq);
        let full = page.len() as u32 == MAX_HISTORY_PAGE;
        all.splice(0..0, page);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// Exports every readable clip to `DIR/CLIPID.opus` plus `DIR/index.json`; returns the count
/// of clips listed (see [`export_clips`]).
pub async fn export(client: &Client, dir: &Path) -> Result<usize, ClientError> {
    let clips = all_readable(client).await?;
    export_clips(client, &clips, dir, |m| format!("{}.opus", m.id)).await
}

/// What [`export_people`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeopleExport {
    /// People in the contacts (requests and blocks included).
    pub contacts: usize,
    /// Channels the user is a member of.
    pub channels: usize,
    /// Whether an avatar was written.
    pub avatar: bool,
}

/// Writes what the relay keeps about the user as a person into `dir`: `profile.json` (login
/// and display name, who may send direct clips, the avatar's file), `avatar.png` (256 px, if
/// any), `contacts.json`, `channels.json` (with owners, titles and members) and
/// `devices.json`.
pub async fn export_people(client: &Client, dir: &Path) -> Result<PeopleExport, ClientError> {
    std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let write = |name: &str, value: serde_json::Value| {
        let path = dir.join(name);
        let text =
            serde_json::to_vec_pretty(&value).map_err(|e| ClientError::Config(e.to_string()))?;
        std::fs::write(&path, text).map_err(|source| ClientError::Io { path, source })
    };
    let me = client.set_profile(None, None).await?;
    let avatar = client.avatar(client.user(), false).await?;
    if let Some(png) = &avatar {
        let path = dir.join("avatar.png");
        std::fs::write(&path, png).map_err(|source| ClientError::Io { path, source })?;
    }
    write(
        "profile.json",
        serde_json::json!({
            "user": client.user(),
            "display": me.display,
            "direct_from": me.direct_from.to_string(),
            "avatar": avatar.as_ref().map(|_| "avatar.png"),
        }),
    )?;
    let contacts = client.contacts().await?;
    let listed: Vec<_> = contacts
        .iter()
        .map(|c| serde_json::json!({ "user": c.user, "display": c.display, "state": c.state.map(|s| s.name()) }))
        .collect();
    write("contacts.json", listed.into())?;
    let groups = client.groups().await?;
    let listed: Vec<_> = groups
        .iter()
        .map(|g| serde_json::json!({ "name": g.name, "title": g.title, "owner": g.owner, "members": g.members }))
        .collect();
    write("channels.json", listed.into())?;
    let devices = client.devices().await?;
    let listed: Vec<_> = devices
        .iter()
        .map(|d| serde_json::json!({ "id": d.id, "name": d.name, "linked_at": (d.created_ms > 0).then(|| rfc3339(d.created_ms)) }))
        .collect();
    write("devices.json", listed.into())?;
    Ok(PeopleExport {
        contacts: contacts.len(),
        channels: groups.len(),
        avatar: avatar.is_some(),
    })
}

/// Writes `clips` to `dir`, each fetched from the relay into the file `name` gives it, and
/// `dir/index.json` listing every clip in the form `walkie history --json` prints plus its
/// `file`. A message is written as the files [`message_files`] names (listed in `files`, the
/// first also as `file`; a text's `text` is in the index too); a recalled one is listed with
/// `"recalled": true` and no file. A clip whose audio the relay no longer has (purged, or past retention) is listed
/// with `"purged": true` and no file, and the export goes on. `index.json` is always written:
/// if the export stops early (the connection failed), the clips not reached are listed with
/// `"exported": false` and the error is returned after the index is written.
pub async fn export_clips(
    client: &Client,
    clips: &[ClipMeta],
    dir: &Path,
    name: impl Fn(&ClipMeta) -> String,
) -> Result<usize, ClientError> {
    std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut index = Vec::with_capacity(clips.len());
    let mut failure = None;
    for meta in clips {
        let mut entry = history_json(meta);
        if failure.is_some() {
            entry["exported"] = false.into();
            index.push(entry);
            continue;
        }
        if meta.content == Content::Recalled {
            entry["recalled"] = true.into();
            index.push(entry);
            continue;
        }
        match client.fetch(meta.id).await {
            Ok((_, bytes)) if !meta.content.is_voice() => {
                let files = message_files(meta.id, &meta.content, &bytes);
                for (file, content) in &files {
                    let path = dir.join(file);
                    if let Err(source) = std::fs::write(&path, content) {
                        failure = Some(ClientError::Io { path, source });
                    }
                }
                if failure.is_some() {
                    entry["exported"] = false.into();
                } else {
                    let names: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
                    if let (Content::Text { .. }, Ok(text)) =
                        (meta.content, std::str::from_utf8(&bytes))
                    {
                        entry["text"] = text.into();
                    }
                    entry["file"] = names.first().copied().into();
                    entry["files"] = names.into();
                }
            }
            Ok((_, bytes)) => {
                let file = name(meta);
                let path = dir.join(&file);
                if let Err(source) = std::fs::write(&path, bytes) {
                    failure = Some(ClientError::Io { path, source });
                    entry["exported"] = false.into();
                } else {
                    entry["file"] = file.into();
                }
            }
            Err(ClientError::Refused(e)) if e.code == walkie_proto::wire::ErrorCode::NotFound => {
                entry["purged"] = true.into();
            }
            Err(e) => {
                failure = Some(e);
                entry["exported"] = false.into();
            }
        }
        index.push(entry);
    }
    let text = serde_json::to_vec_pretty(&index).map_err(|e| ClientError::Config(e.to_string()))?;
    let path = dir.join("index.json");
    std::fs::write(&path, text).map_err(|source| ClientError::Io { path, source })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(clips.len()),
    }
}

/// The JSON form of a clip or message in history and export: `id`, `from`, `to`,
/// `started_at` (RFC 3339), `duration_ms`, `bytes`, `kind` (`voice`, `text`, `picture`,
/// `doodle` or `recalled`) and the kind's fields: `chars` for a text; `width`, `height`,
/// `format` and `thumb_bytes` for a picture; `width`, `height`, `strokes` and `points` for a
/// doodle.
pub fn history_json(meta: &ClipMeta) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": meta.id.to_string(),
        "from": meta.from,
        "to": meta.to.to_string(),
        "started_at": rfc3339(meta.started_at_ms),
        "duration_ms": meta.duration_ms,
        "bytes": meta.bytes,
        "kind": meta.content.name(),
    });
    match meta.content {
        Content::Voice | Content::Recalled => {}
        Content::Text { chars } => v["chars"] = chars.into(),
        Content::Picture {
            width,
            height,
            format,
            thumb,
        } => {
            v["width"] = width.into();
            v["height"] = height.into();
            v["format"] = format.ext().into();
            v["thumb_bytes"] = thumb.into();
        }
        Content::Doodle {
            width,
            height,
            strokes,
            points,
            ..
        } => {
            v["width"] = width.into();
            v["height"] = height.into();
            v["strokes"] = strokes.into();
            v["points"] = points.into();
        }
    }
    v
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "invalid".into())
}
