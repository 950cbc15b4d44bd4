/**
 * Scatter data-plane datagrams: a fixed 24-byte header, a body, and an optional authentication
 * trailer. Pure codec, no I/O.
 *
 * Header (big-endian):
 *
 *   0  u16 magic 0x564d ('VM')      12 u32 group
 *   2  u8  version (1)              16 u32 seq     DATA: datagram index in the group's send list
 *   3  u8  kind (Kind)                             control: round / chunk / request number
 *   4  u8  flags (Flag)             20 u32 id      DATA: first content id; control: target index
 *   5  u8  pages (DATA)
 *   6  u8  fragment index (DATA)
 *   7  u8  fragments per page (DATA, 1 = whole pages)
 *   8  u32 job
 *
 * DATA body, whole pages: the ids of pages 2..n (u32 each), then n pages of PAGE_SIZE bytes.
 * DATA body, fragment: bytes [index*fragBytes, ...) of one page, fragBytes = ceil(PAGE_SIZE/count).
 * Control bodies: see the encode functions below. Sets of sequence numbers (NACK, REPORT) are
 * sent as ranges or as a bitmap, whichever is smaller (`encodeSeqSet`).
 *
 * Trailer when flags has AUTH: nonce (u32 origin, u64 counter) and a 16-byte AES-GMAC tag over
 * every byte before the tag. Origin is SENDER_ORIGIN for the source, the target index for a
 * receiver, so that no two parties sharing the job key ever use the same nonce.
 *
 * Decoding bytes from the network never throws: every decode function returns null on bad input.
 */
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { PAGE_SIZE } from '../memory/page.js';

export const MAGIC = 0x564d;
export const VERSION = 1;
export const HEADER_BYTES = 24;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const AUTH_TRAILER_BYTES = NONCE_BYTES + TAG_BYTES;
/** IPv4 + UDP headers. */
export const IP_UDP_OVERHEAD = 28;
/**
 * What a datagram adds on an Ethernet link as interface counters (`ip -s link`) and tc count
 * it: IPv4 and UDP headers and the 14-byte Ethernet header (not preamble, FCS or gap). The
 * sender's pacing counts datagrams this way, so its ceiling is a link rate as tc sees it (every
 * datagram fits the MTU: datagramLayout).
 */
export const FRAME_OVERHEAD = IP_UDP_OVERHEAD + 14;
/** Origin field of the nonce for datagrams from the source. */
export const SENDER_ORIGIN = 0xffffffff;
/** `group` value meaning "every group" (REPORT_REQ). */
export const ALL_GROUPS = 0xffffffff;
/** Control datagrams stay below this so they are never IP-fragmented at MTU 1500. */
export const MAX_CONTROL_BYTES = 1400;
/** Largest number of whole pages in one datagram (id list and u8 count). */
export const MAX_PAGES_PER_DATAGRAM = 15;

export const Kind = {
  /** Source -> group (or one target, for a unicast repair): pages or one page fragment. */
  DATA: 1,
  /** Target -> source: the groups it has joined now (join confirm; also its hello). */
  JOIN: 2,
  /** Source -> target: membership update `seq` recorded. */
  JOIN_ACK: 3,
  /** Source -> target: the group's first pass is over, it has `seq` datagrams; answer with NACKs + STATUS. */
  POLL: 4,
  /** Target -> source: datagrams of a group it lacks (a set of sequence numbers). */
  NACK: 5,
  /** Target -> source: answer to POLL round `seq`: how many datagrams it still lacks. */
  STATUS: 6,
  /** Source -> target: the group is finished; leave it. */
  DONE: 7,
  /** Source -> target: report what you hold of `group` (or ALL_GROUPS). */
  REPORT_REQ: 8,
  /** Target -> source: chunk `seq` of the positions of `group`'s contents it holds. */
  REPORT: 9,
  /** Target -> source: its counters. */
  STATS: 10,
  /** Source -> target: the job is over; target -> source: acknowledged. */
  BYE: 11,
  /**
   * Target -> source, during a group's first pass: it has read the group's datagrams up to
   * `seq` (one past the highest sequence seen), and its socket buffer holds u32 body bytes of
   * them (0: no limit offered). Sent every few dozen datagrams; the source keeps its first pass
   * within that window of every member (flow control, multicast-sender.ts).
   */
  PROGRESS: 12,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];
