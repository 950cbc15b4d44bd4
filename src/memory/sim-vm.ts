/**
 * A simulated VM: RAM that is described, not stored. Every page has a 32-bit descriptor (a kind
 * and an index); its bytes are generated on demand from the descriptor and the seed of the
 * descriptor's scope (OS image, tenant, VM). Equal descriptors in two VMs of the same OS image or
 * tenant give equal bytes: that is where cross-VM sharing comes from. A 4 GiB VM costs a 4 MiB
 * descriptor array.
 *
 * Generated page layout (the lz4 benchmark reads these bytes, so the choice is deliberate): a
 * page is 16 segments of 256 bytes; each segment is, with probability 5/8, random words (high
 * entropy: encrypted/compressed data, hashes, random-looking heap), 1/8 zero words (padding,
 * sparse structures), 1/8 kernel-pointer-like pairs (random low word, constant 0xffff8880 high
 * word), 1/8 a 32-byte record repeated (tables of equal structs). lz4 gets about 1.3:1 on such
 * pages: not tuned to flatter compression (real anonymous memory often compresses better).
 * Bytes are produced as little-endian 32-bit words (the platforms vmscatter runs on).
 */
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SHIFT, PAGE_SIZE, type PageSource } from './page.js';
import type { RamImage } from './ram-image.js';
import { type SimVmSpec, uniqueFraction, validateSpec } from './sim-profile.js';

/** Page kinds, in the top 4 bits of a descriptor; the low 28 bits are the kind's index. */
export const PageKind = {
  ZERO: 0,
  /** Content k of the VM's OS image. */
  OS: 1,
  /** Content k of the VM's tenant. */
  TENANT: 2,
  /** Content k of this VM only. */
  UNIQUE: 3,
  /** Every byte equal to the index (1..255). */
  FILL: 4,
  /** Written by the guest: version v of the VM's dirty contents (fresh unique content). */
  DIRTY: 5,
  /** Firmware content k (pc.bios, pc.rom): the same for every VM of the same QEMU build. */
  FIRMWARE: 6,
} as const;
export type PageKind = (typeof PageKind)[keyof typeof PageKind];

const KIND_SHIFT = 28;
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);
/** High word of an x86-64 direct-map pointer (0xffff8880...), as an int32. */
const DIRECT_MAP_HI = 0xffff8880 | 0;
const INDEX_MASK = 0x0fffffff;

export function descriptor(kind: PageKind, index: number): number {
  return ((kind << KIND_SHIFT) | (index & INDEX_MASK)) >>> 0;
}
export function descKind(d: number): PageKind {
  return (d >>> KIND_SHIFT) as PageKind;
}
export function descIndex(d: number): number {
  return d & INDEX_MASK;
}

/** Firmware identity: every simulated VM runs the same SeaBIOS. */
export const FIRMWARE_ID = 'seabios-1.16.2';

/** A RAM block: a range of pages in the VM's one descriptor array. */
export interface SimRamBlock {
  name: string;
  /** Global index of the block's first page. */
  firstPage: number;
  pages: number;
  /** Bytes, as in MEM_SIZE. */
  usedLength: number;
}

/** QEMU's small extra blocks on a pc machine (sizes as in QEMU 7.2 with SeaBIOS). */
const BIOS_PAGES = 64; // 256 KiB
const ROM_PAGES = 32; // 128 KiB
/** Of pc.bios, the first half is padding (zero), the rest code; of pc.rom, the first 8 pages hold option ROMs. */
const BIOS_ZERO_PAGES = 32;
const ROM_CODE_PAGES = 8;

export type RunState = 'idle' | 'running' | 'stopped';

/** A dirty log handed out by syncDirty(): one bit per global page index. */
export interface DirtyLog {
  bits: Uint32Array;
  /** Number of set bits. */
  count: number;
}

// ---------------------------------------------------------------- hashing and generation

