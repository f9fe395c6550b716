//! Sending a live clip's packets as datagrams on one connection: how many older packets each
//! datagram repeats (from the connection's own loss, read every ten packets), and what
//! happens when a datagram cannot go (too large for the path: sent bare; not supported or the
//! connection gone: no more datagrams, the stream carries on).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use walkie_proto::live::{LossMeter, Outgoing, Resilience};

/// Packets between two readings of the connection's loss (200 ms of 20 ms frames: the first
/// readings of a clip set its repeats soon).
const READ_EVERY: u32 = 10;

/// Repeats on a path whose loss is not known yet.
const UNKNOWN_PATH_COPIES: u8 = 2;

/// A connection's loss, measured across its clips (one per connection, shared by the live
/// copies that use it).
#[derive(Clone, Debug)]
pub struct PathLoss(Arc<Mutex<LossMeter>>);

impl PathLoss {
    /// Starts measuring `conn`'s loss from its counters now.
    pub fn new(conn: &quinn::Connection) -> PathLoss {
        let path = conn.stats().path;
        PathLoss(Arc::new(Mutex::new(LossMeter::new(
            path.sent_packets,
            path.lost_packets,
        ))))
    }

    fn meter(&self) -> std::sync::MutexGuard<'_, LossMeter> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads `conn`'s counters; the repeats its loss calls for. A path not measured yet gets
    /// full repeats until it is: the first words of a clip are worth a few dozen bytes.
    fn copies(&self, conn: &quinn::Connection) -> u8 {
        let path = conn.stats().path;
        let mut meter = self.meter();
        let permille = meter.update(path.sent_packets, path.lost_packets);
        if meter.is_primed() {
            Resilience::for_loss(permille).copies
        } else {
            UNKNOWN_PATH_COPIES
        }
    }

    /// The loss measured so far, in permille (0 until there were packets enough).
    pub fn permille(&self) -> u32 {
        self.meter().permille()
    }
}

/// The datagram side of one live copy of a clip on one connection.
#[derive(Debug)]
pub struct DatagramPath {
    conn: quinn::Connection,
    loss: PathLoss,
    copies: u8,
    until_reading: u32,
    on: bool,
}

impl DatagramPath {
    /// Sends on `conn`, whose loss `loss` measures.
    pub fn new(conn: quinn::Connection, loss: PathLoss) -> DatagramPath {
        DatagramPath {
            conn,
            loss,
            copies: UNKNOWN_PATH_COPIES,
            until_reading: 0,
            on: true,
        }
    }

    /// A path that sends nothing: live packets go on the reliable stream only.
    pub fn off(conn: quinn::Connection, loss: PathLoss) -> DatagramPath {
        DatagramPath {
            on: false,
            ..DatagramPath::new(conn, loss)
        }
    }

    /// Whether datagrams are still being sent.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The loss measured so far, in permille.
    pub fn loss_permille(&self) -> u32 {
        self.loss.permille()
    }

    /// Sends `out` as a datagram naming `stream` (nothing once the connection takes none).
    pub fn send(&mut self, stream: u64, out: &Outgoing) {
        if !self.on {
            return;
        }
        if self.until_reading == 0 {
            self.until_reading = READ_EVERY;
            self.copies = self.loss.copies(&self.conn);
        }
        self.until_reading -= 1;
        let Some(body) = out.body(self.copies) else {
            return;
        };
        match self
            .conn
            .send_datagram(Bytes::from(body.for_stream(stream)))
        {
            Ok(()) => {}
            // Too large for this path (the repeats make it larger): this one goes bare.
            Err(quinn::SendDatagramError::TooLarge) => {
                if let Some(bare) = out.body(0) {
                    let _ = self
                        .conn
                        .send_datagram(Bytes::from(bare.for_stream(stream)));
                }
            }
            // The peer takes no datagrams, or the connection is gone.
            Err(_) => self.on = false,
        }
    }
}
