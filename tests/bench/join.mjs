// Benchmark: how fast fresh pages that join one swarm end up directly connected (issue
// 13's targets), in the single-namespace lab, Chromium with default WebRTC privacy.
// - pairs: BENCH_TRIALS (100) times, two fresh pages (a new browser context each time)
//   load at once and join a new swarm; per page, navigation to its first direct
//   neighbour (the page's own clock), and navigation to its node link;
// - burst: BENCH_REPS (20) times, BENCH_BURST (8) fresh pages load at once; per page,
//   navigation to its first direct neighbour and to a full mesh.
// Every distribution is printed (not only the median), and so is every page that waited
// longer than 5 s for its node link (a timeout, not a slow network, on loopback). Each
// page calls start() from its own script as soon as the wasm module is compiled, as a
// site's page does.
//
// Run: scripts/bench.sh join     Env: BENCH_TRIALS=100, BENCH_REPS=20, BENCH_BURST=8, BENCH_DEADLINE_S=15

import { setTimeout as sleep } from 'node:timers/promises';
import { launchBrowser, newContext, startNode } from '../e2e/harness.mjs';

const TRIALS = Number(process.env.BENCH_TRIALS ?? 100);
const REPS = Number(process.env.BENCH_REPS ?? 20);
const BURST = Number(process.env.BENCH_BURST ?? 8);
const DEADLINE = Number(process.env.BENCH_DEADLINE_S ?? 15) * 1000;

/** Navigation-relative times (ms) of a page's node link and of each new direct neighbour. */
function timeline(page) {
  return page.evaluate(() => {
    const h = window.harness;
    const at = (e) => h.startedAt + e.at;
    const node = h.events.find((e) => e.type === 'node-connected');
    const peers = [];
    const seen = new Set();
    for (const e of h.events) {
      if (e.type === 'peer-connected' && !seen.has(e.peer)) {
        seen.add(e.peer);
        peers.push(at(e));
      }
    }
    return { start: h.startedAt, node: node ? at(node) : null, peers };
  });
}

/** Opens `n` fresh pages at once in one new context, all joining `swarm`. */
async function openAll(browser, node, n, swarm) {
  const context = await newContext(browser, node);
  const pages = await Promise.all(Array.from({ length: n }, async () => {
    const page = await context.newPage();
    // The page starts itself, as a site's script would (no test round trip first).
    await page.goto(`${node.url}/web/test/harness.html?start=${encodeURIComponent(JSON.stringify({ swarm }))}`);
    await page.waitForFunction(() => window.harnessReady === true);
    return page;
  }));
  return { context, pages };
}

/** Waits until every page has `want` direct neighbours, or the deadline. */
async function settle(pages, want) {
  const start = Date.now();
  while (Date.now() - start < DEADLINE) {
    const counts = await Promise.all(pages.map((p) => p.evaluate(() => window.harness.stats().connections.filter((c) => c.direct).length)));
    if (counts.every((c) => c >= want)) return;
    await sleep(50);
  }
}

const sorted = (values) => values.filter((v) => v != null).sort((a, b) => a - b);
const q = (s, p) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN);
const summary = (label, values, total) => {
  const s = sorted(values);
  return `${label}: ${s.length}/${total} | median ${q(s, 0.5)?.toFixed(0)} | p90 ${q(s, 0.9)?.toFixed(0)} | p99 ${q(s, 0.99)?.toFixed(0)} | max ${s.at(-1)?.toFixed(0)} ms`;
};
const histogram = (values) => {
  const bins = [250, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, Infinity];
  const counts = bins.map(() => 0);
  for (const v of values) counts[bins.findIndex((b) => v <= b)] += 1;
  return bins.map((b, i) => `<=${b === Infinity ? 'inf' : b}: ${counts[i]}`).join(', ');
};

const node = await startNode();
const browser = await launchBrowser();
try {
  // Pairs.
  const first = [];
  const nodeLinks = [];
  const starts = [];
  let hung = 0;
  for (let trial = 0; trial < TRIALS; trial++) {
    const { context, pages } = await openAll(browser, node, 2, `join-pair-${trial}`);
    await settle(pages, 1);
    for (const page of pages) {
      const t = await timeline(page);
      first.push(t.peers[0] ?? null);
      nodeLinks.push(t.node);
      starts.push(t.start);
      if (t.node == null || t.node > 5000) hung += 1;
    }
    await context.close();
  }
  console.log(`pairs: ${TRIALS} trials of 2 fresh pages loading at once (default WebRTC privacy, loopback lab)`);
  console.log(summary('  navigation -> first direct neighbour', first, first.length));
  console.log(`  distribution: ${histogram(sorted(first))}`);
  console.log(summary('  navigation -> start() (the wasm module loaded and compiled)', starts, starts.length));
  console.log(summary('  navigation -> node link', nodeLinks, nodeLinks.length));
  console.log(summary('  start() -> first direct neighbour', first.map((f, i) => (f == null ? null : f - starts[i])), first.length));
  console.log(`  pages whose node link took > 5 s or never came: ${hung}`);
  const trialsOk = Array.from({ length: TRIALS }, (_, i) => first[2 * i] != null && first[2 * i + 1] != null).filter(Boolean).length;
  console.log(`  trials where both pages had a direct neighbour within ${DEADLINE / 1000} s: ${trialsOk}/${TRIALS}`);

  // Bursts.
  const burstFirst = [];
  const burstMesh = [];
  let repsMet = 0;
  let burstHung = 0;
  for (let rep = 0; rep < REPS; rep++) {
    const { context, pages } = await openAll(browser, node, BURST, `join-burst-${rep}`);
    await settle(pages, BURST - 1);
    let met = true;
    for (const page of pages) {
      const t = await timeline(page);
      const f = t.peers[0] ?? null;
      const mesh = t.peers.length >= BURST - 1 ? t.peers[BURST - 2] : null;
      burstFirst.push(f);
      burstMesh.push(mesh);
      if (t.node == null || t.node > 5000) burstHung += 1;
      if (f == null || f > 1000 || mesh == null || mesh > 3000) met = false;
    }
    if (met) repsMet += 1;
    await context.close();
  }
  console.log(`\nbursts: ${REPS} times ${BURST} fresh pages loading at once`);
  console.log(summary('  navigation -> first direct neighbour', burstFirst, burstFirst.length));
  console.log(`  distribution: ${histogram(sorted(burstFirst))}`);
  console.log(summary('  navigation -> full mesh', burstMesh, burstMesh.length));
  console.log(`  distribution: ${histogram(sorted(burstMesh))}`);
  console.log(`  pages whose node link took > 5 s or never came: ${burstHung}`);
  console.log(`  repetitions where every page had a neighbour within 1 s and a full mesh within 3 s: ${repsMet}/${REPS}`);
} finally {
  await browser.close();
  await node.stop();
}
