import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { formatPlanSummary, planCommand } from '../../src/cli/plan-command.js';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { defaultFleet, generateClusteredFleet } from '../../src/plan/fleet.js';
import { makePlan, makePlanWithStats } from '../../src/plan/plan.js';
import { parsePlan } from '../../src/plan/serialize.js';
import { GiB, neededTargets, randomFleet } from './helpers.js';

describe('makePlan', () => {
  it('predicts bytes consistently with its groups and beats the naive plan', () => {
    const f = generateClusteredFleet({ seed: 8, vms: 24, targets: 4, pagesPerVm: 512 });
    const plan = makePlan(f.vms, f.targets);
    const pr = plan.predicted;
    let distinct = 0;
    let traffic = 0;
    for (const g of plan.groups) {
      distinct += g.contents.length;
      traffic += g.contents.length * (1 + g.targets.length);
    }
    expect(pr.senderBytes).toBe(distinct * PAGE_SIZE);
    expect(pr.trafficBytes).toBe(traffic * PAGE_SIZE);
    const nz = f.vms.reduce((a, v) => a + v.nonZeroPages, 0);
    expect(pr.naiveSenderBytes).toBe(nz * PAGE_SIZE);
    expect(pr.naiveTrafficBytes).toBe(2 * nz * PAGE_SIZE);
    expect(pr.trafficBytes).toBeLessThan(pr.naiveTrafficBytes);
    expect(pr.greedyTrafficBytes).toBeGreaterThanOrEqual(pr.placementTrafficBytes!);
    expect(pr.joins + pr.leaves).toBeLessThanOrEqual(pr.unorderedJoins! + pr.unorderedLeaves!);
    expect(plan.order.length).toBe(plan.groups.filter((g) => g.multicast).length);
    expect(plan.steps!.map((s) => s.group)).toEqual(plan.order);
    expect(plan.load!.reduce((a, l) => a + l.vms, 0)).toBe(24);
    for (const l of plan.load!) expect(l.memoryBytes).toBeLessThanOrEqual(l.capacityBytes);
  });
  it('counts groups below minTargetsForScatter as one unicast copy per target', () => {
    const f = generateClusteredFleet({ seed: 8, vms: 24, targets: 4, pagesPerVm: 512 });
    const a = makePlan(f.vms, f.targets, {}, { seed: 1 });
    const b = makePlan(f.vms, f.targets, {}, { seed: 1, minTargetsForScatter: 3 });
    expect(b.assignment).toEqual(a.assignment);
    let sender = 0;
    let traffic = 0;
    for (const g of b.groups) {
      const n = g.contents.length;
      const k = g.targets.length;
      expect(g.multicast).toBe(k >= 3);
      sender += g.multicast ? n : n * k;
      traffic += g.multicast ? n * (1 + k) : 2 * n * k;
    }
    expect(b.predicted.senderBytes).toBe(sender * PAGE_SIZE);
    expect(b.predicted.trafficBytes).toBe(traffic * PAGE_SIZE);
    expect(b.predicted.trafficBytes).toBeGreaterThan(a.predicted.trafficBytes);
    expect(b.predicted.unicastExtraTrafficBytes).toBe(b.predicted.trafficBytes - a.predicted.trafficBytes);
    expect(b.predicted.placementTrafficBytes).toBe(a.predicted.placementTrafficBytes);
    expect(b.order.every((id) => b.groups[id]!.targets.length >= 3)).toBe(true);
  });
  it('every content reaches every target that needs it, for every placement algorithm', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const f = randomFleet(seed, { maxVms: 7, maxTargets: 3 });
      for (const placement of ['graph', 'exhaustive'] as const) {
        const plan = makePlan(f.vms, f.targets, f.constraints, { placement, maxGroups: 2 });
        const need = neededTargets(f.vms, plan.assignment);
        const where = new Map<number, number[]>();
        for (const g of plan.groups) for (const c of g.contents) where.set(c, g.targets);
        const missing: string[] = [];
        for (const [c, ts] of need) for (const t of ts) if (!where.get(c)?.includes(t)) missing.push(`${c}->${t}`);
        expect(missing).toEqual([]);
        expect(plan.groups.filter((g) => g.multicast).length).toBeLessThanOrEqual(2);
      }
    }
  });
  it('the exhaustive placement is never worse than the planner', () => {
    for (let seed = 20; seed <= 30; seed++) {
      const f = randomFleet(seed, { maxVms: 8, maxTargets: 3 });
      const g = makePlanWithStats(f.vms, f.targets, f.constraints).plan;
      const e = makePlan(f.vms, f.targets, f.constraints, { placement: 'exhaustive' });
      expect(e.predicted.placementTrafficBytes).toBeLessThanOrEqual(g.predicted.placementTrafficBytes!);
      expect(g.predicted.placementTrafficBytes! / e.predicted.placementTrafficBytes!).toBeLessThanOrEqual(1.02);
    }
  });
  it('refuses a fleet that does not fit, naming the shortfall', () => {
    const f = generateClusteredFleet({ seed: 1, vms: 10, targets: 2, pagesPerVm: 64 });
    const small = f.targets.map((t) => ({ ...t, capacityBytes: t.capacityBytes / 2 }));
    expect(() => makePlan(f.vms, small)).toThrow(/fleet needs .* GiB|fleet needs .* MiB/);
    try {
      makePlan(f.vms, small);
    } catch (e) {
      expect((e as VmsError).code).toBe(ErrorCode.PLAN);
    }
  });
  it('greedy placement errors name the VMs it could not place', () => {
    const vms = [3, 3, 2, 2, 2].map((g, i) => ({ name: `v${i}`, memoryBytes: g * GiB, contents: Uint32Array.from([i, 100]), nonZeroPages: 2 }));
    const targets = [
      { name: 'a', capacityBytes: 6 * GiB },
      { name: 'b', capacityBytes: 6 * GiB },
    ];
    // The graph planner finds the exact packing...
    expect(makePlan(vms, targets).load!.every((l) => l.memoryBytes === 6 * GiB)).toBe(true);
    // ...VMScatter's greedy may not; if it fails, it says which VMs.
    try {
      makePlan(vms, targets, {}, { placement: 'greedy' });
    } catch (e) {
      expect((e as VmsError).message).toMatch(/greedy could not pack the fleet: v\d/);
    }
  });
  it('assigns channel addresses to multicast groups and rejects too few', () => {
    const f = generateClusteredFleet({ seed: 3, vms: 16, targets: 4, pagesPerVm: 256 });
    const plan = makePlan(f.vms, f.targets, {}, { channels: 2, addresses: ['239.9.9.1', '239.9.9.2'] });
    expect(plan.channels!.map((c) => c.address)).toEqual(['239.9.9.1', '239.9.9.2'].slice(0, plan.channels!.length));
    for (const g of plan.groups) if (g.multicast) expect(g.address).toBe(plan.channels![g.channel!]!.address);
    expect(() => makePlan(f.vms, f.targets, {}, { channels: 4, addresses: ['239.9.9.1'] })).toThrow(/addresses/);
  });
});

