// Node capacity: a real shoal-node process and `shoal-load` (browser-like peers, each
// with its own identity and libp2p swarm: connect, relay reservation, join, pings,
// stay) at a steady join rate, per transport. Reports peers held, join latency,
// joins/s, and what the node costs: RSS and descriptors per peer, CPU.
//
// All peers come from one address here, so the per-address limits (connections,
// reservations, members per network) are lifted for the run; everything else is the
// node's defaults unless named below.
//
// Env: BENCH_WS_PEERS (10000), BENCH_WEBRTC_PEERS (5000), BENCH_RATE (100 joins/s),
// BENCH_HOLD (30 s), BENCH_SWARMS (100), BENCH_TRANSPORTS (websocket,webrtc-direct),
// BENCH_PING (s between each peer's pings to the node; pages: 1), BENCH_PIN (1: node on
// CPU 0, load generator on CPU 1).

import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, startNode } from '../e2e/harness.mjs';

const LOAD_BIN = process.env.SHOAL_LOAD_BIN ?? join(ROOT, 'target/release/shoal-load');
const RATE = Number(process.env.BENCH_RATE ?? 100);
const HOLD = Number(process.env.BENCH_HOLD ?? 30);
const SWARMS = Number(process.env.BENCH_SWARMS ?? 100);
const PEERS = {
  websocket: Number(process.env.BENCH_WS_PEERS ?? 10000),
  'webrtc-direct': Number(process.env.BENCH_WEBRTC_PEERS ?? 5000),
};
// Extra node flags for an experiment, e.g. BENCH_NODE_ARGS="--ping-interval-secs 15".
const NODE_ARGS = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
const PING = Number(process.env.BENCH_PING ?? 1);
const PIN = process.env.BENCH_PIN !== '0';
const TRANSPORTS = (process.env.BENCH_TRANSPORTS ?? 'websocket,webrtc-direct').split(',');

/** One address for every peer: lift the per-address limits, nothing else. */
const ONE_ADDRESS_ARGS = [
  '--max-connections-per-ip', '1000000', '--max-pending-per-ip', '100000',
  '--reservations-per-ip-per-minute', '1000000', '--max-members-per-network', '1000000',
  '--max-sample-per-network', '1000000',
];

function sample(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const ticks = Number(stat[11]) + Number(stat[12]);
  return { rss: rssKb * 1024, fds: readdirSync(`/proc/${pid}/fd`).length, cpu: ticks / 100, at: Date.now() };
}

/**
 * /webrtc-direct: the handshake gate (default 20/s, bursts of 100, 64 in flight: the
 * spoofed-flood guard of webrtc_gate.rs) would refuse most of 100 joins/s; it is opened
 * to what one core measured to sustain, as README's operator table says to.
 */
const WEBRTC_ARGS = ['--webrtc-handshakes-per-sec', '100', '--webrtc-handshake-burst', '100', '--max-webrtc-handshakes', '256'];

