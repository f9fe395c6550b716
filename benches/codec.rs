//! Codec throughput: walkie's in-memory encode and decode paths against libopus driven
//! directly through the `opus` crate, on 60 s of speech, for complexities 0/5/10 and
//! bitrates 16/24/32 kb/s at 20 ms frames.
//!
//! `cargo bench --bench codec` runs the criterion groups (HTML report under
//! `target/criterion/report/index.html`), then a paired summary: for each setting it
//! alternates walkie and raw libopus runs and prints, as a markdown table, the median speed in
//! multiples of real time and the median of the per-pair ratios walkie/raw (1.00 = no
//! overhead). Alternating the two in pairs keeps a busy machine from biasing the ratio.
//! `WALKIE_BENCH_PAIRS` sets the number of pairs (default 5).
//!
//! Time is the benchmarking thread's on-CPU time (`/proc/thread-self/schedstat`, in ns), not
//! wall time: on a shared machine the thread also waits for a core, and that wait says
//! nothing about the codec. On an idle machine the two agree. `WALKIE_BENCH_CLOCK=wall`
//! switches both criterion and the summary to wall time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use opus::{Application, Bitrate, Channels};
use walkie_media::codec::{self, EncodedClip, EncoderConfig};
use walkie_proto::clip::CodecParams;

/// Counts heap allocations, so the report can show what each path allocates per clip.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// (allocations, bytes allocated) while `f` runs, and its result.
fn counted<T>(f: impl FnOnce() -> T) -> (u64, u64, T) {
    let (a, b) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    let out = f();
    (
        ALLOCATIONS.load(Ordering::Relaxed) - a,
        ALLOCATED_BYTES.load(Ordering::Relaxed) - b,
        out,
    )
}

/// Heap bytes held by a list of packets (capacities, not lengths).
fn held(packets: &Vec<Vec<u8>>) -> usize {
    packets.capacity() * std::mem::size_of::<Vec<u8>>()
        + packets.iter().map(Vec::capacity).sum::<usize>()
}

/// Length of the test signal: 60 s at 48 kHz.
const SIGNAL_SAMPLES: usize = 60 * 48_000;
const FRAME: usize = 960;
const COMPLEXITIES: [u8; 3] = [0, 5, 10];
const BITRATES: [u32; 3] = [16_000, 24_000, 32_000];

/// 60 s of speech: the WAVs of `samples/`, resampled to 48 kHz by walkie, concatenated and
/// repeated.
fn speech_60s() -> Vec<f32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("samples/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    names.sort();
    let mut speech = Vec::new();
    for path in &names {
        speech.extend(walkie_media::audio::load_wav_48k_mono(path).expect("sample WAV loads"));
    }
    assert!(!speech.is_empty(), "no WAV in samples/");
    speech
        .iter()
        .copied()
        .cycle()
        .take(SIGNAL_SAMPLES)
        .collect()
}

/// What the benchmarks time: the thread's CPU time or wall time, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    ThreadCpu,
    Wall,
}

impl Clock {
    fn from_env() -> Clock {
        match std::env::var("WALKIE_BENCH_CLOCK").as_deref() {
            Ok("wall") => Clock::Wall,
            _ if thread_cpu_ns().is_some() => Clock::ThreadCpu,
            _ => {
                eprintln!("note: /proc/thread-self/schedstat is unreadable; timing wall clock");
                Clock::Wall
            }
        }
    }

    fn now_ns(self, origin: Instant) -> u64 {
        match self {
            Clock::ThreadCpu => thread_cpu_ns().unwrap_or(0),
            Clock::Wall => origin.elapsed().as_nanos() as u64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Clock::ThreadCpu => "thread CPU time",
            Clock::Wall => "wall time",
        }
    }
}

/// Nanoseconds this thread has run on a CPU (first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A criterion measurement in nanoseconds of [`Clock`], formatted like wall time.
struct Timer {
    clock: Clock,
    origin: Instant,
    wall: WallTime,
}

