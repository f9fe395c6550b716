//! One client connection: handshake, hello and authentication, the control-stream request
//! loop, and the accept loop for clip uploads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info, warn};

use super::registry::Session;
use super::{Shared, auth, deliver, upload};
use crate::clip::{Target, validate_name};
use crate::net::{read_frame, write_frame};
use crate::proto::{ClientMsg, ErrorCode, ErrorMsg, MAX_CONTROL_FRAME, MAX_HELLO_FIELD, MAX_HISTORY_PAGE, ServerMsg};

/// Sends replies on a session's control stream from any task.
pub(crate) type ControlTx = mpsc::Sender<ServerMsg>;

fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error(ErrorMsg { req, clip: None, code, message: message.into() })
}

/// Longest a TLS handshake may take once it has a slot.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Counts an authenticated-or-authenticating connection; uncounts it when dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming, handshake_slot: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    // A handshake slot is precious in a storm: a peer that stalls (or gave up) loses it
    // after HANDSHAKE_TIMEOUT instead of holding it for the whole idle timeout.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%remote, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%remote, "handshake took longer than {HANDSHAKE_TIMEOUT:?}; dropped");
            return;
        }
    };
    drop(handshake_slot);
    let _admitted = Admitted(&shared.connections);
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.config.max_connections {
        let busy = shared.busy();
        debug!(%remote, "refused: {}", busy.message);
        conn.close(busy.code.quic_code().into(), busy.message.as_bytes());
        return;
    }
    let accepted = tokio::time::timeout(shared.config.hello_timeout, conn.accept_bi()).await;
    let Ok(Ok((mut send, mut recv))) = accepted else {
        conn.close(ErrorCode::Timeout.quic_code().into(), b"no control stream");
        return;
    };
    let hello = tokio::time::timeout(shared.config.hello_timeout, read_frame::<ClientMsg>(&mut recv, MAX_CONTROL_FRAME)).await;
    let user = match hello {
        Ok(Ok(Some(ClientMsg::Hello { user, token, client }))) => match authenticate(&shared, &user, &token).await {
            Ok(()) => {
                info!(%remote, %user, client = %client.chars().take(MAX_HELLO_FIELD).collect::<String>(), "session opened");
                user
            }
            Err(msg) => {
                warn!(%remote, user = %user.escape_debug(), "refused: {}", msg);
                refuse(&conn, &mut send, ErrorCode::Unauthorized, &msg).await;
                return;
            }
        },
        Ok(Ok(Some(_))) => return refuse(&conn, &mut send, ErrorCode::BadRequest, "the first message must be a hello").await,
        Ok(Err(e)) => return refuse(&conn, &mut send, ErrorCode::BadRequest, &format!("bad hello: {e}")).await,
        Ok(Ok(None)) | Err(_) => return refuse(&conn, &mut send, ErrorCode::Timeout, "no hello in time").await,
    };
    let welcome = ServerMsg::Welcome {
        user: user.clone(),
        relay_version: env!("CARGO_PKG_VERSION").into(),
        max_clip_ms: shared.config.max_clip_ms,
    };
    if write_frame(&mut send, &welcome, MAX_CONTROL_FRAME).await.is_err() {
        return;
    }
    let (tx, rx) = mpsc::channel::<ServerMsg>(256);
    let (channels, peers) = memberships(&shared, &user).await;
    let (session, first) = shared.registry.register(&user, conn.clone(), tx.clone());
    let _ = tx.send(ServerMsg::Channels { channels }).await;
    let _ = tx.send(ServerMsg::Online { users: shared.registry.online_among(&peers) }).await;
    if first {
        shared.tell_everywhere(&peers, &ServerMsg::Presence { user: user.clone(), online: true });
    }
    run_session(&shared, &session, send, recv, tx, rx).await;
    if shared.registry.unregister(&session) {
        let peers = co_members(&shared, &user).await;
        shared.tell_everywhere(&peers, &ServerMsg::Presence { user: user.clone(), online: false });
    }
    info!(%user, "session closed");
}

/// Everyone who shares a channel with `user`, without `user`.
async fn co_members(shared: &Shared, user: &str) -> Vec<String> {
    memberships(shared, user).await.1
}

/// The channels `user` is a member of, and everyone they share one with (both sorted).
async fn memberships(shared: &Shared, user: &str) -> (Vec<String>, Vec<String>) {
    let me = user.to_string();
    let channels = shared.store(|s| s.channels()).await.unwrap_or_default();
    let mine: Vec<_> = channels.into_iter().filter(|c| c.members.contains(&me)).collect();
    let mut names: Vec<String> = mine.iter().map(|c| c.name.clone()).collect();
    names.sort();
    let mut peers: Vec<String> = mine.into_iter().flat_map(|c| c.members).filter(|m| *m != me).collect();
    peers.sort();
    peers.dedup();
    (names, peers)
}

async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, code: ErrorCode, message: &str) {
    let _ = write_frame(send, &error(None, code, message), MAX_CONTROL_FRAME).await;
    let _ = send.finish();
    // Give the error a moment to reach the client before the connection goes.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), send.stopped()).await;
    conn.close(code.quic_code().into(), message.as_bytes());
}

async fn authenticate(shared: &Shared, user: &str, token: &str) -> Result<(), String> {
    const REFUSED: &str = "unknown user or wrong token";
    if validate_name(user).is_err() || token.len() > MAX_HELLO_FIELD {
        return Err(REFUSED.into());
    }
    let name = user.to_string();
    match shared.store(move |s| s.token_hash(&name)).await {
        Ok(Some(hash)) if auth::token_matches(token, &hash) => Ok(()),
        Ok(_) => Err(REFUSED.into()),
        Err(e) => Err(format!("the relay cannot check tokens now: {e}")),
    }
}

