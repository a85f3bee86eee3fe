#!/usr/bin/env bash
# Builds the signalling node and the npm package (pkg/). Cargo skips what is current.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p shoal-node
cargo build -p shoal-browser --target wasm32-unknown-unknown --profile wasm-release
wasm-bindgen --target web --out-dir pkg --out-name shoal \
  target/wasm32-unknown-unknown/wasm-release/shoal_browser.wasm
