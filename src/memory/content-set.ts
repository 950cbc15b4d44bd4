/**
 * A growable bitset of content ids: what one target is known to hold. The source consults it
 * on the converge hot path (one bit test per page), so it is a plain Uint32Array.
 */
export class ContentSet {
  private bits: Uint32Array;
  private n = 0;

  constructor(expectedIds = 1024) {
    this.bits = new Uint32Array(Math.max(1, (expectedIds + 31) >>> 5));
  }

  get size(): number {
    return this.n;
  }

  has(id: number): boolean {
    const w = id >>> 5;
    return w < this.bits.length && (this.bits[w]! & (1 << (id & 31))) !== 0;
  }

  add(id: number): void {
    const w = id >>> 5;
    if (w >= this.bits.length) {
      const next = new Uint32Array(Math.max(w + 1, this.bits.length * 2));
      next.set(this.bits);
      this.bits = next;
    }
    const m = 1 << (id & 31);
    if ((this.bits[w]! & m) === 0) {
      this.bits[w] = this.bits[w]! | m;
      this.n++;
    }
  }

  addAll(ids: Iterable<number>): void {
    for (const id of ids) this.add(id);
  }
}
