//! One client connection: the TLS handshake (within a time limit, holding a handshake slot),
//! the connection count, the hello and its authentication (or a sign-up instead of it), the welcome and first messages
//! (channels, who is online; [`crate::presence`] tells the others), and the session's tasks: the control-stream writer,
//! the request loop, the delivery pump and the accept loop for clip uploads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, debug, info, warn};
use walkie_net::{read_frame, write_frame};
use walkie_proto::clip::validate_user_name;
use walkie_proto::logsafe::escape;
use walkie_proto::wire::{
    ClientMsg, ErrorCode, ErrorMsg, MAX_CONTROL_FRAME, MAX_HELLO_FIELD, MAX_HELLO_FRAME, ServerMsg,
};

use crate::metrics::Metrics;
use crate::people::{self, PeopleError};
use crate::registry::{ControlTx, Outgoing, Session, close};
use crate::server::{InHandshake, PreAuth};
use crate::shared::Shared;
use crate::{auth, deliver, presence, requests, upload};

/// Longest a TLS handshake may take once it has a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts an authenticated-or-authenticating connection; uncounts it when dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refusal(code: ErrorCode, message: &str) -> ErrorMsg {
    ErrorMsg {
        req: None,
        clip: None,
        code,
        message: message.to_string(),
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    handshake_slot: OwnedSemaphorePermit,
    in_handshake: InHandshake,
    pre_auth: PreAuth,
) {
    let remote = incoming.remote_address();
    // A handshake slot is precious in a storm: a peer that stalls (or gave up) loses it
    // after HANDSHAKE_TIMEOUT instead of holding it for the whole idle timeout.
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
    drop((handshake_slot, in_handshake));
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.metrics.handshake("failed");
            debug!(%remote, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            shared.metrics.handshake("timeout");
            debug!(%remote, "handshake took longer than {HANDSHAKE_TIMEOUT:?}; dropped");
            return;
        }
    };
    shared.metrics.handshake("ok");
    let accepted = tokio::time::timeout(shared.config.hello_timeout, conn.accept_bi()).await;
    let Ok(Ok((mut send, mut recv))) = accepted else {
        shared.metrics.refused("no-control-stream");
        close(&conn, &refusal(ErrorCode::Timeout, "no control stream"));
        return;
    };
    let hello = tokio::time::timeout(
        shared.config.hello_timeout,
        read_frame::<ClientMsg>(&mut recv, MAX_HELLO_FRAME),
    )
    .await;
    let (user, ((credential, device), client)) = match hello {
        Ok(Ok(Some(ClientMsg::Hello {
            user,
            token,
            client,
        }))) => match authenticate(&shared, &user, &token).await {
            Ok(found) => {
                let client: String = client.chars().take(MAX_HELLO_FIELD).collect();
                (user, (found, client))
            }
            Err(msg) => {
                warn!(%remote, user = %escape(&user), "refused: {}", msg);
                refuse(
                    &shared.metrics,
                    &conn,
                    &mut send,
                    ErrorCode::Unauthorized,
                    &msg,
                )
                .await;
                return;
            }
        },
        Ok(Ok(Some(ClientMsg::Join {
            code,
            name,
            display,
            client,
        }))) => {
            return join(
                &shared,
                &conn,
                &mut send,
                remote,
                JoinAsk {
                    code,
                    name,
                    display,
                    client,
                },
            )
            .await;
        }
        Ok(Ok(Some(_))) => {
            return refuse(
                &shared.metrics,
                &conn,
                &mut send,
                ErrorCode::BadRequest,
                "the first message must be a hello",
            )
            .await;
        }
        Ok(Err(e)) => {
            return refuse(
                &shared.metrics,
                &conn,
                &mut send,
                ErrorCode::BadRequest,
                &format!("bad hello: {e}"),
            )
            .await;
        }
        Ok(Ok(None)) | Err(_) => {
            return refuse(
                &shared.metrics,
                &conn,
                &mut send,
                ErrorCode::Timeout,
                "no hello in time",
            )
            .await;
        }
    };
    // Authenticated: the attempt's pre-authentication slot goes, a connection slot comes.
    drop(pre_auth);
    let _admitted = Admitted(&shared.connections);
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.config.max_connections {
        let busy = shared.busy();
        debug!(%remote, %user, "refused: {}", busy.message);
        refuse(&shared.metrics, &conn, &mut send, busy.code, &busy.message).await;
        return;
    }
    let open = shared.registry.sessions_of(&user).len();
    if open >= shared.config.max_sessions_per_user {
        let busy = shared.busy();
        let message = format!(
            "{}: {user} has {open} sessions open, the most this relay allows",
            busy.message
        );
        debug!(%remote, %user, "refused: {message}");
        refuse(&shared.metrics, &conn, &mut send, busy.code, &message).await;
        return;
    }
    walkie_net::open_session(&conn, shared.config.max_streams_per_conn);
    let welcome = ServerMsg::Welcome {
        user: user.clone(),
        relay_version: env!("CARGO_PKG_VERSION").into(),
        max_clip_ms: shared.config.max_clip_ms,
    };
    if write_frame(&mut send, &welcome, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return;
    }
    let (tx, rx) = mpsc::channel::<Outgoing>(256);
    let watch = presence::watch_of(&shared, &user).await;
    let session = shared
        .registry
        .register(&user, credential, device, conn.clone(), tx.clone());
    shared.metrics.sessions_opened.inc();
    // Every line of the session, its requests' included, names the session and its user.
    let span = tracing::info_span!("session", session = session.id, user = %user);
    async {
        info!(%remote, device = session.device.as_deref().unwrap_or(people::MAIN_DEVICE), client = %escape(&client), "session opened");
        let opened = std::time::Instant::now();
        let (here, first) = presence::Here::arrive(&shared, &user, watch);
        for msg in first {
            let _ = tx.send(msg.into()).await;
        }
        run_session(&shared, &session, send, recv, tx, rx).await;
        shared.registry.unregister(&session);
        drop(here);
        info!(secs = opened.elapsed().as_secs(), "session closed");
    }
    .instrument(span)
    .await
}

