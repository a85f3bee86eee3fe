// Baseline for the throughput benchmark: a plain RTCDataChannel between two tabs, no
// libp2p, no wasm. The benchmark shuttles SDP between the two pages itself.
//
// The sender keeps bufferedAmount between LOW and HIGH, the range that keeps a channel
// busy (TESTING.md); the receiver only counts bytes.

const HIGH = 4 * 1024 * 1024;
const LOW = 1024 * 1024;
const MESSAGE = 64 * 1024;

let pc;
let channel;
let received = 0;
let receiveWaiter = null;

function waitIceComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
}

function onChannel(ch) {
  channel = ch;
  channel.binaryType = 'arraybuffer';
  channel.onmessage = (event) => {
    received += event.data.byteLength;
    if (receiveWaiter && received >= receiveWaiter.target) {
      const { resolve } = receiveWaiter;
      receiveWaiter = null;
      resolve(performance.now());
    }
  };
}

window.rawChannel = {
  async offer() {
    pc = new RTCPeerConnection({ iceServers: [] });
    onChannel(pc.createDataChannel('bench', { ordered: true }));
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceComplete(pc);
    return pc.localDescription.sdp;
  },
  async answer(offer) {
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.ondatachannel = (event) => onChannel(event.channel);
    await pc.setRemoteDescription({ type: 'offer', sdp: offer });
    await pc.setLocalDescription(await pc.createAnswer());
    await waitIceComplete(pc);
    return pc.localDescription.sdp;
  },
  async accept(answer) {
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  },
  async waitOpen() {
    for (;;) {
      if (channel && channel.readyState === 'open') return;
      await new Promise((r) => setTimeout(r, 10));
    }
  },
  /** Resolves with the time (performance.now) at which `bytes` more bytes have arrived. */
  expect(bytes) {
    const target = received + bytes;
    return new Promise((resolve) => {
      receiveWaiter = { target, resolve };
    });
  },
  async send(bytes) {
    const chunk = new Uint8Array(MESSAGE);
    channel.bufferedAmountLowThreshold = LOW;
    let sent = 0;
    while (sent < bytes) {
      if (channel.bufferedAmount > HIGH) {
        await new Promise((resolve) => {
          channel.onbufferedamountlow = () => {
            channel.onbufferedamountlow = null;
            resolve();
          };
        });
      }
      const n = Math.min(MESSAGE, bytes - sent);
      channel.send(n === MESSAGE ? chunk : chunk.subarray(0, n));
      sent += n;
    }
  },
};
