// End-to-end: video on demand the way a site would run it. The site (a static server,
// not the node) serves an HLS VOD rendition whose records it signed with `shoal-sign`,
// and a page that adds Shoal to hls.js with the npm package's loader. Viewers at
// different positions share what they have already fetched, with no stall. Two shapes:
// a file per segment (MPEG-TS), and one fMP4 file whose segments are byte ranges
// (`EXT-X-BYTERANGE`, what packagers write with a "single file" option).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, newContext, serveDir, startNodeAndBrowser, waitFor } from './harness.mjs';

const SWARM = 'site.test/vod/360p';

/**
 * The fMP4 rendition as one file (init segment, then every media segment) and a
 * playlist of byte ranges into it; all but the first range give no offset (each starts
 * where the previous one ended). Returns the ranges.
 */
function writeSingleFile(fmp4, out) {
  const playlist = readFileSync(join(fmp4, 'stream.m3u8'), 'utf8');
  const parts = [readFileSync(join(fmp4, 'init.mp4'))];
  const lines = [];
  const ranges = [];
  let offset = parts[0].length;
  for (const line of playlist.split('\n')) {
    if (line.startsWith('#EXT-X-MAP:')) {
      lines.push(`#EXT-X-MAP:URI="stream.mp4",BYTERANGE="${parts[0].length}@0"`);
    } else if (line.endsWith('.m4s')) {
      const data = readFileSync(join(fmp4, line));
      parts.push(data);
      lines.push(ranges.length === 0 ? `#EXT-X-BYTERANGE:${data.length}@${offset}` : `#EXT-X-BYTERANGE:${data.length}`, 'stream.mp4');
      ranges.push([offset, offset + data.length]);
      offset += data.length;
    } else {
      lines.push(line);
    }
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'stream.mp4'), Buffer.concat(parts));
  writeFileSync(join(out, 'stream.m3u8'), lines.join('\n'));
  return ranges;
}

/** The site's player page: plain hls.js plus Shoal in a few lines. */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<video id="video" muted playsinline></video>
<script src="./hls.min.js"></script>
<script type="module">
import { Shoal } from './pkg/index.js';
import { ShoalHls } from './pkg/hls.js';

