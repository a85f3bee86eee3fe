// End-to-end: the demo's live stream played by hls.js in real tabs, segments shared over
// real WebRTC through the real runtime, integrity checked against the node's signatures.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startNodeAndBrowser, waitFor } from './harness.mjs';
import { describe, measurePlayback, openViewers, readTab } from './video-harness.mjs';

const TABS = 6;

test(`${TABS} tabs play the fMP4 live stream for 60 s: offload >= 80 % after warm-up, no stall`, async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: TABS });
  // 60 s of playback: 20 s to warm up (every tab's startup comes over HTTP), 40 s measured.
  const result = await measurePlayback(pages, { warmup: 20000, measure: 40000 });
  console.log(describe(result));
  if (process.env.SHOAL_TAB_DETAIL) for (const t of result.perTab) console.log(JSON.stringify({ ...t, fatal: undefined }));
  assert.equal(result.waiting, 0, 'no `waiting` after playback started');
  assert.equal(result.stalls, 0, 'no hls.js buffer stall');
  assert.deepEqual(result.fatal, []);
  // Init segments go through hls.js's own loader inside ours; an abort of a finished
  // load there used to turn each into INTERNAL_ABORTED, and playback never started.
  assert.ok(!result.errors.includes('aborted'), `no aborted loads: ${result.errors}`);
  assert.ok(result.offload >= 0.8, describe(result));
});

test('the oldest hls.js the package admits (peerDependencies) plays fMP4 through Shoal and shares', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: 3, query: 'hls=oldest' });
  const result = await measurePlayback(pages, { warmup: 10000, measure: 15000 });
  console.log(describe(result));
  const versions = await Promise.all(pages.map((p) => p.evaluate(() => window.shoalDemo.hlsVersion)));
  assert.deepEqual(versions, ['1.5.0', '1.5.0', '1.5.0']);
  assert.equal(result.waiting, 0);
  assert.equal(result.stalls, 0);
  assert.deepEqual(result.fatal, []);
  assert.ok(!result.errors.includes('aborted'), `no aborted loads: ${result.errors}`);
  assert.ok(result.offload >= 0.5, describe(result));
});

test('with P2P switched off the same harness reports 0 % offload and no stall', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: 3, query: 'p2p=0' });
  const result = await measurePlayback(pages, { warmup: 10000, measure: 20000 });
  console.log(describe(result));
  assert.equal(result.fromPeers, 0);
  assert.equal(result.offload, 0);
  assert.ok(result.fromHttp > 0, 'segments still arrive, over HTTP');
  assert.equal(result.waiting, 0);
  assert.equal(result.stalls, 0);
});

test('a peer that uploads corrupt data is cut off and playback is unaffected', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  // The corrupting tab starts first, so it is the one others would fetch from.
  const corrupt = await openViewers(browser, node, { tabs: 1, query: 'format=ts&corrupt=1' });
  await waitFor(async () => (await readTab(corrupt.pages[0])).started, { timeout: 30000, message: 'the corrupting tab to play' });
  const honest = await openViewers(browser, node, { tabs: 3, query: 'format=ts' });
  const result = await measurePlayback(honest.pages, { warmup: 5000, measure: 20000 });
  console.log(describe(result));
  const corruptId = await corrupt.pages[0].evaluate(() => window.shoalDemo.shoal.peerId);
  // Every tab that received a chunk from the corrupting peer rejected it and cut the peer
  // off; which tabs fetch from it depends on who seeds which segment, but its data must
  // have reached at least one of them (it starts first and holds everything).
  let cutOff = 0;
  for (const page of honest.pages) {
    const stats = await page.evaluate(() => window.shoalDemo.shoal.stats());
    const swarm = Object.values(stats.pieces)[0];
    const detail = JSON.stringify({ bannedPeers: stats.bannedPeers, chunksRejected: swarm.chunksRejected, peersBanned: swarm.peersBanned, fromCorrupt: swarm.perPeer[corruptId] });
    if (swarm.chunksRejected > 0) {
      assert.ok(stats.bannedPeers >= 1 && swarm.peersBanned >= 1, `a tab that rejected chunks cut their sender off: ${detail}`);
      assert.ok(!stats.connections.some((c) => c.peer === corruptId), `and is no longer connected to it: ${detail}`);
      cutOff += 1;
    } else {
      assert.equal(stats.bannedPeers, 0, `nobody honest was banned: ${detail}`);
    }
  }
  assert.ok(cutOff >= 1, 'the corrupting peer was cut off by the tabs it sent to');
  assert.equal(result.waiting, 0);
  assert.equal(result.stalls, 0);
  assert.deepEqual(result.fatal, []);
  // The honest tabs still share with each other.
  assert.ok(result.fromPeers > 0, describe(result));
});

