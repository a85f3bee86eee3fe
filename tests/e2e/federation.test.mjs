// End-to-end: several signalling nodes that act as one network. Three real node
// processes federate over their own keyed TCP swarm (gossipsub); the demo page is served
// by the first, and each tab picks its node at random among those the well-known
// document lists. Tabs on different nodes must meet (through the other node's relay),
// share the stream, and survive the SIGKILL of a node: its tabs move to another node
// within seconds, keeping their direct connections and their playback. A full node
// refuses a join with a reason, and a page given another node goes there.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  TEST_IP, allocatePorts, events, launchBrowser, newContext, openHarness, startNode, startPeer, stats, waitFor,
} from './harness.mjs';
import { describe, measurePlayback, openViewers, readTab } from './video-harness.mjs';

const TABS = 9;

/**
 * Starts `count` federated nodes; the first is also the page's origin. `extraArgs` go
 * to every node, `perNode[i]` to node i only.
 */
async function startFederation(t, count, extraArgs = [], perNode = []) {
  const key = randomBytes(32).toString('hex');
  const fedPorts = Array.from({ length: count }, () => allocatePorts().webrtc);
  const nodes = [];
  for (let i = 0; i < count; i++) {
    const seeds = fedPorts.slice(0, i).flatMap((port) => ['--federate', `/ip4/${TEST_IP}/tcp/${port}`]);
    nodes.push(await startNode({
      extraArgs: ['--federation-key', key, '--federation-listen', `${TEST_IP}:${fedPorts[i]}`, ...seeds, ...extraArgs, ...(perNode[i] ?? [])],
    }));
  }
  t.after(() => Promise.all(nodes.map((n) => n.stop())));
  const ids = await Promise.all(nodes.map(async (n) => (await (await fetch(`${n.url}/.well-known/shoal.json`)).json()).peerId));
  // Every node lists the others for pages.
  await waitFor(async () => {
    for (const n of nodes) {
      const doc = await (await fetch(`${n.url}/.well-known/shoal.json`)).json();
      const listed = new Set(doc.federation.map((a) => a.split('/p2p/').pop()));
      if (listed.size !== count - 1) return false;
    }
    return true;
  }, { timeout: 15000, message: 'every node to list the others in its well-known document' });
  return { nodes, ids };
}

/** A node's own `/webrtc-direct` addresses, as pages are given them. */
const addrsOf = async (node) => (await (await fetch(`${node.url}/.well-known/shoal.json`)).json()).multiaddrs
  .filter((a) => a.includes('/webrtc-direct/'));

/** The node a tab's Shoal holds its relay reservation on, from its address. */
const nodeOf = (address) => /\/p2p\/([^/]+)\/p2p-circuit\//.exec(address ?? '')?.[1] ?? null;

async function tabState(page) {
  return page.evaluate(() => {
    const shoal = window.shoalDemo.shoal;
    if (!shoal) return null;
    const s = shoal.stats();
    return { id: shoal.peerId, address: s.address, direct: s.connections.filter((c) => c.direct).map((c) => c.peer) };
  });
}

