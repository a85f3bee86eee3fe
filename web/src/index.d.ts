/** Options of `Shoal.create`. Every field is optional. */
export interface ShoalConfig {
  /** Signalling node multiaddrs (`/ip4/…/udp/…/webrtc-direct/certhash/…/p2p/…`). */
  nodes?: string[];
  /** Where to read node addresses when `nodes` is empty (default: `/.well-known/shoal.json`). */
  wellKnownUrl?: string;
  /**
   * STUN/TURN servers for connections between browsers. Default: those the node's
   * well-known document names (its own STUN server, and TURN with fresh credentials if
   * the operator runs one); none when `nodes` is given instead of a well-known URL.
   */
  iceServers?: { urls: string | string[]; username?: string; credential?: string }[];
  /**
   * `'relay'`: connect to other pages only through TURN relays, so that no peer learns
   * this viewer's IP address (needs a TURN server). Default `'all'`.
   */
  iceTransportPolicy?: 'all' | 'relay';
  /** Most direct peer connections held (default 24). */
  maxPeers?: number;
  /** Deadline of one WebRTC handshake (default 10000 ms). */
  handshakeTimeoutMs?: number;
  /** How often swarm membership is refreshed (default 15000 ms). */
  rejoinIntervalMs?: number;
  logLevel?: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** Serve segments to other peers (default true). */
  upload?: boolean;
  /** Upload cap in bytes per second. */
  uploadRateLimit?: number;
  /** Fetch segments from other peers (default true; false: HTTP only). */
  p2pDownload?: boolean;
  /** Memory for cached segments per swarm (default 64 MiB). */
  cacheBytes?: number;
  /** Largest gossip message accepted or published (default 65536). */
  gossipMaxBytes?: number;
  /** Emit `chunk-down` / `chunk-up` events. */
  chunkEvents?: boolean;
  /** Join this swarm at once (connections and gossip only). */
  swarm?: string;
  /** Where to load the WebAssembly module from (default: next to this file). */
  wasm?: string | URL | Response | BufferSource | WebAssembly.Module;
  /** Fault injection for tests. Never set in production. */
  testing?: { corruptUploads?: boolean };
}

/** Options of `shoal.join`. */
export interface SwarmOptions {
  /** The publisher's ed25519 public key (64 hex chars or base64). Required to exchange segments. */
  publisherKey?: string;
  /** Live stream (default) or VOD. */
  live?: boolean;
  /** Signed records live at the segment URL plus this suffix (default ".shoal"). */
  recordSuffix?: string;
  /** Segments due within this many ms come over HTTP (default 1200, widened when the origin is slow). */
  urgentWindowMs?: number;
}

export interface LoadedSegment {
  data: Uint8Array;
  fromPeers: number;
  fromHttp: number;
}

export interface PeerTraffic {
  down: number;
  up: number;
}

export interface SwarmStats {
  bytesFromPeers: number;
  bytesFromHttp: number;
  bytesUploaded: number;
  segmentsLoaded: number;
  segmentsFailed: number;
  /** Origin records that did not verify (see the `record-refused` event). */
  recordsRefused: number;
  chunksRejected: number;
  peersBanned: number;
  /** HTTP fetches: early shares of new segments / seeding a segment no peer had / due too soon for peers / duplicates of late fetches. */
  httpEarly: number;
  httpSeeds: number;
  httpUrgent: number;
  httpHedges: number;
  cachedBytes: number;
  peers: number;
  perPeer: Record<string, PeerTraffic>;
}

export interface ShoalStats {
  nodeConnected: boolean;
  /** Where other browsers reach this peer (`…/p2p-circuit/webrtc/p2p/<peerId>`); null until its relay reservation is up. */
  address: string | null;
  joined: boolean;
  swarms: string[];
  /** `path`: the selected ICE pair's candidate types, `local/remote` (`host`, `srflx`,
   *  `prflx`, `relay`), once known. */
  connections: { peer: string; remoteAddr: string; direct: boolean; dialer: boolean; rttMs: number | null; path: string | null }[];
  relayedConnections: number;
  peerConnectionsCreated: number;
  nodeReconnects: number;
  bannedPeers: number;
  /** Whether the page sheds its own load now (see the `load-shedding` event), the smoothed
   *  lateness of its timers, and how many times it began shedding. */
  loadShedding: boolean;
  timerLateMs: number;
  loadSheddingEpisodes: number;
  /** How this page's dials to other pages ended: connected, by the selected pair's candidate
   *  types (`relay` if either end is a TURN relay, else `srflx` if either end came from STUN,
   *  else `host`, peer-reflexive included), or failed, by `dial-failed` kind. The page reports
   *  them to its node (`shoal_peer_connections_total` on the node's `/metrics`). */
  connectionOutcomes: {
    host: number; srflx: number; relay: number;
    iceFailed: number; signallingTimeout: number; refused: number; other: number;
  };
  /**
   * `duplicates`: copies of messages already seen (each arrives once per path);
   * `rateLimited`: dropped past a neighbour's rate limit; `expired`: stamped too far from our clock.
   */
  gossip: {
    published: number; received: number; rejectedOversize: number; rejectedInvalid: number;
    rateLimited: number; expired: number; duplicates: number;
  };
  pieces: Record<string, SwarmStats>;
  /** Size of the WebAssembly heap (it only grows): the runtime's memory high-water mark. */
  wasmMemoryBytes: number;
}

export interface ConnectionReport {
  peer: string;
  /** True for the connection to a signalling node (over /webrtc-direct). */
  server: boolean;
  connectionState: string;
  selectedPair: { localType: string; remoteType: string; localAddress: string; remoteAddress: string; protocol: string } | null;
  bytesSent: number;
  bytesReceived: number;
  currentRoundTripMs: number | null;
  /** Data channels (libp2p streams) opened on this connection so far, by either side. */
  dataChannelsOpened: number;
}

