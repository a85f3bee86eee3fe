#!/usr/bin/env bash
# Runs every test of the repository:
#   1. native unit, property and integration tests (cargo test, whole workspace), and
#      clippy of the browser crates for wasm32, and the hostile-input engine test built
#      for wasm32 and run in Node (wasm-bindgen-test-runner);
#   2. end-to-end tests: a real signalling node, real headless Chromium, real WebRTC,
#      inside a private network namespace (scripts/netns) so no traffic leaves it.
# Installs what is missing first (scripts/setup.sh). Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh || exit 1
./scripts/build.sh || exit 1

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

echo "== cargo test (native)"
cargo test --release --workspace 2>&1 | tee "$log/cargo.txt"
cargo_status=${PIPESTATUS[0]}

# The browser crates only fully compile for wasm32: lint them there too (warnings fail).
echo "== cargo clippy (wasm32)"
cargo clippy --release -p shoal-browser -p shoal-webrtc -p shoal-sign-wasm --target wasm32-unknown-unknown -- -D warnings
clippy_status=$?

# The engine under hostile input, built for wasm32 (32-bit usize) and run in Node.
echo "== cargo test (wasm32: the engine under hostile input)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --release -p shoal-core --target wasm32-unknown-unknown --test hostile_engine 2>&1 | tee "$log/wasm32.txt"
wasm32_status=${PIPESTATUS[0]}

echo "== end-to-end (Chromium, network namespace)"
./scripts/netns node --test --test-concurrency=1 --test-timeout=900000 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$log/e2e.tap" \
  tests/e2e/*.test.mjs
e2e_status=$?

read -r cargo_pass cargo_fail < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log/cargo.txt" "$log/wasm32.txt")
e2e_pass=$(awk '/^# pass / { print $3 }' "$log/e2e.tap" | tail -1)
e2e_fail=$(awk '/^# fail / { print $3 }' "$log/e2e.tap" | tail -1)
e2e_pass=${e2e_pass:-0}
e2e_fail=${e2e_fail:-0}
# A runner that crashed counts as a failure even if it reported nothing.
[ "$cargo_status" -ne 0 ] && [ "$cargo_fail" -eq 0 ] && cargo_fail=1
[ "$wasm32_status" -ne 0 ] && [ "$cargo_fail" -eq 0 ] && cargo_fail=1
[ "$e2e_status" -ne 0 ] && [ "$e2e_fail" -eq 0 ] && e2e_fail=1
# The wasm32 lint counts as one native check.
if [ "$clippy_status" -eq 0 ]; then cargo_pass=$((cargo_pass + 1)); else cargo_fail=$((cargo_fail + 1)); fi

echo
echo "native: $cargo_pass passed, $cargo_fail failed; end-to-end: $e2e_pass passed, $e2e_fail failed"
echo "$((cargo_pass + e2e_pass)) passed, $((cargo_fail + e2e_fail)) failed"
[ "$cargo_fail" -eq 0 ] && [ "$e2e_fail" -eq 0 ]
