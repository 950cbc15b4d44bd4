import { randomBytes } from 'node:crypto';
import xxhash from 'xxhash-wasm';
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SHIFT, PAGE_SIZE, ZERO_CONTENT, type PageSource } from './page.js';

/**
 * The source side's index of distinct page contents across a fleet of VMs (phase 1, Collect).
 *
 * Every page is read in large batches, zero pages are recognised before hashing, the rest are
 * hashed with xxhash64 and looked up in an open-addressing table held in typed arrays. Pages
 * that share a fast hash become one content only after their bytes compare equal, so a guest
 * cannot make its page pass for another VM's content with a crafted hash collision; contents
 * with the same hash but different bytes get different ids, chained behind one table entry.
 *
 * Content ids are dense, 0..contentCount-1, in order of first sight. The bytes of every content
 * seen at least twice (the only ones dedup and multicast can use) are copied into arena slabs;
 * for a content seen once, only its first location is kept and its bytes are read back through
 * the VM's PageSource when a second candidate appears.
 */

/** Hash of the page at buf[off..off+PAGE_SIZE). Injectable so tests can force collisions. */
export type PageHash = (buf: Buffer, off: number) => bigint;

export interface ContentIndexOptions {
  /** Total pages expected across the fleet; sizes the tables up front (they grow anyway). */
  expectedPages?: number;
  /** Replaces seeded xxhash64. For tests (forced collisions); the scan is slower with it. */
  hash?: PageHash;
  /**
   * xxhash64 seed. Default: random per index, so a guest cannot precompute pages that collide
   * in this index (which would only cost time, never correctness: bytes are always compared).
   * Hashes are therefore local to one index: use `hashPage`, never a bare h64Raw, to feed `lookupHashed`.
   */
  seed?: bigint;
  /** Pages per readPages call (default SCAN_BATCH_PAGES). */
  batchPages?: number;
}

export interface VmScan {
  /** Dense VM id, 0..V-1 in `addVm` call order. */
  vm: number;
  name: string;
  pages: number;
  zeroPages: number;
  /** Per page: content id, or ZERO_CONTENT for an all-zero page. */
  pageContent: Int32Array;
  /** Distinct non-zero content ids of this VM, ascending. */
  distinct: Uint32Array;
}

export interface IndexStats {
  vms: number;
  pages: number;
  zeroPages: number;
  /** Distinct non-zero contents (= contentCount). */
  distinct: number;
  /** Contents seen at least twice, whose bytes the index keeps. */
  storedContents: number;
  /** Contents held by at least two VMs. */
  sharedAcrossVms: number;
  /** Non-zero pages whose content already appeared earlier in the same VM. */
  intraVmDuplicatePages: number;
  /** Pages whose fast hash matched a content but whose bytes did not (true collision, or RAM changed under the scan). */
  hashCollisions: number;
  /** Bytes allocated for stored contents (whole slabs). */
  arenaBytes: number;
}

/**
 * Pages per readPages call. 64 pages = 256 KiB: large enough that the per-call cost vanishes,
 * small enough that the batch is still in L2 when it is zero-checked and hashed (measured here,
 * 1 MiB L2 per core: 64-128 pages 3.9 GB/s, 256 pages 3.5, 512 pages 3.0).
 */
export const SCAN_BATCH_PAGES = 64;
/** Arena slab: 2048 pages = 8 MiB. */
const SLAB_SHIFT = 11;
const SLAB_PAGES = 1 << SLAB_SHIFT;
const PROGRESS_EVERY = 65536;
/** Table entry: [hash low 32 bits, hash high 32 bits, content id + 1]; 0 in the id word = empty. */
const ENTRY = 3;
const MAX_LOAD = 0.7;
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

type H64Raw = (input: Uint8Array, seed?: bigint) => bigint;
let xxhashReady: Promise<H64Raw> | undefined;
/** The wasm module is instantiated once per process and shared by every index. */
function loadH64(): Promise<H64Raw> {
  xxhashReady ??= xxhash().then((api) => api.h64Raw);
  return xxhashReady;
}

export class ContentIndex {
  private readonly h64: H64Raw;
  private readonly customHash: PageHash | undefined;
  private readonly seed: bigint;