test(`${TABS} tabs spread over 3 federated nodes meet across nodes, share the stream, and survive a node's death`, async (t) => {
  const { nodes, ids } = await startFederation(t, 3);
  const browser = await launchBrowser();
  t.after(() => browser.close());
  const { pages } = await openViewers(browser, nodes[0], { tabs: TABS, stagger: 500 });

  const states = await waitFor(async () => {
    const all = await Promise.all(pages.map(tabState));
    return all.every((s) => s && nodeOf(s.address)) && all;
  }, { timeout: 30000, message: 'every tab to hold a reservation on some node' });
  const placement = ids.map((id) => states.filter((s) => nodeOf(s.address) === id).length);
  console.log(`tabs per node: ${placement.join(' / ')}`);
  assert.ok(placement.filter((n) => n > 0).length >= 2, `tabs spread over several nodes: ${placement}`);

  const result = await measurePlayback(pages, { warmup: 20000, measure: 25000 });
  console.log(describe(result));
  assert.equal(result.waiting, 0);
  assert.equal(result.stalls, 0);
  assert.deepEqual(result.fatal, []);
  assert.ok(result.offload >= 0.75, `offload near the (N-1)/N = ${((TABS - 1) / TABS).toFixed(2)} ceiling: ${describe(result)}`);

  // Every tab has a direct neighbour whose node is not its own.
  const before = await Promise.all(pages.map(tabState));
  const moves = await Promise.all(pages.map(async (p) => (await p.evaluate(() => window.shoalDemo.shoal.stats())).nodeReconnects));
  console.log(`node changes while all nodes were up, per tab: ${moves.join(' ')}`);
  // Every node answers pings: no page left a live node (a stalled ping on the node's
  // side once made pages hop every few seconds: see crates/shoal-node/src/ping_repoll.rs).
  assert.ok(moves.reduce((a, b) => a + b, 0) <= 1, `pages stay on live nodes: ${moves}`);
  const nodeOfTab = new Map(before.map((s) => [s.id, nodeOf(s.address)]));
  for (const s of before) {
    const across = s.direct.filter((p) => nodeOfTab.get(p) && nodeOfTab.get(p) !== nodeOf(s.address));
    assert.ok(across.length > 0, `tab ${s.id} on ${nodeOf(s.address)} has neighbours on other nodes: ${JSON.stringify(s.direct.map((p) => nodeOfTab.get(p)))}`);
  }
  const nodeMetrics = await nodes[0].metrics();
  assert.equal(nodeMetrics.shoal_federation_nodes, 2);
  assert.ok(nodeMetrics.shoal_federation_memberships > 0, 'the origin node holds other nodes\' members');

  // SIGKILL the busiest node other than the origin (the page's HTTP).
  const victim = placement[1] >= placement[2] ? 1 : 2;
  const moved = before.filter((s) => nodeOf(s.address) === ids[victim]);
  assert.ok(moved.length > 0, `node ${victim} has tabs: ${placement}`);
  const movedPages = pages.filter((_, i) => nodeOf(before[i].address) === ids[victim]);
  const stallsBefore = await Promise.all(pages.map(async (p) => (await readTab(p)).stalls));
  const killedAt = Date.now();
  await nodes[victim].kill('SIGKILL');
  const times = await Promise.all(movedPages.map(async (page) => {
    await waitFor(async () => {
      const s = await tabState(page);
      return nodeOf(s.address) && nodeOf(s.address) !== ids[victim];
    }, { timeout: 20000, interval: 100, message: 'a tab of the killed node to hold a reservation on another' });
    return Date.now() - killedAt;
  }));
  console.log(`${moved.length} tab(s) moved to another node in ${times.map((ms) => `${ms} ms`).join(', ')}`);
  // The target is 5 s (README); the suite allows for a loaded 2-core machine.
  assert.ok(Math.max(...times) <= 8000, `tabs on another node within seconds: ${times}`);

  await sleep(10000);
  const after = await Promise.all(pages.map(tabState));
  for (const [i, s] of moved.entries()) {
    const now = after.find((a) => a.id === s.id);
    const kept = s.direct.filter((p) => now.direct.includes(p));
    assert.deepEqual(kept, s.direct, `tab ${i} kept its direct connections through the node's death`);
  }
  const stallsAfter = await Promise.all(pages.map(async (p) => (await readTab(p)).stalls));
  assert.deepEqual(stallsAfter, stallsBefore, 'no tab stalled while a node died');
  const waiting = await Promise.all(pages.map(async (p) => (await readTab(p)).waiting));
  assert.ok(waiting.every((w) => w === 0), `no tab waited: ${waiting}`);
});

