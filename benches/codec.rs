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

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use opus::{Application, Bitrate, Channels};
use walkie::clip::CodecParams;
use walkie::codec::{self, EncodedClip, EncoderConfig};

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
        speech.extend(walkie::audio::load_wav_48k_mono(path).expect("sample WAV loads"));
    }
    assert!(!speech.is_empty(), "no WAV in samples/");
    speech.iter().copied().cycle().take(SIGNAL_SAMPLES).collect()
}

fn config(complexity: u8, bitrate: u32) -> EncoderConfig {
    EncoderConfig { bitrate, complexity, frame_ms: 20 }
}

fn label(cfg: &EncoderConfig) -> String {
    format!("c{}/{}k", cfg.complexity, cfg.bitrate / 1000)
}

/// The raw baseline encoder: libopus with walkie's settings (48 kHz mono VOIP VBR).
fn raw_encoder(cfg: &EncoderConfig) -> opus::Encoder {
    let mut enc = opus::Encoder::new(48_000, Channels::Mono, Application::Voip).expect("libopus encoder");
    enc.set_vbr(true).expect("vbr");
    enc.set_bitrate(Bitrate::Bits(cfg.bitrate as i32)).expect("bitrate");
    enc.set_complexity(i32::from(cfg.complexity)).expect("complexity");
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
/// buffer, drop the pre-skip, append to the output, trim to the input length.
fn raw_decode(params: &CodecParams, packets: &[Vec<u8>], samples: usize) -> Vec<f32> {
    let mut dec = opus::Decoder::new(48_000, Channels::Mono).expect("libopus decoder");
    let mut buf = [0f32; 5_760];
    let mut skip = usize::from(params.pre_skip);
    let mut out = Vec::with_capacity(samples);
    for p in packets {
        if out.len() >= samples {
            break;
        }
        let n = dec.decode_float(p, &mut buf, false).expect("libopus decodes");
        let drop = skip.min(n);
        skip -= drop;
        out.extend_from_slice(&buf[drop..n]);
    }
    out.truncate(samples);
    out
}

fn encode_walkie(pcm: &[f32], cfg: &EncoderConfig) -> EncodedClip {
    codec::encode_pcm(pcm, cfg).expect("walkie encodes")
}

fn decode_walkie(clip: &EncodedClip) -> Vec<f32> {
    codec::decode_packets(&clip.params, &clip.packets, clip.samples).expect("walkie decodes")
}

fn criterion_groups(c: &mut Criterion, pcm: &[f32], clips: &[(EncoderConfig, EncodedClip)]) {
    let mut enc = c.benchmark_group("encode_60s");
    enc.throughput(Throughput::Elements(pcm.len() as u64));
    enc.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    for (cfg, _) in clips {
        let id = label(cfg);
        enc.bench_with_input(BenchmarkId::new("walkie", &id), cfg, |b, cfg| b.iter(|| encode_walkie(black_box(pcm), cfg)));
        enc.bench_with_input(BenchmarkId::new("raw_libopus", &id), cfg, |b, cfg| b.iter(|| raw_encode(black_box(pcm), cfg)));
    }
    enc.finish();

    let mut dec = c.benchmark_group("decode_60s");
    dec.throughput(Throughput::Elements(pcm.len() as u64));
    dec.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (cfg, clip) in clips {
        let id = label(cfg);
        dec.bench_with_input(BenchmarkId::new("walkie", &id), clip, |b, clip| b.iter(|| decode_walkie(black_box(clip))));
        dec.bench_with_input(BenchmarkId::new("raw_libopus", &id), clip, |b, clip| {
            b.iter(|| raw_decode(&clip.params, black_box(&clip.packets), clip.samples as usize))
        });
    }
    dec.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Seconds taken by `f`.
fn secs(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Runs `walkie` and `raw` alternately `pairs` times (the order flips every pair):
/// (median walkie s, median raw s, median of walkie/raw per pair).
fn paired(pairs: usize, mut walkie: impl FnMut(), mut raw: impl FnMut()) -> (f64, f64, f64) {
    let (mut w, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (tw, tr) = if i % 2 == 0 {
            let tw = secs(&mut walkie);
            (tw, secs(&mut raw))
        } else {
            let tr = secs(&mut raw);
            (secs(&mut walkie), tr)
        };
        w.push(tw);
        r.push(tr);
        ratio.push(tw / tr);
    }
    (median(&mut w), median(&mut r), median(&mut ratio))
}

fn summary(pcm: &[f32], clips: &[(EncoderConfig, EncodedClip)], pairs: usize) {
    let audio_s = pcm.len() as f64 / 48_000.0;
    println!();
    println!("## Codec throughput, 60 s of speech, 20 ms frames ({pairs} alternating pairs each, medians)");
    println!();
    println!("| setting | encode walkie (x RT) | encode raw libopus (x RT) | encode walkie/raw | decode walkie (x RT) | decode raw libopus (x RT) | decode walkie/raw |");
    println!("|---|---|---|---|---|---|---|");
    for (cfg, clip) in clips {
        let (ew, er, eratio) = paired(
            pairs,
            || {
                black_box(encode_walkie(black_box(pcm), cfg));
            },
            || {
                black_box(raw_encode(black_box(pcm), cfg));
            },
        );
        // Decoding is ~10x faster: more pairs for the same confidence.
        let (dw, dr, dratio) = paired(
            pairs * 3,
            || {
                black_box(decode_walkie(black_box(clip)));
            },
            || {
                black_box(raw_decode(&clip.params, black_box(&clip.packets), clip.samples as usize));
            },
        );
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.3} |",
            label(cfg),
            audio_s / ew,
            audio_s / er,
            eratio,
            audio_s / dw,
            audio_s / dr,
            dratio
        );
    }
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
        assert_eq!(clip.packets, raw_encode(&pcm, cfg), "{}: walkie and raw libopus packets differ", label(cfg));
        assert_eq!(
            decode_walkie(clip),
            raw_decode(&clip.params, &clip.packets, clip.samples as usize),
            "{}: decoded audio differs",
            label(cfg)
        );
    }

    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    criterion_groups(&mut c, &pcm, &clips);
    c.final_summary();
    if bench_mode {
        let pairs = std::env::var("WALKIE_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        summary(&pcm, &clips, pairs);
    }
}
