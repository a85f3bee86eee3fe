// End-to-end: ICE servers from the node, with the browser's default WebRTC privacy (host
// addresses hidden behind mDNS names, no loopback candidates, no media permission). The
// node runs its own STUN server and, here, a TURN relay on the same UDP port; pages take
// both from /.well-known/shoal.json with credentials minted for them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TEST_IP, events, launchBrowser, newContext, openHarness, startNode, startPeer, stats, waitFor,
} from './harness.mjs';

const MiB = 1024 * 1024;
const TURN = ['--turn-relay', '--turn-secret', 'e2e-secret'];

async function start(t, extraArgs) {
  const node = await startNode({ extraArgs });
  const browser = await launchBrowser({ privacyDefaults: true });
  t.after(async () => {
    await browser.close();
    await node.stop();
  });
  return { node, browser };
}

async function mesh(pages, ids) {
  await waitFor(async () => {
    for (let i = 0; i < pages.length; i++) {
      const peers = new Set((await stats(pages[i])).connections.filter((c) => c.direct).map((c) => c.peer));
      if (!ids.every((id, j) => j === i || peers.has(id))) return false;
    }
    return true;
  }, { timeout: 30000, message: 'direct connections between every pair of tabs' });
}

async function selectedPairs(page) {
  const report = await page.evaluate(() => window.harness.report());
  return report.filter((r) => !r.server && r.connectionState === 'connected').map((r) => r.selectedPair);
}

test('the node hands out its STUN and TURN servers, with TURN credentials per page', async (t) => {
  const { node } = await start(t, TURN);
  const fetchDoc = async () => {
    const response = await fetch(`${node.url}/.well-known/shoal.json`);
    assert.equal(response.headers.get('cache-control'), 'no-store');
    return response.json();
  };
  const doc = await fetchDoc();
  const stun = doc.iceServers.find((s) => s.urls.some((u) => u.startsWith('stun:')));
  const turn = doc.iceServers.find((s) => s.urls.some((u) => u.startsWith('turn:')));
  assert.deepEqual(stun.urls, [`stun:${TEST_IP}:${node.ports.stun}`]);
  assert.deepEqual(turn.urls, [`turn:${TEST_IP}:${node.ports.stun}?transport=udp`]);
  // TURN REST credentials: the username is the expiry (12 h by default).
  const expiry = Number(turn.username);
  assert.ok(Math.abs(expiry - (Date.now() / 1000 + 12 * 3600)) < 120, `expiry ${turn.username}`);
  assert.match(turn.credential, /^[A-Za-z0-9+/]{27}=$/, 'base64 of an HMAC-SHA1');

  // Without a TURN secret, pages get STUN only.
  const plain = await startNode();
  t.after(() => plain.stop());
  const plainDoc = await (await fetch(`${plain.url}/.well-known/shoal.json`)).json();
  assert.deepEqual(plainDoc.iceServers, [{ urls: [`stun:${TEST_IP}:${plain.ports.stun}`] }]);
});

test('with default WebRTC privacy, tabs get the node STUN server and connect directly', async (t) => {
  const { node, browser } = await start(t, []);
  const context = await newContext(browser, node);
  const pages = [];
  for (let i = 0; i < 3; i++) pages.push(await openHarness(context, node));
  const ids = [];
  for (const page of pages) ids.push(await startPeer(page, { swarm: 'e2e-privacy' }));
  await mesh(pages, ids);
  let reflexive = 0;
  for (const page of pages) {
    const pairs = await selectedPairs(page);
    assert.equal(pairs.length, 2, 'a direct connection to each other tab');
    reflexive += pairs.filter((p) => p?.localType === 'srflx').length;
    for (const pair of pairs) {
      assert.ok(pair, 'a selected candidate pair');
      assert.notEqual(pair.localType, 'relay');
      // Host addresses stay hidden (mDNS names, shown as empty) unless learnt through
      // STUN (srflx) or a connectivity check (prflx).
      if (pair.localType === 'host') assert.equal(pair.localAddress.split(':')[0], '', `host address hidden: ${pair.localAddress}`);
    }
  }
  // Server-reflexive candidates exist only through a STUN server: the node's.
  assert.ok(reflexive > 0, 'candidates learnt from the node STUN server were used');
  // stats() and the `peer-path` event say the same as getStats(), per neighbour.
  // (ICE may switch pairs in the first seconds; the page asks again at 3 and 15 s.)
  for (const page of pages) {
    await waitFor(async () => {
      const paths = (await stats(page)).connections.map((c) => c.path).sort();
      const pairs = (await selectedPairs(page)).map((p) => `${p.localType}/${p.remoteType}`).sort();
      return paths.length === 2 && JSON.stringify(paths) === JSON.stringify(pairs);
    }, { timeout: 20000, message: 'stats() to name each neighbour\'s path as getStats() does' });
    const pathEvents = await events(page, 'peer-path');
    assert.ok(pathEvents.length >= 2 && pathEvents.every((e) => e.relayed === false), JSON.stringify(pathEvents));
  }
  // Each connection is counted once, by the page that dialled it, by candidate type,
  // and the pages' reports add up on the node's /metrics.
  const outcomes = await Promise.all(pages.map(async (p) => (await stats(p)).connectionOutcomes));
  const sum = (key) => outcomes.reduce((n, o) => n + o[key], 0);
  assert.equal(sum('host') + sum('srflx'), 3, `three pairs, three direct connections: ${JSON.stringify(outcomes)}`);
  assert.equal(sum('relay') + sum('iceFailed') + sum('signallingTimeout') + sum('other'), 0, JSON.stringify(outcomes));
  const counted = await waitFor(async () => {
    const m = await node.metrics();
    const host = m['shoal_peer_connections_total{outcome="host"}'] ?? 0;
    const srflx = m['shoal_peer_connections_total{outcome="srflx"}'] ?? 0;
    return host + srflx === 3 && { host, srflx };
  }, { timeout: 20000, message: 'the node to count the three connections the pages reported' });
  assert.deepEqual(counted, { host: sum('host'), srflx: sum('srflx') });
});

