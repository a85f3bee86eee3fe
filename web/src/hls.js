// hls.js integration: a fragment loader that asks Shoal for each media segment, with
// the deadline at which playback reaches it. Shoal fetches from other viewers when there
// is time and over HTTP when not; if Shoal fails, hls.js's own loader takes over, so
// playback never waits on peers. Until Shoal is ready (its wasm still downloading, its
// node not yet reached) every fragment goes through hls.js's own loader: the player is
// created at once and the start never waits for Shoal.
//
//   const integration = new ShoalHls(() => Shoal.create(), { publisherKey });
//   const hls = new Hls({ ...integration.config(Hls) });
//   integration.attach(hls);

import { swarmIdFromUrl } from './index.js';
import { PlayerIntegration } from './integration.js';

/**
 * The byte range of a fragment load: null for a whole file, `[start, end)` for a
 * byte-range fragment, undefined for an open-ended one (left to HTTP).
 */
function byteRangeOf(context) {
  const start = context.rangeStart ?? 0;
  const end = context.rangeEnd ?? 0;
  if (start === 0 && end === 0) return null;
  return end > start ? [start, end] : undefined;
}

export class ShoalHls extends PlayerIntegration {
  /** The latest playlist of each rendition (by playlist URL), for Shoal when it is ready. */
  #levels = new Map();

  /**
   * @param shoal a started `Shoal`; a promise of one; or a function returning one (or a
   *   promise of one), called once playback has started with 3 s of media buffered
   *   ahead (or 3 s after hls.js buffered its first fragment, if it has not), so that the
   *   wasm download and compile and the node connection never compete with the start.
   *   Until it is ready, fragments come over HTTP through hls.js's own loader.
   * @param options `publisherKey` (required to exchange segments), `swarmId` (string, or
   *   function of the level playlist URL; default: that URL without query), `live`,
   *   `recordSuffix`, `urgentWindowMs`
   */
  constructor(shoal, options = {}) {
    super(shoal, options);
    this.hls = null;
  }

  /** hls.js configuration to merge into `new Hls({...})`: the fragment loader. */
  config(Hls) {
    const integration = this;
    const HttpLoader = Hls.DefaultConfig.loader;

    class ShoalFragmentLoader {
      constructor(config) {
        this.http = new HttpLoader(config);
        this.context = null;
        // One stats object whoever loads: hls.js keeps a reference to it (`frag.stats`)
        // from the loader's construction, and its ABR reads it after the load.
        this.stats = this.http.stats;
        this.request = null;
        this.usingHttp = false;
        this.destroyed = false;
      }

      destroy() {
        // hls.js calls destroy from its onAbort callback, which abort() may trigger.
        if (this.destroyed) return;
        this.destroyed = true;
        this.abort();
        this.http.destroy();
      }

      abort() {
        if (this.request) {
          this.request.aborted = true;
          this.stats.aborted = true;
          integration.shoal.cancelSegment(this.request.swarm, this.request.id);
          this.request = null;
        }
        if (this.usingHttp) {
          this.usingHttp = false;
          this.http.abort();
        }
      }

      #httpLoad(context, config, callbacks, bypass = false) {
        this.usingHttp = true;
        if (bypass) {
          const onSuccess = callbacks.onSuccess;
          callbacks = {
            ...callbacks,
            onSuccess: (response, stats, ...rest) => {
              integration.segments.bypassed += 1;
              integration.segments.bypassedBytes += stats?.loaded ?? response?.data?.byteLength ?? 0;
              onSuccess(response, stats, ...rest);
            },
          };
        }
        // hls.js destroys a loader from inside the callbacks it gave it, and hls.js 1.7's
        // loaders report `onAbort` from abort() even when the load is over, which turns
        // every finished HTTP load into INTERNAL_ABORTED: once the inner loader has
        // answered, there is nothing left for our abort() to stop.
        const settled = (callback) => callback && ((...args) => {
          this.usingHttp = false;
          callback(...args);
        });
        this.http.load(context, config, {
          ...callbacks,
          onSuccess: settled(callbacks.onSuccess),
          onError: settled(callbacks.onError),
          onTimeout: settled(callbacks.onTimeout),
        });
      }

      getResponseHeader(name) {
        return this.http.getResponseHeader ? this.http.getResponseHeader(name) : null;
      }

      load(context, config, callbacks) {
        const frag = context.frag;
        const shoal = integration.shoal;
        // Init segments (`sn` is "initSegment") stay on HTTP: small, once per page.
        if (!shoal || !frag || typeof frag.sn !== 'number' || !integration.options.publisherKey) {
          return this.#httpLoad(context, config, callbacks);
        }
        // hls.js sets rangeStart/rangeEnd to 0 when the fragment is a whole file; a
        // byte-range fragment (`EXT-X-BYTERANGE`) is bytes [rangeStart, rangeEnd) of it,
        // shared like any segment, its record at `<url>.<start>-<end>.shoal`.
        const range = byteRangeOf(context);
        if (range === undefined) return this.#httpLoad(context, config, callbacks);
        if (integration.shedding) return this.#httpLoad(context, config, callbacks, true);
        const swarm = integration.swarmFor(frag.baseurl ?? context.url);
        integration.ensureJoined(swarm);
        this.context = context;
        const start = performance.now();
        const stats = this.stats;
        stats.loading.start = start;
        const request = (this.request = { swarm, id: frag.sn, aborted: false });
        shoal.fetchSegment(swarm, frag.sn, context.url, integration.deadlineFor(frag), range ?? undefined).then(
          (result) => {
            if (request.aborted) return;
            this.request = null;
            const end = performance.now();
            stats.loading.first = start + (end - start) / 2;
            stats.loading.end = end;
            stats.loaded = stats.total = result.data.byteLength;
            integration.delivered(frag.sn, end);
            integration.segments.fromPeers += result.fromPeers;
            integration.segments.fromHttp += result.fromHttp;
            // fetchSegment's array owns its whole buffer: hand that over, no copy.
            const bytes = result.data;
            const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
            const data = whole ? bytes.buffer : bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
            callbacks.onSuccess({ url: context.url, data }, stats, context, null);
          },
          () => {
            if (request.aborted) return;
            this.request = null;
            // Shoal gave up (origin failed on every attempt): hls.js's own loader and
            // retry policy take over, on the same stats object (which it refuses to
            // reuse once `loading.start` is set).
            integration.segments.fallbacks += 1;
            stats.loading.start = stats.loading.first = stats.loading.end = 0;
            stats.loaded = stats.total = 0;
            this.#httpLoad(context, config, callbacks);
          },
        );
      }
    }

