#!/usr/bin/env bash
# The node under the attacks anyone can make (tests/e2e/node-probes.test.mjs), with the
# STUN flood at benchmark scale: 100,000 spoofed datagrams at 10,000/s, and pages from a
# known network joining one after another while it runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
./scripts/build.sh
SHOAL_FLOOD_COUNT=${SHOAL_FLOOD_COUNT:-100000} SHOAL_FLOOD_RATE=${SHOAL_FLOOD_RATE:-10000} SHOAL_FLOOD_JOINS=${SHOAL_FLOOD_JOINS:-100} \
  exec ./scripts/netns node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec tests/e2e/node-probes.test.mjs