/// Refuses a connection before its session: the error on the control stream, then a close
/// that carries it too.
async fn refuse(
    metrics: &Metrics,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: &str,
) {
    metrics.refused(code.name());
    let error = refusal(code, message);
    let _ = write_frame(send, &ServerMsg::Error(error.clone()), MAX_CONTROL_FRAME).await;
    let _ = send.finish();
    // Give the error a moment to reach the client before the connection goes.
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    close(conn, &error);
}

/// What a [`ClientMsg::Join`] asks for.
struct JoinAsk {
    code: Option<String>,
    name: String,
    display: Option<String>,
    client: String,
}

/// Makes an account instead of opening a session: every attempt from one address costs one
/// of its sign-ups per hour (so codes cannot be guessed at speed, and open sign-up cannot be
/// flooded), then [`people::join`] decides; the new token goes back on this connection, which
/// then closes.
async fn join(
    shared: &Shared,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    remote: std::net::SocketAddr,
    ask: JoinAsk,
) {
    let JoinAsk {
        code,
        name,
        display,
        client,
    } = ask;
    let client: String = client.chars().take(MAX_HELLO_FIELD).collect();
    let admitted = crate::lock(&shared.signup_limits).admit(remote.ip(), std::time::Instant::now());
    if let Err(wait) = admitted {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        warn!(%remote, name = %escape(&name), "sign-up refused: too many from this address");
        let message = format!(
            "too many sign-ups from your address; retry after {} minutes",
            ms / 60_000 + 1
        );
        return refuse(
            &shared.metrics,
            conn,
            send,
            ErrorCode::Busy { retry_after_ms: ms },
            &message,
        )
        .await;
    }
    if code.as_ref().is_some_and(|c| c.len() > MAX_HELLO_FIELD) || name.len() > MAX_HELLO_FIELD {
        return refuse(
            &shared.metrics,
            conn,
            send,
            ErrorCode::BadRequest,
            "bad sign-up",
        )
        .await;
    }
    let open = shared.config.open_signup;
    let (who, now) = (name.clone(), walkie_proto::clip::now_ms());
    let result = shared
        .store(move |s| {
            Ok(people::join(
                s,
                code.as_deref(),
                &who,
                display.as_deref(),
                open,
                now,
            ))
        })
        .await;
    match result {
        Ok(Ok(joined)) => {
            info!(%remote, user = %joined.user, device = ?joined.device, client = %escape(&client), channel = ?joined.channel, "user joined");
            if joined.device.is_some() {
                shared.forget_devices(&joined.user);
            }
            let msg = ServerMsg::Joined {
                user: joined.user,
                token: joined.token,
                channel: joined.channel,
            };
            if write_frame(send, &msg, MAX_CONTROL_FRAME).await.is_ok() {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            }
            close(
                conn,
                &refusal(ErrorCode::Cancelled, "joined; sign in with the new token"),
            );
        }
        Ok(Err(PeopleError::Refused(code, message))) => {
            warn!(%remote, name = %escape(&name), "sign-up refused: {message}");
            refuse(&shared.metrics, conn, send, code, &message).await;
        }
        Ok(Err(PeopleError::Store(e))) => {
            refuse(
                &shared.metrics,
                conn,
                send,
                ErrorCode::Storage,
                &format!("the relay cannot make accounts now: {e}"),
            )
            .await
        }
        Err(e) => {
            refuse(
                &shared.metrics,
                conn,
                send,
                ErrorCode::Storage,
                &format!("the relay cannot make accounts now: {e}"),
            )
            .await
        }
    }
}

