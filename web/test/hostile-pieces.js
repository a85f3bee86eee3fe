// A misbehaving neighbour for the end-to-end tests: frames of the piece-exchange
// protocol (`/shoal/pieces/2`, crates/shoal-core/src/wire.rs) written by hand, sent over
// a raw stream the real runtime opens to a directly connected victim.

/** An unsigned LEB128 varint, as every Shoal wire frame uses (also for gossip frames). */
export const varint = (n) => {
  const out = [];
  let v = BigInt(n);
  while (v >= 0x80n) { out.push(Number(v & 0x7fn) | 0x80); v >>= 7n; }
  out.push(Number(v));
  return out;
};
const frame = (body) => [...varint(body.length), ...body];
const KIND = { hello: 1, availability: 2, have: 3, fetching: 4, request: 6, data: 7, busy: 10, cancel: 11 };

window.pieces = {
  varint,
  frame,
  hello: (streamId) => frame([KIND.hello, 2, ...streamId]),
  have: (segment) => frame([KIND.have, ...varint(segment)]),
  /** `have` as a bitmap from `base` (bit i = segment base + i), nothing fetching. */
  availability: (base, bitmap) => frame([KIND.availability, ...varint(base), ...varint(bitmap.length), ...bitmap, 0, 0]),
  cancel: (id) => frame([KIND.cancel, ...varint(id)]),
  busy: (id, retryMs) => frame([KIND.busy, ...varint(id), ...varint(retryMs)]),
  data: (id, segment, chunk, bytes) => frame([KIND.data, ...varint(id), ...varint(segment), ...varint(chunk), ...bytes]),
  unknown: () => frame([99, 1, 2, 3]),
};
