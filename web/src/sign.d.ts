/** Node.js only: signing segment records on the publisher's side (see README, "Publishing"). */

export interface SignSegmentOptions {
  /** The publisher's 32-byte secret key (the file `shoal-sign keygen` writes). */
  secretKey: Uint8Array;
  /** The swarm id pages join for this rendition. */
  swarm: string;
  /** The segment's media sequence number (DASH: `$Number$`). */
  sequence: number;
  /** The segment's bytes (1 byte to 256 MiB). */
  data: Uint8Array;
  /** Bytes per verified chunk, 1024 to 262144; picked from the segment's size if omitted. */
  chunkSize?: number;
  /** When it was published, Unix milliseconds (default now). */
  publishedAtMs?: number;
}

/** The record frame to serve at `recordUrl(segmentUrl)`. Throws (code `invalid-argument`) on bad input. */
export function signSegment(options: SignSegmentOptions): Uint8Array;
/** The public key pages pass as `publisherKey`: 64 hex characters. */
export function publicKey(secretKey: Uint8Array): string;
/** Where a segment's record is served; `range` is `[start, end)` of a byte-range segment. */
export function recordUrl(segmentUrl: string, options?: { range?: [number, number]; suffix?: string }): string;
/** 32 random bytes: a new publisher secret key. */
export function generateSecretKey(): Uint8Array;