async function run(transport, peers, extraArgs = []) {
  const gate = transport === 'webrtc-direct' && process.env.BENCH_WEBRTC_DEFAULT_GATE !== '1' ? WEBRTC_ARGS : [];
  const node = await startNode({ extraArgs: [...ONE_ADDRESS_ARGS, ...gate, ...NODE_ARGS, ...extraArgs] });
  try {
    const doc = await (await fetch(`${node.url}/.well-known/shoal.json`)).json();
    const addr = doc.multiaddrs.find((a) => a.includes(transport === 'websocket' ? '/ws/' : '/webrtc-direct/'));
    await sleep(500);
    const base = sample(node.proc.pid);
    // The node gets CPU 0 to itself, the load generator CPU 1: what is measured is the
    // node, on one core, not the two fighting over both.
    if (PIN) spawn('taskset', ['-a', '-pc', '0', String(node.proc.pid)], { stdio: 'ignore' });
    // rust-libp2p's native WebRTC reads 8 KiB at a time and fails on a join answer of
    // more than ~20 members (browsers read whole messages): keep swarms that small.
    const swarms = transport === 'webrtc-direct' ? Math.max(SWARMS, Math.ceil(peers / 16)) : SWARMS;
    const load = spawn(PIN ? 'taskset' : LOAD_BIN, [...(PIN ? ['-c', '1', LOAD_BIN] : []), '--node', addr, '--peers', String(peers), '--rate', String(RATE), '--swarms', String(swarms),
      '--hold-secs', String(HOLD), '--bind-ip', process.env.SHOAL_TEST_IP ?? '10.99.0.1',
      '--ping-secs', String(PING)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    load.stdout.on('data', (c) => { out += c; });
    // Peaks while holding, and the last sample before the load generator stopped.
    const peak = { rss: base.rss, fds: base.fds, metrics: null, last: null };
    let startPhaseEnd = null;
    const exited = new Promise((resolve) => load.once('exit', resolve));
    let done = false;
    exited.then(() => { done = true; });
    while (!done) {
      await sleep(1000);
      if (done) break;
      const s = sample(node.proc.pid);
      try {
        s.metrics = await node.metrics();
      } catch {
        // The node is busy: keep the last reading.
      }
      peak.rss = Math.max(peak.rss, s.rss);
      peak.fds = Math.max(peak.fds, s.fds);
      if (s.metrics && !(s.metrics.shoal_connected_peers < peak.metrics?.shoal_connected_peers)) peak.metrics = s.metrics;
      // Samples after the load generator began stopping its peers do not count.
      if (!done) peak.last = s;
      if (!startPhaseEnd && s.at - base.at > (peers / RATE) * 1000) startPhaseEnd = s;
    }
    const report = JSON.parse(out.trim().split('\n').pop());
    const end = peak.last ?? base;
    const held = report.held_at_end;
    const startCpu = startPhaseEnd ? (startPhaseEnd.cpu - base.cpu) / ((startPhaseEnd.at - base.at) / 1000) : null;
    const holdCpu = startPhaseEnd ? (end.cpu - startPhaseEnd.cpu) / Math.max(1, (end.at - startPhaseEnd.at) / 1000) : null;
    const metrics = peak.metrics ?? {};
    return {
      transport, peers, rate: RATE, swarms, nodeArgs: [...gate, ...NODE_ARGS, ...extraArgs].join(' '), held, joined: report.joined, refused: report.refused, failed: report.failed,
      dropped: report.dropped, examples: report.examples,
      joinRttMs: report.join_rtt_ms, totalMs: report.total_ms, connectMs: report.connect_ms, reserveMs: report.reserve_ms,
      joinsPerSec: Number(report.joins_per_sec.toFixed(1)),
      nodeRssMiB: Number((peak.rss / 2 ** 20).toFixed(1)),
      rssPerPeerKiB: held ? Number(((peak.rss - base.rss) / held / 1024).toFixed(1)) : null,
      fdsPerPeer: held ? Number(((peak.fds - base.fds) / held).toFixed(2)) : null,
      nodeCpuCoresWhileJoining: startCpu && Number(startCpu.toFixed(2)),
      nodeCpuCoresWhileHolding: holdCpu && Number(holdCpu.toFixed(2)),
      nodeSaw: {
        connectedPeers: metrics.shoal_connected_peers,
        memberships: metrics.shoal_memberships,
        reservations: metrics.shoal_relay_reservations,
      },
    };
  } finally {
    await node.stop();
  }
}

const results = [];
for (const transport of TRANSPORTS) {
  const result = await run(transport, PEERS[transport]);
  console.log(JSON.stringify(result));
  results.push(result);
}
// A full node: it refuses with a reason, it does not hang.
if (process.env.BENCH_FULL !== '0') {
  const full = await run('websocket', 300, ['--max-memberships', '200']);
  console.log(JSON.stringify({ case: 'node full (--max-memberships 200, 300 peers)', ...full }));
}