async fn run_session(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tx: ControlTx,
    mut rx: mpsc::Receiver<ServerMsg>,
) {
    let writer = async move {
        while let Some(msg) = rx.recv().await {
            if write_frame(&mut send, &msg, MAX_CONTROL_FRAME).await.is_err() {
                break;
            }
        }
    };
    let pump = deliver::pump(shared.clone(), session.clone());
    let uploads = accept_uploads(shared.clone(), session.clone(), tx.clone());
    let control = control_loop(shared, session, &mut recv, tx);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = writer => {}
        _ = pump => {}
        _ = uploads => {}
        _ = control => {}
        _ = session.conn.closed() => {}
        _ = shutdown.changed() => {}
    }
}

async fn accept_uploads(shared: Arc<Shared>, session: Arc<Session>, tx: ControlTx) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            stream = session.conn.accept_uni() => {
                let Ok(recv) = stream else { break };
                tasks.spawn(upload::handle(shared.clone(), session.clone(), recv, tx.clone()));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // The connection is gone; let uploads that already completed their end marker commit.
    while tasks.join_next().await.is_some() {}
}

async fn control_loop(shared: &Arc<Shared>, session: &Arc<Session>, recv: &mut quinn::RecvStream, tx: ControlTx) {
    loop {
        let msg = match read_frame::<ClientMsg>(recv, MAX_CONTROL_FRAME).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(error(None, ErrorCode::BadRequest, format!("bad control message: {e}"))).await;
                session.conn.close(ErrorCode::BadRequest.quic_code().into(), b"bad control message");
                return;
            }
        };
        let reply = match msg {
            ClientMsg::Hello { .. } => Some(error(None, ErrorCode::BadRequest, "already authenticated")),
            ClientMsg::Ping { nonce } => Some(ServerMsg::Pong { nonce }),
            ClientMsg::Ack { id } => {
                let user = session.user.clone();
                match shared.store(move |s| s.ack(&user, &id)).await {
                    Ok(()) => None,
                    Err(e) => Some(ServerMsg::Error(e.to_wire(None, Some(id)))),
                }
            }
            ClientMsg::Played { id } => {
                receipt(shared, &session.user, id).await;
                None
            }
            ClientMsg::History { req, target, limit, before_seq } => Some(history(shared, &session.user, req, target, limit, before_seq).await),
            ClientMsg::Fetch { req, id } => {
                // Fetches stream a file; run them beside the control loop.
                tokio::spawn(deliver::fetch(shared.clone(), session.clone(), req, id, tx.clone()));
                None
            }
        };
        if let Some(reply) = reply
            && tx.send(reply).await.is_err()
        {
            return;
        }
    }
}

/// Tells the sender of clip `id` that `user` played it, if `user` may read it.
async fn receipt(shared: &Shared, user: &str, id: crate::clip::ClipId) {
    let Ok(Some(meta)) = shared.store(move |s| s.clip(&id)).await else { return };
    if meta.from != user && deliver::may_read(shared, user, &meta).await {
        shared.tell_everywhere(&[meta.from.clone()], &ServerMsg::PlayedBy { id, user: user.to_string() });
    }
}

/// Whether `user` may read or write `target`: members for a channel, anyone for an existing user.
pub(crate) async fn may_access(shared: &Shared, user: &str, target: &Target) -> Result<(), (ErrorCode, String)> {
    let t = target.clone();
    let result = match target {
        Target::Channel(name) => {
            let name = name.clone();
            shared.store(move |s| s.members(&name)).await.map(|m| m.map(|m| m.iter().any(|u| u == user)))
        }
        Target::User(name) => {
            let name = name.clone();
            shared.store(move |s| s.token_hash(&name)).await.map(|h| h.map(|_| true))
        }
    };
    match result {
        Ok(Some(true)) => Ok(()),
        // A non-member learns no more than that it may not use the channel.
        Ok(Some(false)) => Err((ErrorCode::Forbidden, format!("you are not a member of channel {t}"))),
        Ok(None) if matches!(t, Target::Channel(_)) => Err((ErrorCode::Forbidden, format!("you are not a member of channel {t}"))),
        Ok(None) => Err((ErrorCode::NotFound, format!("there is no user {t}"))),
        Err(e) => Err((ErrorCode::Storage, e.to_string())),
    }
}

async fn history(shared: &Shared, user: &str, req: u64, target: Option<Target>, limit: u32, before: Option<u64>) -> ServerMsg {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE) as usize;
    if let Some(t) = &target
        && let Err((code, message)) = may_access(shared, user, t).await
    {
        return error(Some(req), code, message);
    }
    let viewer = user.to_string();
    let result = shared
        .store(move |s| match &target {
            Some(t) => s.history(&viewer, t, limit, before),
            None => {
                let all = s.readable(&viewer)?;
                let eligible: Vec<_> = all.into_iter().filter(|m| before.is_none_or(|b| m.seq < b)).collect();
                let skip = eligible.len().saturating_sub(limit);
                Ok(eligible.into_iter().skip(skip).collect())
            }
        })
        .await;
    match result {
        Ok(clips) => ServerMsg::History { req, clips },
        Err(e) => ServerMsg::Error(e.to_wire(Some(req), None)),
    }
}
