import { makeRng as prng } from '../../src/rng.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import xxhash from 'xxhash-wasm';
import { describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { ContentIndex, type PageHash, type VmScan } from '../../src/memory/content-index.js';
import { PAGE_SIZE, ZERO_CONTENT, type PageSource } from '../../src/memory/page.js';
import { BufferPageSource, FilePageSource } from '../../src/memory/scan.js';


/** A non-zero page determined by `label` (label 0 is the zero page). */
function page(label: number): Buffer {
  const p = Buffer.alloc(PAGE_SIZE);
  if (label === 0) return p;
  const rnd = prng(label * 7919);
  for (let i = 0; i < PAGE_SIZE; i += 4) p.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i);
  return p;
}

/** RAM image from page labels. */
function ram(labels: number[]): Buffer {
  return Buffer.concat(labels.map(page));
}

/** Two pages get the same content id iff their bytes are equal (zero pages get ZERO_CONTENT). */
function expectIdsMatchBytes(vms: Array<{ ram: Buffer; scan: VmScan }>): void {
  const idByBytes = new Map<string, number>();
  const bytesById = new Map<number, string>();
  for (const { ram: r, scan } of vms) {
    for (let p = 0; p < scan.pages; p++) {
      const bytes = r.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
      const id = scan.pageContent[p]!;
      if (bytes.equals(Buffer.alloc(PAGE_SIZE))) {
        expect(id).toBe(ZERO_CONTENT);
        continue;
      }
      const key = bytes.toString('base64');
      const known = idByBytes.get(key);
      if (known === undefined) idByBytes.set(key, id);
      else expect(id, `page ${p} of VM ${scan.name}`).toBe(known);
      const other = bytesById.get(id);
      if (other === undefined) bytesById.set(id, key);
      else expect(other === key, `content ${id} has two different byte strings`).toBe(true);
    }
  }
}