/** murmur3's 32-bit finalizer: a bijection on 32-bit words. */
export function fmix32(x: number): number {
  let h = x | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A 32-bit string hash (murmur3-style over UTF-16 code units). */
function hashString32(s: string, seed: number): number {
  let h = seed | 0;
  for (let i = 0; i < s.length; i++) {
    h = Math.imul(h ^ s.charCodeAt(i), 0x5bd1e995);
    h ^= h >>> 15;
  }
  return fmix32(h ^ s.length);
}

/** Two independent 32-bit halves of a string's scope seed. */
export function scopeOf(s: string): [number, number] {
  return [hashString32(s, 0x9747b28c), hashString32(s, 0x1b873593)];
}

/**
 * Fill 1024 words of `w` at `o` with the content of descriptor `d` in scope (lo, hi). The
 * generator state is (fmix32(d), fmix32(lo), fmix32(hi), const): injective in the inputs, and
 * xorshift128 is a bijection on its state, so different (d, lo, hi) give different pages.
 * About 1-2 µs per page (2-4 GB/s).
 */
export function generatePage(d: number, lo: number, hi: number, w: Uint32Array, o: number): void {
  const kind = d >>> KIND_SHIFT;
  if (kind === PageKind.ZERO) {
    w.fill(0, o, o + 1024);
    return;
  }
  if (kind === PageKind.FILL) {
    const b = d & 0xff;
    w.fill((b * 0x01010101) >>> 0, o, o + 1024);
    return;
  }
  // xorshift128 in ring form, four steps per iteration: the oldest word is replaced in place,
  // so after four steps (s0..s3) are the next four outputs in order. The steps are independent
  // enough to overlap in the CPU, which a rotating form does not allow.
  let s0 = fmix32(d ^ 0x243f6a88) | 0;
  let s1 = fmix32(lo ^ 0x85a308d3) | 0;
  let s2 = fmix32(hi ^ 0x13198a2e) | 0;
  let s3 = 0x03707344;
  let t = 0;
  for (let i = 0; i < 3; i++) {
    t = s0 ^ (s0 << 11);
    s0 = s3 ^ (s3 >>> 19) ^ t ^ (t >>> 8);
    t = s1 ^ (s1 << 11);
    s1 = s0 ^ (s0 >>> 19) ^ t ^ (t >>> 8);
    t = s2 ^ (s2 << 11);
    s2 = s1 ^ (s1 >>> 19) ^ t ^ (t >>> 8);
    t = s3 ^ (s3 << 11);
    s3 = s2 ^ (s2 >>> 19) ^ t ^ (t >>> 8);
  }
  const c1 = s1;
  const c2 = s2;
  for (let seg = 0; seg < 16; seg++) {
    let type = ((seg < 8 ? c1 : c2) >>> ((seg & 7) << 2)) & 7;
    // Segment 0 is never zero: a generated page is never all zero, so zero pages are exactly
    // the ZERO descriptors (the source decides ZERO records from descriptors, as QEMU does from
    // bytes).
    if (seg === 0 && type === 5) type = 0;
    const base = o + (seg << 6);
    const end = base + 64;
    if (type === 5) {
      for (let j = base; j < end; j++) w[j] = 0; // a loop: cheaper than a native fill() call for 64 words
      continue;
    }
    if (type <= 4) {
      for (let j = base; j < end; j += 4) {
        t = s0 ^ (s0 << 11);
        s0 = s3 ^ (s3 >>> 19) ^ t ^ (t >>> 8);
        t = s1 ^ (s1 << 11);
        s1 = s0 ^ (s0 >>> 19) ^ t ^ (t >>> 8);
        t = s2 ^ (s2 << 11);
        s2 = s1 ^ (s1 >>> 19) ^ t ^ (t >>> 8);
        t = s3 ^ (s3 << 11);
        s3 = s2 ^ (s2 >>> 19) ^ t ^ (t >>> 8);
        w[j] = s0;
        w[j + 1] = s1;
        w[j + 2] = s2;
        w[j + 3] = s3;
      }
    } else if (type === 6) {
      // Pointer-like pairs: random low word, the x86-64 direct-map high word.
      for (let j = base; j < end; j += 8) {
        t = s0 ^ (s0 << 11);
        s0 = s3 ^ (s3 >>> 19) ^ t ^ (t >>> 8);
        t = s1 ^ (s1 << 11);
        s1 = s0 ^ (s0 >>> 19) ^ t ^ (t >>> 8);
        t = s2 ^ (s2 << 11);
        s2 = s1 ^ (s1 >>> 19) ^ t ^ (t >>> 8);
        t = s3 ^ (s3 << 11);
        s3 = s2 ^ (s2 >>> 19) ^ t ^ (t >>> 8);
        w[j] = s0 & 0x0ffffff8;
        w[j + 1] = DIRECT_MAP_HI;
        w[j + 2] = s1 & 0x0ffffff8;
        w[j + 3] = DIRECT_MAP_HI;
        w[j + 4] = s2 & 0x0ffffff8;
        w[j + 5] = DIRECT_MAP_HI;
        w[j + 6] = s3 & 0x0ffffff8;
        w[j + 7] = DIRECT_MAP_HI;
      }
    } else {
      // A 32-byte record repeated 8 times (kept in locals: typed-array reads of uint32 are slow).
      t = s0 ^ (s0 << 11);
      s0 = s3 ^ (s3 >>> 19) ^ t ^ (t >>> 8);
      t = s1 ^ (s1 << 11);
      s1 = s0 ^ (s0 >>> 19) ^ t ^ (t >>> 8);
      t = s2 ^ (s2 << 11);
      s2 = s1 ^ (s1 >>> 19) ^ t ^ (t >>> 8);
      t = s3 ^ (s3 << 11);
      s3 = s2 ^ (s2 >>> 19) ^ t ^ (t >>> 8);
      const a0 = s0;
      const a1 = s1;
      const a2 = s2;
      const a3 = s3;
      t = s0 ^ (s0 << 11);
      s0 = s3 ^ (s3 >>> 19) ^ t ^ (t >>> 8);
      t = s1 ^ (s1 << 11);
      s1 = s0 ^ (s0 >>> 19) ^ t ^ (t >>> 8);
      t = s2 ^ (s2 << 11);
      s2 = s1 ^ (s1 >>> 19) ^ t ^ (t >>> 8);
      t = s3 ^ (s3 << 11);
      s3 = s2 ^ (s2 >>> 19) ^ t ^ (t >>> 8);
      for (let j = base; j < end; j += 8) {
        w[j] = a0;
        w[j + 1] = a1;
        w[j + 2] = a2;
        w[j + 3] = a3;
        w[j + 4] = s0;
        w[j + 5] = s1;
        w[j + 6] = s2;
        w[j + 7] = s3;
      }
    }
  }
}

/** Small seeded PRNG (xorshift128) for layout and write sequences; not for page bytes. */
class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  constructor(seed: number, salt: number) {
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 0x1_0000_0000) >>> 0;
    this.s0 = fmix32(lo ^ salt) | 0;
    this.s1 = fmix32(hi ^ 0x9e3779b9) | 0;
    this.s2 = fmix32(salt ^ 0x7f4a7c15) | 0;
    this.s3 = 0x2545f491;
    for (let i = 0; i < 8; i++) this.next();
  }
  next(): number {
    const t = this.s0 ^ (this.s0 << 11);
    this.s0 = this.s1;
    this.s1 = this.s2;
    this.s2 = this.s3;
    this.s3 = this.s3 ^ (this.s3 >>> 19) ^ t ^ (t >>> 8);
    return this.s3 >>> 0;
  }
  /** Uniform in [0, n) for n <= 2^32. */
  below(n: number): number {
    return Math.floor((this.next() / 0x1_0000_0000) * n);
  }
  float(): number {
    return this.next() / 0x1_0000_0000;
  }
}

