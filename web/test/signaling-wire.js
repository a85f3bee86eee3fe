// The /webrtc-signaling/0.0.1 wire format, written independently of the Rust codec so
// the tests can speak it — correctly or not — from JavaScript.

export const SIGNALING = '/webrtc-signaling/0.0.1';
export const SDP_OFFER = 0;
export const SDP_ANSWER = 1;
export const ICE_CANDIDATE = 2;

export function varint(n) {
  const out = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

/** One length-prefixed message: `{type, data}`. */
export function encode(type, data) {
  const bytes = [...new TextEncoder().encode(data)];
  const body = [0x08, type, 0x12, ...varint(bytes.length), ...bytes];
  return [...varint(body.length), ...body];
}

/** Splits a byte buffer into complete messages; returns [messages, rest]. */
export function decode(buffer) {
  const messages = [];
  let offset = 0;
  for (;;) {
    let len = 0;
    let shift = 0;
    let i = offset;
    for (; i < buffer.length; i++) {
      len += (buffer[i] & 0x7f) * 2 ** shift;
      shift += 7;
      if ((buffer[i] & 0x80) === 0) break;
    }
    if (i >= buffer.length || i + 1 + len > buffer.length) break;
    const body = buffer.slice(i + 1, i + 1 + len);
    let type = 0;
    let data = '';
    for (let j = 0; j < body.length;) {
      const tag = body[j++];
      if (tag === 0x08) type = body[j++];
      else if (tag === 0x12) {
        let l = 0;
        let s = 0;
        while (body[j] & 0x80) { l += (body[j++] & 0x7f) * 2 ** s; s += 7; }
        l += body[j++] * 2 ** s;
        data = new TextDecoder().decode(new Uint8Array(body.slice(j, j + l)));
        j += l;
      } else break;
    }
    messages.push({ type, data });
    offset = i + 1 + len;
  }
  return [messages, buffer.slice(offset)];
}
