// A js-libp2p browser peer (libp2p 3, @libp2p/webrtc 6), built by the interop test with
// Vite. It reaches the signalling node over WebSocket, listens through a relay
// reservation for browser-to-browser /webrtc, and speaks Shoal's `/shoal/bulk/1` test
// protocol in both directions, checking every byte: proof that Shoal's transport follows
// the libp2p WebRTC spec as js-libp2p implements it.
//
// Why WebSocket to the node: js-libp2p waits for FIN_ACK when it closes a stream, and
// the node's /webrtc-direct listener (rust-libp2p's libp2p-webrtc 0.10) never sends one,
// so js-libp2p's relay reservation over /webrtc-direct times out. Shoal's own pages do
// not wait for FIN_ACK on the node link.
import { createLibp2p } from 'libp2p';
import { webRTC } from '@libp2p/webrtc';
import { webSockets } from '@libp2p/websockets';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { multiaddr } from '@multiformats/multiaddr';

const BULK = '/shoal/bulk/1';
const CHUNK = 64 * 1024;
const MASK = (1n << 64n) - 1n;
const MULTIPLIER = 0x9e3779b97f4a7c15n;

/** Byte `index` of Shoal's bulk pattern for `seed` (see crates/shoal-browser/src/bulk.rs). */
const patternByte = (seed, index) => Number((((BigInt(index) + seed) & MASK) * MULTIPLIER & MASK) >> 56n);

const u64be = (n) => {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
};

/** Reads a stream to its end, handing each chunk to `onChunk`. */
async function drain(stream, onChunk) {
  for await (const chunk of stream) onChunk(chunk.subarray ? chunk.subarray() : chunk);
}

window.jsPeer = {
  node: null,
  received: [],
  async start(nodeAddr) {
    this.node = await createLibp2p({
      addresses: { listen: [`${nodeAddr}/p2p-circuit`, '/webrtc'] },
      transports: [webSockets(), webRTC(), circuitRelayTransport()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      // Everything in the test is on a private address.
      connectionGater: { denyDialMultiaddr: () => false },
      services: { identify: identify(), ping: ping() },
    });
    // Receive a bulk transfer: check every byte, answer with the verdict.
    await this.node.handle(BULK, async (stream) => {
      const header = new Uint8Array(16);
      let headerLen = 0;
      let len = -1n; // unknown until the header is complete
      let seed = 0n;
      let good = 0;
      let intact = true;
      await drain(stream, (bytes) => {
        let i = 0;
        while (headerLen < 16 && i < bytes.length) header[headerLen++] = bytes[i++];
        if (headerLen < 16) return;
        if (len < 0n) {
          const view = new DataView(header.buffer);
          len = view.getBigUint64(0);
          seed = view.getBigUint64(8);
        }
        for (; i < bytes.length; i++) {
          if (intact && BigInt(good) < len && bytes[i] === patternByte(seed, good)) good++;
          else intact = false;
        }
      });
      const ok = intact && BigInt(good) === len;
      this.received.push({ bytes: good, intact: ok });
      stream.send(Uint8Array.from([ok ? 0 : 1, ...u64be(good)]));
      await stream.close();
    });
    return this.node.peerId.toString();
  },
  /** This peer's browser-to-browser address, once its relay reservation is up. */
  webrtcAddr() {
    const addr = this.node.getMultiaddrs().map(String).find((a) => a.includes('/p2p-circuit/webrtc'));
    return addr ?? null;
  },
  /** Connections: peer, remote address, whether limited (relayed). */
  connections() {
    return this.node.getConnections().map((c) => ({ peer: c.remotePeer.toString(), addr: c.remoteAddr.toString(), limited: Boolean(c.limits) }));
  },
  async dial(addr) {
    const connection = await this.node.dial(multiaddr(addr));
    return connection.remoteAddr.toString();
  },
  /** Sends `len` pattern bytes to `peer` over `/shoal/bulk/1`; resolves to its verdict. */
  async sendBulk(peer, len) {
    const connection = this.node.getConnections().find((c) => c.remotePeer.toString() === peer && !c.limits);
    if (!connection) throw new Error(`no direct connection to ${peer}`);
    const stream = await connection.newStream(BULK);
    const seed = BigInt(Math.floor(Math.random() * 2 ** 32)) * 65536n;
    const header = new Uint8Array(16);
    header.set(u64be(len), 0);
    header.set(u64be(seed), 8);
    if (!stream.send(header)) await stream.onDrain();
    for (let sent = 0; sent < len; sent += CHUNK) {
      const n = Math.min(CHUNK, len - sent);
      const buf = new Uint8Array(n);
      for (let i = 0; i < n; i++) buf[i] = patternByte(seed, sent + i);
      if (!stream.send(buf)) await stream.onDrain();
    }
    await stream.close();
    const reply = [];
    await drain(stream, (bytes) => reply.push(...bytes));
    if (reply.length !== 9) throw new Error(`reply of ${reply.length} bytes`);
    return { intact: reply[0] === 0, bytes: Number(new DataView(Uint8Array.from(reply).buffer).getBigUint64(1)) };
  },
  stop() { return this.node.stop(); },
};
window.jsPeerReady = true;
