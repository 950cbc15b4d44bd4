/**
 * Stream parse throughput: a QEMU v3 stream of a fleet's RAM (ZERO records for zero pages, PAGE
 * records for the rest, as QEMU sends them), fed in 64 KiB chunks like a socket delivers it.
 * Measured against a plain copy of the same chunks into one buffer, in the same run.
 */
import { PAGE_SIZE, isZeroPage, type PageSource } from '../src/memory/page.js';
import { SectionType, StreamParser, StreamWriter, type StreamHandler } from '../src/wire/qemu-stream.js';

const CHUNK = 64 * 1024;

export function buildStreamChunks(sources: PageSource[]): { chunks: Buffer[]; bytes: number; pages: number } {
  const chunks: Buffer[] = [];
  const w = new StreamWriter((c) => chunks.push(c), CHUNK);
  const pages = sources.reduce((s, x) => s + x.pageCount, 0);
  w.header();
  w.configuration('pc-i440fx-7.2');
  w.sectionStart(SectionType.START, 2, 'ram', 0, 4);
  w.memSize([{ name: 'pc.ram', usedLength: pages * PAGE_SIZE }]);
  w.eos();
  w.footer(2);
  const buf = Buffer.alloc(64 * PAGE_SIZE);
  let page = 0;
  let first = true;
  for (const src of sources) {
    for (let p = 0; p < src.pageCount; p += 64) {
      const n = Math.min(64, src.pageCount - p);
      src.readPages(p, n, buf);
      w.sectionPart(SectionType.PART, 2);
      for (let i = 0; i < n; i++, page++) {
        if (isZeroPage(buf, i * PAGE_SIZE)) w.zero('pc.ram', page * PAGE_SIZE, 0, !first);
        else w.page('pc.ram', page * PAGE_SIZE, buf, i * PAGE_SIZE, !first);
        first = false;
      }
      w.eos();
      w.footer(2);
    }
  }
  w.raw(Buffer.from([SectionType.EOF]));
  w.flush();
  return { chunks, bytes: chunks.reduce((s, c) => s + c.length, 0), pages };
}

/** Parse every chunk; the handler touches each page so the work is not optimized away. */
export function parseOnce(chunks: Buffer[]): number {
  let acc = 0;
  const h: StreamHandler = {
    page: (_b, off, data) => {
      acc = (acc + data[0]! + off) | 0;
    },
    zero: (_b, off) => {
      acc = (acc + off) | 0;
    },
  };
  const p = new StreamParser(h);
  for (const c of chunks) p.push(c);
  p.end();
  return acc;
}

/** The baseline: copy the same chunks into one buffer, a plain read of the same bytes. */
export function copyOnce(chunks: Buffer[]): number {
  const dst = Buffer.allocUnsafe(CHUNK);
  let acc = 0;
  for (const c of chunks) {
    c.copy(dst, 0, 0, c.length);
    acc = (acc + dst[0]!) | 0;
  }
  return acc;
}
