// The shaped lab's small corner (tests/e2e/shaped-lab.mjs; the full run is
// `scripts/bench.sh shaped`): four viewers, each its own Chromium behind a NAT, upload
// 1.5× the stream's bitrate, 0.5 % loss each way. Peers must never make playback worse
// than plain HLS on the same links, and must carry a fair share of what the viewers'
// uplinks allow.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runShapedLab } from './shaped-lab.mjs';

test('viewers on links with upload 1.5x the bitrate: offload near the bound, no stall plain HLS does not have', async () => {
  const result = await runShapedLab({ viewers: 4, uploadX: 1.5, loss: 0.005, warmup: 12000, measure: 30000 });
  console.log(result.lines.join('\n'));
  assert.deepEqual(result.shoal.fatal, [], 'no fatal player error');
  assert.ok(result.shoal.stalls <= result.http.stalls, `stalls: Shoal ${result.shoal.stalls}, HTTP-only ${result.http.stalls}`);
  // The benchmark's target is 0.8 of the bound (6 viewers, 60 s); this corner is shorter
  // and smaller, so it asks for less, enough to catch a swarm that stopped relaying.
  assert.ok(result.ratio >= 0.6, `offload ${result.shoal.offload.toFixed(3)} is ${result.ratio.toFixed(2)} of the bound ${result.bound.toFixed(3)}`);
});
