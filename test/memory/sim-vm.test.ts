import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { RamImage } from '../../src/memory/ram-image.js';
import { makeRng } from '../../src/rng.js';
import { DEFAULT_PROFILE, defaultFleet, MEASURED_GUEST, type SimVmSpec, validateFleet, validateSpec } from '../../src/memory/sim-profile.js';
import { descIndex, descKind, PageKind, SimVm } from '../../src/memory/sim-vm.js';

const MiB = 1024 * 1024;

function spec(over: Partial<SimVmSpec> = {}): SimVmSpec {
  return { ...defaultFleet({ vms: 1, memoryMiB: 16 })[0]!, ...over };
}

function pageHash(vm: SimVm, idx: number, buf: Buffer): string {
  vm.readPage(idx, buf, 0);
  return createHash('sha1').update(buf).digest('base64');
}

/** Distinct non-zero contents of pc.ram, by bytes. */
function contentsOf(vm: SimVm): { zero: number; nonZero: number; distinct: Set<string> } {
  const buf = Buffer.alloc(PAGE_SIZE);
  const distinct = new Set<string>();
  let zero = 0;
  let nonZero = 0;
  for (let i = 0; i < vm.pageCount; i++) {
    vm.readPage(i, buf, 0);
    if (buf.equals(Buffer.alloc(PAGE_SIZE))) {
      zero++;
      expect(vm.isZero(i)).toBe(true);
      continue;
    }
    expect(vm.isZero(i)).toBe(false);
    nonZero++;
    distinct.add(createHash('sha1').update(buf).digest('base64'));
  }
  return { zero, nonZero, distinct };
}

function expectConfig(fn: () => unknown, text: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VmsError);
    expect((e as VmsError).code).toBe(ErrorCode.CONFIG);
    expect((e as Error).message).toMatch(text);
    return;
  }
  throw new Error('expected a VmsError(CONFIG)');
}

