// Shared pieces of the end-to-end tests and benchmarks: a real signalling node process,
// a real headless Chromium (playwright-core) or Firefox ESR (puppeteer-core over WebDriver
// BiDi), pages running the real wasm package.
//
// Everything runs inside the private network namespace that scripts/test.sh and
// scripts/bench.sh create (loopback + 10.99.0.1 on a veth pair that never leaves it).

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const ROOT = new URL('../..', import.meta.url).pathname;
export const NODE_BIN = process.env.SHOAL_NODE_BIN ?? join(ROOT, 'target/release/shoal-node');
/** The namespace's non-loopback address, which the node's WebRTC listener needs. */
export const TEST_IP = process.env.SHOAL_TEST_IP ?? '10.99.0.1';

let portBase = 20000 + (process.pid % 1000) * 10;
/** Fresh ports per node so tests in one process never collide. */
export function allocatePorts() {
  const base = portBase;
  portBase += 4;
  return { webrtc: base, ws: base + 1, http: base + 2, stun: base + 3 };
}

/** Polls `check` until it returns a truthy value, or throws `message` after `timeout` ms. */
export async function waitFor(check, { timeout = 15000, interval = 100, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${message}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await sleep(interval);
  }
}

/**
 * Starts `shoal-node` with its own data directory and ports. `restart()` kills it with
 * SIGKILL and starts it again on the same ports and identity.
 */
export async function startNode({ ports = allocatePorts(), dataDir, extraArgs = [], log = false, host = TEST_IP } = {}) {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'shoal-node-'));
  const ownsDir = !dataDir;
  const args = [
    '--webrtc-listen', `${host}:${ports.webrtc}`,
    '--ws-listen', `${host}:${ports.ws}`,
    '--http-listen', `0.0.0.0:${ports.http}`,
    ...(extraArgs.includes('--stun-listen') ? [] : ['--stun-listen', `${host}:${ports.stun}`]),
    '--data-dir', dir,
    '--static-dir', ROOT,
    '--demo-media', join(ROOT, 'target/demo-media'),
    ...extraArgs,
  ];
  const node = {
    ports,
    dataDir: dir,
    // Pages on another host (the field lab's viewers) reach the node at `host`.
    url: host === TEST_IP ? `http://127.0.0.1:${ports.http}` : `http://${host}:${ports.http}`,
    proc: null,
    output: '',
    async start() {
      this.output = '';
      this.proc = spawn(NODE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SHOAL_LOG: process.env.SHOAL_LOG ?? 'info,webrtc=off,webrtc_sctp=off,webrtc_ice=off,webrtc_dtls=off,libp2p_webrtc=off' } });
      const collect = (chunk) => {
        this.output += chunk;
        if (log) process.stderr.write(chunk);
      };
      this.proc.stdout.on('data', collect);
      this.proc.stderr.on('data', collect);
      const exited = new Promise((resolve) => this.proc.once('exit', resolve));
      await waitFor(async () => {
        if (this.proc.exitCode !== null) throw new Error(`node exited: ${this.output}`);
        const res = await fetch(`${this.url}/.well-known/shoal.json`);
        const doc = await res.json();
        return doc.multiaddrs.some((a) => a.includes('/webrtc-direct/')) && doc;
      }, { timeout: 20000, message: 'the signalling node to serve its well-known document' });
      this.exited = exited;
    },
    async kill(signal = 'SIGKILL') {
      if (!this.proc || this.proc.exitCode !== null) return;
      this.proc.kill(signal);
      await this.exited;
    },
    async restart() {
      await this.kill();
      await this.start();
    },
    async metrics() {
      const text = await (await fetch(`${this.url}/metrics`)).text();
      const values = {};
      for (const line of text.split('\n')) {
        const m = /^(shoal_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
        if (m) values[m[1] + (m[2] ?? '')] = Number(m[3]);
      }
      return values;
    },
    async stop() {
      await this.kill('SIGTERM');
      if (ownsDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  await node.start();
  return node;
}

/** Switches of a headless test browser that change nothing a viewer's browser does. */
const BROWSER_ARGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  // Background tabs must keep their timers: every tab here is a viewer.
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
];

/**
 * Switches that loosen WebRTC privacy, which no viewer has: host candidates as plain
 * addresses instead of mDNS names, loopback candidates allowed, media permission
 * granted (which also exposes host addresses). Every test runs without them, as a
 * viewer's browser would; SHOAL_BROWSER_LOOSE=1 (or `launchBrowser({ privacyDefaults:
 * false })`) puts them back, to tell a privacy effect from anything else.
 */
const LOOSE_PRIVACY_ARGS = [
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--use-fake-ui-for-media-stream',
];

export const CHROMIUM_ARGS = [...BROWSER_ARGS, ...LOOSE_PRIVACY_ARGS];

export async function launchBrowser({ privacyDefaults = process.env.SHOAL_BROWSER_LOOSE !== '1' } = {}) {
  const args = privacyDefaults ? BROWSER_ARGS : CHROMIUM_ARGS;
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args });
  browser.privacyDefaults = privacyDefaults;
  return browser;
}