const SALT_LAYOUT = 0x6c617930;
const SALT_WS = 0x77736574;
const SALT_WRITES = 0x77726974;

// ---------------------------------------------------------------- the VM

/** Categories of the layout, in the order counts are computed. */
const Cat = { ZERO: 0, FILL: 1, OS: 2, TENANT: 3, DUP: 4, UNIQUE: 5 } as const;

export class SimVm implements PageSource {
  readonly spec: SimVmSpec;
  readonly name: string;
  /** pc.ram, pc.bios, pc.rom: QEMU's order (largest first). */
  readonly blocks: readonly SimRamBlock[];
  /** Pages of the main block (pc.ram), the range PageSource reads: what a memory-backend file holds. */
  readonly pageCount: number;
  /** Pages of all blocks; global page indices run over pc.ram, then pc.bios, then pc.rom. */
  readonly totalPages: number;
  private readonly desc: Uint32Array;
  /** Scope seed halves per kind. */
  private readonly scopeLo = new Uint32Array(8);
  private readonly scopeHi = new Uint32Array(8);
  private readonly workingSet: Uint32Array;
  private readonly writeRng: Rng;
  private dirty: Uint32Array;
  private dirtyCount = 0;
  private version = 0;
  private carry = 0;
  private lastMs = 0;
  private writes = 0;
  private runState: RunState = 'idle';
  private stopInstant: number | undefined;
  private viewBuffer: ArrayBufferLike | undefined;
  private view: Uint32Array = new Uint32Array(0);
  private readonly scratch = Buffer.alloc(PAGE_SIZE);

