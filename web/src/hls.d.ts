import type { Shoal } from './index.js';

export interface ShoalHlsOptions {
  /** The publisher's ed25519 public key; without it every segment comes over HTTP. */
  publisherKey?: string;
  /**
   * Swarm id: a string for a single rendition, or a function of the level playlist URL
   * (one swarm per rendition). Default: the level playlist URL without query or fragment.
   * It must equal the `--swarm` the publisher signed the rendition's records with.
   */
  swarmId?: string | ((levelPlaylistUrl: string) => string);
  live?: boolean;
  recordSuffix?: string;
  urgentWindowMs?: number;
}

/**
 * hls.js integration: fetch segments through Shoal, with HTTP fallback. Until Shoal is
 * ready, every fragment comes through hls.js's own loader.
 */
export class ShoalHls {
  /**
   * @param shoal a started `Shoal`, a promise of one, or a function returning one (or a
   *   promise of one) that is called once playback has started with 3 s of media
   *   buffered ahead (or 3 s after hls.js buffered its first fragment, if it has not), so
   *   that Shoal's download, compile and connection never compete with the start.
   */
  constructor(shoal: Shoal | Promise<Shoal> | (() => Shoal | Promise<Shoal>) | null, options?: ShoalHlsOptions);
  /** The Shoal in use; null until it is ready (and if it failed to start). */
  readonly shoal: Shoal | null;
  /** Why Shoal failed to start, if it did; playback goes on over HTTP. */
  readonly error: unknown;
  readonly options: ShoalHlsOptions;
  /**
   * Bytes received per source through Shoal; segments that fell back to hls.js's own
   * loader; and the fragments (and their bytes) hls.js's loader fetched directly while
   * Shoal shed its load (`load-shedding`: the page could not keep up).
   */
  readonly segments: { fromPeers: number; fromHttp: number; fallbacks: number; bypassed: number; bypassedBytes: number };
  /** Whether fragments bypass Shoal now because it sheds load. */
  readonly shedding: boolean;
  /**
   * Milliseconds hls.js has lately needed between a fragment's bytes arriving and its
   * being buffered (rises at once with a slow one, up to 4 s; decays slowly); taken off
   * every deadline.
   */
  readonly processingMs: number;
  /** Fields to merge into the hls.js config (`fLoader`). `Hls` is the hls.js class. */
  config(Hls: { DefaultConfig: { loader: unknown } }): { fLoader: unknown };
  /** Connects to the hls.js instance created with `config()`. */
  attach(hls: unknown): this;
  swarmFor(url: string): string;
  deadlineFor(frag: { start: number }): number;
}
