/**
 * Builds small but complete QEMU v3 streams with the real writer, shaped like QEMU 7.2's:
 * header, configuration, ram START with MEM_SIZE, PART sections, END, device tail, EOF.
 */
import { PAGE_SIZE } from '../../src/memory/page.js';
import { SectionType, StreamWriter, type RamBlockInfo } from '../../src/wire/qemu-stream.js';

export interface FixturePage {
  block: string;
  offset: number;
  /** 'zero' or the page bytes. */
  data: 'zero' | Buffer;
}

export function makePage(seed: number, fill?: number): Buffer {
  const p = Buffer.alloc(PAGE_SIZE);
  if (fill !== undefined) return p.fill(fill);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < PAGE_SIZE; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    p.writeUInt32LE(x, i);
  }
  return p;
}

export const FIXTURE_BLOCKS: RamBlockInfo[] = [
  { name: 'pc.ram', usedLength: 64 * PAGE_SIZE },
  { name: 'pc.bios', usedLength: 4 * PAGE_SIZE },
];

/** rounds: page lists sent in PART sections; final: the END section's pages. */
export function buildStream(rounds: FixturePage[][], final: FixturePage[], deviceTail = Buffer.from('\x04device-state-bytes\x00', 'latin1')): Buffer {
  const chunks: Buffer[] = [];
  const w = new StreamWriter((c) => chunks.push(c), 1024);
  w.header();
  w.configuration('pc-i440fx-7.2');
  w.sectionStart(SectionType.START, 2, 'ram', 0, 4);
  w.memSize(FIXTURE_BLOCKS);
  w.eos();
  w.footer(2);
  let last = '';
  const emit = (pages: FixturePage[]): void => {
    for (const p of pages) {
      const cont = p.block === last;
      last = p.block;
      if (p.data === 'zero') w.zero(p.block, p.offset, 0, cont);
      else w.page(p.block, p.offset, p.data, 0, cont);
    }
    w.eos();
    w.footer(2);
  };
  for (const r of rounds) {
    w.sectionPart(SectionType.PART, 2);
    emit(r);
  }
  w.sectionPart(SectionType.END, 2);
  emit(final);
  w.raw(deviceTail);
  w.flush();
  return Buffer.concat(chunks);
}

export function defaultFixture(): { stream: Buffer; rounds: FixturePage[][]; final: FixturePage[] } {
  const r1: FixturePage[] = [];
  for (let i = 0; i < 64; i++) r1.push({ block: 'pc.ram', offset: i * PAGE_SIZE, data: i % 3 === 0 ? 'zero' : makePage(i) });
  for (let i = 0; i < 4; i++) r1.push({ block: 'pc.bios', offset: i * PAGE_SIZE, data: makePage(1000 + i) });
  const r2: FixturePage[] = [{ block: 'pc.ram', offset: 5 * PAGE_SIZE, data: makePage(77) }];
  const final: FixturePage[] = [{ block: 'pc.ram', offset: 7 * PAGE_SIZE, data: makePage(78) }];
  return { stream: buildStream([r1, r2], final), rounds: [r1, r2], final };
}