  constructor(spec: SimVmSpec) {
    validateSpec(spec);
    this.spec = { ...spec, profile: { ...spec.profile } };
    this.name = spec.name;
    this.pageCount = spec.memoryBytes / PAGE_SIZE;
    this.totalPages = this.pageCount + BIOS_PAGES + ROM_PAGES;
    this.blocks = [
      { name: 'pc.ram', firstPage: 0, pages: this.pageCount, usedLength: spec.memoryBytes },
      { name: 'pc.bios', firstPage: this.pageCount, pages: BIOS_PAGES, usedLength: BIOS_PAGES * PAGE_SIZE },
      { name: 'pc.rom', firstPage: this.pageCount + BIOS_PAGES, pages: ROM_PAGES, usedLength: ROM_PAGES * PAGE_SIZE },
    ];
    const [osLo, osHi] = scopeOf(spec.osImage);
    const [tLo, tHi] = scopeOf(spec.tenant);
    const [fLo, fHi] = scopeOf(FIRMWARE_ID);
    const vLo = spec.seed >>> 0;
    const vHi = Math.floor(spec.seed / 0x1_0000_0000) >>> 0;
    this.setScope(PageKind.OS, osLo, osHi);
    this.setScope(PageKind.TENANT, tLo, tHi);
    this.setScope(PageKind.UNIQUE, vLo, vHi);
    this.setScope(PageKind.DIRTY, vLo, vHi);
    this.setScope(PageKind.FIRMWARE, fLo, fHi);
    this.desc = new Uint32Array(this.totalPages);
    this.layOut();
    this.workingSet = this.pickWorkingSet();
    this.writeRng = new Rng(spec.seed, SALT_WRITES);
    this.dirty = new Uint32Array(Math.ceil(this.totalPages / 32));
  }

  private setScope(kind: PageKind, lo: number, hi: number): void {
    this.scopeLo[kind] = lo;
    this.scopeHi[kind] = hi;
  }

