// End-to-end: the demo's live stream played by Shaka Player (5.x, its own HLS parser and
// transmuxer) through `shoal/shaka`, segments shared over real WebRTC, integrity checked
// against the node's signatures; and Shaka and hls.js viewers sharing one swarm.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startNodeAndBrowser } from './harness.mjs';
import { describe, measurePlayback, openViewers, readTab } from './video-harness.mjs';

function assertClean(result) {
  assert.equal(result.waiting, 0, 'no `waiting` after playback started');
  assert.equal(result.stalls, 0, 'no Shaka buffering after playback started');
  assert.deepEqual(result.fatal, []);
  assert.deepEqual(result.errors, [], 'no Shaka error at all');
  assert.equal(result.fallbacks, 0, 'Shoal never had to hand a segment back to Shaka');
}

test('6 Shaka Player tabs play the fMP4 live stream: offload >= 80 % after warm-up, no stall', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: 6, query: 'player=shaka' });
  const result = await measurePlayback(pages, { warmup: 20000, measure: 30000 });
  console.log(describe(result));
  const versions = await Promise.all(pages.map((p) => p.evaluate(() => window.shoalDemo.shakaVersion)));
  assert.ok(versions.every((v) => /^v5\./.test(v)), `Shaka Player 5: ${versions}`);
  assertClean(result);
  assert.ok(result.offload >= 0.8, describe(result));
  // One swarm, the publisher's (named once Shoal started, after the first playlists), and
  // what the integration counts agrees with the runtime (whose stats() may lag by one
  // segment at most: it is refreshed every 100 ms).
  for (const page of pages) {
    const { segments, swarms, swarm } = await page.evaluate(() => {
      const stats = window.shoalDemo.shoal.stats();
      return { segments: window.shoalDemo.integration.segments, swarms: Object.keys(stats.pieces), swarm: Object.values(stats.pieces)[0] };
    });
    assert.equal(swarms.length, 1, `one swarm: ${swarms}`);
    const detail = JSON.stringify({ segments, bytesFromPeers: swarm.bytesFromPeers });
    assert.ok(Math.abs(segments.fromPeers - swarm.bytesFromPeers) <= 400000, detail);
  }
});

test('Shaka Player plays the MPEG-TS rendition through Shoal (its own transmuxer) and shares', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { pages } = await openViewers(browser, node, { tabs: 3, query: 'player=shaka&format=ts' });
  const result = await measurePlayback(pages, { warmup: 10000, measure: 20000 });
  console.log(describe(result));
  assertClean(result);
  assert.ok(result.offload >= 0.5, describe(result));
});

test('Shaka Player and hls.js viewers of one stream share segments with each other', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const shaka = await openViewers(browser, node, { tabs: 2, query: 'player=shaka' });
  const hls = await openViewers(browser, node, { tabs: 2 });
  const pages = [...shaka.pages, ...hls.pages];
  const result = await measurePlayback(pages, { warmup: 10000, measure: 20000 });
  console.log(describe(result));
  assertClean(result);
  // One swarm (the publisher's), one numbering (media sequence numbers): each Shaka tab
  // exchanged pieces with an hls.js tab.
  const hlsIds = new Set(await Promise.all(hls.pages.map((p) => p.evaluate(() => window.shoalDemo.shoal.peerId))));
  for (const page of shaka.pages) {
    assert.equal(await page.evaluate(() => Object.keys(window.shoalDemo.shoal.stats().pieces).length), 1, 'one swarm');
    const perPeer = await page.evaluate(() => Object.values(window.shoalDemo.shoal.stats().pieces)[0].perPeer);
    const withHls = Object.entries(perPeer).filter(([peer, t]) => hlsIds.has(peer) && t.down + t.up > 0);
    assert.ok(withHls.length > 0, `a Shaka tab exchanged pieces with hls.js tabs: ${JSON.stringify(perPeer)}`);
    assert.ok((await readTab(page)).fromPeers > 0);
  }
  assert.ok(result.offload >= 0.5, describe(result));
});
