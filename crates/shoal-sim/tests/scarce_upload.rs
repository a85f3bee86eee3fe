//! The corners of the scarce-upload grid (`tests/bench/sim_grid.py`, 500 viewers × 3 min
//! per cell) at a size CI can afford: each asserts the grid's rule — offload at least
//! 0.9 × the run's bound (0.8 × with slow peers and churn) and no more stalls than the
//! HTTP-only run with the same seed.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use shoal_sim::{Rate, RateMix, Report, Scenario, run};

/// `viewers` viewers of `bitrate_mbit`, each uploading `ratio` × the bitrate, with the
/// chunk size a publisher would pick (about 16 chunks per segment, 16–64 KiB).
fn corner(bitrate_mbit: u64, ratio: f64) -> Scenario {
    let bitrate_bps = bitrate_mbit * 1_000_000;
    let chunk_size = shoal_core::integrity::chunk_size_for(bitrate_bps * 2 / 8);
    Scenario {
        viewers: 120,
        duration: Duration::from_secs(120),
        join_over: Duration::from_secs(20),
        bitrate_bps,
        chunk_size,
        upload: RateMix::fixed(Rate::TimesBitrate(ratio)),
        ..Scenario::default()
    }
}

fn hostile(scenario: Scenario) -> Scenario {
    Scenario { slow_fraction: 0.2, slow_factor: 10, churn_per_minute: 0.3, ..scenario }
}

fn check(name: &str, report: &Report, min_ratio: f64) {
    let baseline = report.http_only_stalls.expect("the HTTP-only run ran beside it");
    let line = format!(
        "{name}: offload {:.3}, bound {:.3}, ratio {:.3} (need {min_ratio}), stalls {} vs HTTP-only {baseline}, origin copies/segment {:.1}",
        report.offload, report.offload_bound, report.offload_vs_bound, report.stalls, report.origin_copies_per_segment
    );
    eprintln!("{line}");
    assert!(report.offload_vs_bound >= min_ratio, "{line}");
    assert!(report.stalls <= baseline, "peers made playback worse: {line}");
    assert_eq!(report.segments_failed, 0, "{line}");
}

#[test]
fn one_mbit_upload_half_the_bitrate() {
    check("1 Mbit/s, upload 0.5x", &run(&corner(1, 0.5)), 0.9);
}

#[test]
fn one_mbit_upload_four_times_the_bitrate() {
    check("1 Mbit/s, upload 4x", &run(&corner(1, 4.0)), 0.9);
}

#[test]
fn four_mbit_upload_half_the_bitrate() {
    check("4 Mbit/s, upload 0.5x", &run(&corner(4, 0.5)), 0.9);
}

#[test]
fn four_mbit_upload_four_times_the_bitrate() {
    check("4 Mbit/s, upload 4x", &run(&corner(4, 4.0)), 0.9);
}

#[test]
fn slow_peers_and_churn_at_upload_equal_to_the_bitrate() {
    check("2 Mbit/s, upload 1x, 20 % slow, 30 %/min churn", &run(&hostile(corner(2, 1.0))), 0.8);
}
