#!/usr/bin/env bash
# Builds the signalling node and the npm package (pkg/). Cargo skips what is current.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p shoal-node -p shoal-load
cargo build -p shoal-browser --target wasm32-unknown-unknown --profile wasm-release
wasm-bindgen --target web --out-dir pkg --out-name shoal \
  target/wasm32-unknown-unknown/wasm-release/shoal_browser.wasm
# Binaryen's -O1 takes ~2% off the gzipped wasm (measured: -Os and -Oz make the raw file
# smaller but the gzipped one larger, so they are not used). The features are those
# Rust 1.95 emits for wasm32-unknown-unknown.
node_modules/binaryen/bin/wasm-opt -O1 --strip-producers \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  pkg/shoal_bg.wasm -o pkg/shoal_bg.wasm
# `shoal/sign` (Node.js): signing records on the publisher's side, a wasm module of its
# own so that pages never download it.
cargo build -p shoal-sign-wasm --target wasm32-unknown-unknown --profile wasm-release
wasm-bindgen --target web --out-dir pkg --out-name shoal_sign \
  target/wasm32-unknown-unknown/wasm-release/shoal_sign_wasm.wasm
# The hand-written JS layer and types of the npm package (sources in web/src/).
cp web/src/index.js web/src/index.d.ts web/src/integration.js web/src/hls.js web/src/hls.d.ts web/src/shaka.js web/src/shaka.d.ts \
  web/src/sign.js web/src/sign.d.ts pkg/
# The demo page loads hls.js from here (no CDN: the demo works offline).
mkdir -p web/vendor
cp node_modules/hls.js/dist/hls.min.js web/vendor/hls.min.js
# The oldest hls.js the package's peerDependencies admit (`?hls=oldest`), for the tests.
cp node_modules/hls.js-oldest/dist/hls.min.js web/vendor/hls-oldest.min.js
# Shaka Player for the demo's `?player=shaka`.
cp node_modules/shaka-player/dist/shaka-player.compiled.js web/vendor/shaka-player.compiled.js
