// End-to-end: Shoal and js-libp2p (libp2p 3, @libp2p/webrtc 6) browser peers connect
// to each other over browser-to-browser /webrtc through the Shoal signalling node, both
// ways round, and move verified bytes over streams opened from either side. The
// js-libp2p page is web/test/js-libp2p/, bundled here with Vite and served from another
// origin, as a site using js-libp2p would serve it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, newContext, openHarness, serveDir, startNodeAndBrowser, startPeer, waitFor } from './harness.mjs';

const BYTES = 1024 * 1024;

/** A tab running the js-libp2p peer, started against the node at `nodeAddr`. */
async function openJsPeer(context, site, nodeAddr) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[js-libp2p page] ${error.stack ?? error}`));
  page.on('console', (msg) => msg.type() === 'error' && console.error(`[js-libp2p page] ${msg.text()}`));
  await page.goto(`${site.url}/index.html`);
  await page.waitForFunction(() => window.jsPeerReady === true);
  const id = await page.evaluate((addr) => window.jsPeer.start(addr), nodeAddr);
  const addr = await waitFor(() => page.evaluate(() => window.jsPeer.webrtcAddr()), {
    timeout: 20000,
    message: 'the js-libp2p peer to hold a relay reservation on the node',
  });
  return { page, id, addr };
}

/** A Shoal tab, started against the same node; resolves once it is reachable. */
async function openShoalPeer(context, node) {
  const page = await openHarness(context, node);
  const id = await startPeer(page, {});
  const addr = await waitFor(() => page.evaluate(() => window.harness.stats().address), {
    timeout: 20000,
    message: 'the Shoal peer to hold a relay reservation on the node',
  });
  return { page, id, addr };
}

/** Both sides see one direct (not relayed) connection to each other. */
async function assertDirect(shoal, js) {
  await waitFor(async () => {
    const conns = await js.page.evaluate(() => window.jsPeer.connections());
    return conns.some((c) => c.peer === shoal.id && !c.limited && c.addr.includes('/webrtc'));
  }, { timeout: 10000, message: 'js-libp2p to list a direct WebRTC connection to the Shoal peer' });
  const report = await shoal.page.evaluate(() => window.harness.report());
  const entry = report.find((r) => !r.server && r.peer === js.id);
  assert.ok(entry, `Shoal has an RTCPeerConnection to the js-libp2p peer (${JSON.stringify(report)})`);
  assert.equal(entry.connectionState, 'connected');
  // Direct: no TURN relay on either side (js-libp2p trickles its candidates late, so
  // Chromium may have learnt the remote one as peer-reflexive first).
  const pair = entry.selectedPair;
  assert.ok(pair && pair.localType !== 'relay' && pair.remoteType !== 'relay', `a direct candidate pair (${JSON.stringify(pair)})`);
}

/** Streams opened from each side carry 1 MiB, every byte checked by the receiver. */
async function assertBulkBothWays(shoal, js) {
  const fromJs = await js.page.evaluate(([peer, n]) => window.jsPeer.sendBulk(peer, n), [shoal.id, BYTES]);
  assert.deepEqual(fromJs, { intact: true, bytes: BYTES }, 'Shoal verified every byte js-libp2p sent');
  const fromShoal = await shoal.page.evaluate(([peer, n]) => window.harness.sendBulk(peer, n), [js.id, BYTES]);
  assert.equal(fromShoal.intact, true, 'js-libp2p verified every byte Shoal sent');
  assert.equal(fromShoal.bytes, BYTES);
  const received = await js.page.evaluate(() => window.jsPeer.received);
  assert.deepEqual(received.at(-1), { intact: true, bytes: BYTES });
}

test('Shoal and js-libp2p browser peers connect over /webrtc and exchange verified streams', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'shoal-interop-'));
  const { build } = await import('vite');
  await build({
    root: join(ROOT, 'web/test/js-libp2p'),
    base: './',
    logLevel: 'error',
    build: { outDir: work, emptyOutDir: true, chunkSizeWarningLimit: 4096 },
  });
  const site = await serveDir(work);
  const { node, browser } = await startNodeAndBrowser(t);
  t.after(async () => {
    await site.close();
    rmSync(work, { recursive: true, force: true });
  });
  const wellKnown = await (await fetch(`${node.url}/.well-known/shoal.json`)).json();
  const nodeAddr = wellKnown.multiaddrs.find((a) => a.includes('/webrtc-direct/'));
  const nodeWsAddr = wellKnown.multiaddrs.find((a) => a.includes('/ws/'));
  assert.ok(nodeAddr && nodeWsAddr, 'the node advertises /webrtc-direct and /ws addresses');

  const context = await newContext(browser, node);

  /** A Shoal page and a js-libp2p page, connected by `dial`, streams checked both ways. */
  const connectPair = async (dial, message) => {
    const shoal = await openShoalPeer(context, node);
    const js = await openJsPeer(context, site, nodeWsAddr);
    await waitFor(() => dial(shoal, js), { timeout: 20000, interval: 500, message });
    await assertDirect(shoal, js);
    await assertBulkBothWays(shoal, js);
    return { shoal, js };
  };

  await t.test('js-libp2p dials Shoal', async () => {
    const { shoal, js } = await connectPair(
      (shoal, js) => js.page.evaluate((addr) => window.jsPeer.dial(addr).then(() => true, () => false), shoal.addr),
      'js-libp2p to connect to Shoal over /webrtc',
    );
    await js.page.evaluate(() => window.jsPeer.stop());
    await Promise.all([shoal.page.close(), js.page.close()]);
  });

  await t.test('Shoal dials js-libp2p', async () => {
    const { shoal, js } = await connectPair(
      (shoal, js) => shoal.page.evaluate((addr) => window.harness.connect(addr).then(() => true, () => false), js.addr),
      'Shoal to connect to js-libp2p over /webrtc',
    );
    const connected = await shoal.page.evaluate(() => window.harness.eventsOf('peer-connected'));
    assert.ok(connected.some((e) => e.peer === js.id && e.dialer === true), 'Shoal reports the js-libp2p peer, dialled by it');

    // js-libp2p speaks neither gossip nor pieces: Shoal asks once per connection, not on
    // every 250 ms maintenance tick.
    await shoal.page.evaluate(() => window.harness.subscribe('news'));
    const channels = async () => (await shoal.page.evaluate(() => window.harness.report())).find((r) => r.peer === js.id).dataChannelsOpened;
    const before = await channels();
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const opened = (await channels()) - before;
    assert.ok(opened <= 2, `${opened} data channels opened in 3 s of idling with a non-Shoal peer`);
    await js.page.evaluate(() => window.jsPeer.stop());
    await Promise.all([shoal.page.close(), js.page.close()]);
  });

  await t.test('connect() refuses what is not a browser address', async () => {
    const shoal = await openShoalPeer(context, node);
    const error = await shoal.page.evaluate((addr) => window.harness.connect(addr).then(() => null, (e) => e.code), nodeAddr);
    assert.equal(error, 'invalid-address');
    const garbage = await shoal.page.evaluate(() => window.harness.connect('not a multiaddr').then(() => null, (e) => e.code));
    assert.equal(garbage, 'invalid-address');
    await shoal.page.close();
  });

  await t.test('a node address the page cannot read is named in the start error', async () => {
    const page = await openHarness(context, node);
    const failed = await page.evaluate((addr) => window.harness.start({ nodes: [addr] })
      .then(() => null, (e) => ({ code: e.code, message: e.message })),
    '/ip4/10.99.0.1/udp/1/webrtc-direct/certhash/zQmNotBase64url');
    assert.equal(failed?.code, 'no-node', JSON.stringify(failed));
    assert.match(failed.message, /unreadable: .*certhash must be multibase base64url/);
    await page.close();
  });
});
