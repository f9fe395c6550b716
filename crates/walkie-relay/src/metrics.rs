//! The relay's metrics: every counter, gauge and histogram it keeps, registered once under the
//! `walkie_` prefix, and their Prometheus text rendering (served by `http.rs`).
//!
//! Counters move where the event happens (a refusal, a stored clip); gauges of things the
//! relay already counts (connections, sessions) are read from their owners when scraped, so
//! there is one count of each thing, not a second one that could drift.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label naming one reason, outcome, state or kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Why {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Kind {
    kind: &'static str,
}

/// Every metric of one relay.
pub(crate) struct Metrics {
    registry: Registry,
    /// Connections now, by state: `handshake` (QUIC/TLS under way), `hello` (encrypted, not
    /// authenticated yet), `session` (authenticated). Set when scraped.
    connections: Family<State, Gauge>,
    /// Handshakes finished, by outcome: `ok`, `failed`, `timeout`.
    pub handshakes: Family<Why, Counter>,
    /// Connections refused, by reason.
    pub refusals: Family<Why, Counter>,
    /// Authenticated sessions now (set when scraped).
    sessions: Gauge,
    /// Sessions opened since start.
    pub sessions_opened: Counter,
    /// Items stored, by kind: `clip` (voice) or `message`.
    pub stored: Family<Kind, Counter>,
    /// Payload bytes stored.
    pub stored_bytes: Counter,
    /// Voice clips stored (the same count as `stored{kind="clip"}`, under its own name).
    pub clips_stored: Counter,
    /// Live copies being sent to listeners now.
    pub live_listeners: Gauge,
    /// Channel floors granted since start, and held now.
    pub floor_grants: Counter,
    pub floors_held: Gauge,
    /// One batch commit of the store, in seconds.
    pub commit_seconds: Histogram,
    /// From a live packet's arrival to its handing to one listener's stream, in seconds.
    pub fanout_seconds: Histogram,
    /// Items waiting in inboxes (delivered or not, not yet acknowledged); read from the
    /// store when scraped, `-1` when the store cannot say.
    inbox_depth: Gauge,
    /// Requests answered, by kind.
    pub requests: Family<Kind, Counter>,
    /// Answers to a client dropped because its control queue stayed full.
    pub answers_dropped: Counter,
}

/// What the scrape reads from the relay's own counts.
pub(crate) struct Snapshot {
    pub handshaking: usize,
    pub unauthenticated: usize,
    pub sessions: usize,
    pub inbox_depth: Option<u64>,
}

