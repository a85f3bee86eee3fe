// Benchmark: the demo's live stream played by viewers on shaped links (issue 10's lab,
// tests/e2e/shaped-lab.mjs): plain hls.js, then Shoal, on the same viewers and links.
// Reports offload against the run's bound (target: ≥ 0.8 of it) and stalls against the
// HTTP-only run (target: no more).
//
// Run: scripts/bench.sh shaped
// Env: BENCH_VIEWERS=6, BENCH_UPLOAD_X=1.5, BENCH_DOWN_X=10, BENCH_LOSS=0.005,
//      BENCH_WARMUP_S=20, BENCH_MEASURE_S=60, BENCH_FORMAT=fmp4|ts

import { runShapedLab } from '../e2e/shaped-lab.mjs';

const result = await runShapedLab({
  viewers: Number(process.env.BENCH_VIEWERS ?? 6),
  uploadX: Number(process.env.BENCH_UPLOAD_X ?? 1.5),
  downX: Number(process.env.BENCH_DOWN_X ?? 10),
  loss: Number(process.env.BENCH_LOSS ?? 0.005),
  warmup: Number(process.env.BENCH_WARMUP_S ?? 20) * 1000,
  measure: Number(process.env.BENCH_MEASURE_S ?? 60) * 1000,
  format: process.env.BENCH_FORMAT ?? 'fmp4',
});
console.log(result.lines.join('\n'));
const met = result.ratio >= 0.8 && result.shoal.stalls <= result.http.stalls;
console.log(`target (offload >= 0.8 x bound, stalls <= HTTP-only's): ${met ? 'met' : 'NOT met'}`);
