//! The on-disk outbox: every clip is written here (fsynced) before it is sent, and removed
//! only after the relay acknowledged it as stored. A retry resends the same clip id, so the
//! relay stores it once however often it is sent.
//!
//! Layout: `DIR/<clipid>.opus` (the Ogg Opus file) or, for a message, `DIR/<id>.msg` (its
//! payload: text, prepared picture or doodle JSON), and `DIR/<id>.json` (the header). The
//! JSON is written last, so an entry without one is incomplete and ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use walkie_media::codec::EncodedClip;
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::message::{Kind, MessageHeader};
use walkie_proto::ogg;

use crate::ClientError;

/// One waiting clip.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Header to send.
    pub header: ClipHeader,
    /// When it was queued (ms since the epoch), for ordering.
    pub queued_at_ms: i64,
    /// A message's kind (its payload is `<id>.msg`); none for a clip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Kind>,
}

/// An outbox directory.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Outbox {
    /// Opens (creating) an outbox directory.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where it lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, id: &ClipId) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{id}.opus")),
            self.dir.join(format!("{id}.json")),
        )
    }

    fn message_path(&self, id: &ClipId) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    /// Queues an encoded clip durably.
    pub fn add(&self, header: &ClipHeader, clip: &EncodedClip) -> Result<(), ClientError> {
        let (audio, _) = self.paths(&header.id);
        let ogg = ogg::write_ogg(&header.codec, &clip.packets, clip.samples, rand::random())?;
        write_durably(&audio, &ogg)?;
        self.add_entry(OutboxEntry {
            header: header.clone(),
            queued_at_ms: now_ms(),
            message: None,
        })
    }

    /// Queues a message durably (its payload as [`walkie_proto::message`] describes it);
    /// returns its header.
    pub fn add_message(
        &self,
        to: Target,
        kind: Kind,
        payload: &[u8],
    ) -> Result<MessageHeader, ClientError> {
        let id = ClipId::random();
        write_durably(&self.message_path(&id), payload)?;
        let header = ClipHeader {
            id,
            to: to.clone(),
            started_at_ms: now_ms(),
            codec: CodecParams::NONE,
        };
        self.add_entry(OutboxEntry {
            header,
            queued_at_ms: now_ms(),
            message: Some(kind),
        })?;
        Ok(MessageHeader { id, to, kind })
    }

    /// The payload of a queued message.
    pub fn load_message(&self, id: &ClipId) -> Result<Vec<u8>, ClientError> {
        let path = self.message_path(id);
        std::fs::read(&path).map_err(io(&path))
    }

    fn add_entry(&self, entry: OutboxEntry) -> Result<(), ClientError> {
        let (_, meta) = self.paths(&entry.header.id);
        let json =
            serde_json::to_vec_pretty(&entry).map_err(|e| ClientError::Config(e.to_string()))?;
        write_durably(&meta, &json)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every complete entry, oldest first. Unreadable entries are skipped (and reported by
    /// [`Outbox::load`] when sent).
    pub fn pending(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = item.map_err(io(&self.dir))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(bytes) = std::fs::read(&path)
                && let Ok(entry) = serde_json::from_slice::<OutboxEntry>(&bytes)
            {
                out.push(entry);
            }
        }
        out.sort_by_key(|e| (e.queued_at_ms, e.header.started_at_ms));
        Ok(out)
    }

    /// The packets and length of a queued clip.
    pub fn load(&self, id: &ClipId) -> Result<(Vec<Vec<u8>>, u64), ClientError> {
        let (audio, _) = self.paths(id);
        let parsed = ogg::read_ogg_file(&audio)?;
        Ok((parsed.packets, parsed.samples))
    }

    /// Removes an acknowledged clip.
    pub fn remove(&self, id: &ClipId) -> Result<(), ClientError> {
        let (audio, meta) = self.paths(id);
        // The header goes first: an entry without it is never sent again.
        for p in [meta, audio, self.message_path(id)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::Io { path: p, source: e }),
            }
        }
        Ok(())
    }

    /// Moves a clip that failed for good into `DIR/failed/`, out of the send queue, with
    /// `reason` beside it in `DIR/failed/<id>.txt`; returns where the audio (or message payload,
    /// `<id>.msg`) went.
    pub fn reject(&self, id: &ClipId, reason: &str) -> Result<PathBuf, ClientError> {
        let failed = self.dir.join("failed");
        std::fs::create_dir_all(&failed).map_err(io(&failed))?;
        let (mut audio, meta) = self.paths(id);
        let mut dest = failed.join(format!("{id}.opus"));
        if !audio.exists() && self.message_path(id).exists() {
            (audio, dest) = (self.message_path(id), failed.join(format!("{id}.msg")));
        }
        write_durably(
            &failed.join(format!("{id}.txt")),
            format!("{reason}\n").as_bytes(),
        )?;
        std::fs::rename(&audio, &dest).map_err(io(&audio))?;
        std::fs::remove_file(&meta).map_err(io(&meta))?;
        Ok(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_media::codec::{EncoderConfig, encode_pcm};
    use walkie_proto::clip::Target;

    #[test]
    fn entries_survive_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path()).expect("opens");
        let pcm: Vec<f32> = (0..4800).map(|i| (i as f32 * 0.01).sin() * 0.2).collect();
        let clip = encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
        let header = ClipHeader {
            id: ClipId::random(),
            to: Target::Channel("crew".into()),
            started_at_ms: 1,
            codec: clip.params,
        };
        outbox.add(&header, &clip).expect("adds");
        let again = Outbox::open(dir.path()).expect("reopens");
        let pending = again.pending().expect("lists");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].header, header);
        let (packets, samples) = again.load(&header.id).expect("loads");
        assert_eq!(packets, clip.packets);
        assert_eq!(samples, 4800);
        again.remove(&header.id).expect("removes");
        assert!(again.pending().expect("lists").is_empty());
    }

    #[test]
    fn a_rejected_clip_leaves_the_queue_with_its_reason_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path()).expect("opens");
        let clip = encode_pcm(&[0.0; 960], &EncoderConfig::default()).expect("encodes");
        let header = ClipHeader {
            id: ClipId::random(),
            to: Target::Channel("crew".into()),
            started_at_ms: 1,
            codec: clip.params,
        };
        outbox.add(&header, &clip).expect("adds");
        let moved = outbox
            .reject(&header.id, "the relay refused: not a member (forbidden)")
            .expect("moved");
        assert!(moved.exists() && outbox.pending().expect("lists").is_empty());
        let reason =
            std::fs::read_to_string(dir.path().join("failed").join(format!("{}.txt", header.id)))
                .expect("reason");
        assert!(reason.contains("not a member"), "{reason}");
    }
}
