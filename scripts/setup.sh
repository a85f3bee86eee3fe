#!/usr/bin/env bash
# Installs what building and testing Shoal needs, skipping what is already there:
# the wasm32 target, wasm-bindgen-cli at the version Cargo.lock pins, Debian's Chromium,
# Firefox ESR, ffmpeg and iptables, and the npm packages of package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# rust-toolchain.toml names the toolchain and the wasm32 target; rustup installs both
# on first use, but ask explicitly so a missing target fails here, clearly.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  step "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

want_bindgen=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
have_bindgen=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_bindgen" != "$want_bindgen" ]; then
  step "installing wasm-bindgen-cli $want_bindgen (found: ${have_bindgen:-none})"
  cargo install wasm-bindgen-cli --version "$want_bindgen" --locked
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The end-to-end suite's second browser (tests/e2e/firefox.test.mjs), over WebDriver BiDi.
command -v firefox-esr >/dev/null || missing+=(firefox-esr)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
# The field lab's NAT routers (tests/e2e/fieldlab.mjs).
command -v iptables >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm ci only when node_modules does not match the lock file.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.shoal-lock-stamp; then
  step "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.shoal-lock-stamp
fi

# The demo's live test stream: 60 s of 360p H.264 + AAC as 2 s MPEG-TS segments, looped
# by the node. Generated, never committed.
media=target/demo-media
if [ ! -f "$media/stream.m3u8" ]; then
  step "generating the demo stream with ffmpeg (about 15 s)"
  mkdir -p "$media"
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=640x360:rate=25" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 60 -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p \
    -b:v 500k -maxrate 600k -bufsize 1200k -g 50 -keyint_min 50 -sc_threshold 0 \
    -c:a aac -b:a 64k -ac 2 \
    -f hls -hls_time 2 -hls_playlist_type vod -hls_segment_filename "$media/seg%03d.ts" \
    "$media/stream.m3u8.tmp"
  mv "$media/stream.m3u8.tmp" "$media/stream.m3u8"
fi

# The same content as fMP4/CMAF (an init segment, then .m4s media segments): remuxed
# from the MPEG-TS rendition, no re-encoding. The demo's default stream.
if [ ! -f "$media/fmp4/stream.m3u8" ]; then
  step "remuxing the demo stream to fMP4"
  mkdir -p "$media/fmp4"
  ffmpeg -hide_banner -loglevel error -y -i "$media/stream.m3u8" -c copy -bsf:a aac_adtstoasc \
    -f hls -hls_time 2 -hls_playlist_type vod -hls_segment_type fmp4 \
    -hls_fmp4_init_filename init.mp4 -hls_segment_filename "$media/fmp4/seg%03d.m4s" \
    "$media/fmp4/stream.m3u8.tmp"
  mv "$media/fmp4/stream.m3u8.tmp" "$media/fmp4/stream.m3u8"
fi

# And as DASH (a static MPD, one representation each for video and audio, numbered
# SegmentTemplate): what the Shaka Player DASH test signs with `shoal-sign mpd`.
if [ ! -f "$media/dash/stream.mpd" ]; then
  step "remuxing the demo stream to DASH"
  rm -rf "$media/dash.tmp" && mkdir -p "$media/dash.tmp"
  ffmpeg -hide_banner -loglevel error -y -i "$media/fmp4/stream.m3u8" -c copy -map 0:v -map 0:a \
    -f dash -seg_duration 2 -use_template 1 -use_timeline 0 \
    -init_seg_name 'init-$RepresentationID$.m4s' -media_seg_name 'seg-$RepresentationID$-$Number%03d$.m4s' \
    "$media/dash.tmp/stream.mpd"
  rm -rf "$media/dash" && mv "$media/dash.tmp" "$media/dash"
fi