const KIND_MAX = 12;

export const Flag = {
  /** An authentication trailer follows the body. */
  AUTH: 1,
  /** DATA: a retransmission (repair), not the first pass. */
  REPAIR: 2,
  /** DATA: sent by unicast to one target. */
  UNICAST: 4,
} as const;
const FLAGS_KNOWN = 7;

/** Decoded header, reusable across datagrams (hot path: decode into one object). */
export interface Header {
  version: number;
  kind: Kind;
  flags: number;
  pages: number;
  fragIndex: number;
  fragCount: number;
  job: number;
  group: number;
  seq: number;
  id: number;
  /** Body position and length in the datagram (excludes the trailer). */
  bodyOffset: number;
  bodyLength: number;
}

export function newHeader(): Header {
  return { version: 0, kind: Kind.DATA, flags: 0, pages: 0, fragIndex: 0, fragCount: 0, job: 0, group: 0, seq: 0, id: 0, bodyOffset: 0, bodyLength: 0 };
}

// ---------------------------------------------------------------------------------------------
// Datagram geometry

export interface DatagramLayout {
  mtu: number;
  auth: boolean;
  /** Whole pages per datagram; 1 when pages are fragmented. */
  pagesPerDatagram: number;
  /** Fragments per page; 1 for whole pages. */
  fragmentsPerPage: number;
  /** Bytes of every fragment but the last. */
  fragmentBytes: number;
  /** Largest DATA datagram (UDP payload). */
  maxDatagramBytes: number;
}

/**
 * The largest DATA datagram that fits the link MTU without IP fragmentation: whole pages when
 * one fits (up to `maxPages` of them), otherwise the fewest fragments per page.
 *
 * Never larger than the MTU. Letting the kernel IP-fragment larger datagrams was an opt-in layout
 * until 2026-12-04, when it was measured on `bench scatter`'s topology (4 receivers, MTU 9000,
 * 512 MiB): 8 pages per datagram (4 IP fragments) moved 235-277 MB/s against 199-230 for 2 pages
 * on clean links (less CPU per page on both ends), but with 1% loss on the receivers' links the
 * scatter stalled for good: every lost fragment leaves a reassembly queue that holds its
 * datagram's other fragments for ipfrag_time (30 s), those queues reached the namespace's
 * ipfrag_high_thresh (4 MiB) within a second, and from then on the kernel dropped every
 * fragment (IpReasmFails climbing, IpReasmOKs still). The option was removed.
 */
export function datagramLayout(mtu: number, auth: boolean, maxPages = 2): DatagramLayout {
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65535) throw new RangeError(`mtu must be an integer in [576, 65535], got ${mtu}`);
  if (!Number.isInteger(maxPages) || maxPages < 1 || maxPages > MAX_PAGES_PER_DATAGRAM) {
    throw new RangeError(`pages per datagram must be 1..${MAX_PAGES_PER_DATAGRAM}, got ${maxPages}`);
  }
  const overhead = HEADER_BYTES + (auth ? AUTH_TRAILER_BYTES : 0);
  const room = mtu - IP_UDP_OVERHEAD;
  if (room >= overhead + PAGE_SIZE) {
    const pages = Math.min(maxPages, Math.floor((room - overhead + 4) / (PAGE_SIZE + 4)));
    return { mtu, auth, pagesPerDatagram: pages, fragmentsPerPage: 1, fragmentBytes: PAGE_SIZE, maxDatagramBytes: overhead + pages * (PAGE_SIZE + 4) - 4 };
  }
  const count = Math.ceil(PAGE_SIZE / (room - overhead));
  const fragmentBytes = Math.ceil(PAGE_SIZE / count);
  return { mtu, auth, pagesPerDatagram: 1, fragmentsPerPage: count, fragmentBytes, maxDatagramBytes: overhead + fragmentBytes };
}

/** Offset and length in the page of fragment `index` of `count`. */
export function fragmentSpan(index: number, count: number): { offset: number; length: number } {
  const size = Math.ceil(PAGE_SIZE / count);
  const offset = index * size;
  return { offset, length: Math.max(0, Math.min(size, PAGE_SIZE - offset)) };
}

// ---------------------------------------------------------------------------------------------
// Header

