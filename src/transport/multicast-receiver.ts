/**
 * The target side of the scatter: joins its groups a window ahead of their turn, confirms each
 * join to the source, stores what arrives in its ContentStore, NACKs the gaps it sees (with
 * back-off, after a reordering allowance), answers polls, leaves a group when it is done, and
 * reports what it holds.
 *
 * One UDP socket per joined group, bound to the group's address (so a socket only ever sees its
 * group, even with several receivers in one process), plus one unicast control socket that also
 * receives unicast repairs.
 */
import { ErrorCode, VmsError } from '../errors.js';
import type { ContentStore } from '../memory/content-store.js';
import { PAGE_SIZE } from '../memory/page.js';
import {
  ALL_GROUPS,
  AUTH_TRAILER_BYTES,
  DatagramAuth,
  Flag,
  HEADER_BYTES,
  Kind,
  leadingDatagramLength,
  MAX_CONTROL_BYTES,
  SENDER_ORIGIN,
  dataPageId,
  dataPageOffset,
  decodeHeader,
  decodeU32Body,
  encodeU32Body,
  encodeControl,
  encodeJoinBody,
  encodeReportBody,
  encodeSeqList,
  encodeSeqSet,
  encodeStatsBody,
  encodeStatusBody,
  fragmentSpan,
  newHeader,
  parseAuthKey,
  type DatagramLayout,
  type Header,
  type ReceiverCounters,
} from '../wire/datagram.js';
import { bit, layoutOf, SCATTER_DEFAULTS, type ScatterSession, type SessionGroup } from './scatter-session.js';
import { multicastUdpNetwork } from './multicast-udp.js';
import { bufferCharge, DEFAULT_RECV_BUFFER, type Peer, type ScatterNetwork, type ScatterSocket } from './scatter-transport.js';

/**
 * The part of what a socket buffer holds (by bufferCharge) that PROGRESS offers the source: the
 * charge is fitted to loopback measurements within 1-7% (scatter-transport.ts), and coalesced
 * reads vary in length, so one can be charged more than the average of those seen so far. With
 * 0.9, `bench scatter` (2026-12-05) saw 0.03-0.15% repairs in 2 of 3 rounds and no faster
 * rounds; 0.8 offers the 70% of the grant for full coalesced reads that gave none.
 */
const OFFER_MARGIN = 0.8;

export interface ScatterReceiverOptions {
  session: ScatterSession;
  /** This target's index in session.targets. */
  target: number;
  store: ContentStore;
  /** Interface address: multicast joins and the control socket (default 127.0.0.1). */
  iface?: string;
  network?: ScatterNetwork;
  /** SO_RCVBUF per group socket (default 4 MiB). */
  recvBufferBytes?: number;
  /** How often gaps are scanned for NACKs (default 10 ms). */
  nackIntervalMs?: number;
  /** A gap is NACKed only after this long, in case the datagram was merely reordered (default 15 ms). */
  reorderMs?: number;
  /** First NACK back-off; doubles per attempt up to 16x (default 40 ms). */
  nackBackoffMs?: number;
  /**
   * Resend an unacknowledged join confirmation after this long (default 50 ms). Until the sender
   * has answered once, on every timer tick (nackIntervalMs) instead: receivers start before their
   * sender, and its first group waits for every member's confirmation.
   */
  joinRetryMs?: number;
  /** Give up when nothing has come from the source for this long (default 30 s). */
  idleTimeoutMs?: number;
  /**
   * Let a group socket's read return several datagrams of a segmented send (UDP GRO,
   * udp-offload.ts), split here (default true). Off, or where the host lacks it, the kernel
   * splits them, one read each.
   */
  udpOffload?: boolean;
  /**
   * Tell the source how far the first pass of a group has been read (PROGRESS) on its first
   * datagram and then every this many, or every quarter of the socket buffer if that is fewer,
   * so that it never runs further ahead of this receiver than its socket buffer holds (default
   * 32, 256 KiB at MTU 9000; 0: never, as receivers before flow control).
   */
  progressEvery?: number;
}

