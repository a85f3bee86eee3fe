// End-to-end: browser tabs find each other through a real signalling node and end up on
// direct, authenticated WebRTC connections; bytes cross intact; the node can die and come
// back without the tabs losing each other; hostile signalling fails cleanly.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  startNodeAndBrowser, newContext, openHarness, startPeer, stats, events, waitFor,
} from './harness.mjs';

const MiB = 1024 * 1024;

/** Waits until `page` holds direct connections to exactly the peers in `expected`. */
async function waitForMesh(pages, ids, timeout = 20000) {
  await waitFor(async () => {
    for (let i = 0; i < pages.length; i++) {
      const s = await stats(pages[i]);
      const peers = new Set(s.connections.map((c) => c.peer));
      for (let j = 0; j < pages.length; j++) {
        if (i !== j && !peers.has(ids[j])) return false;
      }
    }
    return true;
  }, { timeout, message: 'a full mesh of direct connections' });
}

test('three tabs connect directly, move 8 MiB each way intact, and survive a node restart', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const context = await newContext(browser, node);
  const pages = [];
  for (let i = 0; i < 3; i++) pages.push(await openHarness(context, node));
  const ids = [];
  for (const page of pages) ids.push(await startPeer(page, { swarm: 'e2e-mesh' }));
  assert.equal(new Set(ids).size, 3, 'each tab has its own PeerId');

  await waitForMesh(pages, ids);

  // Direct, not relayed: no relayed connection is left, the node carries no circuit,
  // and every RTCPeerConnection runs on a host candidate pair (no TURN relay).
  await waitFor(async () => (await Promise.all(pages.map(stats))).every((s) => s.relayedConnections === 0),
    { message: 'relayed connections to close' });
  await waitFor(async () => (await node.metrics()).shoal_relay_circuits === 0, { message: 'circuits to close on the node' });
  for (const page of pages) {
    const s = await stats(page);
    assert.equal(s.connections.length, 2, 'exactly one connection per other tab');
    for (const c of s.connections) {
      assert.equal(c.direct, true);
      assert.match(c.remoteAddr, /\/p2p-circuit\/webrtc\/p2p\//);
    }
    const all = await page.evaluate(() => window.harness.report());
    // The node is reached over /webrtc-direct on the same transport code.
    assert.equal(all.filter((r) => r.server).length, 1, 'one connection to the node');
    const report = all.filter((r) => !r.server);
    assert.equal(report.length, 2);
    for (const r of report) {
      assert.equal(r.connectionState, 'connected');
      assert.ok(r.selectedPair, `a selected candidate pair for ${r.peer}`);
      // host or peer-reflexive (a host candidate learned from a connectivity check),
      // never `relay` (TURN); and only the namespace's own addresses.
      assert.notEqual(r.selectedPair.localType, 'relay');
      assert.notEqual(r.selectedPair.remoteType, 'relay');
      // (Chromium hides the address of peer-reflexive candidates.)
      // (Chromium hides host addresses behind mDNS names by default, shown empty.)
      const ours = browser.privacyDefaults ? /^(127\.0\.0\.1|10\.99\.0\.1)?:/ : /^(127\.0\.0\.1|10\.99\.0\.1):/;
      if (r.selectedPair.localType !== 'prflx') assert.match(r.selectedPair.localAddress, ours);
      if (r.selectedPair.remoteType !== 'prflx') assert.match(r.selectedPair.remoteAddress, ours);
    }
  }

  // Every tab streams 8 MiB to each other tab, all six transfers at once; receivers
  // check every byte against the pattern. The relay caps circuits at 128 KiB, so these
  // bytes can only have taken the direct path.
  const transfers = [];
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      if (i !== j) transfers.push(pages[i].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[j], 8 * MiB]));
    }
  }
  for (const result of await Promise.all(transfers)) {
    assert.deepEqual({ bytes: result.bytes, intact: result.intact }, { bytes: 8 * MiB, intact: true });
  }
  for (const page of pages) {
    const received = await events(page, 'bulk-received');
    assert.equal(received.length, 2, 'two transfers received');
    for (const r of received) assert.deepEqual({ bytes: r.bytes, intact: r.intact }, { bytes: 8 * MiB, intact: true });
  }

  // Kill the node outright. The direct connections do not depend on it.
  const before = await node.metrics();
  assert.equal(before.shoal_memberships, 3);
  await node.kill('SIGKILL');
  await sleep(3000);
  for (const page of pages) assert.equal((await stats(page)).connections.length, 2, 'direct connections outlive the node');

  // Same ports, same data directory: same PeerId and certhash, so tabs find it again.
  await node.start();
  await waitFor(async () => {
    const all = await Promise.all(pages.map(stats));
    return all.every((s) => s.nodeConnected && s.joined && s.nodeReconnects >= 1);
  }, { timeout: 45000, message: 'every tab to reconnect and re-register with the restarted node' });
  await waitFor(async () => (await node.metrics()).shoal_memberships === 3, { message: 'the node to hold 3 memberships again' });
  for (const page of pages) {
    assert.equal((await stats(page)).connections.length, 2);
    assert.equal((await events(page, 'peer-disconnected')).length, 0, 'no tab lost a peer');
  }
  const after = await pages[0].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[2], MiB]);
  assert.equal(after.intact, true, 'the direct connections still carry data');
});

