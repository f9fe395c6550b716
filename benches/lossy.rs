//! Live voice over lossy, jittery paths: recorded speech talked live through the impairing
//! UDP proxy of `tests/support/impair.rs` (both clients, both ways) and scored where bob's
//! player put it out, for a sweep of datagram loss (0, 5, 10, 20% each way) and jitter
//! (30 ms of delay ± 0, 20, 50 ms), each run twice in the same process:
//!
//! * **stream only**: live packets on the clip's reliable QUIC stream alone and no in-band
//!   FEC ([`Client::connect_stream_only`](walkie_client::Client::connect_stream_only)), how
//!   walkie carried live audio before datagrams (the "before");
//! * **resilient**: datagrams beside the stream with repeats, in-band FEC tuned to the loss
//!   left, the datagram-aware jitter buffer (the default, the "after").
//!
//! Each row reports live PESQ-WB against the speech, the stored clip's PESQ-WB, mouth to ear
//! (from the speech entering the paced source to it leaving bob's paced sink, located per
//! 400 ms window of speech) at p50 and p95, the jitter buffer's counts, and the UDP payload
//! bytes per second of speech through the proxy, both clients, each way: the cost of
//! resilience.
//!
//! `cargo bench --bench lossy` runs the 24 rows and a loss-free reference (about 6 minutes);
//! without `--bench` (as `cargo test --benches` runs it), one row of each kind. The table is
//! printed as markdown and written to `target/walkie-bench/lossy.md`, the chart of live PESQ
//! against loss to `target/walkie-bench/lossy-pesq.png`.

#[path = "../tests/support/mod.rs"]
mod support;

/// Where the reports go.
#[path = "support/out.rs"]
mod out;

/// Shared by the benchmarks; each draws one kind of chart.
#[allow(dead_code)]
#[path = "support/chart.rs"]
mod chart;

use std::fmt::Write as _;
use std::path::Path;

use support::impair::Impairment;
use support::live_path::{Carriage, Run, talk_through};
use support::quantile;

/// One-way delay of the impaired rows, before jitter.
const DELAY_MS: u64 = 30;

/// One measured configuration.
struct Row {
    carriage: Carriage,
    loss_pct: u32,
    /// `None`: no impairment at all (the reference).
    jitter_ms: Option<u64>,
    run: Run,
}

fn name(c: Carriage) -> &'static str {
    match c {
        Carriage::StreamOnly => "stream only",
        Carriage::Resilient => "resilient",
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (losses, jitters): (&[u32], &[u64]) = if full {
        (&[0, 5, 10, 20], &[0, 20, 50])
    } else {
        (&[10], &[20])
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (wav, speech) = support::recorded_speech(dir.path());
    let mut plan = vec![(Carriage::Resilient, 0, None)];
    for carriage in [Carriage::StreamOnly, Carriage::Resilient] {
        for &loss in losses {
            for &jitter in jitters {
                plan.push((carriage, loss, Some(jitter)));
            }
        }
    }
    let mut rows = Vec::new();
    for (k, (carriage, loss_pct, jitter_ms)) in plan.into_iter().enumerate() {
        let path = jitter_ms.map_or(Impairment::NONE, |j| {
            Impairment::new(f64::from(loss_pct) / 100.0, DELAY_MS, j)
        });
        // The same seed for both carriages: the same drops and delays of the proxy's dice.
        let seed = 1000 + u64::from(loss_pct) * 100 + jitter_ms.unwrap_or(999);
        let run = rt.block_on(talk_through(
            &dir.path().join(format!("run{k}")),
            path,
            seed,
            None,
            &wav,
            &speech,
            carriage,
        ));
        let row = Row {
            carriage,
            loss_pct,
            jitter_ms,
            run,
        };
        eprintln!("{}", line(&row));
        rows.push(row);
    }
    let md = report(&rows, full);
    println!("{md}");
    let out = out::out_dir();
    if let Err(e) =
        std::fs::create_dir_all(&out).and_then(|()| std::fs::write(out.join("lossy.md"), &md))
    {
        eprintln!("cannot write {}: {e}", out.display());
    }
    chart_pesq(&rows, &out);
}

fn path_name(r: &Row) -> String {
    match r.jitter_ms {
        None => "none".into(),
        Some(j) => format!("{}%, {DELAY_MS} ± {j} ms", r.loss_pct),
    }
}

/// One markdown row.
fn line(r: &Row) -> String {
    let run = &r.run;
    let s = run.stats;
    format!(
        "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
        name(r.carriage),
        path_name(r),
        run.pesq,
        run.stored_pesq,
        quantile(&run.mouth_to_ear, 0.5),
        quantile(&run.mouth_to_ear, 0.95),
        s.late,
        s.skipped + s.expanded + s.stretched,
        s.recovered,
        s.drained + s.overflowed,
        if run.stored_exact { "yes" } else { "NO" },
        run.up_bytes as f64 / run.seconds / 1e3,
        run.down_bytes as f64 / run.seconds / 1e3,
    )
}

fn report(rows: &[Row], full: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Live speech through the impairing proxy ({} rows{}): PESQ-WB of what bob's player \
         put out and of the stored clip; mouth to ear over 400 ms windows of speech; the \
         jitter buffer's counts (late first copies; concealed frames, inserted or for a lost \
         packet; lost packets decoded from the next one's FEC data; frames dropped to drain); \
         the stored clip equal to what alice encoded; UDP payload kB per second of talk \
         through the proxy, both clients, up (to the relay) and down.\n",
        rows.len(),
        if full {
            ""
        } else {
            ", a short run without --bench"
        }
    );
    md.push_str(
        "| carriage | loss each way, delay ± jitter | live PESQ | stored PESQ | m2e p50 ms | m2e p95 ms | late | concealed | FEC-recovered | dropped | stored exact | up kB/s | down kB/s |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        md.push_str(&line(r));
        md.push('\n');
    }
    md
}

/// Live PESQ against loss: one line per carriage and jitter (stream only dashed).
fn chart_pesq(rows: &[Row], dir: &Path) {
    let mut series = Vec::new();
    for carriage in [Carriage::Resilient, Carriage::StreamOnly] {
        let mut jitters: Vec<u64> = rows.iter().filter_map(|r| r.jitter_ms).collect();
        jitters.sort_unstable();
        jitters.dedup();
        for (k, j) in jitters.into_iter().enumerate() {
            series.push(chart::Series {
                name: format!("{}, {DELAY_MS} ± {j} ms", name(carriage)),
                points: rows
                    .iter()
                    .filter(|r| r.carriage == carriage && r.jitter_ms == Some(j))
                    .map(|r| (f64::from(r.loss_pct), f64::from(r.run.pesq)))
                    .collect(),
                dashed: carriage == Carriage::StreamOnly,
                // One colour per jitter; stream only dashed beside resilient.
                color: Some(k),
            });
        }
    }
    let path = dir.join("lossy-pesq.png");
    let axes = chart::Axes {
        x_desc: "datagram loss, each way (%)",
        y_desc: "live PESQ-WB",
        x: -1.0..21.0,
        y: 1.0..4.6,
    };
    match chart::lines_png(
        &path,
        "walkie live speech through an impairing proxy (2 vCPU, loopback)",
        &axes,
        &series,
        (900, 560),
    ) {
        Ok(()) => println!("chart: {}", path.display()),
        Err(e) => eprintln!("no chart: {e}"),
    }
}
