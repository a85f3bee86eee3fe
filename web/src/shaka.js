// Shaka Player integration: media segments of HLS and DASH streams go through Shoal, with the
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
// - a response filter reads each HLS media playlist and DASH manifest Shaka loads:
//   segment URL → (swarm, number), and hands the segment list to Shoal (Shaka's segment
//   references carry no number, and the publisher's records are numbered: the media
//   sequence number in HLS, `$Number$` of a DASH `SegmentTemplate`, one swarm per
//   representation);
// - a request filter marks a known media segment for Shoal, with its deadline from the
//   segment's start time (Shoal's deadline and HTTP fallback replace Shaka's connection
//   and stall timers for it); init segments, byte ranges and everything else are left
//   as they are;
// - an `http(s):` scheme plugin (registered once per page, above Shaka's own) asks
//   Shoal for a marked request, or Shaka's HTTP plugin if Shoal fails; anything
//   unmarked goes straight to Shaka's HTTP plugin, with its progress, retry, timeout and
//   stall handling untouched. (Shaka picks the plugin before request filters run, so a
//   filter cannot send a request to a scheme of its own.)

import { swarmIdFromUrl } from './index.js';
import { PlayerIntegration } from './integration.js';

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
 * Each media segment of an HLS media playlist: its media sequence number, absolute URL,
 * and for a byte-range segment (`EXT-X-BYTERANGE:<length>[@<offset>]`) its `range`,
 * `[start, end)` of that URL (without an offset it follows the previous range of the
 * same URL; with neither, it is left out). Null if `text` is not a media playlist.
 * The same listing as `shoal-sign playlist` (crates/shoal-node/src/publish.rs).
 */
export function parseMediaPlaylist(text, url) {
  if (!text.startsWith('#EXTM3U') || !text.includes('#EXTINF')) return null;
  let sequence = 0;
  let inSegment = false;
  let byteRange = null;
  let previousEnd = null;
  const segments = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith('#EXT-X-MEDIA-SEQUENCE:')) {
      sequence = Number.parseInt(line.slice('#EXT-X-MEDIA-SEQUENCE:'.length), 10) || 0;
    } else if (line.startsWith('#EXTINF')) {
      inSegment = true;
    } else if (line.startsWith('#EXT-X-BYTERANGE:')) {
      const [length, offset] = line.slice('#EXT-X-BYTERANGE:'.length).split('@');
      byteRange = { length: Number(length), offset: offset === undefined ? null : Number(offset) };
    } else if (!line.startsWith('#') && inSegment) {
      const href = new URL(line, url).href;
      if (!byteRange) {
        segments.push({ id: sequence, url: href });
      } else {
        const start = byteRange.offset ?? (previousEnd?.url === href ? previousEnd.end : null);
        if (start !== null && Number.isSafeInteger(start) && Number.isSafeInteger(byteRange.length) && byteRange.length > 0) {
          const range = [start, start + byteRange.length];
          segments.push({ id: sequence, url: href, range });
          previousEnd = { url: href, end: range[1] };
        }
      }
      sequence += 1;
      inSegment = false;
      byteRange = null;
    }
  }
  return segments;
}

/** How a segment is known: its URL, and `start-end` for a byte range of it. */
const segmentKey = (url, range) => (range ? `${url} ${range[0]}-${range[1]}` : url);

/** A request's `Range: bytes=a-b` header as `[a, b + 1)`, null without one, undefined if unreadable. */
function requestRange(headers) {
  const value = headers?.Range ?? headers?.range;
  if (!value) return null;
  const m = /^bytes=(\d+)-(\d+)$/.exec(value);
  return m ? [Number(m[1]), Number(m[2]) + 1] : undefined;
}

/** The first child element of `node` named `name`. */
function child(node, name) {
  if (!node) return null;
  for (const c of node.children) if (c.localName === name) return c;
  return null;
}

/** An ISO 8601 duration as DASH writes it (`PT1M0.0S`), in seconds; NaN if unreadable. */
function isoSeconds(text) {
  const m = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(text ?? '');
  if (!m) return NaN;
  const [d, h, min, sec] = m.slice(1).map((v) => Number(v ?? 0));
  return d * 86400 + h * 3600 + min * 60 + sec;
}

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Each representation of a DASH manifest whose `SegmentTemplate` numbers its segments
 * (`$Number$`): a pattern that tells a segment URL's number, and (static manifests) its
 * segments. Templates addressed by `$Time$`, and `SegmentBase`/`SegmentList`, are left
 * out: their segments stay on Shaka's own path. Null if `text` is not an MPD.
 * The same listing as `shoal-sign mpd` (crates/shoal-node/src/dash.rs).
 */