export interface ReceiverResult {
  target: number;
  /** 'bye': the source ended the job; 'timeout': the source went silent; 'closed': close() was called. */
  ended: 'bye' | 'timeout' | 'closed';
  /** Content ids of this target's groups that the store holds, ascending. */
  held: Uint32Array;
  counters: ReceiverCounters;
  /** Why reads came one datagram each although coalesced reads (UDP GRO) were asked for; null otherwise. */
  coalescingOff: string | null;
}

interface GroupRx {
  g: SessionGroup;
  capacity: number;
  bits: Uint8Array;
  received: number;
  /** One past the highest sequence seen. */
  highest: number;
  /** Lowest sequence not received. */
  cursor: number;
  /** Datagrams in the group's send list; -1 until the first poll says. */
  total: number;
  /** When the last DATA datagram of this group was processed. */
  lastDataAt: number;
  /** Send the next PROGRESS once `highest` reaches this. */
  nextProgress: number;
  nextNackAt: Float64Array;
  attempts: Uint8Array;
  partial: Map<number, { buf: Buffer; mask: number }>;
  /** In the window and its address joined: confirmed to the source. */
  joined: boolean;
  complete: boolean;
  doneBySender: boolean;
}

/** One multicast membership: a socket bound to the address, shared by the groups sent on it. */
interface Membership {
  sock: ScatterSocket | null;
  opening: boolean;
}

export class ScatterReceiver {
  readonly target: number;
  readonly counters: ReceiverCounters = {
    datagrams: 0,
    bytes: 0,
    pages: 0,
    duplicates: 0,
    repairs: 0,
    malformed: 0,
    foreign: 0,
    spoofed: 0,
    nacksSent: 0,
    nackedSeqs: 0,
    joins: 0,
    leaves: 0,
    held: 0,
    firstDataAt: 0,
    completeAt: 0,
  };
  /** Resolves when the job ends for this target (never rejects). */
  readonly done: Promise<ReceiverResult>;

  private readonly session: ScatterSession;
  private readonly layout: DatagramLayout;
  private readonly auth: DatagramAuth | null;
  private readonly store: ContentStore;
  private readonly iface: string;
  private readonly net: ScatterNetwork;
  private readonly o: ScatterReceiverOptions;
  private ctl: ScatterSocket | null = null;
  private readonly mine: GroupRx[] = [];
  private readonly byId = new Map<number, GroupRx>();
  private readonly hdr: Header = newHeader();
  private readonly memberships = new Map<string, Membership>();
  /** Reused list of sequence numbers to NACK. */
  private scratch = new Int32Array(1024);
  private joinVersion = 0;
  private joinAcked = -1;
  private lastJoinSentAt = 0;
  private timer: NodeJS.Timeout | null = null;
  private lastHeardAt = performance.now();
  private ended = false;
  private readonly progressEvery: number;
  /** Bytes of the group sockets' reads so far, and what the kernel charged their buffers for them (bufferCharge). */
  private readBytes = 0;
  private readCharge = 0;
  private coalescingOff: string | null = null;
  private resolveDone!: (r: ReceiverResult) => void;

