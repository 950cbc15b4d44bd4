import { makeRng } from '../../src/plan/objective.js';
import type { FleetTarget, FleetVm, PlanConstraints } from '../../src/plan/types.js';

export const GiB = 1024 ** 3;

export interface RandomFleet {
  vms: FleetVm[];
  targets: FleetTarget[];
  constraints: PlanConstraints;
}

/**
 * A random feasible fleet: VMs hold random subsets of a few overlapping pools plus unique pages;
 * targets have room for everything with some slack; some VMs are pinned and a few anti-affinity
 * pairs exist, all consistent with a hidden feasible assignment.
 */
export function randomFleet(seed: number, opts: { maxVms?: number; maxTargets?: number; pools?: number } = {}): RandomFleet {
  const rng = makeRng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));
  const N = int(2, opts.maxVms ?? 12);
  const T = int(2, opts.maxTargets ?? 5);
  const pools = opts.pools ?? int(1, 4);
  const poolSize = int(5, 40);
  let nextUnique = pools * poolSize + 1000;
  // Hidden feasible assignment first, then capacities that fit it.
  const hidden = Array.from({ length: N }, () => int(0, T - 1));
  const vms: FleetVm[] = [];
  for (let v = 0; v < N; v++) {
    const ids = new Set<number>();
    const pool = int(0, pools - 1);
    for (let i = 0; i < poolSize; i++) if (rng() < 0.7) ids.add(pool * poolSize + i);
    if (rng() < 0.3) for (let i = 0; i < poolSize; i++) if (rng() < 0.2) ids.add(((pool + 1) % pools) * poolSize + i);
    const uniq = int(0, 20);
    for (let i = 0; i < uniq; i++) ids.add(nextUnique++);
    const contents = Uint32Array.from([...ids]).sort();
    vms.push({
      name: `vm${v}`,
      memoryBytes: int(1, 4) * GiB,
      contents,
      nonZeroPages: contents.length + int(0, 5),
    });
  }
  const load = new Array<number>(T).fill(0);
  const count = new Array<number>(T).fill(0);
  for (let v = 0; v < N; v++) {
    load[hidden[v]!]! += vms[v]!.memoryBytes;
    count[hidden[v]!]!++;
  }
  const targets: FleetTarget[] = Array.from({ length: T }, (_, t) => {
    const tg: FleetTarget = { name: `t${t}`, capacityBytes: load[t]! + int(0, 3) * GiB };
    if (rng() < 0.3) tg.maxVms = count[t]! + int(0, 2);
    return tg;
  });
  for (let v = 0; v < N; v++) if (rng() < 0.15) vms[v]!.pinnedTo = `t${hidden[v]}`;
  const anti: string[][] = [];
  for (let k = 0; k < 2; k++) {
    const a = int(0, N - 1);
    const b = int(0, N - 1);
    if (a !== b && hidden[a] !== hidden[b]) anti.push([vms[a]!.name, vms[b]!.name]);
  }
  return { vms, targets, constraints: anti.length ? { antiAffinity: anti } : {} };
}

/** Map content id -> set of targets that need it, from VMs and an assignment by name. */
export function neededTargets(vms: readonly FleetVm[], assignment: Record<string, number>): Map<number, Set<number>> {
  const need = new Map<number, Set<number>>();
  for (const vm of vms) {
    const t = assignment[vm.name]!;
    for (const c of vm.contents) {
      let s = need.get(c);
      if (!s) need.set(c, (s = new Set()));
      s.add(t);
    }
  }
  return need;
}
