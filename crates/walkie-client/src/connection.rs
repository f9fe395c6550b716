//! [`Client`]: one connection to a relay (or to the first that answers of several), with
//! pinned or CA-rooted trust, authentication, request routing (history, fetch, acks, receipts), pushed
//! events, and uploads.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use walkie_net::{self as net, NetError, Trust, read_frame, write_frame};
use walkie_proto::clip::{ClipHeader, ClipId, ClipMeta, Target};
use walkie_proto::message::MessageHeader;
use walkie_proto::wire::{
    ClientMsg, ErrorCode, FILE_CHUNK_BYTES, MAX_CONTROL_FRAME, MAX_STREAM_FRAME, ServerMsg,
    StreamFrame,
};

use crate::error::ClientError;
use crate::receive;
use crate::routing::{Event, Reply, SharedWaiters, lock};
use crate::upload::Upload;

/// How long a request may wait for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sent message waits for the relay's answer (a picture is decoded and encoded
/// again, one at a time, before it is stored).
const MESSAGE_ANSWER: Duration = Duration::from_secs(60);

/// How to reach and authenticate with a relay.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `HOST:PORT`, or several comma-separated for the relays of one cluster (which present
    /// the same certificate): [`Client::connect`] fails over between them.
    pub relay: String,
    /// User name.
    pub user: String,
    /// Secret token.
    pub token: String,
    /// How the relay's certificate is checked: a pinned fingerprint (a `Fingerprint` converts
    /// with `.into()`), or the system's roots and the relay's host name.
    pub trust: Trust,
}

/// A connected, authenticated client: one QUIC connection to a relay.
pub struct Client {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    control: mpsc::Sender<ClientMsg>,
    waiters: SharedWaiters,
    /// Behind a lock so that events can be read while an upload borrows the client.
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    next_req: AtomicU64,
    user: String,
    /// The relay's longest clip, from its welcome.
    max_clip_ms: u32,
    /// The loss on the way to the relay, measured across clips (for their repeats and FEC).
    loss: net::PathLoss,
    /// Whether live clips go as datagrams too.
    datagrams: Datagrams,
    writer: tokio::task::JoinHandle<()>,
}

async fn resolve(relay: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(relay)
        .await
        .map_err(|_| ClientError::Resolve(relay.to_string()))?
        .next()
        .ok_or_else(|| ClientError::Resolve(relay.to_string()))
}

/// How long one relay of several may take to answer before the next is tried.
const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay of each multi-relay list that answered last, so reconnects start there.
static LAST_GOOD: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
/// Lists remembered at most (a process uses one or two).
const LAST_GOOD_LISTS: usize = 16;

fn last_good(list: &str) -> usize {
    LAST_GOOD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(l, _)| l == list)
        .map_or(0, |(_, i)| *i)
}

fn remember_good(list: &str, index: usize) {
    let mut good = LAST_GOOD.lock().unwrap_or_else(|p| p.into_inner());
    good.retain(|(l, _)| l != list);
    if good.len() >= LAST_GOOD_LISTS {
        good.remove(0);
    }
    good.push((list.to_string(), index));
}

/// The unspecified address of `addr`'s family with port 0: where a client's socket binds.
fn any_port_like(addr: &SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = if addr.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, 0)
}

/// Whether a connection's live clips also travel as datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Datagrams {
    /// Live packets go as datagrams beside the stream both ways (the default).
    On,
    /// The reliable stream only, both ways, and no in-band FEC: what walkie did before
    /// datagrams, kept to measure what resilience buys and costs.
    Off,
}

/// A QUIC connection to the relay at `relay` whose certificate `trust` accepts (for the
/// relay's host name when it is not pinned), with its endpoint; waits at most `timeout` for
/// the handshake.
pub(crate) async fn dial(
    trust: &Trust,
    relay: &str,
    timeout: Duration,
    datagrams: Datagrams,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let addr = resolve(relay).await?;
    let endpoint = match datagrams {
        Datagrams::On => net::client_endpoint(trust.clone(), any_port_like(&addr))?,
        Datagrams::Off => net::stream_only_client_endpoint(trust.clone(), any_port_like(&addr))?,
    };
    let connecting = endpoint
        .connect(addr, trust.server_name(relay))
        .map_err(|e| NetError::Connect {
            addr: relay.to_string(),
            reason: e.to_string(),
        })?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| NetError::Connect {
            addr: relay.to_string(),
            reason: format!(
                "no answer within {} s (is the relay running?)",
                timeout.as_secs()
            ),
        })?
        .map_err(|e| unpinned_hint(trust, relay, net::handshake_error(relay, &e)))?;
    Ok((endpoint, conn))
}

