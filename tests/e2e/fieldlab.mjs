// The field lab: homes behind NAT routers, each viewer its own browser in its own network
// namespace, all inside the test's private namespace (scripts/netns), which plays the
// internet: a bridge `wan0` holding 203.0.113.0/24 (a documentation range), where the
// signalling node (with its STUN/TURN server) and the origin live at 203.0.113.1.
//
//   home i: router namespace, WAN 203.0.113.(10+i) on wan0, LAN bridge 192.168.i.1/24,
//           iptables MASQUERADE out of the WAN: Linux's default is endpoint-independent
//           mapping (the source port kept when free) with address-and-port-dependent
//           filtering ("port-restricted cone"); `symmetric` adds --random-fully (a new
//           port per destination);
//   viewer: namespace on the home's LAN, 192.168.i.(10+j), default route via the router.
//
// Links can be shaped per viewer (`lab.shape`): `tc` token buckets on the viewer's side
// of its LAN link for its upload and on the router's side for its download, random loss
// with iptables' `statistic` match. This machine's kernel has no `netem` (nor fq_codel
// or cake), so no propagation delay is added: a shaped link's latency is its queue.
//
// Needs root, iproute2, nsenter and iptables (scripts/setup.sh installs iptables).

import { execFileSync, spawn } from 'node:child_process';
import { readlinkSync, writeFileSync, chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const PUBLIC_IP = '203.0.113.1';

const run = (args) => execFileSync(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const inNs = (pid, args) => run(['nsenter', '-t', String(pid), '-n', ...args]);

/** A new network namespace held open by a sleeping process. */
async function namespace(processes) {
  const child = spawn('unshare', ['-n', 'sleep', 'infinity'], { stdio: 'ignore' });
  processes.push(child);
  const ours = readlinkSync('/proc/self/ns/net');
  for (let i = 0; i < 100; i++) {
    try {
      if (readlinkSync(`/proc/${child.pid}/ns/net`) !== ours) {
        inNs(child.pid, ['ip', 'link', 'set', 'lo', 'up']);
        return child.pid;
      }
    } catch {
      // not started yet
    }
    await sleep(10);
  }
  throw new Error('could not create a network namespace');
}

/**
 * Builds the lab: `homes` is a list of `{ nat: 'cone' | 'symmetric', viewers: n }`.
 * Returns `{ viewers: [{ home, index, pid, ip }], launch(viewer), close() }`.
 */
export async function createFieldLab(homes) {
  const processes = [];
  const dir = mkdtempSync(join(tmpdir(), 'shoal-fieldlab-'));
  const browsers = [];
  // Links made in this namespace, deleted on close: a namespace dies asynchronously,
  // and a veth pair with it, so a lab built right after would find its names taken.
  const links = ['wan0'];
  run(['ip', 'link', 'add', 'wan0', 'type', 'bridge']);
  run(['ip', 'addr', 'add', `${PUBLIC_IP}/24`, 'dev', 'wan0']);
  run(['ip', 'link', 'set', 'wan0', 'up']);
  const viewers = [];
  for (const [h, home] of homes.entries()) {
    const i = h + 1;
    const router = await namespace(processes);
    // WAN: a veth pair, one end on wan0, the other in the router as `wan`.
    run(['ip', 'link', 'add', `w${i}`, 'type', 'veth', 'peer', 'name', `w${i}r`]);
    links.unshift(`w${i}`);
    run(['ip', 'link', 'set', `w${i}`, 'master', 'wan0', 'up']);
    run(['ip', 'link', 'set', `w${i}r`, 'netns', String(router)]);
    inNs(router, ['ip', 'link', 'set', `w${i}r`, 'name', 'wan']);
    inNs(router, ['ip', 'addr', 'add', `203.0.113.${10 + i}/24`, 'dev', 'wan']);
    inNs(router, ['ip', 'link', 'set', 'wan', 'up']);
    inNs(router, ['ip', 'link', 'add', 'lan', 'type', 'bridge']);
    inNs(router, ['ip', 'addr', 'add', `192.168.${i}.1/24`, 'dev', 'lan']);
    inNs(router, ['ip', 'link', 'set', 'lan', 'up']);
    inNs(router, ['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']);
    const masquerade = ['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-o', 'wan', '-j', 'MASQUERADE'];
    if (home.nat === 'symmetric') masquerade.push('--random-fully');
    inNs(router, masquerade);
    // A home router's firewall: nothing unsolicited from the WAN. Dropped before its
    // conntrack entry is confirmed, an unsolicited packet leaves no state behind; without
    // this, a peer's early hole-punching packet takes the mapping's port and the router
    // re-maps our own later packet to another one.
    for (const chain of ['INPUT', 'FORWARD']) {
      inNs(router, ['iptables', '-A', chain, '-i', 'wan', '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP']);
    }
    for (let j = 0; j < home.viewers; j++) {
      const pid = await namespace(processes);
      const ip = `192.168.${i}.${10 + j}`;
      const link = `l${i}_${j}`;
      inNs(router, ['ip', 'link', 'add', link, 'type', 'veth', 'peer', 'name', `${link}v`]);
      inNs(router, ['ip', 'link', 'set', link, 'master', 'lan', 'up']);
      inNs(router, ['ip', 'link', 'set', `${link}v`, 'netns', String(pid)]);
      inNs(pid, ['ip', 'link', 'set', `${link}v`, 'name', 'eth0']);
      inNs(pid, ['ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      inNs(pid, ['ip', 'link', 'set', 'eth0', 'up']);
      inNs(pid, ['ip', 'route', 'add', 'default', 'via', `192.168.${i}.1`]);
      viewers.push({ home: h, nat: home.nat, index: j, pid, router, link, ip, name: `home${i}-${home.nat}-${j}` });
    }
  }
  return {
    viewers,
    /**
     * Shapes a viewer's link: `up` and `down` in bits per second (a token bucket each,
     * its queue holding `queueMs` at that rate), `loss` a fraction of packets dropped at
     * random each way. Applied once per viewer.
     */
    shape(viewer, { up, down, loss = 0, queueMs = 200 }) {
      const bucket = (pid, dev, rate) => {
        // Burst: at least one full-size packet, about 10 ms at the rate otherwise.
        const burst = Math.max(3000, Math.round(rate / 8 / 100));
        const limit = Math.max(2 * burst, Math.round((rate / 8) * (queueMs / 1000)));
        inNs(pid, ['tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', `${Math.round(rate)}bit`,
          'burst', String(burst), 'limit', String(limit)]);
      };
      if (up) bucket(viewer.pid, 'eth0', up);
      if (down) bucket(viewer.router, viewer.link, down);
      if (loss > 0) {
        for (const chain of ['OUTPUT', 'INPUT']) {
          inNs(viewer.pid, ['iptables', '-A', chain, '-m', 'statistic', '--mode', 'random',
            '--probability', String(loss), '-j', 'DROP']);
        }
      }
    },
    /** Bytes the viewer's link carried each way so far (its interface counters). */
    counters(viewer) {
      // Over netlink: /sys would show the host's interfaces, not the namespace's.
      const [link] = JSON.parse(inNs(viewer.pid, ['ip', '-j', '-s', 'link', 'show', 'dev', 'eth0']));
      return { sent: link.stats64.tx.bytes, received: link.stats64.rx.bytes };
    },
    /** A browser (default WebRTC privacy) running in the viewer's namespace. */
    async launch(viewer) {
      const wrapper = join(dir, `chromium-${viewer.pid}`);
      writeFileSync(wrapper, `#!/bin/sh\nexec nsenter -t ${viewer.pid} -n ${process.env.CHROMIUM ?? '/usr/bin/chromium'} "$@"\n`);
      chmodSync(wrapper, 0o755);
      const browser = await chromium.launch({
        executablePath: wrapper,
        args: [
          '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
        ],
      });
      browser.privacyDefaults = true;
      browsers.push(browser);
      return browser;
    },
    async close() {
      await Promise.all(browsers.map((b) => b.close().catch(() => {})));
      for (const link of links) {
        try {
          run(['ip', 'link', 'del', link]);
        } catch {
          // already gone
        }
      }
      for (const p of processes) p.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
