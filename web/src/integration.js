// What the player integrations (`ShoalHls`, `ShoalShaka`) share: Shoal started late (the
// first frame never waits for it), load shedding followed, swarms joined on first use,
// counters, and each segment's deadline with the player's measured processing time
// taken off.

/** Seconds of media from the start position that always come over HTTP at startup. */
export const STARTUP_URGENT_S = 6;

/**
 * What a player needs, after a segment's bytes arrive, before they are in the buffer
 * (transmuxing, appending to MSE), assumed before anything is measured: up to ~0.7 s in
 * a page that is still starting under load here, tens of ms later.
 */
const INITIAL_PROCESSING_MS = 1000;
/** Per segment buffered, the allowance falls towards what is measured by this factor. */
const PROCESSING_DECAY = 0.9;
/**
 * Most allowance taken: a tab in the background has its timers throttled and may report
 * many seconds once, which must not send every segment of the next minute to HTTP.
 */
const MAX_PROCESSING_MS = 4000;
/** A factory waits for playback this long after the first segment, at most. */
const START_FALLBACK_MS = 3000;
/**
 * Once playing, the factory waits until this much media is buffered ahead (or
 * START_FALLBACK_MS has passed): the wasm compile and the node connection take the main
 * thread for a moment, which a player holding one segment may not survive.
 */
const START_BUFFER_S = 3;

/** Seconds of media buffered ahead of the playhead. */
function bufferedAhead(media) {
  const ranges = media?.buffered;
  if (!ranges) return 0;
  for (let i = 0; i < ranges.length; i++) {
    if (ranges.start(i) <= media.currentTime + 0.1 && media.currentTime < ranges.end(i)) return ranges.end(i) - media.currentTime;
  }
  return 0;
}
/** Deliveries remembered while they wait to be buffered (aborted ones never are). */
const MAX_DELIVERIES = 16;

/**
 * When a segment starting at media time `start` must be in the player's hands, on the
 * `performance.now()` clock: when playback reaches it, less `processingMs`. Before
 * playback has a position, counted from `startFrom` (where it will start): what lies
 * within `STARTUP_URGENT_S` of it is due at once and comes over HTTP, as a slow or not
 * yet connected peer must not delay the start; what lies further (a VOD start or seek
 * buffering ahead) keeps its slack and may come from peers.
 */
export function segmentDeadline(start, media, startFrom, processingMs, now = performance.now()) {
  let ahead;
  if (media && media.currentTime > 0) {
    ahead = start - media.currentTime;
  } else {
    ahead = start - startFrom;
    if (ahead < STARTUP_URGENT_S) return now;
  }
  if (!(ahead > 0)) return now;
  const rate = media && !media.paused ? Math.max(media.playbackRate || 1, 0.1) : 1;
  return Math.max(now, now + (ahead * 1000) / rate - processingMs);
}

export class PlayerIntegration {
  #factory = null;
  #startScheduled = false;
  /** Segment key → when we handed it to the player. */
  #deliveredAt = new Map();

  /**
   * @param shoal a started `Shoal`; a promise of one; or a function returning one (or a
   *   promise of one), called once playback has started with 3 s of media buffered
   *   ahead (or 3 s after the first segment, if it has not), so that the wasm download
   *   and compile and the node connection never compete with the start.
   * @param options `publisherKey` (required to exchange segments), `swarmId`, `live`,
   *   `recordSuffix`, `urgentWindowMs`
   */
  constructor(shoal, options = {}) {
    this.shoal = null;
    /** Why Shoal could not be started, if it could not (playback goes on over HTTP). */
    this.error = null;
    this.options = options;
    this.joined = new Set();
    // `bypassed`/`bypassedBytes`: segments the player's own loader fetched while Shoal
    // shed its load (the page could not keep up: see the `load-shedding` event).
    this.segments = { fromPeers: 0, fromHttp: 0, fallbacks: 0, bypassed: 0, bypassedBytes: 0 };
    // While Shoal sheds load, segments skip it entirely: the page's main thread is the
    // scarce thing, and the player's own loader costs it least.
    this.shedding = false;
    // Before playback has a position: where it will start (the first segment asked for).
    this.startFrom = null;
    // Time from a segment's bytes reaching the player to its being buffered: taken off
    // each deadline. Rises at once with a slow measurement, decays slowly.
    this.processingMs = INITIAL_PROCESSING_MS;
    if (typeof shoal === 'function') this.#factory = shoal;
    else if (shoal && typeof shoal.then === 'function') this.#adopt(shoal);
    else this.shoal = shoal ?? null;
    this.#watch(this.shoal);
  }

