import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { VmsError, ErrorCode } from '../errors.js';
import { PAGE_SHIFT, PAGE_SIZE, type PageSource } from './page.js';

/**
 * Page sources the scan reads guest RAM through. The content index only needs `PageSource`;
 * these are the two concrete readers: RAM already in memory, and a RAM file on disk
 * (a QEMU `memory-backend-file`, or a dumped image).
 */

/** A RAM image held in a Buffer (a simulated VM's RAM, a test fleet). */
export class BufferPageSource implements PageSource {
  readonly pageCount: number;

  constructor(readonly ram: Buffer) {
    if (ram.length % PAGE_SIZE !== 0) {
      throw new VmsError(
        ErrorCode.CONFIG,
        `RAM image must be a whole number of ${PAGE_SIZE}-byte pages, got ${ram.length} bytes; pad or trim it`,
      );
    }
    this.pageCount = ram.length >>> PAGE_SHIFT;
  }

  readPages(first: number, count: number, dst: Buffer): void {
    checkRange(this.pageCount, first, count, dst);
    this.ram.copy(dst, 0, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
  }
}

/**
 * A RAM file read with positioned reads: QEMU's shared memory-backend file (`share=on`), so the
 * source agent sees guest RAM without stopping the guest. Reads are synchronous on purpose: the
 * scan is CPU-bound and sequential, and an async read per batch would only add latency.
 */
export class FilePageSource implements PageSource {
  readonly pageCount: number;
  private fd: number;

  constructor(readonly path: string) {
    try {
      this.fd = openSync(path, 'r');
    } catch (cause) {
      throw new VmsError(ErrorCode.CONFIG, `cannot open RAM file ${path} for reading; check the path and permissions`, { cause });
    }
    const size = fstatSync(this.fd).size;
    if (size % PAGE_SIZE !== 0) {
      closeSync(this.fd);
      throw new VmsError(ErrorCode.CONFIG, `RAM file ${path} is ${size} bytes, not a whole number of ${PAGE_SIZE}-byte pages`);
    }
    this.pageCount = size / PAGE_SIZE;
  }

  readPages(first: number, count: number, dst: Buffer): void {
    checkRange(this.pageCount, first, count, dst);
    const want = count * PAGE_SIZE;
    let done = 0;
    while (done < want) {
      const n = readSync(this.fd, dst, done, want - done, first * PAGE_SIZE + done);
      if (n === 0) {
        throw new VmsError(ErrorCode.QEMU, `RAM file ${this.path} ended early at byte ${first * PAGE_SIZE + done}; was it truncated?`);
      }
      done += n;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function checkRange(pageCount: number, first: number, count: number, dst: Buffer): void {
  if (first < 0 || count < 0 || first + count > pageCount || dst.length < count * PAGE_SIZE) {
    throw new RangeError(
      `readPages(${first}, ${count}) outside 0..${pageCount} pages or into a ${dst.length}-byte buffer`,
    );
  }
}
