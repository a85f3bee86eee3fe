// Benchmark: (1) goodput of one libp2p stream over a direct browser-to-browser Shoal
// connection, as a ratio to a raw RTCDataChannel between two tabs of the same browser,
// measured in the same run; (2) time from start() to the first direct connection.
//
// Run: scripts/bench.sh transport   (inside the test network namespace)

import { startNode, launchBrowser, newContext, openHarness, startPeer, stats, events, waitFor } from '../e2e/harness.mjs';

const MiB = 1024 * 1024;
const WARMUP = 16 * MiB;
const SIZE = Number(process.env.BENCH_MIB ?? 64) * MiB;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECT_RUNS = Number(process.env.BENCH_CONNECT_RUNS ?? 10);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mbps = (bytes, ms) => bytes / 1e6 / (ms / 1000);

async function rawRound(sender, receiver, bytes) {
  const arrived = receiver.evaluate((bytes) => window.rawChannel.expect(bytes), bytes);
  const started = await sender.evaluate(() => performance.now());
  // Both tabs share one clock origin? No: measure on the receiver, relative to a start
  // mark taken on the receiver just before the sender begins.
  const t0 = await receiver.evaluate(() => performance.now());
  await sender.evaluate((bytes) => window.rawChannel.send(bytes), bytes);
  const t1 = await arrived;
  void started;
  return t1 - t0;
}

async function rawThroughput(context, node) {
  const [a, b] = [await openHarness(context, node), await openHarness(context, node)];
  const offer = await a.evaluate(() => window.rawChannel.offer());
  const answer = await b.evaluate((offer) => window.rawChannel.answer(offer), offer);
  await a.evaluate((answer) => window.rawChannel.accept(answer), answer);
  await a.evaluate(() => window.rawChannel.waitOpen());
  await b.evaluate(() => window.rawChannel.waitOpen());
  await rawRound(a, b, WARMUP);
  const results = [];
  for (let i = 0; i < ROUNDS; i++) results.push(mbps(SIZE, await rawRound(a, b, SIZE)));
  await a.close();
  await b.close();
  return results;
}

async function shoalThroughput(context, node) {
  const [a, b] = [await openHarness(context, node), await openHarness(context, node)];
  await startPeer(a, { swarm: 'bench-throughput' });
  const idB = await startPeer(b, { swarm: 'bench-throughput' });
  await waitFor(async () => (await stats(a)).connections.some((c) => c.peer === idB), { message: 'direct connection' });
  const send = (bytes) => a.evaluate(([peer, bytes]) => window.harness.sendBulk(peer, bytes), [idB, bytes]);
  await send(WARMUP);
  const results = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await send(SIZE);
    if (!r.intact || r.bytes !== SIZE) throw new Error(`transfer not intact: ${JSON.stringify(r)}`);
    results.push(mbps(SIZE, r.ms));
  }
  await a.evaluate(() => window.harness.stop());
  await b.evaluate(() => window.harness.stop());
  await a.close();
  await b.close();
  return results;
}

async function timeToFirstConnection(context, node) {
  const times = [];
  for (let i = 0; i < CONNECT_RUNS; i++) {
    const swarm = `bench-connect-${i}`;
    const [a, b] = [await openHarness(context, node), await openHarness(context, node)];
    await startPeer(a, { swarm });
    await waitFor(async () => (await stats(a)).joined, { message: 'first peer joined' });
    await startPeer(b, { swarm });
    const connected = await waitFor(async () => (await events(b, 'peer-connected'))[0], { message: 'first direct connection' });
    times.push(connected.at);
    await a.evaluate(() => window.harness.stop());
    await b.evaluate(() => window.harness.stop());
    await a.close();
    await b.close();
  }
  return times;
}

const node = await startNode();
const browser = await launchBrowser();
const context = await newContext(browser, node);
try {
  const raw = [];
  const shoal = [];
  // Interleave so both see the same machine load.
  for (let i = 0; i < 2; i++) {
    raw.push(...(await rawThroughput(context, node)));
    shoal.push(...(await shoalThroughput(context, node)));
  }
  const rawMedian = median(raw);
  const shoalMedian = median(shoal);
  console.log(`raw RTCDataChannel   : ${raw.map((x) => x.toFixed(1)).join(', ')} MB/s (median ${rawMedian.toFixed(1)})`);
  console.log(`shoal libp2p stream  : ${shoal.map((x) => x.toFixed(1)).join(', ')} MB/s (median ${shoalMedian.toFixed(1)})`);
  console.log(`goodput ratio        : ${(shoalMedian / rawMedian).toFixed(2)} (target >= 0.80)`);
  const connect = await timeToFirstConnection(context, node);
  console.log(`start() -> first direct connection: ${connect.map((x) => x.toFixed(0)).join(', ')} ms (median ${median(connect).toFixed(0)} ms, max ${Math.max(...connect).toFixed(0)} ms; target <= 1000)`);
} finally {
  await browser.close();
  await node.stop();
}