/** Write a header at dst[off..off+24). */
export function writeHeader(
  dst: Buffer,
  off: number,
  kind: Kind,
  flags: number,
  job: number,
  group: number,
  seq: number,
  id: number,
  pages = 0,
  fragIndex = 0,
  fragCount = 0,
): void {
  dst.writeUInt16BE(MAGIC, off);
  dst[off + 2] = VERSION;
  dst[off + 3] = kind;
  dst[off + 4] = flags;
  dst[off + 5] = pages;
  dst[off + 6] = fragIndex;
  dst[off + 7] = fragCount;
  dst.writeUInt32BE(job >>> 0, off + 8);
  dst.writeUInt32BE(group >>> 0, off + 12);
  dst.writeUInt32BE(seq >>> 0, off + 16);
  dst.writeUInt32BE(id >>> 0, off + 20);
}

/**
 * Decode and validate the header of `buf` into `out`. Null when the datagram is not a
 * well-formed vmscatter datagram (wrong magic, version, kind, flags, length, DATA geometry).
 * Authentication is checked separately (`DatagramAuth.verify`).
 */
export function decodeHeader(buf: Uint8Array, out: Header = newHeader()): Header | null {
  const len = buf.length;
  if (len < HEADER_BYTES) return null;
  if (buf[0] !== MAGIC >>> 8 || buf[1] !== (MAGIC & 0xff)) return null;
  const version = buf[2]!;
  if (version !== VERSION) return null;
  const kind = buf[3]!;
  if (kind < 1 || kind > KIND_MAX) return null;
  const flags = buf[4]!;
  if ((flags & ~FLAGS_KNOWN) !== 0) return null;
  const trailer = (flags & Flag.AUTH) !== 0 ? AUTH_TRAILER_BYTES : 0;
  const bodyLength = len - HEADER_BYTES - trailer;
  if (bodyLength < 0) return null;
  const pages = buf[5]!;
  const fragIndex = buf[6]!;
  const fragCount = buf[7]!;
  if (kind === Kind.DATA) {
    if (fragCount < 1) return null;
    if (fragCount === 1) {
      if (pages < 1 || pages > MAX_PAGES_PER_DATAGRAM || fragIndex !== 0) return null;
      if (bodyLength !== pages * (PAGE_SIZE + 4) - 4) return null;
    } else {
      if (pages !== 1 || fragIndex >= fragCount) return null;
      const span = fragmentSpan(fragIndex, fragCount);
      if (span.length === 0 || bodyLength !== span.length) return null;
    }
  } else if (pages !== 0 || fragIndex !== 0 || fragCount !== 0 || (flags & (Flag.REPAIR | Flag.UNICAST)) !== 0) {
    return null;
  }
  out.version = version;
  out.kind = kind as Kind;
  out.flags = flags;
  out.pages = pages;
  out.fragIndex = fragIndex;
  out.fragCount = fragCount;
  out.job = readU32(buf, 8);
  out.group = readU32(buf, 12);
  out.seq = readU32(buf, 16);
  out.id = readU32(buf, 20);
  out.bodyOffset = HEADER_BYTES;
  out.bodyLength = bodyLength;
  return out;
}

/**
 * Length of the first datagram in `buf`, which may hold several (a coalesced read, UDP GRO: all
 * as long as the first but the last). Only DATA carries its length in its header (page count,
 * fragment, AUTH flag); for anything else, or a header that makes no sense, the whole buffer,
 * which decodeHeader then judges. Between 1 and buf.length; never throws.
 */
export function leadingDatagramLength(buf: Uint8Array): number {
  const len = buf.length;
  if (len < HEADER_BYTES || buf[3] !== Kind.DATA) return Math.max(1, len);
  const trailer = (buf[4]! & Flag.AUTH) !== 0 ? AUTH_TRAILER_BYTES : 0;
  const pages = buf[5]!;
  const fragCount = buf[7]!;
  let body: number;
  if (fragCount === 1 && pages >= 1 && pages <= MAX_PAGES_PER_DATAGRAM) body = pages * (PAGE_SIZE + 4) - 4;
  else if (fragCount > 1 && buf[6]! < fragCount) body = fragmentSpan(buf[6]!, fragCount).length;
  else return len;
  if (body <= 0) return len;
  const n = HEADER_BYTES + body + trailer;
  return n <= len ? n : len;
}

function readU32(b: Uint8Array, off: number): number {
  return ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
}

function readU16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

