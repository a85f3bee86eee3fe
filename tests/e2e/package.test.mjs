// End-to-end: the packed npm package, installed the way a user installs it, works from
// Vite, webpack and esbuild production builds and from a plain `<script type="module">`
// page. A tab of each joins the same swarm; they connect directly and exchange gossip.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, serveDir, startNodeAndBrowser, newContext, waitFor } from './harness.mjs';

/** The app both pages run; only how it imports the package differs. */
const appSource = (specifier) => `
import { Shoal, swarmIdFromUrl } from '${specifier}';
window.app = {
  async start(wellKnownUrl) {
    this.received = [];
    this.shoal = await Shoal.create({ wellKnownUrl });
    this.shoal.addEventListener('gossip', (e) => this.received.push(new TextDecoder().decode(e.detail.data)));
    this.shoal.join(swarmIdFromUrl('https://example.invalid/live/stream.m3u8?token=1'));
    await this.shoal.subscribe('news');
    return this.shoal.peerId;
  },
  peers() { return this.shoal.stats().connections.map((c) => c.peer); },
  publish(text) { return this.shoal.publish('news', text); },
};
window.appReady = true;
`;

test('the packed npm package works from Vite, webpack and esbuild builds and from a plain page', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'shoal-package-'));
  t.after(() => rmSync(work, { recursive: true, force: true }));

  // npm pack, then install the tarball into a fresh project with no network.
  execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: join(ROOT, 'pkg'), stdio: 'pipe' });
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball, 'npm pack produced a tarball');
  const app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies: { shoal: `file:../${tarball}` } }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--silent'], { cwd: app, stdio: 'pipe' });
  const installed = readdirSync(join(app, 'node_modules/shoal')).sort();
  for (const file of ['index.js', 'index.d.ts', 'integration.js', 'hls.js', 'shaka.js', 'shaka.d.ts', 'shoal.js', 'shoal_bg.wasm', 'sign.js', 'sign.d.ts', 'shoal_sign.js', 'shoal_sign_bg.wasm', 'package.json']) {
    assert.ok(installed.includes(file), `the package ships ${file} (has ${installed.join(', ')})`);
  }

  // `shoal/sign` from Node.js, as a packager imports it: a record, the public key, a
  // record URL, and a clear error for bad input.
  const signScript = `
    import { generateSecretKey, publicKey, recordUrl, signSegment } from 'shoal/sign';
    const secretKey = generateSecretKey();
    const record = signSegment({ secretKey, swarm: 'site.test/live', sequence: 7, data: new Uint8Array(50000).fill(3) });
    let error = null;
    try { signSegment({ secretKey: secretKey.subarray(1), swarm: 'x', sequence: 1, data: new Uint8Array(9) }); } catch (e) { error = { code: e.code, message: e.message }; }
    console.log(JSON.stringify({ key: publicKey(secretKey), recordBytes: record.length, url: recordUrl('seg7.m4s?t=1'), ranged: recordUrl('all.mp4', { range: [100, 200] }), error }));
  `;
  const signed = JSON.parse(execFileSync('node', ['--input-type=module', '-e', signScript], { cwd: app, encoding: 'utf8' }));
  assert.match(signed.key, /^[0-9a-f]{64}$/);
  assert.ok(signed.recordBytes > 100, `a record frame (${signed.recordBytes} bytes)`);
  assert.equal(signed.url, 'seg7.m4s.shoal?t=1');
  assert.equal(signed.ranged, 'all.mp4.100-200.shoal');
  assert.equal(signed.error?.code, 'invalid-argument');
  assert.match(signed.error?.message, /32 bytes/);

  // Vite production build of an app that imports 'shoal' (and 'shoal/hls', which must
  // resolve through the package's exports map).
  const viteSrc = join(app, 'vite-src');
  mkdirSync(viteSrc);
  writeFileSync(join(viteSrc, 'index.html'), '<!doctype html><link rel="icon" href="data:,"><script type="module" src="./main.js"></script>');
  writeFileSync(join(viteSrc, 'main.js'), `import { ShoalHls } from 'shoal/hls';\nwindow.hasHlsIntegration = typeof ShoalHls === 'function';\n${appSource('shoal')}`);
  const { build } = await import('vite');
  await build({ root: viteSrc, base: './', logLevel: 'silent', build: { outDir: join(app, 'vite-dist'), emptyOutDir: true } });
  const assets = readdirSync(join(app, 'vite-dist/assets'));
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `Vite emitted the wasm module as an asset (${assets.join(', ')})`);

  // webpack 5 production build: it turns `new URL('shoal_bg.wasm', import.meta.url)` in
  // the package into an emitted asset, as Vite does.
  writeFileSync(join(app, 'webpack-main.js'), appSource('shoal'));
  const { default: webpack } = await import('webpack');
  const stats = await new Promise((resolve, reject) => webpack({
    mode: 'production', context: app, entry: './webpack-main.js',
    output: { path: join(app, 'webpack-dist'), filename: 'main.js', publicPath: 'auto', clean: true },
  }, (error, result) => (error ? reject(error) : resolve(result))));
  assert.ok(!stats.hasErrors(), `webpack built the app: ${stats.toString('errors-only')}`);
  const webpackAssets = readdirSync(join(app, 'webpack-dist'));
  assert.ok(webpackAssets.some((f) => f.endsWith('.wasm')), `webpack emitted the wasm module (${webpackAssets.join(', ')})`);
  writeFileSync(join(app, 'webpack-dist/index.html'), '<!doctype html><link rel="icon" href="data:,"><script src="./main.js"></script>');

  // esbuild bundles the JS and leaves `import.meta.url` alone: the wasm is copied next to
  // the bundle, as the README says.
  writeFileSync(join(app, 'esbuild-main.js'), appSource('shoal'));
  const esbuild = await import('esbuild');
  await esbuild.build({ entryPoints: [join(app, 'esbuild-main.js')], bundle: true, format: 'esm', minify: true, outfile: join(app, 'esbuild-dist/main.js'), logLevel: 'silent' });
  copyFileSync(join(app, 'node_modules/shoal/shoal_bg.wasm'), join(app, 'esbuild-dist/shoal_bg.wasm'));
  writeFileSync(join(app, 'esbuild-dist/index.html'), '<!doctype html><link rel="icon" href="data:,"><script type="module" src="./main.js"></script>');

  // The plain page imports the installed files directly, no bundler.
  writeFileSync(join(app, 'plain.html'), `<!doctype html><link rel="icon" href="data:,"><script type="module">${appSource('./node_modules/shoal/index.js')}</script>`);

  const site = await serveDir(app);
  const { node, browser } = await startNodeAndBrowser(t);
  t.after(() => site.close());
  const context = await newContext(browser, node);
  const paths = ['/vite-dist/index.html', '/webpack-dist/index.html', '/esbuild-dist/index.html', '/plain.html'];
  const pages = [];
  for (const path of paths) {
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`[${path}] ${error.stack ?? error}`));
    page.on('console', (msg) => msg.type() === 'error' && console.error(`[${path}] ${msg.text()}`));
    page.on('requestfailed', (req) => console.error(`[${path}] request failed: ${req.url()}`));
    await page.goto(`${site.url}${path}`);
    await page.waitForFunction(() => window.appReady === true);
    pages.push(page);
  }
  assert.equal(await pages[0].evaluate(() => window.hasHlsIntegration), true);

  // The site is on another origin than the node: the page is pointed at it.
  const wellKnownUrl = `${node.url}/.well-known/shoal.json`;
  const ids = [];
  for (const page of pages) ids.push(await page.evaluate((url) => window.app.start(url), wellKnownUrl));
  // Every build's page reaches the plain page directly.
  const plain = pages.length - 1;
  await waitFor(async () => {
    const peers = await Promise.all(pages.map((p) => p.evaluate(() => window.app.peers())));
    return pages.every((_, i) => i === plain || (peers[i].includes(ids[plain]) && peers[plain].includes(ids[i])));
  }, { timeout: 30000, message: 'the Vite, webpack and esbuild pages to connect directly to the plain page' });

  // Both directions between each build and the plain page, retried until the
  // subscriptions have propagated.
  for (let built = 0; built < plain; built += 1) {
    for (const [from, to] of [[built, plain], [plain, built]]) {
      const text = `hello from ${paths[from]} to ${paths[to]}`;
      await waitFor(async () => {
        await pages[from].evaluate((text) => window.app.publish(text).catch(() => {}), text);
        return (await pages[to].evaluate(() => window.app.received)).includes(text);
      }, { timeout: 15000, interval: 500, message: `gossip from ${paths[from]} to ${paths[to]}` });
    }
  }
});
