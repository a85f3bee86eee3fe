//! The swarm scenarios of the piece-engine issue, run through the real engine in the
//! simulator: 100 viewers of a 5-minute live stream with 2 s segments, joining over the
//! first 30 s, at hls.js's default distance from the live edge (3 segments).
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use shoal_sim::{Report, Scenario, run};

fn live_100() -> Scenario {
    Scenario {
        viewers: 100,
        duration: Duration::from_secs(300),
        join_over: Duration::from_secs(30),
        ..Scenario::default()
    }
}

/// Everything but wall-clock measurements, for determinism checks.
fn deterministic_part(report: &Report) -> Report {
    Report { wall_seconds: 0.0, memory_per_viewer_bytes: 0, ..report.clone() }
}

fn describe(report: &Report) -> String {
    format!(
        "offload {:.4} (ceiling {:.2}), stalls {} ({:.2} s), origin copies/segment {:.2}, latency {:.1} s, startup median {:.0} ms max {:.0} ms, failed {}",
        report.offload,
        report.offload_ceiling,
        report.stalls,
        report.stall_seconds,
        report.origin_copies_per_segment,
        report.live_latency_seconds,
        report.startup_median_ms,
        report.startup_max_ms,
        report.segments_failed
    )
}

#[test]
fn hundred_viewers_live_offload_and_no_stalls_deterministically() {
    let scenario = live_100();
    let first = run(&scenario);
    eprintln!("{}", describe(&first));
    assert!(first.offload >= 0.95, "offload below 95 %: {}", describe(&first));
    assert_eq!(first.stalls, 0, "{}", describe(&first));
    assert_eq!(first.segments_failed, 0);
    assert_eq!(first.corrupt_deliveries, 0);
    // Every viewer watched: ~30 s of joining, then 5 minutes of 2 s segments.
    assert!(first.segments_delivered > 100 * 120, "{} segments delivered", first.segments_delivered);
    // Latency as hls.js plays it: about three segments behind the live edge.
    assert!((5.0..9.0).contains(&first.live_latency_seconds), "{}", describe(&first));

    let again = run(&scenario);
    assert_eq!(deterministic_part(&first), deterministic_part(&again), "same seed, same result");
    let other = run(&Scenario { seed: 2, ..scenario });
    assert_ne!(deterministic_part(&first), deterministic_part(&other), "the seed matters");
}

#[test]
fn corrupting_peers_are_cut_off_and_nothing_corrupt_reaches_a_player() {
    let report = run(&Scenario { malicious_fraction: 0.1, ..live_100() });
    eprintln!(
        "{} — malicious {}, corrupting {}, cut off {}",
        describe(&report),
        report.malicious_viewers,
        report.corrupting_viewers,
        report.corrupting_viewers_cut_off
    );
    assert!(report.malicious_viewers >= 5, "the scenario has malicious viewers");
    assert!(report.corrupting_viewers > 0, "and they did send corrupt data");
    assert_eq!(
        report.corrupting_viewers_cut_off, report.corrupting_viewers,
        "every one was cut off by every peer it corrupted"
    );
    assert_eq!(report.corrupt_deliveries, 0);
    assert_eq!(report.corrupt_bytes_delivered, 0);
    assert_eq!(report.stalls, 0, "{}", describe(&report));
}

#[test]
fn churn_of_thirty_percent_per_minute() {
    let report = run(&Scenario { churn_per_minute: 0.3, ..live_100() });
    eprintln!("{} — {} viewers in all", describe(&report), report.viewers_total);
    assert!(report.viewers_total >= 100 + 60, "churn replaced viewers: {}", report.viewers_total);
    assert_eq!(report.stalls, 0, "{}", describe(&report));
    assert!(report.offload >= 0.90, "{}", describe(&report));
}

#[test]
fn a_fifth_of_the_peers_ten_times_slower() {
    let report = run(&Scenario { slow_fraction: 0.2, slow_factor: 10, ..live_100() });
    eprintln!("{}", describe(&report));
    assert_eq!(report.stalls, 0, "{}", describe(&report));
    assert!(report.offload >= 0.90, "{}", describe(&report));
}

#[test]
fn vod_viewers_at_different_positions() {
    let mut scenario = Scenario { live: false, vod_segments: 200, ..live_100() };
    scenario.engine.live = false;
    let report = run(&scenario);
    eprintln!("{}", describe(&report));
    assert_eq!(report.stalls, 0, "{}", describe(&report));
    assert_eq!(report.segments_failed, 0);
    assert!(report.offload >= 0.85, "{}", describe(&report));
}

#[test]
fn http_only_baseline_is_all_origin_and_never_stalls() {
    let mut scenario = live_100();
    scenario.engine.p2p_download_enabled = false;
    let report = run(&scenario);
    assert_eq!(report.bytes_from_peers, 0);
    assert_eq!(report.offload, 0.0);
    assert_eq!(report.stalls, 0);
    // Every viewer fetched every segment it played from the origin.
    assert!(report.origin_copies_per_segment > 90.0, "{}", describe(&report));
}