/** Content id of page `i` of a whole-page DATA datagram whose header is `h`. */
export function dataPageId(buf: Uint8Array, h: Header, i: number): number {
  return i === 0 ? h.id : readU32(buf, HEADER_BYTES + 4 * (i - 1));
}

/** Offset of page `i` (or of the fragment) in a DATA datagram. */
export function dataPageOffset(h: Header, i: number): number {
  return h.fragCount > 1 ? HEADER_BYTES : HEADER_BYTES + 4 * (h.pages - 1) + i * PAGE_SIZE;
}

// ---------------------------------------------------------------------------------------------
// Sets of sequence numbers: ranges or bitmap

export const SeqSetEncoding = { RANGES: 0, BITMAP: 1 } as const;
/** enc u8, base u32, span u32 */
const SET_HEAD = 9;

/**
 * Encode the members of [base, limit) for which `isMember(i)` holds, as compactly as possible,
 * in at most `maxBytes` bytes. The encoded window [base, end) may stop short of `limit` when
 * the set does not fit; encode the rest in another message starting at `end`.
 */
export function encodeSeqSet(isMember: (i: number) => boolean, base: number, limit: number, maxBytes: number): { bytes: Buffer; end: number; count: number } {
  if (maxBytes < SET_HEAD + 2 + 8) throw new RangeError(`maxBytes too small for a set: ${maxBytes}`);
  const maxRanges = Math.min(0xffff, Math.floor((maxBytes - SET_HEAD - 2) / 8));
  const starts: number[] = [];
  const counts: number[] = [];
  let rangesEnd = limit;
  let inRange = false;
  for (let i = base; i < limit; i++) {
    if (isMember(i)) {
      if (!inRange) {
        if (starts.length === maxRanges) {
          rangesEnd = i;
          break;
        }
        starts.push(i);
        counts.push(1);
        inRange = true;
      } else counts[counts.length - 1]!++;
    } else inRange = false;
  }
  const bitmapEnd = Math.min(limit, base + (maxBytes - SET_HEAD) * 8);
  const rangesBytes = SET_HEAD + 2 + 8 * starts.length;
  const bitmapBytes = SET_HEAD + Math.ceil((bitmapEnd - base) / 8);
  const useRanges = rangesEnd > bitmapEnd || (rangesEnd === bitmapEnd && rangesBytes <= bitmapBytes);
  if (useRanges) {
    const out = Buffer.alloc(rangesBytes);
    out[0] = SeqSetEncoding.RANGES;
    out.writeUInt32BE(base >>> 0, 1);
    out.writeUInt32BE((rangesEnd - base) >>> 0, 5);
    out.writeUInt16BE(starts.length, 9);
    let n = 0;
    for (let r = 0; r < starts.length; r++) {
      out.writeUInt32BE((starts[r]! - base) >>> 0, 11 + 8 * r);
      out.writeUInt32BE(counts[r]! >>> 0, 15 + 8 * r);
      n += counts[r]!;
    }
    return { bytes: out, end: rangesEnd, count: n };
  }
  const out = Buffer.alloc(bitmapBytes);
  out[0] = SeqSetEncoding.BITMAP;
  out.writeUInt32BE(base >>> 0, 1);
  out.writeUInt32BE((bitmapEnd - base) >>> 0, 5);
  let n = 0;
  for (let i = base; i < bitmapEnd; i++) {
    if (isMember(i)) {
      const b = i - base;
      out[SET_HEAD + (b >>> 3)]! |= 1 << (b & 7);
      n++;
    }
  }
  return { bytes: out, end: bitmapEnd, count: n };
}

/**
 * Encode the ascending sequence numbers list[from..to) as ranges or a bitmap, whichever covers
 * more of them within `maxBytes` (and, covering as many, is smaller). Returns the index of the
 * first element left for another message. Cheaper than `encodeSeqSet` for sparse sets.
 */