test('relay-only pages connect through the node TURN relay and move bytes intact', async (t) => {
  const { node, browser } = await start(t, TURN);
  const context = await newContext(browser, node);
  const pages = [await openHarness(context, node), await openHarness(context, node)];
  const ids = [];
  for (const page of pages) ids.push(await startPeer(page, { swarm: 'e2e-relay', iceTransportPolicy: 'relay' }));
  await mesh(pages, ids);
  for (const page of pages) {
    const [pair] = await selectedPairs(page);
    assert.equal(pair.localType, 'relay', `relayed through TURN: ${JSON.stringify(pair)}`);
    assert.equal(pair.localAddress.split(':')[0], TEST_IP, 'by the node, at its relay address');
    const [path] = await waitFor(async () => (await events(page, 'peer-path')), { message: 'a peer-path event' });
    assert.equal(path.relayed, true, JSON.stringify(path));
    assert.equal(path.local, 'relay');
  }
  // 4 MiB each way through the relay, every byte checked by the receiver.
  const sent = await Promise.all([
    pages[0].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[1], 4 * MiB]),
    pages[1].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[0], 4 * MiB]),
  ]);
  for (const result of sent) assert.deepEqual({ bytes: result.bytes, intact: result.intact }, { bytes: 4 * MiB, intact: true });
  // Counted as relayed, once, by its dialer; the node hears of it.
  const outcomes = await Promise.all(pages.map(async (p) => (await stats(p)).connectionOutcomes));
  assert.equal(outcomes[0].relay + outcomes[1].relay, 1, JSON.stringify(outcomes));
  assert.equal(outcomes[0].host + outcomes[1].host + outcomes[0].srflx + outcomes[1].srflx, 0, JSON.stringify(outcomes));
  await waitFor(async () => (await node.metrics())['shoal_peer_connections_total{outcome="relay"}'] === 1,
    { timeout: 20000, message: 'the node to count the relayed connection' });
  // The node's own connections stay direct (relay policy is for page-to-page links).
  for (const page of pages) {
    const server = (await page.evaluate(() => window.harness.report())).find((r) => r.server);
    assert.notEqual(server?.selectedPair?.localType, 'relay');
  }
});

test('a browser without RTCPeerConnection gets a clear unsupported error, and the player plays over HTTP', async (t) => {
  const { node, browser } = await start(t, []);
  const context = await newContext(browser, node);
  // What some embedded views and hardened profiles (and WebKitGTK) look like.
  await context.addInitScript(() => {
    delete window.RTCPeerConnection;
  });
  const page = await openHarness(context, node);
  const outcome = await page.evaluate(() => window.harness.start({}).then(() => 'started', (e) => ({ code: e.code, message: String(e.message) })));
  assert.equal(outcome.code, 'unsupported', JSON.stringify(outcome));

  // The demo page: hls.js starts at once, Shoal fails to start, playback goes on.
  const player = await context.newPage();
  await player.goto(`${node.url}/`);
  const state = await waitFor(() => player.evaluate(() => {
    const demo = window.shoalDemo;
    const integration = demo?.integration;
    return demo?.playback.started && integration?.error && {
      code: integration.error.code,
      shoal: demo.shoal,
      time: document.getElementById('video').currentTime,
    };
  }), { timeout: 30000, message: 'the player to play and Shoal to report why it could not start' });
  assert.equal(state.code, 'unsupported');
  assert.equal(state.shoal, null, 'no Shoal instance');
  // (A live stream's clock starts where the stream is, not at 0.)
  await waitFor(() => player.evaluate((from) => document.getElementById('video').currentTime > from + 4, state.time),
    { timeout: 20000, message: 'playback to go on over HTTP for 4 s' });
  const stalls = await player.evaluate(() => window.shoalDemo.playback.stalls.length);
  assert.equal(stalls, 0);
});