export function parseMpd(text, url) {
  if (!text.includes('<MPD')) return null;
  const doc = new DOMParser().parseFromString(text, 'application/xml');
  const mpd = doc.documentElement;
  if (mpd?.localName !== 'MPD') return null;
  const dynamic = mpd.getAttribute('type') === 'dynamic';
  const total = isoSeconds(mpd.getAttribute('mediaPresentationDuration'));
  const base = (node) => child(node, 'BaseURL')?.textContent.trim() ?? '';
  const out = [];
  for (const period of mpd.children) {
    if (period.localName !== 'Period') continue;
    const length = period.hasAttribute('duration') ? isoSeconds(period.getAttribute('duration')) : total;
    for (const set of period.children) {
      if (set.localName !== 'AdaptationSet') continue;
      for (const rep of set.children) {
        if (rep.localName !== 'Representation' || !rep.id) continue;
        const templates = [child(rep, 'SegmentTemplate'), child(set, 'SegmentTemplate'), child(period, 'SegmentTemplate')].filter(Boolean);
        const attr = (name) => templates.find((t) => t.hasAttribute(name))?.getAttribute(name) ?? null;
        const media = attr('media');
        if (!media || !/\$Number(%0\d+d)?\$/.test(media) || media.includes('$Time')) continue;
        const named = media
          .replaceAll('$RepresentationID$', rep.id)
          .replace(/\$Bandwidth\$/g, rep.getAttribute('bandwidth') ?? '')
          .replaceAll('$$', '$');
        const template = new URL(base(mpd) + base(period) + base(set) + base(rep) + named, url).href;
        const parts = template.split(/\$Number(?:%0(\d+)d)?\$/);
        // split() interleaves the captured widths: texts at even indices.
        const texts = parts.filter((_, i) => i % 2 === 0);
        const width = Number(parts[1] ?? 0);
        const pattern = new RegExp(`^${texts.map(escapeRegExp).join('(\\d+)')}$`);
        const number = (n) => texts.join(String(n).padStart(width, '0'));
        const start = Number(attr('startNumber') ?? 1);
        let count = 0;
        const timeline = templates.map((t) => child(t, 'SegmentTimeline')).find(Boolean);
        if (timeline) {
          for (const s of timeline.children) if (s.localName === 'S') count += 1 + Number(s.getAttribute('r') ?? 0);
        } else if (!dynamic) {
          const timescale = Number(attr('timescale') ?? 1) || 1;
          const duration = Number(attr('duration') ?? 0) / timescale;
          if (duration > 0 && length > 0) count = Math.ceil(length / duration - 1e-6);
        }
        const segments = dynamic ? [] : Array.from({ length: Math.min(count, MAX_KNOWN_SEGMENTS) }, (_, i) => ({ id: start + i, url: number(start + i) }));
        out.push({ id: rep.id, pattern, segments });
      }
    }
  }
  return out;
}

export class ShoalShaka extends PlayerIntegration {
  /**
   * Segment URL → { playlist: the URL of its media playlist (HLS) or manifest (DASH),
   * rep: its DASH representation, id }.
   */
  #known = new Map();
  /**
   * The latest segments of each rendition (by playlist URL and representation), handed
   * to Shoal when it becomes ready. Swarms are named when used: `options.swarmId` may be
   * set only then.
   */
  #playlists = new Map();
  /** DASH representations whose segment URLs tell their number: { playlist, rep, pattern }. */
  #patterns = [];

