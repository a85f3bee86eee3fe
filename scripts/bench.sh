#!/usr/bin/env bash
# Runs a benchmark. Usage: scripts/bench.sh <name>
#   transport  goodput vs raw RTCDataChannel, connect time (browser, network namespace)
#   sim        10,000-viewer swarm simulation (wall time, offload, origin egress, memory)
#   offload    4/8/12 tabs playing the demo stream vs plain hls.js: offload, stalls, CPU, memory
#   size       the npm package's download size, gzipped and brotli
#   node       node capacity: browser-like peers (shoal-load) over WebSocket and /webrtc-direct
#   node-probes  the node under hostile connections and a 100k-datagram spoofed STUN flood
#   fieldlab   NAT pairs x {STUN, STUN + TURN}: connection success and time (field lab)
#   join       fresh pages joining one swarm: 100 pairs and 20 bursts of 8, time to neighbours
#   shaped     6 viewers on shaped links (upload 1.5x the bitrate, loss): offload vs bound, stalls vs HTTP-only
#   grid       the scarce-upload simulator grid (500 viewers, bitrate x upload), vs its bound
#   profile    where a viewer tab's main thread spends its time (V8 CPU profile)
# Results go to stdout; copy them, with this command, into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/bench.sh <benchmark name>}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
if [ -f "tests/bench/$name.sh" ]; then
  exec bash "tests/bench/$name.sh"
fi
./scripts/setup.sh
./scripts/build.sh
echo "$(/usr/bin/chromium --version 2>/dev/null | tail -1)"
exec ./scripts/netns node "tests/bench/$name.mjs"
