// End-to-end: gossip between six real tabs over direct WebRTC connections.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startNodeAndBrowser, newContext, openHarness, startPeer, stats, waitFor } from './harness.mjs';

const TOPIC = 'chat';

test('gossip reaches five other tabs within 1 s; invalid and oversize messages are rejected and counted', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const context = await newContext(browser, node);
  const pages = [];
  for (let i = 0; i < 6; i++) pages.push(await openHarness(context, node));
  // Tab 0 may publish up to 200 kB; everyone else accepts at most the default 64 KiB.
  const ids = [];
  for (let i = 0; i < 6; i++) {
    ids.push(await startPeer(pages[i], { swarm: 'e2e-gossip', ...(i === 0 ? { gossipMaxBytes: 200000 } : {}) }));
  }
  await waitFor(async () => (await Promise.all(pages.map(stats))).every((s) => s.connections.length === 5), {
    timeout: 30000,
    message: 'a full mesh of six tabs',
  });
  for (const page of pages) await page.evaluate((topic) => window.harness.subscribe(topic), TOPIC);

  // Subscriptions travel as soon as they change: every tab soon knows the five others
  // subscribe (publish resolves to the number of neighbours it was sent to), within
  // ~30 ms here. 2 s is the bound because the failure this guards against is a link's
  // first stream hanging until libp2p's 10 s upgrade timeout: the remote had written to
  // a data channel before our side of the handshake finished, and the message was lost
  // (fixed by giving every inbound channel its handlers the moment it arrives).
  for (const page of pages) {
    await waitFor(async () => (await page.evaluate((topic) => window.harness.publish(topic, 'ok:hello'), TOPIC)).sent === 5,
      { timeout: 2000, interval: 20, message: 'the subscriptions of five neighbours within 2 s' });
  }

  const latencies = [];
  for (let round = 0; round < 5; round++) {
    const publisher = pages[round % 6];
    const text = `ok:round-${round}`;
    const sent = await publisher.evaluate(([topic, text]) => window.harness.publish(topic, text), [TOPIC, text]);
    assert.equal(sent.ok, true, JSON.stringify(sent));
    const others = pages.filter((p) => p !== publisher);
    const arrivals = await waitFor(async () => {
      const seen = await Promise.all(others.map((p) => p.evaluate(([topic, text]) => window.harness.received(topic).find((m) => m.text === text), [TOPIC, text])));
      return seen.every(Boolean) && seen;
    }, { timeout: 5000, message: `round ${round} to reach the five other tabs` });
    const slowest = Math.max(...arrivals.map((a) => a.wall)) - sent.at;
    latencies.push(slowest);
    assert.ok(slowest < 1000, `round ${round}: the slowest tab got it after ${slowest} ms`);
    for (const a of arrivals) assert.equal(a.from, ids[round % 6], 'the origin of the message is its publisher');
  }
  console.log(`gossip to 5 tabs, slowest arrival per round: ${latencies.join(', ')} ms`);

  // A message the validators refuse: dropped at the first hop, counted, never delivered.
  const bad = await pages[1].evaluate((topic) => window.harness.publish(topic, 'bad:not allowed'), TOPIC);
  assert.equal(bad.ok, true, 'the publisher itself has no validator on its own messages');
  // Oversize for everyone but tab 0: 100 kB against a 64 KiB limit.
  const big = await pages[0].evaluate((topic) => window.harness.publish(topic, 'ok:big', 100000), TOPIC);
  assert.equal(big.ok, true, JSON.stringify(big));
  await waitFor(async () => {
    const all = await Promise.all(pages.map(stats));
    const invalid = all.reduce((n, s) => n + s.gossip.rejectedInvalid, 0);
    const oversize = all.reduce((n, s) => n + s.gossip.rejectedOversize, 0);
    return invalid >= 1 && oversize >= 1;
  }, { timeout: 5000, message: 'the invalid and the oversize message to be rejected and counted' });
  await sleep(1000);
  for (let i = 2; i < 6; i++) {
    const texts = await pages[i].evaluate((topic) => window.harness.received(topic).map((m) => m.text), TOPIC);
    assert.ok(!texts.includes('bad:not allowed'), `tab ${i} never got the invalid message`);
    assert.ok(!texts.includes('ok:big'), `tab ${i} never got the oversize message`);
  }
  // Publishing past one's own limit fails up front, with a code.
  const refused = await pages[3].evaluate((topic) => window.harness.publish(topic, 'ok:too big', 70000), TOPIC);
  assert.deepEqual({ ok: refused.ok, code: refused.code }, { ok: false, code: 'message-too-large' });

  // A forged message: tab 1 writes, on a raw gossip stream to tab 3, a publication that
  // claims to come from tab 2 with a made-up signature. Tab 3 checks the signature
  // against tab 2's key (inside its PeerId), rejects and counts it, delivers nothing.
  const before3 = (await stats(pages[3])).gossip.rejectedInvalid;
  await pages[1].evaluate(async ([peer, origin, topic]) => {
    const frame = window.gossipFrame(topic, origin, 1n << 40n, new Uint8Array(64).fill(7), new TextEncoder().encode('ok:forged'));
    const handle = await window.harness.openStream(peer, '/shoal/gossip/2', false);
    await window.harness.write(handle, frame);
  }, [ids[3], ids[2], TOPIC]);
  await waitFor(async () => (await stats(pages[3])).gossip.rejectedInvalid > before3,
    { timeout: 5000, message: 'tab 3 to reject the forged message' });
  const rejections = await pages[3].evaluate(() => window.harness.eventsOf('gossip-rejected').map((e) => e.reason));
  assert.ok(rejections.includes('bad signature'), rejections.join('; '));
  const texts3 = await pages[3].evaluate((topic) => window.harness.received(topic).map((m) => m.text), TOPIC);
  assert.ok(!texts3.includes('ok:forged'));

  // A neighbour that keeps sending invalid messages is cut off: tab 1 has now sent its
  // third (one refused by validators, one forged; a third refused one now).
  await pages[1].evaluate((topic) => window.harness.publish(topic, 'bad:again'), TOPIC);
  await waitFor(async () => {
    const s3 = await stats(pages[3]);
    return s3.bannedPeers >= 1 && !s3.connections.some((c) => c.peer === ids[1]);
  }, { timeout: 5000, message: 'tab 3 to cut tab 1 off after three invalid messages' });
  // The others keep gossiping.
  const after = await pages[2].evaluate((topic) => window.harness.publish(topic, 'ok:still here'), TOPIC);
  assert.ok(after.sent >= 3, JSON.stringify(after));
  await waitFor(async () => (await pages[3].evaluate((topic) => window.harness.received(topic).map((m) => m.text), TOPIC)).includes('ok:still here'),
    { timeout: 5000, message: 'gossip among the remaining tabs' });
});
