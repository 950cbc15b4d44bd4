import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { defaultFleet, generateClusteredFleet, loadFleet, parseFleet } from '../../src/plan/fleet.js';

function configError(input: unknown): VmsError {
  try {
    parseFleet(input);
  } catch (e) {
    expect(e).toBeInstanceOf(VmsError);
    expect((e as VmsError).code).toBe(ErrorCode.CONFIG);
    return e as VmsError;
  }
  throw new Error('expected parseFleet to fail');
}

describe('synthetic clustered fleets', () => {
  it('are deterministic per seed and well formed', () => {
    const a = generateClusteredFleet({ seed: 4, vms: 40, targets: 5, pagesPerVm: 1024 });
    const b = generateClusteredFleet({ seed: 4, vms: 40, targets: 5, pagesPerVm: 1024 });
    const c = generateClusteredFleet({ seed: 5, vms: 40, targets: 5, pagesPerVm: 1024 });
    expect(a.vms.map((v) => [...v.contents])).toEqual(b.vms.map((v) => [...v.contents]));
    expect(a.vms.map((v) => v.contents.length)).not.toEqual(c.vms.map((v) => v.contents.length));
    let mem = 0;
    for (const vm of a.vms) {
      let ascending = true;
      for (let i = 1; i < vm.contents.length; i++) ascending &&= vm.contents[i]! > vm.contents[i - 1]!;
      expect(ascending).toBe(true);
      expect(vm.nonZeroPages).toBeGreaterThanOrEqual(vm.contents.length);
      expect(vm.memoryBytes).toBeGreaterThanOrEqual(vm.nonZeroPages * 4096);
      mem += vm.memoryBytes;
    }
    const cap = a.targets.reduce((s, t) => s + t.capacityBytes, 0);
    expect(cap).toBeGreaterThanOrEqual(mem);
    expect(a.targets.length).toBe(5);
  });
  it('VMs of one OS image share far more than VMs of different images', () => {
    const f = generateClusteredFleet({ seed: 1, vms: 30, targets: 3, osImages: 3, tenants: 6, pagesPerVm: 2048 });
    const share = (x: Uint32Array, y: Uint32Array) => {
      const s = new Set(x);
      let n = 0;
      for (const c of y) if (s.has(c)) n++;
      return n;
    };
    let same = 0;
    let diff = 0;
    let ns = 0;
    let nd = 0;
    for (let i = 0; i < 30; i++)
      for (let j = i + 1; j < 30; j++) {
        const w = share(f.vms[i]!.contents, f.vms[j]!.contents);
        if (f.osOf[i] === f.osOf[j]) (same += w), ns++;
        else (diff += w), nd++;
      }
    expect(same / ns).toBeGreaterThan(5 * (diff / nd));
  });
  it("profile 'cloned': a tenant's clones share most of their contents; older profiles unchanged by it", () => {
    const f = generateClusteredFleet({ seed: 2, vms: 30, targets: 3, tenants: 5, pagesPerVm: 2048, profile: 'cloned' });
    const share = (x: Uint32Array, y: Uint32Array) => {
      const s = new Set(x);
      let n = 0;
      for (const c of y) if (s.has(c)) n++;
      return n / Math.min(x.length, y.length);
    };
    let sum = 0;
    let n = 0;
    for (let i = 0; i < 30; i++)
      for (let j = i + 1; j < 30; j++)
        if (f.tenantOf[i] === f.tenantOf[j]) {
          sum += share(f.vms[i]!.contents, f.vms[j]!.contents);
          n++;
        }
    expect(n).toBeGreaterThan(0);
    expect(sum / n).toBeGreaterThan(0.6);
    expect(parseFleet({ synthetic: { vms: 6, targets: 2, pagesPerVm: 64, profile: 'cloned' } }).synthetic?.profile).toBe('cloned');
    // Adding the profile left the other profiles' fleets as they were (first VM of seed 1).
    const m = generateClusteredFleet({ seed: 1, vms: 10, targets: 2, pagesPerVm: 256 });
    expect(m.vms[0]!.contents.length).toBe(242);
  });
  it('the default fleet has 8 VMs and 4 targets', () => {
    const d = defaultFleet();
    expect(d.vms.length).toBe(8);
    expect(d.targets.length).toBe(4);
  });
});

