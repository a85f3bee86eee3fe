// End-to-end: a viewer playing the live stream while strangers connect to it directly
// and send what issue 9 found could crash or drain a page — recursive and wrapping
// announcements, floods of availability and cancels, oversize and unknown frames,
// chunks nobody asked for, dozens of streams, a neighbour that announces everything and
// delivers nothing. The viewer must keep playing with no stall, stay within a memory
// bound, and cut off the peers that broke the protocol.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openHarness, startNodeAndBrowser, startPeer, stats, waitFor } from './harness.mjs';
import { describe, measurePlayback, openViewers } from './video-harness.mjs';

const MiB = 1024 * 1024;
const PIECES = '/shoal/pieces/2';

/** Victim-side view of its Shoal peer. */
const victimStats = (page) => page.evaluate(() => window.shoalDemo.shoal?.stats() ?? { pieces: {} });

test('a playing viewer survives hostile neighbours, cuts off those that break the protocol, and never stalls', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const { context, pages } = await openViewers(browser, node, { tabs: 2 });
  const [victim] = pages;
  const victimInfo = await waitFor(async () => {
    const s = await victimStats(victim);
    return s.address && Object.keys(s.pieces).length > 0 && { address: s.address, swarm: Object.keys(s.pieces)[0] };
  }, { timeout: 30000, message: 'the victim to join and be reachable' });
  const victimId = await victim.evaluate(() => window.shoalDemo.shoal.peerId);

  /** A stranger connected directly to the victim, with a raw piece stream open to it. */
  const stranger = async () => {
    const page = await openHarness(context, node);
    const id = await startPeer(page, {});
    await waitFor(async () => (await stats(page)).address, { message: 'the stranger to reach the node' });
    await page.evaluate((addr) => window.harness.connect(addr), victimInfo.address);
    const streamId = await page.evaluate((swarm) => window.harness.streamId(swarm), victimInfo.swarm);
    const open = () => page.evaluate(([peer, protocol]) => window.harness.openStream(peer, protocol, false), [victimId, PIECES]);
    const send = (handle, bytes) => page.evaluate(([h, b]) => window.harness.write(h, b).then(() => true, () => false), [handle, bytes]);
    const frames = (fn, ...args) => page.evaluate(([fn, args]) => window.pieces[fn](...args), [fn, args]);
    return { page, id, streamId, open, send, frames };
  };

  const measured = measurePlayback(pages, { warmup: 5000, measure: 40000 });
  const startedAt = Date.now();
  const expectBanned = [];
  const attacks = [];
  const attack = async (name, play, { banned }) => {
    const s = await stranger();
    const sent = await play(s);
    attacks.push(`${name}: sent ${sent}`);
    if (banned) expectBanned.push({ name, id: s.id });
    return s;
  };

  // 8. Announcements that used to recurse forever.
  await attack('have 10 then 65541', async (s) => {
    const h = await s.open();
    const bytes = [...await s.frames('hello', s.streamId), ...await s.frames('have', 10), ...await s.frames('have', 65541)];
    return (await s.send(h, bytes)) ? 'all' : 'cut';
  }, { banned: false });
  // 9. An announcement whose span wrapped a 32-bit usize.
  await attack('have 64·(2^32−1) then 0', async (s) => {
    const h = await s.open();
    const bytes = [...await s.frames('hello', s.streamId), ...await s.frames('have', '274877906880'), ...await s.frames('have', 0)];
    return (await s.send(h, bytes)) ? 'all' : 'cut';
  }, { banned: false });
  // 10. Availability far from the playlist, with full bitmaps, then a flood of cancels.
  await attack('16 full availability bitmaps and 5000 cancels', async (s) => {
    const h = await s.open();
    let bytes = [...await s.frames('hello', s.streamId)];
    const full = new Array(8192).fill(0xff);
    for (let i = 0; i < 16; i++) bytes = bytes.concat(await s.frames('availability', 1_000_000_000 * (i + 1), full));
    await s.send(h, bytes);
    let cancels = [];
    for (let i = 0; i < 5000; i++) cancels = cancels.concat(await s.frames('cancel', i));
    return (await s.send(h, cancels)) ? 'all' : 'cut';
  }, { banned: false });
  // A frame announcing a gigabyte, and a message type that does not exist.
  await attack('oversize frame', async (s) => {
    const h = await s.open();
    const bytes = [...await s.frames('hello', s.streamId), ...await s.frames('varint', 1 << 30), ...new Array(1000).fill(0x41)];
    return (await s.send(h, bytes)) ? 'all' : 'cut';
  }, { banned: true });
  await attack('unknown message type', async (s) => {
    const h = await s.open();
    return (await s.send(h, [...await s.frames('hello', s.streamId), ...await s.frames('unknown')])) ? 'all' : 'cut';
  }, { banned: true });
  // A chunk nobody asked for.
  await attack('unrequested data', async (s) => {
    const h = await s.open();
    const bytes = [...await s.frames('hello', s.streamId), ...await s.frames('data', 4242, 1, 0, new Array(2000).fill(7))];
    return (await s.send(h, bytes)) ? 'all' : 'cut';
  }, { banned: false });
  // 12. Dozens of streams at once.
  await attack('40 streams', async (s) => {
    let opened = 0;
    for (let i = 0; i < 40; i++) {
      try {
        const h = await s.open();
        if (await s.send(h, await s.frames('hello', s.streamId))) opened += 1;
      } catch {
        // refused: what we want
      }
    }
    return `${opened} of 40 streams`;
  }, { banned: false });
  // 13. A neighbour that announces the whole live window and never delivers.
  const poisoner = await attack('announces everything, delivers nothing', async (s) => {
    const h = await s.open();
    const bitmap = new Array(8192).fill(0xff);
    const ok = await s.send(h, [...await s.frames('hello', s.streamId), ...await s.frames('availability', 0, bitmap)]);
    // Keep announcing what comes next, like a real peer would.
    for (let i = 0; i < 20; i++) await s.send(h, await s.frames('availability', 0, bitmap));
    return ok ? 'announced' : 'cut';
  }, { banned: false });

  const result = await measured;
  console.log(describe(result));
  for (const line of attacks) console.log(`  ${line}`);
  const s = await victimStats(victim);
  const connected = new Set(s.connections.map((c) => c.peer));
  const wasm = s.wasmMemoryBytes / MiB;
  console.log(`victim: wasm memory ${wasm.toFixed(1)} MiB, ${s.bannedPeers} peers cut off, connected to ${connected.size}; attacks took ${((Date.now() - startedAt) / 1000).toFixed(0)} s; poisoner ${connected.has(poisoner.id) ? 'still connected' : 'cut off'}`);

  assert.equal(result.waiting, 0, 'no `waiting` on any viewer');
  assert.equal(result.stalls, 0, 'no stall on any viewer');
  assert.deepEqual(result.fatal, []);
  assert.ok(result.fromPeers > 0, 'the honest viewers still share');
  // Cache (64 MiB by default) plus what the runtime needs: the wasm heap only grows.
  assert.ok(wasm <= 64 + 48, `wasm memory ${wasm.toFixed(1)} MiB`);
  for (const { name, id } of expectBanned) {
    assert.ok(!connected.has(id), `the peer that sent "${name}" is cut off`);
  }
  assert.ok(s.bannedPeers >= expectBanned.length, `${s.bannedPeers} peers cut off`);
});