/** Event details, by event type. */
export interface ShoalEventMap {
  'node-connected': CustomEvent<{ node: string; addr: string }>;
  'node-disconnected': CustomEvent<{ node: string; reason: string }>;
  joined: CustomEvent<{ swarm: string; members: number }>;
  /** The node refused a join (`what: 'join <swarm>'`) or our relay reservation; retried with backoff. */
  refused: CustomEvent<{ what: string; reason: string }>;
  'bulk-received': CustomEvent<{ peer: string; bytes: number; intact: boolean; ms: number }>;
  'peer-connected': CustomEvent<{ peer: string; remoteAddr: string; dialer: boolean }>;
  /** Which path ICE chose for a direct connection; `relayed` when either end is TURN. */
  'peer-path': CustomEvent<{ peer: string; local: string; remote: string; relayed: boolean }>;
  'peer-disconnected': CustomEvent<{ peer: string; reason: string }>;
  'peer-banned': CustomEvent<{ peer: string; reason: string }>;
  /**
   * The page's timers run late (the device or tab cannot keep up with the player): Shoal
   * pauses uploads, closes its direct connections and fetches what is due within 4 s over
   * HTTP (ShoalHls hands fragments to hls.js's own loader meanwhile), until its timers
   * have been on time for 10 s (`active: false`).
   */
  'load-shedding': CustomEvent<{ active: boolean; timerLateMs: number }>;
  /**
   * A record from the origin did not verify (once per swarm): segments still play over
   * HTTP but nothing is shared. `reason` says what to check (swarm id vs the publisher's
   * `--swarm`, or `publisherKey`).
   */
  'record-refused': CustomEvent<{ swarm: string; segment: number; reason: string }>;
  /** A dial of ours to another page failed. `kind`: `ice-failed` (offer and answer exchanged,
   *  ICE/DTLS never connected), `signalling-timeout` (the other page never answered),
   *  `refused` (no signalling stream: the relay or the page refused it, or the page is gone),
   *  `other`. */
  'dial-failed': CustomEvent<{ peer: string; kind: 'ice-failed' | 'signalling-timeout' | 'refused' | 'other'; error: string }>;
  'inbound-failed': CustomEvent<{ peer: string; error: string }>;
  'segment-loaded': CustomEvent<{ swarm: string; segment: number; bytes: number; fromPeers: number; fromHttp: number }>;
  'chunk-down': CustomEvent<{ swarm: string; peer: string; segment: number; bytes: number }>;
  'chunk-up': CustomEvent<{ swarm: string; peer: string; segment: number; bytes: number }>;
  gossip: CustomEvent<{ topic: string; from: string; data: Uint8Array }>;
  'gossip-rejected': CustomEvent<{ topic: string; from: string; reason: string }>;
  error: CustomEvent<{ message: string }>;
}

/** Errors thrown or rejected by Shoal carry one of these codes. */
export type ShoalErrorCode =
  | 'invalid-config' | 'invalid-argument' | 'invalid-peer' | 'invalid-use' | 'no-node' | 'no-window'
  | 'start-failed' | 'wasm-load-failed' | 'not-joined' | 'segment-unavailable' | 'integrity'
  | 'gossip' | 'message-too-large' | 'stopped' | 'destroyed' | 'stream-failed' | 'transfer-failed'
  | 'dial-failed' | 'invalid-address' | 'io' | 'closed' | 'internal'
  /** The browser has no WebRTC (`RTCPeerConnection`): play over HTTP alone. */
  | 'unsupported'
  /** A bounded queue between the page and the runtime is full: try again shortly. */
  | 'overloaded';

export interface ShoalError extends Error {
  code: ShoalErrorCode;
}

export function initShoal(wasm?: ShoalConfig['wasm']): Promise<void>;
export function swarmIdFromUrl(url: string, base?: string): string;

export class Shoal extends EventTarget {
  private constructor(token: symbol);
  static create(config?: ShoalConfig): Promise<Shoal>;
  readonly peerId: string;
  /** Connects directly to the browser peer at `addr` (its `stats().address`), in a swarm with us or not. */
  connect(addr: string): Promise<void>;
  join(swarm: string, options?: SwarmOptions): void;
  leave(swarm: string): void;
  /** `range`: bytes `[start, end)` of `url`, for a byte-range (`EXT-X-BYTERANGE`) segment. */
  setPlaylist(swarm: string, segments: { id: number; url: string; range?: [number, number] }[]): void;
  fetchSegment(swarm: string, id: number, url: string, deadline: number, range?: [number, number]): Promise<LoadedSegment>;
  cancelSegment(swarm: string, id: number): void;
  /** Resolves once the bytes match the segment's signed record (rejects with 'integrity' otherwise). */
  offerSegment(swarm: string, id: number, data: Uint8Array): Promise<void>;
  subscribe(topic: string, validate?: (data: Uint8Array, from: string) => boolean): Promise<void>;
  unsubscribe(topic: string): void;
  /** Resolves to the number of connected peers it was sent to (0: nobody subscribed yet). */
  publish(topic: string, data: Uint8Array | string): Promise<number>;
  setUploadEnabled(enabled: boolean): void;
  setP2pDownloadEnabled(enabled: boolean): void;
  stats(): ShoalStats;
  connectionReport(): Promise<ConnectionReport[]>;
  destroy(): Promise<void>;
  addEventListener<K extends keyof ShoalEventMap>(type: K, listener: (event: ShoalEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ShoalEventMap>(type: K, listener: (event: ShoalEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