export function encodeSeqList(list: ArrayLike<number>, from: number, to: number, maxBytes: number): { bytes: Buffer; next: number } {
  if (maxBytes < SET_HEAD + 2 + 8) throw new RangeError(`maxBytes too small for a set: ${maxBytes}`);
  if (from >= to) throw new RangeError('empty list');
  const base = list[from]!;
  const maxRanges = Math.min(0xffff, Math.floor((maxBytes - SET_HEAD - 2) / 8));
  // Ranges: runs of consecutive numbers.
  let runs = 0;
  let rangesNext = to;
  for (let k = from; k < to; k++) {
    if (k === from || list[k]! !== list[k - 1]! + 1) {
      if (runs === maxRanges) {
        rangesNext = k;
        break;
      }
      runs++;
    }
  }
  // Bitmap: everything below base + bits.
  const maxBits = (maxBytes - SET_HEAD) * 8;
  let bitmapNext = from;
  while (bitmapNext < to && list[bitmapNext]! - base < maxBits) bitmapNext++;
  const rangesBytes = SET_HEAD + 2 + 8 * runs;
  const span = list[bitmapNext - 1]! - base + 1;
  const bitmapBytes = SET_HEAD + Math.ceil(span / 8);
  if (rangesNext > bitmapNext || (rangesNext === bitmapNext && rangesBytes <= bitmapBytes)) {
    const out = Buffer.alloc(SET_HEAD + 2 + 8 * runs);
    out[0] = SeqSetEncoding.RANGES;
    out.writeUInt32BE(base >>> 0, 1);
    out.writeUInt32BE((list[rangesNext - 1]! - base + 1) >>> 0, 5);
    out.writeUInt16BE(runs, 9);
    let r = -1;
    for (let k = from; k < rangesNext; k++) {
      if (k === from || list[k]! !== list[k - 1]! + 1) {
        r++;
        out.writeUInt32BE((list[k]! - base) >>> 0, 11 + 8 * r);
        out.writeUInt32BE(1, 15 + 8 * r);
      } else out.writeUInt32BE(out.readUInt32BE(15 + 8 * r) + 1, 15 + 8 * r);
    }
    return { bytes: out, next: rangesNext };
  }
  const out = Buffer.alloc(bitmapBytes);
  out[0] = SeqSetEncoding.BITMAP;
  out.writeUInt32BE(base >>> 0, 1);
  out.writeUInt32BE(span >>> 0, 5);
  for (let k = from; k < bitmapNext; k++) {
    const b = list[k]! - base;
    out[SET_HEAD + (b >>> 3)]! |= 1 << (b & 7);
  }
  return { bytes: out, next: bitmapNext };
}

export interface SeqSetView {
  base: number;
  span: number;
}

/**
 * Validate a set at buf[off..off+len) and call `visit` for each member below `limit`.
 * Null (and no visit at all) when the encoding is malformed.
 */
