//! Push-to-talk latency with real audio devices over a loopback relay: mouth-to-ear and
//! access time, as p50/p95/p99 over many clips, next to 3GPP MCPTT's targets (TS 22.179:
//! access time under 300 ms; mouth-to-ear under 300 ms for 95% of bursts) and ITU-T G.114's
//! 150 ms for one-way delay in conversation.
//!
//! The devices are PulseAudio null sinks (scripts/pulse-setup.sh, started here): speech
//! loops into `mic` with `paplay`, alice's [`Capture`] reads `mic.monitor` through cpal, and
//! `client::talk` streams each clip live to an in-process relay on 127.0.0.1; bob's client
//! hands the live packets to the [`Player`] (jitter buffer, decoder) which plays through
//! cpal into `spk`.
//!
//! * **mouth-to-ear**: for every frame of a clip, from the capture callback's timestamp of
//!   its last sample to the moment the same sample is handed to the output callback (the
//!   playback clock, polled every millisecond). A clip's figure is the median over its
//!   frames; the table gives percentiles over clips, and over all frames.
//! * **access time**: from the key press (the talk starting) to the listener learning that
//!   the clip is on its way (the relay granted the floor and opened the live stream: bob's
//!   `LiveStarted`). The relay refuses at once when the floor is taken; there is no separate
//!   grant message, so this is the time until the first audio can flow.
//!
//! `cargo bench --bench latency` runs 200 clips of 1 s (about 5 minutes); without `--bench`
//! (as `cargo test --benches` runs it) 5 clips. `WALKIE_LATENCY_CLIPS=N` and
//! `WALKIE_LATENCY_CLIP_MS=MS` override. The results are printed as markdown and written to
//! `target/walkie-bench/latency.md`.

/// Where the reports go.
#[path = "support/out.rs"]
mod out;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walkie_client::outbox::Outbox;
use walkie_client::talk::{self, TalkControl, TalkOptions, TalkOutcome};
use walkie_client::{Client, ClientConfig, Event};
use walkie_media::audio::capture::Capture;
use walkie_media::audio::open::CaptureConfig;
use walkie_media::audio::source::{AudioSource, Pull};
use walkie_media::audio::speaker::{Speaker, SpeakerClock};
use walkie_media::player::{self, Player, PlayerConfig, PlayerEvent, PlayerInput};
use walkie_proto::clip::{ClipId, Target};
use walkie_relay::{self as relay, RelayConfig, auth};
use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

/// Everything needed is started here; a missing PulseAudio is an error, not a skip.
fn pulse() -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pulse-setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("bash {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "PulseAudio could not be set up:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let server = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PULSE_SERVER="))
        .ok_or("pulse-setup printed no server")?;
    if std::env::var_os("PULSE_SERVER").is_none() {
        // SAFETY: set before this program starts any thread.
        unsafe { std::env::set_var("PULSE_SERVER", server) };
    }
    Ok(())
}

