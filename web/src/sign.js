// Node.js: the publisher's side of Shoal's integrity, for packagers and origins written
// in JavaScript. Signs each segment's record as the segment is written — the same code
// and the same bytes as `shoal-sign` (both are `shoal_core::publish`) — so a just-in-time
// or looping origin need not shell out per segment.
//
//   import { signSegment, recordUrl, publicKey } from 'shoal/sign';
//   const secretKey = readFileSync('/secure/publisher.key');   // shoal-sign keygen's file
//   writeFileSync(recordUrl('out/seg42.m4s'), signSegment({ secretKey, swarm, sequence: 42, data }));

import { readFileSync } from 'node:fs';
import { initSync, publicKeyOf, recordUrl as recordUrlOf, signSegment as sign } from './shoal_sign.js';

initSync({ module: readFileSync(new URL('./shoal_sign_bg.wasm', import.meta.url)) });

/** Errors from bad arguments carry `code: 'invalid-argument'`, like the browser API's. */
function invalid(message) {
  return Object.assign(new TypeError(message), { code: 'invalid-argument' });
}

/** `value` as bytes: a Uint8Array (or Buffer), an ArrayBuffer or another typed array. */
function bytes(name, value) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw invalid(`${name} must be a Uint8Array, Buffer or ArrayBuffer, not ${typeof value}`);
}

function checked(call) {
  try {
    return call();
  } catch (error) {
    throw invalid(error?.message ?? String(error));
  }
}

/**
 * The record of one segment: the exact bytes to serve at `recordUrl(segmentUrl)`.
 * `swarm` is the swarm id pages join for this rendition (ShoalHls `swarmId`), `sequence`
 * its media sequence number (DASH: `$Number$`), `data` its bytes. `chunkSize` is picked
 * from the segment's size unless given (1 KiB to 256 KiB); `publishedAtMs` defaults to
 * now (live pages refuse records far older than ones they already trust).
 */
export function signSegment({ secretKey, swarm, sequence, data, chunkSize = 0, publishedAtMs = Date.now() }) {
  if (typeof swarm !== 'string') throw invalid('swarm must be a string (the swarm id pages join)');
  for (const [name, value] of [['sequence', sequence], ['chunkSize', chunkSize], ['publishedAtMs', publishedAtMs]]) {
    if (typeof value !== 'number') throw invalid(`${name} must be a number, not ${typeof value}`);
  }
  if (chunkSize < 0 || chunkSize > 0xffff_ffff || !Number.isInteger(chunkSize)) throw invalid(`chunkSize ${chunkSize} is not a byte count`);
  return checked(() => sign(bytes('secretKey', secretKey), swarm, sequence, bytes('data', data), chunkSize, publishedAtMs));
}

/** The public key pages pass as `publisherKey` (64 hex characters). */
export function publicKey(secretKey) {
  return checked(() => publicKeyOf(bytes('secretKey', secretKey)));
}

/**
 * Where the record of the segment at `segmentUrl` is served: `<path>.shoal`, any query
 * kept last; for bytes `range = [start, end)` of a file, `<path>.<start>-<end>.shoal`.
 */
export function recordUrl(segmentUrl, { range, suffix = '.shoal' } = {}) {
  if (typeof segmentUrl !== 'string' || typeof suffix !== 'string') throw invalid('segmentUrl and suffix must be strings');
  const [start, end] = range ?? [0, 0];
  if (typeof start !== 'number' || typeof end !== 'number') throw invalid('range must be [start, end) in bytes');
  return checked(() => recordUrlOf(segmentUrl, start, end, suffix));
}

/** A new publisher secret key (32 random bytes); keep it as `shoal-sign keygen` does. */
export function generateSecretKey() {
  return crypto.getRandomValues(new Uint8Array(32));
}
