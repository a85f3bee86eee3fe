// A misbehaving peer for the end-to-end tests: it speaks /webrtc-signaling over a raw
// relayed stream opened by the real runtime, and breaks the protocol on purpose.
import { SIGNALING, SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE, encode, decode, varint } from './signaling-wire.js';

const h = () => window.harness;

async function open(victim) {
  return h().openStream(victim, SIGNALING, true);
}

/** Reads until `count` messages arrived or the stream ends; returns them. */
async function readMessages(handle, count, timeoutMs = 5000) {
  let buffer = [];
  const messages = [];
  const deadline = performance.now() + timeoutMs;
  while (messages.length < count && performance.now() < deadline) {
    const chunk = await Promise.race([h().read(handle), new Promise((r) => setTimeout(() => r('timeout'), 200))]);
    if (chunk === 'timeout') continue;
    if (chunk === null) break;
    buffer = buffer.concat(chunk);
    const [decoded, rest] = decode(buffer);
    messages.push(...decoded);
    buffer = rest;
  }
  return messages;
}

function waitIceComplete(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 2000);
  });
}

window.hostile = {
  /** A length prefix far past the limit. */
  async oversize(victim) {
    const s = await open(victim);
    await h().write(s, varint(1 << 20));
    await h().write(s, new Array(1000).fill(0x41));
  },
  /** A well-framed message of an unknown type. */
  async unknownType(victim) {
    const s = await open(victim);
    await h().write(s, [5, 0x08, 0x07, 0x12, 0x01, 0x41]);
  },
  /** An offer that is not SDP. */
  async garbageSdp(victim) {
    const s = await open(victim);
    await h().write(s, encode(SDP_OFFER, 'this is not a session description'));
  },
  /** A message cut short, then the stream reset, as a crashing peer would. */
  async truncatedThenReset(victim) {
    const s = await open(victim);
    await h().write(s, [100, 0x08, 0x00, 0x12]);
    await h().resetStream(s);
  },
  /** A real offer, then candidates that are not JSON, then JSON of the wrong shape. */
  async badCandidate(victim, data) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.createDataChannel('init');
    await pc.setLocalDescription(await pc.createOffer());
    const s = await open(victim);
    await h().write(s, encode(SDP_OFFER, pc.localDescription.sdp));
    await readMessages(s, 1);
    await h().write(s, encode(ICE_CANDIDATE, data));
    await new Promise((r) => setTimeout(r, 1000));
    pc.close();
  },
  /** A real offer whose DTLS fingerprint does not match the certificate used. */
  async wrongFingerprint(victim) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.createDataChannel('init');
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceComplete(pc);
    const sdp = pc.localDescription.sdp.replace(/a=fingerprint:sha-256 ([0-9A-F]{2})/, (_, byte) =>
      `a=fingerprint:sha-256 ${byte === '00' ? '01' : '00'}`);
    const s = await open(victim);
    await h().write(s, encode(SDP_OFFER, sdp));
    const [answer] = await readMessages(s, 1);
    if (!answer || answer.type !== SDP_ANSWER) return { answered: false };
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.data });
    const candidates = await readMessages(s, 10, 1500);
    for (const c of candidates) {
      if (c.type === ICE_CANDIDATE && c.data !== 'null') await pc.addIceCandidate(JSON.parse(c.data)).catch(() => {});
    }
    // Keep the attacker's side alive long enough for the victim to see DTLS fail.
    await new Promise((r) => setTimeout(r, 4000));
    const state = pc.connectionState;
    pc.close();
    return { answered: true, attackerState: state };
  },
  /** A valid offer, then nothing: the caller closes this page mid-handshake. */
  async offerThenVanish(victim) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.createDataChannel('init');
    await pc.setLocalDescription(await pc.createOffer());
    const s = await open(victim);
    await h().write(s, encode(SDP_OFFER, pc.localDescription.sdp));
    window.hostilePc = pc;
  },
};
window.hostileReady = true;
