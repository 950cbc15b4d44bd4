import { PAGE_SIZE } from './page.js';

/**
 * A target's store of page contents, keyed by the job's content ids (assigned by the source's
 * content index). Filled by the multicast scatter and by converge pages marked for storing;
 * read by the converge target to expand references. Pages live in large arena slabs, not one
 * Buffer per page.
 *
 * Slabs are allocated uninitialized: their memory is touched when pages are written. A store
 * that knows how much is coming (the scatter receiver does) reserves it in one slab up front
 * (reserve()); growing by 8 MiB slabs during a 512 MiB scatter made V8 run about 8 major
 * collections (each ArrayBuffer counts towards its external-memory trigger), pausing the
 * receiver 4-20 ms each while datagrams queued.
 */
export class ContentStore {
  private static readonly SLAB_PAGES = 2048; // 8 MiB per slab when growing
  /** Largest slab a reservation allocates (1 GiB; larger reservations take several). */
  private static readonly MAX_SLAB_PAGES = 1 << 18;
  private readonly slabs: Buffer[] = [];
  /** First slot of each slab, ascending. */
  private readonly slabFirst: number[] = [];
  /** Slots the slabs hold together. */
  private capacity = 0;
  private slotOf: Int32Array; // content id -> slot, -1 when absent
  private used = 0;

  constructor(expectedIds = 1024) {
    this.slotOf = new Int32Array(Math.max(16, expectedIds)).fill(-1);
  }

  get size(): number {
    return this.used;
  }

  /** Pages the slabs have room for, used or not. */
  get capacityPages(): number {
    return this.capacity;
  }

  /** Make room for `pages` more pages than the store holds, allocated now (not touched). */
  reserve(pages: number): void {
    if (!Number.isInteger(pages) || pages < 0) throw new RangeError(`pages to reserve must be a non-negative integer, got ${pages}`);
    let missing = this.used + pages - this.capacity;
    while (missing > 0) {
      const n = Math.min(missing, ContentStore.MAX_SLAB_PAGES);
      this.addSlab(n);
      missing -= n;
    }
  }

  has(id: number): boolean {
    return id >= 0 && id < this.slotOf.length && (this.slotOf[id] ?? -1) >= 0;
  }

  /** The stored page (a view into the arena; do not modify), or undefined. */
  get(id: number): Buffer | undefined {
    if (id < 0 || id >= this.slotOf.length) return undefined;
    const slot = this.slotOf[id] ?? -1;
    return slot < 0 ? undefined : this.view(slot);
  }

  /** Store a copy of `page` (PAGE_SIZE bytes at `off`) under `id`. Returns false if already held. */
  put(id: number, page: Buffer, off = 0): boolean {
    if (!Number.isInteger(id) || id < 0) throw new RangeError(`content id must be a non-negative integer, got ${id}`);
    if (this.has(id)) return false;
    if (id >= this.slotOf.length) this.grow(id + 1);
    const slot = this.used++;
    if (slot === this.capacity) this.addSlab(ContentStore.SLAB_PAGES);
    const dst = this.view(slot);
    page.copy(dst, 0, off, off + PAGE_SIZE);
    this.slotOf[id] = slot;
    return true;
  }

  /** Content ids held, ascending. */
  heldIds(): Uint32Array {
    const out = new Uint32Array(this.used);
    let n = 0;
    for (let id = 0; id < this.slotOf.length; id++) if ((this.slotOf[id] ?? -1) >= 0) out[n++] = id;
    return out;
  }

  private addSlab(pages: number): void {
    this.slabs.push(Buffer.allocUnsafe(pages * PAGE_SIZE));
    this.slabFirst.push(this.capacity);
    this.capacity += pages;
  }

  private view(slot: number): Buffer {
    // The last slab holds slot unless it was reserved further back (binary search).
    let i = this.slabs.length - 1;
    if (slot < this.slabFirst[i]!) {
      let lo = 0;
      let hi = i - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >>> 1;
        if (this.slabFirst[mid]! <= slot) lo = mid;
        else hi = mid - 1;
      }
      i = lo;
    }
    const off = (slot - this.slabFirst[i]!) * PAGE_SIZE;
    return this.slabs[i]!.subarray(off, off + PAGE_SIZE);
  }

  private grow(min: number): void {
    let n = this.slotOf.length;
    while (n < min) n *= 2;
    const next = new Int32Array(n).fill(-1);
    next.set(this.slotOf);
    this.slotOf = next;
  }
}
