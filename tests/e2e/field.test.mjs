// End-to-end in the field lab (tests/e2e/fieldlab.mjs): viewers behind NAT routers, each
// its own Chromium with default WebRTC privacy in its own namespace, the node and origin
// on the "internet". With the node's STUN server, viewers behind different cone NATs
// connect directly; a viewer behind a symmetric NAT reaches the others through the node's
// TURN relay; without ICE servers, viewers behind different NATs cannot connect at all.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openHarness, startNode, startPeer, stats, waitFor } from './harness.mjs';
import { PUBLIC_IP, createFieldLab } from './fieldlab.mjs';

const MiB = 1024 * 1024;
const HOMES = [
  { nat: 'cone', viewers: 2 }, // two viewers on one LAN behind the same router
  { nat: 'cone', viewers: 1 },
  { nat: 'symmetric', viewers: 1 },
];

async function setUp(t, nodeArgs) {
  const lab = await createFieldLab(HOMES);
  t.after(() => lab.close());
  const node = await startNode({ host: PUBLIC_IP, extraArgs: nodeArgs });
  t.after(() => node.stop());
  const viewers = [];
  for (const viewer of lab.viewers) {
    const browser = await lab.launch(viewer);
    const page = await openHarness(await browser.newContext(), node);
    viewers.push({ ...viewer, page, id: await startPeer(page, { swarm: 'field' }) });
  }
  return { viewers, node };
}

/** The selected candidate pair of `a`'s connection to `b`, once it is up. */
async function pairBetween(a, b) {
  const report = await a.page.evaluate(() => window.harness.report());
  return report.find((r) => !r.server && r.peer === b.id && r.connectionState === 'connected')?.selectedPair;
}

const connected = async (a, b) => (await stats(a.page)).connections.some((c) => c.peer === b.id && c.direct);

test('behind NATs with default privacy: STUN from the node connects cone NATs directly, its TURN relay the symmetric one', async (t) => {
  const { viewers } = await setUp(t, ['--turn-relay', '--turn-secret', 'field-secret']);
  const pairs = [];
  for (let i = 0; i < viewers.length; i++) for (let j = i + 1; j < viewers.length; j++) pairs.push([viewers[i], viewers[j]]);
  await waitFor(async () => (await Promise.all(pairs.map(([a, b]) => connected(a, b)))).every(Boolean),
    { timeout: 40000, message: 'every pair of viewers connected' });
  // ICE may still move to a better pair just after connecting.
  await new Promise((r) => setTimeout(r, 2000));
  const lines = [];
  for (const [a, b] of pairs) {
    const pair = await pairBetween(a, b);
    lines.push(`${a.name} <-> ${b.name}: ${pair?.localType}/${pair?.remoteType}`);
    assert.ok(pair, `${a.name} <-> ${b.name}: a selected pair`);
    const relayed = pair.localType === 'relay' || pair.remoteType === 'relay';
    if (a.nat === 'cone' && b.nat === 'cone') {
      // Same LAN or two cone NATs (hole punched with the STUN-learnt addresses): direct.
      assert.equal(relayed, false, `cone NATs connect directly: ${lines.at(-1)}`);
    } else {
      // A symmetric NAT maps each destination to a new port: only TURN gets through.
      assert.equal(relayed, true, `a symmetric NAT needs the relay: ${lines.at(-1)}`);
    }
    // Every transfer is checked byte by byte by the receiver.
    const moved = await a.page.evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [b.id, MiB]);
    assert.deepEqual({ bytes: moved.bytes, intact: moved.intact }, { bytes: MiB, intact: true }, lines.at(-1));
  }
  console.log(lines.join('\n'));
  // Each pair counted once, by its dialer, by its first selected pair: the three pairs
  // with the symmetric NAT as relayed.
  const outcomes = await Promise.all(viewers.map(async (v) => (await stats(v.page)).connectionOutcomes));
  const sum = (key) => outcomes.reduce((n, o) => n + o[key], 0);
  console.log(`connection outcomes: host ${sum('host')}, srflx ${sum('srflx')}, relay ${sum('relay')}`);
  assert.equal(sum('host') + sum('srflx') + sum('relay'), pairs.length, JSON.stringify(outcomes));
  assert.ok(sum('relay') >= 3, JSON.stringify(outcomes));
});

test('behind NATs without ICE servers, viewers of different homes never connect', async (t) => {
  const { viewers, node } = await setUp(t, ['--stun-listen', 'off']);
  const [a1, a2, b] = viewers;
  // Same LAN: host candidates (mDNS names, resolved on the LAN) are enough.
  await waitFor(() => connected(a1, a2), { timeout: 30000, message: 'the two viewers of one LAN to connect' });
  // Across two NATs there is no candidate the other side can reach.
  const crossed = await waitFor(() => connected(a1, b), { timeout: 12000, message: 'never' }).then(() => true, () => false);
  assert.equal(crossed, false, 'without STUN, viewers behind different NATs did not connect');
  // The pages say why: offer and answer crossed (through the node's relay), ICE never
  // connected. And the node's /metrics counts what they reported.
  const failures = await waitFor(async () => {
    const all = (await Promise.all(viewers.map((v) => v.page.evaluate(() => window.harness.eventsOf('dial-failed'))))).flat();
    return all.some((e) => e.kind === 'ice-failed') && all;
  }, { timeout: 20000, message: 'a dial across the NATs to fail as ice-failed' });
  console.log(`dial failures across the NATs: ${failures.map((e) => e.kind).join(', ')}`);
  const outcomes = await Promise.all(viewers.map(async (v) => (await stats(v.page)).connectionOutcomes));
  const sum = (key) => outcomes.reduce((n, o) => n + o[key], 0);
  assert.equal(sum('host'), 1, `the LAN pair, counted once as host: ${JSON.stringify(outcomes)}`);
  assert.equal(sum('srflx') + sum('relay'), 0, JSON.stringify(outcomes));
  await waitFor(async () => {
    const m = await node.metrics();
    return m['shoal_peer_connections_total{outcome="host"}'] === 1 && m['shoal_peer_connections_total{outcome="ice_failed"}'] >= 1;
  }, { timeout: 30000, message: 'the node to count the LAN connection and an ICE failure' });
});
