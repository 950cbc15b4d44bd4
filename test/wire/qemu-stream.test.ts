import { describe, expect, it } from 'vitest';
import { ErrorCode, StreamError } from '../../src/errors.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { RamFlag, StreamParser, StreamWriter, VmsRamFlag, type StreamHandler } from '../../src/wire/qemu-stream.js';
import { buildStream, defaultFixture, makePage } from './stream-fixture.js';

interface Collected {
  machine: string;
  blocks: string[];
  zeros: number;
  pages: Array<{ block: number; offset: number; first: number }>;
  eos: number;
  footers: number;
  tail: Buffer;
  rewritten: Buffer;
}

/** Parses `chunks` and re-emits every record verbatim through a writer: must be identical. */
function parseAll(chunks: Buffer[]): Collected {
  const c: Collected = { machine: '', blocks: [], zeros: 0, pages: [], eos: 0, footers: 0, tail: Buffer.alloc(0), rewritten: Buffer.alloc(0) };
  const out: Buffer[] = [];
  const w = new StreamWriter((b) => out.push(Buffer.from(b)), 700);
  const tails: Buffer[] = [];
  // eslint-disable-next-line prefer-const
  let p: StreamParser;
  const raw = (): void => w.raw(p.record);
  const h: StreamHandler = {
    preamble: (info) => {
      c.machine = info.machine;
      raw();
    },
    section: raw,
    memSize: (b) => {
      c.blocks = b.map((x) => x.name);
      raw();
    },
    zero: () => {
      c.zeros++;
      raw();
    },
    page: (block, offset, data) => {
      c.pages.push({ block, offset, first: data.readUInt32LE(0) });
      raw();
    },
    eos: () => {
      c.eos++;
      raw();
    },
    footer: () => {
      c.footers++;
      raw();
    },
    deviceTail: (t) => {
      tails.push(Buffer.from(t));
      w.raw(Buffer.from(t));
    },
  };
  p = new StreamParser(h);
  for (const ch of chunks) p.push(ch);
  p.end();
  w.flush();
  c.tail = Buffer.concat(tails);
  c.rewritten = Buffer.concat(out);
  return c;
}