/// An untrusted relay's error, with what an unpinned client expected of its certificate (a
/// private relay's self-signed one needs a pin).
fn unpinned_hint(trust: &Trust, relay: &str, e: NetError) -> NetError {
    match (trust, e) {
        (Trust::Roots { .. }, NetError::Untrusted { addr, reason }) => NetError::Untrusted {
            addr,
            reason: format!(
                "{reason} (with no pin, the relay's certificate must be issued for {} by a trusted CA; pin a self-signed one by its fingerprint)",
                net::relay_host(relay)
            ),
        },
        (_, e) => e,
    }
}

impl Client {
    /// Connects, says hello and waits for the welcome. With several relays in
    /// [`ClientConfig::relay`], tries them in turn, starting from the one that answered last,
    /// and moves on from one that does not answer, is busy or fails; a refusal for good (a
    /// wrong token, say) is returned at once.
    pub async fn connect(cfg: &ClientConfig) -> Result<Client, ClientError> {
        Self::connect_with(cfg, Datagrams::On).await
    }

    /// Like [`Client::connect`], for a connection whose live clips travel on the reliable
    /// streams only, both ways, with no in-band FEC: no datagrams are sent or taken. This is
    /// how walkie carried live audio before datagrams; benchmarks compare the two.
    pub async fn connect_stream_only(cfg: &ClientConfig) -> Result<Client, ClientError> {
        Self::connect_with(cfg, Datagrams::Off).await
    }