describe('ContentIndex scan', () => {
  it('classifies zero pages, intra-VM duplicates, cross-VM shared and unique pages', async () => {
    const index = await ContentIndex.create();
    const a = ram([0, 1, 2, 1, 0, 3]);
    const b = ram([1, 4, 0, 4, 5]);
    const c = ram([6]);
    const sa = index.addVm('a', new BufferPageSource(a));
    const sb = index.addVm('b', new BufferPageSource(b));
    const sc = index.addVm('c', new BufferPageSource(c));

    // Ids are dense, in order of first sight across the fleet.
    expect([...sa.pageContent]).toEqual([-1, 0, 1, 0, -1, 2]);
    expect([...sb.pageContent]).toEqual([0, 3, -1, 3, 4]);
    expect([...sc.pageContent]).toEqual([5]);
    expect([sa.vm, sb.vm, sc.vm]).toEqual([0, 1, 2]);
    expect(sa.zeroPages).toBe(2);
    expect(sb.zeroPages).toBe(1);
    expect([...sa.distinct]).toEqual([0, 1, 2]);
    expect([...sb.distinct]).toEqual([0, 3, 4]);
    expect([...sc.distinct]).toEqual([5]);

    expect(index.contentCount).toBe(6);
    expect(index.occurrences(0)).toBe(3);
    expect(index.vmCount(0)).toBe(2);
    expect(index.occurrences(3)).toBe(2);
    expect(index.vmCount(3)).toBe(1);
    expect(index.occurrences(1)).toBe(1);
    expect(index.occurrences(99)).toBe(0);
    expect(index.firstLocation(3)).toEqual({ vm: 1, page: 1 });
    expect(index.vmName(1)).toBe('b');

    // Only contents seen twice keep bytes.
    expect(index.contentBytes(0)?.equals(page(1))).toBe(true);
    expect(index.contentBytes(3)?.equals(page(4))).toBe(true);
    expect(index.contentBytes(1)).toBeUndefined();
    expect(index.contentBytes(-1)).toBeUndefined();
    expect(index.isStored(0)).toBe(true);
    expect(index.isStored(5)).toBe(false);

    expect(index.stats()).toEqual({
      vms: 3,
      pages: 12,
      zeroPages: 3,
      distinct: 6,
      storedContents: 2,
      sharedAcrossVms: 1,
      intraVmDuplicatePages: 2,
      hashCollisions: 0,
      arenaBytes: 8 * 1024 * 1024,
    });
  });

  it('treats a page as zero only if every byte is zero', async () => {
    const index = await ContentIndex.create();
    const pages = [Buffer.alloc(PAGE_SIZE), Buffer.alloc(PAGE_SIZE), Buffer.alloc(PAGE_SIZE), Buffer.alloc(PAGE_SIZE)];
    pages[1]![PAGE_SIZE - 1] = 1; // first word zero, last byte not
    pages[2]![3] = 0x80; // top bit of the first word
    pages[3]![2048] = 1;
    const s = index.addVm('v', new BufferPageSource(Buffer.concat(pages)));
    expect([...s.pageContent]).toEqual([ZERO_CONTENT, 0, 1, 2]);
    expect(s.zeroPages).toBe(1);
  });

  it('crosses batch boundaries and reports progress every 65536 pages', async () => {
    // A synthetic source: page p holds label (p % 1000) in its last word, so every page is
    // non-zero only past its first word and duplicates sit far apart, across batches.
    const pageCount = 70_000;
    const source: PageSource = {
      pageCount,
      readPages(first, count, dst) {
        dst.fill(0, 0, count * PAGE_SIZE);
        for (let i = 0; i < count; i++) {
          const p = first + i;
          if (p % 3 !== 0) dst.writeUInt32LE(1 + (p % 1000), i * PAGE_SIZE + PAGE_SIZE - 4);
        }
      },
    };
    const index = await ContentIndex.create({ expectedPages: 16 }); // forces table and array growth
    const progress: number[] = [];
    const s = index.addVm('big', source, (n) => progress.push(n));
    expect(progress).toEqual([65536, 70000]);
    expect(index.contentCount).toBe(1000);
    expect(s.zeroPages).toBe(Math.ceil(pageCount / 3));
    // Page p and page p - 3000 carry the same label and the same zero-ness.
    let mismatches = 0;
    for (let p = 0; p < pageCount; p++) {
      const id = s.pageContent[p]!;
      if (p % 3 === 0 ? id !== ZERO_CONTENT : id < 0 || (p >= 3000 && id !== s.pageContent[p - 3000])) mismatches++;
    }
    expect(mismatches).toBe(0);
    expect(index.stats().storedContents).toBe(1000);
    expect(s.distinct.length).toBe(1000);
  });

  it('grows its per-content arrays and arena past their initial size', async () => {
    // 3000 distinct contents, each twice: more than the initial 1024 ids and one 2048-page slab.
    const distinct = 3000;
    const labelled = (label: number, dst: Buffer, off: number): void => {
      dst.fill(0, off, off + PAGE_SIZE);
      dst.writeUInt32LE(label + 1, off);
      dst.writeUInt32LE(label ^ 0x5a5a5a5a, off + PAGE_SIZE - 4);
    };
    const source: PageSource = {
      pageCount: 2 * distinct,
      readPages(first, count, dst) {
        for (let i = 0; i < count; i++) labelled((first + i) % distinct, dst, i * PAGE_SIZE);
      },
    };
    const index = await ContentIndex.create();
    const s = index.addVm('v', source);
    expect(index.contentCount).toBe(distinct);
    expect(index.stats().storedContents).toBe(distinct);
    expect(index.stats().arenaBytes).toBe(2 * 8 * 1024 * 1024);
    expect(index.stats().intraVmDuplicatePages).toBe(distinct);
    const probe = Buffer.alloc(PAGE_SIZE);
    for (const label of [0, 1023, 1024, 2047, 2048, 2999]) {
      expect(s.pageContent[label]).toBe(label);
      expect(s.pageContent[label + distinct]).toBe(label);
      labelled(label, probe, 0);
      expect(index.lookup(probe)).toBe(label);
      expect(index.contentBytes(label)?.equals(probe)).toBe(true);
    }
  });

  it('reads a file-backed RAM image the same way as an in-memory one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vms-scan-'));
    try {
      const image = ram([0, 7, 8, 7, 0, 0, 9, 8]);
      const path = join(dir, 'ram.img');
      writeFileSync(path, image);
      const fromFile = new FilePageSource(path);
      const i1 = await ContentIndex.create();
      const i2 = await ContentIndex.create();
      const s1 = i1.addVm('f', fromFile);
      const s2 = i2.addVm('m', new BufferPageSource(image));
      fromFile.close();
      expect([...s1.pageContent]).toEqual([...s2.pageContent]);
      expect(i1.stats()).toEqual(i2.stats());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects RAM images that are not whole pages', () => {
    expect(() => new BufferPageSource(Buffer.alloc(PAGE_SIZE + 1))).toThrow(VmsError);
    try {
      new BufferPageSource(Buffer.alloc(10));
    } catch (e) {
      expect((e as VmsError).code).toBe(ErrorCode.CONFIG);
    }
  });
});

