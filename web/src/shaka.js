// Shaka Player integration: media segments of HLS streams go through Shoal, with the
// deadline at which playback reaches them; Shoal fetches from other viewers when there is
// time and over HTTP when not, and if it fails Shaka's own HTTP plugin takes over, so
// playback never waits on peers. Until Shoal is ready every request is Shaka's own.
//
//   const player = new shaka.Player();
//   const integration = new ShoalShaka(() => Shoal.create(), { publisherKey }).attach(player, shaka);
//   await player.attach(video);
//   await player.load(url);
//
// How it hooks in, through Shaka's public networking API only:
// - a response filter reads each HLS media playlist Shaka loads: segment URL → (swarm,
//   media sequence number), and hands the playlist to Shoal (Shaka's segment references
//   carry no sequence number, and the publisher's records are numbered by it);
// - a request filter marks a known media segment for Shoal, with its deadline from the
//   segment's start time (Shoal's deadline and HTTP fallback replace Shaka's connection
//   and stall timers for it); init segments, byte ranges and everything else are left
//   as they are;
// - an `http(s):` scheme plugin (registered once per page, above Shaka's own) asks
//   Shoal for a marked request, or Shaka's HTTP plugin if Shoal fails; anything
//   unmarked goes straight to Shaka's HTTP plugin, with its progress, retry, timeout and
//   stall handling untouched. (Shaka picks the plugin before request filters run, so a
//   filter cannot send a request to a scheme of its own.)

import {
  INITIAL_PROCESSING_MS, START_FALLBACK_MS, nextProcessingMs, segmentDeadline,
} from './hls.js';
import { swarmIdFromUrl } from './index.js';

/** Segment URLs remembered at most (the newest win): a few playlists' worth. */
const MAX_KNOWN_SEGMENTS = 4096;

let registered = false;

/** The `http(s):` scheme plugin, registered once per page. */
function registerScheme(shaka) {
  if (registered) return;
  registered = true;
  const { NetworkingEngine } = shaka.net;
  const plugin = (uri, request, type, progressUpdated, headersReceived, config) => {
    const http = () => httpPlugin(shaka)(uri, request, type, progressUpdated, headersReceived, config);
    const job = request.shoalFetch;
    return job ? job.integration.fetch(job, uri, request, http) : http();
  };
  for (const scheme of ['http', 'https']) {
    NetworkingEngine.registerScheme(scheme, plugin, NetworkingEngine.PluginPriority.APPLICATION, true);
  }
}

function httpPlugin(shaka) {
  const { HttpFetchPlugin, HttpXHRPlugin } = shaka.net;
  return HttpFetchPlugin && HttpFetchPlugin.isSupported() ? HttpFetchPlugin.parse : HttpXHRPlugin.parse;
}

/**
 * Each media segment of an HLS media playlist: its media sequence number and absolute
 * URL, and whether it is a byte range (those stay on HTTP). Null if `text` is not a
 * media playlist.
 */
export function parseMediaPlaylist(text, url) {
  if (!text.startsWith('#EXTM3U') || !text.includes('#EXTINF')) return null;
  let sequence = 0;
  let inSegment = false;
  let byteRange = false;
  const segments = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith('#EXT-X-MEDIA-SEQUENCE:')) {
      sequence = Number.parseInt(line.slice('#EXT-X-MEDIA-SEQUENCE:'.length), 10) || 0;
    } else if (line.startsWith('#EXTINF')) {
      inSegment = true;
    } else if (line.startsWith('#EXT-X-BYTERANGE')) {
      byteRange = true;
    } else if (!line.startsWith('#') && inSegment) {
      segments.push({ id: sequence, url: new URL(line, url).href, byteRange });
      sequence += 1;
      inSegment = false;
      byteRange = false;
    }
  }
  return segments;
}

export class ShoalShaka {
  #factory = null;
  #startScheduled = false;
  /** Segment URL → { playlist: its media playlist's URL, id }. */
  #known = new Map();
  /**
   * The latest segments of each media playlist (by URL), handed to Shoal when it becomes
   * ready. Swarms are named when used: `options.swarmId` may be set only then.
   */
  #playlists = new Map();
  /** Segment start time → when we delivered it (for the processing allowance). */
  #deliveredAt = new Map();

