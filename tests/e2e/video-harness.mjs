// Plays the demo's built-in live stream in N tabs of one browser and measures what
// matters to a video site: offload (bytes from peers / all segment bytes), stalls, and
// what the origin served. Used by tests/e2e/video.test.mjs and tests/bench/offload.mjs.

import { setTimeout as sleep } from 'node:timers/promises';
import { launchBrowser, newContext, waitFor } from './harness.mjs';

/** Opens `tabs` demo pages (with `query`) one after another, `stagger` ms apart. */
export async function openViewers(browser, node, { tabs, query = '', stagger = 1000 }) {
  const context = await newContext(browser, node);
  const pages = [];
  for (let i = 0; i < tabs; i++) {
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`[tab ${i}] ${error.stack ?? error}`));
    await page.goto(`${node.url}/?${query}`);
    pages.push(page);
    if (i + 1 < tabs) await sleep(stagger);
  }
  return { context, pages };
}

/** Per-tab playback and byte counters, as the demo page records them. */
export function readTab(page) {
  return page.evaluate(() => {
    const demo = window.shoalDemo;
    const c = demo.counters();
    const video = document.getElementById('video');
    return {
      // Playing, and (unless the tab plays without Shoal) Shoal attached: the demo
      // creates Shoal only after the first fragment is buffered.
      started: demo.playback.started && demo.ready,
      startedAt: demo.playback.startedAt,
      waiting: demo.playback.waiting,
      stalls: demo.playback.stalls.length,
      // Wall-clock times (ms since the epoch) of each stall, comparable across tabs.
      stallTimes: demo.playback.stalls.map((t) => Math.round(performance.timeOrigin + t)),
      discontinuityTimes: demo.playback.discontinuities.map((t) => Math.round(performance.timeOrigin + t)),
      fatal: demo.playback.errors.filter((e) => e.fatal).map((e) => e.details),
      errors: demo.playback.errors.map((e) => e.details),
      fromPeers: c.fromPeers,
      fromHttp: c.fromHttp,
      uploaded: c.uploaded,
      segments: c.segments,
      seeds: c.seeds,
      urgent: c.urgent,
      early: c.early,
      hedges: c.hedges,
      fallbacks: c.fallbacks,
      peers: c.peers,
      fragmentBytes: demo.fragmentBytes,
      latency: demo.latency(),
      droppedFrames: video.getVideoPlaybackQuality().droppedVideoFrames,
      wasmMemory: demo.shoal ? demo.shoal.stats().wasmMemoryBytes : 0,
      // Times this tab began shedding its own load (its timers ran late).
      sheddingEpisodes: demo.shoal ? demo.shoal.stats().loadSheddingEpisodes : 0,
      shedding: demo.shoal ? demo.shoal.stats().loadShedding : false,
      currentTime: video.currentTime,
    };
  });
}

/**
 * Plays for `warmup` + `measure` ms and reports offload over the measured part:
 * the bytes each tab received from peers and over HTTP between the two readings.
 */
export async function measurePlayback(pages, { warmup, measure, onMeasureStart = () => {} }) {
  await waitFor(async () => (await Promise.all(pages.map(readTab))).every((t) => t.started), {
    timeout: 60000,
    message: 'every tab to start playing',
  });
  await sleep(warmup);
  const before = await Promise.all(pages.map(readTab));
  onMeasureStart();
  await sleep(measure);
  const after = await Promise.all(pages.map(readTab));
  let fromPeers = 0;
  let fromHttp = 0;
  for (let i = 0; i < pages.length; i++) {
    fromPeers += after[i].fromPeers - before[i].fromPeers;
    fromHttp += after[i].fromHttp - before[i].fromHttp;
  }
  const total = fromPeers + fromHttp;
  return {
    tabs: pages.length,
    offload: total ? fromPeers / total : 0,
    ceiling: (pages.length - 1) / pages.length,
    fromPeers,
    fromHttp,
    waiting: after.reduce((n, t) => n + t.waiting, 0),
    stalls: after.reduce((n, t) => n + t.stalls, 0),
    // The same over the measured part only (after the warm-up).
    waitingMeasured: after.reduce((n, t, i) => n + t.waiting - before[i].waiting, 0),
    stallsMeasured: after.reduce((n, t, i) => n + t.stalls - before[i].stalls, 0),
    fatal: after.flatMap((t) => t.fatal),
    errors: after.flatMap((t) => t.errors),
    fallbacks: after.reduce((n, t) => n + t.fallbacks, 0),
    droppedFrames: after.reduce((n, t) => n + t.droppedFrames, 0) - before.reduce((n, t) => n + t.droppedFrames, 0),
    latency: after.reduce((n, t) => n + (t.latency ?? 0), 0) / pages.length,
    // Navigation to first frame, per tab (the demo's `playing` time on the page's clock).
    startup: quantiles(after.map((t) => t.startedAt)),
    perTab: after,
  };
}

function quantiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor((sorted.length - 1) / 2)] ?? 0, max: sorted.at(-1) ?? 0 };
}

export function describe(result) {
  return `${result.tabs} tabs: offload ${(100 * result.offload).toFixed(1)} % (ceiling ${(100 * result.ceiling).toFixed(1)} %), ` +
    `${(result.fromPeers / 1e6).toFixed(2)} MB from peers, ${(result.fromHttp / 1e6).toFixed(2)} MB over HTTP, ` +
    `waiting ${result.waiting}, stalls ${result.stalls}, fatal ${result.fatal.length}, fallbacks ${result.fallbacks}, ` +
    `latency ${result.latency.toFixed(1)} s, start-up median ${result.startup.median.toFixed(0)} ms (max ${result.startup.max.toFixed(0)})`;
}

export { launchBrowser };