describe('ContentIndex lookup', () => {
  it('finds stored contents after the scan, byte-exact, at any offset', async () => {
    const index = await ContentIndex.create();
    index.addVm('a', new BufferPageSource(ram([1, 2, 1, 3])));
    index.addVm('b', new BufferPageSource(ram([3, 4])));
    expect(index.lookup(page(1))).toBe(0);
    expect(index.lookup(page(3))).toBe(2);
    expect(index.lookup(page(2))).toBe(-1); // seen once: not stored, not usable for dedup
    expect(index.lookup(page(5))).toBe(-1); // never seen
    expect(index.lookup(page(0))).toBe(-1); // zero pages are never stored

    // Inside a larger buffer, at an unaligned offset.
    const big = Buffer.concat([Buffer.alloc(17, 0xaa), page(3), Buffer.alloc(5)]);
    expect(index.lookup(big, 17)).toBe(2);
    const h = index.hashPage(big, 17);
    expect(h).toBe(index.hashPage(page(3)));
    expect(index.lookupHashed(h, big, 17)).toBe(2);

    // One flipped bit anywhere is another content.
    const near = Buffer.from(page(1));
    near[PAGE_SIZE - 1]! ^= 1;
    expect(index.lookup(near)).toBe(-1);

    expect(() => index.lookup(Buffer.alloc(100))).toThrow(RangeError);
    expect(() => index.lookup(page(1), 1)).toThrow(RangeError);
  });

  it('hashes with seeded xxhash64, a random seed unless given', async () => {
    const { h64Raw } = await xxhash();
    const seeded = await ContentIndex.create({ seed: 12345n });
    expect(seeded.hashPage(page(1))).toBe(h64Raw(page(1), 12345n));
    const a = await ContentIndex.create();
    const b = await ContentIndex.create();
    expect(a.hashPage(page(1))).not.toBe(b.hashPage(page(1)));
    await expect(ContentIndex.create({ seed: -1n })).rejects.toThrow(VmsError);
  });
});