/// Loops a speech sample into the virtual microphone until dropped.
struct Voice {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Voice {
    fn start(sample: PathBuf) -> Voice {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let child: Result<Child, _> = Command::new("paplay")
                    .args(["-d", "mic"])
                    .arg(&sample)
                    .stdin(Stdio::null())
                    .spawn();
                let Ok(mut child) = child else { return };
                while !flag.load(Ordering::Relaxed) && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        Voice {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Voice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The capture, noting when each frame it hands out was captured.
struct Stamped {
    inner: Box<dyn AudioSource>,
    stamps: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSource for Stamped {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, walkie_media::audio::AudioError> {
        let pull = self.inner.next_frame(timeout)?;
        if let Pull::Frame(f) = &pull {
            self.stamps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(f.captured_at);
        }
        Ok(pull)
    }
    fn start_clip(&mut self, preroll: Duration) {
        self.stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.start_clip(preroll);
    }
    fn level(&self) -> f32 {
        self.inner.level()
    }
}

/// Polls the playback clock every millisecond: (48 kHz samples handed out, when).
fn timeline(
    clock: SpeakerClock,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u64, Instant)>> {
    std::thread::spawn(move || {
        let mut points: Vec<(u64, Instant)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(p) = clock.played_up_to()
                && points.last().is_none_or(|&(s, _)| s != p.samples)
            {
                points.push((p.samples, p.handed_at));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        points
    })
}

fn handed_at(timeline: &[(u64, Instant)], pos: u64) -> Option<Instant> {
    let i = timeline.partition_point(|&(s, _)| s < pos);
    timeline.get(i).map(|&(_, t)| t)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One clip's measurements.
struct ClipRun {
    id: ClipId,
    pressed: Instant,
    stamps: Vec<Instant>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("latency bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let full = std::env::args().any(|a| a == "--bench");
    let env_num = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let clips = env_num("WALKIE_LATENCY_CLIPS", if full { 200 } else { 5 }) as usize;
    let clip_ms = env_num("WALKIE_LATENCY_CLIP_MS", 1_000);
    pulse()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("relay")).map_err(|e| e.to_string())?);
    let config = RelayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        clips_per_minute: 100_000,
        ..RelayConfig::default()
    };
    let handle = rt
        .block_on(relay::start(
            config,
            &dir.path().join("relay"),
            store.clone(),
        ))
        .map_err(|e| e.to_string())?;
    let user = |name: &str| -> Result<ClientConfig, String> {
        let token = auth::new_token();
        store
            .add_user(name, &auth::hash_token(&token))
            .map_err(|e| e.to_string())?;
        Ok(ClientConfig {
            relay: handle.addr.to_string(),
            user: name.into(),
            token,
            trust: handle.fingerprint.into(),
        })
    };
    let (alice, bob) = (user("alice")?, user("bob")?);
    store
        .add_channel("crew", &["alice".into(), "bob".into()])
        .map_err(|e| e.to_string())?;

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/status-report.wav");
    let _voice = Voice::start(sample);
    let capture =
        Capture::open(None, CaptureConfig::default()).map_err(|e| format!("capture: {e}"))?;
    let playback = Speaker::open(None).map_err(|e| format!("playback: {e}"))?;
    let machine = format!(
        "capture {:?}; playback {:?}",
        capture.info(),
        playback.info()
    );
    let clock = playback.clock();
    let player = player::spawn(Player::new(playback, "bob", PlayerConfig::default()))
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let timeline_thread = timeline(clock, stop.clone());

    let stamps = Arc::new(Mutex::new(Vec::new()));
    let mut source: Box<dyn AudioSource> = Box::new(Stamped {
        inner: Box::new(capture),
        stamps: stamps.clone(),
    });
    let outbox = Outbox::open(&dir.path().join("outbox")).map_err(|e| e.to_string())?;

    // bob: every live clip goes to the player; LiveStarted arrival times are kept.
    let live_started: Arc<Mutex<Vec<(ClipId, Instant)>>> = Arc::default();
    let (bob_ready_tx, bob_ready) = std::sync::mpsc::channel();
    let bob_task = {
        let live_started = live_started.clone();
        let player_tx = player.sender().ok_or("the player stopped")?;
        rt.spawn(async move {
            let mut c = match Client::connect(&bob).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = bob_ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = bob_ready_tx.send(Ok(()));
            while let Some(e) = c.next_event().await {
                match e {
                    Event::LiveStarted(h) => {
                        live_started
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((h.id, Instant::now()));
                        let _ = player_tx.send(PlayerInput::Offer(h));
                    }
                    Event::LivePacket(id, p) => {
                        let _ = player_tx.send(PlayerInput::Packet(id, p));
                    }
                    Event::Clip(clip) => {
                        let id = clip.header.id;
                        let _ = player_tx.send(PlayerInput::End(id, clip.samples));
                        let _ = c.ack(id).await;
                    }
                    _ => {}
                }
            }
        })
    };
    bob_ready
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "bob did not connect".to_string())??;

    let alice_c = rt
        .block_on(Client::connect(&alice))
        .map_err(|e| e.to_string())?;
    let opts = TalkOptions {
        preroll: Duration::ZERO,
        tail: Duration::ZERO,
        ..TalkOptions::new(Target::Channel("crew".into()))
    };
    let mut runs = Vec::new();
    let mut started_at: Vec<(ClipId, u64)> = Vec::new();
    let began = Instant::now();
    for n in 0..clips {
        let pressed = Instant::now();
        let control = TalkControl::new();
        let (outcome, back) = rt
            .block_on(talk::talk(
                Some(&alice_c),
                &outbox,
                source,
                &opts,
                control,
                Some(Duration::from_millis(clip_ms)),
            ))
            .map_err(|e| format!("clip {n}: {e}"))?;
        source = back;
        let TalkOutcome::Stored { id, .. } = outcome else {
            return Err(format!("clip {n} was not stored: {outcome:?}"));
        };
        runs.push(ClipRun {
            id,
            pressed,
            stamps: std::mem::take(&mut *stamps.lock().unwrap_or_else(|e| e.into_inner())),
        });
        // Let bob finish playing it before the next key press (as people take turns).
        let end = Instant::now() + Duration::from_secs(5);
        let mut done = false;
        while !done && Instant::now() < end {
            while let Ok(ev) = player.events().try_recv() {
                match ev {
                    Ok(PlayerEvent::Started { id, at_sample, .. }) => {
                        started_at.push((id, at_sample))
                    }
                    Ok(PlayerEvent::Played { id: p } | PlayerEvent::Abandoned { id: p }) => {
                        done |= p == id
                    }
                    Ok(PlayerEvent::LiveStats { .. }) => {}
                    Err(e) => return Err(format!("playback failed: {e}")),
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        if (n + 1) % 20 == 0 {
            eprintln!("{} clips in {:.0} s", n + 1, began.elapsed().as_secs_f64());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let timeline = timeline_thread
        .join()
        .map_err(|_| "timeline thread panicked")?;
    rt.block_on(alice_c.close());
    bob_task.abort();
    let _ = rt.block_on(bob_task);
    let _ = player.finish();
    rt.block_on(handle.shutdown());

    // Mouth to ear per clip: median over its frames; access: key press to LiveStarted.
    let live_started = live_started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (mut per_clip, mut frames, mut access) = (Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0usize;
    for run in &runs {
        if let Some(&(_, at)) = live_started.iter().find(|(id, _)| *id == run.id) {
            access.push(at.saturating_duration_since(run.pressed).as_secs_f64() * 1e3);
        }
        let Some(&(_, start)) = started_at.iter().find(|(id, _)| *id == run.id) else {
            missing += 1;
            continue;
        };
        let lat: Vec<f64> = run
            .stamps
            .iter()
            .enumerate()
            .filter_map(|(k, at)| {
                handed_at(&timeline, start + (k as u64 + 1) * 960)
                    .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1e3)
            })
            .collect();
        if lat.is_empty() {
            missing += 1;
            continue;
        }
        let lat = sorted(lat);
        if !full {
            // Signed: the first frame was captured before the press (the device runs on).
            let ms = |t: Option<Instant>| {
                t.map_or(f64::NAN, |t| match t.checked_duration_since(run.pressed) {
                    Some(d) => d.as_secs_f64() * 1e3,
                    None => -run.pressed.duration_since(t).as_secs_f64() * 1e3,
                })
            };
            eprintln!(
                "clip {}: mouth-to-ear median {:.1} ms over {} frames; first frame captured at {:+.1} ms from the press, handed to the speaker at {:+.1} ms",
                run.id,
                percentile(&lat, 0.5),
                lat.len(),
                ms(run.stamps.first().copied()),
                ms(handed_at(&timeline, start + 960)),
            );
        }
        per_clip.push(percentile(&lat, 0.5));
        frames.extend(lat);
    }
    let (per_clip, frames, access) = (sorted(per_clip), sorted(frames), sorted(access));
    let within = |v: &[f64], ms: f64| {
        100.0 * v.iter().filter(|&&x| x < ms).count() as f64 / v.len().max(1) as f64
    };
    let row = |name: &str, v: &[f64], target: &str| {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {target} |\n",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        )
    };
    let mut md = String::new();
    md.push_str(&format!(
        "Push-to-talk latency, {} clips of {clip_ms} ms through a loopback relay, PulseAudio null sinks ({missing} clips not measured).\n\n",
        runs.len()
    ));
    md.push_str(
        "| measure (ms) | n | p50 | p95 | p99 | max | target |\n|---|---|---|---|---|---|---|\n",
    );
    md.push_str(&row(
        "mouth-to-ear, per clip (median of its frames)",
        &per_clip,
        "MCPTT: < 300 ms for 95% of bursts; G.114: 150 ms",
    ));
    md.push_str(&row("mouth-to-ear, every frame", &frames, "same"));
    md.push_str(&row(
        "access time (key press → listener's live stream opens)",
        &access,
        "MCPTT: < 300 ms",
    ));
    md.push_str(&format!(
        "\nClips under 300 ms mouth-to-ear: {:.1}%; under 150 ms: {:.1}%. Access under 300 ms: {:.1}%.\n\n{machine}\n",
        within(&per_clip, 300.0),
        within(&per_clip, 150.0),
        within(&access, 300.0)
    ));
    println!("{md}");
    let out = out::out_dir();
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join("latency.md"), &md);
    }
    if per_clip.is_empty() || access.is_empty() {
        return Err("no clip was measured".into());
    }
    Ok(())
}
