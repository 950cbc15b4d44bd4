import { describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { buildGroups, groupTrafficPages } from '../../src/plan/groups.js';
import { buildProblem, checkAssignment, sharedCostOf, trafficPages, AssignmentState } from '../../src/plan/objective.js';
import type { FleetTarget, FleetVm } from '../../src/plan/types.js';
import { GiB, randomFleet } from './helpers.js';

const vm = (name: string, gib: number, ids: number[], extra: Partial<FleetVm> = {}): FleetVm => ({
  name,
  memoryBytes: gib * GiB,
  contents: Uint32Array.from(ids),
  nonZeroPages: ids.length,
  ...extra,
});
const tg = (name: string, gib: number, maxVms?: number): FleetTarget => ({ name, capacityBytes: gib * GiB, ...(maxVms !== undefined ? { maxVms } : {}) });

function planError(f: () => unknown): VmsError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(VmsError);
    return e as VmsError;
  }
  throw new Error('expected an error');
}

describe('buildProblem: bad input', () => {
  it('names the memory shortfall', () => {
    const e = planError(() => buildProblem([vm('a', 6, [1]), vm('b', 6, [2])], [tg('x', 5), tg('y', 5)]));
    expect(e.code).toBe(ErrorCode.PLAN);
    expect(e.message).toContain('needs 12.0 GiB, targets offer 10.0 GiB');
  });
  it('names a VM that fits no target', () => {
    const e = planError(() => buildProblem([vm('big', 4, [1])], [tg('x', 2), tg('y', 3)]));
    expect(e.code).toBe(ErrorCode.PLAN);
    expect(e.message).toContain('VM big (4.0 GiB) fits no target: the largest offers 3.0 GiB');
  });
  it('names the VM-count shortfall', () => {
    const e = planError(() => buildProblem([vm('a', 1, [1]), vm('b', 1, [2]), vm('c', 1, [3])], [tg('x', 10, 1), tg('y', 10, 1)]));
    expect(e.message).toContain('accept at most 2');
  });
  it('reports anti-affine VMs pinned together, naming them', () => {
    const e = planError(() =>
      buildProblem([vm('a', 1, [1], { pinnedTo: 'x' }), vm('b', 1, [2], { pinnedTo: 'x' })], [tg('x', 10), tg('y', 10)], {
        antiAffinity: [['a', 'b']],
      }),
    );
    expect(e.code).toBe(ErrorCode.PLAN);
    expect(e.message).toContain('a and b');
    expect(e.message).toContain('pinned to x');
  });
  it('reports pins that overflow a target, naming the VMs', () => {
    const e = planError(() => buildProblem([vm('a', 3, [1], { pinnedTo: 'x' }), vm('b', 3, [2], { pinnedTo: 'x' })], [tg('x', 4), tg('y', 10)]));
    expect(e.message).toMatch(/pinned to x \(a, b\) need 6\.0 GiB, x offers 4\.0 GiB/);
  });
  it('reports an anti-affinity group larger than the number of targets', () => {
    const e = planError(() => buildProblem([vm('a', 1, [1]), vm('b', 1, [2]), vm('c', 1, [3])], [tg('x', 10), tg('y', 10)], { antiAffinity: [['a', 'b', 'c']] }));
    expect(e.message).toContain('has 3 VMs but there are only 2 targets');
  });
  it('reports every contradiction at once', () => {
    const e = planError(() =>
      buildProblem([vm('a', 1, [1], { pinnedTo: 'nowhere' }), vm('b', 3, [2], { pinnedTo: 'x' })], [tg('x', 2), tg('y', 10)]),
    );
    expect(e.message).toContain('unknown target "nowhere"');
    expect(e.message).toContain('pinned to x (b) need 3.0 GiB');
  });
  it('rejects malformed input with CONFIG errors', () => {
    expect(planError(() => buildProblem([vm('a', 1, [1]), vm('a', 1, [2])], [tg('x', 10)])).code).toBe(ErrorCode.CONFIG);
    expect(planError(() => buildProblem([vm('a', 1, [3, 2])], [tg('x', 10)])).message).toContain('ascending');
    expect(planError(() => buildProblem([vm('a', 1, [1])], [tg('x', 10)], { antiAffinity: [['a', 'ghost']] })).message).toContain('ghost');
    expect(planError(() => buildProblem([vm('a', -1, [1])], [tg('x', 10)])).code).toBe(ErrorCode.CONFIG);
    expect(planError(() => buildProblem([{ ...vm('a', 1, [1, 2]), nonZeroPages: 1 }], [tg('x', 10)])).message).toContain('nonZeroPages');
  });
  it('accepts an empty fleet', () => {
    const p = buildProblem([], [tg('x', 1)]);
    expect(p.vmCount).toBe(0);
    expect(p.distinctContents).toBe(0);
  });
});

describe('content classes and the traffic objective', () => {
  it('merges contents with the same holders and counts unique ones apart', () => {
    const p = buildProblem([vm('a', 1, [1, 2, 3, 10]), vm('b', 1, [1, 2, 3, 11]), vm('c', 1, [3, 12])], [tg('x', 10), tg('y', 10)]);
    expect(p.distinctContents).toBe(6);
    expect(p.uniqueContents).toBe(3);
    // {1,2} held by a,b; {3} held by a,b,c.
    expect(p.classCount).toBe(2);
    expect([...p.classWeight].sort()).toEqual([1, 2]);
  });
  it('handles sparse (hash-like) content ids', () => {
    const big = 0xfff00000;
    const p = buildProblem([vm('a', 1, [5, big, big + 7]), vm('b', 1, [big, big + 9])], [tg('x', 10)]);
    expect(p.distinctContents).toBe(4);
    expect(p.classCount).toBe(1);
  });
  it('incremental cost equals the cost recomputed from scratch and from the groups', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const f = randomFleet(seed);
      const p = buildProblem(f.vms, f.targets, f.constraints);
      const s = new AssignmentState(p);
      const rnd = (i: number) => (i * 2654435761 + seed) % p.targetCount;
      for (let v = 0; v < p.vmCount; v++) s.place(v, Math.abs(rnd(v)));
      for (let v = 0; v < p.vmCount; v += 2) {
        const before = s.cost;
        const d = s.moveDelta(v, (s.target[v]! + 1) % p.targetCount);
        s.unplace(v);
        s.place(v, (rnd(v) + 1) % p.targetCount);
        expect(s.cost).toBe(before + d);
      }
      const a = s.assignment();
      expect(sharedCostOf(p, a)).toBe(s.cost);
      const g = buildGroups(f.vms, a, p.targetCount, { maxGroups: 1e6 });
      expect(groupTrafficPages(g.groups)).toBe(trafficPages(p, s.cost));
    }
  });
  it('checkAssignment finds violations', () => {
    const p = buildProblem([vm('a', 2, [1], { pinnedTo: 'y' }), vm('b', 2, [1])], [tg('x', 3), tg('y', 3)], { antiAffinity: [['a', 'b']] });
    expect(checkAssignment(p, Int32Array.from([1, 0]))).toEqual([]);
    const errs = checkAssignment(p, Int32Array.from([0, 0]));
    expect(errs.join('\n')).toMatch(/pinned to y/);
    expect(errs.join('\n')).toMatch(/capacity/);
    expect(errs.join('\n')).toMatch(/anti-affine/);
  });
});
