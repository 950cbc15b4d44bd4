/**
 * Network-level confirmation of multicast joins: listen to the IGMP membership reports that
 * targets' kernels send when they join or leave a group, independently of what the targets
 * themselves claim. Needs a raw socket (CAP_NET_RAW); without it the check is skipped and the
 * reason is returned. Linux sends no IGMP on loopback, so there it sees nothing.
 */
import dgram from 'node:dgram';
import { createRequire } from 'node:module';

export interface IgmpEvent {
  type: 'join' | 'leave';
  /** Group address. */
  group: string;
  /** Source address of the report (the host that joined or left). */
  source: string;
  /** IGMP version of the report. */
  version: 1 | 2 | 3;
  at: number;
}

interface RawSocket {
  on(ev: 'message', fn: (buf: Buffer, source: string) => void): void;
  on(ev: 'error', fn: (err: Error) => void): void;
  send(buf: Buffer, offset: number, length: number, address: string, after: (err: Error | null) => void): void;
  setOption(level: number, option: number, value: Buffer | number, length?: number): void;
  close(): void;
}
interface RawModule {
  createSocket(o: { protocol: number; addressFamily?: number; bufferSize?: number }): RawSocket;
  createChecksum(...bufs: Buffer[]): number;
  writeChecksum(buf: Buffer, offset: number, sum: number): Buffer;
  AddressFamily: { IPv4: number };
}

const IPPROTO_IP = 0;
const IP_MULTICAST_IF = 32;
const IP_MULTICAST_TTL = 33;

const IPPROTO_IGMP = 2;
/** IGMPv3 reports go to 224.0.0.22; IGMPv2 leaves to 224.0.0.2 (all routers). */
const REPORT_GROUPS = ['224.0.0.22', '224.0.0.2'];

/**
 * Parse one IPv4 packet carrying IGMP (as a raw socket delivers it, IP header included) into
 * join/leave events. Returns [] for anything else. Never throws.
 */
export function parseIgmpPacket(buf: Uint8Array, at = Date.now()): IgmpEvent[] {
  if (buf.length < 20 || buf[0]! >> 4 !== 4) return [];
  const ihl = (buf[0]! & 0x0f) * 4;
  if (ihl < 20 || buf.length < ihl + 8 || buf[9] !== IPPROTO_IGMP) return [];
  const total = Math.min(buf.length, (buf[2]! << 8) | buf[3]!);
  const source = ip(buf, 12);
  const p = ihl;
  const type = buf[p]!;
  const out: IgmpEvent[] = [];
  if (type === 0x12 || type === 0x16) out.push({ type: 'join', group: ip(buf, p + 4), source, version: type === 0x12 ? 1 : 2, at });
  else if (type === 0x17) out.push({ type: 'leave', group: ip(buf, p + 4), source, version: 2, at });
  else if (type === 0x22) {
    if (total < p + 8) return [];
    const records = (buf[p + 6]! << 8) | buf[p + 7]!;
    let q = p + 8;
    for (let r = 0; r < records; r++) {
      if (q + 8 > total) return out;
      const rtype = buf[q]!;
      const aux = buf[q + 1]! * 4;
      const nsrc = (buf[q + 2]! << 8) | buf[q + 3]!;
      const group = ip(buf, q + 4);
      // EXCLUDE {} (is-exclude / to-exclude) = join for any source; TO_INCLUDE {} = leave.
      if ((rtype === 2 || rtype === 4) && nsrc === 0) out.push({ type: 'join', group, source, version: 3, at });
      else if (rtype === 3 && nsrc === 0) out.push({ type: 'leave', group, source, version: 3, at });
      else if ((rtype === 1 || rtype === 5) && nsrc > 0) out.push({ type: 'join', group, source, version: 3, at });
      q += 8 + 4 * nsrc + aux;
    }
  }
  return out;
}

function ip(b: Uint8Array, o: number): string {
  return `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;
}

export interface IgmpMonitorOptions {
  /** Interface address to listen on (joins 224.0.0.22 and 224.0.0.2 there). */
  iface: string;
  onEvent: (e: IgmpEvent) => void;
}

export class IgmpMonitor {
  private closed = false;
  private constructor(
    private readonly raw: RawSocket,
    private readonly listeners: dgram.Socket[],
    private readonly mod: RawModule,
    private readonly iface: string,
  ) {}

  /**
   * Send an IGMPv3 general query on the interface, so that hosts that joined before this
   * monitor started report their memberships again (within `maxResponseMs`, in steps of 100 ms;
   * 0: at once, Linux answers within a clock tick). Resolves false when it could not be sent.
   */
  query(maxResponseMs = 500): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    const q = Buffer.alloc(12);
    q[0] = 0x11; // membership query
    q[1] = Math.max(0, Math.min(127, Math.round(maxResponseMs / 100))); // max resp code, 1/10 s
    // group 0.0.0.0 (general), S=0 QRV=2, QQIC=125 s, no sources
    q[8] = 0x02;
    q[9] = 125;
    this.mod.writeChecksum(q, 2, this.mod.createChecksum(q));
    try {
      // Multicast leaves by the named interface only, with TTL 1.
      const ifaddr = Buffer.from(this.iface.split('.').map(Number));
      this.raw.setOption(IPPROTO_IP, IP_MULTICAST_IF, ifaddr, 4);
      this.raw.setOption(IPPROTO_IP, IP_MULTICAST_TTL, 1);
    } catch {
      return Promise.resolve(false);
    }
    return new Promise((resolve) => {
      this.raw.send(q, 0, q.length, '224.0.0.1', (err) => resolve(!err));
    });
  }

  /** Start listening, or say why it cannot (no raw-socket addon, no CAP_NET_RAW). */
  static async start(o: IgmpMonitorOptions): Promise<{ monitor: IgmpMonitor; reason?: undefined } | { monitor: null; reason: string }> {
    let mod: RawModule;
    try {
      mod = createRequire(import.meta.url)('raw-socket') as RawModule;
    } catch (err) {
      return { monitor: null, reason: `raw-socket addon not loadable: ${(err as Error).message}` };
    }
    let raw: RawSocket;
    try {
      raw = mod.createSocket({ protocol: IPPROTO_IGMP, addressFamily: mod.AddressFamily.IPv4, bufferSize: 2048 });
    } catch (err) {
      return { monitor: null, reason: `no CAP_NET_RAW (raw IGMP socket: ${(err as Error).message}); network-level join check skipped` };
    }
    raw.on('error', () => {
      /* counted nowhere: a monitor error only loses confirmations */
    });
    raw.on('message', (buf) => {
      for (const e of parseIgmpPacket(buf)) o.onEvent(e);
    });
    // The kernel delivers reports only for groups this host is a member of.
    const listeners: dgram.Socket[] = [];
    try {
      for (const g of REPORT_GROUPS) {
        const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
        listeners.push(s);
        await new Promise<void>((resolve, reject) => {
          s.once('error', reject);
          s.bind(0, () => {
            s.off('error', reject);
            resolve();
          });
        });
        s.on('error', () => {});
        s.addMembership(g, o.iface);
      }
    } catch (err) {
      raw.close();
      for (const s of listeners) s.close();
      return { monitor: null, reason: `cannot join the IGMP report groups: ${(err as Error).message}` };
    }
    return { monitor: new IgmpMonitor(raw, listeners, mod, o.iface) };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.raw.close();
    } catch {
      /* already closed */
    }
    for (const s of this.listeners) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
  }
}
