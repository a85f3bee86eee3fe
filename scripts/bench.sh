#!/usr/bin/env bash
# Runs a benchmark inside the test network namespace. Usage: scripts/bench.sh <name>
# where <name> is a file in tests/bench/ (transport, ...). Results go to stdout; copy
# them, with this command, into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/bench.sh <benchmark name>}
./scripts/setup.sh
./scripts/build.sh
echo "machine: $(nproc) cores, $(uname -r); $(/usr/bin/chromium --version 2>/dev/null | tail -1)"
exec ./scripts/netns node "tests/bench/$name.mjs"
