// A video site as the end-to-end tests run one: a static server (not the node) with the
// site's player page, the npm package, the player and the media the site signed itself,
// and a node and a browser beside it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, newContext, serveDir, startNodeAndBrowser } from './harness.mjs';

/** The publisher's signing tool, as the README tells a site to use it. */
export const SHOAL_SIGN = join(ROOT, 'target/release/shoal-sign');

/**
 * Starts a site: `page` as its index.html, the package under pkg/, each of `vendor`
 * (files of web/vendor) at the top, and what `prepare(dir)` writes (its result is
 * returned as `prepared`). The publisher makes a key with `shoal-sign keygen`, and
 * `sign(keyFile, dir)` signs the media with it; the key file is removed before the site is
 * served (a site serves only public things). Then a node and a browser. `open(params)`
 * opens the page with `params` (plus the node's well-known URL and the publisher's key)
 * once it sets `window.vodReady`, all in one browser context; `newViewers()` gives
 * another context's `{open, close}`.
 */
export async function startSite(t, { page, vendor = [], prepare, sign, label = 'site' }) {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-site-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const prepared = prepare(dir);
  cpSync(join(ROOT, 'pkg'), join(dir, 'pkg'), { recursive: true });
  for (const file of vendor) cpSync(join(ROOT, 'web/vendor', file), join(dir, file));
  writeFileSync(join(dir, 'index.html'), page);

  mkdirSync(join(dir, 'keys'));
  const keyFile = join(dir, 'keys/publisher.key');
  const publicKey = execFileSync(SHOAL_SIGN, ['keygen', '--key', keyFile], { encoding: 'utf8' }).trim().split(/\s+/).pop();
  assert.match(publicKey, /^[0-9a-f]{64}$/, 'shoal-sign prints the public key');
  await sign(keyFile, dir);
  rmSync(join(dir, 'keys'), { recursive: true });

  const origin = await serveDir(dir);
  const { node, browser } = await startNodeAndBrowser(t);
  t.after(() => origin.close());
  // A browser context of viewers; `open(params)` opens the page in it.
  const newViewers = async () => {
    const context = await newContext(browser, node);
    const open = async (params) => {
      const tab = await context.newPage();
      tab.on('pageerror', (error) => console.error(`[${label} tab ${JSON.stringify(params)}] ${error.stack ?? error}`));
      const query = new URLSearchParams({ wellKnown: `${node.url}/.well-known/shoal.json`, key: publicKey, ...params });
      await tab.goto(`${origin.url}/index.html?${query}`);
      await tab.waitForFunction(() => window.vodReady === true, { timeout: 30000 });
      return tab;
    };
    return { open, close: () => context.close() };
  };
  let viewers = null;
  const open = async (params) => {
    viewers ??= await newViewers();
    return viewers.open(params);
  };
  return { dir, prepared, open, newViewers };
}

/** Runs `shoal-sign` with `args`; the number of segments it says it signed. */
export function signWithCli(args) {
  return execFileSync(SHOAL_SIGN, args, { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith('signed ')).length;
}