  /**
   * @param shoal a started `Shoal`; a promise of one; or a function returning one (or a
   *   promise of one), called once playback has started (or 3 s after the first media
   *   segment arrived, if it has not), so the wasm download and compile and the node
   *   connection never compete with the first frame.
   * @param options `publisherKey` (required to exchange segments), `swarmId` (string, or
   *   function of the media playlist URL; default: that URL without query), `live`,
   *   `recordSuffix`, `urgentWindowMs` — as `ShoalHls`.
   */
  constructor(shoal, options = {}) {
    this.shoal = null;
    this.error = null;
    this.options = options;
    this.player = null;
    this.joined = new Set();
    this.segments = { fromPeers: 0, fromHttp: 0, fallbacks: 0, bypassed: 0, bypassedBytes: 0 };
    this.shedding = false;
    this.startFrom = null;
    this.processingMs = INITIAL_PROCESSING_MS;
    if (typeof shoal === 'function') this.#factory = shoal;
    else if (shoal && typeof shoal.then === 'function') this.#adopt(shoal);
    else this.shoal = shoal ?? null;
    this.#watch(this.shoal);
  }

  /**
   * Connects to a `shaka.Player` (before `load()`). `shaka` is the library's namespace
   * (default: the global one).
   */
  attach(player, shaka = globalThis.shaka) {
    if (!shaka?.net?.NetworkingEngine) throw new Error('ShoalShaka.attach needs the shaka namespace (shaka-player)');
    this.player = player;
    this.shakaLib = shaka;
    registerScheme(shaka);
    const { RequestType } = shaka.net.NetworkingEngine;
    const engine = player.getNetworkingEngine();
    engine.registerResponseFilter((type, response) => {
      if (type === RequestType.MANIFEST) this.#onPlaylist(response);
    });
    engine.registerRequestFilter((type, request, context) => {
      if (type === RequestType.SEGMENT) this.#route(request, context);
    });
    player.addEventListener('loading', () => { this.startFrom = null; });
    player.addEventListener('segmentappended', (event) => {
      const at = this.#deliveredAt.get(event.start);
      if (at === undefined) return;
      this.#deliveredAt.delete(event.start);
      this.processingMs = nextProcessingMs(this.processingMs, performance.now() - at);
    });
    return this;
  }

  #onPlaylist(response) {
    let text;
    try {
      text = new TextDecoder().decode(response.data);
    } catch {
      return;
    }
    const url = response.uri;
    const segments = parseMediaPlaylist(text, url);
    if (!segments) return;
    const playlist = [];
    for (const segment of segments) {
      if (segment.byteRange) continue;
      this.#known.delete(segment.url);
      this.#known.set(segment.url, { playlist: url, id: segment.id });
      playlist.push({ id: segment.id, url: segment.url });
    }
    while (this.#known.size > MAX_KNOWN_SEGMENTS) this.#known.delete(this.#known.keys().next().value);
    this.#playlists.set(url, playlist);
    if (!this.shoal || !this.options.publisherKey) return;
    const swarm = this.swarmFor(url);
    this.ensureJoined(swarm);
    this.shoal.setPlaylist(swarm, playlist);
  }

  /** Marks a known media segment for Shoal; leaves the rest to Shaka. */
  #route(request, context) {
    delete request.shoalFetch;
    const known = this.#known.get(request.uris[request.attempt % request.uris.length]);
    if (!known || context?.type === this.shakaLib.net.NetworkingEngine.AdvancedRequestType?.INIT_SEGMENT) return;
    if (request.headers?.Range || request.headers?.range) return;
    // The first media segment starts the clock for Shoal's own start.
    if (this.#factory && !this.#startScheduled) this.#scheduleStart(this.player.getMediaElement());
    if (!this.shoal || !this.options.publisherKey) return;
    const bypass = this.shedding;
    const start = context?.segment?.startTime;
    const deadline = typeof start === 'number' ? this.deadlineFor(start) : performance.now();
    request.shoalFetch = { integration: this, swarm: this.swarmFor(known.playlist), id: known.id, start, deadline, bypass };
    // Shoal's deadline, and its HTTP fallback, decide when a segment is late; Shaka's
    // timers would abort a peer fetch that is on time. (While shedding, Shaka's own.)
    if (!bypass) request.retryParameters = { ...request.retryParameters, connectionTimeout: 0, stallTimeout: 0 };
  }

