#!/usr/bin/env bash
# The scarce-upload grid (tests/bench/sim_grid.py): 500 viewers, 3 min live, bitrates
# 1/2/4/8 Mbit/s x upload 0.5/1/2/4 x the bitrate, plain and with slow peers and churn,
# each cell beside its HTTP-only run. Long: about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p shoal-sim
exec python3 tests/bench/sim_grid.py --grid both --jobs "${BENCH_JOBS:-2}" "$@"
