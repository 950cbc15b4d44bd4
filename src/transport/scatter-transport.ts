/**
 * The sockets under the scatter protocol, behind a small interface (nats.js's Transport
 * pattern): the sender and receiver state machines never import node:dgram, so they run on
 * real UDP (loopback, network namespaces) and on an in-memory network with scripted loss,
 * duplication and reordering alike.
 */
import { ErrorCode, VmsError } from '../errors.js';

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
  /** Per interface address: most groups joined at once (for window checks). */
  readonly maxJoined = new Map<string, number>();

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
  route(from: MemSocket, data: Buffer, port: number, address: string): void {
    const multicast = isMulticast(address);
    for (const s of this.sockets) {
      if (s === from || s.port !== port) continue;
      if (multicast) {
        if (!s.joined || s.bindAddress !== address) continue;
      } else if (s.bindAddress !== address && s.bindAddress !== '0.0.0.0') continue;
      this.deliver(s, data, from.local);
    }
  }

  private deliver(s: MemSocket, data: Buffer, from: Peer): void {
    const i = this.impair;
    const mtu = i.mtuByIface?.[s.iface];
    if (mtu !== undefined && data.length + 28 > mtu) {
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
        this.delivered++;
        s.onMessage(copy, { ...from });
      };
      if (late) setTimeout(fire, i.reorderDelayMs ?? 5);
      else setImmediate(fire);
    }
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
  }

  send(parts: readonly Buffer[], port: number, address: string): void {
    if (this.closed) return;
    this.issued++;
    this.net.route(this, Buffer.concat(parts as Buffer[]), port, address);
    this.completed++;
  }

  close(): void {
    this.closed = true;
    this.net.remove(this);
  }
}

export function isMulticast(address: string): boolean {
  const first = Number(address.split('.')[0]);
  return first >= 224 && first <= 239;
}
