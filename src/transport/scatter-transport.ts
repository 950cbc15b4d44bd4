/**
 * The sockets under the scatter protocol, behind a small interface (nats.js's Transport
 * pattern): the sender and receiver state machines never import node:dgram, so they run on
 * real UDP (loopback, network namespaces) and on an in-memory network with scripted loss,
 * duplication and reordering alike.
 */
import { ErrorCode, VmsError } from '../errors.js';
import { MAX_UDP_PAYLOAD, maxSegmentsOf } from './udp-offload.js';

export interface Peer {
  address: string;
  port: number;
}

export interface ScatterSocket {
  /**
   * Send `parts` as one datagram. Never blocks and never throws for a send error (counted in
   * `sendErrors`). The parts must stay unmodified until `completed` has passed this send's
   * number (`issued` right after the call): the kernel may take them later.
   */
  send(parts: readonly Buffer[], port: number, address: string): void;
  /** Sends issued so far. */
  readonly issued: number;
  /**
   * Above 0, one send may carry several datagrams (UDP GSO, asked for with
   * OpenOptions.segmentBytes): up to `maxSegments` of them, all `segmentBytes` long but the last,
   * which may be shorter. 0: one datagram per send. It can drop to 0 while the socket is open (a
   * send failed with segmentation on), so check it before each batch.
   */
  readonly segmentBytes: number;
  readonly maxSegments: number;
  /** Why an offload asked for in OpenOptions is off, when it is. */
  readonly offloadNote: string | null;
  /**
   * The receive buffer the kernel granted, as it accounts it: Linux doubles the request (capped
   * by net.core.rmem_max when not privileged) for its per-packet bookkeeping, so a queue holds
   * about half of it in 8 KiB datagrams and nearly all of it in coalesced reads.
   */
  readonly recvBufferBytes: number;
  /** Sends whose buffers are no longer referenced. Sends complete in issue order. */
  readonly completed: number;
  readonly sendErrors: number;
  /** Datagrams read by polling instead of one read event each (real UDP group sockets, multicast-udp.ts). */
  readonly polledReads?: number;
  /**
   * Hand over, now, the datagrams the host has received but the socket has not read yet (they
   * wait for the next poll); returns how many. Absent or 0 where reads are not polled.
   */
  readQueued?(): number;
  readonly local: Peer;
  close(): void;
}

export interface OpenOptions {
  /** Address to bind: a unicast address of the interface, or a multicast group to receive it. */
  bindAddress: string;
  /** 0 = ephemeral. */
  port: number;
  /** Interface address for multicast (joins and sends). Required: multicast never uses the default route. */
  iface: string;
  reuseAddr?: boolean;
  /** SO_RCVBUF request (default 4 MiB). */
  recvBufferBytes?: number;
  /** Group to join on `iface` right after binding. */
  join?: string;
  /** Ask for sends that carry several datagrams of this length (see ScatterSocket.segmentBytes). */
  segmentBytes?: number;
  /**
   * Allow one read to return several datagrams from the source (UDP GRO): consecutive ones, all
   * as long as the first but the last. onMessage then gets them in one buffer, to split.
   */
  coalesce?: boolean;
  onMessage: (msg: Buffer, from: Peer) => void;
}

export interface ScatterNetwork {
  open(o: OpenOptions): Promise<ScatterSocket>;
}

export const DEFAULT_RECV_BUFFER = 4 * 1024 * 1024;

/** Real UDP: multicastUdpNetwork() in multicast-udp.ts. */

/** Impairments applied by the in-memory network to every delivery (per receiving socket). */
export interface Impairment {
  loss?: number;
  duplicate?: number;
  /** Fraction of datagrams delayed by `reorderDelayMs`, so later ones overtake them. */
  reorder?: number;
  reorderDelayMs?: number;
  /**
   * Per receiving interface address: its path's MTU. Datagrams that do not fit (with IP and UDP
   * headers) are dropped, as a bridge drops frames larger than a port's MTU.
   */
  mtuByIface?: Record<string, number>;
  /**
   * Per receiving interface address: the loss rate of datagrams over 1472 bytes (the scatter's
   * DATA at MTU 9000; its control datagrams are smaller), as for a receiver that keeps losing
   * data to a full socket buffer while its control messages get through.
   */
  bulkLossByIface?: Record<string, number>;
  /**
   * Whether sockets get the segmentation and coalescing they ask for, as on Linux (default
   * true). A segmented send counts as one datagram for every impairment, as netem drops,
   * duplicates or delays a GSO packet whole; it is split for the receivers that did not ask to
   * coalesce.
   */
  offload?: boolean;
  /**
   * Per receiving interface address: from `afterMs` after its first delivery, hold everything
   * sent to it for `forMs` and hand it over then, as to a receiver descheduled on a busy host.
   * Each socket's buffer keeps what arrives meanwhile up to its recvBufferBytes, charged as
   * Linux charges it (bufferCharge), and drops the rest (`overflowed`).
   */
  stallByIface?: Record<string, { afterMs: number; forMs: number }>;
  /** Deterministic PRNG seed. */
  seed?: number;
}