  /** Lay pc.ram out in runs of one category each, in a per-VM shuffled order; then the firmware. */
  private layOut(): void {
    const n = this.pageCount;
    const p = this.spec.profile;
    const fractions = [p.zeroFraction, p.fillFraction, p.osSharedFraction, p.tenantSharedFraction, p.intraDupFraction, uniqueFraction(p)];
    const counts = largestRemainder(fractions, n);
    const rng = new Rng(this.spec.seed, SALT_LAYOUT);
    // Runs: category, length, first content index within the category.
    let runs = 0;
    const runCat = new Uint8Array(n);
    const runLen = new Uint32Array(n);
    const runStart = new Uint32Array(n);
    for (let c = 0; c < counts.length; c++) {
      let left = counts[c]!;
      let start = 0;
      const mean = c === Cat.ZERO ? p.meanZeroRunPages : p.meanRunPages;
      while (left > 0) {
        const len = Math.min(left, 1 + rng.below(2 * mean - 1));
        runCat[runs] = c;
        runLen[runs] = len;
        runStart[runs] = start;
        runs++;
        start += len;
        left -= len;
      }
    }
    const order = new Uint32Array(runs);
    for (let i = 0; i < runs; i++) order[i] = i;
    for (let i = runs - 1; i > 0; i--) {
      const j = rng.below(i + 1);
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    const nOs = counts[Cat.OS]!;
    const nTenant = counts[Cat.TENANT]!;
    const nUnique = counts[Cat.UNIQUE]!;
    const fill = descriptor(PageKind.FILL, p.fillByte);
    const d = this.desc;
    let at = 0;
    for (let r = 0; r < runs; r++) {
      const run = order[r]!;
      const len = runLen[run]!;
      const start = runStart[run]!;
      switch (runCat[run]) {
        case Cat.ZERO:
          break; // descriptors start at 0
        case Cat.FILL:
          d.fill(fill, at, at + len);
          break;
        case Cat.OS:
          for (let i = 0; i < len; i++) d[at + i] = descriptor(PageKind.OS, start + i);
          break;
        case Cat.TENANT:
          for (let i = 0; i < len; i++) d[at + i] = descriptor(PageKind.TENANT, start + i);
          break;
        case Cat.UNIQUE:
          for (let i = 0; i < len; i++) d[at + i] = descriptor(PageKind.UNIQUE, start + i);
          break;
        case Cat.DUP: {
          // One content repeated over the run (a file mapped twice, a region of equal lines),
          // skewed towards low indices so some contents repeat often, as in real guests.
          let dup = fill;
          const shared = nOs + nTenant;
          const skew = (k: number): number => Math.min(k - 1, Math.floor(k * rng.float() ** 3));
          if (shared > 0) {
            const pick = rng.below(shared);
            dup = pick < nOs ? descriptor(PageKind.OS, skew(nOs)) : descriptor(PageKind.TENANT, skew(nTenant));
          } else if (nUnique > 0) {
            dup = descriptor(PageKind.UNIQUE, skew(nUnique));
          }
          d.fill(dup, at, at + len);
          break;
        }
      }
      at += len;
    }
    // Firmware blocks: never dirtied, the same in every VM.
    const bios = this.blocks[1]!.firstPage;
    for (let i = BIOS_ZERO_PAGES; i < BIOS_PAGES; i++) d[bios + i] = descriptor(PageKind.FIRMWARE, i - BIOS_ZERO_PAGES);
    const rom = this.blocks[2]!.firstPage;
    for (let i = 0; i < ROM_CODE_PAGES; i++) d[rom + i] = descriptor(PageKind.FIRMWARE, BIOS_PAGES + i);
  }

  /** The writable working set: pc.ram pages in 64-page clusters at seeded places. */
  private pickWorkingSet(): Uint32Array {
    const want = this.spec.workingSetPages;
    const ws = new Uint32Array(want);
    if (want === 0) return ws;
    const cluster = 64;
    const clusters = Math.ceil(this.pageCount / cluster);
    const order = new Uint32Array(clusters);
    for (let i = 0; i < clusters; i++) order[i] = i;
    const rng = new Rng(this.spec.seed, SALT_WS);
    let got = 0;
    for (let i = 0; i < clusters && got < want; i++) {
      const j = i + rng.below(clusters - i);
      const c = order[j]!;
      order[j] = order[i]!;
      order[i] = c;
      const first = c * cluster;
      const last = Math.min(first + cluster, this.pageCount);
      for (let p = first; p < last && got < want; p++) ws[got++] = p;
    }
    return ws.sort();
  }

  // -------------------------------------------------------------- content

  /** Descriptor of global page `idx` (kind in the top 4 bits). */
  descriptorOf(idx: number): number {
    const d = this.desc[idx];
    if (d === undefined) throw new RangeError(`page ${idx} outside 0..${this.totalPages - 1}`);
    return d;
  }

  /** True when global page `idx` is all zero (exact: generated pages are never all zero). */
  isZero(idx: number): boolean {
    return this.desc[idx] === 0;
  }

  /**
   * A string naming the page's content: equal keys mean equal bytes, across VMs too (up to the
   * 64-bit scope hashes of OS image and tenant names). '' for a zero page.
   */
  contentKey(idx: number): string {
    const d = this.descriptorOf(idx);
    const k = descKind(d);
    if (k === PageKind.ZERO) return '';
    if (k === PageKind.FILL) return `F${descIndex(d)}`;
    return `${k}:${this.scopeLo[k]}:${this.scopeHi[k]}:${descIndex(d)}`;
  }

  /** Generate global page `idx` into dst at dstOff. */
  readPage(idx: number, dst: Buffer, dstOff = 0): void {
    const d = this.descriptorOf(idx);
    if (dst.length - dstOff < PAGE_SIZE || dstOff < 0) throw new RangeError(`readPage into a ${dst.length}-byte buffer at ${dstOff}: no room for a page`);
    const k = d >>> KIND_SHIFT;
    const abs = dst.byteOffset + dstOff;
    if ((abs & 3) === 0) {
      generatePage(d, this.scopeLo[k]!, this.scopeHi[k]!, this.wordsOf(dst), abs >>> 2);
    } else {
      generatePage(d, this.scopeLo[k]!, this.scopeHi[k]!, this.wordsOf(this.scratch), this.scratch.byteOffset >>> 2);
      this.scratch.copy(dst, dstOff);
    }
  }

  /** PageSource: pages [first, first+count) of pc.ram. */
  readPages(first: number, count: number, dst: Buffer): void {
    if (first < 0 || count < 0 || first + count > this.pageCount || dst.length < count * PAGE_SIZE)
      throw new RangeError(`readPages(${first}, ${count}) outside 0..${this.pageCount} pages or into a ${dst.length}-byte buffer`);
    for (let i = 0; i < count; i++) this.readPage(first + i, dst, i << PAGE_SHIFT);
  }

  /** A Uint32Array over buf's whole ArrayBuffer, cached (one view per backing buffer, not per page). */
  private wordsOf(buf: Buffer): Uint32Array {
    if (buf.buffer !== this.viewBuffer) {
      this.viewBuffer = buf.buffer;
      this.view = new Uint32Array(buf.buffer, 0, buf.buffer.byteLength >>> 2);
    }
    return this.view;
  }

  /** Block of global page `idx` and the page's byte offset in it. */
  locate(idx: number): { block: number; offset: number } {
    for (let b = 0; b < this.blocks.length; b++) {
      const blk = this.blocks[b]!;
      if (idx >= blk.firstPage && idx < blk.firstPage + blk.pages) return { block: b, offset: (idx - blk.firstPage) * PAGE_SIZE };
    }
    throw new RangeError(`page ${idx} outside 0..${this.totalPages - 1}`);
  }

  // -------------------------------------------------------------- running and dirtying

  get state(): RunState {
    return this.runState;
  }

  /** True while the guest is frozen (stop() and no cont() since). */
  get stopped(): boolean {
    return this.runState === 'stopped';
  }

  /** performance.now() when the VM was last stopped, or undefined. */
  get stoppedAt(): number | undefined {
    return this.stopInstant;
  }

  /** Guest writes applied so far. */
  get writeCount(): number {
    return this.writes;
  }

  /** Pages written since the last syncDirty(). */
  get dirtyPages(): number {
    return this.dirtyCount;
  }

  /** Start (or resume) the guest: dirtying runs from `nowMs` on. */
  start(nowMs = performance.now()): void {
    if (this.runState === 'running') return;
    this.runState = 'running';
    this.lastMs = nowMs;
  }

  /** Resume after stop() (QMP `cont`): the guest runs on, no writes for the time it was stopped. */
  cont(nowMs = performance.now()): void {
    this.start(nowMs);
  }

  /** Freeze the guest: writes up to `nowMs` are applied, none after. Records stoppedAt. */
  stop(nowMs = performance.now()): void {
    if (this.runState !== 'running') {
      if (this.runState === 'idle') this.runState = 'stopped';
      this.stopInstant ??= nowMs;
      return;
    }
    this.advance(nowMs);
    this.runState = 'stopped';
    this.stopInstant = nowMs;
  }

  /**
   * Apply the writes the guest made up to `nowMs`: dirtyPagesPerSec x elapsed, each on a page of
   * the working set drawn from the VM's seeded write sequence. The sequence is deterministic;
   * only how many writes have happened depends on time. Returns the number of writes applied.
   */
  advance(nowMs = performance.now()): number {
    if (this.runState !== 'running') return 0;
    const dt = nowMs - this.lastMs;
    if (dt <= 0) return 0;
    this.lastMs = nowMs;
    const want = (this.spec.dirtyPagesPerSec * dt) / 1000 + this.carry;
    const n = Math.floor(want);
    this.carry = want - n;
    const ws = this.workingSet;
    const w = ws.length;
    for (let i = 0; i < n; i++) this.touch(ws[this.writeRng.below(w)]!);
    return n;
  }

  /** One guest write to pc.ram page `idx`: the page gets fresh content and is marked dirty. */
  touch(idx: number): void {
    if (!(idx >= 0 && idx < this.pageCount)) throw new RangeError(`touch(${idx}): only pc.ram pages 0..${this.pageCount - 1} are written`);
    // 2^28 versions, then they wrap (repeating old contents): 6 days at 500 pages/s.
    this.version = (this.version + 1) & INDEX_MASK;
    this.desc[idx] = descriptor(PageKind.DIRTY, this.version);
    this.writes++;
    const word = idx >>> 5;
    const bit = 1 << (idx & 31);
    const cur = this.dirty[word]!;
    if ((cur & bit) === 0) {
      this.dirty[word] = cur | bit;
      this.dirtyCount++;
    }
  }

  /**
   * KVM's dirty log sync: applies pending writes (if running), hands out the bitmap of pages
   * written since the last sync and starts a clear one. The caller owns the returned bitmap.
   */
  syncDirty(nowMs = performance.now()): DirtyLog {
    this.advance(nowMs);
    const log = { bits: this.dirty, count: this.dirtyCount };
    this.dirty = new Uint32Array(this.dirty.length);
    this.dirtyCount = 0;
    return log;
  }

  // -------------------------------------------------------------- verification

  /**
   * Compare the VM's RAM with a materialized image, byte for byte, generating each page. The
   * image must have the same blocks (by name and length). firstDiffPage is the global index of
   * the first differing page, -1 when equal (or totalPages when only the block lists differ).
   */
  sameAs(image: RamImage): { equal: boolean; firstDiffPage: number } {
    const scratch = this.scratch;
    for (const blk of this.blocks) {
      const ib = image.blockIndex(blk.name);
      if (ib < 0 || image.blocks[ib]!.usedLength !== blk.usedLength) return { equal: false, firstDiffPage: blk.firstPage };
      for (let p = 0; p < blk.pages; p++) {
        const g = blk.firstPage + p;
        const view = image.pageView(ib, p);
        if (this.desc[g] === 0) {
          if (view && !view.equals(ZERO_PAGE)) return { equal: false, firstDiffPage: g };
          continue;
        }
        if (!view) return { equal: false, firstDiffPage: g };
        this.readPage(g, scratch, 0);
        if (!scratch.equals(view)) return { equal: false, firstDiffPage: g };
      }
    }
    if (image.blocks.length !== this.blocks.length) return { equal: false, firstDiffPage: this.totalPages };
    return { equal: true, firstDiffPage: -1 };
  }

  /** Like sameAs, but throws VmsError(VERIFY) naming the first differing page. */
  verifyAgainst(image: RamImage): void {
    const r = this.sameAs(image);
    if (r.equal) return;
    if (r.firstDiffPage >= this.totalPages)
      throw new VmsError(ErrorCode.VERIFY, `VM ${this.name}: the target image has RAM blocks ${image.blocks.map((b) => b.name).join(', ')}; expected ${this.blocks.map((b) => b.name).join(', ')}`);
    const { block, offset } = this.locate(r.firstDiffPage);
    throw new VmsError(
      ErrorCode.VERIFY,
      `VM ${this.name}: target RAM differs from the source at block "${this.blocks[block]!.name}" offset 0x${offset.toString(16)} (page ${r.firstDiffPage}); the stream lost or misplaced a page`,
    );
  }
}

/** Split n into integer counts proportional to fractions (which sum to 1), largest remainder first. */
function largestRemainder(fractions: readonly number[], n: number): number[] {
  const exact = fractions.map((f) => f * n);
  const counts = exact.map((e) => Math.floor(e));
  let left = n - counts.reduce((a, b) => a + b, 0);
  const byRem = exact.map((e, i) => ({ i, r: e - Math.floor(e) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (let k = 0; left > 0; k = (k + 1) % byRem.length, left--) {
    const i = byRem[k]!.i;
    counts[i] = counts[i]! + 1;
  }
  return counts;
}
