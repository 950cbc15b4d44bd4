/**
 * VMScatter's grouping heuristic, as the baseline the graph-based planner must beat.
 *
 * VMScatter (Cui et al., VEE 2013) fills targets one at a time, the one with the most free
 * capacity first, and picks for it, again and again, the VM with the largest count of pages
 * identical to pages already on that target, until no remaining VM fits; then it moves on to the
 * target with the most free capacity among the rest. Two details the paper leaves open are fixed
 * here and kept deliberately plain:
 * - on a target that holds nothing yet (or with which no remaining VM shares anything), the pick is
 *   the VM with the largest count of pages identical to pages of other VMs still to be placed;
 * - remaining ties go to the larger VM, then to the lower VM index.
 * Pinned VMs are placed first; anti-affinity, memory and maxVms are respected as hard constraints.
 */
import type { AssignmentState, PlacementProblem } from './objective.js';

export interface GreedyResult {
  /** VM index -> target index; -1 for VMs the greedy could not place. */
  assignment: Int32Array;
  /** Shared-content cost (sum of class weight x targets holding it) of the placed VMs. */
  sharedCost: number;
  complete: boolean;
  /** Indices of VMs left without a target (bin-packing fragmentation). */
  unplaced: number[];
}

export function greedyPlacement(p: PlacementProblem, s: AssignmentState): GreedyResult {
  const N = p.vmCount;
  const T = p.targetCount;
  const { classOff, classHolders, classWeight, vmOff, vmClasses } = p;
  s.reset();
  for (let v = 0; v < N; v++) if (p.pinned[v]! >= 0) s.place(v, p.pinned[v]!);

  // Unassigned holders per class, and each VM's count of pages shared with other unassigned VMs.
  const udeg = new Uint32Array(p.classCount);
  for (let c = 0; c < p.classCount; c++)
    for (let k = classOff[c]!; k < classOff[c + 1]!; k++) if (s.target[classHolders[k]!]! < 0) udeg[c]!++;
  const seedScore = new Float64Array(N);
  for (let v = 0; v < N; v++) {
    if (s.target[v]! >= 0) continue;
    for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
      const c = vmClasses[k]!;
      if (udeg[c]! >= 2) seedScore[v]! += classWeight[c]!;
    }
  }
  let remaining = 0;
  for (let v = 0; v < N; v++) if (s.target[v]! < 0) remaining++;

  const closed = new Uint8Array(T);
  const overlap = new Float64Array(N);
  const cnt = s.cnt;
  // Each class's holders with the placed ones moved out of the way as they are met (swapped
  // behind `live`), so that scans over a class's unassigned holders shrink as VMs are placed.
  // Only the order of additions of integer weights changes: the result is the same.
  const holders = classHolders.slice();
  const live = new Uint32Array(p.classCount);
  for (let c = 0; c < p.classCount; c++) live[c] = classOff[c + 1]! - classOff[c]!;
  const target = s.target;

  const assign = (v: number, t: number): void => {
    for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
      const c = vmClasses[k]!;
      const w = classWeight[c]!;
      const start = classOff[c]!;
      if (cnt[c * T + t] === 0) {
        let end = start + live[c]!;
        for (let h = start; h < end; ) {
          const u = holders[h]!;
          if (target[u]! >= 0) {
            holders[h] = holders[--end]!;
            holders[end] = u;
          } else {
            overlap[u]! += w;
            h++;
          }
        }
        live[c] = end - start;
      }
      if (--udeg[c]! === 1) {
        let end = start + live[c]!;
        for (let h = start; h < end; ) {
          const u = holders[h]!;
          if (target[u]! >= 0) {
            holders[h] = holders[--end]!;
            holders[end] = u;
          } else if (u !== v) {
            seedScore[u]! -= w;
            break;
          } else h++;
        }
        live[c] = end - start;
      }
    }
    s.place(v, t);
    remaining--;
  };

  while (remaining > 0) {
    let t = -1;
    for (let i = 0; i < T; i++) {
      if (closed[i]) continue;
      if (t < 0 || p.capacity[i]! - s.memLoad[i]! > p.capacity[t]! - s.memLoad[t]!) t = i;
    }
    if (t < 0) break;
    // Overlap of every unassigned VM with what t already holds (pinned VMs).
    overlap.fill(0);
    for (let c = 0; c < p.classCount; c++) {
      if (cnt[c * T + t] === 0) continue;
      for (let h = classOff[c]!; h < classOff[c + 1]!; h++) {
        const u = classHolders[h]!;
        if (s.target[u]! < 0) overlap[u]! += classWeight[c]!;
      }
    }
    for (;;) {
      let best = -1;
      for (let v = 0; v < N; v++) {
        if (s.target[v]! >= 0 || !s.fits(v, t)) continue;
        if (
          best < 0 ||
          overlap[v]! > overlap[best]! ||
          (overlap[v] === overlap[best] &&
            (seedScore[v]! > seedScore[best]! || (seedScore[v] === seedScore[best] && p.memory[v]! > p.memory[best]!)))
        )
          best = v;
      }
      if (best < 0) break;
      assign(best, t);
    }
    closed[t] = 1;
  }
  const unplaced: number[] = [];
  for (let v = 0; v < N; v++) if (s.target[v]! < 0) unplaced.push(v);
  return { assignment: s.assignment(), sharedCost: s.cost, complete: unplaced.length === 0, unplaced };
}