    async fn connect_with(cfg: &ClientConfig, datagrams: Datagrams) -> Result<Client, ClientError> {
        if !cfg.relay.contains(',') {
            return Self::connect_to(cfg, &cfg.relay, Duration::from_secs(10), datagrams).await;
        }
        let relays: Vec<&str> = cfg
            .relay
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if relays.is_empty() {
            return Err(ClientError::Resolve(cfg.relay.clone()));
        }
        let first = last_good(&cfg.relay) % relays.len();
        let mut last_err = None;
        for k in (0..relays.len()).map(|i| (first + i) % relays.len()) {
            match Self::connect_to(cfg, relays[k], FAILOVER_CONNECT_TIMEOUT, datagrams).await {
                Ok(client) => {
                    remember_good(&cfg.relay, k);
                    return Ok(client);
                }
                Err(e) if e.is_transient() => {
                    tracing::debug!("relay {} unavailable ({e}); trying the next", relays[k]);
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ClientError::Resolve(cfg.relay.clone())))
    }

    /// Connects to the one relay at `relay`, waiting at most `timeout` for its handshake.
    async fn connect_to(
        cfg: &ClientConfig,
        relay: &str,
        timeout: Duration,
        datagrams: Datagrams,
    ) -> Result<Client, ClientError> {
        let (endpoint, conn) = dial(&cfg.trust, relay, timeout, datagrams).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
        let hello = ClientMsg::Hello {
            user: cfg.user.clone(),
            token: cfg.token.clone(),
            client: format!("walkie/{}", env!("CARGO_PKG_VERSION")),
        };
        if let Err(e) = write_frame(&mut send, &hello, MAX_CONTROL_FRAME).await {
            return Err(conn
                .close_reason()
                .map_or(e.into(), |r| connection_error(&r)));
        }
        let welcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME),
        )
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?;
        let max_clip_ms = match welcome {
            Ok(Some(ServerMsg::Welcome { max_clip_ms, .. })) => max_clip_ms,
            Ok(Some(ServerMsg::Error(e))) => return Err(ClientError::Refused(e)),
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected a welcome, got {other:?}"
                )));
            }
            Ok(None) => {
                return Err(ClientError::Closed(
                    "the relay closed the control stream".into(),
                ));
            }
            Err(e) => {
                // The relay may have closed the connection with a reason (busy, say).
                if let Some(reason) = conn.close_reason() {
                    return Err(connection_error(&reason));
                }
                return Err(e.into());
            }
        };
        let waiters = SharedWaiters::default();
        let (control, control_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(256);
        let writer = tokio::spawn(write_control(send, control_rx));
        tokio::spawn(read_control(
            recv,
            waiters.clone(),
            events_tx.clone(),
            cfg.user.clone(),
        ));
        let live_streams = receive::LiveStreams::default();
        tokio::spawn(receive::read_datagrams(
            conn.clone(),
            live_streams.clone(),
            events_tx.clone(),
        ));
        tokio::spawn(receive::accept_streams(
            conn.clone(),
            waiters.clone(),
            events_tx,
            live_streams,
        ));
        let loss = net::PathLoss::new(&conn);
        Ok(Client {
            loss,
            datagrams,
            conn,
            endpoint,
            control,
            waiters,
            events: tokio::sync::Mutex::new(events),
            next_req: AtomicU64::new(1),
            user: cfg.user.clone(),
            max_clip_ms,
            writer,
        })
    }

    /// The longest clip the relay accepts, in milliseconds (from its welcome).
    pub fn max_clip_ms(&self) -> u32 {
        self.max_clip_ms
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Waits for the next pushed event; `None` when the connection is gone.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.get_mut().recv().await
    }

    /// Like [`Client::next_event`], through a shared reference: for a caller that is also
    /// uploading on this client (the app receives while its user talks). One reader at a time.
    pub async fn next_event_shared(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.conn
            .close_reason()
            .map(|r| connection_error(&r).to_string())
    }

    /// The error for a connection that is gone (or a request that failed because of it).
    fn gone(&self, fallback: &str) -> ClientError {
        self.conn.close_reason().map_or_else(
            || ClientError::Closed(fallback.into()),
            |r| connection_error(&r),
        )
    }

    async fn control(&self, msg: ClientMsg) -> Result<(), ClientError> {
        self.control
            .send(msg)
            .await
            .map_err(|_| self.gone("control stream ended"))
    }

    pub(crate) async fn request(
        &self,
        make: impl FnOnce(u64) -> ClientMsg,
    ) -> Result<Reply, ClientError> {
        self.request_parts(|req| vec![make(req)]).await
    }

    /// Sends the messages `make` gives for a new request id, in order, and waits for the reply
    /// to that id (a request sent in several parts, like an avatar).
    pub(crate) async fn request_parts(
        &self,
        make: impl FnOnce(u64) -> Vec<ClientMsg>,
    ) -> Result<Reply, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).requests.insert(req, tx);
        for msg in make(req) {
            if let Err(e) = self.control(msg).await {
                lock(&self.waiters).requests.remove(&req);
                return Err(e);
            }
        }
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        lock(&self.waiters).requests.remove(&req);
        match reply {
            Ok(Ok(Reply::Error(e))) => Err(ClientError::Refused(e)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(self.gone("connection ended")),
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT)),
        }
    }

    /// A page of history: a conversation, or everything readable with `None`; newest last.
    pub async fn history(
        &self,
        target: Option<Target>,
        limit: u32,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, ClientError> {
        match self
            .request(|req| ClientMsg::History {
                req,
                target,
                limit,
                before_seq,
            })
            .await?
        {
            Reply::History(clips) => Ok(clips),
            _ => Err(ClientError::Protocol(
                "unexpected reply to a history request".into(),
            )),
        }
    }

    /// A stored clip's metadata and Ogg Opus file.
    pub async fn fetch(&self, id: ClipId) -> Result<(ClipMeta, Vec<u8>), ClientError> {
        match self.request(|req| ClientMsg::Fetch { req, id }).await? {
            Reply::File(meta, bytes) => Ok((meta, bytes)),
            _ => Err(ClientError::Protocol("unexpected reply to a fetch".into())),
        }
    }

    /// Tells the relay you played a clip; its sender gets a receipt.
    pub async fn played(&self, id: ClipId) -> Result<(), ClientError> {
        self.control(ClientMsg::Played { id }).await
    }

    /// Tells the relay a delivered clip is safely held.
    pub async fn ack(&self, id: ClipId) -> Result<(), ClientError> {
        self.control(ClientMsg::Ack { id }).await
    }

    /// Starts an upload: returns a stream to push packets into, and registers for its ack.
    pub async fn start_clip(&self, header: &ClipHeader) -> Result<Upload, ClientError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).uploads.insert(header.id, tx);
        let send = self
            .conn
            .open_uni()
            .await
            .map_err(|e| connection_error(&e))?;
        Upload::start(
            send,
            header,
            rx,
            self.waiters.clone(),
            self.conn.clone(),
            self.loss.clone(),
            self.datagrams,
        )
        .await
    }

    /// Sends a whole clip and waits until the relay has stored it: `(seq, duplicate)`.
    pub async fn send_clip(
        &self,
        header: &ClipHeader,
        packets: &[Vec<u8>],
        samples: u64,
    ) -> Result<(u64, bool), ClientError> {
        let mut up = self.start_clip(header).await?;
        up.packets(packets.iter().cloned()).await?;
        up.finish(samples).await
    }

    /// Sends a whole message (text, picture or doodle payload, as [`walkie_proto::message`]
    /// describes) and waits until the relay has stored it: `(seq, duplicate)`. A refusal
    /// (not a member, too large, not a picture) comes back as [`ClientError::Refused`].
    pub async fn send_message(
        &self,
        header: &MessageHeader,
        payload: &[u8],
    ) -> Result<(u64, bool), ClientError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).uploads.insert(header.id, tx);
        let result = async {
            let mut send = self
                .conn
                .open_uni()
                .await
                .map_err(|e| connection_error(&e))?;
            let mut frames = vec![StreamFrame::Message(header.clone())];
            frames.extend(
                payload
                    .chunks(FILE_CHUNK_BYTES)
                    .map(|c| StreamFrame::Chunk(c.to_vec())),
            );
            frames.push(StreamFrame::End {
                packets: payload.chunks(FILE_CHUNK_BYTES).count() as u32,
                samples: 0,
            });
            for frame in &frames {
                // A relay that refuses stops reading; its reason comes on the control stream.
                if write_frame(&mut send, frame, MAX_STREAM_FRAME)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = send.finish();
            match tokio::time::timeout(MESSAGE_ANSWER, rx).await {
                Ok(Ok(Ok(stored))) => Ok(stored),
                Ok(Ok(Err(refusal))) => Err(ClientError::Refused(refusal)),
                Ok(Err(_)) => Err(ClientError::Closed(
                    "the connection ended before the message was acknowledged".into(),
                )),
                Err(_) => Err(ClientError::Timeout(MESSAGE_ANSWER)),
            }
        }
        .await;
        lock(&self.waiters).uploads.remove(&header.id);
        result
    }

    /// Moves the connection to a new local UDP socket (the network changed: another Wi-Fi,
    /// cellular): QUIC migrates the connection to the new address, and a clip being talked
    /// goes on. The socket is bound like the first one, on an ephemeral port.
    pub fn rebind(&self) -> Result<std::net::SocketAddr, ClientError> {
        let old = self
            .endpoint
            .local_addr()
            .map_err(|e| ClientError::Config(format!("no local address: {e}")))?;
        let socket = std::net::UdpSocket::bind(any_port_like(&old))
            .map_err(|e| ClientError::Config(format!("cannot bind a new socket: {e}")))?;
        let addr = socket
            .local_addr()
            .map_err(|e| ClientError::Config(format!("no local address: {e}")))?;
        self.endpoint
            .rebind(socket)
            .map_err(|e| ClientError::Config(format!("cannot move to the new socket: {e}")))?;
        Ok(addr)
    }

    /// Recalls one of your own messages or clips within the relay's recall window: its
    /// payload is deleted from the relay and every recipient's client is told.
    pub async fn recall(&self, id: ClipId) -> Result<(), ClientError> {
        match self.request(|req| ClientMsg::Recall { req, id }).await? {
            Reply::People(ServerMsg::Recalled { id: done, .. }) if done == id => Ok(()),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a recall".into(),
            )),
        }
    }

    /// Closes the connection politely: queued control messages (acks, receipts) reach the
    /// relay first.
    pub async fn close(self) {
        // A barrier: the relay answers control messages in order, so once this reply is
        // back every earlier ack and receipt has been applied, not just received.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.history(None, 1, Some(0))).await;
        drop(self.control);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// What a closed connection means: a relay that closes with an error (busy, with its retry
/// delay; removed user) says so typed in the close's reason bytes
/// ([`walkie_proto::wire::close_reason`]); busy and unauthorized become refusals with their
/// codes, anything else a lost connection.
pub(crate) fn connection_error(e: &quinn::ConnectionError) -> ClientError {
    let quinn::ConnectionError::ApplicationClosed(close) = e else {
        return ClientError::Closed(e.to_string());
    };
    match walkie_proto::wire::parse_close_reason(&close.reason) {
        Some(error) if matches!(error.code, ErrorCode::Busy { .. } | ErrorCode::Unauthorized) => {
            ClientError::Refused(error)
        }
        Some(error) => ClientError::Closed(error.message),
        None => {
            let message = String::from_utf8_lossy(&close.reason).into_owned();
            ClientError::Closed(if message.is_empty() {
                e.to_string()
            } else {
                message
            })
        }
    }
}

async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::Receiver<ClientMsg>) {
    while let Some(msg) = rx.recv().await {
        if write_frame(&mut send, &msg, MAX_CONTROL_FRAME)
            .await
            .is_err()
        {
            return;
        }
    }
    // Wait until the relay has read everything, so nothing queued is lost to the close.
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Reads the control stream: replies go to their waiters, the rest become events (`me` is the
/// signed-in user, skipped in presence batches).
async fn read_control(
    mut recv: quinn::RecvStream,
    waiters: SharedWaiters,
    events: mpsc::Sender<Event>,
    me: String,
) {
    let presence = crate::presence::Presence::new(events.clone(), me);
    while let Ok(Some(msg)) = read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME).await {
        match msg {
            ServerMsg::ClipStored { id, seq, duplicate } => {
                if let Some(tx) = lock(&waiters).uploads.remove(&id) {
                    let _ = tx.send(Ok((seq, duplicate)));
                }
            }
            ServerMsg::History { req, clips } => {
                if let Some(tx) = lock(&waiters).requests.remove(&req) {
                    let _ = tx.send(Reply::History(clips));
                }
            }
            ServerMsg::Error(e) => {
                let waiter_req = e.req.and_then(|r| lock(&waiters).requests.remove(&r));
                let waiter_clip = e.clip.and_then(|c| lock(&waiters).uploads.remove(&c));
                if let Some(tx) = waiter_req {
                    let _ = tx.send(Reply::Error(e));
                } else if let Some(tx) = waiter_clip {
                    let _ = tx.send(Err(e));
                } else {
                    let _ = events.send(Event::Error(e)).await;
                }
            }
            ServerMsg::Channels { channels } => {
                let _ = events.send(Event::Channels(channels)).await;
            }
            // Presence never waits for room in the event queue (see `presence.rs`).
            ServerMsg::Online { users } => presence.online(users),
            ServerMsg::Presence { online, offline } => presence.changes(online, offline),
            ServerMsg::PlayedBy { id, user } => {
                let _ = events.send(Event::PlayedBy(id, user)).await;
            }
            ServerMsg::ContactChanged { entry } => {
                let _ = events.send(Event::ContactChanged(entry)).await;
            }
            reply @ (ServerMsg::MyProfile { req, .. }
            | ServerMsg::Profiles { req, .. }
            | ServerMsg::Contacts { req, .. }
            | ServerMsg::Groups { req, .. }
            | ServerMsg::DeviceLink { req, .. }
            | ServerMsg::Devices { req, .. }
            | ServerMsg::Avatar { req, .. }
            | ServerMsg::Suggestions { req, .. }
            | ServerMsg::Nearby { req, .. }
            | ServerMsg::Recalled { req, .. }) => {
                if let Some(tx) = lock(&waiters).requests.remove(&req) {
                    let _ = tx.send(Reply::People(reply));
                }
            }
            ServerMsg::ListenersLoss { clip, permille } => {
                let mut w = lock(&waiters);
                if w.uploads.contains_key(&clip) {
                    w.listeners_loss.insert(clip, permille.min(1000));
                }
            }
            ServerMsg::Welcome { .. } | ServerMsg::Pong { .. } | ServerMsg::Joined { .. } => {}
        }
    }
    // Wake every waiter: dropping their senders reports the closed connection.
    let mut w = lock(&waiters);
    w.requests.clear();
    w.uploads.clear();
    w.listeners_loss.clear();
}