describe('fleet description files', () => {
  it('reads explicit VMs, sizes in any unit, pins and constraints', () => {
    const f = parseFleet(
      JSON.stringify({
        vms: [
          { name: 'a', memoryGiB: 2, contents: [5, 1, 5, 3] },
          { name: 'b', memoryMiB: 512, contents: [1], nonZeroPages: 10, pinnedTo: 'y' },
        ],
        targets: [
          { name: 'x', capacityGiB: 4, maxVms: 2 },
          { name: 'y', capacityBytes: 1073741824 },
        ],
        constraints: { antiAffinity: [['a', 'b']] },
        options: { maxGroups: 8, channels: 2, placement: 'greedy', addresses: ['239.0.0.1', '239.0.0.2'] },
      }),
    );
    expect([...f.vms[0]!.contents]).toEqual([1, 3, 5]);
    expect(f.vms[0]!.nonZeroPages).toBe(4);
    expect(f.vms[0]!.memoryBytes).toBe(2 * 1024 ** 3);
    expect(f.vms[1]!.memoryBytes).toBe(512 * 1024 ** 2);
    expect(f.vms[1]!.pinnedTo).toBe('y');
    expect(f.targets[0]!.maxVms).toBe(2);
    expect(f.constraints.antiAffinity).toEqual([['a', 'b']]);
    expect(f.options).toEqual({ maxGroups: 8, channels: 2, placement: 'greedy', addresses: ['239.0.0.1', '239.0.0.2'] });
  });
  it('generates synthetic fleets and applies pins', () => {
    const f = parseFleet({ synthetic: { vms: 10, targets: 3, seed: 2, pagesPerVm: 128, profile: 'clustered' }, pins: { 'vm-0003': 't-02' } });
    expect(f.vms.length).toBe(10);
    expect(f.targets.length).toBe(3);
    expect(f.vms[2]!.pinnedTo).toBe('t-02');
    expect(f.synthetic?.profile).toBe('clustered');
  });
  it('says what is wrong and where', () => {
    expect(configError('not json').message).toContain('not valid JSON');
    expect(configError({ vms: [], targets: [], extra: 1 }).message).toContain('fleet extra: unknown field');
    expect(configError({ vms: [{ name: 'a', contents: [] }], targets: [] }).message).toContain('vms[0]: expected exactly one of memoryBytes, memoryMiB, memoryGiB');
    expect(configError({ vms: [{ name: 'a', memoryGiB: 1, contents: [-1] }], targets: [] }).message).toContain('vms[0].contents[0]');
    expect(configError({ vms: [], targets: [{ name: 't', capacityGiB: 1, maxVms: 1.5 }] }).message).toContain('targets[0].maxVms');
    expect(configError({ synthetic: { vms: 3 } }).message).toContain('synthetic.targets');
    expect(configError({ synthetic: { vms: 3, targets: 2, colour: 1 } }).message).toContain('synthetic.colour');
    expect(configError({ vms: [], targets: [], options: { addresses: ['10.0.0.1'] } }).message).toContain('multicast address');
    expect(configError({ vms: [], targets: [], options: { placement: 'best' } }).message).toContain('options.placement');
    expect(configError({ synthetic: { vms: 2, targets: 1 }, pins: { ghost: 't-01' } }).message).toContain('no VM named ghost');
  });
  it('loads from a file and names unreadable files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vms-plan-'));
    const file = join(dir, 'fleet.json');
    try {
      writeFileSync(file, JSON.stringify({ synthetic: { vms: 4, targets: 2, pagesPerVm: 64 } }));
      expect((await loadFleet(file)).vms.length).toBe(4);
      await expect(loadFleet(join(dir, 'missing.json'))).rejects.toThrow(/cannot read fleet description/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
