import type { Shoal } from './index.js';
import type { ShoalHlsOptions } from './hls.js';

/**
 * As `ShoalHlsOptions`, except `swarmId`: a function of the HLS media playlist URL, or of
 * the DASH manifest URL and representation id; or a string, in which `$RepresentationID$`
 * stands for a DASH representation's id (as in `shoal-sign mpd --swarm`).
 */
export type ShoalShakaOptions = Omit<ShoalHlsOptions, 'swarmId'> & {
  swarmId?: string | ((playlistUrl: string, representationId?: string) => string);
};

/**
 * Shaka Player integration (HLS, and DASH with `$Number$` templates): media segments through Shoal, with HTTP fallback through
 * Shaka's own HTTP plugin. Until Shoal is ready, every request is Shaka's own.
 */
export class ShoalShaka {
  /**
   * @param shoal a started `Shoal`, a promise of one, or a function returning one (or a
   *   promise of one) that is called once playback has started with 3 s of media
   *   buffered ahead (or 3 s after the first media segment arrived, if it has not).
   */
  constructor(shoal: Shoal | Promise<Shoal> | (() => Shoal | Promise<Shoal>) | null, options?: ShoalShakaOptions);
  readonly shoal: Shoal | null;
  readonly error: unknown;
  readonly options: ShoalShakaOptions;
  /** As `ShoalHls.segments`. */
  readonly segments: { fromPeers: number; fromHttp: number; fallbacks: number; bypassed: number; bypassedBytes: number };
  readonly shedding: boolean;
  /** Milliseconds Shaka has lately needed from a segment's delivery to its append; taken off every deadline. */
  readonly processingMs: number;
  /**
   * Connects to a `shaka.Player` before `load()`: a response filter reads HLS media
   * playlists, a request filter marks their media segments for Shoal, and an `http(s)`
   * scheme plugin (registered once per page, above Shaka's own, to which it hands every
   * unmarked request) serves them. `shaka` is the library's
   * namespace (default: the global `shaka`).
   */
  attach(player: unknown, shaka?: unknown): this;
  swarmFor(url: string, representationId?: string | null): string;
  /** When the segment starting at `start` (presentation time, s) is due, on the `performance.now()` clock. */
  deadlineFor(start: number): number;
}

/** Each media segment of an HLS media playlist; null if `text` is not one. */
export function parseMediaPlaylist(text: string, url: string): { id: number; url: string; range?: [number, number] }[] | null;

/**
 * Each representation of a DASH manifest whose `SegmentTemplate` numbers segments: a
 * pattern whose first group is a segment URL's number, and (static manifests) its
 * segments. Null if `text` is not an MPD.
 */
export function parseMpd(text: string, url: string): { id: string; pattern: RegExp; segments: { id: number; url: string }[] }[] | null;
