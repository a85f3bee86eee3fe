//! `shoal-sim`: runs one scenario and prints its report as JSON.
//!
//! ```text
//! shoal-sim --viewers 100 --duration 300 --seed 7
//! shoal-sim --viewers 10000 --duration 120 --bitrate 256000 --chunk-size 16384
//! ```

use std::time::Duration;

use clap::Parser;
use shoal_sim::Scenario;

#[derive(Parser)]
#[command(name = "shoal-sim", about = "Simulate a Shoal swarm in virtual time and report offload, stalls and startup")]
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
    /// Media bitrate in bits per second.
    #[arg(long, default_value_t = 1_000_000)]
    bitrate: u64,
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_size: u32,
    /// Simulate VOD of this many segments instead of a live stream.
    #[arg(long)]
    vod: Option<u64>,
    #[arg(long, default_value_t = 20)]
    neighbours: usize,
    /// Fraction of viewers replaced per minute.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Fraction of viewers 10× slower than the rest.
    #[arg(long, default_value_t = 0.0)]
    slow: f64,
    /// Fraction of viewers that corrupt what they upload.
    #[arg(long, default_value_t = 0.0)]
    malicious: f64,
    /// Peer upload bandwidth, bits per second.
    #[arg(long, default_value_t = 20_000_000)]
    upload_bps: u64,
    /// Turn peer-to-peer download off (HTTP-only baseline).
    #[arg(long)]
    http_only: bool,
}

fn main() {
    let args = Args::parse();
    let mut scenario = Scenario {
        seed: args.seed,
        viewers: args.viewers,
        join_over: Duration::from_secs(args.join_over),
        duration: Duration::from_secs(args.duration),
        segment_duration: Duration::from_millis(args.segment_ms),
        bitrate_bps: args.bitrate,
        chunk_size: args.chunk_size,
        neighbours: args.neighbours,
        churn_per_minute: args.churn,
        slow_fraction: args.slow,
        malicious_fraction: args.malicious,
        upload_bps: args.upload_bps,
        ..Scenario::default()
    };
    if let Some(segments) = args.vod {
        scenario.live = false;
        scenario.vod_segments = segments;
        scenario.engine.live = false;
    }
    scenario.engine.p2p_download_enabled = !args.http_only;
    let report = shoal_sim::run(&scenario);
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("cannot print the report: {e}"),
    }
}
