import { makeRng as prng } from '../../src/rng.js';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../src/memory/page.js';
import {
  AUTH_TRAILER_BYTES,
  DatagramAuth,
  Flag,
  HEADER_BYTES,
  Kind,
  SENDER_ORIGIN,
  dataPageId,
  dataPageOffset,
  datagramLayout,
  decodeHeader,
  decodeJoinBody,
  decodeReportHead,
  decodeSeqSet,
  decodeStatsBody,
  decodeStatusBody,
  decodeU32Body,
  encodeControl,
  encodeJoinBody,
  encodeReportBody,
  encodeSeqList,
  encodeSeqSet,
  encodeStatsBody,
  encodeStatusBody,
  encodeU32Body,
  fragmentSpan,
  leadingDatagramLength,
  newHeader,
  parseAuthKey,
  writeHeader,
  type ReceiverCounters,
} from '../../src/wire/datagram.js';


function page(fill: number): Buffer {
  return Buffer.alloc(PAGE_SIZE, fill);
}

/** A whole-page DATA datagram as the sender builds it. */
function dataDatagram(ids: number[], opts: { job?: number; group?: number; seq?: number; auth?: DatagramAuth } = {}): Buffer {
  const hdr = Buffer.alloc(HEADER_BYTES + 4 * (ids.length - 1));
  writeHeader(hdr, 0, Kind.DATA, opts.auth ? Flag.AUTH : 0, opts.job ?? 7, opts.group ?? 3, opts.seq ?? 11, ids[0]!, ids.length, 0, 1);
  ids.slice(1).forEach((id, i) => hdr.writeUInt32BE(id, HEADER_BYTES + 4 * i));
  const parts = [hdr, ...ids.map((id) => page(id & 0xff))];
  if (opts.auth) {
    const t = Buffer.alloc(AUTH_TRAILER_BYTES);
    opts.auth.seal(parts, t);
    parts.push(t);
  }
  return Buffer.concat(parts);
}

describe('datagram layout', () => {
  it('puts two whole pages in a jumbo datagram and fragments pages at MTU 1500', () => {
    const jumbo = datagramLayout(9000, false);
    expect(jumbo).toMatchObject({ pagesPerDatagram: 2, fragmentsPerPage: 1, maxDatagramBytes: 24 + 4 + 2 * PAGE_SIZE });
    expect(datagramLayout(9000, true).maxDatagramBytes).toBe(24 + 4 + 2 * PAGE_SIZE + AUTH_TRAILER_BYTES);
    expect(datagramLayout(9000, true).maxDatagramBytes).toBeLessThanOrEqual(9000 - 28);
    const small = datagramLayout(1500, true);
    expect(small.pagesPerDatagram).toBe(1);
    expect(small.fragmentsPerPage).toBe(3);
    expect(small.maxDatagramBytes).toBeLessThanOrEqual(1500 - 28);
    // Fragments cover the page exactly.
    let covered = 0;
    for (let i = 0; i < small.fragmentsPerPage; i++) covered += fragmentSpan(i, small.fragmentsPerPage).length;
    expect(covered).toBe(PAGE_SIZE);
    expect(datagramLayout(9000, false, 8).pagesPerDatagram).toBe(2);
    // Never past the MTU: more pages than fit are not asked of the kernel's IP fragmentation.
    expect(datagramLayout(9000, false, 8).maxDatagramBytes).toBeLessThanOrEqual(9000 - 28);
    expect(() => datagramLayout(100, false)).toThrow(RangeError);
  });
});

