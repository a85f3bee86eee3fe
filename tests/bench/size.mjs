// Benchmark: what a page downloads to run Shoal — the npm package's wasm and JS, as
// built by scripts/build.sh — gzipped (level 9) and brotli-compressed (quality 11), next
// to hls.js (the player the site already ships) for scale. Target: ≤ 400 KB gzipped.
//
// Run: scripts/bench.sh size

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { ROOT } from '../e2e/harness.mjs';

const TARGET_GZ = 400 * 1000;
const files = ['shoal_bg.wasm', 'shoal.js', 'index.js', 'hls.js'].map((f) => join(ROOT, 'pkg', f));

function sizes(path) {
  const raw = readFileSync(path);
  return {
    raw: raw.length,
    gzip: gzipSync(raw, { level: 9 }).length,
    brotli: brotliCompressSync(raw, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
  };
}

const kb = (n) => `${(n / 1000).toFixed(1)} KB`;
const total = { raw: 0, gzip: 0, brotli: 0 };
console.log('| file | raw | gzip -9 | brotli 11 |');
console.log('|---|---|---|---|');
for (const file of files) {
  const s = sizes(file);
  for (const k of Object.keys(total)) total[k] += s[k];
  console.log(`| pkg/${file.split('/').pop()} | ${kb(s.raw)} | ${kb(s.gzip)} | ${kb(s.brotli)} |`);
}
console.log(`| **Shoal total** | ${kb(total.raw)} | **${kb(total.gzip)}** | ${kb(total.brotli)} |`);
const hls = sizes(join(ROOT, 'node_modules/hls.js/dist/hls.min.js'));
console.log(`| hls.min.js (reference) | ${kb(hls.raw)} | ${kb(hls.gzip)} | ${kb(hls.brotli)} |`);
console.log(`\nShoal gzipped: ${kb(total.gzip)} = ${(total.gzip / TARGET_GZ).toFixed(2)} × the 400 KB target, ${(total.gzip / hls.gzip).toFixed(2)} × hls.js`);