/**
 * An in-memory datagram network for protocol tests without sockets. Delivery is asynchronous
 * (setImmediate, or a timer for reordered datagrams), copies the bytes, and honours bind
 * addresses and multicast joins like the kernel does for sockets bound to a group address.
 */
export class MemoryNetwork implements ScatterNetwork {
  private readonly sockets = new Set<MemSocket>();
  private nextPort = 40000;
  private rng: number;
  delivered = 0;
  dropped = 0;
  /** Segmented sends handed to a socket whole (it asked to coalesce), counted in `delivered` once. */
  coalesced = 0;
  /** Deliveries dropped because a stalled socket's buffer was full (counted in `dropped` too). */
  overflowed = 0;
  /** Per interface address: most groups joined at once (for window checks). */
  readonly maxJoined = new Map<string, number>();
  /** Per interface address with a stall: when its first delivery came. */
  private readonly firstDelivery = new Map<string, number>();

  constructor(private readonly impair: Impairment = {}) {
    this.rng = (impair.seed ?? 12345) >>> 0 || 1;
  }

  open(o: OpenOptions): Promise<ScatterSocket> {
    const port = o.port === 0 ? this.nextPort++ : o.port;
    if (!o.reuseAddr) {
      for (const s of this.sockets) {
        if (s.bindAddress === o.bindAddress && s.port === port) {
          return Promise.reject(new VmsError(ErrorCode.SCATTER, `address in use: ${o.bindAddress}:${port}`));
        }
      }
    }
    const s = new MemSocket(this, o, port);
    this.sockets.add(s);
    if (s.joined) {
      let n = 0;
      for (const x of this.sockets) if (x.joined && x.iface === s.iface) n++;
      this.maxJoined.set(s.iface, Math.max(n, this.maxJoined.get(s.iface) ?? 0));
    }
    return Promise.resolve(s);
  }

  /** @internal */
  remove(s: MemSocket): void {
    this.sockets.delete(s);
  }

  /** @internal */
  route(from: MemSocket, data: Buffer, port: number, address: string, segment: number): void {
    const multicast = isMulticast(address);
    for (const s of this.sockets) {
      if (s === from || s.port !== port) continue;
      if (multicast) {
        if (!s.joined || s.bindAddress !== address) continue;
      } else if (s.bindAddress !== address && s.bindAddress !== '0.0.0.0') continue;
      this.deliver(s, data, from.local, segment);
    }
  }

  /** @internal */
  get offload(): boolean {
    return this.impair.offload ?? true;
  }

  /** `segment` > 0: `data` is a segmented send of datagrams that long (the last may be shorter). */
  private deliver(s: MemSocket, data: Buffer, from: Peer, segment: number): void {
    const i = this.impair;
    const mtu = i.mtuByIface?.[s.iface];
    if (mtu !== undefined && (segment || data.length) + 28 > mtu) {
      this.dropped++;
      return;
    }
    const bulkLoss = i.bulkLossByIface?.[s.iface];
    if (bulkLoss && data.length > 1472 && this.rand() < bulkLoss) {
      this.dropped++;
      return;
    }
    if (i.loss && this.rand() < i.loss) {
      this.dropped++;
      return;
    }
    const copies = i.duplicate && this.rand() < i.duplicate ? 2 : 1;
    for (let c = 0; c < copies; c++) {
      const copy = Buffer.from(data);
      const late = i.reorder && this.rand() < i.reorder;
      const fire = (): void => {
        if (s.closed) return;
        if (segment === 0 || s.coalesce) {
          this.delivered++;
          if (segment) this.coalesced++;
          s.onMessage(copy, { ...from });
          return;
        }
        for (let off = 0; off < copy.length && !s.closed; off += segment) {
          this.delivered++;
          s.onMessage(copy.subarray(off, Math.min(off + segment, copy.length)), { ...from });
        }
      };
      const held = this.stalledFor(s.iface);
      if (held > 0) {
        const charge = segment === 0 || s.coalesce ? bufferCharge(copy.length) : segmentsCharge(copy.length, segment);
        if (s.heldBytes + charge > s.recvBufferBytes) {
          this.dropped++;
          this.overflowed++;
          continue;
        }
        s.heldBytes += charge;
        setTimeout(() => {
          s.heldBytes -= charge;
          fire();
        }, held + (late ? (i.reorderDelayMs ?? 5) : 0));
      } else if (late) setTimeout(fire, i.reorderDelayMs ?? 5);
      else setImmediate(fire);
    }
  }

