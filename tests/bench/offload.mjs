// Benchmark: the demo's live stream played by hls.js in N tabs of one headless Chromium,
// with Shoal and, in the same run, with plain hls.js (`?shoal=0`, the HTTP-only
// baseline). For N = 4, 8, 12 it reports offload against the ceiling (N−1)/N, stalls,
// `waiting` events, dropped frames, live latency, the browser's CPU time and memory
// (PSS of every Chromium process, and per tab the JS heap and the wasm heap).
//
// Run: scripts/bench.sh offload   (inside the test network namespace)
// Env: BENCH_TABS="4 8 12", BENCH_WARMUP_S=20, BENCH_MEASURE_S=40, BENCH_FORMAT=fmp4|ts,
//      BENCH_PLAYER=hls|shaka (Shaka Player through shoal/shaka, against plain Shaka)

import { readFileSync, readdirSync } from 'node:fs';
import { startNode } from '../e2e/harness.mjs';
import { describe, launchBrowser, measurePlayback, openViewers } from '../e2e/video-harness.mjs';

const TABS = (process.env.BENCH_TABS ?? '4 8 12').split(/\s+/).filter(Boolean).map(Number);
const WARMUP = Number(process.env.BENCH_WARMUP_S ?? 20) * 1000;
const MEASURE = Number(process.env.BENCH_MEASURE_S ?? 40) * 1000;
const FORMAT = process.env.BENCH_FORMAT ?? 'fmp4';
const PLAYER = process.env.BENCH_PLAYER ?? 'hls';
const CLOCK_TICKS = 100; // USER_HZ on Linux

/** Every process descended from this one (the browser and its children). */
function descendants(root) {
  const parent = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may hold spaces and parentheses: fields start after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(entry), Number(fields[1]));
    } catch {
      // exited meanwhile
    }
  }
  const out = [];
  for (const pid of parent.keys()) {
    for (let p = parent.get(pid); p; p = parent.get(p)) {
      if (p === root) {
        out.push(pid);
        break;
      }
    }
  }
  return out;
}

/** CPU seconds (user + system) and PSS bytes of the browser's processes. */
function browserUsage() {
  let cpu = 0;
  let pss = 0;
  for (const pid of descendants(process.pid)) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('chrom')) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpu += (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      pss += Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? 0) * 1024;
    } catch {
      // exited meanwhile
    }
  }
  return { cpu, pss };
}

async function jsHeap(page) {
  const session = await page.context().newCDPSession(page);
  await session.send('Performance.enable');
  const { metrics } = await session.send('Performance.getMetrics');
  await session.detach();
  return metrics.find((m) => m.name === 'JSHeapUsedSize')?.value ?? 0;
}

async function run(tabs, query) {
  const node = await startNode();
  const browser = await launchBrowser();
  try {
    const { pages } = await openViewers(browser, node, { tabs, query });
    // CPU is sampled around the measured window only (the same window as the offload).
    let usageBefore;
    const result = await measurePlayback(pages, {
      warmup: WARMUP,
      measure: MEASURE,
      onMeasureStart: () => {
        usageBefore = browserUsage();
      },
    });
    const usageAfter = browserUsage();
    result.cpuCores = (usageAfter.cpu - usageBefore.cpu) / (MEASURE / 1000);
    result.pss = usageAfter.pss;
    result.jsHeapPerTab = (await Promise.all(pages.map(jsHeap))).reduce((a, b) => a + b, 0) / tabs;
    result.wasmPerTab = result.perTab.reduce((a, t) => a + t.wasmMemory, 0) / tabs;
    return result;
  } finally {
    await browser.close();
    await node.stop();
  }
}

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
console.log(`warm-up ${WARMUP / 1000} s, measured ${MEASURE / 1000} s; demo stream (${FORMAT}): 2 s segments, 3 segments behind live; player ${PLAYER}`);
const rows = [];
for (const tabs of TABS) {
  const shoal = await run(tabs, `format=${FORMAT}&player=${PLAYER}`);
  const shed = shoal.perTab.filter((t) => t.sheddingEpisodes > 0).length;
  console.log(`shoal     ${describe(shoal)}, dropped frames ${shoal.droppedFrames}, CPU ${shoal.cpuCores.toFixed(2)} cores, PSS ${mb(shoal.pss)}, ` +
    `tabs that shed load ${shed} (shedding at the end ${shoal.perTab.filter((t) => t.shedding).length})`);
  const plain = await run(tabs, `format=${FORMAT}&player=${PLAYER}&shoal=0`);
  console.log(`http-only ${describe(plain)}, dropped frames ${plain.droppedFrames}, CPU ${plain.cpuCores.toFixed(2)} cores, PSS ${mb(plain.pss)}`);
  // Per tab, in opening order: a tab opened later starts beside more tabs already playing.
  const order = (r) => r.perTab.map((t) => Math.round(t.startedAt)).join(' ');
  console.log(`start-up per tab, in opening order (ms): Shoal ${order(shoal)}; HTTP-only ${order(plain)}`);
  rows.push({ tabs, shoal, plain });
}

console.log('\n| tabs | offload | ceiling | offload / ceiling | stalls (Shoal / HTTP-only) | waiting | dropped frames | latency s | origin bytes vs HTTP-only | CPU cores (Shoal / HTTP-only) |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const { tabs, shoal, plain } of rows) {
  const originRatio = plain.fromHttp ? shoal.fromHttp / plain.fromHttp : NaN;
  console.log(`| ${tabs} | ${(100 * shoal.offload).toFixed(1)} % | ${(100 * shoal.ceiling).toFixed(1)} % | ${(shoal.offload / shoal.ceiling).toFixed(3)} | ` +
    `${shoal.stalls} / ${plain.stalls} | ${shoal.waiting} / ${plain.waiting} | ${shoal.droppedFrames} / ${plain.droppedFrames} | ` +
    `${shoal.latency.toFixed(1)} / ${plain.latency.toFixed(1)} | ${originRatio.toFixed(3)} | ${shoal.cpuCores.toFixed(2)} / ${plain.cpuCores.toFixed(2)} |`);
}
console.log(`\n| tabs | start-up median ms (Shoal / plain ${PLAYER}) | ratio | start-up max ms (Shoal / plain) |`);
console.log('|---|---|---|---|');
for (const { tabs, shoal, plain } of rows) {
  console.log(`| ${tabs} | ${shoal.startup.median.toFixed(0)} / ${plain.startup.median.toFixed(0)} | ` +
    `${(shoal.startup.median / plain.startup.median).toFixed(2)} | ${shoal.startup.max.toFixed(0)} / ${plain.startup.max.toFixed(0)} |`);
}
console.log('\n| tabs | browser PSS Shoal | browser PSS HTTP-only | extra per tab | JS heap per tab (Shoal / HTTP-only) | wasm heap per tab |');
console.log('|---|---|---|---|---|---|');
for (const { tabs, shoal, plain } of rows) {
  console.log(`| ${tabs} | ${mb(shoal.pss)} | ${mb(plain.pss)} | ${mb((shoal.pss - plain.pss) / tabs)} | ` +
    `${mb(shoal.jsHeapPerTab)} / ${mb(plain.jsHeapPerTab)} | ${mb(shoal.wasmPerTab)} |`);
}