describe('ContentIndex collision safety', () => {
  it('keeps different pages with the same hash apart (forced constant hash)', async () => {
    const constant: PageHash = () => 42n;
    const index = await ContentIndex.create({ hash: constant });
    const s1 = index.addVm('a', new BufferPageSource(ram([1, 2, 1, 0])));
    const s2 = index.addVm('b', new BufferPageSource(ram([2, 3, 1])));
    expect([...s1.pageContent]).toEqual([0, 1, 0, ZERO_CONTENT]);
    expect([...s2.pageContent]).toEqual([1, 2, 0]);
    expect(index.contentCount).toBe(3);
    expect(index.occurrences(0)).toBe(3);
    expect(index.vmCount(1)).toBe(2);
    expect(index.contentBytes(0)?.equals(page(1))).toBe(true);
    expect(index.contentBytes(1)?.equals(page(2))).toBe(true);

    expect(index.lookup(page(1))).toBe(0);
    expect(index.lookup(page(2))).toBe(1);
    expect(index.lookup(page(3))).toBe(-1); // in the chain, but seen once: not stored
    expect(index.lookup(page(4))).toBe(-1); // colliding hash, new bytes
    // Every page that met a chain of different bytes counts as a collision.
    expect(index.stats().hashCollisions).toBe(2);
  });

  it('a crafted page colliding with another VM\'s content does not take its id', async () => {
    // The attacker page differs from the victim page in one byte; the hash ignores that byte.
    const victim = page(10);
    const crafted = Buffer.from(victim);
    crafted[2000]! ^= 0xff;
    const weak: PageHash = (buf, off) => BigInt(buf.readUInt32LE(off));
    const index = await ContentIndex.create({ hash: weak });
    const sv = index.addVm('victim', new BufferPageSource(Buffer.concat([victim, victim])));
    const sa = index.addVm('attacker', new BufferPageSource(crafted));
    expect(sa.pageContent[0]).not.toBe(sv.pageContent[0]);
    expect(index.lookup(crafted)).toBe(-1);
    expect(index.lookup(victim)).toBe(sv.pageContent[0]);
    expect(index.contentBytes(sv.pageContent[0]!)?.equals(victim)).toBe(true);
  });

  it('does not merge when the first occurrence changed before the second candidate', async () => {
    const index = await ContentIndex.create();
    const ramA = ram([1, 2]);
    index.addVm('a', new BufferPageSource(ramA));
    page(9).copy(ramA, 0); // the guest rewrote page 0 after it was hashed
    const sb = index.addVm('b', new BufferPageSource(ram([1])));
    expect(sb.pageContent[0]).not.toBe(0);
    expect(index.contentBytes(0)).toBeUndefined();
    expect(index.stats().hashCollisions).toBe(1);
    // A third VM with the same bytes matches B's content, whose RAM did not change.
    const sc = index.addVm('c', new BufferPageSource(ram([1])));
    expect(sc.pageContent[0]).toBe(sb.pageContent[0]);
    expect(index.lookup(page(1))).toBe(sb.pageContent[0]);
    expect(index.contentBytes(sb.pageContent[0]!)?.equals(page(1))).toBe(true);
  });

  it('does not merge within one VM when the page changes between batches', async () => {
    // 300 pages: page 0 and page 299 hold the same bytes when read, but the guest rewrites
    // page 0 after the first batch has been read.
    const image = Buffer.alloc(300 * PAGE_SIZE);
    page(1).copy(image, 0);
    page(1).copy(image, 299 * PAGE_SIZE);
    let reads = 0;
    const source: PageSource = {
      pageCount: 300,
      readPages(first, count, dst) {
        if (reads++ === 1) page(2).copy(image, 0);
        image.copy(dst, 0, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
      },
    };
    const index = await ContentIndex.create();
    const s = index.addVm('v', source);
    expect(s.pageContent[0]).toBe(0);
    expect(s.pageContent[299]).toBe(1);
    expect(index.stats().storedContents).toBe(0);
  });
});

describe('ContentIndex property: same id iff same bytes', () => {
  const cases: Array<{ name: string; hash?: PageHash }> = [
    { name: 'xxhash64' },
    // 4 hash values: long chains of different contents behind every entry.
    { name: 'weak 2-bit hash', hash: (buf, off) => BigInt((buf[off + 100]! ^ buf[off + 4000]!) & 3) },
  ];
  for (const { name, hash } of cases) {
    it(`random small fleets, ${name}`, async () => {
      const rnd = prng(name.length * 1000 + 1);
      for (let round = 0; round < 25; round++) {
        const index = await ContentIndex.create(hash ? { hash, expectedPages: 8 } : { expectedPages: 8 });
        // An alphabet of contents: random pages and near-duplicates differing in one byte.
        const alphabet: Buffer[] = [Buffer.alloc(PAGE_SIZE)];
        const base = page(round + 1000);
        for (let k = 0; k < 2 + Math.floor(rnd() * 12); k++) {
          if (rnd() < 0.5) alphabet.push(page(round * 100 + k + 1));
          else {
            const near = Buffer.from(base);
            near[Math.floor(rnd() * PAGE_SIZE)]! ^= 1 + Math.floor(rnd() * 255);
            alphabet.push(near);
          }
        }
        const vms: Array<{ ram: Buffer; scan: VmScan }> = [];
        const vmTotal = 1 + Math.floor(rnd() * 5);
        for (let v = 0; v < vmTotal; v++) {
          const pages = Math.floor(rnd() * 40) + (rnd() < 0.2 ? 260 : 0); // sometimes > one batch
          const r = Buffer.concat(Array.from({ length: pages }, () => alphabet[Math.floor(rnd() * alphabet.length)]!));
          vms.push({ ram: r, scan: index.addVm(`vm${v}`, new BufferPageSource(r)) });
        }
        expectIdsMatchBytes(vms);

        // Counters agree with a recount from the per-page arrays.
        const occ = new Map<number, number>();
        const holders = new Map<number, Set<number>>();
        let zero = 0;
        for (const { scan } of vms) {
          for (const id of scan.pageContent) {
            if (id === ZERO_CONTENT) {
              zero++;
              continue;
            }
            occ.set(id, (occ.get(id) ?? 0) + 1);
            (holders.get(id) ?? holders.set(id, new Set()).get(id)!).add(scan.vm);
          }
          const want = [...new Set(scan.pageContent)].filter((id) => id !== ZERO_CONTENT).sort((x, y) => x - y);
          expect([...scan.distinct]).toEqual(want);
        }
        const st = index.stats();
        expect(st.zeroPages).toBe(zero);
        expect(st.distinct).toBe(occ.size);
        expect(index.contentCount).toBe(occ.size);
        expect(st.storedContents).toBe([...occ.values()].filter((n) => n >= 2).length);
        expect(st.sharedAcrossVms).toBe([...holders.values()].filter((s) => s.size >= 2).length);
        for (const [id, n] of occ) {
          expect(index.occurrences(id)).toBe(n);
          expect(index.vmCount(id)).toBe(holders.get(id)!.size);
          // Stored bytes are exactly the bytes, and lookup finds them.
          const bytes = index.contentBytes(id);
          expect(bytes !== undefined).toBe(n >= 2);
          if (bytes) expect(index.lookup(Buffer.from(bytes))).toBe(id);
        }
        // Every alphabet page: lookup returns a stored content with exactly those bytes, or -1.
        for (const p of alphabet) {
          const id = index.lookup(p);
          if (id >= 0) expect(index.contentBytes(id)?.equals(p)).toBe(true);
        }
      }
    });
  }
});