  /** Ms a delivery to `iface` now is held by its stall (0: none). */
  private stalledFor(iface: string): number {
    const stall = this.impair.stallByIface?.[iface];
    if (!stall) return 0;
    const now = performance.now();
    const first = this.firstDelivery.get(iface) ?? now;
    this.firstDelivery.set(iface, first);
    const from = first + stall.afterMs;
    return now >= from && now < from + stall.forMs ? from + stall.forMs - now : 0;
  }

  private rand(): number {
    // xorshift32
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return this.rng / 0x100000000;
  }
}

class MemSocket implements ScatterSocket {
  issued = 0;
  completed = 0;
  sendErrors = 0;
  closed = false;
  readonly bindAddress: string;
  readonly iface: string;
  readonly joined: boolean;
  readonly local: Peer;
  readonly onMessage: (msg: Buffer, from: Peer) => void;
  readonly segmentBytes: number;
  readonly maxSegments: number;
  readonly coalesce: boolean;
  readonly offloadNote: string | null;
  readonly recvBufferBytes: number;
  /** Buffer charge of what a stall holds for this socket. */
  heldBytes = 0;

  constructor(
    private readonly net: MemoryNetwork,
    o: OpenOptions,
    readonly port: number,
  ) {
    this.bindAddress = o.bindAddress;
    this.iface = o.iface;
    this.joined = o.join !== undefined && o.join === o.bindAddress;
    this.onMessage = o.onMessage;
    this.local = { address: isMulticast(o.bindAddress) ? o.iface : o.bindAddress, port };
    const asked = (o.segmentBytes ?? 0) > 0 || o.coalesce === true;
    this.segmentBytes = net.offload ? (o.segmentBytes ?? 0) : 0;
    this.maxSegments = maxSegmentsOf(this.segmentBytes);
    this.coalesce = net.offload && o.coalesce === true;
    this.offloadNote = asked && !net.offload ? 'offloads are off in this in-memory network' : null;
    this.recvBufferBytes = 2 * (o.recvBufferBytes ?? DEFAULT_RECV_BUFFER);
  }

  send(parts: readonly Buffer[], port: number, address: string): void {
    if (this.closed) return;
    this.issued++;
    const data = Buffer.concat(parts as Buffer[]);
    const segmented = this.segmentBytes > 0 && data.length > this.segmentBytes;
    // What the kernel refuses (EMSGSIZE, EINVAL): too long, too many segments.
    if (data.length > MAX_UDP_PAYLOAD || (segmented && Math.ceil(data.length / this.segmentBytes) > this.maxSegments)) this.sendErrors++;
    else this.net.route(this, data, port, address, segmented ? this.segmentBytes : 0);
    this.completed++;
  }

  close(): void {
    this.closed = true;
    this.net.remove(this);
  }
}

/**
 * What a received datagram of `length` bytes costs a socket's receive buffer on Linux (its
 * skb's truesize): the data rounded up to a power of two with the skb's own overhead. Fits
 * what loopback measured with an 8 MiB buffer: 504 datagrams of 8,216 bytes, 3,640 of 1,472,
 * 137 of 60,000 (this gives 504, 3,641 and 127).
 */
export function bufferCharge(length: number): number {
  return 2 ** Math.ceil(Math.log2(length + 320)) + 256;
}

/** bufferCharge of a segmented send of `length` bytes read one segment at a time. */
function segmentsCharge(length: number, segment: number): number {
  const whole = Math.floor(length / segment);
  const rest = length - whole * segment;
  return whole * bufferCharge(segment) + (rest > 0 ? bufferCharge(rest) : 0);
}

export function isMulticast(address: string): boolean {
  const first = Number(address.split('.')[0]);
  return first >= 224 && first <= 239;
}
