//! The requests a session makes on its control stream after the hello: acknowledgements,
//! "played" receipts, history pages, fetches (their files stream beside the loop), pings, and
//! people requests (`people_requests.rs`).
//! Requests are answered in the order they arrive, so a reply tells the client that every
//! earlier message (an ack, a receipt) has been applied.

use std::sync::Arc;

use tracing::Instrument;

use walkie_net::read_frame;
use walkie_proto::clip::{ClipId, Target};
use walkie_proto::wire::{
    ClientMsg, ErrorCode, ErrorMsg, MAX_CLIENT_FRAME, MAX_HISTORY_PAGE, ServerMsg,
};

use crate::access::{may_access, may_read};
use crate::avatar;
use crate::deliver;
use crate::people_requests::{self, PeopleRequest};
use crate::registry::{ControlTx, Session};
use crate::shared::Shared;

fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error(ErrorMsg {
        req,
        clip: None,
        code,
        message: message.into(),
    })
}

/// Reads and answers control messages until the stream ends or breaks.
pub(crate) async fn control_loop(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    recv: &mut quinn::RecvStream,
    tx: ControlTx,
) {
    let fetches = Arc::new(tokio::sync::Semaphore::new(deliver::MAX_FETCHES));
    let mut avatar = AvatarUpload::default();
    loop {
        let msg = match read_frame::<ClientMsg>(recv, MAX_CLIENT_FRAME).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                let _ = tx
                    .send(
                        error(
                            None,
                            ErrorCode::BadRequest,
                            format!("bad control message: {e}"),
                        )
                        .into(),
                    )
                    .await;
                session.close(&ErrorMsg {
                    req: None,
                    clip: None,
                    code: ErrorCode::BadRequest,
                    message: "bad control message".into(),
                });
                return;
            }
        };
        let (kind, req) = describe(&msg);
        let started = std::time::Instant::now();
        let reply = match msg {
            ClientMsg::Hello { .. } | ClientMsg::Join { .. } => {
                Some(error(None, ErrorCode::BadRequest, "already authenticated"))
            }
            ClientMsg::SetProfile {
                req,
                display,
                direct_from,
                suggest,
            } => Some(
                people(
                    shared,
                    session,
                    req,
                    PeopleRequest::SetProfile {
                        display,
                        direct_from,
                        suggest,
                    },
                )
                .await,
            ),
            ClientMsg::Suggest { req } => {
                Some(people(shared, session, req, PeopleRequest::Suggest).await)
            }
            ClientMsg::Nearby { req, cell } => {
                Some(people(shared, session, req, PeopleRequest::Nearby { cell }).await)
            }
            ClientMsg::Profiles { req, users } => {
                Some(people(shared, session, req, PeopleRequest::Profiles { users }).await)
            }
            ClientMsg::Contact { req, user, action } => Some(
                people(
                    shared,
                    session,
                    req,
                    PeopleRequest::Contact { user, action },
                )
                .await,
            ),
            ClientMsg::Contacts { req } => {
                Some(people(shared, session, req, PeopleRequest::Contacts).await)
            }
            ClientMsg::Group {
                req,
                channel,
                action,
            } => Some(
                people(
                    shared,
                    session,
                    req,
                    PeopleRequest::Group { channel, action },
                )
                .await,
            ),
            ClientMsg::Groups { req } => {
                Some(people(shared, session, req, PeopleRequest::Groups).await)
            }
            ClientMsg::LinkDevice { req } => {
                Some(people(shared, session, req, PeopleRequest::LinkDevice).await)
            }
            ClientMsg::Devices { req } => {
                Some(people(shared, session, req, PeopleRequest::Devices).await)
            }
            ClientMsg::RemoveDevice { req, id } => {
                Some(people(shared, session, req, PeopleRequest::RemoveDevice { id }).await)
            }
            ClientMsg::Avatar { req, user, small } => {
                Some(people(shared, session, req, PeopleRequest::Avatar { user, small }).await)
            }
            ClientMsg::SetAvatar {
                req,
                offset,
                total,
                bytes,
            } => match avatar.part(offset, total, bytes) {
                Ok(None) => None,
                Ok(Some(png)) => {
                    Some(people(shared, session, req, PeopleRequest::SetAvatar { png }).await)
                }
                Err(message) => Some(error(Some(req), ErrorCode::BadRequest, message)),
            },
            ClientMsg::Recall { req, id } => {
                Some(crate::recall::recall(shared, session, req, id).await)
            }
            ClientMsg::Ping { nonce } => Some(ServerMsg::Pong { nonce }),
            ClientMsg::Ack { id } => {
                let inbox = session.inbox.clone();
                match shared.store(move |s| s.ack(&inbox, &id)).await {
                    Ok(()) => None,
                    Err(e) => Some(ServerMsg::Error(e.to_wire(None, Some(id)))),
                }
            }
            ClientMsg::Played { id } => {
                receipt(shared, &session.user, id).await;
                None
            }
            ClientMsg::History {
                req,
                target,
                limit,
                before_seq,
            } => Some(history(shared, &session.user, req, target, limit, before_seq).await),
            ClientMsg::Fetch { req, id } => {
                // Fetches stream a file beside the control loop, a few at a time: the next
                // one waits for a slot, so a client that asks for many and reads none holds
                // at most MAX_FETCHES files' worth of chunks, never a task per request.
                let Ok(slot) = fetches.clone().acquire_owned().await else {
                    return;
                };
                let (shared, session, tx) = (shared.clone(), session.clone(), tx.clone());
                tokio::spawn(
                    async move {
                        deliver::fetch(shared, session, req, id, tx).await;
                        drop(slot);
                    }
                    .in_current_span(),
                );
                None
            }
        };
        let outcome = match &reply {
            Some(ServerMsg::Error(e)) => e.code.name(),
            _ => "ok",
        };
        shared.metrics.request(kind);
        let micros = started.elapsed().as_micros() as u64;
        // Pings come every few seconds from every client: only on request.
        if kind == "ping" {
            tracing::debug!(request = kind, outcome, micros, "request");
        } else {
            tracing::info!(request = kind, req, outcome, micros, "request");
        }
        if let Some(reply) = reply
            && tx.send(reply.into()).await.is_err()
        {
            return;
        }
    }
}

