// End-to-end: the demo's live stream played by Shaka Player (5.x, its own HLS parser and
// transmuxer) through `shoal/shaka`, segments shared over real WebRTC, integrity checked
// against the node's signatures; the demo's live DASH stream (video and audio, a swarm
// each); Shaka and hls.js viewers sharing one swarm; a DASH VOD stream a site signed
// with `shoal-sign mpd`, and an HLS stream of byte ranges, served by a static server.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, startNodeAndBrowser, waitFor } from './harness.mjs';
import { writeSingleFile } from './media.mjs';
import { SHOAL_SIGN, signWithCli, startSite } from './site.mjs';
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

test('Shaka Player plays the live DASH stream (video and audio, a swarm each) and shares both', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  // Plain Shaka first, the baseline: on this stream it sometimes stalls once within a
  // second of starting (before Shoal is even created in the Shoal tabs), so stalls are
  // compared after the start.
  const plain = await openViewers(browser, node, { tabs: 4, query: 'format=dash&shoal=0' });
  const baseline = await measurePlayback(plain.pages, { warmup: 8000, measure: 8000 });
  console.log(`plain Shaka: ${describe(baseline)}, stalls after the start ${baseline.stallsMeasured}`);
  await plain.context.close();

  const { pages } = await openViewers(browser, node, { tabs: 4, query: 'format=dash' });
  const result = await measurePlayback(pages, { warmup: 15000, measure: 20000 });
  console.log(`Shoal: ${describe(result)}, stalls after the start ${result.stallsMeasured}`);
  assert.equal(result.stallsMeasured, 0, `no Shaka buffering after the warm-up: ${describe(result)}`);
  assert.equal(result.waitingMeasured, 0, 'no `waiting` after the warm-up');
  assert.deepEqual(result.errors, [], 'no Shaka error at all');
  assert.equal(result.fallbacks, 0, 'Shoal never had to hand a segment back to Shaka');
  assert.ok(result.offload >= 0.6, describe(result));
  // Every tab joined the two representations' swarms, and each swarm's segments crossed
  // between tabs.
  const swarms = await Promise.all(pages.map((p) => p.evaluate(() => window.shoalDemo.shoal.stats().pieces)));
  for (const [i, pieces] of swarms.entries()) {
    assert.deepEqual(Object.keys(pieces).sort(), ['shoal-demo/dash/0', 'shoal-demo/dash/1'], `tab ${i}: a swarm per representation`);
    assert.equal(Object.values(pieces).reduce((n, s) => n + s.chunksRejected + s.recordsRefused, 0), 0, `tab ${i}: every chunk and record verified`);
  }
  for (const swarm of ['shoal-demo/dash/0', 'shoal-demo/dash/1']) {
    assert.ok(swarms.some((pieces) => pieces[swarm].bytesFromPeers > 0), `${swarm}: segments from peers`);
  }
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

/** A site's Shaka Player page for a DASH VOD stream it signed with `shoal-sign mpd`. */
const DASH_SWARM = 'site.test/dash/$RepresentationID$';
const DASH_PAGE = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<video id="video" muted playsinline></video>
<script src="./shaka-player.compiled.js"></script>
<script type="module">
import { Shoal } from './pkg/index.js';
import { ShoalShaka } from './pkg/shaka.js';

const params = new URLSearchParams(location.search);
const vod = (window.vod = { started: false, startedAt: 0, waiting: 0, waitingAfter: [], stalls: 0, stallsAt: [], errors: [] });
// ?shoal=0: plain Shaka, the baseline.
const plain = params.get('shoal') === '0';
const shoal = plain ? null : await Shoal.create({ wellKnownUrl: params.get('wellKnown') });
const player = new shaka.Player();
const swarmId = params.get('swarm') ?? '${DASH_SWARM}';
const integration = plain ? { segments: { fallbacks: 0 } } : new ShoalShaka(shoal, { publisherKey: params.get('key'), swarmId, live: false }).attach(player, shaka);
const video = document.getElementById('video');
player.addEventListener('error', (e) => vod.errors.push(e.detail?.code));
player.addEventListener('buffering', (e) => {
  if (e.buffering && vod.started) {
    vod.stalls += 1;
    vod.stallsAt.push({ after: Math.round(performance.now() - vod.startedAt), at: video.currentTime, buffered: [...Array(video.buffered.length).keys()].map((i) => [video.buffered.start(i), video.buffered.end(i)]) });
  }
});
video.addEventListener('playing', () => { if (!vod.started) vod.startedAt = performance.now(); vod.started = true; });
video.addEventListener('waiting', () => {
  if (!vod.started) return;
  vod.waiting += 1;
  vod.waitingAfter.push(Math.round(performance.now() - vod.startedAt));
});
await player.attach(video);
await player.load(params.get('src') ?? './dash/stream.mpd', Number(params.get('start')));
video.play().catch(() => {});
vod.read = () => {
  const pieces = shoal ? shoal.stats().pieces : {};
  const sum = (key) => Object.values(pieces).reduce((n, s) => n + s[key], 0);
  return {
    started: vod.started, waiting: vod.waiting, waitingAfter: vod.waitingAfter, stalls: vod.stalls, stallsAt: vod.stallsAt, errors: vod.errors, currentTime: video.currentTime,
    swarms: Object.keys(pieces).sort(), fromPeers: sum('bytesFromPeers'), fromHttp: sum('bytesFromHttp'),
    rejected: sum('chunksRejected'), recordsRefused: sum('recordsRefused'), fallbacks: integration.segments.fallbacks,
  };
};
window.vodReady = true;
</script>
`;

test('Shaka Player, DASH VOD signed with shoal-sign mpd: one swarm per representation, viewers share, no stall plain Shaka lacks', async (t) => {
  const { newViewers } = await startSite(t, {
    page: DASH_PAGE,
    vendor: ['shaka-player.compiled.js'],
    label: 'dash',
    prepare: (dir) => cpSync(join(ROOT, 'target/demo-media/dash'), join(dir, 'dash'), { recursive: true }),
    sign: (keyFile, dir) => {
      const mpd = join(dir, 'dash/stream.mpd');
      // One swarm per representation: without $RepresentationID$ the two would collide.
      assert.throws(() => execFileSync(SHOAL_SIGN, ['mpd', '--key', keyFile, '--swarm', 'site.test/dash', mpd], { stdio: 'pipe' }),
        /RepresentationID/);
      assert.equal(signWithCli(['mpd', '--key', keyFile, '--swarm', DASH_SWARM, mpd]), 60, 'every segment of video and audio signed');
    },
  });
  // The same three viewers twice: plain Shaka (`shoal=0`, the HTTP-only baseline), then
  // with Shoal. The first watches from the start; once it is 20 s in, one more starts from
  // the start and one from 15 s (inside what the first holds).
  const watch = async (shoal) => {
    const viewers = await newViewers();
    const open = (start) => viewers.open({ start: String(start), shoal: shoal ? '1' : '0' });
    const read = (page) => page.evaluate(() => window.vod.read());
    const first = await open(0);
    await waitFor(async () => (await read(first)).currentTime >= 20, { timeout: 60000, message: 'the first viewer to play 20 s' });
    const later = [await open(0), await open(15)];
    await waitFor(async () => (await Promise.all(later.map(read))).every((r) => r.started), { timeout: 30000, message: 'the later viewers to start' });
    await sleep(15000);
    const tabs = await Promise.all([first, ...later].map(read));
    await viewers.close();
    return tabs;
  };
  const plain = await watch(false);
  const tabs = await watch(true);

  const line = (r) => `at ${r.currentTime.toFixed(1)} s, ${(r.fromPeers / 1e6).toFixed(2)} MB from peers, ${(r.fromHttp / 1e6).toFixed(2)} MB over HTTP, stalls ${JSON.stringify(r.stallsAt)}`;
  console.log(tabs.map((r, i) => `DASH tab ${i}: Shoal ${line(r)}; plain Shaka: stalls ${JSON.stringify(plain[i].stallsAt)}`).join('\n'));
  for (const [i, r] of tabs.entries()) {
    const detail = `tab ${i}: ${JSON.stringify(r)}; plain Shaka ${JSON.stringify(plain[i])}`;
    assert.deepEqual(r.swarms, ['site.test/dash/0', 'site.test/dash/1'], `video and audio, a swarm each: ${detail}`);
    // Peers never make it worse: no stall plain Shaka does not have at the same position.
    // Shaka sometimes buffers within a second of its first frame here, at the 0.08 s gap
    // before the first video frame, with or without Shoal (which a page creates only
    // once 3 s of media are buffered): stalls are compared after that first second.
    const late = (times) => times.filter((after) => after >= 1000).length;
    assert.ok(late(r.stallsAt.map((x) => x.after)) <= late(plain[i].stallsAt.map((x) => x.after)), detail);
    assert.ok(late(r.waitingAfter) <= late(plain[i].waitingAfter), detail);
    assert.deepEqual(r.errors, [], detail);
    assert.equal(r.rejected + r.recordsRefused, 0, `every chunk and record matched the site's signatures: ${detail}`);
    assert.equal(r.fallbacks, 0, detail);
  }
  assert.ok(tabs[1].fromPeers > tabs[1].fromHttp, `the viewer behind got most of its bytes from peers: ${JSON.stringify(tabs[1])}`);
  assert.ok(tabs[2].fromPeers > 0, 'the viewer in the middle got some from peers');
});