  // Open-addressing table (linear probing) keyed by the 64-bit hash split in two Uint32 halves:
  // bigint keys would allocate on every probe. It holds the head of each chain of contents
  // sharing one hash; `next` links the rest.
  private table: Uint32Array;
  private tableBits: number;
  private tableUsed = 0;
  private tableLimit: number;

  // Per content id, grown by doubling.
  private count = 0;
  private capacity: number;
  private occ: Uint32Array;
  private vms: Uint32Array;
  private lastVm: Int32Array; // last VM that counted this content: VMs are scanned one after the other
  private firstVm: Int32Array;
  private firstPage: Uint32Array;
  private next: Int32Array; // next content with the same hash, -1 at the end
  private slot: Int32Array; // arena slot, -1 while seen only once

  private readonly slabs: Buffer[] = [];
  private stored = 0;

  private readonly sources: PageSource[] = [];
  private readonly names: string[] = [];

  // Scan buffers, allocated once. The batch is its own ArrayBuffer so word views are aligned.
  private readonly batchPages: number;
  private readonly batch: Buffer;
  private readonly batchWords: Uint32Array;
  /** One fixed view per batch page: h64Raw wants a Uint8Array, and subarray() per page allocates. */
  private readonly batchViews: Uint8Array[];
  private batchVm = -1;
  private batchFirst = 0;
  private batchCount = 0;
  private readonly readBack = Buffer.alloc(PAGE_SIZE);
  private readonly hashScratch = Buffer.alloc(PAGE_SIZE);
  /** Splits a bigint hash into two uint32 without BigInt arithmetic (which allocates). */
  private readonly split64 = new BigUint64Array(1);
  private readonly split32 = new Uint32Array(this.split64.buffer);

  // The VM being scanned: its distinct content ids, in order of first sight in this VM.
  private vmDistinct = new Uint32Array(1024);
  private vmDistinctCount = 0;

  private totalPages = 0;
  private zeroPages = 0;
  private sharedAcrossVms = 0;
  private intraVmDuplicatePages = 0;
  private hashCollisions = 0;

  private constructor(h64: H64Raw, opts: ContentIndexOptions) {
    this.h64 = h64;
    this.customHash = opts.hash;
    this.seed = opts.seed ?? randomBytes(8).readBigUInt64LE(0);
    const expected = Math.max(0, Math.floor(opts.expectedPages ?? 0));
    // Typical fleets are two-thirds zero pages plus duplicates: half the pages is a generous start.
    this.tableBits = Math.max(10, Math.ceil(Math.log2(Math.max(1, expected / 2) / MAX_LOAD)));
    this.table = new Uint32Array((1 << this.tableBits) * ENTRY);
    this.tableLimit = Math.floor((1 << this.tableBits) * MAX_LOAD);
    this.capacity = Math.max(1024, Math.floor(expected / 2));
    this.occ = new Uint32Array(this.capacity);
    this.vms = new Uint32Array(this.capacity);
    this.lastVm = new Int32Array(this.capacity);
    this.firstVm = new Int32Array(this.capacity);
    this.firstPage = new Uint32Array(this.capacity);
    this.next = new Int32Array(this.capacity);
    this.slot = new Int32Array(this.capacity);
    this.batchPages = opts.batchPages ?? SCAN_BATCH_PAGES;
    const ab = new ArrayBuffer(this.batchPages * PAGE_SIZE);
    this.batch = Buffer.from(ab);
    this.batchWords = new Uint32Array(ab);
    this.batchViews = Array.from({ length: this.batchPages }, (_, i) => new Uint8Array(ab, i * PAGE_SIZE, PAGE_SIZE));
  }

  static async create(opts: ContentIndexOptions = {}): Promise<ContentIndex> {
    const bp = opts.batchPages;
    if (bp !== undefined && !(Number.isInteger(bp) && bp >= 1 && bp <= 65536)) {
      throw new VmsError(ErrorCode.CONFIG, `batchPages must be an integer in 1..65536, got ${bp}`);
    }
    if (opts.seed !== undefined && (opts.seed < 0n || opts.seed >= 1n << 64n)) {
      throw new VmsError(ErrorCode.CONFIG, `xxhash seed must be an unsigned 64-bit integer, got ${opts.seed}`);
    }
    return new ContentIndex(await loadH64(), opts);
  }

