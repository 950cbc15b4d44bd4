/** Guest page size handled everywhere (x86 TARGET_PAGE_SIZE). */
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

/** Content id of an all-zero page in per-page content arrays. Real content ids are >= 0. */
export const ZERO_CONTENT = -1;

/**
 * Read access to a VM's RAM (one RAM block, page-indexed): a simulated VM, a QEMU
 * memory-backend file. Reads are synchronous: scanning is CPU-bound and sequential.
 */
export interface PageSource {
  readonly pageCount: number;
  /** Copy pages [first, first+count) into dst (dst.length >= count * PAGE_SIZE). */
  readPages(first: number, count: number, dst: Buffer): void;
}

/** True when every byte of the page at `off` in `buf` is zero. */
export function isZeroPage(buf: Buffer, off = 0): boolean {
  // Word-wise check over a Float64-free view: compare 8 bytes at a time via BigUint64 would
  // allocate; a Uint32Array view over the same memory is fast and allocation-free when aligned.
  const start = buf.byteOffset + off;
  if ((start & 3) === 0) {
    const words = new Uint32Array(buf.buffer, start, PAGE_SIZE >>> 2);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = off; i < off + PAGE_SIZE; i++) if (buf[i] !== 0) return false;
  return true;
}