impl Measurement for Timer {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        self.clock.now_ns(self.origin)
    }
    fn end(&self, start: u64) -> u64 {
        self.clock.now_ns(self.origin).saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn config(complexity: u8, bitrate: u32) -> EncoderConfig {
    EncoderConfig {
        bitrate,
        complexity,
        frame_ms: 20,
    }
}

fn label(cfg: &EncoderConfig) -> String {
    format!("c{}/{}k", cfg.complexity, cfg.bitrate / 1000)
}

/// The raw baseline encoder: libopus with walkie's settings (48 kHz mono VOIP VBR).
fn raw_encoder(cfg: &EncoderConfig) -> opus::Encoder {
    let mut enc =
        opus::Encoder::new(48_000, Channels::Mono, Application::Voip).expect("libopus encoder");
    enc.set_vbr(true).expect("vbr");
    enc.set_bitrate(Bitrate::Bits(cfg.bitrate as i32))
        .expect("bitrate");
    enc.set_complexity(i32::from(cfg.complexity))
        .expect("complexity");
    enc
}

/// The same work as `codec::encode_pcm` done straight on libopus with nothing in between:
/// the same frames (input plus enough zeros to cover the lookahead, the last frame
/// zero-padded), each packet encoded into one reused buffer and kept as an exact-size Vec.
fn raw_encode(pcm: &[f32], cfg: &EncoderConfig) -> Vec<Vec<u8>> {
    let mut enc = raw_encoder(cfg);
    let lookahead = enc.get_lookahead().expect("lookahead") as usize;
    let total = pcm.len() + lookahead;
    let mut packets = Vec::with_capacity(total / FRAME + 1);
    let mut out = [0u8; 4_000];
    let mut tail = [0f32; FRAME];
    let mut at = 0;
    while at < total {
        let frame: &[f32] = if at + FRAME <= pcm.len() {
            &pcm[at..at + FRAME]
        } else {
            tail.fill(0.0);
            let real = pcm.len().saturating_sub(at).min(FRAME);
            tail[..real].copy_from_slice(&pcm[at..at + real]);
            &tail
        };
        let n = enc.encode_float(frame, &mut out).expect("libopus encodes");
        packets.push(out[..n].to_vec());
        at += FRAME;
    }
    packets
}

/// The same work as `codec::decode_packets` straight on libopus: decode into one reused
/// buffer, drop the pre-skip, append to the output up to the input length.
fn raw_decode(params: &CodecParams, packets: &[Vec<u8>], samples: usize) -> Vec<f32> {
    let mut dec = opus::Decoder::new(48_000, Channels::Mono).expect("libopus decoder");
    let mut buf = [0f32; 5_760];
    let mut skip = usize::from(params.pre_skip);
    let mut out = Vec::with_capacity(samples);
    for p in packets {
        if out.len() >= samples {
            break;
        }
        let n = dec
            .decode_float(p, &mut buf, false)
            .expect("libopus decodes");
        let drop = skip.min(n);
        skip -= drop;
        let keep = (n - drop).min(samples - out.len());
        out.extend_from_slice(&buf[drop..drop + keep]);
    }
    out
}

fn encode_walkie(pcm: &[f32], cfg: &EncoderConfig) -> EncodedClip {
    codec::encode_pcm(pcm, cfg).expect("walkie encodes")
}

fn decode_walkie(clip: &EncodedClip) -> Vec<f32> {
    codec::decode_packets(&clip.params, &clip.packets, clip.samples).expect("walkie decodes")
}

fn criterion_groups(c: &mut Criterion<Timer>, pcm: &[f32], clips: &[(EncoderConfig, EncodedClip)]) {
    let mut enc = c.benchmark_group("encode_60s");
    enc.throughput(Throughput::Elements(pcm.len() as u64));
    // Flat sampling: ~1 s per iteration at complexity 10 would make criterion's default linear
    // sampling (1+2+...+10 iterations) take a minute per benchmark.
    enc.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (cfg, _) in clips {
        let id = label(cfg);
        enc.bench_with_input(BenchmarkId::new("walkie", &id), cfg, |b, cfg| {
            b.iter(|| encode_walkie(black_box(pcm), cfg))
        });
        enc.bench_with_input(BenchmarkId::new("raw_libopus", &id), cfg, |b, cfg| {
            b.iter(|| raw_encode(black_box(pcm), cfg))
        });
    }
    enc.finish();

    let mut dec = c.benchmark_group("decode_60s");
    dec.throughput(Throughput::Elements(pcm.len() as u64));
    dec.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    for (cfg, clip) in clips {
        let id = label(cfg);
        dec.bench_with_input(BenchmarkId::new("walkie", &id), clip, |b, clip| {
            b.iter(|| decode_walkie(black_box(clip)))
        });
        dec.bench_with_input(BenchmarkId::new("raw_libopus", &id), clip, |b, clip| {
            b.iter(|| {
                raw_decode(
                    &clip.params,
                    black_box(&clip.packets),
                    clip.samples as usize,
                )
            })
        });
    }
    dec.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds of `clock` taken by `f`.
fn secs(clock: Clock, f: impl FnOnce()) -> f64 {
    let origin = Instant::now();
    let t = clock.now_ns(origin);
    f();
    clock.now_ns(origin).saturating_sub(t) as f64 / 1e9
}

/// Median and interquartile range of the per-pair ratios, as `0.998 (0.990-1.010)`.
fn ratio_cell(ratios: &mut [f64]) -> String {
    let mid = median(ratios);
    let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    format!("{mid:.3} ({:.3}-{:.3})", q(0.25), q(0.75))
}

/// Runs `walkie` and `raw` alternately `pairs` times (the order flips every pair):
/// (median walkie s, median raw s, walkie/raw per pair).
fn paired(
    clock: Clock,
    pairs: usize,
    mut walkie: impl FnMut(),
    mut raw: impl FnMut(),
) -> (f64, f64, Vec<f64>) {
    let (mut w, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (tw, tr) = if i % 2 == 0 {
            let tw = secs(clock, &mut walkie);
            (tw, secs(clock, &mut raw))
        } else {
            let tr = secs(clock, &mut raw);
            (secs(clock, &mut walkie), tr)
        };
        w.push(tw);
        r.push(tr);
        ratio.push(tw / tr);
    }
    (median(&mut w), median(&mut r), ratio)
}

fn summary(clock: Clock, pcm: &[f32], clips: &[(EncoderConfig, EncodedClip)], pairs: usize) {
    let audio_s = pcm.len() as f64 / 48_000.0;
    println!();
    println!(
        "## Codec throughput, 60 s of speech, 20 ms frames, x real time by {} ({pairs} alternating pairs for encode, {} for decode; medians)",
        clock.name(),
        pairs * 3
    );
    println!();
    println!(
        "| setting | encode walkie (x RT) | encode raw libopus (x RT) | encode walkie/raw, median (IQR) | decode walkie (x RT) | decode raw libopus (x RT) | decode walkie/raw, median (IQR) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (cfg, clip) in clips {
        let (ew, er, mut eratio) = paired(
            clock,
            pairs,
            || {
                black_box(encode_walkie(black_box(pcm), cfg));
            },
            || {
                black_box(raw_encode(black_box(pcm), cfg));
            },
        );
        // Decoding is ~10x faster: more pairs for the same confidence.
        let (dw, dr, mut dratio) = paired(
            clock,
            pairs * 3,
            || {
                black_box(decode_walkie(black_box(clip)));
            },
            || {
                black_box(raw_decode(
                    &clip.params,
                    black_box(&clip.packets),
                    clip.samples as usize,
                ));
            },
        );
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} |",
            label(cfg),
            audio_s / ew,
            audio_s / er,
            ratio_cell(&mut eratio),
            audio_s / dw,
            audio_s / dr,
            ratio_cell(&mut dratio)
        );
    }
    println!();
    // Allocation counts do not depend on the machine's load: the same every run.
    let (cfg, clip) = clips
        .iter()
        .find(|(c, _)| *c == EncoderConfig::default())
        .unwrap_or(&clips[0]);
    let (wa, wb, wclip) = counted(|| encode_walkie(pcm, cfg));
    let (ra, rb, rpk) = counted(|| raw_encode(pcm, cfg));
    let (da, db, _) = counted(|| decode_walkie(clip));
    let (qa, qb, _) = counted(|| raw_decode(&clip.params, &clip.packets, clip.samples as usize));
    let opus_bytes: usize = clip.packets.iter().map(Vec::len).sum();
    println!(
        "## Heap use per 60 s clip ({}; {} packets, {} bytes of Opus)",
        label(cfg),
        clip.packets.len(),
        opus_bytes
    );
    println!();
    println!("| path | allocations | bytes allocated | bytes held by the packets |");
    println!("|---|---|---|---|");
    println!(
        "| encode, walkie | {wa} | {wb} | {} |",
        held(&wclip.packets)
    );
    println!("| encode, raw libopus | {ra} | {rb} | {} |", held(&rpk));
    println!("| decode, walkie | {da} | {db} | |");
    println!("| decode, raw libopus | {qa} | {qb} | |");
    println!();
}

