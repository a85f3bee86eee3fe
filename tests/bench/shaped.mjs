// Benchmark: the demo's live stream played by viewers on shaped links (issue 10's lab).
// Each viewer is its own Chromium (default WebRTC privacy) in its own namespace, two per
// home behind cone NAT routers (tests/e2e/fieldlab.mjs); the node (with its STUN server)
// and the origin are on the lab's "internet". Every viewer's upload is UPLOAD_X times the
// stream's bitrate (measured from the origin's playlist), its download DOWN_X times, LOSS
// of its packets dropped each way. The same viewers on the same links play the stream
// twice: with plain hls.js (`?shoal=0`, the HTTP-only baseline), then with Shoal.
//
// Reported: offload, the run's bound — min((N−1)/N, C / D), C what the viewers' uplinks
// could carry over the measured time, D the segment bytes they received (README, "How
// segments move") — offload / bound, stalls and `waiting` events of both runs, how much
// of their uplinks the viewers used.
//
// Run: scripts/bench.sh shaped
// Env: BENCH_VIEWERS=6, BENCH_UPLOAD_X=1.5, BENCH_DOWN_X=10, BENCH_LOSS=0.005,
//      BENCH_WARMUP_S=20, BENCH_MEASURE_S=60, BENCH_FORMAT=fmp4|ts

import { setTimeout as sleep } from 'node:timers/promises';
import { startNode } from '../e2e/harness.mjs';
import { PUBLIC_IP, createFieldLab } from '../e2e/fieldlab.mjs';
import { measurePlayback } from '../e2e/video-harness.mjs';

const VIEWERS = Number(process.env.BENCH_VIEWERS ?? 6);
const UPLOAD_X = Number(process.env.BENCH_UPLOAD_X ?? 1.5);
const DOWN_X = Number(process.env.BENCH_DOWN_X ?? 10);
const LOSS = Number(process.env.BENCH_LOSS ?? 0.005);
const WARMUP = Number(process.env.BENCH_WARMUP_S ?? 20) * 1000;
const MEASURE = Number(process.env.BENCH_MEASURE_S ?? 60) * 1000;
const FORMAT = process.env.BENCH_FORMAT ?? 'fmp4';

/** The stream's bitrate in bits/s: bytes of the newest segments over their duration. */
export async function streamBitrate(node, format) {
  const base = `${node.url}/demo/${format === 'ts' ? 'live' : 'fmp4'}/`;
  let playlist = await (await fetch(`${base}stream.m3u8`)).text();
  const variant = playlist.split('\n').find((l) => l && !l.startsWith('#') && playlist.includes('#EXT-X-STREAM-INF'));
  let dir = base;
  if (variant) {
    const url = new URL(variant, base);
    dir = new URL('.', url).href;
    playlist = await (await fetch(url)).text();
  }
  const lines = playlist.split('\n').map((l) => l.trim());
  const segments = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^#EXTINF:([\d.]+)/.exec(lines[i]);
    if (m) segments.push({ duration: Number(m[1]), uri: lines.slice(i + 1).find((l) => l && !l.startsWith('#')) });
  }
  let bytes = 0;
  let seconds = 0;
  for (const s of segments.slice(-3)) {
    bytes += (await (await fetch(new URL(s.uri, dir))).arrayBuffer()).byteLength;
    seconds += s.duration;
  }
  if (!seconds) throw new Error(`no segments in ${base}stream.m3u8`);
  return (8 * bytes) / seconds;
}

/** Plays the stream on every viewer (one page each, 1 s apart) and measures it. */
async function play(browsers, node, query, onMeasureStart) {
  const contexts = [];
  const pages = [];
  for (const [i, browser] of browsers.entries()) {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`[viewer ${i}] ${error.stack ?? error}`));
    await page.goto(`${node.url}/?${query}`);
    pages.push(page);
    await sleep(1000);
  }
  try {
    return await measurePlayback(pages, { warmup: WARMUP, measure: MEASURE, onMeasureStart });
  } finally {
    await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  }
}