test('Shaka Player, HLS VOD of byte-range segments (one fMP4 file): each range shared under its own record, no stall', async (t) => {
  const swarm = 'site.test/vod/ranges';
  let ranges = [];
  const { open: openAt } = await startSite(t, {
    page: DASH_PAGE,
    vendor: ['shaka-player.compiled.js'],
    label: 'shaka ranges',
    prepare: (dir) => { ranges = writeSingleFile(join(ROOT, 'target/demo-media/fmp4'), join(dir, 'vod')); },
    sign: (keyFile, dir) => {
      const signed = signWithCli(['playlist', '--key', keyFile, '--swarm', swarm, join(dir, 'vod/stream.m3u8')]);
      assert.equal(signed, ranges.length, 'a record per range');
    },
  });
  const open = () => openAt({ start: '0', src: './vod/stream.m3u8', swarm });
  const read = (page) => page.evaluate(() => window.vod.read());
  const first = await open();
  await waitFor(async () => (await read(first)).currentTime >= 16, { timeout: 60000, message: 'the first viewer to play 16 s' });
  const second = await open();
  await waitFor(async () => (await read(second)).currentTime >= 14, { timeout: 60000, message: 'the second viewer to play 14 s' });
  const tabs = await Promise.all([first, second].map(read));
  console.log(tabs.map((r, i) => `Shaka byte ranges, tab ${i}: at ${r.currentTime.toFixed(1)} s, ${(r.fromPeers / 1e6).toFixed(2)} MB from peers, ${(r.fromHttp / 1e6).toFixed(2)} MB over HTTP, stalls ${r.stalls}`).join('\n'));
  for (const [i, r] of tabs.entries()) {
    const detail = `tab ${i}: ${JSON.stringify(r)}`;
    assert.deepEqual(r.swarms, [swarm], detail);
    assert.equal(r.stalls + r.waiting, 0, detail);
    assert.deepEqual(r.errors, [], detail);
    assert.equal(r.rejected + r.recordsRefused, 0, detail);
    assert.equal(r.fallbacks, 0, detail);
  }
  assert.ok(tabs[0].fromHttp > 0, 'the first viewer fetched the ranges through Shoal');
  assert.ok(tabs[1].fromPeers > tabs[1].fromHttp, `the second viewer got most of its bytes from the first: ${JSON.stringify(tabs[1])}`);
});
