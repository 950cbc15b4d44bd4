/**
 * The optimum placement for small fleets, by depth-first branch and bound: VMs are assigned in
 * order of decreasing sharing; the bound is the cost so far plus one target for every class that
 * has no holder placed yet (every class lands on at least one target); empty targets with the same
 * capacity, maxVms and no pinned VMs are interchangeable, so only the first of them is tried.
 * Used by tests and the bench to measure the planner against the true optimum.
 */
import { ErrorCode, VmsError } from '../errors.js';
import { AssignmentState, trafficPages, type PlacementProblem } from './objective.js';

export interface ExhaustiveResult {
  assignment: Int32Array;
  sharedCost: number;
  trafficPages: number;
  /** Search nodes visited. */
  nodes: number;
}

export interface ExhaustiveOptions {
  /** Give up (VmsError PLAN) after this many nodes (default 2e7). */
  maxNodes?: number;
  /** A known feasible assignment to start the bound from (e.g. the planner's). */
  incumbent?: Int32Array;
}

export function exhaustivePlacement(p: PlacementProblem, opts: ExhaustiveOptions = {}): ExhaustiveResult {
  const N = p.vmCount;
  const T = p.targetCount;
  const maxNodes = opts.maxNodes ?? 2e7;
  const s = new AssignmentState(p);
  const { vmOff, vmClasses, classWeight } = p;
  const assigned = new Uint32Array(p.classCount);
  let unplacedWeight = 0;
  for (let c = 0; c < p.classCount; c++) unplacedWeight += classWeight[c]!;

  const place = (v: number, t: number) => {
    for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
      const c = vmClasses[k]!;
      if (assigned[c]!++ === 0) unplacedWeight -= classWeight[c]!;
    }
    s.place(v, t);
  };
  const unplace = (v: number) => {
    for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
      const c = vmClasses[k]!;
      if (--assigned[c]! === 0) unplacedWeight += classWeight[c]!;
    }
    s.unplace(v);
  };

  // Interchangeable targets: same capacity and maxVms, nobody pinned there.
  const pinnedTo = new Uint8Array(T);
  for (let v = 0; v < N; v++) if (p.pinned[v]! >= 0) pinnedTo[p.pinned[v]!] = 1;
  const kind = new Int32Array(T);
  const kinds = new Map<string, number>();
  for (let t = 0; t < T; t++) {
    const key = pinnedTo[t] ? `pin:${t}` : `${p.capacity[t]}/${p.maxVms[t]}`;
    if (!kinds.has(key)) kinds.set(key, kinds.size);
    kind[t] = kinds.get(key)!;
  }

  const order: number[] = [];
  for (let v = 0; v < N; v++) {
    if (p.pinned[v]! >= 0) place(v, p.pinned[v]!);
    else order.push(v);
  }
  order.sort((x, y) => p.vmWeight[y]! - p.vmWeight[x]! || p.memory[y]! - p.memory[x]! || x - y);

  let bestCost = Infinity;
  let best: Int32Array | null = null;
  if (opts.incumbent) {
    const check = new AssignmentState(p);
    check.load(opts.incumbent);
    bestCost = check.cost;
    best = opts.incumbent.slice();
  }
  let nodes = 0;
  const triedKind = new Int32Array(kinds.size);
  let depthStamp = 0;

  const dfs = (i: number): void => {
    if (++nodes > maxNodes)
      throw new VmsError(ErrorCode.PLAN, `exhaustive placement gave up after ${maxNodes} nodes (${N} VMs, ${T} targets): too large to prove`);
    if (s.cost + unplacedWeight >= bestCost) return;
    if (i === order.length) {
      bestCost = s.cost;
      best = s.assignment();
      return;
    }
    const v = order[i]!;
    const stamp = ++depthStamp;
    const seen: number[] = [];
    for (let t = 0; t < T; t++) {
      if (!s.fits(v, t)) continue;
      if (s.vmLoad[t] === 0 && !pinnedTo[t]) {
        if (triedKind[kind[t]!] === stamp) continue;
        triedKind[kind[t]!] = stamp;
        seen.push(kind[t]!);
      }
      place(v, t);
      dfs(i + 1);
      unplace(v);
      // Deeper levels overwrote the stamps of this level's kinds: restore them.
      for (const k of seen) triedKind[k] = stamp;
    }
  };
  dfs(0);
  if (best === null) throw new VmsError(ErrorCode.PLAN, 'exhaustive placement found no feasible assignment (capacity, maxVms or anti-affinity)');
  const assignment: Int32Array = best;
  return { assignment, sharedCost: bestCost, trafficPages: trafficPages(p, bestCost), nodes };
}

/**
 * Any assignment that respects every constraint, by depth-first search (largest and most
 * constrained VMs first). `assignment` is null when none was found: `proven` says whether the
 * search was complete (no packing exists) or stopped at `maxNodes`. The planner's last resort
 * when its packings leave a VM without room.
 */
export function findFeasible(p: PlacementProblem, maxNodes = 1e6): { assignment: Int32Array | null; proven: boolean } {
  const s = new AssignmentState(p);
  const order: number[] = [];
  for (let v = 0; v < p.vmCount; v++) {
    if (p.pinned[v]! >= 0) s.place(v, p.pinned[v]!);
    else order.push(v);
  }
  const anti = (v: number) => p.antiOff[v + 1]! - p.antiOff[v]!;
  order.sort((x, y) => p.memory[y]! - p.memory[x]! || anti(y) - anti(x) || x - y);
  let nodes = 0;
  let stopped = false;
  const dfs = (i: number): boolean => {
    if (i === order.length) return true;
    if (++nodes > maxNodes) {
      stopped = true;
      return false;
    }
    const v = order[i]!;
    // Roomiest first: leaves the tight targets for the small VMs.
    const ts = [...Array(p.targetCount).keys()].filter((t) => s.fits(v, t));
    ts.sort((x, y) => p.capacity[y]! - s.memLoad[y]! - (p.capacity[x]! - s.memLoad[x]!) || x - y);
    for (const t of ts) {
      s.place(v, t);
      if (dfs(i + 1)) return true;
      s.unplace(v);
      if (stopped) return false;
    }
    return false;
  };
  const ok = dfs(0);
  return { assignment: ok ? s.assignment() : null, proven: !ok && !stopped };
}