const params = new URLSearchParams(location.search);
const vod = (window.vod = { started: false, waiting: 0, stalls: 0, fatal: [] });
const shoal = await Shoal.create({ wellKnownUrl: params.get('wellKnown') });
const integration = new ShoalHls(shoal, { publisherKey: params.get('key'), swarmId: '${SWARM}', live: false });
const hls = new Hls({ ...integration.config(Hls), startPosition: Number(params.get('start')) });
integration.attach(hls);
const video = document.getElementById('video');
hls.loadSource('./vod/stream.m3u8');
hls.attachMedia(video);
hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
hls.on(Hls.Events.ERROR, (_e, data) => {
  if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) vod.stalls += 1;
  if (data.fatal) vod.fatal.push(data.details);
});
video.addEventListener('playing', () => { vod.started = true; });
video.addEventListener('waiting', () => { if (vod.started) vod.waiting += 1; });
vod.read = () => {
  const swarm = shoal.stats().pieces['${SWARM}'] ?? {};
  return {
    started: vod.started, waiting: vod.waiting, stalls: vod.stalls, fatal: vod.fatal,
    currentTime: video.currentTime, fromPeers: swarm.bytesFromPeers ?? 0, fromHttp: swarm.bytesFromHttp ?? 0,
    rejected: swarm.chunksRejected ?? 0, fallbacks: integration.segments.fallbacks,
  };
};
window.vodReady = true;
</script>
`;

async function vodTest(t, shape) {
  const site = mkdtempSync(join(tmpdir(), 'shoal-vod-'));
  t.after(() => rmSync(site, { recursive: true, force: true }));
  let ranges = null;
  if (shape === 'byte-range') {
    ranges = writeSingleFile(join(ROOT, 'target/demo-media/fmp4'), join(site, 'vod'));
  } else {
    cpSync(join(ROOT, 'target/demo-media'), join(site, 'vod'), { recursive: true });
  }
  cpSync(join(ROOT, 'pkg'), join(site, 'pkg'), { recursive: true });
  cpSync(join(ROOT, 'web/vendor/hls.min.js'), join(site, 'hls.min.js'));
  writeFileSync(join(site, 'index.html'), PAGE);

  // The publisher side, as the README tells a site to do it.
  mkdirSync(join(site, 'keys'));
  const sign = join(ROOT, 'target/release/shoal-sign');
  const keyFile = join(site, 'keys/publisher.key');
  const publicKey = execFileSync(sign, ['keygen', '--key', keyFile], { encoding: 'utf8' }).trim().split(/\s+/).pop();
  assert.match(publicKey, /^[0-9a-f]{64}$/, 'shoal-sign prints the public key');
  const signed = execFileSync(sign, ['playlist', '--key', keyFile, '--swarm', SWARM, join(site, 'vod/stream.m3u8')], { encoding: 'utf8' });
  assert.equal(signed.split('\n').filter((l) => l.startsWith('signed ')).length, 30, 'every segment of the rendition signed');
  rmSync(join(site, 'keys'), { recursive: true });
  if (ranges) {
    // One record per range, named by its bytes, and none for the file as a whole.
    for (const [start, end] of ranges) {
      assert.ok(existsSync(join(site, `vod/stream.mp4.${start}-${end}.shoal`)), `a record for bytes ${start}-${end}`);
    }
    assert.equal(readdirSync(join(site, 'vod')).filter((f) => f.endsWith('.shoal')).length, ranges.length);
  }

  const origin = await serveDir(site);
  const { node, browser } = await startNodeAndBrowser(t);
  t.after(() => origin.close());
  const context = await newContext(browser, node);
  const open = async (start) => {
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`[vod tab @${start}s] ${error.stack ?? error}`));
    const query = new URLSearchParams({ wellKnown: `${node.url}/.well-known/shoal.json`, key: publicKey, start: String(start) });
    await page.goto(`${origin.url}/index.html?${query}`);
    await page.waitForFunction(() => window.vodReady === true);
    return page;
  };
  const read = (page) => page.evaluate(() => window.vod.read());

  // The first viewer watches from the start and, with hls.js's 30 s forward buffer,
  // soon holds most of the first minute. (The first 6 s after any start position come
  // over HTTP; see ShoalHls.deadlineFor.)
  const first = await open(0);
  await waitFor(async () => (await read(first)).currentTime >= 20, { timeout: 60000, message: 'the first viewer to play 20 s' });
  // Two more: one from the start, one from 20 s in (inside what the first one holds).
  const fromStart = await open(0);
  const fromMiddle = await open(20);
  const later = [fromStart, fromMiddle];
  await waitFor(async () => (await Promise.all(later.map(read))).every((r) => r.started), { timeout: 30000, message: 'the later viewers to start' });
  await sleep(20000);

  const tabs = await Promise.all([first, ...later].map(read));
  console.log(tabs.map((r, i) => `tab ${i}: at ${r.currentTime.toFixed(1)} s, ${(r.fromPeers / 1e6).toFixed(2)} MB from peers, ${(r.fromHttp / 1e6).toFixed(2)} MB over HTTP`).join('\n'));
  for (const [i, r] of tabs.entries()) {
    assert.equal(r.waiting, 0, `tab ${i}: no waiting`);
    assert.equal(r.stalls, 0, `tab ${i}: no buffer stall`);
    assert.deepEqual(r.fatal, [], `tab ${i}: no fatal error`);
    assert.equal(r.rejected, 0, `tab ${i}: every chunk matched the site's signatures`);
  }
  assert.ok(tabs[1].currentTime >= 15 && tabs[2].currentTime >= 35, 'the later viewers played on from where they started');
  // What the first viewer already had reaches the viewer behind it mostly from peers.
  const behind = tabs[1];
  assert.ok(behind.fromPeers > behind.fromHttp, `the viewer behind got most of its bytes from peers (${JSON.stringify(behind)})`);
  assert.ok(tabs[2].fromPeers > 0, 'the viewer in the middle got some from peers');
}

test('VOD from a site that signs its own segments: viewers at different positions share, no stall', (t) => vodTest(t, 'files'));

test('VOD of byte-range segments in one fMP4 file: each range shares under its own record, no stall', (t) => vodTest(t, 'byte-range'));
