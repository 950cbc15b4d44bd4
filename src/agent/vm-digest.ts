/**
 * RAM digests for verifying a migration across processes: the source agent digests the stopped
 * source VM, the target agent digests the rebuilt image, and equal digests mean equal RAM. Both
 * sides walk the blocks by name and feed every page (a zero page as a one-byte marker), so an
 * allocated-but-zero chunk on one side and an absent one on the other compare equal.
 */
import { createHash } from 'node:crypto';
import { PAGE_SIZE, isZeroPage } from '../memory/page.js';
import type { RamImage } from '../memory/ram-image.js';
import type { SimVm } from '../memory/sim-vm.js';

const ZERO = Buffer.from([0]);
const DATA = Buffer.from([1]);

interface BlockReader {
  name: string;
  bytes: number;
  /** Page p of the block into dst, or false when the page is known to be zero. */
  read(p: number, dst: Buffer): boolean;
}

function digestBlocks(blocks: BlockReader[]): string {
  const h = createHash('sha256');
  const page = Buffer.alloc(PAGE_SIZE);
  for (const b of [...blocks].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))) {
    h.update(`${b.name}:${b.bytes}\n`);
    const pages = b.bytes / PAGE_SIZE;
    for (let p = 0; p < pages; p++) {
      if (!b.read(p, page) || isZeroPage(page)) h.update(ZERO);
      else h.update(DATA).update(page);
    }
  }
  return h.digest('hex');
}

/** Digest of a simulated VM's RAM (all blocks). Meaningful once the VM is stopped. */
export function simVmDigest(vm: SimVm): string {
  return digestBlocks(
    vm.blocks.map((b) => ({
      name: b.name,
      bytes: b.usedLength,
      read: (p, dst) => {
        vm.readPage(b.firstPage + p, dst, 0);
        return true;
      },
    })),
  );
}

/** Digest of a rebuilt RAM image, comparable with simVmDigest. */
export function ramImageDigest(image: RamImage): string {
  return digestBlocks(
    image.blocks.map((b, i) => ({
      name: b.name,
      bytes: b.usedLength,
      read: (p, dst) => {
        const v = image.pageView(i, p);
        if (!v) return false;
        v.copy(dst);
        return true;
      },
    })),
  );
}
