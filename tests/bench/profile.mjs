// Benchmark: where a viewer tab's main thread spends its time. Four tabs play the demo
// stream through Shoal; after 20 s, the third tab's main thread is sampled for 15 s with
// the V8 CPU profiler (0.5 ms interval) and the samples are grouped: idle, browser
// internals, hls.js, Shoal's wasm and JS glue, garbage collection.
//
// Run: scripts/bench.sh profile

import { setTimeout as sleep } from 'node:timers/promises';
import { startNode } from '../e2e/harness.mjs';
import { launchBrowser, openViewers } from '../e2e/video-harness.mjs';

const node = await startNode();
const browser = await launchBrowser();
try {
  const { context, pages } = await openViewers(browser, node, { tabs: 4 });
  await sleep(20000);
  const cdp = await context.newCDPSession(pages[2]);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.setSamplingInterval', { interval: 500 });
  await cdp.send('Profiler.start');
  await sleep(15000);
  const { profile } = await cdp.send('Profiler.stop');

  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const groups = new Map();
  for (const id of profile.samples) {
    const { functionName, url } = frames.get(id);
    const file = url.split('/').pop();
    const group = file === 'shoal_bg.wasm' || functionName.startsWith('js-to-wasm') || functionName === 'wasm-to-js'
      ? 'Shoal wasm'
      : ['shoal.js', 'index.js', 'hls.js'].includes(file) && !url.includes('vendor') ? 'Shoal JS glue'
      : file === 'hls.min.js' ? 'hls.js'
      : functionName.startsWith('(') ? functionName
      : 'page and browser APIs';
    groups.set(group, (groups.get(group) ?? 0) + 1);
  }
  const total = profile.samples.length;
  console.log(`main thread of one of 4 tabs, 15 s, ${total} samples:`);
  for (const [group, n] of [...groups].sort((a, b) => b[1] - a[1])) {
    console.log(`${(100 * n / total).toFixed(2).padStart(6)} %  ${group}`);
  }
} finally {
  await browser.close();
  await node.stop();
}