  /**
   * @param shoal a started `Shoal`; a promise of one; or a function returning one (or a
   *   promise of one), called once playback has started with 3 s of media buffered
   *   ahead (or 3 s after the first media segment arrived, if it has not), so the wasm
   *   download and compile and the node connection never compete with the start.
   * @param options `publisherKey` (required to exchange segments), `swarmId` (string, or
   *   function of the media playlist URL; default: that URL without query), `live`,
   *   `recordSuffix`, `urgentWindowMs` — as `ShoalHls`.
   */
  constructor(shoal, options = {}) {
    super(shoal, options);
    this.player = null;
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
      if (type === RequestType.MANIFEST) this.#onManifest(response);
    });
    engine.registerRequestFilter((type, request, context) => {
      if (type === RequestType.SEGMENT) this.#route(request, context);
    });
    player.addEventListener('loading', () => { this.startFrom = null; });
    player.addEventListener('segmentappended', (event) => this.buffered(event.start));
    return this;
  }

  #onManifest(response) {
    let text;
    try {
      text = new TextDecoder().decode(response.data);
    } catch {
      return;
    }
    const url = response.uri;
    const segments = parseMediaPlaylist(text, url);
    if (segments) {
      this.#remember(url, null, segments);
      return;
    }
    const representations = parseMpd(text, url);
    if (!representations) return;
    this.#patterns = this.#patterns.filter((p) => p.playlist !== url);
    for (const rep of representations) {
      this.#patterns.push({ playlist: url, rep: rep.id, pattern: rep.pattern });
      if (rep.segments.length) this.#remember(url, rep.id, rep.segments);
    }
  }

  /** A rendition's segments: known by URL from now on, and Shoal's playlist for it. */
  #remember(url, rep, segments) {
    const playlist = [];
    for (const segment of segments) {
      const key = segmentKey(segment.url, segment.range);
      this.#known.delete(key);
      this.#known.set(key, { playlist: url, rep, id: segment.id, range: segment.range ?? null });
      playlist.push(segment.range ? { id: segment.id, url: segment.url, range: segment.range } : { id: segment.id, url: segment.url });
    }
    while (this.#known.size > MAX_KNOWN_SEGMENTS) this.#known.delete(this.#known.keys().next().value);
    this.#playlists.set(`${url}#${rep ?? ''}`, { url, rep, playlist });
    if (!this.shoal || !this.options.publisherKey) return;
    const swarm = this.swarmFor(url, rep);
    this.ensureJoined(swarm);
    this.shoal.setPlaylist(swarm, playlist);
  }

  /** What a segment URL (bytes `range` of it) is, if a playlist or manifest named it. */
  #lookup(url, range) {
    const known = this.#known.get(segmentKey(url, range));
    if (known || range) return known ?? null;
    for (const { playlist, rep, pattern } of this.#patterns) {
      const m = pattern.exec(url);
      if (m) return { playlist, rep, id: Number(m[1]), range: null };
    }
    return null;
  }

  /** Marks a known media segment for Shoal; leaves the rest to Shaka. */
  #route(request, context) {
    delete request.shoalFetch;
    // A byte-range segment is known by its URL and range; an open or odd range stays on HTTP.
    const range = requestRange(request.headers);
    if (range === undefined) return;
    const known = this.#lookup(request.uris[request.attempt % request.uris.length], range);
    if (!known || context?.type === this.shakaLib.net.NetworkingEngine.AdvancedRequestType?.INIT_SEGMENT) return;
    // The first media segment starts the clock for Shoal's own start.
    this.scheduleStart(this.player.getMediaElement());
    if (!this.shoal || !this.options.publisherKey) return;
    const bypass = this.shedding;
    const start = context?.segment?.startTime;
    const deadline = typeof start === 'number' ? this.deadlineFor(start) : performance.now();
    request.shoalFetch = { integration: this, swarm: this.swarmFor(known.playlist, known.rep), id: known.id, range: known.range, start, deadline, bypass };
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
    const promise = shoal.fetchSegment(job.swarm, job.id, uri, job.deadline, job.range ?? undefined).then(
      (result) => {
        if (aborted) throw abortedError(shaka);
        const end = performance.now();
        if (typeof job.start === 'number') this.delivered(job.start, end);
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

  onShoalReady(shoal) {
    for (const { url, rep, playlist } of this.#playlists.values()) {
      const swarm = this.swarmFor(url, rep);
      this.ensureJoined(swarm);
      shoal.setPlaylist(swarm, playlist);
    }
  }

  /**
   * The swarm of a rendition: `options.swarmId` (a function of the media playlist URL,
   * or for DASH of the manifest URL and the representation id; or a string, in which
   * `$RepresentationID$` stands for the representation's id, as in `shoal-sign mpd
   * --swarm`), else the playlist URL without query (HLS), or the manifest's and
   * `#<representation id>` (DASH).
   */
  swarmFor(url, representation = null) {
    const { swarmId } = this.options;
    if (typeof swarmId === 'function') return representation === null ? swarmId(url) : swarmId(url, representation);
    if (typeof swarmId === 'string') return representation === null ? swarmId : swarmId.replaceAll('$RepresentationID$', representation);
    return representation === null ? swarmIdFromUrl(url) : `${swarmIdFromUrl(url)}#${representation}`;
  }

  /** When the segment starting at `start` (presentation time) is due: see `ShoalHls.deadlineFor`. */
  deadlineFor(start) {
    return this.deadlineAt(start, this.player?.getMediaElement());
  }
}

function abortedError(shaka) {
  const { Error: ShakaError } = shaka.util;
  return new ShakaError(ShakaError.Severity.RECOVERABLE, ShakaError.Category.PLAYER, ShakaError.Code.OPERATION_ABORTED);
}