test('a full node refuses a join with its reason; a page that knows another node goes there', async (t) => {
  // A holds one membership; B has room.
  const { nodes, ids } = await startFederation(t, 2, [], [['--max-memberships', '1']]);
  const browser = await launchBrowser();
  t.after(() => browser.close());
  const [a, b] = [await addrsOf(nodes[0]), await addrsOf(nodes[1])];

  // Fill node A.
  const first = await openHarness(await newContext(browser, nodes[0]), nodes[0]);
  await startPeer(first, { nodes: a, swarm: 'full-node' });
  await waitFor(async () => (await events(first, 'joined')).length === 1, { message: 'the first page to join' });

  // A page that knows only A is told why, at once, and stays connected.
  const refused = await openHarness(await newContext(browser, nodes[0]), nodes[0]);
  await startPeer(refused, { nodes: a, swarm: 'full-node' });
  const refusal = await waitFor(async () => (await events(refused, 'refused'))[0], { message: 'a refusal event' });
  assert.equal(refusal.what, 'join full-node');
  assert.match(refusal.reason, /as many members as it is configured for/);
  assert.equal((await stats(refused)).nodeConnected, true);
  assert.equal((await events(refused, 'joined')).length, 0);

  // A page that knows both ends up joined on B. Pages pick their first node at random:
  // open them until one tried A first, was refused, and moved.
  let mover = null;
  for (let i = 0; i < 8 && !mover; i++) {
    const page = await openHarness(await newContext(browser, nodes[0]), nodes[0]);
    await startPeer(page, { nodes: [...a, ...b], swarm: 'full-node' });
    const [joined] = await waitFor(async () => { const j = await events(page, 'joined'); return j.length >= 1 && j; }, { timeout: 15000, message: 'the page to join on the other node' });
    // stats() agrees with the event, even read inside its handler.
    assert.equal(nodeOf(joined.statsThen?.address), ids[1], `stats() in the joined handler: ${JSON.stringify(joined.statsThen)}`);
    assert.equal(joined.statsThen.joined, true);
    const where = nodeOf((await stats(page)).address);
    if (where !== ids[1]) {
      const seen = await page.evaluate(() => window.harness.events.map((e) => JSON.stringify(e)));
      assert.fail(`joined on B, the node with room; on ${where} (A ${ids[0]}, B ${ids[1]}); events: ${seen.join(' ')}`);
    }
    if ((await events(page, 'refused')).length > 0) mover = page;
  }
  assert.ok(mover, 'a page refused by the full node moved to the other one');
  // And it meets the member on A through A's relay.
  const firstId = await first.evaluate(() => window.harness.peer.peerId);
  await waitFor(async () => (await stats(mover)).connections.some((c) => c.direct && c.peer === firstId),
    { timeout: 15000, message: 'a direct connection across the two nodes' });
  const m = await nodes[0].metrics();
  assert.ok(m['shoal_refusals_total{reason="node_full"}'] >= 1, JSON.stringify(m));
});

test('SIGTERM drains: /healthz turns 503 and pages move to the other node before the node exits', async (t) => {
  const { nodes, ids } = await startFederation(t, 2, ['--drain-secs', '3']);
  const browser = await launchBrowser();
  t.after(() => browser.close());
  const both = [...await addrsOf(nodes[0]), ...await addrsOf(nodes[1])];
  // Pages pick a node at random: open them until two are on B.
  const onB = [];
  for (let i = 0; i < 12 && onB.length < 2; i++) {
    const page = await openHarness(await newContext(browser, nodes[0]), nodes[0]);
    await startPeer(page, { nodes: both, swarm: 'drain' });
    const address = await waitFor(async () => (await stats(page)).address, { message: 'a reservation' });
    if (nodeOf(address) === ids[1]) onB.push(page);
  }
  assert.equal(onB.length, 2, 'two pages on B');
  assert.equal((await fetch(`${nodes[1].url}/healthz`)).status, 200);

  const stopping = nodes[1].kill('SIGTERM');
  await waitFor(async () => (await fetch(`${nodes[1].url}/healthz`)).status === 503, { timeout: 2000, message: '/healthz 503 while draining' });
  const drainStarted = Date.now();
  await stopping;
  assert.equal(nodes[1].proc.exitCode, 0, 'the node exits cleanly after draining');
  assert.ok(Date.now() - drainStarted >= 2000, 'it took the drain time (3 s) to close its pages');
  for (const page of onB) {
    // The node's close of a /webrtc-direct connection may not reach the page; then the
    // page finds out from its pings (3 s).
    const closed = await waitFor(async () => (await events(page, 'node-disconnected')).length > 0 && events(page, 'node-disconnected'),
      { timeout: 5000, message: 'the page to be told its node went away' });
    assert.equal(closed.length, 1, 'told once');
    await waitFor(async () => nodeOf((await stats(page)).address) === ids[0], { timeout: 5000, message: 'the page to hold a reservation on A' });
    await waitFor(async () => (await events(page, 'joined')).length >= 2, { timeout: 5000, message: 'the page to join again on A' });
  }
});