const homes = Array.from({ length: Math.ceil(VIEWERS / 2) }, (_, i) => ({ nat: 'cone', viewers: Math.min(2, VIEWERS - 2 * i) }));
const lab = await createFieldLab(homes);
const node = await startNode({ host: PUBLIC_IP });
try {
  const bitrate = await streamBitrate(node, FORMAT);
  const up = UPLOAD_X * bitrate;
  const down = DOWN_X * bitrate;
  for (const viewer of lab.viewers) lab.shape(viewer, { up, down, loss: LOSS });
  console.log(`${VIEWERS} viewers, ${FORMAT} stream at ${(bitrate / 1e3).toFixed(0)} kbit/s; each viewer's upload ` +
    `${(up / 1e3).toFixed(0)} kbit/s (${UPLOAD_X}x), download ${(down / 1e6).toFixed(1)} Mbit/s (${DOWN_X}x), ` +
    `loss ${(100 * LOSS).toFixed(1)} % each way, no added delay; warm-up ${WARMUP / 1000} s, measured ${MEASURE / 1000} s`);
  const browsers = await Promise.all(lab.viewers.map((v) => lab.launch(v)));
  const format = FORMAT === 'ts' ? '&format=ts' : '';

  const httpStarted = Date.now();
  const http = await play(browsers, node, `shoal=0${format}`);
  const since = (start, times) => times.map((w) => `${((w - start) / 1000).toFixed(1)} s`).join(', ') || '-';
  console.log(`HTTP-only (plain hls.js): stalls ${http.stalls}, waiting ${http.waiting}, fatal ${http.fatal.length}, ` +
    `latency ${http.latency.toFixed(1)} s, start-up median ${http.startup.median.toFixed(0)} ms (max ${http.startup.max.toFixed(0)}); ` +
    `discontinuities crossed at ${since(httpStarted, http.perTab[0].discontinuityTimes)} (first viewer)` +
    (http.stalls ? `; stalls at ${since(httpStarted, http.perTab.flatMap((t) => t.stallTimes))}` : ''));

  let sentAtStart = [];
  const shoalStarted = Date.now();
  const at = (times) => since(shoalStarted, times);
  const shoal = await play(browsers, node, format.slice(1), () => {
    sentAtStart = lab.viewers.map((v) => lab.counters(v).sent);
  });
  // Read after the pages closed: the bytes sent during the measured part and the seconds
  // of tear-down, a slight overstatement.
  const uplinkUsed = lab.viewers.map((v, i) => (8 * (lab.counters(v).sent - sentAtStart[i])) / (up * (MEASURE / 1000)));
  const consumed = shoal.fromPeers + shoal.fromHttp;
  const capacity = (VIEWERS * up * (MEASURE / 1000)) / 8;
  const bound = Math.min((VIEWERS - 1) / VIEWERS, consumed ? capacity / consumed : 0);
  const ratio = bound ? shoal.offload / bound : 0;
  console.log(`Shoal: offload ${shoal.offload.toFixed(3)}, bound ${bound.toFixed(3)}, ratio ${ratio.toFixed(2)} (need 0.8), ` +
    `stalls ${shoal.stalls} vs HTTP-only ${http.stalls}, waiting ${shoal.waiting} vs ${http.waiting}, fatal ${shoal.fatal.length}, ` +
    `fallbacks ${shoal.fallbacks}, latency ${shoal.latency.toFixed(1)} s, ` +
    `start-up median ${shoal.startup.median.toFixed(0)} ms (max ${shoal.startup.max.toFixed(0)})`);
  console.log('per viewer (whole run): MB from peers / over HTTP, stalls, waiting, HTTP seeds / urgent / early / hedges of segments, peers');
  for (const [i, t] of shoal.perTab.entries()) {
    console.log(`  ${lab.viewers[i].name}: ${(t.fromPeers / 1e6).toFixed(1)} / ${(t.fromHttp / 1e6).toFixed(1)} MB, stalls ${t.stalls}, ` +
      `waiting ${t.waiting}, ${t.seeds} / ${t.urgent} / ${t.early} / ${t.hedges} of ${t.segments}, ${t.peers} peers, uplink used ${uplinkUsed[i].toFixed(2)}` +
      (t.stalls ? `; stalled at ${at(t.stallTimes)}` : '') + `; discontinuities at ${at(t.discontinuityTimes)}`);
  }
  await Promise.all(browsers.map((b) => b.close().catch(() => {})));
} finally {
  await node.stop();
  await lab.close();
}