    return { fLoader: ShoalFragmentLoader };
  }

  /** Connects to the hls.js instance: its playlists tell Shoal what comes next. */
  attach(hls) {
    this.hls = hls;
    const Events = hls.constructor.Events;
    // A new source or a new media element starts the clock again.
    hls.on(Events.MANIFEST_LOADING, () => { this.startFrom = null; });
    hls.on(Events.MEDIA_ATTACHED, () => { this.startFrom = null; });
    hls.on(Events.FRAG_BUFFERED, (_event, data) => {
      this.scheduleStart(hls.media);
      if (data.frag) this.buffered(data.frag.sn);
    });
    hls.on(Events.LEVEL_LOADED, (_event, data) => {
      const details = data.details;
      if (!details?.fragments?.length) return;
      const playlist = details.fragments
        .filter((f) => typeof f.sn === 'number')
        .map((f) => {
          const [start, end] = f.byteRange ?? [];
          return end > 0 ? { id: f.sn, url: f.url, range: [start, end] } : { id: f.sn, url: f.url };
        });
      // Kept even before Shoal or the publisher key is there: a VOD playlist loads once.
      this.#levels.set(details.url, playlist);
      if (!this.shoal || !this.options.publisherKey) return;
      const swarm = this.swarmFor(details.url);
      this.ensureJoined(swarm);
      this.shoal.setPlaylist(swarm, playlist);
    });
    return this;
  }

  onShoalReady(shoal) {
    for (const [url, playlist] of this.#levels) {
      const swarm = this.swarmFor(url);
      this.ensureJoined(swarm);
      shoal.setPlaylist(swarm, playlist);
    }
  }

  /**
   * The swarm of a rendition: `options.swarmId` (a string for a single rendition, or a
   * function of the level playlist URL), else that URL without query or fragment. Each
   * rendition must be its own swarm: sequence numbers repeat across renditions.
   */
  swarmFor(url) {
    const { swarmId } = this.options;
    if (typeof swarmId === 'function') return swarmId(url);
    return swarmId ?? swarmIdFromUrl(url);
  }

  /**
   * When `frag`'s bytes must be in hls.js's hands, on the `performance.now()` clock:
   * when playback reaches it, less the time hls.js has lately needed to buffer a
   * fragment (`processingMs`). Before playback has a position, it is counted from where
   * playback will start (the first fragment asked for): what playback needs in its
   * first `STARTUP_URGENT_S` seconds is due at once and comes over HTTP, as a slow or
   * not yet connected peer must not delay the start; what lies further (a VOD start or
   * seek buffering ahead) keeps its slack and may come from peers.
   */
  deadlineFor(frag) {
    return this.deadlineAt(frag.start, this.hls?.media);
  }
}
