// End-to-end (in Chromium, on the package's own hls.js module): the deadline the hls.js
// integration gives Shoal for a fragment leaves hls.js the time it has lately needed to
// buffer one. A fragment delivered "just in time" that hls.js then transmuxes for 2 s
// stalls playback; this is what kept 12 tabs on two cores from playing without a stall.
// hls.js and Shoal are stand-ins here so that times are exact: the loader, the event
// handling and the arithmetic are the shipped ones.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startNodeAndBrowser, newContext } from './harness.mjs';

test('fragment deadlines leave hls.js its measured buffering time', async (t) => {
  const { node, browser } = await startNodeAndBrowser(t);
  const page = await (await newContext(browser, node)).newPage();
  await page.goto(`${node.url}/web/test/harness.html`);

  const result = await page.evaluate(async () => {
    const { ShoalHls } = await import('/pkg/hls.js');
    class FakeHls {
      static Events = {
        MANIFEST_LOADING: 'manifestLoading', MEDIA_ATTACHED: 'mediaAttached',
        LEVEL_LOADED: 'levelLoaded', FRAG_BUFFERED: 'fragBuffered',
      };
      // hls.js's loaders carry a LoadStats from construction.
      static DefaultConfig = {
        loader: class {
          constructor() { this.stats = { aborted: false, loaded: 0, total: 0, loading: { start: 0, first: 0, end: 0 } }; }
          destroy() {}
          abort() {}
        },
      };
      handlers = {};
      media = { currentTime: 10, paused: false, playbackRate: 1 };
      on(event, fn) { this.handlers[event] = fn; }
    }
    const shoal = {
      join() {},
      cancelSegment() {},
      fetchSegment: async () => ({ data: new Uint8Array(8), fromPeers: 8, fromHttp: 0 }),
    };
    const integration = new ShoalHls(shoal, { publisherKey: 'k', swarmId: 's' });
    const hls = new FakeHls();
    const { fLoader } = integration.config(FakeHls);
    integration.attach(hls);

    const slack = (start) => integration.deadlineFor({ start }) - performance.now();
    /** Loads fragment `sn` through the shipped loader, reports it buffered `ms` later. */
    const loadAndBuffer = async (sn, ms) => {
      const delivered = new Promise((resolve) => {
        new fLoader({}).load({ frag: { sn, start: 0 }, url: `/seg${sn}.ts` }, {}, { onSuccess: resolve, onError: resolve });
      });
      await delivered;
      await new Promise((r) => setTimeout(r, ms));
      hls.handlers.fragBuffered('fragBuffered', { frag: { sn } });
    };

    const out = { initial: slack(16), allowance: [] };
    await loadAndBuffer(1, 1600); // a page under load: 1.6 s to buffer
    out.afterSlow = slack(16);
    out.allowance.push(integration.processingMs);
    for (let sn = 2; sn < 12; sn++) {
      await loadAndBuffer(sn, 0);
      out.allowance.push(integration.processingMs);
    }
    out.afterFast = slack(16);
    out.due = slack(10.5); // less time left than the allowance: due now
    await loadAndBuffer(12, 4500); // a throttled background tab: capped
    out.capped = integration.processingMs;

    // hls.js keeps the loader's stats object (frag.stats) from construction and its ABR
    // reads it after the load: a peer delivery fills that same object.
    const loader = new fLoader({});
    const statsAtConstruction = loader.stats;
    await new Promise((resolve) => loader.load({ frag: { sn: 13, start: 20 }, url: '/seg13.ts' }, {}, { onSuccess: resolve }));
    out.sameStats = loader.stats === statsAtConstruction;
    out.loaded = statsAtConstruction.loaded;
    out.timed = statsAtConstruction.loading.end >= statsAtConstruction.loading.start && statsAtConstruction.loading.start > 0;
    return out;
  });

  // 6 s of media ahead; 1 s assumed before anything is measured.
  assert.ok(Math.abs(result.initial - 5000) < 50, `initial slack ${result.initial}`);
  // A slow buffering raises the allowance at once...
  assert.ok(result.allowance[0] >= 1600 && result.allowance[0] < 1800, `after a 1.6 s buffering: ${result.allowance[0]}`);
  assert.ok(Math.abs(result.afterSlow - (6000 - result.allowance[0])) < 50, `slack then ${result.afterSlow}`);
  // ...and fast ones bring it down by a tenth each, not at once.
  for (let i = 1; i < result.allowance.length; i++) {
    const expected = result.allowance[i - 1] * 0.9;
    assert.ok(Math.abs(result.allowance[i] - expected) < 30, `allowance ${i}: ${result.allowance[i]} vs ${expected}`);
  }
  assert.ok(result.afterFast > result.afterSlow + 800, `slack recovers: ${result.afterFast} vs ${result.afterSlow}`);
  assert.ok(Math.abs(result.due) < 50, `a fragment closer than the allowance is due now: ${result.due}`);
  assert.equal(result.capped, 4000, 'one very slow buffering raises the allowance to 4 s at most');
  assert.ok(result.sameStats, 'the loader keeps the stats object hls.js holds');
  assert.equal(result.loaded, 8, 'a peer delivery is counted in it');
  assert.ok(result.timed, 'with its load times');
});