fn main() {
    let pcm = speech_60s();
    let clips: Vec<(EncoderConfig, EncodedClip)> = COMPLEXITIES
        .iter()
        .flat_map(|&c| BITRATES.iter().map(move |&b| config(c, b)))
        .map(|cfg| (cfg, encode_walkie(&pcm, &cfg)))
        .collect();
    // Both paths must produce the same thing, or the comparison means nothing.
    for (cfg, clip) in &clips {
        assert_eq!(
            clip.packets,
            raw_encode(&pcm, cfg),
            "{}: walkie and raw libopus packets differ",
            label(cfg)
        );
        assert_eq!(
            decode_walkie(clip),
            raw_decode(&clip.params, &clip.packets, clip.samples as usize),
            "{}: decoded audio differs",
            label(cfg)
        );
    }

    let bench_mode = std::env::args().any(|a| a == "--bench");
    let clock = Clock::from_env();
    let timer = Timer {
        clock,
        origin: Instant::now(),
        wall: WallTime,
    };
    let mut c = Criterion::default()
        .with_measurement(timer)
        .configure_from_args();
    criterion_groups(&mut c, &pcm, &clips);
    c.final_summary();
    if bench_mode {
        let pairs = std::env::var("WALKIE_BENCH_PAIRS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        summary(clock, &pcm, &clips, pairs);
    }
}
