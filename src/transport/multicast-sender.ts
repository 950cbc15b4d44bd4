/**
 * The source side of the scatter: sends every group's contents once on the group's multicast
 * address, paced by a byte token bucket, then repairs what targets NACK and collects their
 * reports. Knowledge of "target T holds content C" comes only from those reports.
 *
 * Groups go in plan order. A group starts when every member has confirmed its join (or after
 * `joinTimeoutMs`) and, where the sender can hear IGMP, once the network has seen those members
 * join (or after `igmpJoinWaitMs`), so that a snooping switch forwards the group to each of them
 * from its first datagram; while one group is in its first pass, earlier groups may still be in repair,
 * so the link does not idle during polls. Repairs are aggregated for a few ms: a datagram that
 * several targets lack is multicast once, one that a single target lacks goes to it by unicast;
 * a NACK arriving within the hold-off after a repair of the same datagram is ignored (it was
 * sent before the repair arrived).
 */
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import {
  ALL_GROUPS,
  AUTH_TRAILER_BYTES,
  DatagramAuth,
  Flag,
  HEADER_BYTES,
  FRAME_OVERHEAD,
  Kind,
  MAX_CONTROL_BYTES,
  SENDER_ORIGIN,
  decodeHeader,
  decodeJoinBody,
  decodeReportHead,
  decodeSeqSet,
  decodeStatsBody,
  decodeStatusBody,
  decodeU32Body,
  encodeControl,
  encodeU32Body,
  fragmentSpan,
  newHeader,
  parseAuthKey,
  writeHeader,
  type DatagramLayout,
  type ReceiverCounters,
} from '../wire/datagram.js';
import { IgmpMonitor, type IgmpEvent } from './igmp-monitor.js';
import { bit, layoutOf, type ScatterSession, type SessionGroup } from './scatter-session.js';
import { multicastUdpNetwork } from './multicast-udp.js';
import type { Peer, ScatterNetwork, ScatterSocket } from './scatter-transport.js';
import { TokenBucket } from './token-bucket.js';

export interface ScatterSenderOptions {
  session: ScatterSession;
  /** Bytes of a content (PAGE_SIZE at offset 0), or undefined to skip it (converge will carry it). */
  contentBytes: (id: number) => Buffer | undefined;
  /** Interface address multicast leaves by (default: session.sender.address). */
  iface?: string;
  network?: ScatterNetwork;
  /**
   * Pacing ceiling, bytes/s on the wire as interface counters and tc count them (Ethernet
   * frames, FRAME_OVERHEAD; default 125 MB/s, a 1 Gbit/s link).
   */
  rateBytesPerSec?: number;
  /** Starting rate, fraction of the ceiling (default 1: the ceiling; token-bucket.ts says why). */
  rateInitialFraction?: number;
  /** Lowest rate NACK backoff may reach, fraction of the ceiling (default 0.05). */
  rateFloorFraction?: number;
  /** NACKed/sent fraction above which the rate backs off (default 0.10; token-bucket.ts says why). */
  backoffLoss?: number;
  /**
   * Flow control: a group's first pass runs ahead of what a member has read (its PROGRESS) by
   * at most the bytes its socket buffer holds, as it says in the same message, and at most this
   * many bytes whatever it says (default 16 MiB; 0: flow control off). A sender that runs ahead
   * of a receiver fills its socket buffer, and the overflow is lost: it must be repaired, and the
   * loss makes the sender cut its rate. That happens whenever a receiver falls behind for a few
   * ms, as on a host where receivers share CPU with the sender. Members that never sent PROGRESS
   * (receivers without flow control) do not hold the first pass.
   */
  flowWindowBytes?: number;
  /**
   * A member whose PROGRESS has not advanced for this long stops holding the first pass (default
   * 100 ms): a receiver that stalls longer (or is gone) loses the overflow and asks for repairs,
   * the others go on. It holds it again once its PROGRESS advances.
   */
  flowStallMs?: number;
  /** Wait this long for a group's members to confirm their join (default 2000 ms). */
  joinTimeoutMs?: number;
  /** Wait this long for a target's first hello before treating it as absent (default 3000 ms). */
  helloTimeoutMs?: number;
  /** Repair rounds per group before giving up on the targets still lacking data (default 60). */
  maxPollRounds?: number;
  /**
   * Give up on a target that has not answered this many polls in a row (default 8), when its
   * silence has also lasted silentGiveUpMs.
   */
  maxSilentPolls?: number;
  /**
   * ...and it has answered nothing, in any group, for this long (default 1000 ms). Polls go every
   * 30 ms or more, and a receiver descheduled on a busy host misses 8 of them in a quarter of a
   * second (on the scatter bench's topology receivers' event loops stalled for up to 250 ms); a
   * target that is gone has long been silent when the next group polls it.
   */
  silentGiveUpMs?: number;
  /**
   * Give up on a target that answers but whose count of received datagrams has not grown over
   * this many polls in a row, while 32 or more repairs of datagrams it asked for went out since
   * it last grew (default 2): its path drops the data (a smaller MTU than the session's, a
   * filter) while the small control datagrams get through. It then gets no more repairs in this
   * group or in the groups after it (the same path would drop them); converge carries what it
   * lacks. A target that receives anything, however slowly, is never given up by this rule.
   */
  maxStalledPolls?: number;
  /** Overall limit for the report phase (default 5000 ms). */
  reportTimeoutMs?: number;
  /** Collect NACKs this long before deciding multicast vs unicast (default 3 ms). */
  repairAggregateMs?: number;
  /** Listen to IGMP membership reports (needs CAP_NET_RAW): 'auto' tries and says why not. Default 'auto'. */
  igmp?: boolean | 'auto';
  /**
   * With the IGMP check on, a group starts only once the network has seen every confirmed member
   * join its address (a switch with IGMP snooping forwards the group to a port only then), or
   * after this long past the last confirmation, for reports lost on the way (default 250 ms).
   */
  igmpJoinWaitMs?: number;
  onProgress?: (p: ScatterProgress) => void;
  /** Progress callback interval (default 100 ms). */
  progressIntervalMs?: number;
  /**
   * Send a group's consecutive first-pass datagrams several per system call (UDP GSO,
   * udp-offload.ts), default true. Off, or where the host lacks it, one datagram per call.
   */
  udpOffload?: boolean;
}

export interface ScatterProgress {
  phase: 'join' | 'send' | 'repair' | 'report' | 'done';
  /** Group id being sent (first pass), -1 when none. */
  group: number;
  groupsDone: number;
  groupsTotal: number;
  /** Content bytes sent in first passes so far / total to send. */
  bytesSent: number;
  bytesTotal: number;
  contentsSent: number;
  contentsTotal: number;
  repairs: number;
  rateBytesPerSec: number;
}

