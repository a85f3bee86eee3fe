// End-to-end: a real signalling node under the attacks anyone on the internet can make
// without an identity, each with numbers — the node's memory and descriptors stay
// bounded, the attacker's connections are dropped, and honest users keep being served.
//
// The attacker uses its own address (10.99.0.2, added inside the test's network
// namespace) so the per-address limits it meets are not the honest pages' (10.99.0.1).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, TEST_IP, launchBrowser, startNode, startPeer, stats, waitFor } from './harness.mjs';

const ATTACKER = '10.99.0.2';
const MiB = 1024 * 1024;
// `scripts/bench.sh node-probes` runs the STUN flood at benchmark scale.
const FLOOD_COUNT = Number(process.env.SHOAL_FLOOD_COUNT ?? 20000);
const FLOOD_RATE = Number(process.env.SHOAL_FLOOD_RATE ?? 4000);
const FLOOD_JOINS = Number(process.env.SHOAL_FLOOD_JOINS ?? 3);

function addAttackerAddress() {
  try {
    execFileSync('ip', ['addr', 'add', `${ATTACKER}/24`, 'dev', 'v0'], { stdio: 'ignore' });
  } catch {
    // Already there (an earlier test in this process added it).
  }
}

/** The node process's resident memory (bytes) and open descriptors. */
function usage(node) {
  const status = readFileSync(`/proc/${node.proc.pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024;
  return { rss, fds: readdirSync(`/proc/${node.proc.pid}/fd`).length };
}

/** Opens a TCP connection from the attacker's address; resolves once connected. */
function connect(port, host = TEST_IP) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, localAddress: ATTACKER });
    socket.on('error', () => {});
    socket.once('connect', () => resolve(socket));
    socket.once('close', () => reject(new Error('closed before connecting')));
  });
}

/** Resolves once every socket is closed, or after `ms` with how many are still open. */
async function openAfter(sockets, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline && sockets.some((s) => !s.destroyed && !s.closed)) await sleep(100);
  return sockets.filter((s) => !s.destroyed && !s.closed).length;
}

function closeAll(sockets) {
  for (const s of sockets) s.destroy();
}

async function connectMany(port, count) {
  const settled = await Promise.allSettled(Array.from({ length: count }, () => connect(port)));
  return settled.filter((r) => r.status === 'fulfilled').map((r) => r.value);
}

test('WebSocket frame headers announcing 200 MiB payloads cost the node nothing', async (t) => {
  addAttackerAddress();
  const node = await startNode({ extraArgs: ['--handshake-timeout-secs', '3'] });
  t.after(() => node.stop());
  const before = usage(node);
  const sockets = await connectMany(node.ports.ws, 50);
  const upgrade = 'GET / HTTP/1.1\r\nHost: shoal\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
  // A masked binary frame announcing 200 MiB (64-bit length), then nothing.
  const header = Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0x0c, 0x80, 0, 0, 1, 2, 3, 4]);
  for (const s of sockets) {
    s.write(upgrade);
    s.once('data', () => s.write(header));
  }
  await sleep(1500);
  const during = usage(node);
  const stillOpen = await openAfter(sockets, 6000);
  closeAll(sockets);
  const grew = (during.rss - before.rss) / MiB;
  console.log(`ws frame headers: ${sockets.length} connections, node RSS +${grew.toFixed(1)} MiB, still open after the handshake timeout: ${stillOpen}`);
  assert.ok(grew < 32, `RSS grew ${grew.toFixed(1)} MiB`);
  assert.equal(stillOpen, 0, 'every attacking connection is dropped');
});

test('idle TCP connections are refused past the per-address cap and dropped at the handshake timeout', async (t) => {
  addAttackerAddress();
  const node = await startNode({ extraArgs: ['--handshake-timeout-secs', '2'] });
  t.after(() => node.stop());
  const before = usage(node);
  const sockets = await connectMany(node.ports.ws, 300);
  await sleep(500);
  const held = sockets.filter((s) => !s.destroyed && !s.closed).length;
  const stillOpen = await openAfter(sockets, 5000);
  const after = usage(node);
  closeAll(sockets);
  console.log(`idle tcp: 300 attempts, ${held} held after 0.5 s (cap 16 pending per address), ${stillOpen} after the 2 s handshake timeout; fds ${before.fds} -> ${after.fds}`);
  assert.ok(held <= 16, `${held} idle connections held`);
  assert.equal(stillOpen, 0);
  assert.ok(after.fds <= before.fds + 4, `descriptors ${before.fds} -> ${after.fds}`);
  // And the honest address still gets in at once.
  const res = await fetch(`http://${TEST_IP}:${node.ports.http}/.well-known/shoal.json`);
  assert.equal(res.status, 200);
});