/// A control message's kind, as logs and metrics name it, and its request id (0 for the
/// messages that carry none). Never any of its content: that is the user's.
fn describe(msg: &ClientMsg) -> (&'static str, u64) {
    match msg {
        ClientMsg::Hello { .. } => ("hello", 0),
        ClientMsg::Join { .. } => ("join", 0),
        ClientMsg::History { req, .. } => ("history", *req),
        ClientMsg::Fetch { req, .. } => ("fetch", *req),
        ClientMsg::Ack { .. } => ("ack", 0),
        ClientMsg::Ping { .. } => ("ping", 0),
        ClientMsg::Played { .. } => ("played", 0),
        ClientMsg::SetProfile { req, .. } => ("set-profile", *req),
        ClientMsg::Profiles { req, .. } => ("profiles", *req),
        ClientMsg::Contact { req, .. } => ("contact", *req),
        ClientMsg::Contacts { req, .. } => ("contacts", *req),
        ClientMsg::Group { req, .. } => ("group", *req),
        ClientMsg::Groups { req, .. } => ("groups", *req),
        ClientMsg::LinkDevice { req, .. } => ("link-device", *req),
        ClientMsg::Devices { req, .. } => ("devices", *req),
        ClientMsg::RemoveDevice { req, .. } => ("remove-device", *req),
        ClientMsg::SetAvatar { req, .. } => ("set-avatar", *req),
        ClientMsg::Avatar { req, .. } => ("avatar", *req),
        ClientMsg::Suggest { req, .. } => ("suggest", *req),
        ClientMsg::Nearby { req, .. } => ("nearby", *req),
        ClientMsg::Recall { req, .. } => ("recall", *req),
    }
}

/// An avatar arriving in parts on the control stream: at most [`avatar::MAX_UPLOAD`]
/// bytes, allocated once the first part says how many, and only in order.
#[derive(Default)]
struct AvatarUpload {
    buf: Option<(Vec<u8>, usize)>,
}

impl AvatarUpload {
    /// Takes one part: the whole PNG once complete (`Some(None)`: remove the avatar).
    fn part(
        &mut self,
        offset: u32,
        total: u32,
        bytes: Vec<u8>,
    ) -> Result<Option<Option<Vec<u8>>>, String> {
        let (offset, total) = (offset as usize, total as usize);
        if total == 0 {
            self.buf = None;
            return Ok(Some(None));
        }
        if total > avatar::MAX_UPLOAD {
            self.buf = None;
            return Err(format!(
                "an avatar upload is at most {} bytes, not {total}",
                avatar::MAX_UPLOAD
            ));
        }
        if offset == 0 {
            self.buf = Some((Vec::with_capacity(total), total));
        }
        let Some((buf, want)) = &mut self.buf else {
            return Err("avatar parts out of order".into());
        };
        if offset != buf.len() || *want != total || buf.len() + bytes.len() > total {
            self.buf = None;
            return Err("avatar parts out of order".into());
        }
        buf.extend_from_slice(&bytes);
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.take().map(|(b, _)| b)))
    }
}

async fn people(
    shared: &Arc<Shared>,
    session: &Session,
    req: u64,
    request: PeopleRequest,
) -> ServerMsg {
    people_requests::answer(shared, session, req, request).await
}

/// Tells the sender of clip `id` that `user` played it, if `user` may read it; and the
/// user's other devices, so that "played" follows the user (one that is offline learns it
/// when the clip reaches it, from the user's record of clips played lately).
async fn receipt(shared: &Shared, user: &str, id: ClipId) {
    let Ok(Some(meta)) = shared.store(move |s| s.clip(&id)).await else {
        return;
    };
    if meta.from != user && may_read(shared, user, &meta).await {
        let played = ServerMsg::PlayedBy {
            id,
            user: user.to_string(),
        };
        shared.tell_everywhere(&[meta.from.clone(), user.to_string()], &played);
        if shared
            .delivery_keys(&[user.to_string()])
            .await
            .is_ok_and(|keys| keys.len() > 1)
        {
            let (user, hex) = (user.to_string(), id.to_string());
            let _ = shared
                .store(move |s| Ok(crate::people::mark_played(s, &user, &hex)))
                .await;
        }
    }
}

/// A page of a conversation, or of everything `user` may read; both paged by the store.
async fn history(
    shared: &Shared,
    user: &str,
    req: u64,
    target: Option<Target>,
    limit: u32,
    before: Option<u64>,
) -> ServerMsg {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE) as usize;
    if let Some(t) = &target
        && let Err(refusal) = may_access(shared, user, t).await
    {
        return error(Some(req), refusal.code, refusal.message);
    }
    let viewer = user.to_string();
    let result = shared
        .store(move |s| match &target {
            Some(t) => s.history(&viewer, t, limit, before),
            None => s.readable(&viewer, limit, before),
        })
        .await;
    match result {
        Ok(clips) => ServerMsg::History { req, clips },
        Err(e) => ServerMsg::Error(e.to_wire(Some(req), None)),
    }
}