/**
 * Debian's Firefox ESR with its default preferences (WebRTC privacy included: host
 * candidates hidden behind mDNS names, no loopback candidates), driven over WebDriver
 * BiDi. Its pages answer the same `evaluate`/`goto`/`waitForFunction` calls as
 * Chromium's; `newContext` and `newViewerPage` paper over the rest.
 */
export async function launchFirefox() {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
    headless: true,
  });
  browser.isFirefox = true;
  browser.privacyDefaults = true;
  return browser;
}

/** A signalling node and a browser for test `t`, both shut down when it ends. */
export async function startNodeAndBrowser(t, nodeOptions) {
  const node = await startNode(nodeOptions);
  const browser = await launchBrowser();
  t.after(async () => {
    await browser.close();
    await node.stop();
  });
  return { node, browser };
}

/** Opens the harness page in a new tab and waits for the package to load. */
export async function openHarness(context, node) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[page error] ${error.stack ?? error}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' || process.env.SHOAL_PAGE_LOG) console.error(`[page ${msg.type()}] ${msg.text()}`);
  });
  await page.goto(`${node.url}/web/test/harness.html`);
  await page.waitForFunction(() => window.harnessReady === true);
  return page;
}

export async function newContext(browser, node) {
  if (browser.isFirefox) {
    const context = await browser.createBrowserContext();
    // Each page in a window of its own: a viewer watches in a foreground tab, and
    // Firefox throttles the timers of background tabs (Chromium's are kept by a switch).
    return { newPage: () => context.newPage({ type: 'window' }), close: () => context.close() };
  }
  const context = await browser.newContext();
  // A page with camera/microphone permission gets plain host candidates: a viewer's
  // video page has none.
  if (!browser.privacyDefaults) await context.grantPermissions(['camera', 'microphone'], { origin: node.url });
  return context;
}

/** Starts a peer in `page`; resolves to its PeerId. */
export function startPeer(page, config) {
  return page.evaluate((config) => window.harness.start(config), config);
}

export const stats = (page) => page.evaluate(() => window.harness.stats());
export const events = (page, type) => page.evaluate((type) => window.harness.eventsOf(type), type);

const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.json': 'application/json', '.map': 'application/json', '.css': 'text/css',
};

/** A static file server for `dir` on the test address: a site other than the node. */
export async function serveDir(dir) {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(dir, path.endsWith('/') ? `${path}index.html` : path);
    try {
      if (!file.startsWith(dir) || !statSync(file).isFile()) throw new Error('not a file');
      const type = TYPES[extname(file)] ?? 'application/octet-stream';
      const body = readFileSync(file);
      // One `bytes=a-b` range, as static hosts and CDNs answer it (byte-range playlists).
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (range) {
        const start = Number(range[1]);
        const end = Math.min(range[2] === '' ? body.length - 1 : Number(range[2]), body.length - 1);
        if (start > end) {
          res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
          return;
        }
        res.writeHead(206, { 'content-type': type, 'content-range': `bytes ${start}-${end}/${body.length}` });
        res.end(body.subarray(start, end + 1));
        return;
      }
      res.writeHead(200, { 'content-type': type });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, TEST_IP, resolve));
  return { url: `http://${TEST_IP}:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}