export function decodeSeqSet(buf: Uint8Array, off: number, len: number, limit: number, visit: (seq: number) => void): SeqSetView | null {
  if (len < SET_HEAD || off < 0 || off + len > buf.length) return null;
  const enc = buf[off]!;
  const base = readU32(buf, off + 1);
  const span = readU32(buf, off + 5);
  if (base + span > 0xffffffff) return null;
  if (enc === SeqSetEncoding.RANGES) {
    if (len < SET_HEAD + 2) return null;
    const n = readU16(buf, off + 9);
    if (len !== SET_HEAD + 2 + 8 * n) return null;
    let prevEnd = 0;
    for (let r = 0; r < n; r++) {
      const s = readU32(buf, off + 11 + 8 * r);
      const c = readU32(buf, off + 15 + 8 * r);
      if (c === 0 || s < prevEnd || s + c > span) return null;
      prevEnd = s + c;
    }
    const stop = Math.min(limit, base + span);
    for (let r = 0; r < n; r++) {
      const s = base + readU32(buf, off + 11 + 8 * r);
      const e = Math.min(stop, s + readU32(buf, off + 15 + 8 * r));
      for (let i = s; i < e; i++) visit(i);
    }
    return { base, span };
  }
  if (enc === SeqSetEncoding.BITMAP) {
    if (len !== SET_HEAD + Math.ceil(span / 8)) return null;
    const stop = Math.min(limit, base + span);
    for (let i = base; i < stop; i++) {
      const b = i - base;
      if ((buf[off + SET_HEAD + (b >>> 3)]! & (1 << (b & 7))) !== 0) visit(i);
    }
    return { base, span };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Control messages

export interface Control {
  kind: Kind;
  job: number;
  group: number;
  seq: number;
  /** Target index (control messages to or from a target). */
  target: number;
  body: Buffer;
}

/** Build a control datagram (body already encoded); auth trailer appended when `auth` is given. */
export function encodeControl(kind: Kind, job: number, group: number, seq: number, target: number, body: Buffer | undefined, auth?: DatagramAuth): Buffer {
  const bodyLen = body ? body.length : 0;
  const out = Buffer.allocUnsafe(HEADER_BYTES + bodyLen + (auth ? AUTH_TRAILER_BYTES : 0));
  writeHeader(out, 0, kind, auth ? Flag.AUTH : 0, job, group, seq, target);
  if (body) body.copy(out, HEADER_BYTES);
  if (auth) auth.sealInPlace(out);
  return out;
}

/** JOIN body: u16 count, then group ids (u32). */
export function encodeJoinBody(groups: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(2 + 4 * groups.length);
  b.writeUInt16BE(groups.length, 0);
  for (let i = 0; i < groups.length; i++) b.writeUInt32BE(groups[i]! >>> 0, 2 + 4 * i);
  return b;
}

export function decodeJoinBody(buf: Uint8Array, h: Header): number[] | null {
  if (h.bodyLength < 2) return null;
  const n = readU16(buf, h.bodyOffset);
  if (h.bodyLength !== 2 + 4 * n) return null;
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(readU32(buf, h.bodyOffset + 2 + 4 * i));
  return out;
}

/** STATUS body: u32 missing, u32 received. */
export function encodeStatusBody(missing: number, received: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(missing >>> 0, 0);
  b.writeUInt32BE(received >>> 0, 4);
  return b;
}

export function decodeStatusBody(buf: Uint8Array, h: Header): { missing: number; received: number } | null {
  if (h.bodyLength !== 8) return null;
  return { missing: readU32(buf, h.bodyOffset), received: readU32(buf, h.bodyOffset + 4) };
}

/** REPORT body: u32 chunk count, u32 contents in the group, then a set of held positions. */
export function encodeReportBody(chunkCount: number, contents: number, set: Buffer): Buffer {
  const b = Buffer.allocUnsafe(8 + set.length);
  b.writeUInt32BE(chunkCount >>> 0, 0);
  b.writeUInt32BE(contents >>> 0, 4);
  set.copy(b, 8);
  return b;
}

export function decodeReportHead(buf: Uint8Array, h: Header): { chunkCount: number; contents: number; setOffset: number; setLength: number } | null {
  if (h.bodyLength < 8 + SET_HEAD) return null;
  const chunkCount = readU32(buf, h.bodyOffset);
  const contents = readU32(buf, h.bodyOffset + 4);
  if (chunkCount === 0 || h.seq >= chunkCount) return null;
  return { chunkCount, contents, setOffset: h.bodyOffset + 8, setLength: h.bodyLength - 8 };
}

/** A target's counters, sent in STATS. */
export interface ReceiverCounters {
  datagrams: number;
  bytes: number;
  pages: number;
  duplicates: number;
  repairs: number;
  malformed: number;
  foreign: number;
  spoofed: number;
  nacksSent: number;
  nackedSeqs: number;
  joins: number;
  leaves: number;
  held: number;
  /** Wall-clock ms (Date.now) of the first DATA datagram and of the moment every group was complete (0 = never). */
  firstDataAt: number;
  completeAt: number;
}

export const RECEIVER_COUNTER_KEYS = [
  'datagrams', 'bytes', 'pages', 'duplicates', 'repairs', 'malformed', 'foreign', 'spoofed',
  'nacksSent', 'nackedSeqs', 'joins', 'leaves', 'held', 'firstDataAt', 'completeAt',
] as const satisfies readonly (keyof ReceiverCounters)[];

export function encodeStatsBody(c: ReceiverCounters): Buffer {
  const b = Buffer.allocUnsafe(8 * RECEIVER_COUNTER_KEYS.length);
  RECEIVER_COUNTER_KEYS.forEach((k, i) => b.writeDoubleBE(c[k], 8 * i));
  return b;
}

export function decodeStatsBody(buf: Uint8Array, h: Header): ReceiverCounters | null {
  if (h.bodyLength !== 8 * RECEIVER_COUNTER_KEYS.length) return null;
  const view = new DataView(buf.buffer, buf.byteOffset + h.bodyOffset, h.bodyLength);
  const out = {} as ReceiverCounters;
  for (let i = 0; i < RECEIVER_COUNTER_KEYS.length; i++) {
    const v = view.getFloat64(8 * i);
    if (!Number.isFinite(v) || v < 0) return null;
    out[RECEIVER_COUNTER_KEYS[i]!] = v;
  }
  return out;
}

/** POLL body: u32 contents in the group (lets a target check the plan agrees). */
export function encodeU32Body(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

export function decodeU32Body(buf: Uint8Array, h: Header): number | null {
  if (h.bodyLength !== 4) return null;
  return readU32(buf, h.bodyOffset);
}

// ---------------------------------------------------------------------------------------------
// Authentication

/**
 * Per-packet authentication with the job's key: AES-GMAC (AES-GCM over associated data only),
 * 16-byte tag. Each party uses its own origin in the nonce and a counter starting at a random
 * value, so nonces never repeat under one key. About 7 us per 8 KiB datagram here: optional.
 */
export class DatagramAuth {
  private readonly key: KeyObject;
  private readonly algo: 'aes-128-gcm' | 'aes-256-gcm';
  private readonly nonce = Buffer.alloc(NONCE_BYTES);
  private counterHi: number;
  private counterLo: number;

  constructor(key: Buffer, readonly origin: number) {
    if (key.length !== 16 && key.length !== 32) throw new RangeError(`scatter auth key must be 16 or 32 bytes, got ${key.length}`);
    this.algo = key.length === 16 ? 'aes-128-gcm' : 'aes-256-gcm';
    this.key = createSecretKey(key);
    const r = randomBytes(8);
    this.counterHi = r.readUInt32BE(0);
    this.counterLo = r.readUInt32BE(4);
  }

  /** Fill `trailer` (AUTH_TRAILER_BYTES) for a datagram made of `parts` + trailer; `parts[0]` starts with a header carrying Flag.AUTH. */
  seal(parts: readonly Uint8Array[], trailer: Buffer): void {
    this.nextNonce(trailer);
    const c = createCipheriv(this.algo, this.key, trailer.subarray(0, NONCE_BYTES));
    for (const p of parts) c.setAAD(p);
    c.setAAD(trailer.subarray(0, NONCE_BYTES));
    c.final();
    c.getAuthTag().copy(trailer, NONCE_BYTES);
  }

  /** Seal a complete datagram whose last AUTH_TRAILER_BYTES are reserved for the trailer. */
  sealInPlace(buf: Buffer): void {
    const t = buf.subarray(buf.length - AUTH_TRAILER_BYTES);
    this.nextNonce(t);
    const c = createCipheriv(this.algo, this.key, t.subarray(0, NONCE_BYTES));
    c.setAAD(buf.subarray(0, buf.length - TAG_BYTES));
    c.final();
    c.getAuthTag().copy(buf, buf.length - TAG_BYTES);
  }

  /**
   * True when `buf` carries a valid trailer made with this key by `expectedOrigin`
   * (SENDER_ORIGIN or a target index). Never throws.
   */
  verify(buf: Uint8Array, expectedOrigin: number): boolean {
    if (buf.length < HEADER_BYTES + AUTH_TRAILER_BYTES) return false;
    const t = buf.length - AUTH_TRAILER_BYTES;
    if (readU32(buf, t) !== expectedOrigin >>> 0) return false;
    try {
      const d = createDecipheriv(this.algo, this.key, buf.subarray(t, t + NONCE_BYTES));
      d.setAAD(buf.subarray(0, buf.length - TAG_BYTES));
      d.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
      d.final();
      return true;
    } catch {
      return false;
    }
  }

  private nextNonce(t: Buffer): void {
    this.counterLo = (this.counterLo + 1) >>> 0;
    if (this.counterLo === 0) this.counterHi = (this.counterHi + 1) >>> 0;
    t.writeUInt32BE(this.origin >>> 0, 0);
    t.writeUInt32BE(this.counterHi, 4);
    t.writeUInt32BE(this.counterLo, 8);
  }
}

/** Parse a hex or base64 key string (16 or 32 bytes). Null when it is neither. */
export function parseAuthKey(s: string): Buffer | null {
  const hex = /^[0-9a-fA-F]+$/.test(s) ? Buffer.from(s, 'hex') : null;
  if (hex && (hex.length === 16 || hex.length === 32) && s.length === hex.length * 2) return hex;
  const b64 = Buffer.from(s, 'base64');
  return b64.length === 16 || b64.length === 32 ? b64 : null;
}