export interface GroupStats {
  id: number;
  address: string;
  targets: number[];
  contents: number;
  /** Contents skipped because contentBytes gave none. */
  skipped: number;
  datagrams: number;
  repairs: number;
  repairsMulticast: number;
  repairsUnicast: number;
  pollRounds: number;
  /** Targets that confirmed their join before the group started. */
  joinsConfirmed: number[];
  /** Targets the network (IGMP) saw join the group; null when the check was skipped. */
  igmpJoined: number[] | null;
  /**
   * Members the network saw only leave the group's address: they joined and left within the
   * kernel's report delay (a few ms), so its one IGMPv3 report says "left". A snooping switch
   * would not have forwarded the group to them; repair and converge still deliver what they lack.
   * With the start gate (igmpJoinWaitMs) this happens only when the wait for the join ran out.
   */
  igmpLeftOnly: number[] | null;
  /**
   * Confirmed members whose IGMP join the network had not shown when the group started (the wait
   * for it, igmpJoinWaitMs, ran out); null when the check was skipped.
   */
  igmpUnseenAtStart: number[] | null;
  /** Targets that did not end the group with every datagram (they rely on converge). */
  incomplete: number[];
  /** Targets given up on while they still answered: no progress over maxStalledPolls polls, here or in an earlier group. */
  stalled: number[];
  firstPassMs: number;
  totalMs: number;
}

export interface SenderStats {
  /** UDP payload bytes sent, every datagram (data, repairs, control). */
  bytesSent: number;
  /** DATA bytes of first passes (what an ideal lossless scatter sends). */
  dataBytes: number;
  /** DATA bytes of repairs. */
  repairBytes: number;
  datagrams: number;
  /** Send calls that carried them: fewer than `datagrams` where sends are segmented. */
  sends: number;
  /**
   * Segmented sends (UDP GSO): the datagram length they carry, 0 when off; `note` says why off
   * when it was asked for, or that it was turned off after a failed send.
   */
  segmentation: { segmentBytes: number; note?: string };
  repairs: number;
  repairsMulticast: number;
  repairsUnicast: number;
  /** NACK messages received and sequence numbers they named. */
  nacks: number;
  nackedSeqs: number;
  /** Control datagrams dropped: malformed, foreign (other job/kind), spoofed (bad auth). */
  dropped: number;
  malformed: number;
  foreign: number;
  spoofed: number;
  sendErrors: number;
  /** (target, group) join confirmations received before the group started. */
  joinsConfirmed: number;
  joinsMissing: number;
  /** (target, group) joins the network saw (IGMP); null when the check was skipped. */
  igmpSeen: number | null;
  /** (target, group) memberships the network saw only leave (see GroupStats.igmpLeftOnly). */
  igmpLeftOnly: number | null;
  /** (target, group) memberships started without their IGMP join seen (see GroupStats.igmpUnseenAtStart). */
  igmpUnseenAtStart: number | null;
  igmp: { checked: boolean; reason?: string };
  rateBackoffs: number;
  finalRateBytesPerSec: number;
  /**
   * Flow control: the window's cap (flowWindowBytes, 0: off), the smallest window a member
   * offered (null: none did), PROGRESS messages received, how often the first pass stopped at a
   * member's window, and for how long in all (ms).
   */
  flow: { capBytes: number; offeredBytes: number | null; progress: number; holds: number; heldMs: number };
  elapsedMs: number;
  groups: GroupStats[];
}

export interface TargetReport {
  target: number;
  name: string;
  /** Content ids the target reported holding, ascending (only from its REPORTs). */
  held: Uint32Array;
  /** Bytes (UDP payload) the target received, from its STATS; 0 when it never reported. */
  bytes: number;
  /** Repair datagrams the target received. */
  repairs: number;
  /** Whether the target answered the report request completely. */
  reported: boolean;
  /** Whether it holds every content the plan gives it that the sender had bytes for. */
  complete: boolean;
  counters: ReceiverCounters | null;
}

export interface ScatterResult {
  targets: TargetReport[];
  sender: SenderStats;
}

const RING = 4096;
/** Contents resolved (contentBytes) at a time during a group's first pass. */
const RESOLVE_CHUNK = 2048;
const REPAIR_HOLDOFF_MIN_MS = 15;
/** Default cap of the flow window: receivers offer less (their socket buffer). */
const FLOW_WINDOW_BYTES = 16 * 1024 * 1024;

const enum GState {
  Waiting,
  Sending,
  Repairing,
  Done,
}

interface TargetState {
  index: number;
  peer: Peer | null;
  joined: Set<number>;
  joinVersion: number;
  absent: boolean;
  /** Per group: REPORT chunk bitmaps. */
  reportChunks: Map<number, { count: number; got: Uint8Array; gotN: number; held: Uint8Array }>;
  counters: ReceiverCounters | null;
  byeAcked: boolean;
  doneResentAt: number;
  /** When it last answered: a poll (STATUS, any group), PROGRESS, or a new membership (JOIN); performance.now(). */
  answeredAt: number;
  /** It has sent PROGRESS: it holds first passes within the flow window. */
  paced: boolean;
  /** Its latest PROGRESS: group, sequence read up to, and when that sequence last advanced. */
  progressGroup: number;
  progressSeq: number;
  progressAt: number;
  /** Datagrams the first pass may run ahead of progressSeq (its offer, within flowWindowBytes). */
  flowWindow: number;
}

interface GroupTx {
  g: SessionGroup;
  state: GState;
  members: number[];
  pages: Buffer[];
  /** Ids of the contents resolved so far that have bytes, in send order (a view of idBuf). */
  sendIds: Uint32Array;
  idBuf: Uint32Array;
  /** Contents of g.contents resolved so far (contentBytes called). */
  resolved: number;
  skipped: number;
  nDatagrams: number;
  nextSeq: number;
  waitingSince: number;
  /** When every present member had confirmed its join (or the wait for that ran out); -1 before. */
  confirmedAt: number;
  startedAt: number;
  firstPassAt: number;
  doneAt: number;
  // repair state, per datagram
  wantFirst: Int16Array; // -1 none, target index, -2 several
  queuedAt: Float64Array;
  lastRepairAt: Float64Array;
  lastRepairTo: Int16Array; // -1 never, -2 multicast, target
  /** When each datagram was first sent (ms, performance.now()). */
  sentAt: Float64Array;
  /** Per member target: datagrams it has NACKed at least once (bitmap), for the loss estimate. */
  nackedBy: Map<number, Uint8Array>;
  /** Per member target: datagrams it asked for whose repair has not gone out since (bitmap). */
  asked: Map<number, Uint8Array>;
  queue: number[];
  queueHead: number;
  // polling
  complete: Set<number>;
  gaveUp: Set<number>;
  silent: Map<number, number>;
  /** Per member: repairs sent (unicast to it, or multicast) of datagrams it asked for. */
  repairsTo: Map<number, number>;
  /**
   * Per member: the round of its last answer to a poll, the most it had received, repairsTo when
   * that count last grew, and its answers in a row since without growth.
   */
  progress: Map<number, { round: number; received: number; repairsAt: number; stalled: number }>;
  pollRound: number;
  nextPollAt: number;
  pollSentAt: number;
  doneSent: number;
  joinsConfirmed: number[];
  stats: GroupStats;
}

/**
 * Repairs of datagrams a target asked for that must have gone out, with none of them received,
 * before it counts as stalled. Independent loss of them all is negligible (0.05^32 at 5% loss);
 * a receiver that lost a burst (descheduled with its socket buffer full) still receives some.
 */
const STALL_EVIDENCE = 32;