describe('datagram header', () => {
  it('round-trips a whole-page DATA datagram', () => {
    const d = dataDatagram([100, 205], { job: 0xdeadbeef, group: 9, seq: 4 });
    const h = decodeHeader(d);
    expect(h).not.toBeNull();
    expect(h).toMatchObject({ kind: Kind.DATA, job: 0xdeadbeef, group: 9, seq: 4, id: 100, pages: 2, fragCount: 1 });
    expect(dataPageId(d, h!, 0)).toBe(100);
    expect(dataPageId(d, h!, 1)).toBe(205);
    expect(d[dataPageOffset(h!, 1)]).toBe(205 & 0xff);
  });

  it('round-trips a fragment', () => {
    const span = fragmentSpan(2, 3);
    const d = Buffer.alloc(HEADER_BYTES + span.length);
    writeHeader(d, 0, Kind.DATA, 0, 1, 2, 3, 42, 1, 2, 3);
    const h = decodeHeader(d);
    expect(h).toMatchObject({ fragIndex: 2, fragCount: 3, id: 42, bodyLength: span.length });
  });

  it('rejects malformed datagrams', () => {
    const good = dataDatagram([1, 2]);
    expect(decodeHeader(good)).not.toBeNull();
    const bad: Buffer[] = [];
    bad.push(good.subarray(0, 10)); // short
    bad.push(good.subarray(0, good.length - 1)); // length does not match pages
    for (const [off, v] of [
      [0, 0x00], // magic
      [2, 9], // version
      [3, 0], // kind
      [3, 99],
      [4, 0x80], // unknown flag
      [5, 0], // no pages
      [5, 16], // too many pages
      [6, 1], // fragment index on whole pages
    ] as const) {
      const b = Buffer.from(good);
      b[off] = v;
      bad.push(b);
    }
    const ctl = encodeControl(Kind.NACK, 1, 2, 3, 4, Buffer.alloc(4));
    const withRepair = Buffer.from(ctl);
    withRepair[4] = Flag.REPAIR;
    bad.push(withRepair);
    const frag = Buffer.alloc(HEADER_BYTES + 100);
    writeHeader(frag, 0, Kind.DATA, 0, 1, 2, 3, 4, 1, 3, 3); // index >= count
    bad.push(frag);
    for (const b of bad) expect(decodeHeader(b)).toBeNull();
  });

  it('decodes control messages and their bodies', () => {
    const join = encodeControl(Kind.JOIN, 5, 0xffffffff, 2, 1, encodeJoinBody([3, 7, 9]));
    const h = decodeHeader(join)!;
    expect(h).toMatchObject({ kind: Kind.JOIN, job: 5, seq: 2, id: 1 });
    expect(decodeJoinBody(join, h)).toEqual([3, 7, 9]);
    const st = encodeControl(Kind.STATUS, 5, 1, 1, 0, encodeStatusBody(12, 500));
    expect(decodeStatusBody(st, decodeHeader(st)!)).toEqual({ missing: 12, received: 500 });
    const poll = encodeControl(Kind.POLL, 5, 1, 1, 0, encodeU32Body(77));
    expect(decodeU32Body(poll, decodeHeader(poll)!)).toBe(77);
    const counters: ReceiverCounters = {
      datagrams: 1, bytes: 2, pages: 3, duplicates: 4, repairs: 5, malformed: 6, foreign: 7, spoofed: 8,
      nacksSent: 9, nackedSeqs: 10, joins: 11, leaves: 12, held: 13, firstDataAt: 1.5e12, completeAt: 1.6e12,
    };
    const stats = encodeControl(Kind.STATS, 5, 0, 0, 0, encodeStatsBody(counters));
    expect(decodeStatsBody(stats, decodeHeader(stats)!)).toEqual(counters);
    const set = encodeSeqSet((i) => i % 3 === 0, 0, 30, 200);
    const rep = encodeControl(Kind.REPORT, 5, 1, 0, 2, encodeReportBody(1, 30, set.bytes));
    const rh = decodeReportHead(rep, decodeHeader(rep)!)!;
    expect(rh).toMatchObject({ chunkCount: 1, contents: 30 });
    const seen: number[] = [];
    expect(decodeSeqSet(rep, rh.setOffset, rh.setLength, 30, (i) => seen.push(i))).not.toBeNull();
    expect(seen).toEqual([0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
    // Body decoders refuse wrong sizes.
    expect(decodeJoinBody(st, decodeHeader(st)!)).toBeNull();
    expect(decodeStatsBody(st, decodeHeader(st)!)).toBeNull();
  });
});

describe('coalesced reads (UDP GRO)', () => {
  it('finds where the first datagram ends, from its DATA header', () => {
    const key = randomBytes(16);
    const auth = new DatagramAuth(key, SENDER_ORIGIN);
    const full = [dataDatagram([1, 2], { seq: 0, auth }), dataDatagram([3, 4], { seq: 1, auth }), dataDatagram([5, 6], { seq: 2, auth })];
    const last = dataDatagram([7], { seq: 3, auth });
    const read = Buffer.concat([...full, last]);
    const first = leadingDatagramLength(read);
    expect(first).toBe(full[0]!.length);
    // Split as the receiver does: every piece is one of the datagrams sent, intact.
    const pieces: Buffer[] = [];
    for (let off = 0; off < read.length; off += first) pieces.push(read.subarray(off, Math.min(off + first, read.length)));
    expect(pieces).toEqual([...full, last]);
    const h = newHeader();
    for (const p of pieces) {
      expect(decodeHeader(p, h)).not.toBeNull();
      expect(new DatagramAuth(key, 0).verify(p, SENDER_ORIGIN)).toBe(true);
    }
    // A fragment's length comes from its index and count; the last fragment of a page is shorter.
    const frag = (index: number): Buffer => {
      const span = fragmentSpan(index, 3);
      const b = Buffer.alloc(HEADER_BYTES + span.length);
      writeHeader(b, 0, Kind.DATA, 0, 7, 3, index, 9, 1, index, 3);
      return b;
    };
    expect(leadingDatagramLength(Buffer.concat([frag(0), frag(1), frag(2)]))).toBe(frag(0).length);
    expect(leadingDatagramLength(frag(2))).toBe(frag(2).length);
    // Anything but DATA, and DATA longer than the read, count as the whole read.
    const poll = encodeControl(Kind.POLL, 1, 2, 3, 4, encodeU32Body(5));
    expect(leadingDatagramLength(Buffer.concat([poll, poll]))).toBe(2 * poll.length);
    expect(leadingDatagramLength(full[0]!.subarray(0, 100))).toBe(100);
    expect(leadingDatagramLength(Buffer.alloc(0))).toBe(1);
  });
});

describe('sequence sets', () => {
  it('uses ranges for runs and a bitmap for scattered members, and round-trips both', () => {
    const runs = (i: number): boolean => (i >= 100 && i < 400) || (i >= 1000 && i < 1010);
    const r = encodeSeqSet(runs, 0, 5000, 1300);
    expect(r.bytes[0]).toBe(0); // ranges
    expect(r.end).toBe(5000);
    expect(r.count).toBe(310);
    const scattered = (i: number): boolean => i % 3 === 1;
    const b = encodeSeqSet(scattered, 0, 5000, 1300);
    expect(b.bytes[0]).toBe(1); // bitmap
    for (const [enc, pred] of [
      [r, runs],
      [b, scattered],
    ] as const) {
      const got: number[] = [];
      expect(decodeSeqSet(enc.bytes, 0, enc.bytes.length, 1e9, (i) => got.push(i))).not.toBeNull();
      const want: number[] = [];
      for (let i = 0; i < enc.end; i++) if (pred(i)) want.push(i);
      expect(got).toEqual(want);
    }
  });

  it('splits a large set into windows that together cover everything', () => {
    const rnd = prng(5);
    const member = new Uint8Array(100_000).map(() => (rnd() < 0.05 ? 1 : 0));
    const got: number[] = [];
    let base = 0;
    let messages = 0;
    while (base < member.length) {
      const s = encodeSeqSet((i) => member[i] === 1, base, member.length, 1300);
      expect(s.bytes.length).toBeLessThanOrEqual(1300);
      expect(s.end).toBeGreaterThan(base);
      decodeSeqSet(s.bytes, 0, s.bytes.length, member.length, (i) => got.push(i));
      base = s.end;
      messages++;
    }
    expect(messages).toBeGreaterThan(1);
    expect(got).toEqual([...member.keys()].filter((i) => member[i] === 1));
  });

  it('encodes sorted lists compactly, in as many messages as needed', () => {
    const rnd = prng(11);
    for (const density of [0.001, 0.05, 0.5, 0.97]) {
      const list: number[] = [];
      for (let i = 0; i < 60_000; i++) if (rnd() < density) list.push(i + 1000);
      const got: number[] = [];
      for (let from = 0; from < list.length; ) {
        const s = encodeSeqList(list, from, list.length, 1300);
        expect(s.bytes.length).toBeLessThanOrEqual(1300);
        expect(s.next).toBeGreaterThan(from);
        expect(decodeSeqSet(s.bytes, 0, s.bytes.length, 1e9, (i) => got.push(i))).not.toBeNull();
        from = s.next;
      }
      expect(got).toEqual(list);
    }
  });

  it('clips to the limit and rejects malformed sets without visiting', () => {
    const s = encodeSeqSet(() => true, 10, 50, 200);
    const got: number[] = [];
    decodeSeqSet(s.bytes, 0, s.bytes.length, 20, (i) => got.push(i));
    expect(got).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    // Overlapping ranges.
    const bad = Buffer.alloc(9 + 2 + 16);
    bad[0] = 0;
    bad.writeUInt32BE(0, 1);
    bad.writeUInt32BE(100, 5);
    bad.writeUInt16BE(2, 9);
    bad.writeUInt32BE(10, 11);
    bad.writeUInt32BE(20, 15);
    bad.writeUInt32BE(15, 19);
    bad.writeUInt32BE(5, 23);
    let visits = 0;
    expect(decodeSeqSet(bad, 0, bad.length, 1000, () => visits++)).toBeNull();
    // A range beyond the span.
    bad.writeUInt32BE(90, 19);
    bad.writeUInt32BE(20, 23);
    expect(decodeSeqSet(bad, 0, bad.length, 1000, () => visits++)).toBeNull();
    // Unknown encoding, wrong bitmap length.
    const bm = Buffer.from(encodeSeqSet((i) => i % 2 === 0, 0, 100, 200).bytes);
    expect(decodeSeqSet(bm, 0, bm.length - 1, 1000, () => visits++)).toBeNull();
    bm[0] = 7;
    expect(decodeSeqSet(bm, 0, bm.length, 1000, () => visits++)).toBeNull();
    expect(visits).toBe(0);
  });
});

describe('datagram authentication', () => {
  const key = randomBytes(16);

  it('accepts what the key holder sealed and nothing else', () => {
    const sender = new DatagramAuth(key, SENDER_ORIGIN);
    const receiver = new DatagramAuth(key, 0);
    const d = dataDatagram([1, 2], { auth: sender });
    expect(decodeHeader(d)!.flags & Flag.AUTH).toBe(Flag.AUTH);
    expect(receiver.verify(d, SENDER_ORIGIN)).toBe(true);
    // Any flipped byte, header, page or trailer, breaks it.
    for (const off of [0, 4, 8, 16, 20, 30, 4000, d.length - 20, d.length - 1]) {
      const t = Buffer.from(d);
      t[off]! ^= 0x01;
      expect(receiver.verify(t, SENDER_ORIGIN)).toBe(false);
    }
    // Another origin, another key.
    expect(receiver.verify(d, 0)).toBe(false);
    expect(new DatagramAuth(randomBytes(16), 1).verify(d, SENDER_ORIGIN)).toBe(false);
    // Control messages, sealed in place by a target.
    const ctl = encodeControl(Kind.NACK, 7, 1, 0, 3, Buffer.alloc(20, 1), new DatagramAuth(key, 3));
    expect(sender.verify(ctl, 3)).toBe(true);
    expect(sender.verify(ctl, 2)).toBe(false);
    expect(sender.verify(Buffer.alloc(10), 3)).toBe(false);
  });

  it('never reuses a nonce', () => {
    const a = new DatagramAuth(key, SENDER_ORIGIN);
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const t = Buffer.alloc(AUTH_TRAILER_BYTES);
      a.seal([Buffer.alloc(24)], t);
      seen.add(t.subarray(0, 12).toString('hex'));
    }
    expect(seen.size).toBe(1000);
  });

  it('parses keys in hex only at 16 or 32 bytes', () => {
    expect(parseAuthKey('00'.repeat(16))?.length).toBe(16);
    expect(parseAuthKey('ab'.repeat(32))?.length).toBe(32);
    expect(parseAuthKey('00'.repeat(10))).toBeNull();
  });
});

describe('fuzz: decoding bytes from the network never throws', () => {
  it('survives random and mutated datagrams', () => {
    const rnd = prng(20130317);
    const auth = new DatagramAuth(randomBytes(16), 0);
    const seeds: Buffer[] = [
      dataDatagram([1, 2]),
      dataDatagram([9]),
      dataDatagram([3, 4], { auth: new DatagramAuth(randomBytes(16), SENDER_ORIGIN) }),
      encodeControl(Kind.JOIN, 1, 2, 3, 4, encodeJoinBody([1, 2, 3])),
      encodeControl(Kind.NACK, 1, 2, 3, 4, encodeSeqSet((i) => i % 5 === 0, 0, 3000, 1300).bytes),
      encodeControl(Kind.NACK, 1, 2, 3, 4, encodeSeqSet((i) => i < 50 || i > 900, 0, 1000, 1300).bytes),
      encodeControl(Kind.REPORT, 1, 2, 0, 4, encodeReportBody(2, 5000, encodeSeqSet(() => true, 0, 5000, 1200).bytes)),
      encodeControl(Kind.STATS, 1, 0, 0, 0, Buffer.alloc(8 * 15)),
      encodeControl(Kind.STATUS, 1, 0, 0, 0, encodeStatusBody(1, 2)),
      encodeControl(Kind.PROGRESS, 1, 0, 64, 2, encodeU32Body(3 << 20)),
    ];
    const h = newHeader();
    let accepted = 0;
    for (let n = 0; n < 20_000; n++) {
      let b: Buffer;
      const mode = rnd();
      if (mode < 0.3) {
        b = Buffer.alloc(Math.floor(rnd() * 9000));
        for (let i = 0; i < b.length; i++) b[i] = Math.floor(rnd() * 256);
        if (b.length >= 2 && rnd() < 0.5) b.writeUInt16BE(0x564d, 0); // get past the magic
        if (b.length >= 4 && rnd() < 0.5) {
          b[2] = 1;
          b[3] = 1 + Math.floor(rnd() * 11);
        }
      } else {
        b = Buffer.from(seeds[Math.floor(rnd() * seeds.length)]!);
        const flips = 1 + Math.floor(rnd() * 8);
        for (let f = 0; f < flips; f++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
        if (rnd() < 0.3) b = b.subarray(0, Math.floor(rnd() * b.length));
        if (rnd() < 0.1) b = Buffer.concat([b, Buffer.alloc(Math.floor(rnd() * 64))]);
      }
      const first = leadingDatagramLength(b);
      expect(first).toBeGreaterThanOrEqual(1);
      expect(first).toBeLessThanOrEqual(Math.max(1, b.length));
      const got = decodeHeader(b, h);
      if (n % 10 === 0) expect(auth.verify(b, SENDER_ORIGIN)).toBe(false);
      if (!got) continue;
      accepted++;
      expect(got.bodyOffset + got.bodyLength).toBeLessThanOrEqual(b.length);
      const limit = Math.floor(rnd() * 100_000);
      let visited = 0;
      let bad = false;
      const r = decodeSeqSet(b, got.bodyOffset, got.bodyLength, limit, (i) => {
        visited++;
        if (i >= limit || i < 0) bad = true;
      });
      expect(bad).toBe(false);
      if (r === null) expect(visited).toBe(0);
      decodeJoinBody(b, got);
      decodeStatusBody(b, got);
      decodeStatsBody(b, got);
      decodeU32Body(b, got);
      const rh = decodeReportHead(b, got);
      if (rh) decodeSeqSet(b, rh.setOffset, rh.setLength, rh.contents, () => undefined);
      if (got.kind === Kind.DATA && got.fragCount === 1) {
        for (let i = 0; i < got.pages; i++) {
          expect(dataPageOffset(got, i) + PAGE_SIZE).toBeLessThanOrEqual(b.length);
          dataPageId(b, got, i);
        }
      }
    }
    expect(accepted).toBeGreaterThan(1000); // the mutations reach past the header checks
  });
});