describe('simulated VM content', () => {
  it('has QEMU-like RAM blocks over one descriptor array', () => {
    const vm = new SimVm(spec());
    expect(vm.blocks.map((b) => [b.name, b.usedLength, b.firstPage])).toEqual([
      ['pc.ram', 16 * MiB, 0],
      ['pc.bios', 256 * 1024, 4096],
      ['pc.rom', 128 * 1024, 4096 + 64],
    ]);
    expect(vm.pageCount).toBe(4096);
    expect(vm.totalPages).toBe(4096 + 96);
    expect(vm.locate(4096 + 70)).toEqual({ block: 2, offset: 6 * PAGE_SIZE });
  });

  it('is deterministic: the same spec gives the same bytes', () => {
    const a = new SimVm(spec());
    const b = new SimVm(spec());
    const ha = createHash('sha256');
    const hb = createHash('sha256');
    const buf = Buffer.alloc(256 * PAGE_SIZE);
    for (let f = 0; f < a.pageCount; f += 256) {
      a.readPages(f, 256, buf);
      ha.update(buf);
      b.readPages(f, 256, buf);
      hb.update(buf);
    }
    expect(ha.digest('hex')).toBe(hb.digest('hex'));
    for (let i = 0; i < a.totalPages; i++) expect(a.descriptorOf(i)).toBe(b.descriptorOf(i));
    // A different seed lays the VM out differently.
    const c = new SimVm(spec({ seed: 99 }));
    let same = 0;
    for (let i = 0; i < a.pageCount; i++) if (a.descriptorOf(i) === c.descriptorOf(i)) same++;
    expect(same).toBeLessThan(a.pageCount * 0.8);
  });

  it('readPage works at unaligned offsets and readPages matches readPage', () => {
    const vm = new SimVm(spec());
    const idx = Array.from({ length: vm.pageCount }, (_, i) => i).find((i) => descKind(vm.descriptorOf(i)) === PageKind.UNIQUE)!;
    const aligned = Buffer.alloc(PAGE_SIZE);
    vm.readPage(idx, aligned);
    const odd = Buffer.alloc(PAGE_SIZE + 3);
    vm.readPage(idx, odd, 3);
    expect(odd.subarray(3).equals(aligned)).toBe(true);
    const many = Buffer.alloc(4 * PAGE_SIZE);
    vm.readPages(idx, 4, many);
    expect(many.subarray(0, PAGE_SIZE).equals(aligned)).toBe(true);
    expect(() => vm.readPages(vm.pageCount - 1, 2, many)).toThrow(RangeError);
  });

  it('shares OS content across VMs of an OS image, tenant content within a tenant, nothing unique', () => {
    const [a, b, c] = defaultFleet({ vms: 3, memoryMiB: 16 }).map((s) => new SimVm(s)) as [SimVm, SimVm, SimVm];
    expect(a.spec.tenant).toBe(c.spec.tenant);
    expect(a.spec.tenant).not.toBe(b.spec.tenant);
    const find = (vm: SimVm, kind: PageKind, index: number): number => {
      for (let i = 0; i < vm.pageCount; i++) {
        const d = vm.descriptorOf(i);
        if (descKind(d) === kind && descIndex(d) === index) return i;
      }
      throw new Error(`no page of kind ${kind} index ${index} in ${vm.name}`);
    };
    const buf = Buffer.alloc(PAGE_SIZE);
    for (const k of [0, 7, 100]) {
      expect(pageHash(a, find(a, PageKind.OS, k), buf)).toBe(pageHash(b, find(b, PageKind.OS, k), buf));
      expect(pageHash(a, find(a, PageKind.TENANT, k), buf)).toBe(pageHash(c, find(c, PageKind.TENANT, k), buf));
      expect(pageHash(a, find(a, PageKind.TENANT, k), buf)).not.toBe(pageHash(b, find(b, PageKind.TENANT, k), buf));
      expect(pageHash(a, find(a, PageKind.UNIQUE, k), buf)).not.toBe(pageHash(b, find(b, PageKind.UNIQUE, k), buf));
      expect(pageHash(a, find(a, PageKind.OS, k), buf)).not.toBe(pageHash(a, find(a, PageKind.UNIQUE, k), buf));
    }
    // Another OS image shares nothing.
    const other = new SimVm({ ...a.spec, name: 'other', seed: 77, osImage: 'alpine-3.19' });
    expect(pageHash(a, find(a, PageKind.OS, 7), buf)).not.toBe(pageHash(other, find(other, PageKind.OS, 7), buf));
    // Firmware is the same in every VM.
    expect(pageHash(a, a.totalPages - 90, buf)).toBe(pageHash(other, other.totalPages - 90, buf));
    // Fill pages are uniform 0xCC.
    a.readPage(find(a, PageKind.FILL, 0xcc), buf);
    expect(buf.every((x) => x === 0xcc)).toBe(true);
  });

  it('follows the measured profile over a 64 MiB VM (fractions by bytes)', () => {
    const vm = new SimVm(defaultFleet({ vms: 1, memoryMiB: 64 })[0]!);
    const { zero, nonZero, distinct } = contentsOf(vm);
    const n = vm.pageCount;
    expect(zero / n).toBeCloseTo(MEASURED_GUEST.zeroFraction, 3);
    expect((nonZero - distinct.size) / n).toBeCloseTo(MEASURED_GUEST.dupNonZeroFraction, 2);
    expect(Math.abs(distinct.size / n - MEASURED_GUEST.distinctNonZeroFraction)).toBeLessThan(0.003);
    // Bytes and descriptors agree on identity: as many distinct contents as distinct keys.
    const keys = new Set<string>();
    for (let i = 0; i < n; i++) if (!vm.isZero(i)) keys.add(vm.contentKey(i));
    expect(keys.size).toBe(distinct.size);
  });

  it('the default fleet reproduces the measured ~32% cross-VM saving for 3 VMs', () => {
    const vms = defaultFleet({ vms: 3, memoryMiB: 64 }).map((s) => new SimVm(s));
    const all = new Set<string>();
    let perVm = 0;
    for (const vm of vms) {
      const { distinct } = contentsOf(vm);
      perVm += distinct.size;
      for (const h of distinct) all.add(h);
    }
    const saving = 1 - all.size / perVm;
    expect(saving).toBeGreaterThan(MEASURED_GUEST.crossVmSaving3 - 0.01);
    expect(saving).toBeLessThan(MEASURED_GUEST.crossVmSaving3 + 0.01);
  });

  it('never generates an all-zero page for a non-zero descriptor, so ZERO records are exact', () => {
    const vm = new SimVm(spec({ memoryBytes: 8 * MiB, workingSetPages: 256 }));
    const buf = Buffer.alloc(PAGE_SIZE);
    const zero = Buffer.alloc(PAGE_SIZE);
    for (let i = 0; i < vm.totalPages; i++) {
      vm.readPage(i, buf);
      expect(buf.equals(zero)).toBe(vm.isZero(i));
    }
  });
});