test('slowloris on HTTP: unfinished headers are dropped at the header timeout; honest requests are served meanwhile', async (t) => {
  addAttackerAddress();
  const node = await startNode({ extraArgs: ['--http-header-timeout-secs', '2'] });
  t.after(() => node.stop());
  const before = usage(node);
  const sockets = await connectMany(node.ports.http, 200);
  for (const s of sockets) s.write('GET / HTTP/1.1\r\nHost: shoal\r\nX-Slow: ');
  const drip = setInterval(() => {
    for (const s of sockets) if (!s.destroyed) s.write('a'.repeat(1024));
  }, 200);
  await sleep(1000);
  const started = performance.now();
  const res = await fetch(`http://${TEST_IP}:${node.ports.http}/.well-known/shoal.json`);
  const honestMs = performance.now() - started;
  const during = usage(node);
  const stillOpen = await openAfter(sockets, 5000);
  clearInterval(drip);
  closeAll(sockets);
  const grew = (during.rss - before.rss) / MiB;
  console.log(`slowloris: 200 connections dripping headers, honest request ${honestMs.toFixed(0)} ms, node RSS +${grew.toFixed(1)} MiB, still open after the 2 s header timeout: ${stillOpen}`);
  assert.equal(res.status, 200);
  assert.ok(honestMs < 1000, `an honest request took ${honestMs.toFixed(0)} ms`);
  assert.ok(grew < 32, `RSS grew ${grew.toFixed(1)} MiB`);
  assert.equal(stillOpen, 0);
});

test('refused attempts leak no per-address slot: after a flood of refusals the address connects again', async (t) => {
  addAttackerAddress();
  const node = await startNode({ extraArgs: ['--handshake-timeout-secs', '2', '--max-connections-per-ip', '4', '--max-pending-per-ip', '4'] });
  t.after(() => node.stop());
  const first = await connectMany(node.ports.ws, 40);
  await sleep(300);
  const held = first.filter((s) => !s.destroyed && !s.closed).length;
  await openAfter(first, 5000);
  closeAll(first);
  const refused = (await node.metrics())['shoal_refusals_total{reason="connections_per_ip"}'] ?? 0;
  // Every slot came back: four new idle connections are held again (until the timeout).
  const second = await connectMany(node.ports.ws, 4);
  await sleep(300);
  const heldAgain = second.filter((s) => !s.destroyed && !s.closed).length;
  closeAll(second);
  console.log(`slot leak: 40 attempts at a cap of 4, ${held} held, ${refused} refused; afterwards ${heldAgain} of 4 held again`);
  assert.equal(held, 4);
  assert.ok(refused >= 36, `${refused} refusals counted`);
  assert.equal(heldAgain, 4);
});

test('a STUN flood from spoofed addresses leaks a bounded number of descriptors; known networks keep joining', async (t) => {
  const node = await startNode();
  const browser = await launchBrowser();
  t.after(async () => {
    await browser.close();
    await node.stop();
  });
  const context = await browser.newContext();
  const open = async () => {
    const page = await context.newPage();
    await page.goto(`${node.url}/web/test/harness.html`);
    await page.waitForFunction(() => window.harness !== undefined);
    return page;
  };
  const joinTime = async () => {
    const page = await open();
    const started = Date.now();
    await startPeer(page, { swarm: 'probe' });
    await waitFor(async () => (await stats(page)).joined, { timeout: 20000, message: 'a page to join during the flood' });
    const ms = Date.now() - started;
    await page.close();
    return ms;
  };
  // A page from this network connects first (the network becomes known).
  const warm = await joinTime();
  const before = usage(node);
  const count = FLOOD_COUNT;
  const flood = spawn('/usr/bin/python3', [`${ROOT}/tests/e2e/tools/stun_flood.py`, TEST_IP, String(node.ports.webrtc), String(count), String(FLOOD_RATE), '172.16'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let floodRunning = true;
  const flooded = new Promise((resolve) => flood.once('exit', (code) => { floodRunning = false; resolve(code); }));
  await sleep(1000);
  const during = [];
  while (during.length < FLOOD_JOINS && floodRunning) during.push(await joinTime());
  const code = await flooded;
  assert.equal(code, 0, 'the flood tool ran');
  await sleep(12000); // every admitted spoofed handshake has timed out
  const after = usage(node);
  const m = await node.metrics();
  const refused = m['shoal_refusals_total{reason="webrtc_handshakes"}'] ?? 0;
  const failed = m.shoal_webrtc_handshakes_failed_total ?? 0;
  const grew = (after.rss - before.rss) / MiB;
  const sorted = [...during].sort((a, b) => a - b);
  const p99 = sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)];
  console.log(`stun flood: ${count} spoofed datagrams at ${FLOOD_RATE}/s; ${refused} refused before any peer connection, ${failed} failed handshakes (leaked upstream); node fds ${before.fds} -> ${after.fds}, RSS +${grew.toFixed(1)} MiB; join time before ${warm} ms, during the flood (${during.length} pages) median ${sorted[Math.floor(sorted.length / 2)]} ms, p99 ${p99} ms, max ${sorted.at(-1)} ms`);
  assert.ok(during.length >= 1, 'at least one page joined while the flood ran');
  assert.ok(after.fds - before.fds <= 2 * 64 + 8, `descriptors ${before.fds} -> ${after.fds}`);
  assert.ok(grew < 64, `RSS grew ${grew.toFixed(1)} MiB`);
  assert.ok(refused >= count * 0.9, `${refused} refused`);
  for (const ms of during) assert.ok(ms < 5000, `a page from a known network took ${ms} ms to join during the flood`);
});