  /** Distinct non-zero contents indexed so far. */
  get contentCount(): number {
    return this.count;
  }

  /**
   * Scan all pages of one VM. VM ids are dense 0..V-1 in call order. The source must stay
   * readable until the last addVm returns: first occurrences are read back through it.
   * onProgress(pagesDone) is called every 65536 pages and at the end. If a read throws, the
   * error propagates and the index holds a partial VM: discard it.
   */
  addVm(name: string, source: PageSource, onProgress?: (pagesDone: number) => void): VmScan {
    const pages = source.pageCount;
    if (!Number.isSafeInteger(pages) || pages < 0 || pages > 0xffffffff) {
      throw new VmsError(ErrorCode.CONFIG, `VM ${name}: page count must be an integer in 0..2^32-1, got ${pages}`);
    }
    const vm = this.sources.length;
    this.sources.push(source);
    this.names.push(name);
    const pageContent = new Int32Array(pages);
    this.vmDistinctCount = 0;
    let zero = 0;
    const batchPages = this.batchPages;
    for (let first = 0; first < pages; first += batchPages) {
      const count = Math.min(batchPages, pages - first);
      source.readPages(first, count, this.batch);
      zero += this.scanBatch(vm, first, count, pageContent);
      const done = first + count;
      if (onProgress && (done % PROGRESS_EVERY === 0 || done === pages)) onProgress(done);
    }
    if (pages === 0 && onProgress) onProgress(0);

    this.totalPages += pages;
    this.zeroPages += zero;
    const distinct = this.vmDistinct.slice(0, this.vmDistinctCount).sort();
    return { vm, name, pages, zeroPages: zero, pageContent, distinct };
  }

  /** Bytes of a content seen at least twice (a view into the arena: do not modify), else undefined. */
  contentBytes(id: number): Buffer | undefined {
    if (!(id >= 0 && id < this.count)) return undefined;
    const s = this.slot[id]!;
    return s < 0 ? undefined : this.slabOf(s).subarray(slotOffset(s), slotOffset(s) + PAGE_SIZE);
  }

  /** True when the index keeps the bytes of this content (it occurs at least twice). */
  isStored(id: number): boolean {
    return id >= 0 && id < this.count && this.slot[id]! >= 0;
  }

  /**
   * Id of a stored content byte-identical to the page at buf[off..off+4096), or -1. Contents
   * seen only once are not stored and never returned; zero pages are never stored either.
   */
  lookup(buf: Buffer, off = 0): number {
    return this.lookupHashed(this.hashPage(buf, off), buf, off);
  }

  /** `lookup` with a hash the caller already has from `hashPage` of this same index. */
  lookupHashed(hash: bigint, buf: Buffer, off = 0): number {
    checkPage(buf, off);
    this.split64[0] = hash;
    const e = this.probe(this.split32[0]!, this.split32[1]!);
    for (let c = this.table[e + 2]! - 1; c >= 0; c = this.next[c]!) {
      const s = this.slot[c]!;
      if (s >= 0 && buf.compare(this.slabOf(s), slotOffset(s), slotOffset(s) + PAGE_SIZE, off, off + PAGE_SIZE) === 0) {
        return c;
      }
    }
    return -1;
  }

  /** This index's hash of the page at buf[off..off+4096) (seeded: not comparable across indexes). */
  hashPage(buf: Buffer, off = 0): bigint {
    checkPage(buf, off);
    if (this.customHash) return this.customHash(buf, off);
    if (off === 0 && buf.length === PAGE_SIZE) return this.h64(buf, this.seed);
    // h64Raw copies its input into wasm memory anyway; copying into a fixed page first avoids
    // allocating a subarray view per call.
    buf.copy(this.hashScratch, 0, off, off + PAGE_SIZE);
    return this.h64(this.hashScratch, this.seed);
  }

  /** Total pages with this content across all VMs (0 for an unknown id). */
  occurrences(id: number): number {
    return id >= 0 && id < this.count ? this.occ[id]! : 0;
  }

