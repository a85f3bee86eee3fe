// The demo's live stream played by viewers on shaped links (issue 10's lab), shared by
// tests/e2e/shaped.test.mjs (a small, fast corner) and tests/bench/shaped.mjs.
//
// Each viewer is its own Chromium (default WebRTC privacy) in its own namespace, two per
// home behind cone NAT routers (tests/e2e/fieldlab.mjs); the node (with its STUN server)
// and the origin are on the lab's "internet". Every viewer's upload is `uploadX` times
// the stream's bitrate (measured from the origin's playlist), its download `downX` times,
// `loss` of its packets dropped each way. The same viewers on the same links play the
// stream twice: with plain hls.js (`?shoal=0`, the HTTP-only baseline), then with Shoal.
//
// The run's offload bound is min((N−1)/N, C / D): C what the viewers' uplinks could carry
// over the measured time, D the segment bytes they received (README, "How segments
// move").

import { setTimeout as sleep } from 'node:timers/promises';
import { startNode } from './harness.mjs';
import { PUBLIC_IP, createFieldLab } from './fieldlab.mjs';
import { measurePlayback, openViewers } from './video-harness.mjs';

/** The stream's bitrate in bits/s: bytes of the newest segments over their duration. */
export async function streamBitrate(node, format) {
  const base = `${node.url}/demo/${format === 'ts' ? 'live' : 'fmp4'}/`;
  const playlist = await (await fetch(`${base}stream.m3u8`)).text();
  const lines = playlist.split('\n').map((l) => l.trim());
  const segments = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^#EXTINF:([\d.]+)/.exec(lines[i]);
    if (m) segments.push({ duration: Number(m[1]), uri: lines.slice(i + 1).find((l) => l && !l.startsWith('#')) });
  }
  let bytes = 0;
  let seconds = 0;
  for (const s of segments.slice(-3)) {
    bytes += (await (await fetch(new URL(s.uri, base))).arrayBuffer()).byteLength;
    seconds += s.duration;
  }
  if (!seconds) throw new Error(`no segments in ${base}stream.m3u8`);
  return (8 * bytes) / seconds;
}

/** Plays the stream on every viewer (one page each, 1 s apart) and measures it. */
async function play(browsers, node, query, { warmup, measure, onMeasureStart }) {
  const opened = [];
  for (const browser of browsers) {
    opened.push(await openViewers(browser, node, { tabs: 1, query }));
    await sleep(1000);
  }
  try {
    return await measurePlayback(opened.flatMap((o) => o.pages), { warmup, measure, onMeasureStart });
  } finally {
    await Promise.all(opened.map((o) => o.context.close().catch(() => {})));
  }
}

/**
 * Builds the lab, runs HTTP-only then Shoal, tears it all down, and returns both
 * measurements, the bound, and a printable report (`lines`).
 */
export async function runShapedLab({ viewers = 6, uploadX = 1.5, downX = 10, loss = 0.005, warmup = 20000, measure = 60000, format = 'fmp4' }) {
  const homes = Array.from({ length: Math.ceil(viewers / 2) }, (_, i) => ({ nat: 'cone', viewers: Math.min(2, viewers - 2 * i) }));
  const lab = await createFieldLab(homes);
  const browsers = [];
  let node = null;
  try {
    node = await startNode({ host: PUBLIC_IP });
    const bitrate = await streamBitrate(node, format);
    const up = uploadX * bitrate;
    const down = downX * bitrate;
    for (const viewer of lab.viewers) lab.shape(viewer, { up, down, loss });
    const lines = [`${viewers} viewers, ${format} stream at ${(bitrate / 1e3).toFixed(0)} kbit/s; each viewer's upload ` +
      `${(up / 1e3).toFixed(0)} kbit/s (${uploadX}x), download ${(down / 1e6).toFixed(1)} Mbit/s (${downX}x), ` +
      `loss ${(100 * loss).toFixed(1)} % each way, no added delay; warm-up ${warmup / 1000} s, measured ${measure / 1000} s`];
    for (const viewer of lab.viewers) browsers.push(await lab.launch(viewer));
    const formatQuery = format === 'ts' ? 'format=ts' : '';
    const since = (start, times) => times.map((w) => `${((w - start) / 1000).toFixed(1)} s`).join(', ') || '-';

    const httpStarted = Date.now();
    const http = await play(browsers, node, `shoal=0&${formatQuery}`, { warmup, measure });
    lines.push(`HTTP-only (plain hls.js): stalls ${http.stalls}, waiting ${http.waiting}, fatal ${http.fatal.length}, ` +
      `latency ${http.latency.toFixed(1)} s, start-up median ${http.startup.median.toFixed(0)} ms (max ${http.startup.max.toFixed(0)})` +
      (http.stalls ? `; stalls at ${since(httpStarted, http.perTab.flatMap((t) => t.stallTimes))}` : ''));

    let sentAtStart = [];
    const shoalStarted = Date.now();
    const shoal = await play(browsers, node, formatQuery, {
      warmup,
      measure,
      onMeasureStart: () => { sentAtStart = lab.viewers.map((v) => lab.counters(v).sent); },
    });
    // Read after the pages closed: the measured part plus the tear-down, a slight
    // overstatement.
    const uplinkUsed = lab.viewers.map((v, i) => (8 * (lab.counters(v).sent - sentAtStart[i])) / (up * (measure / 1000)));
    const consumed = shoal.fromPeers + shoal.fromHttp;
    const capacity = (viewers * up * (measure / 1000)) / 8;
    const bound = Math.min((viewers - 1) / viewers, consumed ? capacity / consumed : 0);
    const ratio = bound ? shoal.offload / bound : 0;
    lines.push(`Shoal: offload ${shoal.offload.toFixed(3)}, bound ${bound.toFixed(3)}, ratio ${ratio.toFixed(2)}, ` +
      `stalls ${shoal.stalls} vs HTTP-only ${http.stalls}, waiting ${shoal.waiting} vs ${http.waiting}, fatal ${shoal.fatal.length}, ` +
      `fallbacks ${shoal.fallbacks}, latency ${shoal.latency.toFixed(1)} s, ` +
      `start-up median ${shoal.startup.median.toFixed(0)} ms (max ${shoal.startup.max.toFixed(0)})`);
    lines.push('per viewer (whole run): MB from peers / over HTTP, stalls, waiting, HTTP seeds / urgent / early / hedges of segments, peers');
    for (const [i, t] of shoal.perTab.entries()) {
      lines.push(`  ${lab.viewers[i].name}: ${(t.fromPeers / 1e6).toFixed(1)} / ${(t.fromHttp / 1e6).toFixed(1)} MB, stalls ${t.stalls}, ` +
        `waiting ${t.waiting}, ${t.seeds} / ${t.urgent} / ${t.early} / ${t.hedges} of ${t.segments}, ${t.peers} peers, uplink used ${uplinkUsed[i].toFixed(2)}` +
        (t.stalls ? `; stalled at ${since(shoalStarted, t.stallTimes)}` : '') +
        (t.discontinuityTimes.length ? `; discontinuities at ${since(shoalStarted, t.discontinuityTimes)}` : ''));
    }
    return { bitrate, http, shoal, bound, ratio, uplinkUsed, lines };
  } finally {
    await Promise.all(browsers.map((b) => b.close().catch(() => {})));
    await node?.stop();
    await lab.close();
  }
}
