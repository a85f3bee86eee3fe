import type { Shoal } from './index.js';
import type { ShoalHlsOptions } from './hls.js';

/** As `ShoalHlsOptions`; `swarmId` as a function takes the media playlist URL. */
export type ShoalShakaOptions = ShoalHlsOptions;

/**
 * Shaka Player integration (HLS): media segments through Shoal, with HTTP fallback through
 * Shaka's own HTTP plugin. Until Shoal is ready, every request is Shaka's own.
 */
export class ShoalShaka {
  /**
   * @param shoal a started `Shoal`, a promise of one, or a function returning one (or a
   *   promise of one) that is called once playback has started (or 3 s after the first
   *   media segment arrived, if it has not).
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
  swarmFor(url: string): string;
  /** When the segment starting at `start` (presentation time, s) is due, on the `performance.now()` clock. */
  deadlineFor(start: number): number;
}

/** Each media segment of an HLS media playlist; null if `text` is not one. */
export function parseMediaPlaylist(text: string, url: string): { id: number; url: string; byteRange: boolean }[] | null;