  /** Number of distinct VMs holding this content (0 for an unknown id). */
  vmCount(id: number): number {
    return id >= 0 && id < this.count ? this.vms[id]! : 0;
  }

  /** Where the content was first seen. */
  firstLocation(id: number): { vm: number; page: number } | undefined {
    return id >= 0 && id < this.count ? { vm: this.firstVm[id]!, page: this.firstPage[id]! } : undefined;
  }

  /** Name given to `addVm` for a VM id. */
  vmName(vm: number): string | undefined {
    return this.names[vm];
  }

  stats(): IndexStats {
    return {
      vms: this.sources.length,
      pages: this.totalPages,
      zeroPages: this.zeroPages,
      distinct: this.count,
      storedContents: this.stored,
      sharedAcrossVms: this.sharedAcrossVms,
      intraVmDuplicatePages: this.intraVmDuplicatePages,
      hashCollisions: this.hashCollisions,
      arenaBytes: this.slabs.length * SLAB_PAGES * PAGE_SIZE,
    };
  }

  // ---- scan internals ----

  /**
   * Index the batch just read (pages first..first+count of vm); returns its zero-page count.
   * A method of its own, called per batch, so V8 optimizes it as a whole function rather than
   * by on-stack replacement of a loop in addVm.
   */
  private scanBatch(vm: number, first: number, count: number, pageContent: Int32Array): number {
    const words = this.batchWords;
    const batch = this.batch;
    this.batchVm = vm;
    this.batchFirst = first;
    this.batchCount = count;
    let zero = 0;
    for (let i = 0; i < count; i++) {
      const off = i << PAGE_SHIFT;
      // Zero test: one word rejects nearly every non-zero page; a native memcmp against a zero
      // page confirms the rest at ~10 GB/s (a JS word loop manages ~1.3).
      if (words[i << (PAGE_SHIFT - 2)] === 0 && batch.compare(ZERO_PAGE, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0) {
        pageContent[first + i] = ZERO_CONTENT;
        zero++;
      } else {
        pageContent[first + i] = this.indexBatchPage(vm, first + i, i);
      }
    }
    this.batchVm = -1;
    return zero;
  }

  /** Content id of the non-zero page `bi` of the current batch (page `page` of `vm`). */
  private indexBatchPage(vm: number, page: number, bi: number): number {
    const off = bi << PAGE_SHIFT;
    this.split64[0] = this.customHash ? this.customHash(this.batch, off) : this.h64(this.batchViews[bi]!, this.seed);
    const lo = this.split32[0]!;
    const hi = this.split32[1]!;
    const e = this.probe(lo, hi);
    const head = this.table[e + 2]! - 1;
    if (head < 0) {
      const id = this.newContent(vm, page);
      this.table[e] = lo;
      this.table[e + 1] = hi;
      this.table[e + 2] = id + 1;
      if (++this.tableUsed > this.tableLimit) this.growTable();
      return id;
    }
    let last = head;
    for (let c = head; c >= 0; c = this.next[c]!) {
      if (this.sameBytes(c, off)) {
        this.countRepeat(c, vm);
        return c;
      }
      last = c;
    }
    // Same hash, different bytes: a new content chained behind the others.
    this.hashCollisions++;
    const id = this.newContent(vm, page);
    this.next[last] = id;
    return id;
  }

  /**
   * Whether content c has the bytes of batch page at `off`. A content seen once has no stored
   * bytes: its first occurrence is read back, and on a match this page's bytes are stored.
   * If that RAM changed since it was hashed the bytes differ and the page stays distinct: safe.
   */
  private sameBytes(c: number, off: number): boolean {
    const batch = this.batch;
    const s = this.slot[c]!;
    if (s >= 0) return batch.compare(this.slabOf(s), slotOffset(s), slotOffset(s) + PAGE_SIZE, off, off + PAGE_SIZE) === 0;
    const fv = this.firstVm[c]!;
    const fp = this.firstPage[c]!;
    let equal: boolean;
    if (fv === this.batchVm && fp >= this.batchFirst && fp < this.batchFirst + this.batchCount) {
      const foff = (fp - this.batchFirst) << PAGE_SHIFT;
      equal = batch.compare(batch, foff, foff + PAGE_SIZE, off, off + PAGE_SIZE) === 0;
    } else {
      this.sources[fv]!.readPages(fp, 1, this.readBack);
      equal = batch.compare(this.readBack, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0;
    }
    if (equal) this.store(c, batch, off);
    return equal;
  }

  private newContent(vm: number, page: number): number {
    if (this.count === this.capacity) this.growContents();
    const id = this.count++;
    this.occ[id] = 1;
    this.vms[id] = 1;
    this.lastVm[id] = vm;
    this.firstVm[id] = vm;
    this.firstPage[id] = page;
    this.next[id] = -1;
    this.slot[id] = -1;
    this.pushVmDistinct(id);
    return id;
  }

  private countRepeat(c: number, vm: number): void {
    this.occ[c]!++;
    if (this.lastVm[c] === vm) {
      this.intraVmDuplicatePages++;
      return;
    }
    this.lastVm[c] = vm;
    if (++this.vms[c]! === 2) this.sharedAcrossVms++;
    this.pushVmDistinct(c);
  }

  private pushVmDistinct(id: number): void {
    if (this.vmDistinctCount === this.vmDistinct.length) {
      const grown = new Uint32Array(this.vmDistinct.length * 2);
      grown.set(this.vmDistinct);
      this.vmDistinct = grown;
    }
    this.vmDistinct[this.vmDistinctCount++] = id;
  }

  private store(c: number, buf: Buffer, off: number): void {
    const s = this.stored++;
    if (s >>> SLAB_SHIFT === this.slabs.length) this.slabs.push(Buffer.allocUnsafeSlow(SLAB_PAGES * PAGE_SIZE));
    buf.copy(this.slabOf(s), slotOffset(s), off, off + PAGE_SIZE);
    this.slot[c] = s;
  }

  private slabOf(s: number): Buffer {
    return this.slabs[s >>> SLAB_SHIFT]!;
  }

  /** Table offset of the entry holding hash (lo, hi), or of the empty entry where it belongs. */
  private probe(lo: number, hi: number): number {
    const t = this.table;
    const mask = (1 << this.tableBits) - 1;
    // Fibonacci hashing of both halves: a custom (test) hash may vary in the high bits only.
    let i = Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> (32 - this.tableBits);
    for (;;) {
      const e = i * ENTRY;
      if (t[e + 2] === 0 || (t[e] === lo && t[e + 1] === hi)) return e;
      i = (i + 1) & mask;
    }
  }

  private growTable(): void {
    const old = this.table;
    this.tableBits++;
    this.table = new Uint32Array((1 << this.tableBits) * ENTRY);
    this.tableLimit = Math.floor((1 << this.tableBits) * MAX_LOAD);
    for (let e = 0; e < old.length; e += ENTRY) {
      if (old[e + 2] === 0) continue;
      const n = this.probe(old[e]!, old[e + 1]!);
      this.table[n] = old[e]!;
      this.table[n + 1] = old[e + 1]!;
      this.table[n + 2] = old[e + 2]!;
    }
  }

  private growContents(): void {
    const cap = this.capacity * 2;
    this.occ = growU32(this.occ, cap);
    this.vms = growU32(this.vms, cap);
    this.firstPage = growU32(this.firstPage, cap);
    this.lastVm = growI32(this.lastVm, cap);
    this.firstVm = growI32(this.firstVm, cap);
    this.next = growI32(this.next, cap);
    this.slot = growI32(this.slot, cap);
    this.capacity = cap;
  }
}

function slotOffset(s: number): number {
  return (s & (SLAB_PAGES - 1)) << PAGE_SHIFT;
}

function checkPage(buf: Buffer, off: number): void {
  if (!(off >= 0 && off + PAGE_SIZE <= buf.length)) {
    throw new RangeError(`a page at offset ${off} needs ${PAGE_SIZE} bytes, the buffer has ${buf.length}`);
  }
}

function growU32(a: Uint32Array, n: number): Uint32Array {
  const b = new Uint32Array(n);
  b.set(a);
  return b;
}

function growI32(a: Int32Array, n: number): Int32Array {
  const b = new Int32Array(n);
  b.set(a);
  return b;
}
