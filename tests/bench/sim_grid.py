#!/usr/bin/env python3
"""The scarce-upload grid: shoal-sim over bitrates × upload/bitrate ratios, each cell run
beside its HTTP-only baseline (same seed), reported against the offload bound.

    tests/bench/sim_grid.py [--viewers 500] [--duration 180] [--grid plain|hostile|both]
                            [--jobs 2] [--bitrates 1,2,4,8] [--ratios 0.5,1,2,4]

`plain`: every viewer's upload is the ratio × the bitrate. `hostile`: the same with 20 %
of viewers whose upload is 10× slower and 30 % of viewers replaced per minute. The
table's last columns say whether the cell meets the issue's rule (offload ≥ 0.9 × bound
plain, ≥ 0.8 × bound hostile; stalls ≤ the HTTP-only run's).
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIM = os.environ.get("SHOAL_SIM", os.path.join(ROOT, "target", "release", "shoal-sim"))


def chunk_size(bitrate_mbit):
    """What a publisher should pick (see README): about 16 chunks per 2 s segment, between
    16 KiB and 64 KiB (shoal-sign's default, shoal_core::integrity::chunk_size_for)."""
    segment = bitrate_mbit * 1_000_000 * 2 / 8
    size = 16 * 1024
    while size < 64 * 1024 and segment / size > 16:
        size *= 2
    return size


def run_cell(args, grid, bitrate, ratio):
    cmd = [SIM, "--viewers", str(args.viewers), "--duration", str(args.duration),
           "--bitrate", f"{bitrate}mbit", "--upload", f"{ratio}x",
           "--chunk-size", str(chunk_size(bitrate)), "--seed", str(args.seed)]
    if grid == "hostile":
        cmd += ["--slow", "0.2", "--slow-factor", "10", "--churn", "0.3"]
    started = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    report["_cmd"] = " ".join(os.path.relpath(c, ROOT) if c == SIM else c for c in cmd)
    report["_wall"] = time.time() - started
    return grid, bitrate, ratio, report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--viewers", type=int, default=500)
    p.add_argument("--duration", type=int, default=180)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--grid", choices=["plain", "hostile", "both"], default="both")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--bitrates", default="1,2,4,8")
    p.add_argument("--ratios", default="0.5,1,2,4")
    p.add_argument("--json", help="also write every report here")
    args = p.parse_args()
    grids = ["plain", "hostile"] if args.grid == "both" else [args.grid]
    bitrates = [float(b) if "." in b else int(b) for b in args.bitrates.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    cells = [(g, b, r) for g in grids for b in bitrates for r in ratios]
    print(f"shoal-sim grid: {args.viewers} viewers, {args.duration} s live, 2 s segments, "
          f"seed {args.seed}; each cell beside its HTTP-only run", flush=True)
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda c: run_cell(args, *c), cells):
            results.append(result)
            grid, bitrate, ratio, r = result
            need = 0.9 if grid == "plain" else 0.8
            ok_offload = r["offload_vs_bound"] >= need
            ok_stalls = r["stalls"] <= (r["http_only_stalls"] or 0)
            print(f"{grid:7} {bitrate:>2} Mbit/s upload {ratio:>3}x: offload {r['offload']:.3f} "
                  f"bound {r['offload_bound']:.3f} ratio {r['offload_vs_bound']:.2f} "
                  f"(≥{need}: {'yes' if ok_offload else 'NO'}), stalls {r['stalls']} vs HTTP-only "
                  f"{r['http_only_stalls']} ({'ok' if ok_stalls else 'WORSE'}), "
                  f"origin copies/segment {r['origin_copies_per_segment']:.1f}, "
                  f"upload used {r['upload_utilisation']:.2f}, latency {r['live_latency_seconds']:.1f} s, "
                  f"wall {r['_wall']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"grid": g, "bitrate_mbit": b, "ratio": r, "report": rep} for g, b, r, rep in results], f, indent=1)
    failed = [(g, b, r) for g, b, r, rep in results
              if rep["offload_vs_bound"] < (0.9 if g == "plain" else 0.8)
              or rep["stalls"] > (rep["http_only_stalls"] or 0)]
    print(f"{len(results) - len(failed)} of {len(results)} cells meet the rule", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