function chunked(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

function parseError(bytes: Buffer, opts = {}): StreamError {
  const p = new StreamParser({}, opts);
  try {
    p.push(bytes);
    p.end();
  } catch (e) {
    expect(e).toBeInstanceOf(StreamError);
    return e as StreamError;
  }
  throw new Error('expected a StreamError');
}

describe('QEMU v3 stream codec', () => {
  const { stream, rounds, final } = defaultFixture();

  it('parses every record and re-writes the stream byte for byte', () => {
    const c = parseAll([stream]);
    expect(c.machine).toBe('pc-i440fx-7.2');
    expect(c.blocks).toEqual(['pc.ram', 'pc.bios']);
    const pageCount = [...rounds, final].flat().filter((p) => p.data !== 'zero').length;
    expect(c.pages.length).toBe(pageCount);
    expect(c.zeros).toBe(rounds[0]!.filter((p) => p.data === 'zero').length);
    expect(c.eos).toBe(4); // START, 2 x PART, END
    expect(c.footers).toBe(4);
    expect(c.tail.toString('latin1')).toBe('\x04device-state-bytes\x00');
    expect(c.rewritten.equals(stream)).toBe(true);
  });

  it('gives the same events whatever the chunking (1 byte, odd sizes, whole)', () => {
    const whole = parseAll([stream]);
    for (const size of [1, 7, 4095, 4097, 65536]) {
      const c = parseAll(chunked(stream, size));
      expect(c.pages).toEqual(whole.pages);
      expect(c.rewritten.equals(stream)).toBe(true);
    }
  });

  it('tracks CONTINUE across sections and block switches', () => {
    const c = parseAll([stream]);
    const bios = c.pages.filter((p) => p.block === 1);
    expect(bios.length).toBe(4);
    expect(c.pages.at(-1)).toEqual({ block: 0, offset: 7 * PAGE_SIZE, first: makePage(78).readUInt32LE(0) });
  });

  it('reports truncation at every cut before the device tail, with the offset', () => {
    const tailStart = stream.length - '\x04device-state-bytes\x00'.length;
    for (let cut = 0; cut < tailStart; cut += 97) {
      const e = parseError(stream.subarray(0, cut));
      expect(e.code).toBe(ErrorCode.STREAM_TRUNCATED);
      expect(e.offset).toBeLessThanOrEqual(cut);
    }
  });

  it('rejects a wrong magic and an old version with coded errors', () => {
    const bad = Buffer.from(stream);
    bad.writeUInt32BE(0xdeadbeef, 0);
    expect(parseError(bad).code).toBe(ErrorCode.STREAM_MALFORMED);
    const v2 = Buffer.from(stream);
    v2.writeUInt32BE(2, 4);
    const e = parseError(v2);
    expect(e.code).toBe(ErrorCode.STREAM_UNSUPPORTED);
    expect(e.offset).toBe(4);
  });

  it.each([
    ['XBZRLE', RamFlag.XBZRLE, ErrorCode.STREAM_UNSUPPORTED, /xbzrle/i],
    ['COMPRESS_PAGE', RamFlag.COMPRESS_PAGE, ErrorCode.STREAM_UNSUPPORTED, /compress/i],
    ['HOOK', RamFlag.HOOK, ErrorCode.STREAM_UNSUPPORTED, /HOOK/],
    ['FULL (obsolete)', RamFlag.FULL, ErrorCode.STREAM_MALFORMED, /unknown RAM record flags/],
    ['REF outside converge', VmsRamFlag.REF, ErrorCode.STREAM_MALFORMED, /not valid in a QEMU stream/],
  ])('rejects a %s record', (_name, flag, code, msg) => {
    const s = buildStream([[{ block: 'pc.ram', offset: 0, data: makePage(1) }]], []);
    // The first page record's flags byte: find the PAGE record header after the first PART.
    const idx = findRecord(s, 0, RamFlag.PAGE);
    const m = Buffer.from(s);
    m[idx + 7] = (m[idx + 7]! & ~0xff) | flag;
    if (flag > 0xff) {
      m[idx + 6] = flag >> 8;
      m[idx + 7] = flag & 0xff;
    }
    const e = parseError(m);
    expect(e.code).toBe(code);
    expect(e.message).toMatch(msg);
    expect(e.offset).toBe(idx);
  });

  it('rejects a COMMAND section (postcopy) and an unknown section type', () => {
    const s = buildStream([], []);
    const startOfPart = findSection(s);
    const m = Buffer.from(s);
    m[startOfPart] = 0x08;
    expect(parseError(m).code).toBe(ErrorCode.STREAM_UNSUPPORTED);
    m[startOfPart] = 0x42;
    expect(parseError(m).message).toMatch(/unknown section type 0x42/);
  });

  it('rejects a page outside its RAM block and an unknown block name', () => {
    const s = buildStream([[{ block: 'pc.bios', offset: 4 * PAGE_SIZE, data: makePage(3) }]], []);
    expect(parseError(s).message).toMatch(/beyond RAM block "pc.bios"/);
    const t = buildStream([[{ block: 'pc.bios', offset: 0, data: makePage(3) }]], []);
    const at = t.lastIndexOf('pc.bios');
    const m = Buffer.from(t);
    m.write('pc.xxxx', at, 'latin1');
    expect(parseError(m).message).toMatch(/unknown RAM block "pc.xxxx"/);
  });

  it('round-trips converge records only with { converge: true }', () => {
    const chunks: Buffer[] = [];
    const w = new StreamWriter((c) => chunks.push(c));
    w.header();
    w.configuration('pc-i440fx-7.2');
    w.sectionStart(1, 2, 'ram', 0, 4);
    w.memSize([{ name: 'pc.ram', usedLength: 8 * PAGE_SIZE }]);
    w.storePage('pc.ram', 0, 41, makePage(9), 0, false);
    w.ref('pc.ram', PAGE_SIZE, 41, true);
    w.eos();
    w.eof();
    w.flush();
    const s = Buffer.concat(chunks);
    const seen: string[] = [];
    const p = new StreamParser(
      {
        page: (_b, off, data, _c, id) => seen.push(`store ${off} ${id} ${data.equals(makePage(9))}`),
        ref: (_b, off, id, cont) => seen.push(`ref ${off} ${id} ${cont}`),
      },
      { converge: true },
    );
    p.push(s);
    p.end();
    expect(seen).toEqual([`store 0 41 true`, `ref ${PAGE_SIZE} 41 true`]);
    expect(parseError(s).code).toBe(ErrorCode.STREAM_MALFORMED);
  });

  it('fuzz: random bytes and mutated streams give only coded StreamErrors, never hang or crash', () => {
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const codes = new Set<string>();
    const small = buildStream([[{ block: 'pc.ram', offset: 0, data: makePage(1) }, { block: 'pc.ram', offset: PAGE_SIZE, data: 'zero' }]], []);
    for (let iter = 0; iter < 3000; iter++) {
      let input: Buffer;
      if (iter % 4 === 0) {
        input = Buffer.alloc(8 + Math.floor(rnd() * 200));
        for (let i = 0; i < input.length; i++) input[i] = Math.floor(rnd() * 256);
        if (iter % 8 === 0) input.writeUInt32BE(0x5145564d, 0), input.writeUInt32BE(3, 4);
      } else {
        input = Buffer.from(small);
        const muts = 1 + Math.floor(rnd() * 4);
        for (let m = 0; m < muts; m++) {
          const at = Math.floor(rnd() * input.length);
          if (rnd() < 0.7) input[at] = Math.floor(rnd() * 256);
          else input = Buffer.concat([input.subarray(0, at), input.subarray(at + 1 + Math.floor(rnd() * 16))]);
        }
      }
      const p = new StreamParser({}, { converge: iter % 2 === 0 });
      try {
        for (const ch of chunked(input, 1 + Math.floor(rnd() * 64))) p.push(ch);
        p.end();
      } catch (e) {
        expect(e).toBeInstanceOf(StreamError);
        codes.add((e as StreamError).code);
        expect(Number.isInteger((e as StreamError).offset)).toBe(true);
      }
    }
    expect(codes.has(ErrorCode.STREAM_MALFORMED)).toBe(true);
    expect(codes.has(ErrorCode.STREAM_TRUNCATED)).toBe(true);
  });
});

/** Offset of the first RAM record after the START section whose low flag byte has `flag`. */
function findRecord(s: Buffer, from: number, flag: number): number {
  for (let i = Math.max(from, 40); i + 8 <= s.length; i++) {
    if (s[i + 7] === flag && s[i + 6] === 0 && s[i + 8] === 6 && s.toString('latin1', i + 9, i + 15) === 'pc.ram') return i;
  }
  throw new Error('record not found');
}

/** Offset of the first PART/END section header byte after the START section. */
function findSection(s: Buffer): number {
  // START section ends with EOS + footer (0x7e, be32 2); the next byte is the next section type.
  const startFooter = s.indexOf(Buffer.from([0x7e, 0, 0, 0, 2]));
  return startFooter + 5;
}