fn gauge_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("walkie");
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            handshakes: Family::default(),
            refusals: Family::default(),
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            stored: Family::default(),
            stored_bytes: Counter::default(),
            clips_stored: Counter::default(),
            live_listeners: Gauge::default(),
            floor_grants: Counter::default(),
            floors_held: Gauge::default(),
            // 0.5 ms to about 16 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 50 µs to about 1.6 s.
            fanout_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            inbox_depth: Gauge::default(),
            requests: Family::default(),
            answers_dropped: Counter::default(),
        };
        registry.register(
            "connections",
            "Connections now, by state (handshake, hello, session)",
            m.connections.clone(),
        );
        registry.register(
            "handshakes",
            "QUIC handshakes finished, by outcome",
            m.handshakes.clone(),
        );
        registry.register(
            "refusals",
            "Connections refused, by reason",
            m.refusals.clone(),
        );
        registry.register("sessions", "Authenticated sessions now", m.sessions.clone());
        registry.register(
            "sessions_opened",
            "Sessions opened since start",
            m.sessions_opened.clone(),
        );
        registry.register(
            "items_stored",
            "Items stored, by kind (clip, message)",
            m.stored.clone(),
        );
        registry.register_with_unit(
            "stored",
            "Payload bytes stored",
            Unit::Bytes,
            m.stored_bytes.clone(),
        );
        registry.register("clips_stored", "Voice clips stored", m.clips_stored.clone());
        registry.register(
            "live_listeners",
            "Live copies being sent to listeners now",
            m.live_listeners.clone(),
        );
        registry.register(
            "floor_grants",
            "Channel floors granted",
            m.floor_grants.clone(),
        );
        registry.register(
            "floors_held",
            "Channel floors held now",
            m.floors_held.clone(),
        );
        registry.register_with_unit(
            "store_commit",
            "Duration of one batch commit of the store",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register_with_unit(
            "fanout_delay",
            "From a live packet's arrival to its handing to one listener's stream",
            Unit::Seconds,
            m.fanout_seconds.clone(),
        );
        registry.register(
            "inbox_depth",
            "Items in inboxes not yet acknowledged (-1: the store cannot say)",
            m.inbox_depth.clone(),
        );
        registry.register(
            "requests",
            "Control requests answered, by kind",
            m.requests.clone(),
        );
        registry.register(
            "answers_dropped",
            "Answers dropped because a client's control queue stayed full",
            m.answers_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Why { reason }).inc();
    }

    /// Counts a finished handshake.
    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes
            .get_or_create(&Why { reason: outcome })
            .inc();
    }

    /// Counts a request answered.
    pub fn request(&self, kind: &'static str) {
        self.requests.get_or_create(&Kind { kind }).inc();
    }

    /// Counts an item stored: `voice` for a clip, otherwise a message.
    pub fn stored(&self, voice: bool, bytes: usize) {
        let kind = if voice { "clip" } else { "message" };
        self.stored.get_or_create(&Kind { kind }).inc();
        if voice {
            self.clips_stored.inc();
        }
        self.stored_bytes.inc_by(bytes as u64);
    }

    /// Observes one batch commit.
    pub fn commit_took(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition, with the gauges read from `now`.
    pub fn render(&self, now: &Snapshot) -> String {
        let state = |state| State { state };
        let hello = now.unauthenticated.saturating_sub(now.handshaking);
        self.connections
            .get_or_create(&state("handshake"))
            .set(gauge_of(now.handshaking));
        self.connections
            .get_or_create(&state("hello"))
            .set(gauge_of(hello));
        self.connections
            .get_or_create(&state("session"))
            .set(gauge_of(now.sessions));
        self.sessions.set(gauge_of(now.sessions));
        self.inbox_depth.set(
            now.inbox_depth
                .map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX)),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Counts one of something (a live listener, a floor held) for as long as it lives.
pub(crate) struct Held(Gauge);

impl Held {
    pub fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_and_gauges_render_under_the_walkie_prefix() {
        let m = Metrics::new();
        m.stored(true, 1000);
        m.stored(true, 500);
        m.stored(false, 10);
        m.refused("busy");
        m.commit_took(Duration::from_millis(3));
        let text = m.render(&Snapshot {
            handshaking: 2,
            unauthenticated: 5,
            sessions: 7,
            inbox_depth: Some(11),
        });
        assert_eq!(value(&text, "walkie_clips_stored_total"), Some(2.0));
        assert_eq!(value(&text, "walkie_stored_bytes_total"), Some(1510.0));
        assert_eq!(
            value(&text, "walkie_items_stored_total{kind=\"message\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "walkie_refusals_total{reason=\"busy\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "walkie_connections{state=\"hello\"}"),
            Some(3.0)
        );
        assert_eq!(value(&text, "walkie_sessions"), Some(7.0));
        assert_eq!(value(&text, "walkie_inbox_depth"), Some(11.0));
        assert_eq!(value(&text, "walkie_store_commit_seconds_count"), Some(1.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_live_listener_is_counted_while_it_lives() {
        let m = Metrics::new();
        let a = Held::new(&m.live_listeners);
        let b = Held::new(&m.live_listeners);
        drop(a);
        assert_eq!(m.live_listeners.get(), 1);
        drop(b);
        assert_eq!(m.live_listeners.get(), 0);
    }
}