describe('simulated VM dirtying', () => {
  it('applies writes lazily and deterministically over the working set', () => {
    const s = spec({ dirtyPagesPerSec: 500, workingSetPages: 256 });
    const a = new SimVm(s);
    const b = new SimVm(s);
    for (const vm of [a, b]) {
      vm.start(0);
      expect(vm.advance(1000)).toBe(500);
      expect(vm.advance(1000)).toBe(0);
      expect(vm.advance(1001)).toBe(0); // 0.5 write carried
      expect(vm.advance(1002)).toBe(1);
    }
    for (let i = 0; i < a.totalPages; i++) expect(a.descriptorOf(i)).toBe(b.descriptorOf(i));
    const log = a.syncDirty(1002);
    expect(log.count).toBeGreaterThan(200);
    expect(log.count).toBeLessThanOrEqual(256);
    const dirtied: number[] = [];
    for (let i = 0; i < a.totalPages; i++) if (log.bits[i >>> 5]! & (1 << (i & 31))) dirtied.push(i);
    expect(dirtied.length).toBe(log.count);
    for (const p of dirtied) expect(descKind(a.descriptorOf(p))).toBe(PageKind.DIRTY);
    expect(a.syncDirty(1002).count).toBe(0);
    expect(a.writeCount).toBe(501);
    // Every write gives fresh content: dirtied pages all differ from each other.
    const buf = Buffer.alloc(PAGE_SIZE);
    expect(new Set(dirtied.map((p) => pageHash(a, p, buf))).size).toBe(dirtied.length);
  });

  it('stop() freezes the guest and records stoppedAt; cont() resumes without catching up', () => {
    const vm = new SimVm(spec({ dirtyPagesPerSec: 1000, workingSetPages: 64 }));
    expect(vm.state).toBe('idle');
    expect(vm.advance(5000)).toBe(0);
    vm.start(0);
    vm.stop(100);
    expect(vm.state).toBe('stopped');
    expect(vm.stopped).toBe(true);
    expect(vm.stoppedAt).toBe(100);
    expect(vm.writeCount).toBe(100);
    expect(vm.advance(10_000)).toBe(0);
    vm.cont(10_000);
    expect(vm.advance(10_010)).toBe(10);
  });

  it('compares itself with a materialized image byte for byte', () => {
    const vm = new SimVm(spec({ memoryBytes: 4 * MiB, workingSetPages: 256 }));
    const image = new RamImage(vm.blocks);
    const buf = Buffer.alloc(PAGE_SIZE);
    for (let g = 0; g < vm.totalPages; g++) {
      if (vm.isZero(g)) continue;
      const { block, offset } = vm.locate(g);
      vm.readPage(g, buf);
      image.writePage(block, offset, buf);
    }
    expect(vm.sameAs(image)).toEqual({ equal: true, firstDiffPage: -1 });
    vm.start(0);
    vm.touch(17);
    expect(vm.sameAs(image)).toEqual({ equal: false, firstDiffPage: 17 });
    expect(() => vm.verifyAgainst(image)).toThrow(/offset 0x11000/);
    expect(vm.sameAs(new RamImage([{ name: 'pc.ram', usedLength: 4 * MiB }]))).toMatchObject({ equal: false });
  });
});

