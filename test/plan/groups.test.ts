import { describe, expect, it } from 'vitest';
import { buildGroups, groupTrafficPages } from '../../src/plan/groups.js';
import { buildProblem, sharedCostOf, trafficPages } from '../../src/plan/objective.js';
import { placeVms } from '../../src/plan/placement.js';
import { orderGroups, scheduleInOrder, unorderedSchedule } from '../../src/plan/schedule.js';
import type { MulticastGroup } from '../../src/plan/types.js';
import { neededTargets, randomFleet } from './helpers.js';

function byName(names: readonly string[], a: Int32Array): Record<string, number> {
  const r: Record<string, number> = {};
  names.forEach((n, i) => (r[n] = a[i]!));
  return r;
}

describe('multicast groups', () => {
  it('every content reaches every target that needs it, exactly once across groups (random fleets)', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const f = randomFleet(seed);
      const p = buildProblem(f.vms, f.targets, f.constraints);
      const r = placeVms(p, f.vms, { seed });
      for (const maxGroups of [1e6, 3, 1]) {
        const g = buildGroups(f.vms, r.assignment, p.targetCount, { maxGroups });
        const need = neededTargets(f.vms, byName(p.vmNames, r.assignment));
        const seen = new Set<number>();
        const problems: string[] = [];
        g.groups.forEach((grp, i) => {
          if (grp.id !== i) problems.push(`group ${i} has id ${grp.id}`);
          if (grp.targets.length === 0) problems.push(`group ${i} has no target`);
          for (let k = 1; k < grp.targets.length; k++) if (grp.targets[k]! <= grp.targets[k - 1]!) problems.push(`group ${i} targets not ascending`);
          for (let k = 1; k < grp.contents.length; k++) if (grp.contents[k]! <= grp.contents[k - 1]!) problems.push(`group ${i} contents not ascending`);
          for (const c of grp.contents) {
            if (seen.has(c)) problems.push(`content ${c} in two groups`);
            seen.add(c);
            for (const t of need.get(c)!) if (!grp.targets.includes(t)) problems.push(`content ${c} misses target ${t}`);
          }
        });
        expect(problems, `seed ${seed} maxGroups ${maxGroups}`).toEqual([]);
        expect(seen.size).toBe(need.size);
        const mc = g.groups.filter((x) => x.multicast);
        expect(mc.length).toBeLessThanOrEqual(maxGroups);
        for (const x of g.groups) expect(x.multicast).toBe(x.targets.length >= 2);
        // Traffic: the placement's prediction plus what merging added.
        expect(groupTrafficPages(g.groups)).toBe(trafficPages(p, sharedCostOf(p, r.assignment)) + g.mergeCostPages);
        if (maxGroups === 1e6) expect(g.mergeCostPages).toBe(0);
      }
    }
  });
  it('merges the group whose merge costs least into a superset', () => {
    // Targets 0..2. Contents: {0,1}: 100 contents; {0,1,2}: 50; {1,2}: 1; {0,2}: 30.
    const vms = [
      { name: 'a', memoryBytes: 1, contents: new Uint32Array(0), nonZeroPages: 0 },
      { name: 'b', memoryBytes: 1, contents: new Uint32Array(0), nonZeroPages: 0 },
      { name: 'c', memoryBytes: 1, contents: new Uint32Array(0), nonZeroPages: 0 },
    ];
    const add = (vmIdx: number[], from: number, n: number) => {
      for (const v of vmIdx) vms[v]!.contents = Uint32Array.from([...vms[v]!.contents, ...Array.from({ length: n }, (_, i) => from + i)]).sort();
    };
    add([0, 1], 0, 100);
    add([0, 1, 2], 1000, 50);
    add([1, 2], 2000, 1);
    add([0, 2], 3000, 30);
    for (const v of vms) v.nonZeroPages = v.contents.length;
    const g = buildGroups(vms, Int32Array.from([0, 1, 2]), 3, { maxGroups: 3 });
    const mc = g.groups.filter((x) => x.multicast);
    expect(mc.length).toBe(3);
    // {1,2} (1 content) joins {0,1,2} at a cost of 1 target-link page.
    expect(g.mergeCostPages).toBe(1);
    const full = mc.find((x) => x.targets.length === 3)!;
    expect(full.contents.length).toBe(51);
    expect(g.multicastGroupsBeforeCap).toBe(4);
  });
  it('keeps one-target groups out of multicast with minTargetsForScatter', () => {
    const vms = [
      { name: 'a', memoryBytes: 1, contents: Uint32Array.from([1, 2, 3]), nonZeroPages: 3 },
      { name: 'b', memoryBytes: 1, contents: Uint32Array.from([2, 3, 4]), nonZeroPages: 3 },
      { name: 'c', memoryBytes: 1, contents: Uint32Array.from([3, 5]), nonZeroPages: 2 },
    ];
    const g = buildGroups(vms, Int32Array.from([0, 1, 2]), 3, { minTargetsForScatter: 3 });
    expect(g.groups.filter((x) => x.multicast).map((x) => [...x.contents])).toEqual([[3]]);
    const g2 = buildGroups(vms, Int32Array.from([0, 1, 2]), 3);
    expect(g2.groups.filter((x) => x.multicast).length).toBe(2);
    // Ids follow the smallest content id.
    expect(g2.groups.map((x) => x.contents[0])).toEqual([1, 2, 3, 4, 5]);
  });
  it('handles more than 32 targets', () => {
    const vms = Array.from({ length: 70 }, (_, i) => ({ name: `v${i}`, memoryBytes: 1, contents: Uint32Array.from([0, 1 + (i % 3), 100 + i]), nonZeroPages: 3 }));
    const a = Int32Array.from({ length: 70 }, (_, i) => i);
    const g = buildGroups(vms, a, 70);
    const all = g.groups.find((x) => x.contents[0] === 0)!;
    expect(all.targets.length).toBe(70);
    expect(all.targets[69]).toBe(69);
    expect(g.groups.length).toBe(1 + 3 + 70);
  });
});

