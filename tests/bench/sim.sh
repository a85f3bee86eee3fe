# Benchmark: a 10,000-viewer live swarm in the simulator (see crates/shoal-sim), the
# issue-10 target (<= 5 minutes of wall time on one core for 5 minutes of stream).
# Defaults otherwise: 1 Mbit/s media in 2 s segments, 64 KiB chunks, viewers joining over
# the first 30 s with 20 Mbit/s of upload each, and the HTTP-only run of the same
# viewers beside it (its stalls are the report's `http_only_stalls`). Every viewer runs
# the real engine; chunk and record checks are real, each distinct chunk and record
# checked once for all viewers (shoal_core::CheckMemo: the viewers share one origin's
# buffers).
set -euo pipefail
cargo build --release -p shoal-sim
args=(--viewers 10000 --duration 300 --seed 1)
echo "command: target/release/shoal-sim ${args[*]}"
/usr/bin/time -f 'wall %e s, peak RSS %M KiB' target/release/shoal-sim "${args[@]}"
