// End-to-end: gossip between six real tabs over direct WebRTC connections.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startNode, launchBrowser, newContext, openHarness, startPeer, stats, waitFor } from './harness.mjs';

const TOPIC = 'chat';

test('gossip reaches five other tabs within 1 s; invalid and oversize messages are rejected and counted', async (t) => {
  const node = await startNode();
  const browser = await launchBrowser();
  t.after(async () => {
    await browser.close();
    await node.stop();
  });
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

  // Subscriptions spread with gossipsub's heartbeat: wait until a first message makes
  // it everywhere, then time fresh ones.
  await waitFor(async () => {
    await pages[0].evaluate((topic) => window.harness.publish(topic, `ok:warm-up ${Date.now()}`), TOPIC);
    await sleep(300);
    const got = await Promise.all(pages.slice(1).map((p) => p.evaluate((topic) => window.harness.received(topic).length, TOPIC)));
    return got.every((n) => n > 0);
  }, { timeout: 20000, message: 'gossip to reach every tab' });

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
});