describe('vmscatter plan', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });
  const capture = () => {
    let out = '';
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out += String(chunk);
      return true;
    });
    return () => out;
  };
  it('prints a summary of the embedded default fleet', async () => {
    const out = capture();
    await planCommand({ json: false });
    const text = out();
    expect(text).toContain('plan for 8 VMs on 4 targets');
    expect(text).toContain('multicast groups:');
    expect(text).toContain('plain migration');
    expect(text).toMatch(/vm-0001/);
  });
  it('prints the plan as JSON and writes it to a file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vms-plan-'));
    const file = join(dir, 'fleet.json');
    const outFile = join(dir, 'plan.json');
    try {
      writeFileSync(file, JSON.stringify({ synthetic: { vms: 6, targets: 3, pagesPerVm: 128 }, options: { maxGroups: 4 } }));
      const out = capture();
      await planCommand({ file, json: true, out: outFile });
      const plan = parsePlan(out());
      expect(Object.keys(plan.assignment).length).toBe(6);
      expect(plan.info?.maxGroups).toBe(4);
      expect(parsePlan(readFileSync(outFile, 'utf8')).order).toEqual(plan.order);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('the summary shows the assignment table', () => {
    const f = defaultFleet();
    const plan = makePlan(f.vms, f.targets);
    const text = formatPlanSummary(plan, f, { source: 'test', vms: true });
    for (const t of f.targets) expect(text).toContain(t.name);
    expect(text).toMatch(/traffic \(sender \+ targets\)/);
  });
});
