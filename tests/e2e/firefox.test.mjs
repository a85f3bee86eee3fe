// End-to-end in Firefox: Debian's Firefox ESR, default preferences, driven over WebDriver
// BiDi, runs the same wasm package as Chromium. A Firefox tab and a Chromium tab, and two
// Firefox tabs, connect directly and move verified bytes both ways; Firefox and Chromium
// viewers play the live stream and share its segments in both directions.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startNode, launchBrowser, launchFirefox, newContext, openHarness, startPeer, stats, events, waitFor,
} from './harness.mjs';
import { describe, measurePlayback, openViewers, readTab } from './video-harness.mjs';

const MiB = 1024 * 1024;

/** A node, a Chromium and a Firefox for test `t`, all shut down when it ends. */
async function startBoth(t) {
  const node = await startNode();
  const [chromium, firefox] = await Promise.all([launchBrowser(), launchFirefox()]);
  t.after(async () => {
    await firefox.close();
    await chromium.close();
    await node.stop();
  });
  return { node, chromium, firefox };
}

/** Two harness pages (in the given browsers) joined in one swarm, directly connected. */
async function pair(node, browsers, swarm) {
  const pages = [];
  for (const browser of browsers) pages.push(await openHarness(await newContext(browser, node), node));
  const ids = [];
  for (const page of pages) ids.push(await startPeer(page, { swarm }));
  await waitFor(async () => {
    const [a, b] = await Promise.all(pages.map(stats));
    return a.connections.some((c) => c.peer === ids[1] && c.direct) && b.connections.some((c) => c.peer === ids[0] && c.direct);
  }, { timeout: 30000, message: 'a direct connection between the two pages' });
  return { pages, ids };
}

/** Sends 4 MiB each way at once; both receivers check every byte. */
async function exchange({ pages, ids }) {
  const sent = await Promise.all([
    pages[0].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[1], 4 * MiB]),
    pages[1].evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [ids[0], 4 * MiB]),
  ]);
  for (const r of sent) assert.deepEqual({ bytes: r.bytes, intact: r.intact }, { bytes: 4 * MiB, intact: true });
  for (const page of pages) {
    const received = await waitFor(async () => {
      const all = await events(page, 'bulk-received');
      return all.length === 1 && all;
    }, { message: 'the transfer to be received' });
    assert.deepEqual({ bytes: received[0].bytes, intact: received[0].intact }, { bytes: 4 * MiB, intact: true });
  }
}

/** What each page's RTCPeerConnection to the other says: connected, never over TURN. */
async function assertDirectPath(page) {
  const report = (await page.evaluate(() => window.harness.report())).filter((r) => !r.server);
  assert.equal(report.length, 1, JSON.stringify(report));
  assert.equal(report[0].connectionState, 'connected');
  assert.ok(report[0].selectedPair, 'a selected candidate pair');
  assert.notEqual(report[0].selectedPair.localType, 'relay');
  assert.notEqual(report[0].selectedPair.remoteType, 'relay');
}

test('a Firefox tab and a Chromium tab connect directly and move 4 MiB each way intact', async (t) => {
  const { node, chromium, firefox } = await startBoth(t);
  const joined = await pair(node, [firefox, chromium], 'e2e-firefox-chromium');
  const agent = await joined.pages[0].evaluate(() => navigator.userAgent);
  assert.match(agent, /Firefox\//, 'the first page really is Firefox');
  for (const page of joined.pages) await assertDirectPath(page);
  await exchange(joined);
});

test('two Firefox tabs connect directly and move 4 MiB each way intact', async (t) => {
  const { node, firefox } = await startBoth(t);
  const joined = await pair(node, [firefox, firefox], 'e2e-firefox-firefox');
  for (const page of joined.pages) await assertDirectPath(page);
  await exchange(joined);
});

test('Firefox and Chromium viewers play the live stream and share segments both ways', async (t) => {
  const { node, chromium, firefox } = await startBoth(t);
  const fox = await openViewers(firefox, node, { tabs: 2 });
  const chrome = await openViewers(chromium, node, { tabs: 2 });
  const pages = [...fox.pages, ...chrome.pages];
  const result = await measurePlayback(pages, { warmup: 10000, measure: 25000 });
  console.log(describe(result));
  assert.equal(result.waiting, 0, 'no `waiting` after playback started');
  assert.equal(result.stalls, 0, 'no hls.js buffer stall');
  assert.deepEqual(result.fatal, []);
  // Every Firefox tab takes part, and Firefox tabs both fetch from peers and serve them.
  // Which tab fetches a segment over HTTP is the scheduler's choice (the tab nearest the
  // live edge may seed every segment and never need a peer), so one tab need not do both.
  const foxTabs = await Promise.all(fox.pages.map((page) => readTab(page)));
  for (const [i, tab] of foxTabs.entries()) {
    assert.ok(tab.fromPeers + tab.uploaded > 0, `Firefox tab ${i} exchanged segments with peers: ${JSON.stringify(tab)}`);
  }
  assert.ok(foxTabs.some((tab) => tab.fromPeers > 0), `a Firefox tab received segments from peers: ${JSON.stringify(foxTabs)}`);
  assert.ok(foxTabs.some((tab) => tab.uploaded > 0), `a Firefox tab served segments to peers: ${JSON.stringify(foxTabs)}`);
  const foxIds = new Set(await Promise.all(fox.pages.map((p) => p.evaluate(() => window.shoalDemo.shoal.peerId))));
  let fromFox = 0;
  let toFox = 0;
  for (const page of chrome.pages) {
    const s = await page.evaluate(() => window.shoalDemo.shoal.stats());
    const perPeer = Object.values(s.pieces).flatMap((swarm) => Object.entries(swarm.perPeer));
    const withFox = perPeer.filter(([peer, traffic]) => foxIds.has(peer) && traffic.down + traffic.up > 0);
    assert.ok(withFox.length > 0, `a Chromium tab exchanged pieces with Firefox: ${JSON.stringify(perPeer)}`);
    for (const [, traffic] of withFox) {
      fromFox += traffic.down;
      toFox += traffic.up;
    }
  }
  console.log(`Chromium tabs received ${fromFox} B from Firefox tabs and sent them ${toFox} B`);
  assert.ok(result.offload >= 0.5, describe(result));
});
