import { PAGE_SIZE } from './page.js';

/**
 * A target's store of page contents, keyed by the job's content ids (assigned by the source's
 * content index). Filled by the multicast scatter and by converge pages marked for storing;
 * read by the converge target to expand references. Pages live in large arena slabs, not one
 * Buffer per page.
 */
export class ContentStore {
  private static readonly SLAB_PAGES = 2048; // 8 MiB per slab
  private readonly slabs: Buffer[] = [];
  private slotOf: Int32Array; // content id -> slot, -1 when absent
  private used = 0;

  constructor(expectedIds = 1024) {
    this.slotOf = new Int32Array(Math.max(16, expectedIds)).fill(-1);
  }

  get size(): number {
    return this.used;
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
    const slabIdx = Math.floor(slot / ContentStore.SLAB_PAGES);
    if (slabIdx === this.slabs.length) this.slabs.push(Buffer.allocUnsafe(ContentStore.SLAB_PAGES * PAGE_SIZE));
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

  private view(slot: number): Buffer {
    const slab = this.slabs[Math.floor(slot / ContentStore.SLAB_PAGES)]!;
    const off = (slot % ContentStore.SLAB_PAGES) * PAGE_SIZE;
    return slab.subarray(off, off + PAGE_SIZE);
  }

  private grow(min: number): void {
    let n = this.slotOf.length;
    while (n < min) n *= 2;
    const next = new Int32Array(n).fill(-1);
    next.set(this.slotOf);
    this.slotOf = next;
  }
}
