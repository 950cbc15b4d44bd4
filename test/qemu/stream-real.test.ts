/**
 * The stream codec against a real QEMU 7.2 migration stream: parse it, compare record counts
 * with QEMU's own statistics, re-write it with StreamWriter byte for byte, and boot a guest from
 * the re-written stream.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCode, StreamError, VmsError } from '../../src/errors.js';
import { killAllGuests, launchGuest, sendStreamToIncoming, TCG_RAM_PAD_KIB } from '../../src/qemu/launcher.js';
import { SectionType, StreamParser, StreamWriter, type RamBlockInfo, type StreamHandler } from '../../src/wire/qemu-stream.js';
import { qemuTestEnv, requireQemu } from './qemu-env.js';
import { realStreamFixture, type RealStream } from './real-stream.js';

const env = await qemuTestEnv();
const run = requireQemu(env, 'real-stream codec tests');

interface Counts {
  pages: number;
  zeros: number;
  nonZeroFill: number;
  sections: { start: number; part: number; end: number };
  footers: number;
  eos: number;
  tailBytes: number;
  tailFirstByte: number;
  blocks: readonly RamBlockInfo[];
  pagesPerBlock: Map<string, number>;
  machine: string;
  capabilities: string[];
}

/** Parse `stream` fed in chunks of the given sizes (cycled); optionally re-write every record. */
function parse(stream: Buffer, chunkSizes: readonly number[], writer?: StreamWriter): Counts {
  const c: Counts = {
    pages: 0,
    zeros: 0,
    nonZeroFill: 0,
    sections: { start: 0, part: 0, end: 0 },
    footers: 0,
    eos: 0,
    tailBytes: 0,
    tailFirstByte: -1,
    blocks: [],
    pagesPerBlock: new Map(),
    machine: '',
    capabilities: [],
  };
  let blocks: readonly RamBlockInfo[] = [];
  const name = (b: number): string => blocks[b]?.name ?? `?${b}`;
  let parser!: StreamParser; // assigned below; the handlers only run after that
  const handler: StreamHandler = {
    preamble(info) {
      c.machine = info.machine;
      c.capabilities = [...info.capabilities];
      if (!writer) return;
      writer.header();
      if (info.machine !== '' && info.capabilities.length === 0) writer.configuration(info.machine);
      else writer.raw(Buffer.from(parser.record.subarray(8)));
    },
    section(type, id) {
      if (type === SectionType.START) {
        c.sections.start++;
        const r = parser.record; // 01, be32 id, u8 len, "ram", be32 instance, be32 version
        const len = r[5] ?? 0;
        writer?.sectionStart(SectionType.START, id, r.toString('latin1', 6, 6 + len), r.readUInt32BE(6 + len), r.readUInt32BE(10 + len));
      } else {
        if (type === SectionType.PART) c.sections.part++;
        else c.sections.end++;
        writer?.sectionPart(type, id);
      }
    },
    memSize(b) {
      blocks = b.map((x) => ({ ...x }));
      c.blocks = blocks;
      writer?.memSize(b);
    },
    zero(block, offset, fill, cont) {
      c.zeros++;
      if (fill !== 0) c.nonZeroFill++;
      writer?.zero(name(block), offset, fill, cont);
    },
    page(block, offset, data, cont) {
      c.pages++;
      c.pagesPerBlock.set(name(block), (c.pagesPerBlock.get(name(block)) ?? 0) + 1);
      writer?.page(name(block), offset, data, 0, cont);
    },
    eos() {
      c.eos++;
      writer?.eos();
    },
    footer(id) {
      c.footers++;
      writer?.footer(id);
    },
    deviceTail(chunk) {
      if (c.tailFirstByte < 0) c.tailFirstByte = chunk[0] ?? -1;
      c.tailBytes += chunk.length;
      writer?.raw(Buffer.from(chunk));
    },
  };
  parser = new StreamParser(handler);
  let off = 0;
  let i = 0;
  while (off < stream.length) {
    const n = chunkSizes[i++ % chunkSizes.length] ?? 65536;
    parser.push(stream.subarray(off, off + n));
    off += n;
  }
  parser.end();
  writer?.flush();
  return c;
}

/** Where the parser stopped, with the bytes around it, for a useful failure message. */
function describeFailure(stream: Buffer, e: unknown): string {
  if (!(e instanceof StreamError)) return String(e);
  const at = e.offset;
  return `${e.code} at offset ${at}: ${e.message}; bytes ${at - 16}..${at + 32}: ${stream.subarray(Math.max(0, at - 16), at + 32).toString('hex')}`;
}

