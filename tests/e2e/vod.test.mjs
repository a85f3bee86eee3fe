// End-to-end: video on demand the way a site would run it. The site (a static server,
// not the node) serves an HLS VOD rendition whose records it signed with `shoal-sign`,
// and a page that adds Shoal to hls.js with the npm package's loader. Viewers at
// different positions share what they have already fetched, with no stall. Two shapes:
// a file per segment (MPEG-TS), and one fMP4 file whose segments are byte ranges
// (`EXT-X-BYTERANGE`, what packagers write with a "single file" option).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, waitFor } from './harness.mjs';
import { writeSingleFile } from './media.mjs';
import { signWithCli, startSite } from './site.mjs';

const SWARM = 'site.test/vod/360p';

/** The site's player page: plain hls.js plus Shoal in a few lines. */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<video id="video" muted playsinline></video>
<script type="module">
import { Shoal } from './pkg/index.js';
import { ShoalHls } from './pkg/hls.js';

const params = new URLSearchParams(location.search);
// The newest hls.js, or the oldest the package's peerDependencies admit.
await new Promise((resolve, reject) => {
  const script = Object.assign(document.createElement('script'), { onload: resolve, onerror: reject });
  script.src = params.get('hls') === 'oldest' ? './hls-oldest.min.js' : './hls.min.js';
  document.head.append(script);
});
const vod = (window.vod = { started: false, waiting: 0, stalls: 0, fatal: [] });
const shoal = await Shoal.create({ wellKnownUrl: params.get('wellKnown') });
// One swarm per rendition: \`{rendition}\` in the swarm id stands for the directory of
// the rendition's playlist (vod/low/stream.m3u8 -> low).
const swarmTemplate = params.get('swarm');
const swarmId = swarmTemplate.includes('{rendition}')
  ? (url) => swarmTemplate.replace('{rendition}', new URL(url).pathname.split('/').slice(-2)[0])
  : swarmTemplate;
const integration = new ShoalHls(shoal, { publisherKey: params.get('key'), swarmId, live: false });
const hls = new Hls({ ...integration.config(Hls), startPosition: Number(params.get('start')), startLevel: 0 });
integration.attach(hls);
const video = document.getElementById('video');
hls.loadSource(params.get('src'));
hls.attachMedia(video);
hls.on(Hls.Events.MANIFEST_PARSED, () => {
  // Renditions switch when the test says (at \`switchAt\` s of media), not when ABR would.
  if (params.has('switchAt')) hls.loadLevel = 0;
  video.play().catch(() => {});
});
const switchAt = Number(params.get('switchAt') ?? Infinity);
video.addEventListener('timeupdate', () => {
  if (video.currentTime >= switchAt && hls.loadLevel !== 1) hls.nextLevel = 1;
});
hls.on(Hls.Events.ERROR, (_e, data) => {
  if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) vod.stalls += 1;
  if (data.fatal) vod.fatal.push(data.details);
});
video.addEventListener('playing', () => { vod.started = true; });
video.addEventListener('waiting', () => { if (vod.started) vod.waiting += 1; });
vod.read = () => {
  const swarms = Object.fromEntries(Object.entries(shoal.stats().pieces).map(([id, s]) => [id, {
    fromPeers: s.bytesFromPeers, fromHttp: s.bytesFromHttp, rejected: s.chunksRejected,
  }]));
  const sum = (key) => Object.values(swarms).reduce((total, s) => total + s[key], 0);
  return {
    started: vod.started, waiting: vod.waiting, stalls: vod.stalls, fatal: vod.fatal,
    currentTime: video.currentTime, fromPeers: sum('fromPeers'), fromHttp: sum('fromHttp'),
    rejected: sum('rejected'), fallbacks: integration.segments.fallbacks, swarms,
    level: hls.currentLevel, bandwidthEstimate: hls.bandwidthEstimate,
  };
};
window.vodReady = true;
</script>
`;

/**
 * Signs every segment of the media playlist at `path` for `swarm` from Node.js, as a
 * packager written in JS would (`shoal/sign`): reads the playlist, signs each segment (a
 * whole file here) with its media sequence number, writes each record at its record URL.
 */
async function signFromNode(secretKey, swarm, path) {
  const { signSegment, recordUrl } = await import('../../pkg/sign.js');
  const dir = dirname(path);
  let sequence = 0;
  let signed = 0;
  for (const line of readFileSync(path, 'utf8').split('\n').map((l) => l.trim())) {
    if (line.startsWith('#EXT-X-MEDIA-SEQUENCE:')) sequence = Number(line.split(':')[1]);
    if (!line || line.startsWith('#')) continue;
    const data = readFileSync(join(dir, line));
    writeFileSync(join(dir, recordUrl(line)), signSegment({ secretKey, swarm, sequence, data }));
    sequence += 1;
    signed += 1;
  }
  return signed;
}

/**
 * The site (`startSite`) with the player page and, under vod/, what `prepare(dir)` writes
 * there; the publisher signs each playlist `sign` lists (`[path under vod/, swarm]`) with
 * `shoal-sign`, as the README tells a site to (or, with `signer: 'node'`, from Node.js
 * with `shoal/sign`). `open(params)` opens a viewer.
 */
async function startVodSite(t, prepare, sign, { signer = 'cli' } = {}) {
  const { dir, prepared, open } = await startSite(t, {
    page: PAGE,
    vendor: ['hls.min.js', 'hls-oldest.min.js'],
    label: 'vod',
    prepare: (dir) => prepare(join(dir, 'vod')),
    sign: async (keyFile, dir) => {
      for (const [playlist, swarm] of sign) {
        const path = join(dir, 'vod', playlist);
        const signed = signer === 'node'
          ? await signFromNode(readFileSync(keyFile), swarm, path)
          : signWithCli(['playlist', '--key', keyFile, '--swarm', swarm, path]);
        assert.equal(signed, 30, `every segment of ${playlist} signed`);
      }
    },
  });
  return { site: dir, prepared, open };
}

const read = (page) => page.evaluate(() => window.vod.read());

function assertPlayedClean(tabs) {
  for (const [i, r] of tabs.entries()) {
    assert.equal(r.waiting, 0, `tab ${i}: no waiting`);
    assert.equal(r.stalls, 0, `tab ${i}: no buffer stall`);
    assert.deepEqual(r.fatal, [], `tab ${i}: no fatal error`);
    assert.equal(r.rejected, 0, `tab ${i}: every chunk matched the site's signatures`);
  }
}

