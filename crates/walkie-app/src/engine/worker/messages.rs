//! Messages in the engine: what a text, picture or doodle shows (its body, from the stored
//! payload), sending them through the outbox, recalls, read marks and receipts, and the
//! desktop notification for a message that arrives while the window is not focused.

use std::sync::Arc;

use tracing::warn;
use walkie_client::{Client, ClientError};
use walkie_proto::clip::{ClipId, ClipMeta, CodecParams, Target, now_ms};
use walkie_proto::message::doodle::Doodle;
use walkie_proto::message::{Content, Kind, Parts, PictureFormat, parts};
use walkie_proto::received::ReceivedMessage;

use super::Worker;
use crate::engine::book;
use crate::engine::state::{Body, NoticeKind, Pixels};

/// What a message shows, from its content and stored payload (`None` for voice, a recalled
/// message, or a payload that does not read).
pub(crate) fn body_of(content: &Content, payload: &[u8]) -> Option<Body> {
    match parts(content, payload).ok()? {
        Parts::Text(text) => Some(Body::Text(text.to_string())),
        Parts::Picture { full, thumb } => Some(Body::Picture {
            thumb: Arc::new(decode(thumb)?),
            full: Arc::new(full.to_vec()),
        }),
        Parts::Doodle { strokes, .. } => Some(Body::Doodle(Arc::new(Doodle::parse(strokes).ok()?))),
        Parts::Voice(_) | Parts::Recalled => None,
    }
}

/// What a notification says of a message.
fn summary(body: &Body) -> String {
    match body {
        Body::Text(t) => t.chars().take(200).collect(),
        Body::Picture { .. } => "sent a picture".to_string(),
        Body::Doodle(_) => "sent a doodle".to_string(),
    }
}

/// Decodes a small picture (a thumbnail) to RGBA.
fn decode(bytes: &[u8]) -> Option<Pixels> {
    let img = image::load_from_memory(bytes).ok()?.to_rgba8();
    Some(Pixels {
        size: [img.width() as usize, img.height() as usize],
        rgba: img.into_raw(),
    })
}

/// A thumbnail of a picture about to be sent, made here while the relay makes its own.
fn local_thumb(prepared: &[u8]) -> Option<(Pixels, u32, u32, PictureFormat)> {
    let img = image::load_from_memory(prepared).ok()?;
    let (w, h) = (img.width(), img.height());
    let format = if image::guess_format(prepared).ok() == Some(image::ImageFormat::Png) {
        PictureFormat::Png
    } else {
        PictureFormat::Jpeg
    };
    let small = img
        .thumbnail(
            walkie_proto::message::THUMB_SIDE,
            walkie_proto::message::THUMB_SIDE,
        )
        .to_rgba8();
    Some((
        Pixels {
            size: [small.width() as usize, small.height() as usize],
            rgba: small.into_raw(),
        },
        w,
        h,
        format,
    ))
}

impl Worker {
    /// A message the relay pushed (or the news that one was recalled).
    pub(super) async fn got_message(&mut self, m: ReceivedMessage, client: Option<&Client>) {
        let me = self.snap.me().unwrap_or_default().to_string();
        let id = m.header.id;
        if m.header.content == Content::Recalled {
            book::recall(&mut self.snap.conversations, id);
            self.link.set_unplayed(id, false);
        } else {
            let meta = m.meta();
            let known = book::find(&self.snap.conversations, id).is_some();
            let (target, _) = book::add_clip(&mut self.snap.conversations, &me, &meta, false);
            let body = body_of(&m.header.content, &m.payload);
            let summary = body.as_ref().map(summary);
            if let Some(body) = body {
                book::set_body(&mut self.snap.conversations, id, body);
            }
            if !known && m.header.from != me {
                if self.snap.selected.as_ref() == Some(&target) && self.focused {
                    self.mark_read(id, client).await;
                } else {
                    self.link.set_unplayed(id, true);
                    self.notify(
                        &target,
                        &m.header.from,
                        summary.unwrap_or_else(|| "sent a message".into()),
                    );
                }
            }
        }
        if let Some(c) = client
            && let Err(e) = c.ack(id).await
        {
            warn!("cannot acknowledge message {id}: {e}");
        }
    }

    /// Marks a message read here and tells its sender (a read receipt).
    pub(super) async fn mark_read(&mut self, id: ClipId, client: Option<&Client>) {
        if book::mark_played(&mut self.snap.conversations, id) || self.link.is_unplayed(&id) {
            self.link.set_unplayed(id, false);
            if let Some(c) = client {
                let _ = c.played(id).await;
            }
        }
    }

    /// Every unread message of the conversation on screen is read now (clips are read by
    /// playing them).
    pub(super) async fn read_messages_on_screen(&mut self, client: Option<&Client>) {
        if !self.focused {
            return;
        }
        let Some(conv) = self.snap.selected_conversation() else {
            return;
        };
        let unread: Vec<ClipId> = conv
            .clips
            .iter()
            .filter(|c| !c.mine && !c.played && !c.content.is_voice() && c.body.is_some())
            .map(|c| c.id)
            .collect();
        for id in unread {
            self.mark_read(id, client).await;
        }
    }

    /// Tells the desktop about a message that arrived while the window is not focused,
    /// unless its conversation is muted.
    fn notify(&mut self, target: &Target, from: &str, text: String) {
        if self.focused || self.snap.settings.muted.contains(&target.to_string()) {
            return;
        }
        let who = self
            .snap
            .people
            .persons
            .get(from)
            .and_then(|p| p.display.clone())
            .unwrap_or_else(|| from.to_string());
        let title = match target {
            walkie_proto::clip::Target::Channel(c) => format!("{who} in #{c}"),
            walkie_proto::clip::Target::User(_) => who,
        };
        self.snap.last_notification = Some((target.clone(), format!("{title}: {text}")));
        crate::engine::notify::show(&title, &text);
    }