/** Sender of one scatter job. `open()` binds its control socket; `run()` performs the scatter. */
export class ScatterSender {
  readonly session: ScatterSession;
  private readonly layout: DatagramLayout;
  private readonly auth: DatagramAuth | null;
  private readonly o: ScatterSenderOptions;
  private sock: ScatterSocket | null = null;
  private readonly targets: TargetState[];
  private readonly groups = new Map<number, GroupTx>();
  private readonly orderTx: GroupTx[] = [];
  private bucket: TokenBucket;
  private readonly hdr = newHeader();
  // Preallocated datagram header slots (header + extra page ids) and auth trailers.
  private readonly slotBytes: number;
  private readonly slots: Buffer;
  private readonly trailers: Buffer;
  private slotNext = 0;
  private readonly parts: Buffer[] = [];
  /** First-pass datagrams gathered for one segmented send, to `batchAddress`. */
  private readonly batchParts: Buffer[] = [];
  private batchN = 0;
  private batchAddress = '';
  /** Sends in flight at most: each may hold up to maxSegments header slots of the ring. */
  private inFlightMax = RING - 2;
  private readonly burstDatagrams: number;
  /** Flow window cap in bytes as configured, and in datagrams (0: off). */
  private readonly flowWindowBytes: number;
  private readonly flowWindow: number;
  /** When the first pass stopped at the flow window (-1: it is not stopped there). */
  private flowHeldSince = -1;
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private finished = false;
  private startedAt = 0;
  private readonly stats: SenderStats;
  private rttMs = 20;
  private igmp: IgmpMonitor | null = null;
  private readonly igmpEvents: IgmpEvent[] = [];
  /** Per group address: the hosts (report source addresses) the network currently has as members. */
  private readonly igmpMembers = new Map<string, Set<string>>();
  private lastProgressAt = 0;
  private contentsTotal = 0;
  private bytesTotal = 0;
  private contentsSent = 0;
  private phase: ScatterProgress['phase'] = 'join';
  private resolveRun: ((r: ScatterResult) => void) | null = null;
  private rejectRun: ((e: unknown) => void) | null = null;
  private reportStartedAt = 0;
  private nextReportReqAt = 0;
  private byeStartedAt = 0;
  private byeTries = 0;
  /** Address -> groups sent on it (several when the plan's channels share addresses). */
  private readonly groupAddresses = new Map<string, number[]>();

  private constructor(o: ScatterSenderOptions) {
    this.o = o;
    this.session = o.session;
    this.layout = layoutOf(o.session);
    const key = o.session.key !== undefined ? parseAuthKey(o.session.key) : null;
    if (o.session.key !== undefined && !key) throw new VmsError(ErrorCode.CONFIG, 'scatter session key must be 16 or 32 bytes in hex');
    this.auth = key ? new DatagramAuth(key, SENDER_ORIGIN) : null;
    this.targets = o.session.targets.map((_, i) => ({
      index: i,
      peer: null,
      joined: new Set(),
      joinVersion: -1,
      absent: false,
      reportChunks: new Map(),
      counters: null,
      byeAcked: false,
      doneResentAt: 0,
      answeredAt: -Infinity,
      paced: false,
      progressGroup: -1,
      progressSeq: 0,
      progressAt: -Infinity,
      flowWindow: 0,
    }));
    const rate = o.rateBytesPerSec ?? 125e6;
    const wireBytes = this.layout.maxDatagramBytes + FRAME_OVERHEAD;
    this.burstDatagrams = Math.max(64, Math.ceil((rate * 0.002) / wireBytes));
    this.bucket = new TokenBucket({
      rateBytesPerSec: rate,
      burstBytes: Math.max(8 * wireBytes, rate * 0.004),
      ...(o.rateInitialFraction !== undefined ? { initialFraction: o.rateInitialFraction } : {}),
      floorFraction: o.rateFloorFraction ?? 0.05,
      ...(o.backoffLoss !== undefined ? { backoffLoss: o.backoffLoss } : {}),
    });
    this.flowWindowBytes = o.flowWindowBytes ?? FLOW_WINDOW_BYTES;
    if (!Number.isSafeInteger(this.flowWindowBytes) || this.flowWindowBytes < 0) throw new VmsError(ErrorCode.CONFIG, `flow window must be a whole number of bytes (0: off), got ${o.flowWindowBytes}`);
    this.flowWindow = this.flowWindowBytes > 0 ? this.datagramsIn(this.flowWindowBytes) : 0;
    this.slotBytes = HEADER_BYTES + 4 * (this.layout.pagesPerDatagram - 1);
    this.slots = Buffer.alloc(RING * this.slotBytes);
    this.trailers = Buffer.alloc(RING * AUTH_TRAILER_BYTES);
    this.stats = {
      bytesSent: 0,
      dataBytes: 0,
      repairBytes: 0,
      datagrams: 0,
      sends: 0,
      segmentation: { segmentBytes: 0 },
      repairs: 0,
      repairsMulticast: 0,
      repairsUnicast: 0,
      nacks: 0,
      nackedSeqs: 0,
      dropped: 0,
      malformed: 0,
      foreign: 0,
      spoofed: 0,
      sendErrors: 0,
      joinsConfirmed: 0,
      joinsMissing: 0,
      igmpSeen: null,
      igmpLeftOnly: null,
      igmpUnseenAtStart: null,
      igmp: { checked: false },
      rateBackoffs: 0,
      finalRateBytesPerSec: rate,
      flow: { capBytes: this.flowWindowBytes, offeredBytes: null, progress: 0, holds: 0, heldMs: 0 },
      elapsedMs: 0,
      groups: [],
    };
    for (const g of o.session.groups) {
      const list = this.groupAddresses.get(g.address);
      if (list) list.push(g.id);
      else this.groupAddresses.set(g.address, [g.id]);
    }
  }

  /** Bind the control socket on session.sender (port 0 = ephemeral: session.sender.port is updated). */
  static async open(o: ScatterSenderOptions): Promise<ScatterSender> {
    const s = new ScatterSender(o);
    const net = o.network ?? multicastUdpNetwork();
    s.sock = await net.open({
      bindAddress: o.session.sender.address,
      port: o.session.sender.port,
      iface: o.iface ?? o.session.sender.address,
      // Every datagram the sender sends is at most this long (its control messages are short),
      // so only the batches gathered in sendData are ever segmented.
      ...(o.udpOffload === false ? {} : { segmentBytes: s.layout.maxDatagramBytes }),
      onMessage: (msg, from) => s.onControl(msg, from),
    });
    s.session.sender.port = s.sock.local.port;
    s.inFlightMax = Math.floor(RING / s.sock.maxSegments) - 2;
    s.stats.segmentation.segmentBytes = s.sock.segmentBytes;
    try {
      // Listen to IGMP from now on: targets that join after this are seen as they join.
      await s.startIgmp();
    } catch (err) {
      s.close();
      throw err;
    }
    return s;
  }

  /** Run the scatter to the end: every group sent and repaired, every target's report collected. */
  async run(): Promise<ScatterResult> {
    if (this.running || this.finished) throw new VmsError(ErrorCode.SCATTER, 'ScatterSender.run() may be called once');
    if (!this.sock) throw new VmsError(ErrorCode.SCATTER, 'ScatterSender not opened');
    this.running = true;
    this.startedAt = performance.now();
    if (this.igmp) {
      // Targets that joined before the monitor started: ask every host to report its groups
      // now, at once (maximum response time 0: a 100 ms one held the first group back by 50-100
      // ms). No need to wait for the answers here: a group starts only once the network has
      // seen its members join, or igmpJoinWaitMs after they confirmed.
      if (!(await this.igmp.query(0))) this.stats.igmp.reason = 'general query could not be sent: joins made before the sender opened are not seen';
    }
    this.prepareGroups();
    return new Promise<ScatterResult>((resolve, reject) => {
      this.resolveRun = resolve;
      this.rejectRun = reject;
      this.schedule(0);
    });
  }