  /** The page's Shoal is ready: hand it what the player already knows (subclasses). */
  onShoalReady(_shoal) {}

  /**
   * Calls the factory, once, when playback has started on `media` with START_BUFFER_S
   * buffered ahead (or after START_FALLBACK_MS if not by then: autoplay blocked, nothing
   * to compete with). Subclasses call it when the first segment is in.
   */
  scheduleStart(media) {
    if (!this.#factory || this.#startScheduled) return;
    this.#startScheduled = true;
    const start = () => {
      if (!this.#factory) return;
      const factory = this.#factory;
      this.#factory = null;
      this.#adopt(Promise.resolve().then(factory));
    };
    if (typeof media?.addEventListener !== 'function') {
      start();
      return;
    }
    // The media element says when playback or the buffer moves: no timer polls it.
    const events = ['playing', 'progress', 'timeupdate'];
    const stop = () => { for (const type of events) media.removeEventListener(type, check); };
    const check = () => {
      if (!this.#factory) stop();
      else if (!media.paused && media.readyState >= 3 && bufferedAhead(media) >= START_BUFFER_S) { stop(); start(); }
    };
    for (const type of events) media.addEventListener(type, check);
    check();
    setTimeout(() => { stop(); start(); }, START_FALLBACK_MS);
  }

  /** Follows `shoal`'s load shedding (segments bypass it meanwhile). */
  #watch(shoal) {
    if (typeof shoal?.addEventListener !== 'function') return;
    shoal.addEventListener('load-shedding', (event) => { this.shedding = Boolean(event.detail?.active); });
  }

  /** Uses the Shoal `pending` resolves to from now on; HTTP only if it fails. */
  #adopt(pending) {
    pending.then(
      (shoal) => {
        this.shoal = shoal;
        this.#watch(shoal);
        if (this.options.publisherKey) this.onShoalReady(shoal);
      },
      (error) => {
        this.error = error;
        console.warn('Shoal could not start; playing over HTTP only:', error);
      },
    );
  }

  ensureJoined(swarm) {
    if (!this.shoal || this.joined.has(swarm)) return;
    const { publisherKey, live, recordSuffix, urgentWindowMs } = this.options;
    this.shoal.join(swarm, { publisherKey, live, recordSuffix, urgentWindowMs });
    this.joined.add(swarm);
  }

  /** We handed segment `key` to the player at `at`. */
  delivered(key, at) {
    this.#deliveredAt.set(key, at);
    if (this.#deliveredAt.size > MAX_DELIVERIES) this.#deliveredAt.delete(this.#deliveredAt.keys().next().value);
  }

  /** The player buffered segment `key`: how long that took goes into the allowance. */
  buffered(key) {
    const at = this.#deliveredAt.get(key);
    if (at === undefined) return;
    this.#deliveredAt.delete(key);
    const measured = Math.min(performance.now() - at, MAX_PROCESSING_MS);
    this.processingMs = Math.max(measured, this.processingMs * PROCESSING_DECAY);
  }

  /** When the segment starting at `start` is due (see `segmentDeadline`). */
  deadlineAt(start, media) {
    if (media && media.currentTime > 0) this.startFrom = null;
    else this.startFrom ??= start;
    return segmentDeadline(start, media, this.startFrom, this.processingMs);
  }
}