test('hostile signalling ends each attempt with a clear error and harms nobody else', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const context = await newContext(browser, node);
  const victim = await openHarness(context, node);
  const bystander = await openHarness(context, node);
  // Two attackers: a victim takes at most 4 handshakes per peer per minute, so each
  // plays 4 attacks. They sit in another swarm, so they never connect to the victim
  // normally.
  const attackers = [await openHarness(context, node), await openHarness(context, node)];
  const victimId = await startPeer(victim, { swarm: 'e2e-hostile', handshakeTimeoutMs: 3000 });
  const bystanderId = await startPeer(bystander, { swarm: 'e2e-hostile' });
  for (const attacker of attackers) {
    await startPeer(attacker, { swarm: 'e2e-attacker' });
    await attacker.waitForFunction(() => window.hostileReady === true);
    await waitFor(async () => (await stats(attacker)).joined, { message: 'the attacker to reach the node' });
  }
  await waitForMesh([victim, bystander], [victimId, bystanderId]);

  const failures = async () => (await events(victim, 'inbound-failed')).map((e) => e.error);
  const expectFailure = async (attacker, attack, pattern, arg) => {
    const seen = (await failures()).length;
    // The attacker's own writes may fail once the victim hangs up: what counts is what
    // the victim reports.
    await attacker.evaluate(([attack, peer, arg]) => window.hostile[attack](peer, arg).catch(() => {}), [attack, victimId, arg]);
    // An earlier attempt that got as far as ICE may still end (timed out) meanwhile: wait
    // for this attack's own failure among what comes.
    let errors = [];
    await waitFor(async () => {
      errors = (await failures()).slice(seen);
      return errors.some((e) => pattern.test(e));
    }, { timeout: 15000, message: `the victim to reject ${attack}` }).catch(() => {});
    assert.match(errors.join('\n'), pattern, `${attack}: ${errors.join('\n')}`);
  };

  const [first, second] = attackers;
  await expectFailure(first, 'oversize', /exceeds the 16384 byte limit/);
  await expectFailure(first, 'unknownType', /unknown signalling message type 7/);
  await expectFailure(first, 'garbageSdp', /remote SDP refused/);
  // Candidates are JSON parsed by the page's own JSON.parse (no serde_json in the wasm).
  await expectFailure(first, 'badCandidate', /ICE candidate is not valid JSON of RTCIceCandidate: .*JSON/, '{"candidate": candidate:1');
  // A fifth attempt within the minute is refused before any handshake starts.
  await expectFailure(first, 'unknownType', /too many handshakes from this peer/);
  await expectFailure(second, 'badCandidate', /ICE candidate is not valid JSON of RTCIceCandidate: missing field `candidate`/, '{"sdpMid":"0"}');
  await expectFailure(second, 'badCandidate', /ICE candidate is not valid JSON of RTCIceCandidate: candidate line must start with `candidate:`/, '{"candidate":"a=x"}');
  await expectFailure(second, 'truncatedThenReset', /signalling stream closed while waiting for the offer|timed out while waiting for the offer/);
  await expectFailure(second, 'wrongFingerprint', /became Failed|does not match the fingerprint|timed out while waiting for ICE/);

  // A peer that sends a valid offer and then vanishes (its tab closes).
  const seen = (await failures()).length;
  const vanishing = await openHarness(context, node);
  await startPeer(vanishing, { swarm: 'e2e-attacker-2' });
  await vanishing.waitForFunction(() => window.hostileReady === true);
  await waitFor(async () => (await stats(vanishing)).joined, { message: 'the vanishing peer to reach the node' });
  await vanishing.evaluate((peer) => window.hostile.offerThenVanish(peer), victimId);
  await vanishing.close();
  const vanished = await waitFor(async () => (await failures()).slice(seen).join('\n'), { timeout: 15000, message: 'the vanished peer to time out' });
  assert.match(vanished, /timed out|closed/);

  // Nothing leaked: the victim holds exactly its one legitimate connection, and that
  // connection still works.
  const s = await stats(victim);
  assert.deepEqual(s.connections.map((c) => c.peer), [bystanderId]);
  const report = await victim.evaluate(() => window.harness.report());
  assert.deepEqual(report.filter((r) => !r.server).map((r) => r.peer), [bystanderId]);
  const moved = await victim.evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [bystanderId, MiB]);
  assert.equal(moved.intact, true);

  // And the victim still accepts a well-behaved newcomer.
  const newcomer = await openHarness(context, node);
  const newcomerId = await startPeer(newcomer, { swarm: 'e2e-hostile' });
  await waitForMesh([victim, bystander, newcomer], [victimId, bystanderId, newcomerId]);
});
