import { PAGE_SHIFT, PAGE_SIZE } from './page.js';

/** A RAM block as a stream announces it (MEM_SIZE). */
export interface RamImageBlock {
  name: string;
  usedLength: number;
}

/**
 * A target's RAM, materialized from a migration stream: one sparse area per RAM block, cut in
 * 2 MiB chunks that are allocated (zeroed) on the first non-zero write. A fresh target's RAM is
 * zero, so zero pages cost nothing, as in a real QEMU (whose RAM is anonymous memory, and whose
 * loader skips a zero page that already reads zero): a zero fill of a page that holds no data
 * is skipped, so it neither touches nor faults in memory.
 */
export class RamImage {
  static readonly CHUNK_PAGES = 512; // 2 MiB
  private static readonly CHUNK_SHIFT = 9;
  readonly blocks: readonly RamImageBlock[];
  private readonly chunks: (Buffer | undefined)[][];
  /** Per block, per page: 1 when the page may hold non-zero bytes (written or filled non-zero). */
  private readonly dirty: Uint8Array[];
  private readonly byName = new Map<string, number>();
  private allocated = 0;

  constructor(blocks: readonly RamImageBlock[]) {
    this.blocks = blocks.map((b) => ({ name: b.name, usedLength: b.usedLength }));
    this.chunks = this.blocks.map((b, i) => {
      if (b.usedLength % PAGE_SIZE !== 0 || b.usedLength <= 0) throw new RangeError(`RAM block "${b.name}" length ${b.usedLength} is not a positive multiple of ${PAGE_SIZE}`);
      if (this.byName.has(b.name)) throw new RangeError(`RAM block "${b.name}" listed twice`);
      this.byName.set(b.name, i);
      return new Array<Buffer | undefined>(Math.ceil(b.usedLength / PAGE_SIZE / RamImage.CHUNK_PAGES));
    });
    this.dirty = this.blocks.map((b) => new Uint8Array(b.usedLength / PAGE_SIZE));
  }

  /** Index of the block named `name`, or -1. */
  blockIndex(name: string): number {
    return this.byName.get(name) ?? -1;
  }

  /** Pages of block `block`. */
  pagesOf(block: number): number {
    return this.blocks[block]!.usedLength / PAGE_SIZE;
  }

  /** Bytes of chunk memory allocated (the image's real footprint). */
  get allocatedBytes(): number {
    return this.allocated;
  }

  /** Write the page at byte `offset` of `block` from `data` (PAGE_SIZE bytes at `dataOff`). */
  writePage(block: number, offset: number, data: Buffer, dataOff = 0): void {
    const page = this.pageIndex(block, offset);
    const chunk = this.chunkFor(block, page, true)!;
    const at = (page & (RamImage.CHUNK_PAGES - 1)) << PAGE_SHIFT;
    data.copy(chunk, at, dataOff, dataOff + PAGE_SIZE);
    this.dirty[block]![page] = 1;
  }

  /** Fill the page with one byte (a ZERO record). Fill 0 on a page that holds no data does nothing. */
  fillPage(block: number, offset: number, fill: number): void {
    const page = this.pageIndex(block, offset);
    const dirty = this.dirty[block]!;
    if (fill === 0 && dirty[page] === 0) return;
    const chunk = this.chunkFor(block, page, fill !== 0)!;
    const at = (page & (RamImage.CHUNK_PAGES - 1)) << PAGE_SHIFT;
    chunk.fill(fill, at, at + PAGE_SIZE);
    dirty[page] = fill === 0 ? 0 : 1;
  }

  /** View of page `page` (index within the block), or undefined when its chunk was never written (all zero). */
  pageView(block: number, page: number): Buffer | undefined {
    const chunk = this.chunks[block]?.[page >>> RamImage.CHUNK_SHIFT];
    if (!chunk) return undefined;
    const at = (page & (RamImage.CHUNK_PAGES - 1)) << PAGE_SHIFT;
    return chunk.subarray(at, at + PAGE_SIZE);
  }

  /** Copy page `page` of `block` into dst at dstOff (zeros when unallocated). */
  readPage(block: number, page: number, dst: Buffer, dstOff = 0): void {
    const v = this.pageView(block, page);
    if (v) v.copy(dst, dstOff);
    else dst.fill(0, dstOff, dstOff + PAGE_SIZE);
  }

  private pageIndex(block: number, offset: number): number {
    const b = this.blocks[block];
    if (!b) throw new RangeError(`no RAM block ${block}; the image has ${this.blocks.length}`);
    if (offset < 0 || offset >= b.usedLength || offset % PAGE_SIZE !== 0) throw new RangeError(`page offset 0x${offset.toString(16)} outside RAM block "${b.name}" of ${b.usedLength} bytes or not page-aligned`);
    return offset / PAGE_SIZE; // not >>>: blocks may exceed 4 GiB
  }

  private chunkFor(block: number, page: number, create: boolean): Buffer | undefined {
    const list = this.chunks[block]!;
    const ci = page >>> RamImage.CHUNK_SHIFT;
    let chunk = list[ci];
    if (!chunk && create) {
      const blockPages = this.blocks[block]!.usedLength / PAGE_SIZE;
      const pages = Math.min(RamImage.CHUNK_PAGES, blockPages - ci * RamImage.CHUNK_PAGES);
      chunk = Buffer.alloc(pages << PAGE_SHIFT);
      list[ci] = chunk;
      this.allocated += chunk.length;
    }
    return chunk;
  }
}
