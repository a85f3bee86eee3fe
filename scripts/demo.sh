#!/usr/bin/env bash
# Runs the demo: a signalling node on this machine that serves the demo page, the npm
# package and a built-in live test stream (looping, with signed segment records). Open the printed URL in several
# tabs or browsers. Extra arguments go to shoal-node (see `shoal-node --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
echo
echo "Shoal demo: open http://localhost:${SHOAL_HTTP_PORT:-8080}/ in several tabs (Ctrl-C stops)."
exec ./target/release/shoal-node --static-dir . --demo-media target/demo-media --http-listen "0.0.0.0:${SHOAL_HTTP_PORT:-8080}" "$@"