/// Checks the hello's credentials: the user's own token, or one of their other devices'.
/// The token hash they matched (the session remembers it, and ends when that token is
/// replaced or the device removed) and the device, if not the first.
async fn authenticate(
    shared: &Shared,
    user: &str,
    token: &str,
) -> Result<(walkie_store::TokenHash, Option<String>), String> {
    const REFUSED: &str = "unknown user or wrong token";
    if validate_user_name(user).is_err() || token.len() > MAX_HELLO_FIELD {
        return Err(REFUSED.into());
    }
    let (name, token) = (user.to_string(), token.to_string());
    let found = shared
        .store(move |s| match s.token_hash(&name)? {
            Some(hash) if auth::token_matches(&token, &hash) => Ok(Some((hash, None))),
            Some(_) => {
                Ok(people::device_for_token(s, &name, &token)?.map(|(id, hash)| (hash, Some(id))))
            }
            None => Ok(None),
        })
        .await;
    match found {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(REFUSED.into()),
        Err(e) => Err(format!("the relay cannot check tokens now: {e}")),
    }
}

/// The session's tasks, until one of them ends or the relay shuts down.
async fn run_session(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tx: ControlTx,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let writer = async move {
        while let Some(out) = rx.recv().await {
            let written = match out {
                Outgoing::Msg(msg) => write_frame(&mut send, &msg, MAX_CONTROL_FRAME)
                    .await
                    .is_ok(),
                Outgoing::Frame(frame) => send.write_chunk(frame).await.is_ok(),
            };
            if !written {
                break;
            }
        }
    };
    let pump = deliver::pump(shared.clone(), session.clone());
    let uploads = accept_uploads(shared.clone(), session.clone(), tx.clone());
    let control = requests::control_loop(shared, session, &mut recv, tx);
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

/// Each clip stream the client opens is one upload, run beside the others.
async fn accept_uploads(shared: Arc<Shared>, session: Arc<Session>, tx: ControlTx) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            stream = session.conn.accept_uni() => {
                let Ok(recv) = stream else { break };
                // Its lines carry the session's span (session id and user) too.
                tasks.spawn(
                    upload::run(shared.clone(), session.clone(), recv, tx.clone()).in_current_span(),
                );
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // The connection is gone; let uploads that already completed their end marker commit.
    while tasks.join_next().await.is_some() {}
}
