//! `shoal-sim`: runs one scenario (and, unless told otherwise, the same scenario with
//! peer-to-peer off) and prints the report as JSON.
//!
//! ```text
//! shoal-sim --viewers 500 --duration 180 --bitrate 2mbit --upload 1x
//! shoal-sim --viewers 500 --upload '30%:1x,50%:2x,20%:8x' --slow 0.2 --churn 0.3
//! shoal-sim --viewers 10000 --duration 300 --upload 1.5x
//! ```

use std::time::Duration;

use clap::Parser;
use shoal_sim::{Rate, RateMix, Scenario};

#[derive(Parser)]
#[command(
    name = "shoal-sim",
    about = "Simulate a Shoal swarm in virtual time and report offload (against its bound), stalls (against HTTP-only) and startup"
)]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Seconds over which viewers join.
    #[arg(long, default_value_t = 30)]
    join_over: u64,
    /// Seconds the run lasts.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Segment duration in milliseconds.
    #[arg(long, default_value_t = 2000)]
    segment_ms: u64,
    /// Media bitrate (`2mbit`, `500kbit`, or bits per second).
    #[arg(long, default_value = "1mbit")]
    bitrate: String,
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    /// Simulate VOD of this many segments instead of a live stream.
    #[arg(long)]
    vod: Option<u64>,
    #[arg(long, default_value_t = 20)]
    neighbours: usize,
    /// Viewers' upload: a mix such as `30%:1x,50%:2x,20%:8x` (multiples of the bitrate)
    /// or absolute rates (`20mbit`).
    #[arg(long, default_value = "20mbit")]
    upload: RateMix,
    /// Viewers' download, the same way.
    #[arg(long, default_value = "50mbit")]
    download: RateMix,
    /// One-way access latency range in milliseconds, `low-high`.
    #[arg(long, default_value = "5-40")]
    latency_ms: String,
    /// Per-viewer loss range (probability a message needs a retransmission), `low-high`.
    #[arg(long, default_value = "0.01-0.01")]
    loss: String,
    /// Origin time to first byte, milliseconds.
    #[arg(long, default_value_t = 40)]
    origin_ttfb_ms: u64,
    /// Origin throughput per request.
    #[arg(long, default_value = "50mbit")]
    origin_rate: String,
    /// Fraction of viewers replaced per minute.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Fraction of viewers whose upload is `--slow-factor` times slower.
    #[arg(long, default_value_t = 0.0)]
    slow: f64,
    #[arg(long, default_value_t = 10)]
    slow_factor: u64,
    /// Fraction of viewers that corrupt what they upload.
    #[arg(long, default_value_t = 0.0)]
    malicious: f64,
    /// Turn peer-to-peer download off (HTTP only).
    #[arg(long)]
    http_only: bool,
    /// Skip the HTTP-only baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Engine setting: peers expected to seed a new segment from the origin.
    #[arg(long)]
    seeders: Option<f64>,
    /// Engine setting: the urgent window, milliseconds.
    #[arg(long)]
    urgent_ms: Option<u64>,
    /// Engine setting: most early copies of each chunk.
    #[arg(long)]
    early_copies: Option<f64>,
}

fn rate(text: &str) -> Result<u64, String> {
    match text.parse::<RateMix>()?.pick(0.0) {
        Rate::Bps(bps) => Ok(bps),
        Rate::TimesBitrate(_) => Err(format!("`{text}` must be an absolute rate")),
    }
}

fn range<T: std::str::FromStr>(text: &str) -> Result<(T, T), String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let parse = |v: &str| v.trim().parse::<T>().map_err(|_| format!("`{text}` is not a range like 5-40"));
    Ok((parse(a)?, parse(b)?))
}

fn scenario(args: Args) -> Result<Scenario, String> {
    let mut scenario = Scenario {
        seed: args.seed,
        viewers: args.viewers,
        join_over: Duration::from_secs(args.join_over),
        duration: Duration::from_secs(args.duration),
        segment_duration: Duration::from_millis(args.segment_ms),
        bitrate_bps: rate(&args.bitrate)?,
        chunk_size: args.chunk_size,
        neighbours: args.neighbours,
        upload: args.upload,
        download: args.download,
        latency_ms: range(&args.latency_ms)?,
        loss: range(&args.loss)?,
        origin_ttfb: Duration::from_millis(args.origin_ttfb_ms),
        origin_bps: rate(&args.origin_rate)?,
        churn_per_minute: args.churn,
        slow_fraction: args.slow,
        slow_factor: args.slow_factor,
        malicious_fraction: args.malicious,
        http_only_baseline: !args.no_baseline,
        ..Scenario::default()
    };
    if let Some(segments) = args.vod {
        scenario.live = false;
        scenario.vod_segments = segments;
        scenario.engine.live = false;
    }
    scenario.engine.p2p_download_enabled = !args.http_only;
    if let Some(seeders) = args.seeders {
        scenario.engine.seeders_per_segment = seeders;
    }
    if let Some(ms) = args.urgent_ms {
        scenario.engine.urgent_window = Duration::from_millis(ms);
    }
    if let Some(copies) = args.early_copies {
        scenario.engine.early_copies = copies;
    }
    Ok(scenario)
}

fn main() {
    let scenario = match scenario(Args::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal-sim: {e}");
            std::process::exit(2);
        }
    };
    let report = shoal_sim::run(&scenario);
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("cannot print the report: {e}"),
    }
}