    /// Queues a message in the outbox, shows it, and sends it if connected.
    pub(super) async fn send_message(
        &mut self,
        client: Option<&Client>,
        to: Target,
        kind: Kind,
        payload: Vec<u8>,
        body: Body,
        content: Content,
    ) {
        let Some(outbox) = self.link.outbox().cloned() else {
            self.notice(
                NoticeKind::Error,
                "Not connected: the message cannot be sent now.",
            );
            return;
        };
        let header = match outbox.add_message(to.clone(), kind, &payload) {
            Ok(h) => h,
            Err(e) => {
                self.notice(NoticeKind::Error, format!("The message was not sent: {e}"));
                return;
            }
        };
        let me = self.snap.me().unwrap_or_default().to_string();
        let meta = |seq| ClipMeta {
            id: header.id,
            from: me.clone(),
            to: to.clone(),
            started_at_ms: now_ms(),
            duration_ms: 0,
            packets: 0,
            bytes: payload.len() as u64,
            codec: CodecParams::NONE,
            seq,
            content,
        };
        book::add_clip(&mut self.snap.conversations, &me, &meta(0), true);
        book::set_body(&mut self.snap.conversations, header.id, body);
        book::set_queued(&mut self.snap.conversations, header.id, true);
        let Some(client) = client else {
            self.notice(
                NoticeKind::Info,
                "Not sent yet: it waits in the outbox and goes when the relay is back.",
            );
            return;
        };
        match client.send_message(&header, &payload).await {
            Ok((seq, _)) => {
                let _ = outbox.remove(&header.id);
                book::add_clip(&mut self.snap.conversations, &me, &meta(seq), true);
            }
            Err(e) if e.is_transient() => {
                self.notice(NoticeKind::Info, format!("Not sent yet ({e}): it waits in the outbox and goes when the relay is back."));
            }
            Err(e) => {
                let _ = outbox.reject(&header.id, &e.to_string());
                book::remove(&mut self.snap.conversations, header.id);
                self.notice(
                    NoticeKind::Error,
                    format!("The message was not sent: {}", refusal_text(&e)),
                );
            }
        }
    }

    /// Sends a text typed in the conversation.
    pub(super) async fn send_text(&mut self, client: Option<&Client>, to: Target, text: String) {
        let text = text.replace("\r\n", "\n");
        let chars = match walkie_proto::message::check_text(text.as_bytes()) {
            Ok(chars) => chars,
            Err(r) => {
                self.notice(
                    NoticeKind::Error,
                    format!("The text was not sent: {}", r.message),
                );
                return;
            }
        };
        let body = Body::Text(text.clone());
        self.send_message(
            client,
            to,
            Kind::Text,
            text.into_bytes(),
            body,
            Content::Text { chars },
        )
        .await;
    }

    /// Sends a picture file: checked, scaled and stripped of its metadata first.
    pub(super) async fn send_picture(
        &mut self,
        client: Option<&Client>,
        to: Target,
        path: std::path::PathBuf,
    ) {
        let shown = path.display().to_string();
        let prepared =
            tokio::task::spawn_blocking(move || walkie_client::picture::prepare_file(&path))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.notice(NoticeKind::Error, format!("{shown}: {e}"));
                return;
            }
        };
        let Some((thumb, width, height, format)) = local_thumb(&prepared) else {
            self.notice(
                NoticeKind::Error,
                format!("{shown}: the picture cannot be read"),
            );
            return;
        };
        let body = Body::Picture {
            thumb: Arc::new(thumb),
            full: Arc::new(prepared.clone()),
        };
        let content = Content::Picture {
            width,
            height,
            format,
            thumb: 0,
        };
        self.send_message(client, to, Kind::Picture, prepared, body, content)
            .await;
    }

    /// Sends a doodle drawn in the app.
    pub(super) async fn send_doodle(
        &mut self,
        client: Option<&Client>,
        to: Target,
        doodle: Doodle,
    ) {
        if let Err(e) = doodle.check() {
            self.notice(NoticeKind::Error, format!("The doodle was not sent: {e}"));
            return;
        }
        let content = Content::Doodle {
            width: doodle.width,
            height: doodle.height,
            strokes: doodle.strokes.len() as u32,
            points: doodle.points() as u32,
            png: 0,
        };
        let json = doodle.to_json();
        self.send_message(
            client,
            to,
            Kind::Doodle,
            json,
            Body::Doodle(Arc::new(doodle)),
            content,
        )
        .await;
    }

    /// Recalls one of your messages or clips.
    pub(super) async fn recall(&mut self, client: Option<&Client>, id: ClipId) {
        let Some(client) = client else {
            self.notice(
                NoticeKind::Error,
                "Not connected: a message can be recalled once the relay is back.",
            );
            return;
        };
        match client.recall(id).await {
            Ok(()) => {
                book::recall(&mut self.snap.conversations, id);
                self.notice(
                    NoticeKind::Info,
                    "Recalled: it is deleted from the relay and from everyone's conversation.",
                );
            }
            Err(e) => self.notice(
                NoticeKind::Error,
                format!("Not recalled: {}", refusal_text(&e)),
            ),
        }
    }

    /// The payload of a message listed from history arrived.
    pub(super) fn got_message_payload(&mut self, id: ClipId, content: Content, payload: Vec<u8>) {
        if let Some(body) = body_of(&content, &payload) {
            book::set_body(&mut self.snap.conversations, id, body);
        }
    }
}

/// A refusal in the relay's words.
fn refusal_text(e: &ClientError) -> String {
    match e {
        ClientError::Refused(m) => m.message.clone(),
        other => other.to_string(),
    }
}