test('viewers that crash while uploading do not stall the others', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { context, pages } = await openViewers(browser, node, { tabs: 5 });
  await waitFor(async () => (await Promise.all(pages.map(readTab))).every((tab) => tab.started), {
    timeout: 60000,
    message: 'every tab to start playing',
  });
  await sleep(15000);
  const ids = await Promise.all(pages.map((p) => p.evaluate(() => window.shoalDemo.shoal.peerId)));

  // The first two tabs seen uploading have their renderer killed on the spot, so peers
  // vanish with chunks in flight: no SCTP shutdown, no goodbye, just silence.
  const crash = async (page) => {
    const cdp = await context.newCDPSession(page);
    const gone = new Promise((resolve) => page.once('crash', resolve));
    cdp.send('Page.crash').catch(() => {});
    await gone;
  };
  const doomed = new Set();
  const base = await Promise.all(pages.map(async (p) => (await readTab(p)).uploaded));
  await waitFor(async () => {
    for (const [i, page] of pages.entries()) {
      if (doomed.size === 2 || doomed.has(i)) continue;
      if ((await readTab(page)).uploaded > base[i]) {
        doomed.add(i);
        await crash(page);
      }
    }
    return doomed.size === 2;
  }, { timeout: 30000, interval: 10, message: 'two tabs to upload' });
  const survivors = pages.filter((_, i) => !doomed.has(i));
  const doomedIds = [...doomed].map((i) => ids[i]);

  const result = await measurePlayback(survivors, { warmup: 0, measure: 30000 });
  console.log(describe(result));
  assert.equal(result.waiting, 0, 'no `waiting` in the surviving tabs');
  assert.equal(result.stalls, 0, 'no hls.js buffer stall in the surviving tabs');
  assert.deepEqual(result.fatal, []);
  assert.ok(result.fromPeers > 0, `the survivors still share with each other: ${describe(result)}`);
  for (const page of survivors) {
    const peers = await page.evaluate(() => window.shoalDemo.shoal.stats().connections.map((c) => c.peer));
    assert.ok(!peers.some((p) => doomedIds.includes(p)), 'the crashed tabs are no longer counted as peers');
  }
});

test('a starved page sheds its own load (uploads paused, says so) and resumes once it keeps up; the others play on', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: 3 });
  // Its own context, so its own renderer process: its busy main thread is its alone.
  const [starved] = (await openViewers(browser, node, { tabs: 1 })).pages;
  const all = [...pages, starved];
  await waitFor(async () => (await Promise.all(all.map(readTab))).every((tab) => tab.started), {
    timeout: 60000,
    message: 'every tab to start playing',
  });
  await starved.evaluate(() => {
    window.sheds = [];
    window.shoalDemo.shoal.addEventListener('load-shedding', (e) => window.sheds.push(e.detail));
  });
  await sleep(10000);
  const stallsBefore = await Promise.all(pages.map(async (p) => (await readTab(p)).stalls));
  const stats = () => starved.evaluate(() => window.shoalDemo.shoal.stats());
  assert.equal((await stats()).loadShedding, false, 'a page that keeps up does not shed');
  const peersBefore = (await stats()).connections.length;
  assert.ok(peersBefore > 0, `connected to other tabs first: ${peersBefore}`);

  // A weak device: the main thread busy 250 ms of every 260.
  await starved.evaluate(() => {
    window.hog = setInterval(() => { const t = performance.now(); while (performance.now() - t < 250); }, 10);
  });
  const shedAt = Date.now();
  await waitFor(async () => (await stats()).loadShedding, { timeout: 15000, interval: 500, message: 'the starved page to shed load' });
  const shedMs = Date.now() - shedAt;
  const uploaded = async () => Object.values((await stats()).pieces).reduce((n, s) => n + s.bytesUploaded, 0);
  await sleep(2000); // what was already handed to the network leaves
  const before = await uploaded();
  await sleep(6000);
  const during = (await uploaded()) - before;
  const peersWhileShedding = (await stats()).connections.length;

  await starved.evaluate(() => clearInterval(window.hog));
  const calmAt = Date.now();
  await waitFor(async () => !(await stats()).loadShedding, { timeout: 30000, message: 'the page to stop shedding once it keeps up' });
  const resumedMs = Date.now() - calmAt;
  const sheds = await starved.evaluate(() => window.sheds);
  const s = await stats();
  console.log(`shedding after ${shedMs} ms of a busy main thread (timers ${sheds[0]?.timerLateMs.toFixed(0)} ms late), ` +
    `uploaded ${during} B in 6 s while shedding, ${peersBefore} -> ${peersWhileShedding} peers; resumed ${resumedMs} ms after the page calmed`);
  assert.deepEqual(sheds.map((e) => e.active), [true, false], 'told when shedding began and ended');
  assert.ok(sheds[0].timerLateMs >= 60, `timers late (smoothed) past the 60 ms threshold: ${sheds[0].timerLateMs}`);
  assert.equal(s.loadSheddingEpisodes, 1);
  assert.ok(during < 64 * 1024, `uploads paused while shedding: ${during} B in 6 s`);
  assert.equal(peersWhileShedding, 0, 'no direct connections while shedding');
  const bypassed = await starved.evaluate(() => window.shoalDemo.integration.segments.bypassed);
  assert.ok(bypassed > 0, 'hls.js loaded fragments itself while Shoal shed its load');
  const stallsAfter = await Promise.all(pages.map(async (p) => (await readTab(p)).stalls));
  assert.deepEqual(stallsAfter, stallsBefore, 'the other viewers did not stall');
});
