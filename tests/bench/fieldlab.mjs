// Benchmark: the field lab's NAT matrix (tests/e2e/fieldlab.mjs). For each pair of
// homes — same LAN, cone–cone, cone–symmetric, symmetric–symmetric — and each ICE set-up
// the node offers — STUN only, STUN + its TURN relay — TRIALS fresh page pairs (a new
// browser context each, default WebRTC privacy, each viewer its own Chromium in its own
// namespace) join one swarm; per cell: how many connected within the deadline, the time
// from `start()` on the second page to its first direct neighbour (median, p90, max),
// and the candidate types of the selected pairs.
//
// Run: scripts/bench.sh fieldlab        Env: BENCH_TRIALS=20, BENCH_DEADLINE_S=15

import { setTimeout as sleep } from 'node:timers/promises';
import { startNode } from '../e2e/harness.mjs';
import { PUBLIC_IP, createFieldLab } from '../e2e/fieldlab.mjs';

const TRIALS = Number(process.env.BENCH_TRIALS ?? 20);
const DEADLINE = Number(process.env.BENCH_DEADLINE_S ?? 15) * 1000;

const CELLS = [
  { name: 'same LAN (cone)', homes: [{ nat: 'cone', viewers: 2 }] },
  { name: 'cone - cone', homes: [{ nat: 'cone', viewers: 1 }, { nat: 'cone', viewers: 1 }] },
  { name: 'cone - symmetric', homes: [{ nat: 'cone', viewers: 1 }, { nat: 'symmetric', viewers: 1 }] },
  { name: 'symmetric - symmetric', homes: [{ nat: 'symmetric', viewers: 1 }, { nat: 'symmetric', viewers: 1 }] },
];
const SETUPS = [
  { name: 'STUN only', args: [] },
  { name: 'STUN + TURN', args: ['--turn-relay', '--turn-secret', 'bench-secret'] },
];

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

async function trial(browsers, node, swarm) {
  const contexts = await Promise.all(browsers.map((b) => b.newContext()));
  try {
    const pages = await Promise.all(contexts.map(async (c) => {
      const page = await c.newPage();
      await page.goto(`${node.url}/web/test/harness.html`);
      await page.waitForFunction(() => window.harnessReady === true);
      return page;
    }));
    await pages[0].evaluate((swarm) => window.harness.start({ swarm }), swarm);
    const started = Date.now();
    await pages[1].evaluate((swarm) => window.harness.start({ swarm }), swarm);
    while (Date.now() - started < DEADLINE) {
      const s = await pages[1].evaluate(() => window.harness.stats());
      if (s.connections.some((c) => c.direct)) {
        const ms = Date.now() - started;
        const report = await pages[1].evaluate(() => window.harness.report());
        const pair = report.find((r) => !r.server && r.connectionState === 'connected')?.selectedPair;
        return { ok: true, ms, types: pair ? `${pair.localType}/${pair.remoteType}` : '?' };
      }
      await sleep(20);
    }
    return { ok: false };
  } finally {
    await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  }
}

const rows = [];
for (const cell of CELLS) {
  for (const setup of SETUPS) {
    const lab = await createFieldLab(cell.homes);
    const node = await startNode({ host: PUBLIC_IP, extraArgs: setup.args });
    const browsers = await Promise.all(lab.viewers.map((v) => lab.launch(v)));
    const times = [];
    const types = {};
    let ok = 0;
    try {
      for (let i = 0; i < TRIALS; i++) {
        const result = await trial(browsers, node, `bench-${i}`);
        if (result.ok) {
          ok += 1;
          times.push(result.ms);
          types[result.types] = (types[result.types] ?? 0) + 1;
        }
      }
    } finally {
      await node.stop();
      await lab.close();
    }
    times.sort((a, b) => a - b);
    const row = {
      cell: cell.name, setup: setup.name, ok, trials: TRIALS,
      median: times.length ? quantile(times, 0.5) : NaN, p90: times.length ? quantile(times, 0.9) : NaN, max: times.at(-1) ?? NaN,
      types: Object.entries(types).map(([t, n]) => `${t} ${n}`).join(', ') || '-',
    };
    rows.push(row);
    console.log(`${row.cell}, ${row.setup}: ${ok}/${TRIALS} connected; start -> first direct neighbour median ${row.median} ms, p90 ${row.p90} ms, max ${row.max} ms; ${row.types}`);
  }
}
console.log(`\n| NAT pair | ICE servers | connected | median ms | p90 ms | max ms | selected pairs (local/remote) |`);
console.log('|---|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.cell} | ${r.setup} | ${r.ok}/${r.trials} | ${r.median} | ${r.p90} | ${r.max} | ${r.types} |`);