  /** The plugin's work for a marked request: Shoal, or HTTP when it fails. */
  fetch(job, uri, request, http) {
    const shaka = this.shakaLib;
    if (job.bypass) {
      // The page sheds load: Shaka's own HTTP plugin costs its main thread least.
      const operation = http();
      return operation.chain((response) => {
        this.segments.bypassed += 1;
        this.segments.bypassedBytes += response.data?.byteLength ?? 0;
        return response;
      });
    }
    const shoal = this.shoal;
    this.ensureJoined(job.swarm);
    const started = performance.now();
    let aborted = false;
    let fallback = null;
    const promise = shoal.fetchSegment(job.swarm, job.id, uri, job.deadline).then(
      (result) => {
        if (aborted) throw abortedError(shaka);
        const end = performance.now();
        if (typeof job.start === 'number') this.#delivered(job.start, end);
        this.segments.fromPeers += result.fromPeers;
        this.segments.fromHttp += result.fromHttp;
        const bytes = result.data;
        const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
        const data = whole ? bytes.buffer : bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
        // timeMs feeds Shaka's bandwidth estimate, as an HTTP load of these bytes would.
        return { uri, originalUri: uri, data, status: 200, headers: {}, timeMs: end - started, fromCache: false, originalRequest: request };
      },
      () => {
        if (aborted) throw abortedError(shaka);
        // Shoal gave up (origin failed on every attempt): Shaka's HTTP plugin, then its
        // retry policy, take over.
        this.segments.fallbacks += 1;
        fallback = http();
        return fallback.promise;
      },
    );
    return new shaka.util.AbortableOperation(promise, () => {
      aborted = true;
      shoal.cancelSegment(job.swarm, job.id);
      return fallback ? fallback.abort() : Promise.resolve();
    });
  }

  #scheduleStart(media) {
    this.#startScheduled = true;
    const start = () => {
      if (!this.#factory) return;
      const factory = this.#factory;
      this.#factory = null;
      this.#adopt(Promise.resolve().then(factory));
    };
    if (typeof media?.addEventListener !== 'function' || (!media.paused && media.readyState >= 3)) {
      setTimeout(start, 0);
      return;
    }
    media.addEventListener('playing', start, { once: true });
    setTimeout(start, START_FALLBACK_MS);
  }

  #watch(shoal) {
    if (typeof shoal?.addEventListener !== 'function') return;
    shoal.addEventListener('load-shedding', (event) => { this.shedding = Boolean(event.detail?.active); });
  }

  #adopt(pending) {
    pending.then(
      (shoal) => {
        this.shoal = shoal;
        this.#watch(shoal);
        if (!this.options.publisherKey) return;
        for (const [url, playlist] of this.#playlists) {
          const swarm = this.swarmFor(url);
          this.ensureJoined(swarm);
          shoal.setPlaylist(swarm, playlist);
        }
      },
      (error) => {
        this.error = error;
        console.warn('Shoal could not start; playing over HTTP only:', error);
      },
    );
  }

  /** The swarm of a rendition: as `ShoalHls.swarmFor`, of the media playlist URL. */
  swarmFor(url) {
    const { swarmId } = this.options;
    if (typeof swarmId === 'function') return swarmId(url);
    return swarmId ?? swarmIdFromUrl(url);
  }

  ensureJoined(swarm) {
    if (!this.shoal || this.joined.has(swarm)) return;
    const { publisherKey, live, recordSuffix, urgentWindowMs } = this.options;
    this.shoal.join(swarm, { publisherKey, live, recordSuffix, urgentWindowMs });
    this.joined.add(swarm);
  }

  #delivered(start, at) {
    this.#deliveredAt.set(start, at);
    if (this.#deliveredAt.size > 16) this.#deliveredAt.delete(this.#deliveredAt.keys().next().value);
  }

  /** When the segment starting at `start` (presentation time) is due: see `ShoalHls.deadlineFor`. */
  deadlineFor(start) {
    const media = this.player?.getMediaElement();
    if (media && media.currentTime > 0) this.startFrom = null;
    else this.startFrom ??= start;
    return segmentDeadline(start, media, this.startFrom, this.processingMs);
  }
}

function abortedError(shaka) {
  const { Error: ShakaError } = shaka.util;
  return new ShakaError(ShakaError.Severity.RECOVERABLE, ShakaError.Category.PLAYER, ShakaError.Code.OPERATION_ABORTED);
}