/** Writes one rendition of the demo media under `dir` in `shape`; the byte ranges if any. */
function writeShape(shape, dir) {
  if (shape === 'byte-range') return writeSingleFile(join(ROOT, 'target/demo-media/fmp4'), dir);
  cpSync(join(ROOT, shape === 'fmp4' ? 'target/demo-media/fmp4' : 'target/demo-media'), dir, { recursive: true });
  return null;
}

async function vodTest(t, shape) {
  const prepare = (dir) => writeShape(shape, dir);
  const { site, prepared: ranges, open } = await startVodSite(t, prepare, [['stream.m3u8', SWARM]]);
  if (ranges) {
    // One record per range, named by its bytes, and none for the file as a whole.
    for (const [start, end] of ranges) {
      assert.ok(existsSync(join(site, `vod/stream.mp4.${start}-${end}.shoal`)), `a record for bytes ${start}-${end}`);
    }
    assert.equal(readdirSync(join(site, 'vod')).filter((f) => f.endsWith('.shoal')).length, ranges.length);
  }
  const viewer = (start) => open({ src: './vod/stream.m3u8', swarm: SWARM, start: String(start) });

  // The first viewer watches from the start and, with hls.js's 30 s forward buffer,
  // soon holds most of the first minute. (The first 6 s after any start position come
  // over HTTP; see ShoalHls.deadlineFor.)
  const first = await viewer(0);
  await waitFor(async () => (await read(first)).currentTime >= 20, { timeout: 60000, message: 'the first viewer to play 20 s' });
  // Two more: one from the start, one from 20 s in (inside what the first one holds).
  const fromStart = await viewer(0);
  const fromMiddle = await viewer(20);
  const later = [fromStart, fromMiddle];
  await waitFor(async () => (await Promise.all(later.map(read))).every((r) => r.started), { timeout: 30000, message: 'the later viewers to start' });
  await sleep(20000);

  const tabs = await Promise.all([first, ...later].map(read));
  console.log(tabs.map((r, i) => `tab ${i}: at ${r.currentTime.toFixed(1)} s, ${(r.fromPeers / 1e6).toFixed(2)} MB from peers, ${(r.fromHttp / 1e6).toFixed(2)} MB over HTTP`).join('\n'));
  assertPlayedClean(tabs);
  assert.ok(tabs[1].currentTime >= 15 && tabs[2].currentTime >= 35, 'the later viewers played on from where they started');
  // What the first viewer already had reaches the viewer behind it mostly from peers.
  const behind = tabs[1];
  assert.ok(behind.fromPeers > behind.fromHttp, `the viewer behind got most of its bytes from peers (${JSON.stringify(behind)})`);
  assert.ok(tabs[2].fromPeers > 0, 'the viewer in the middle got some from peers');
}

test('VOD from a site that signs its own segments: viewers at different positions share, no stall', (t) => vodTest(t, 'files'));

test('VOD of byte-range segments in one fMP4 file: each range shares under its own record, no stall', (t) => vodTest(t, 'byte-range'));

