# Benchmark: a 10,000-viewer live swarm in the simulator (see crates/shoal-sim).
# 5 minutes of live stream with 2 s segments; viewers join over the first minute and
# play 3 segments behind the live edge (hls.js default). 500 kbit/s media with 32 KiB
# chunks: every chunk is still hashed and checked by every viewer that receives it, so
# the bitrate sets how much BLAKE3 work the run does, not what the scheduler does.
set -euo pipefail
cargo build --release -p shoal-sim
args=(--viewers 10000 --duration 300 --join-over 60 --bitrate 500000 --chunk-size 32768 --seed 1)
echo "command: target/release/shoal-sim ${args[*]}"
/usr/bin/time -f 'wall %e s, peak RSS %M KiB' target/release/shoal-sim "${args[@]}"