describe.skipIf(!run).sequential('QEMU 7.2 stream through StreamParser / StreamWriter', () => {
  let fx: RealStream;
  let rewritten: Buffer;

  beforeAll(async () => {
    const t0 = Date.now();
    fx = await realStreamFixture();
    console.log(`real stream: ${fx.bytes} B from ${fx.path} (${fx.capturedAt}), ready in ${Date.now() - t0} ms`);
  }, 180_000);

  afterAll(async () => {
    await killAllGuests();
  });

  it('parses it; PAGE and ZERO record counts equal query-migrate normal and duplicate', () => {
    let c: Counts;
    const t0 = performance.now();
    try {
      c = parse(fx.stream, [64 * 1024]);
    } catch (e) {
      throw new Error(`parser rejected the real stream: ${describeFailure(fx.stream, e)}`);
    }
    const ms = performance.now() - t0;
    console.log(
      `parsed in ${ms.toFixed(0)} ms: ${c.pages} PAGE, ${c.zeros} ZERO (${c.nonZeroFill} with a non-zero fill), sections START ${c.sections.start} PART ${c.sections.part} END ${c.sections.end}, ` +
        `${c.eos} EOS, ${c.footers} footers, device tail ${c.tailBytes} B starting 0x${c.tailFirstByte.toString(16)}, ` +
        `blocks ${c.blocks.map((b) => `${b.name}:${b.usedLength}`).join(' ')}, pages per block ${JSON.stringify([...c.pagesPerBlock])}`,
    );
    expect(c.pages).toBe(fx.stats.ram.normal);
    expect(c.zeros).toBe(fx.stats.ram.duplicate);
    expect(c.machine).toBe('pc-i440fx-7.2');
    expect(c.sections.start).toBe(1);
    expect(c.sections.end).toBe(1);
    expect(c.sections.part).toBeGreaterThanOrEqual(1);
    // Every ram section ends with EOS and a footer.
    expect(c.eos).toBe(c.sections.start + c.sections.part + c.sections.end);
    expect(c.footers).toBe(c.eos);
    expect(c.tailFirstByte).toBe(SectionType.FULL);
    expect(c.blocks[0]?.name).toBe('pc.ram');
    expect(c.blocks[0]?.usedLength).toBe(fx.launch.memoryMiB * 1024 * 1024 + TCG_RAM_PAD_KIB * 1024);
  });

  it('gives the same result whatever the chunk boundaries', () => {
    const whole = parse(fx.stream, [fx.stream.length]);
    const odd = parse(fx.stream, [1, 7, 4096, 4105, 13, 65521, 3]);
    expect(odd.pages).toBe(whole.pages);
    expect(odd.zeros).toBe(whole.zeros);
    expect(odd.tailBytes).toBe(whole.tailBytes);
    expect(odd.eos).toBe(whole.eos);
  });

  it('StreamWriter re-writes it byte for byte', () => {
    const chunks: Buffer[] = [];
    const w = new StreamWriter((c) => chunks.push(c));
    parse(fx.stream, [256 * 1024], w);
    rewritten = Buffer.concat(chunks);
    expect(w.bytesWritten).toBe(fx.stream.length);
    if (!rewritten.equals(fx.stream)) {
      let i = 0;
      while (i < rewritten.length && rewritten[i] === fx.stream[i]) i++;
      throw new Error(
        `first difference at offset ${i}: original ${fx.stream.subarray(i, i + 24).toString('hex')} rewritten ${rewritten.subarray(i, i + 24).toString('hex')}`,
      );
    }
    const h = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    expect(h(rewritten)).toBe(h(fx.stream));
  });

  it('a guest restored from the re-written stream ticks on with the same uniq_md5', async () => {
    const target = await launchGuest({ name: 'restore', ...fx.launch, incoming: 'defer', daemonize: false });
    try {
      const t0 = Date.now();
      await sendStreamToIncoming(target, rewritten ?? fx.stream, { timeoutMs: 60_000 });
      console.log(`restored from ${fx.bytes} B in ${Date.now() - t0} ms`);
      expect(await target.status()).toBe('running');
      const tick = await target.nextTick(30_000);
      expect(tick.md5).toBe(fx.uniqMd5);
      expect(tick.n).toBeGreaterThan(fx.lastTick);
    } finally {
      await target.dispose();
    }
  }, 120_000);

  it('a truncated stream is refused: QEMU reports it and the target never runs', async () => {
    const target = await launchGuest({ name: 'truncated', ...fx.launch, incoming: 'defer', daemonize: false });
    try {
      // Cut inside the RAM records, well before the device state.
      const err = await sendStreamToIncoming(target, fx.stream.subarray(0, Math.floor(fx.stream.length / 2)), { timeoutMs: 30_000 }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(VmsError);
      expect((err as VmsError).code).toBe(ErrorCode.QEMU);
      console.log(`truncated stream: ${(err as VmsError).message.slice(0, 300)}`);
      expect((err as VmsError).message).toMatch(/load of migration failed|QEMU exited|failed/);
      expect(target.isAlive()).toBe(false);
    } finally {
      await target.dispose();
    }
  }, 60_000);
});