  /** Stop and release sockets (also after run() resolved). */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.sock?.close();
    this.sock = null;
    this.igmp?.close();
    this.igmp = null;
    if (this.running && !this.finished) {
      this.finished = true;
      this.rejectRun?.(new VmsError(ErrorCode.CANCELLED, 'scatter sender closed before the scatter finished'));
    }
  }

  // -------------------------------------------------------------------------------------------

  private async startIgmp(): Promise<void> {
    const want = this.o.igmp ?? 'auto';
    if (want === false) {
      this.stats.igmp = { checked: false, reason: 'disabled by configuration' };
      return;
    }
    const iface = this.o.iface ?? this.session.sender.address;
    if (iface.startsWith('127.')) {
      this.stats.igmp = { checked: false, reason: 'loopback interface: Linux sends no IGMP reports on lo' };
      return;
    }
    const r = await IgmpMonitor.start({ iface, onEvent: (e) => this.onIgmp(e) });
    if (r.monitor) {
      this.igmp = r.monitor;
      this.stats.igmp = { checked: true };
      this.stats.igmpSeen = 0;
      this.stats.igmpLeftOnly = 0;
      this.stats.igmpUnseenAtStart = 0;
    } else {
      this.stats.igmp = { checked: false, reason: r.reason };
      if (want === true) throw new VmsError(ErrorCode.SCATTER, `IGMP join check requested but unavailable: ${r.reason}`);
    }
  }

  private prepareGroups(): void {
    const byId = new Map(this.session.groups.map((g) => [g.id, g]));
    for (const gid of this.session.order) {
      const g = byId.get(gid)!;
      const n = g.contents.length;
      const nMax = this.layout.fragmentsPerPage > 1 ? n * this.layout.fragmentsPerPage : Math.ceil(n / this.layout.pagesPerDatagram);
      const tx: GroupTx = {
        g,
        state: GState.Waiting,
        members: g.targets.slice(),
        pages: [],
        sendIds: new Uint32Array(0),
        idBuf: new Uint32Array(0),
        resolved: 0,
        skipped: 0,
        nDatagrams: 0,
        nextSeq: 0,
        waitingSince: -1,
        confirmedAt: -1,
        startedAt: 0,
        firstPassAt: 0,
        doneAt: 0,
        wantFirst: new Int16Array(nMax).fill(-1),
        queuedAt: new Float64Array(nMax),
        lastRepairAt: new Float64Array(nMax),
        lastRepairTo: new Int16Array(nMax).fill(-1),
        sentAt: new Float64Array(nMax),
        nackedBy: new Map(g.targets.map((t) => [t, new Uint8Array(Math.ceil(nMax / 8))])),
        asked: new Map(g.targets.map((t) => [t, new Uint8Array(Math.ceil(nMax / 8))])),
        queue: [],
        queueHead: 0,
        complete: new Set(),
        gaveUp: new Set(),
        silent: new Map(),
        repairsTo: new Map(),
        progress: new Map(),
        pollRound: 0,
        nextPollAt: 0,
        pollSentAt: 0,
        doneSent: 0,
        joinsConfirmed: [],
        stats: {
          id: g.id,
          address: g.address,
          targets: g.targets.slice(),
          contents: n,
          skipped: 0,
          datagrams: 0,
          repairs: 0,
          repairsMulticast: 0,
          repairsUnicast: 0,
          pollRounds: 0,
          joinsConfirmed: [],
          igmpJoined: null,
          igmpLeftOnly: null,
          igmpUnseenAtStart: null,
          incomplete: [],
          stalled: [],
          firstPassMs: 0,
          totalMs: 0,
        },
      };
      this.groups.set(gid, tx);
      this.orderTx.push(tx);
      this.stats.groups.push(tx.stats);
      this.contentsTotal += n;
      this.bytesTotal += n * PAGE_SIZE;
    }
  }

  /**
   * Resolve the group's contents (contentBytes) until datagram `seq` can be built; false when
   * the group has no datagram `seq`. Contents are resolved a chunk at a time as the first pass
   * advances, so that a large group starts sending at once instead of after resolving all.
   */
  private ensureResolved(tx: GroupTx, seq: number): boolean {
    const l = this.layout;
    const need = l.fragmentsPerPage > 1 ? Math.floor(seq / l.fragmentsPerPage) + 1 : (seq + 1) * l.pagesPerDatagram;
    const contents = tx.g.contents;
    if (tx.resolved === 0 && tx.idBuf.length === 0 && contents.length > 0) tx.idBuf = new Uint32Array(contents.length);
    while (tx.sendIds.length < need && tx.resolved < contents.length) {
      const end = Math.min(contents.length, tx.resolved + RESOLVE_CHUNK);
      let n = tx.sendIds.length;
      for (let i = tx.resolved; i < end; i++) {
        const id = contents[i]!;
        const b = this.o.contentBytes(id);
        if (b === undefined) {
          tx.skipped++;
          continue;
        }
        if (b.length < PAGE_SIZE) throw new VmsError(ErrorCode.SCATTER, `contentBytes(${id}) returned ${b.length} bytes, expected ${PAGE_SIZE}`);
        tx.pages.push(b.length === PAGE_SIZE ? b : b.subarray(0, PAGE_SIZE));
        tx.idBuf[n++] = id;
      }
      tx.resolved = end;
      tx.sendIds = tx.idBuf.subarray(0, n);
      if (end === contents.length) {
        tx.nDatagrams = l.fragmentsPerPage > 1 ? n * l.fragmentsPerPage : Math.ceil(n / l.pagesPerDatagram);
        tx.stats.skipped = tx.skipped;
        this.contentsTotal -= tx.skipped;
        this.bytesTotal -= tx.skipped * PAGE_SIZE;
      }
    }
    return tx.resolved < contents.length || seq < tx.nDatagrams;
  }

  private schedule(ms: number): void {
    if (this.finished || !this.sock) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      try {
        this.tick();
      } catch (err) {
        this.fail(err);
      }
    }, ms);
  }

  private fail(err: unknown): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    this.igmp?.close();
    this.igmp = null;
    this.rejectRun?.(err instanceof VmsError ? err : new VmsError(ErrorCode.SCATTER, `scatter sender failed: ${(err as Error).message}`, { cause: err }));
  }

  private tick(): void {
    const now = performance.now();
    this.markAbsentTargets(now);
    this.advanceGroups(now);
    const busy = this.pump(now);
    this.pollAndFinishGroups(now);
    this.progress(now, false);
    if (this.orderTx.every((tx) => tx.state === GState.Done)) {
      if (this.reportPhase(now)) return;
    }
    if (this.finished) return;
    this.schedule(busy ? 1 : 3);
  }

  private markAbsentTargets(now: number): void {
    const limit = this.o.helloTimeoutMs ?? 3000;
    if (now - this.startedAt < limit) return;
    for (const t of this.targets) if (!t.peer && !t.absent) t.absent = true;
  }

  /** Start the next group once the previous one finished its first pass and members joined. */
  private advanceGroups(now: number): void {
    if (this.orderTx.some((tx) => tx.state === GState.Sending)) return;
    const next = this.orderTx.find((tx) => tx.state === GState.Waiting);
    if (!next) return;
    if (next.waitingSince < 0) {
      next.waitingSince = now;
      this.phase = 'join';
    }
    const members = next.members.filter((t) => !this.targets[t]!.absent);
    const joined = members.filter((t) => this.targets[t]!.joined.has(next.g.id));
    const timeout = this.o.joinTimeoutMs ?? 2000;
    if (joined.length < members.length && now - next.waitingSince < timeout) {
      // A member still holding a finished group has probably lost its DONE: its window is full.
      for (const t of members) {
        const ts = this.targets[t]!;
        if (ts.joined.has(next.g.id) || now - ts.doneResentAt < 50) continue;
        for (const gid of ts.joined) {
          if (this.groups.get(gid)?.state === GState.Done) {
            this.sendControl(Kind.DONE, gid, 0, t);
            ts.doneResentAt = now;
          }
        }
      }
      return;
    }
    if (next.confirmedAt < 0) next.confirmedAt = now;
    if (this.igmp) {
      // Confirmed over the control channel means the receiver's socket joined; a snooping
      // switch forwards the group only after the kernel's IGMP report, a few ms later.
      const unseen = this.igmpUnseen(next, joined);
      if (unseen.length > 0 && now - next.confirmedAt < (this.o.igmpJoinWaitMs ?? 250)) return;
      next.stats.igmpUnseenAtStart = unseen;
    }
    next.joinsConfirmed = joined;
    next.stats.joinsConfirmed = joined;
    this.stats.joinsConfirmed += joined.length;
    this.stats.joinsMissing += next.members.length - joined.length;
    next.state = GState.Sending;
    next.startedAt = now;
    this.phase = 'send';
  }

  /** Send repairs that are ripe, then first-pass data, as tokens allow. True when more is waiting. */
  private pump(now: number): boolean {
    const sock = this.sock!;
    const aggregate = this.o.repairAggregateMs ?? 3;
    let sent = 0;
    let moreWaiting = false;
    for (const tx of this.orderTx) {
      if (tx.state !== GState.Sending && tx.state !== GState.Repairing) continue;
      while (tx.queueHead < tx.queue.length && sent < this.burstDatagrams) {
        const seq = tx.queue[tx.queueHead]!;
        if (now - tx.queuedAt[seq]! < aggregate) {
          moreWaiting = true;
          break;
        }
        if (sock.issued - sock.completed >= this.inFlightMax) return true;
        if (!this.bucket.take(this.datagramWireBytes(tx, seq), now)) return true;
        tx.queueHead++;
        this.sendRepair(tx, seq, now);
        sent++;
      }
      if (tx.queueHead > 1024 && tx.queueHead * 2 > tx.queue.length) {
        tx.queue = tx.queue.slice(tx.queueHead);
        tx.queueHead = 0;
      }
    }
    const tx = this.orderTx.find((t) => t.state === GState.Sending);
    if (!tx) return moreWaiting;
    const gather = sock.segmentBytes > 0;
    const flowLimit = this.flowLimit(tx, now);
    try {
      while (this.ensureResolved(tx, tx.nextSeq)) {
        if (sent >= this.burstDatagrams) return true;
        if (sock.issued - sock.completed >= this.inFlightMax) return true;
        if (tx.nextSeq >= flowLimit) {
          if (this.flowHeldSince < 0) {
            this.flowHeldSince = now;
            this.stats.flow.holds++;
          }
          return true;
        }
        if (!this.bucket.take(this.datagramWireBytes(tx, tx.nextSeq), now)) return true;
        this.flowReleased(now);
        this.sendData(tx, tx.nextSeq, 0, null, gather);
        tx.sentAt[tx.nextSeq] = now;
        tx.nextSeq++;
        sent++;
      }
    } finally {
      this.flushBatch();
    }
    this.flowReleased(now);
    // First pass over. Poll after a short grace: a poll overtaking the group's last datagrams
    // (they sit in another socket's buffer at the target) would make it NACK them for nothing.
    tx.state = GState.Repairing;
    tx.firstPassAt = now;
    tx.stats.firstPassMs = now - tx.startedAt;
    tx.nextPollAt = now + Math.max(5, Math.min(50, this.rttMs / 2));
    this.phase = 'repair';
    return true;
  }

  /**
   * One past the last datagram of `tx` the first pass may send now: the least, over members, of
   * what a member has read plus its window (Infinity when flow control is off or no member holds
   * it). A member holds it once it has sent PROGRESS in the job, when it confirmed its join
   * before the group started and is not given up, and while its PROGRESS in this group advanced
   * within flowStallMs (counted from the group's start before its first).
   */
  private flowLimit(tx: GroupTx, now: number): number {
    if (this.flowWindow === 0) return Infinity;
    const stallMs = this.o.flowStallMs ?? 100;
    let slowest = Infinity;
    for (const t of tx.members) {
      const ts = this.targets[t]!;
      if (!ts.paced || ts.absent || tx.gaveUp.has(t) || !tx.joinsConfirmed.includes(t)) continue;
      const here = ts.progressGroup === tx.g.id;
      if (now - (here ? ts.progressAt : tx.startedAt) > stallMs) continue;
      const limit = (here ? ts.progressSeq : 0) + ts.flowWindow;
      if (limit < slowest) slowest = limit;
    }
    return slowest;
  }

  /** Whole datagrams in `bytes` (at least 2, so that the window always moves). */
  private datagramsIn(bytes: number): number {
    return Math.max(2, Math.floor(bytes / this.layout.maxDatagramBytes));
  }

  /** The first pass goes on: account for the time it was held at the flow window. */
  private flowReleased(now: number): void {
    if (this.flowHeldSince < 0) return;
    this.stats.flow.heldMs += now - this.flowHeldSince;
    this.flowHeldSince = -1;
  }

  /** Bytes of DATA datagram `seq` as an Ethernet link carries it (what the pacing counts). */
  private datagramWireBytes(tx: GroupTx, seq: number): number {
    const l = this.layout;
    const trailer = this.auth ? AUTH_TRAILER_BYTES : 0;
    if (l.fragmentsPerPage > 1) return HEADER_BYTES + fragmentSpan(seq % l.fragmentsPerPage, l.fragmentsPerPage).length + trailer + FRAME_OVERHEAD;
    const first = seq * l.pagesPerDatagram;
    const k = Math.min(l.pagesPerDatagram, tx.sendIds.length - first);
    return HEADER_BYTES + 4 * (k - 1) + k * PAGE_SIZE + trailer + FRAME_OVERHEAD;
  }

  /**
   * Build and send DATA datagram `seq` of the group to its address, or to `to` by unicast. With
   * `gather`, add it to the batch for one segmented send instead: the batch goes out once full,
   * after a datagram shorter than the segment (the last of a page's fragments or of the group),
   * or at flushBatch().
   */
  private sendData(tx: GroupTx, seq: number, flags: number, to: Peer | null, gather = false): void {
    const l = this.layout;
    const slot = this.slotNext;
    this.slotNext = (slot + 1) % RING;
    const hdr = this.slots.subarray(slot * this.slotBytes, (slot + 1) * this.slotBytes);
    const parts = this.parts;
    parts.length = 0;
    const f = flags | (this.auth ? Flag.AUTH : 0) | (to ? Flag.UNICAST : 0);
    let payload = 0;
    if (l.fragmentsPerPage > 1) {
      const item = Math.floor(seq / l.fragmentsPerPage);
      const frag = seq % l.fragmentsPerPage;
      const span = fragmentSpan(frag, l.fragmentsPerPage);
      writeHeader(hdr, 0, Kind.DATA, f, this.session.job, tx.g.id, seq, tx.sendIds[item]!, 1, frag, l.fragmentsPerPage);
      parts.push(hdr.subarray(0, HEADER_BYTES), tx.pages[item]!.subarray(span.offset, span.offset + span.length));
      payload = HEADER_BYTES + span.length;
      if (flags === 0 && frag === l.fragmentsPerPage - 1) this.contentsSent++;
    } else {
      const first = seq * l.pagesPerDatagram;
      const k = Math.min(l.pagesPerDatagram, tx.sendIds.length - first);
      writeHeader(hdr, 0, Kind.DATA, f, this.session.job, tx.g.id, seq, tx.sendIds[first]!, k, 0, 1);
      for (let i = 1; i < k; i++) hdr.writeUInt32BE(tx.sendIds[first + i]!, HEADER_BYTES + 4 * (i - 1));
      const hlen = HEADER_BYTES + 4 * (k - 1);
      parts.push(hdr.subarray(0, hlen));
      for (let i = 0; i < k; i++) parts.push(tx.pages[first + i]!);
      payload = hlen + k * PAGE_SIZE;
      if (flags === 0) this.contentsSent += k;
    }
    if (this.auth) {
      const t = this.trailers.subarray(slot * AUTH_TRAILER_BYTES, (slot + 1) * AUTH_TRAILER_BYTES);
      this.auth.seal(parts, t);
      parts.push(t);
      payload += AUTH_TRAILER_BYTES;
    }
    const sock = this.sock!;
    if (gather) {
      if (this.batchN > 0 && this.batchAddress !== tx.g.address) this.flushBatch();
      for (const p of parts) this.batchParts.push(p);
      this.batchAddress = tx.g.address;
      if (++this.batchN >= sock.maxSegments || payload !== sock.segmentBytes) this.flushBatch();
    } else {
      if (to) sock.send(parts, to.port, to.address);
      else sock.send(parts, this.session.dataPort, tx.g.address);
      this.stats.sends++;
    }
    this.stats.datagrams++;
    this.stats.bytesSent += payload;
    tx.stats.datagrams++;
    if (flags & Flag.REPAIR) {
      this.stats.repairBytes += payload;
    } else {
      this.stats.dataBytes += payload;
    }
  }

  /** Send the gathered batch, if any, as one segmented send. */
  private flushBatch(): void {
    if (this.batchN === 0) return;
    this.sock?.send(this.batchParts, this.session.dataPort, this.batchAddress);
    this.stats.sends++;
    this.batchParts.length = 0;
    this.batchN = 0;
  }

  private sendRepair(tx: GroupTx, seq: number, now: number): void {
    const who = tx.wantFirst[seq]!;
    tx.wantFirst[seq] = -1;
    if (who === -1) return; // cancelled (e.g. target completed meanwhile)
    let to: Peer | null = null;
    if (who >= 0) {
      if (tx.gaveUp.has(who)) return;
      to = this.targets[who]!.peer;
      if (!to) return;
      this.chargeRepair(tx, who, seq);
    } else {
      for (const m of tx.members) if (!tx.gaveUp.has(m)) this.chargeRepair(tx, m, seq);
    }
    this.sendData(tx, seq, Flag.REPAIR, to);
    tx.lastRepairAt[seq] = now;
    tx.lastRepairTo[seq] = who;
    this.stats.repairs++;
    tx.stats.repairs++;
    if (who === -2) {
      this.stats.repairsMulticast++;
      tx.stats.repairsMulticast++;
    } else {
      this.stats.repairsUnicast++;
      tx.stats.repairsUnicast++;
    }
  }

  /** A repair of datagram `seq` went out: it counts for `target` if it asked for that datagram since the last one. */
  private chargeRepair(tx: GroupTx, target: number, seq: number): void {
    const asked = tx.asked.get(target)!;
    if (!bit(asked, seq)) return;
    asked[seq >>> 3]! &= ~(1 << (seq & 7));
    tx.repairsTo.set(target, (tx.repairsTo.get(target) ?? 0) + 1);
  }

  /**
   * A member's answer to poll `round` with `received` datagrams. An answer with no more received
   * than before counts as stalled; maxStalledPolls of them in a row, with at least
   * STALL_EVIDENCE repairs it asked for sent since its count last grew, give up on it. (A few
   * lost repairs prove nothing: at 5% loss the one repair of a target's last missing datagram is
   * lost twice in a row now and then, and polling on costs little.)
   */
  private trackProgress(tx: GroupTx, target: number, round: number, received: number): void {
    if (round !== tx.pollRound || tx.gaveUp.has(target)) return;
    const sent = tx.repairsTo.get(target) ?? 0;
    const p = tx.progress.get(target);
    if (p?.round === round) return; // a repeated answer
    if (!p || received > p.received) {
      tx.progress.set(target, { round, received, repairsAt: sent, stalled: 0 });
      return;
    }
    const stalled = p.stalled + 1;
    tx.progress.set(target, { round, received: p.received, repairsAt: p.repairsAt, stalled });
    if (stalled >= (this.o.maxStalledPolls ?? 2) && sent - p.repairsAt >= STALL_EVIDENCE) this.giveUpStalled(target);
  }

  /** Stop repairing `target` in every group not yet done: its path drops the data. */
  private giveUpStalled(target: number): void {
    for (const tx of this.orderTx) {
      if (tx.state === GState.Done || !tx.members.includes(target) || tx.gaveUp.has(target) || tx.complete.has(target)) continue;
      tx.gaveUp.add(target);
      tx.stats.stalled.push(target);
    }
  }

  private sendControl(kind: Kind, group: number, seq: number, target: number, body?: Buffer): void {
    const peer = this.targets[target]?.peer;
    if (!peer || !this.sock) return;
    const b = encodeControl(kind, this.session.job, group, seq, target, body, this.auth ?? undefined);
    this.sock.send([b], peer.port, peer.address);
    this.stats.sends++;
    this.stats.datagrams++;
    this.stats.bytesSent += b.length;
  }

  private pollAndFinishGroups(now: number): void {
    const maxRounds = this.o.maxPollRounds ?? 60;
    const maxSilent = this.o.maxSilentPolls ?? 8;
    const silentMs = this.o.silentGiveUpMs ?? 1000;
    for (const tx of this.orderTx) {
      if (tx.state !== GState.Repairing) continue;
      const pending = tx.members.filter((t) => !tx.complete.has(t) && !tx.gaveUp.has(t) && !this.targets[t]!.absent && this.targets[t]!.peer);
      const repairsQueued = tx.queue.length - tx.queueHead;
      if (pending.length === 0 && repairsQueued === 0) {
        this.finishGroup(tx, now);
        continue;
      }
      if (now < tx.nextPollAt || repairsQueued > 0) continue;
      if (tx.pollRound >= maxRounds) {
        for (const t of pending) tx.gaveUp.add(t);
        continue;
      }
      tx.pollRound++;
      tx.stats.pollRounds = tx.pollRound;
      tx.pollSentAt = now;
      for (const t of pending) {
        const silent = (tx.silent.get(t) ?? 0) + 1;
        tx.silent.set(t, silent);
        if (silent > maxSilent && now - this.targets[t]!.answeredAt >= silentMs) {
          tx.gaveUp.add(t);
          continue;
        }
        this.sendControl(Kind.POLL, tx.g.id, tx.pollRound, t, encodeU32Body(tx.nDatagrams));
      }
      // Next round after the answers and their repairs had time to arrive.
      tx.nextPollAt = now + Math.max(30, 3 * this.rttMs);
    }
  }

  private finishGroup(tx: GroupTx, now: number): void {
    tx.state = GState.Done;
    tx.doneAt = now;
    tx.stats.totalMs = now - tx.startedAt;
    tx.stats.incomplete = tx.members.filter((t) => !tx.complete.has(t));
    for (const t of tx.members) this.sendControl(Kind.DONE, tx.g.id, 0, t);
    tx.doneSent = 1;
    tx.pages = []; // release references to content bytes
  }

  // -------------------------------------------------------------------------------------------
  // Reports and goodbye

  /** True when the run finished. */
  private reportPhase(now: number): boolean {
    if (this.reportStartedAt === 0) {
      this.reportStartedAt = now;
      this.phase = 'report';
      // Resend DONE to targets still listing a finished group (a lost DONE).
    }
    const present = this.targets.filter((t) => t.peer && !t.absent);
    const outstanding = present.filter((t) => !this.reportComplete(t));
    const timedOut = now - this.reportStartedAt > (this.o.reportTimeoutMs ?? 5000);
    if (outstanding.length > 0 && !timedOut) {
      if (now >= this.nextReportReqAt) {
        for (const t of outstanding) {
          const missing = this.missingReportGroups(t);
          if (missing.length > 3 || missing.length === 0) this.sendControl(Kind.REPORT_REQ, ALL_GROUPS, 0, t.index);
          else for (const g of missing) this.sendControl(Kind.REPORT_REQ, g, 0, t.index);
        }
        this.nextReportReqAt = now + Math.max(50, 3 * this.rttMs);
      }
      this.schedule(3);
      return true;
    }
    // Goodbye: repeat until acknowledged (or a few tries).
    if (this.byeStartedAt === 0) this.byeStartedAt = now;
    const unacked = present.filter((t) => !t.byeAcked);
    if (unacked.length > 0 && this.byeTries < 5) {
      if (now - this.byeStartedAt >= this.byeTries * 40) {
        for (const t of unacked) this.sendControl(Kind.BYE, ALL_GROUPS, 0, t.index);
        this.byeTries++;
      }
      this.schedule(5);
      return true;
    }
    this.complete(now);
    return true;
  }

  private missingReportGroups(t: TargetState): number[] {
    const out: number[] = [];
    for (const tx of this.orderTx) {
      if (!tx.members.includes(t.index)) continue;
      const r = t.reportChunks.get(tx.g.id);
      if (!r || r.gotN < r.count) out.push(tx.g.id);
    }
    return out;
  }

  /** Keep the report for the end-of-job check, and the network's current members for the start gate. */
  private onIgmp(e: IgmpEvent): void {
    this.igmpEvents.push(e);
    let members = this.igmpMembers.get(e.group);
    if (e.type === 'join') {
      if (!members) this.igmpMembers.set(e.group, (members = new Set()));
      members.add(e.source);
    } else {
      members?.delete(e.source);
    }
  }

  /** Confirmed members of the group whose join of its address the network has not shown (IGMP). */
  private igmpUnseen(tx: GroupTx, confirmed: number[]): number[] {
    const members = this.igmpMembers.get(tx.g.address);
    return confirmed.filter((t) => {
      const peer = this.targets[t]!.peer;
      return !peer || !members?.has(peer.address);
    });
  }

  private reportComplete(t: TargetState): boolean {
    return t.counters !== null && this.missingReportGroups(t).length === 0;
  }

  private complete(now: number): void {
    if (this.finished) return;
    this.finished = true;
    this.phase = 'done';
    this.drainIgmp();
    this.stats.elapsedMs = now - this.startedAt;
    this.stats.finalRateBytesPerSec = this.bucket.currentRate;
    this.stats.rateBackoffs = this.bucket.backoffs;
    this.stats.sendErrors = this.sock?.sendErrors ?? 0;
    const offloadNote = this.sock?.offloadNote;
    if (offloadNote) this.stats.segmentation.note = offloadNote;
    this.stats.dropped = this.stats.malformed + this.stats.foreign + this.stats.spoofed;
    this.progress(now, true);
    // Per group, once: which of its contents the source had bytes for (sendIds is a sorted
    // subsequence of contents).
    const sendable = new Map<number, Uint8Array>();
    for (const tx of this.orderTx) {
      const contents = tx.g.contents;
      const mark = new Uint8Array(contents.length);
      for (let i = 0, j = 0; i < contents.length && j < tx.sendIds.length; i++) {
        if (contents[i] === tx.sendIds[j]) {
          mark[i] = 1;
          j++;
        }
      }
      sendable.set(tx.g.id, mark);
    }
    const targets: TargetReport[] = this.targets.map((t) => {
      const held: number[] = [];
      let complete = true;
      for (const tx of this.orderTx) {
        if (!tx.members.includes(t.index)) continue;
        const r = t.reportChunks.get(tx.g.id);
        const mark = sendable.get(tx.g.id)!;
        const contents = tx.g.contents;
        for (let i = 0; i < contents.length; i++) {
          const has = r !== undefined && bit(r.held, i);
          if (has) held.push(contents[i]!);
          else if (mark[i] === 1) complete = false;
        }
      }
      held.sort((a, b) => a - b);
      return {
        target: t.index,
        name: this.session.targets[t.index]!,
        held: Uint32Array.from(held),
        bytes: t.counters?.bytes ?? 0,
        repairs: t.counters?.repairs ?? 0,
        reported: this.reportComplete(t),
        complete: complete && this.reportComplete(t),
        counters: t.counters,
      };
    });
    this.igmp?.close();
    this.igmp = null;
    this.resolveRun?.({ targets, sender: this.stats });
  }

  private progress(now: number, force: boolean): void {
    const cb = this.o.onProgress;
    if (!cb) return;
    if (!force && now - this.lastProgressAt < (this.o.progressIntervalMs ?? 100)) return;
    this.lastProgressAt = now;
    const sending = this.orderTx.find((tx) => tx.state === GState.Sending);
    cb({
      phase: this.phase,
      group: sending ? sending.g.id : -1,
      groupsDone: this.orderTx.filter((tx) => tx.state === GState.Done).length,
      groupsTotal: this.orderTx.length,
      bytesSent: Math.min(this.bytesTotal, this.contentsSent * PAGE_SIZE),
      bytesTotal: this.bytesTotal,
      contentsSent: this.contentsSent,
      contentsTotal: this.contentsTotal,
      repairs: this.stats.repairs,
      rateBytesPerSec: this.bucket.currentRate,
    });
  }

  /** Map the IGMP joins seen to (target, group), by the targets' control addresses. */
  private drainIgmp(): void {
    if (!this.stats.igmp.checked) return;
    for (const tx of this.orderTx) {
      tx.stats.igmpJoined ??= [];
      tx.stats.igmpLeftOnly ??= [];
    }
    const byAddr = new Map<string, number>();
    for (const t of this.targets) if (t.peer) byAddr.set(t.peer.address, t.index);
    const events = this.igmpEvents.splice(0);
    // Joins first: a leave only counts for members whose join the network never saw.
    for (const type of ['join', 'leave'] as const) {
      for (const e of events) {
        if (e.type !== type) continue;
        const target = byAddr.get(e.source);
        if (target === undefined) continue;
        // A report on an address counts for every group on it the target is a member of.
        for (const gid of this.groupAddresses.get(e.group) ?? []) {
          const tx = this.groups.get(gid);
          if (!tx || !tx.members.includes(target) || tx.stats.igmpJoined!.includes(target)) continue;
          if (type === 'join') insertSorted(tx.stats.igmpJoined!, target);
          else if (!tx.stats.igmpLeftOnly!.includes(target)) insertSorted(tx.stats.igmpLeftOnly!, target);
        }
      }
    }
    // The job's totals are the per-group lists summed.
    const sum = (list: (g: GroupStats) => number[] | null): number => this.stats.groups.reduce((a, g) => a + (list(g)?.length ?? 0), 0);
    this.stats.igmpSeen = sum((g) => g.igmpJoined);
    this.stats.igmpLeftOnly = sum((g) => g.igmpLeftOnly);
    this.stats.igmpUnseenAtStart = sum((g) => g.igmpUnseenAtStart);
  }

  // -------------------------------------------------------------------------------------------
  // Control input

  private onControl(msg: Buffer, from: Peer): void {
    if (this.finished) return;
    const h = decodeHeader(msg, this.hdr);
    if (!h) {
      this.stats.malformed++;
      return;
    }
    if (h.job !== this.session.job || h.kind === Kind.DATA || h.id >= this.targets.length) {
      this.stats.foreign++;
      return;
    }
    if (this.auth) {
      if ((h.flags & Flag.AUTH) === 0 || !this.auth.verify(msg, h.id)) {
        this.stats.spoofed++;
        return;
      }
    } else if (h.flags & Flag.AUTH) {
      this.stats.foreign++;
      return;
    }
    const t = this.targets[h.id]!;
    const now = performance.now();
    switch (h.kind) {
      case Kind.JOIN: {
        const groups = decodeJoinBody(msg, h);
        if (!groups) return void this.stats.malformed++;
        t.peer = { address: from.address, port: from.port };
        t.absent = false;
        if (h.seq >= t.joinVersion || t.joinVersion - h.seq > 0x7fffffff) {
          // A new membership (its first, or one a DONE or its window moved to) is an answer;
          // a repeated one, from a target that hears no JOIN_ACK, is not.
          if (h.seq !== t.joinVersion) t.answeredAt = now;
          t.joinVersion = h.seq;
          t.joined = new Set(groups);
        }
        this.sendControl(Kind.JOIN_ACK, ALL_GROUPS, h.seq, t.index);
        return;
      }
      case Kind.NACK: {
        const tx = this.groups.get(h.group);
        if (!tx || !tx.members.includes(t.index)) return void this.stats.foreign++;
        if (tx.state !== GState.Sending && tx.state !== GState.Repairing) return;
        if (tx.gaveUp.has(t.index)) return; // converge carries what it lacks
        this.stats.nacks++;
        let fresh = 0;
        const holdoff = Math.max(REPAIR_HOLDOFF_MIN_MS, 1.5 * this.rttMs);
        const limit = tx.nextSeq;
        const ok = decodeSeqSet(msg, h.bodyOffset, h.bodyLength, limit, (seq) => {
          this.stats.nackedSeqs++;
          const lastTo = tx.lastRepairTo[seq]!;
          if ((lastTo === -2 || lastTo === t.index) && now - tx.lastRepairAt[seq]! < holdoff) return;
          const w = tx.wantFirst[seq]!;
          if (w === -1) {
            tx.wantFirst[seq] = t.index;
            tx.queuedAt[seq] = now;
            tx.queue.push(seq);
          } else if (w !== t.index) tx.wantFirst[seq] = -2;
          const asked = tx.asked.get(t.index)!;
          asked[seq >>> 3]! |= 1 << (seq & 7);
          // Congestion signal: a target's first NACK of a datagram sent after the last rate
          // cut (losses of datagrams sent before it belong to the episode already answered).
          const mine = tx.nackedBy.get(t.index)!;
          if (!bit(mine, seq)) {
            mine[seq >>> 3]! |= 1 << (seq & 7);
            if (tx.sentAt[seq]! > this.bucket.lastBackoffAt) fresh += this.datagramWireBytes(tx, seq);
          }
        });
        if (!ok) return void this.stats.malformed++;
        if (fresh > 0) this.bucket.nacked(fresh, now, t.index);
        this.schedule(0);
        return;
      }
      case Kind.STATUS: {
        const tx = this.groups.get(h.group);
        const st = decodeStatusBody(msg, h);
        if (!tx || !st) return void this.stats.malformed++;
        if (!tx.members.includes(t.index)) return void this.stats.foreign++;
        tx.silent.set(t.index, 0);
        t.answeredAt = now;
        if (h.seq === tx.pollRound && tx.pollSentAt > 0) {
          const rtt = now - tx.pollSentAt;
          this.rttMs = 0.8 * this.rttMs + 0.2 * Math.min(rtt, 500);
        }
        if (st.missing === 0) tx.complete.add(t.index);
        else this.trackProgress(tx, t.index, h.seq, st.received);
        return;
      }
      case Kind.REPORT: {
        const tx = this.groups.get(h.group);
        const r = decodeReportHead(msg, h);
        if (!tx || !r) return void this.stats.malformed++;
        if (!tx.members.includes(t.index) || r.contents !== tx.g.contents.length) return void this.stats.foreign++;
        let entry = t.reportChunks.get(h.group);
        if (!entry || entry.count !== r.chunkCount) {
          entry = { count: r.chunkCount, got: new Uint8Array(r.chunkCount), gotN: 0, held: new Uint8Array(Math.ceil(r.contents / 8)) };
          t.reportChunks.set(h.group, entry);
        }
        const e = entry;
        if (e.got[h.seq]) return;
        const ok = decodeSeqSet(msg, r.setOffset, r.setLength, r.contents, (pos) => {
          e.held[pos >>> 3]! |= 1 << (pos & 7);
        });
        if (!ok) return void this.stats.malformed++;
        e.got[h.seq] = 1;
        e.gotN++;
        return;
      }
      case Kind.PROGRESS: {
        const tx = this.groups.get(h.group);
        const offer = decodeU32Body(msg, h);
        // A target cannot have read what was not sent.
        if (!tx || offer === null || h.seq > tx.nextSeq) return void this.stats.malformed++;
        if (!tx.members.includes(t.index)) return void this.stats.foreign++;
        this.stats.flow.progress++;
        t.paced = true;
        t.flowWindow = offer > 0 && offer < this.flowWindowBytes ? this.datagramsIn(offer) : this.flowWindow;
        if (offer > 0 && offer < (this.stats.flow.offeredBytes ?? Infinity)) this.stats.flow.offeredBytes = offer;
        t.answeredAt = now;
        if (t.progressGroup !== h.group) {
          t.progressGroup = h.group;
          t.progressSeq = 0;
        }
        if (h.seq > t.progressSeq) {
          t.progressSeq = h.seq;
          t.progressAt = now;
          if (this.flowHeldSince >= 0) this.schedule(0);
        }
        return;
      }
      case Kind.STATS: {
        const c = decodeStatsBody(msg, h);
        if (!c) return void this.stats.malformed++;
        t.counters = c;
        return;
      }
      case Kind.BYE:
        t.byeAcked = true;
        return;
      default:
        this.stats.foreign++;
    }
  }
}

/** Re-exported for callers that only import the sender. */
export { MAX_CONTROL_BYTES };

function insertSorted(list: number[], x: number): void {
  list.push(x);
  list.sort((a, b) => a - b);
}