describe('RamImage', () => {
  it('allocates 2 MiB chunks only for non-zero writes', () => {
    const img = new RamImage([
      { name: 'pc.ram', usedLength: 8 * MiB },
      { name: 'pc.rom', usedLength: 128 * 1024 },
    ]);
    img.fillPage(0, 0, 0);
    expect(img.allocatedBytes).toBe(0);
    expect(img.pageView(0, 0)).toBeUndefined();
    img.fillPage(0, 5 * MiB, 0xcc);
    expect(img.allocatedBytes).toBe(2 * MiB);
    expect(img.pageView(0, (5 * MiB) / PAGE_SIZE)!.every((b) => b === 0xcc)).toBe(true);
    img.fillPage(0, 5 * MiB, 0);
    expect(img.pageView(0, (5 * MiB) / PAGE_SIZE)!.every((b) => b === 0)).toBe(true);
    img.writePage(1, 4096, Buffer.alloc(PAGE_SIZE, 7));
    expect(img.allocatedBytes).toBe(2 * MiB + 128 * 1024);
    const out = Buffer.alloc(PAGE_SIZE, 1);
    img.readPage(0, 0, out);
    expect(out.every((b) => b === 0)).toBe(true);
    expect(() => img.writePage(1, 128 * 1024, out)).toThrow(RangeError);
  });

  it('reads what a plain buffer would after any mix of writes, fills and zero fills (zero fills of empty pages skipped)', () => {
    const pages = 1536; // 3 chunks
    const img = new RamImage([{ name: 'pc.ram', usedLength: pages * PAGE_SIZE }]);
    const model = Buffer.alloc(pages * PAGE_SIZE);
    const next = makeRng(12345);
    const rnd = (n: number): number => Math.floor(next() * n);
    for (let i = 0; i < 20_000; i++) {
      // Few pages, so that pages are written, zeroed and written again many times.
      const page = rnd(64) * 24 + rnd(3);
      const op = rnd(4);
      if (op === 0) {
        const data = Buffer.alloc(PAGE_SIZE, 1 + rnd(255));
        data[rnd(PAGE_SIZE)] = rnd(256);
        img.writePage(0, page * PAGE_SIZE, data);
        data.copy(model, page * PAGE_SIZE);
      } else {
        const fill = op === 1 ? 1 + rnd(255) : 0;
        img.fillPage(0, page * PAGE_SIZE, fill);
        model.fill(fill, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      }
    }
    const out = Buffer.alloc(PAGE_SIZE);
    for (let p = 0; p < pages; p++) {
      img.readPage(0, p, out);
      expect(out.equals(model.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)), `page ${p}`).toBe(true);
    }
  });
});

describe('simulated VM specs', () => {
  it('derives the default profile from the measured guests', () => {
    const p = DEFAULT_PROFILE;
    expect(p.zeroFraction).toBe(0.662);
    expect(p.fillFraction + p.intraDupFraction).toBeCloseTo(0.089, 9);
    expect(p.osSharedFraction).toBeGreaterThan(0.09);
    expect(p.osSharedFraction).toBeLessThan(0.11);
  });

  it('builds the demo fleet: 8 VMs of 256 MiB, one OS image, 2 tenants', () => {
    const fleet = defaultFleet();
    expect(fleet).toHaveLength(8);
    expect(new Set(fleet.map((s) => s.osImage)).size).toBe(1);
    expect(new Set(fleet.map((s) => s.tenant)).size).toBe(2);
    expect(fleet.every((s) => s.memoryBytes === 256 * MiB && s.dirtyPagesPerSec === 500 && s.workingSetPages === 4096)).toBe(true);
    expect(new Set(fleet.map((s) => s.seed)).size).toBe(8);
  });

  it('rejects bad specs with CONFIG errors that name the field', () => {
    expectConfig(() => validateSpec(spec({ memoryBytes: 16 * MiB + 100 })), /multiple of 4096/);
    expectConfig(() => validateSpec(spec({ memoryBytes: 0 })), /memoryBytes/);
    expectConfig(() => validateSpec(spec({ profile: { ...DEFAULT_PROFILE, zeroFraction: 1.2 } })), /zeroFraction must be a number between 0 and 1/);
    expectConfig(() => validateSpec(spec({ profile: { ...DEFAULT_PROFILE, osSharedFraction: -0.1 } })), /osSharedFraction/);
    expectConfig(() => validateSpec(spec({ profile: { ...DEFAULT_PROFILE, zeroFraction: 0.9, osSharedFraction: 0.2 } })), /add up to .* must not exceed 1/);
    expectConfig(() => validateSpec(spec({ profile: { ...DEFAULT_PROFILE, fillByte: 0 } })), /fillByte/);
    expectConfig(() => validateSpec(spec({ workingSetPages: 5000 })), /workingSetPages must be an integer 0..4096/);
    expectConfig(() => validateSpec(spec({ workingSetPages: 0 })), /give the writes pages/);
    expectConfig(() => validateSpec(spec({ seed: 1.5 })), /seed/);
    expectConfig(() => validateSpec(spec({ name: '' })), /name/);
    expectConfig(() => new SimVm(spec({ dirtyPagesPerSec: -1 })), /dirtyPagesPerSec/);
    const fleet = defaultFleet({ vms: 2, memoryMiB: 16 });
    expectConfig(() => validateFleet([fleet[0]!, { ...fleet[1]!, name: fleet[0]!.name }]), /named "vm0"/);
    expectConfig(() => validateFleet([fleet[0]!, { ...fleet[1]!, seed: fleet[0]!.seed }]), /same seed/);
    expectConfig(() => defaultFleet({ vms: 0 }), /fleet size/);
  });
});