test('a master playlist with two renditions: a swarm each, viewers switching rendition share in both, no stall', async (t) => {
  // Two renditions of the same media (a test needs two swarms and a switch between
  // them, not two encodings), each signed for its own swarm.
  const MASTER = [
    '#EXTM3U',
    '#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=640x360',
    'low/stream.m3u8',
    '#EXT-X-STREAM-INF:BANDWIDTH=1200000,RESOLUTION=640x360',
    'high/stream.m3u8',
    '',
  ].join('\n');
  const prepare = (dir) => {
    const media = join(ROOT, 'target/demo-media');
    for (const rendition of ['low', 'high']) {
      mkdirSync(join(dir, rendition), { recursive: true });
      for (const file of readdirSync(media).filter((f) => f.endsWith('.ts') || f.endsWith('.m3u8'))) {
        cpSync(join(media, file), join(dir, rendition, file));
      }
    }
    writeFileSync(join(dir, 'master.m3u8'), MASTER);
  };
  const swarms = { low: 'site.test/vod/low', high: 'site.test/vod/high' };
  const { open } = await startVodSite(t, prepare, [['low/stream.m3u8', swarms.low], ['high/stream.m3u8', swarms.high]]);
  // Each viewer plays the low rendition, then switches to the high one at 10 s.
  const viewer = () => open({ src: './vod/master.m3u8', swarm: 'site.test/vod/{rendition}', start: '0', switchAt: '10' });

  const first = await viewer();
  await waitFor(async () => (await read(first)).currentTime >= 24, { timeout: 60000, message: 'the first viewer to play 24 s' });
  const second = await viewer();
  await waitFor(async () => (await read(second)).currentTime >= 22, { timeout: 60000, message: 'the second viewer to play 22 s' });

  const tabs = await Promise.all([first, second].map(read));
  console.log(tabs.map((r, i) => `tab ${i}: at ${r.currentTime.toFixed(1)} s, level ${r.level}, per swarm ${JSON.stringify(r.swarms)}, hls.js bandwidth estimate ${Math.round(r.bandwidthEstimate / 1000)} kbit/s`).join('\n'));
  assertPlayedClean(tabs);
  for (const [i, r] of tabs.entries()) {
    assert.equal(r.level, 1, `tab ${i} plays the high rendition after the switch`);
    assert.deepEqual(Object.keys(r.swarms).sort(), Object.values(swarms).sort(), `tab ${i} joined one swarm per rendition`);
  }
  // The second viewer got each rendition's segments from the first one.
  for (const swarm of Object.values(swarms)) {
    assert.ok(tabs[1].swarms[swarm].fromPeers > 0, `the second viewer got ${swarm} segments from peers: ${JSON.stringify(tabs[1].swarms)}`);
  }
});

// The rest of the matrix of player versions and stream shapes, as VOD: two viewers from
// the start, the second while the first is 16 s in; the second gets segments from the
// first. (Live: the newest hls.js plays MPEG-TS and fMP4 in video.test.mjs, the oldest
// fMP4 there too; live byte-range streams are not covered.) The fMP4 cell's records are
// signed from Node.js with `shoal/sign` instead of the CLI.
for (const [hls, shape, signer] of [['oldest', 'ts', 'cli'], ['oldest', 'fmp4', 'cli'], ['oldest', 'byte-range', 'cli'], ['newest', 'fmp4', 'node']]) {
  const version = hls === 'oldest' ? 'hls.js 1.5.0' : 'hls.js 1.7';
  const signedBy = signer === 'node' ? ', records signed from Node.js (shoal/sign)' : '';
  test(`VOD matrix: ${version} x ${shape}${signedBy}: starts, plays with no stall, shares`, async (t) => {
    const { open } = await startVodSite(t, (dir) => writeShape(shape, dir), [['stream.m3u8', SWARM]], { signer });
    const viewer = () => open({ src: './vod/stream.m3u8', swarm: SWARM, start: '0', hls });
    const first = await viewer();
    await waitFor(async () => (await read(first)).currentTime >= 16, { timeout: 60000, message: 'the first viewer to play 16 s' });
    const second = await viewer();
    await waitFor(async () => (await read(second)).currentTime >= 14, { timeout: 60000, message: 'the second viewer to play 14 s' });
    const tabs = await Promise.all([first, second].map(read));
    const version = await second.evaluate(() => window.Hls.version);
    console.log(`hls.js ${version}, ${shape}: ` + tabs.map((r, i) => `tab ${i} at ${r.currentTime.toFixed(1)} s, ${(r.fromPeers / 1e6).toFixed(2)} MB from peers, ${(r.fromHttp / 1e6).toFixed(2)} MB over HTTP`).join('; '));
    if (hls === 'oldest') assert.equal(version, '1.5.0', 'the oldest hls.js peerDependencies admit');
    assertPlayedClean(tabs);
    assert.ok(tabs[1].fromPeers > 0, `the second viewer got segments from the first: ${JSON.stringify(tabs[1])}`);
  });
}