  private constructor(o: ScatterReceiverOptions) {
    this.o = o;
    this.session = o.session;
    this.target = o.target;
    if (!Number.isInteger(o.target) || o.target < 0 || o.target >= o.session.targets.length) {
      throw new VmsError(ErrorCode.CONFIG, `target index ${o.target} is not in the session's ${o.session.targets.length} targets`);
    }
    this.layout = layoutOf(o.session);
    this.progressEvery = o.progressEvery ?? 32;
    const key = o.session.key !== undefined ? parseAuthKey(o.session.key) : null;
    if (o.session.key !== undefined && !key) throw new VmsError(ErrorCode.CONFIG, 'scatter session key must be 16 or 32 bytes in hex');
    this.auth = key ? new DatagramAuth(key, o.target) : null;
    this.store = o.store;
    this.iface = o.iface ?? SCATTER_DEFAULTS.iface;
    // Group sockets are connected to the sender (the kernel drops datagrams from anyone else) and
    // read by polling while data flows (multicast-udp.ts).
    this.net = o.network ?? multicastUdpNetwork({ source: o.session.sender });
    const byId = new Map(o.session.groups.map((g) => [g.id, g]));
    for (const gid of o.session.order) {
      const g = byId.get(gid);
      if (!g || !g.targets.includes(o.target)) continue;
      const n = g.contents.length;
      const capacity = this.layout.fragmentsPerPage > 1 ? n * this.layout.fragmentsPerPage : Math.ceil(n / this.layout.pagesPerDatagram);
      const rx: GroupRx = {
        g,
        capacity,
        bits: new Uint8Array(Math.ceil(capacity / 8)),
        received: 0,
        highest: 0,
        cursor: 0,
        total: -1,
        lastDataAt: 0,
        nextProgress: 1,
        nextNackAt: new Float64Array(capacity).fill(Infinity),
        attempts: new Uint8Array(capacity),
        partial: new Map(),
        joined: false,
        complete: false,
        doneBySender: false,
      };
      this.mine.push(rx);
      this.byId.set(gid, rx);
    }
    // Room for every content coming, in one allocation before the first datagram (ContentStore).
    let coming = 0;
    for (const rx of this.mine) for (const id of rx.g.contents) if (!this.store.has(id)) coming++;
    this.store.reserve(coming);
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Open the control socket, join the first groups of the window, and start confirming. */
  static async open(o: ScatterReceiverOptions): Promise<ScatterReceiver> {
    const r = new ScatterReceiver(o);
    r.ctl = await r.net.open({
      bindAddress: r.iface,
      port: 0,
      iface: r.iface,
      recvBufferBytes: o.recvBufferBytes ?? DEFAULT_RECV_BUFFER,
      onMessage: (msg, from) => r.onDatagram(msg, from),
    });
    await r.refreshMembership();
    r.schedule();
    return r;
  }

  /** Groups this target belongs to, in send order. */
  get groups(): number[] {
    return this.mine.map((rx) => rx.g.id);
  }

  /** Content ids of this target's groups held in the store, ascending. */
  heldIds(): Uint32Array {
    const out: number[] = [];
    for (const rx of this.mine) for (const id of rx.g.contents) if (this.store.has(id)) out.push(id);
    out.sort((a, b) => a - b);
    return Uint32Array.from(out);
  }

  close(): void {
    this.finish('closed');
  }

  // -------------------------------------------------------------------------------------------
  // Membership

  /**
   * Be a member of the addresses of the first `window` unfinished groups and of no other, and
   * confirm to the source. Groups that share an address (a planner channel) share one socket,
   * so a target that needs consecutive groups on a channel stays joined between them.
   */
  private async refreshMembership(): Promise<void> {
    if (this.ended) return;
    const want = new Set<string>();
    let active = 0;
    for (const rx of this.mine) {
      if (rx.complete || rx.doneBySender) continue;
      if (active++ >= this.session.window) break;
      want.add(rx.g.address);
    }
    let changed = false;
    for (const [address, m] of this.memberships) {
      if (want.has(address) || !m.sock) continue;
      m.sock.close();
      this.memberships.delete(address);
      this.counters.leaves++;
      changed = true;
    }
    const opening: Promise<void>[] = [];
    for (const address of want) {
      if (this.memberships.has(address)) continue;
      const m: Membership = { sock: null, opening: true };
      this.memberships.set(address, m);
      opening.push(
        this.net
          .open({
            bindAddress: address,
            port: this.session.dataPort,
            iface: this.iface,
            reuseAddr: true,
            join: address,
            recvBufferBytes: this.o.recvBufferBytes ?? DEFAULT_RECV_BUFFER,
            coalesce: this.o.udpOffload ?? true,
            onMessage: (msg, from) => this.onGroupRead(msg, from),
          })
          .then((sock) => {
            m.opening = false;
            m.sock = sock;
            this.coalescingOff ??= sock.offloadNote;
            this.counters.joins++;
            changed = true;
            if (this.ended) this.closeMembership(address);
          }),
      );
    }
    if (opening.length > 0) await Promise.all(opening);
    if (this.ended) return;
    // A group counts as joined when it is in the window and its address is joined.
    active = 0;
    for (const rx of this.mine) {
      const inWindow = !(rx.complete || rx.doneBySender) && active++ < this.session.window;
      const joined = inWindow && this.memberships.get(rx.g.address)?.sock != null;
      if (joined !== rx.joined) {
        rx.joined = joined;
        changed = true;
      }
    }
    if (changed || this.joinAcked < 0) {
      this.joinVersion++;
      this.sendJoin();
    }
  }

  private closeMembership(address: string): void {
    const m = this.memberships.get(address);
    if (!m?.sock) return;
    m.sock.close();
    m.sock = null;
    this.memberships.delete(address);
    this.counters.leaves++;
  }

  private sendJoin(): void {
    const joined = this.mine.filter((rx) => rx.joined).map((rx) => rx.g.id);
    this.sendControl(Kind.JOIN, ALL_GROUPS, this.joinVersion, encodeJoinBody(joined));
    this.lastJoinSentAt = performance.now();
  }

  // -------------------------------------------------------------------------------------------
  // Timers: join retries, NACK scan, idle limit

  private schedule(): void {
    if (this.ended) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.onTimer();
      this.schedule();
    }, this.o.nackIntervalMs ?? 10);
  }

  private onTimer(): void {
    const now = performance.now();
    if (now - this.lastHeardAt > (this.o.idleTimeoutMs ?? 30_000)) {
      this.finish('timeout');
      return;
    }
    // Until the sender has answered once, on every tick (see joinRetryMs).
    if (this.joinAcked < this.joinVersion && (this.joinAcked < 0 || now - this.lastJoinSentAt >= (this.o.joinRetryMs ?? 50))) this.sendJoin();
    // Scan for gaps in the check phase, after this loop turn's I/O: timers run before pending
    // datagrams are read, so a busy receiver would otherwise NACK what is merely queued.
    setImmediate(() => {
      if (this.ended) return;
      const t = performance.now();
      for (const rx of this.mine) {
        if (rx.complete || rx.doneBySender || (rx.highest === 0 && rx.total < 0)) continue;
        this.sendNacks(rx, t, false);
      }
    });
  }

  /**
   * NACK missing datagrams of a group. Mid-stream (`all` false): only gaps older than the
   * reordering allowance whose back-off has expired. In answer to a poll (`all`): every gap
   * past its allowance, back-off ignored. The tail (beyond the highest sequence seen, up to the
   * length a poll announced) counts only once the group's socket has been quiet for the
   * allowance: until then its datagrams may still be queued unread.
   */
  private sendNacks(rx: GroupRx, now: number, all: boolean): void {
    const bits = rx.bits;
    // Advance the cursor over the received prefix a byte at a time.
    let c = rx.cursor;
    while (c < rx.capacity && (c & 7) !== 0 && bit(bits, c)) c++;
    while (c + 8 <= rx.capacity && bits[c >>> 3] === 0xff) c += 8;
    while (c < rx.capacity && bit(bits, c)) c++;
    rx.cursor = c;
    const quiet = now - rx.lastDataAt >= (this.o.reorderMs ?? 15);
    const tailFrom = rx.highest;
    const limit = rx.total >= 0 && quiet ? rx.total : rx.highest;
    if (c >= limit) return;
    // Collect the NACKable gaps, skipping fully received bytes. A gap is NACKable once its
    // reordering allowance has passed (nextNackAt starts there); a poll answer ignores the
    // back-off of gaps already NACKed.
    let n = 0;
    let list = this.scratch;
    for (let byte = c >>> 3; byte << 3 < limit; byte++) {
      const b = bits[byte]!;
      if (b === 0xff) continue;
      for (let k = 0; k < 8; k++) {
        const i = (byte << 3) | k;
        if (i < c || i >= limit || (b & (1 << k)) !== 0) continue;
        const ok = i >= tailFrom ? all || rx.attempts[i] === 0 || rx.nextNackAt[i]! <= now : all ? rx.attempts[i]! > 0 || rx.nextNackAt[i]! <= now : rx.nextNackAt[i]! <= now;
        if (!ok) continue;
        if (n === list.length) {
          const grown = new Int32Array(list.length * 2);
          grown.set(list);
          list = this.scratch = grown;
        }
        list[n++] = i;
      }
    }
    if (n === 0) return;
    const budget = MAX_CONTROL_BYTES - HEADER_BYTES - (this.auth ? AUTH_TRAILER_BYTES : 0);
    const backoff = this.o.nackBackoffMs ?? 40;
    for (let k = 0; k < n; k++) {
      const i = list[k]!;
      const a = rx.attempts[i]!;
      rx.nextNackAt[i] = now + backoff * (1 << Math.min(a, 4));
      if (a < 255) rx.attempts[i] = a + 1;
    }
    for (let from = 0; from < n; ) {
      const set = encodeSeqList(list, from, n, budget);
      this.sendControl(Kind.NACK, rx.g.id, 0, set.bytes);
      this.counters.nacksSent++;
      this.counters.nackedSeqs += set.next - from;
      from = set.next;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Input

  /** A read from a group socket: one datagram, or several a coalesced read returned at once. */
  private onGroupRead(msg: Buffer, from: Peer): void {
    this.readBytes += msg.length;
    this.readCharge += bufferCharge(msg.length);
    const first = leadingDatagramLength(msg);
    if (first === msg.length) {
      this.onDatagram(msg, from);
      return;
    }
    for (let off = 0; off < msg.length; off += first) this.onDatagram(msg.subarray(off, Math.min(off + first, msg.length)), from);
  }

  private onDatagram(msg: Buffer, from: Peer): void {
    if (this.ended) return;
    const h = decodeHeader(msg, this.hdr);
    if (!h) {
      this.counters.malformed++;
      return;
    }
    if (h.job !== this.session.job) {
      this.counters.foreign++;
      return;
    }
    if (this.auth) {
      if ((h.flags & Flag.AUTH) === 0 || !this.auth.verify(msg, SENDER_ORIGIN)) {
        this.counters.spoofed++;
        return;
      }
    } else if ((h.flags & Flag.AUTH) !== 0) {
      this.counters.foreign++;
      return;
    } else if (from.address !== this.session.sender.address) {
      // Without authentication the source address is all there is to check.
      this.counters.spoofed++;
      return;
    }
    this.lastHeardAt = performance.now();
    if (h.kind === Kind.DATA) {
      this.onData(msg, h);
      return;
    }
    if (h.id !== this.target) {
      this.counters.foreign++;
      return;
    }
    switch (h.kind) {
      case Kind.JOIN_ACK:
        if (h.seq > this.joinAcked && h.seq <= this.joinVersion) this.joinAcked = h.seq;
        return;
      case Kind.POLL: {
        const rx = this.byId.get(h.group);
        const total = decodeU32Body(msg, h);
        if (!rx || total === null || total > rx.capacity) {
          this.counters.malformed++;
          return;
        }
        const pollSeq = h.seq; // `h` is reused by the reads below
        // What the host received but the group socket has not read yet (reads are polled) is
        // not missing: read it before answering.
        this.memberships.get(rx.g.address)?.sock?.readQueued?.();
        rx.total = total;
        this.checkComplete(rx);
        // Answer with every gap past the reordering allowance, ignoring back-off.
        if (!rx.complete) this.sendNacks(rx, performance.now(), true);
        const missing = rx.complete ? 0 : rx.total - rx.received;
        this.sendControl(Kind.STATUS, rx.g.id, pollSeq, encodeStatusBody(missing, rx.received));
        return;
      }
      case Kind.DONE: {
        const rx = this.byId.get(h.group);
        if (!rx) {
          this.counters.foreign++;
          return;
        }
        if (!rx.doneBySender) {
          rx.doneBySender = true;
          this.afterGroupFinished();
        } else this.sendJoin();
        return;
      }
      case Kind.REPORT_REQ:
        this.sendReport(h.group);
        return;
      case Kind.BYE:
        this.sendControl(Kind.BYE, ALL_GROUPS, 0);
        this.finish('bye');
        return;
      default:
        this.counters.foreign++;
    }
  }

  private onData(msg: Buffer, h: Header): void {
    const rx = this.byId.get(h.group);
    const l = this.layout;
    if (!rx) {
      this.counters.foreign++;
      return;
    }
    if (h.fragCount !== l.fragmentsPerPage || h.pages > l.pagesPerDatagram || h.seq >= rx.capacity) {
      this.counters.malformed++;
      return;
    }
    const c = this.counters;
    c.datagrams++;
    c.bytes += msg.length;
    if (c.firstDataAt === 0) c.firstDataAt = Date.now();
    if (h.flags & Flag.REPAIR) c.repairs++;
    const seq = h.seq;
    if (bit(rx.bits, seq)) {
      c.duplicates++;
      return;
    }
    const contents = rx.g.contents;
    if (l.fragmentsPerPage > 1) {
      const id = h.id;
      if (!has(contents, id)) {
        c.malformed++;
        return;
      }
      if (!this.store.has(id)) {
        let p = rx.partial.get(id);
        if (!p) {
          p = { buf: Buffer.allocUnsafe(PAGE_SIZE), mask: 0 };
          rx.partial.set(id, p);
        }
        const span = fragmentSpan(h.fragIndex, h.fragCount);
        msg.copy(p.buf, span.offset, h.bodyOffset, h.bodyOffset + span.length);
        p.mask |= 1 << h.fragIndex;
        if (p.mask === (1 << h.fragCount) - 1) {
          this.store.put(id, p.buf, 0);
          rx.partial.delete(id);
          c.pages++;
        }
      }
    } else {
      for (let i = 0; i < h.pages; i++) {
        if (!has(contents, dataPageId(msg, h, i))) {
          c.malformed++;
          return;
        }
      }
      for (let i = 0; i < h.pages; i++) {
        if (this.store.put(dataPageId(msg, h, i), msg, dataPageOffset(h, i))) c.pages++;
      }
    }
    rx.bits[seq >>> 3]! |= 1 << (seq & 7);
    rx.received++;
    rx.lastDataAt = performance.now();
    if (seq >= rx.highest) {
      // Datagrams skipped over become gaps, NACKable once the reordering allowance has passed.
      if (seq > rx.highest) {
        const at = performance.now() + (this.o.reorderMs ?? 15);
        for (let i = rx.highest; i < seq; i++) if (!bit(rx.bits, i) && rx.nextNackAt[i] === Infinity) rx.nextNackAt[i] = at;
      }
      rx.highest = seq + 1;
      if (rx.highest >= rx.nextProgress && this.progressEvery > 0 && !rx.complete) this.sendProgress(rx);
    }
    if (rx.total >= 0 && rx.received >= rx.total) this.checkComplete(rx);
  }

  /**
   * Tell the source how far the group's first pass has been read, and how many bytes of it the
   * group's socket buffer holds. The kernel charges each read's buffer, not its length
   * (bufferCharge), so the offer is the grant times the bytes per charged byte of the reads seen
   * so far, with a margin (OFFER_MARGIN): 39% of the grant for 8,216-byte datagrams, 51% for
   * 1,472-byte ones, 70% for 7 of 8,220 bytes read at once (UDP GRO).
   */
  private sendProgress(rx: GroupRx): void {
    const granted = this.memberships.get(rx.g.address)?.sock?.recvBufferBytes ?? 0;
    const held = this.readCharge > 0 ? this.readBytes / this.readCharge : 0;
    const offer = Math.floor(granted * held * OFFER_MARGIN);
    this.sendControl(Kind.PROGRESS, rx.g.id, rx.highest, encodeU32Body(offer));
    // Often enough that the source hears of progress several times per window.
    const quarter = offer > 0 ? Math.floor(offer / (4 * this.layout.maxDatagramBytes)) : Infinity;
    rx.nextProgress = rx.highest + Math.max(1, Math.min(this.progressEvery, quarter));
  }

  private checkComplete(rx: GroupRx): void {
    if (rx.complete || rx.total < 0) return;
    if (rx.received < rx.total) return;
    rx.complete = true;
    rx.partial.clear();
    this.afterGroupFinished();
  }

  private afterGroupFinished(): void {
    if (this.counters.completeAt === 0 && this.mine.every((rx) => rx.complete || rx.doneBySender)) this.counters.completeAt = Date.now();
    void this.refreshMembership();
  }

  private sendReport(group: number): void {
    this.counters.held = 0;
    for (const rx of this.mine) for (const id of rx.g.contents) if (this.store.has(id)) this.counters.held++;
    this.sendControl(Kind.STATS, ALL_GROUPS, 0, encodeStatsBody(this.counters));
    const budget = MAX_CONTROL_BYTES - HEADER_BYTES - (this.auth ? AUTH_TRAILER_BYTES : 0) - 8;
    const window = (budget - 9) * 8;
    for (const rx of this.mine) {
      if (group !== ALL_GROUPS && rx.g.id !== group) continue;
      const contents = rx.g.contents;
      const n = contents.length;
      const chunks = Math.max(1, Math.ceil(n / window));
      const held = (pos: number): boolean => this.store.has(contents[pos]!);
      for (let k = 0; k < chunks; k++) {
        const base = k * window;
        const set = encodeSeqSet(held, base, Math.min(n, base + window), budget);
        this.sendControl(Kind.REPORT, rx.g.id, k, encodeReportBody(chunks, n, set.bytes));
      }
    }
  }

  private sendControl(kind: Kind, group: number, seq: number, body?: Buffer): void {
    if (!this.ctl) return;
    const b = encodeControl(kind, this.session.job, group, seq, this.target, body, this.auth ?? undefined);
    this.ctl.send([b], this.session.sender.port, this.session.sender.address);
  }

  private finish(how: ReceiverResult['ended']): void {
    if (this.ended) return;
    this.ended = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const address of [...this.memberships.keys()]) this.closeMembership(address);
    const ctl = this.ctl;
    this.ctl = null;
    // Let the last control datagram (BYE ack) leave before the socket closes.
    if (ctl) setTimeout(() => ctl.close(), 20);
    this.counters.held = 0;
    for (const rx of this.mine) for (const id of rx.g.contents) if (this.store.has(id)) this.counters.held++;
    this.resolveDone({ target: this.target, ended: how, held: this.heldIds(), counters: { ...this.counters }, coalescingOff: this.coalescingOff });
  }
}

/** Binary search in an ascending Uint32Array. */
function has(a: Uint32Array, v: number): boolean {
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const x = a[mid]!;
    if (x === v) return true;
    if (x < v) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}