function simulate(groups: MulticastGroup[], steps: ReturnType<typeof orderGroups>['steps'], channels: number, T: number) {
  // Replays the schedule: before each turn the channel's members must be exactly the group's targets.
  const members = Array.from({ length: channels }, () => new Set<number>());
  let maxHeld = 0;
  for (const st of steps) {
    const m = members[st.channel]!;
    for (const t of st.join) {
      expect(m.has(t)).toBe(false);
      m.add(t);
    }
    expect([...m].sort((x, y) => x - y)).toEqual(groups[st.group]!.targets);
    for (let t = 0; t < T; t++) maxHeld = Math.max(maxHeld, members.filter((s) => s.has(t)).length);
    for (const t of st.leave) {
      expect(m.has(t)).toBe(true);
      m.delete(t);
    }
  }
  for (const m of members) expect(m.size).toBe(0);
  return maxHeld;
}

describe('schedule', () => {
  const randomGroups = (seed: number, G: number, T: number): MulticastGroup[] => {
    let x = seed;
    const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0), x / 2 ** 32);
    return Array.from({ length: G }, (_, id) => {
      const targets = [...Array(T).keys()].filter(() => rnd() < 0.4);
      if (targets.length < 2) targets.splice(0, targets.length, 0, 1 + (id % (T - 1)));
      return { id, targets: [...new Set(targets)].sort((a, b) => a - b), contents: Uint32Array.from([id]), multicast: true };
    });
  };
  it('join and leave events replay consistently and respect the membership cap', () => {
    for (let seed = 1; seed <= 30; seed++) {
      const T = 3 + (seed % 6);
      const groups = randomGroups(seed, 5 + seed * 2, T);
      for (const [channels, cap] of [
        [4, 20],
        [8, 3],
        [1, 20],
      ] as const) {
        const s = orderGroups(groups, T, { channels, maxGroupsPerReceiver: cap });
        expect(s.channels).toBeLessThanOrEqual(Math.min(channels, cap));
        expect([...s.order].sort((a, b) => a - b)).toEqual(groups.map((g) => g.id));
        expect(s.joins).toBe(s.steps.reduce((a, st) => a + st.join.length, 0));
        expect(s.leaves).toBe(s.steps.reduce((a, st) => a + st.leave.length, 0));
        expect(s.joins).toBe(s.leaves);
        const held = simulate(groups, s.steps, s.channels, T);
        expect(held).toBeLessThanOrEqual(Math.min(channels, cap));
        const u = unorderedSchedule(groups, { channels, maxGroupsPerReceiver: cap });
        simulate(groups, u.steps, u.channels, T);
        expect(s.joins + s.leaves).toBeLessThanOrEqual(u.joins + u.leaves);
      }
    }
  });
  it('orders nested target sets so receivers stay joined', () => {
    const sets = [[0, 1, 2, 3], [0, 1], [2, 3], [0, 1, 2], [0, 2], [1, 3]];
    const groups = sets.map((targets, id) => ({ id, targets, contents: Uint32Array.from([id]), multicast: true }));
    const s = orderGroups(groups, 4, { channels: 1 });
    const u = scheduleInOrder(groups, [0, 1, 2, 3, 4, 5], 1);
    expect(s.joins + s.leaves).toBeLessThan(u.joins + u.leaves);
  });
  it('leaves non-multicast groups out of the order', () => {
    const groups: MulticastGroup[] = [
      { id: 0, targets: [0], contents: Uint32Array.from([1]), multicast: false },
      { id: 1, targets: [0, 1], contents: Uint32Array.from([2]), multicast: true },
    ];
    const s = orderGroups(groups, 2);
    expect(s.order).toEqual([1]);
    expect(s.joins).toBe(2);
  });
});
