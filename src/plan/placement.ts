/**
 * Sharing-aware placement: which target each VM goes to.
 *
 * The objective (see objective.ts) is hypergraph partitioning with capacities: minimise the sum
 * over shared-content classes of weight x number of targets holding the class. The planner
 *  1. builds the sharing graph and finds communities with Louvain: coarse ones on the whole graph
 *     (typically an OS image) and fine ones by Louvain again inside each coarse community
 *     (typically a tenant's VMs);
 *  2. builds three starting placements: the communities packed onto targets (ordered by community,
 *     filling the roomiest target first, not topping targets up with strangers); whole fine
 *     communities each onto the target where it adds least among those with room for all of it
 *     (where targets have room to spare, this keeps tenants and clone pools whole, which any fill
 *     to the brim does not); and VMScatter's greedy (greedy.ts);
 *  3. improves each by local search scored on the exact objective, with per-class per-target VM
 *     counts and target bitmasks so that a move is scored from the moving VMs' classes only:
 *     moves of single VMs, moves of a community's part on one target, and swaps of two VMs
 *     between targets without room for a plain move;
 *  4. from the better result: on small problems ruin-and-recreate and full perturbation rounds;
 *     on all, iterated local search whose rounds kick a few VMs or community parts, or gather a
 *     split community onto one target (sending strangers elsewhere to make room), and descend
 *     only on the targets involved, undoing exactly what moved when the round lost;
 *  5. balances load with moves that leave traffic unchanged.
 * Work is bounded by deterministic budgets counted in class entries touched (no clocks), so a
 * seed gives the same plan on any machine. Every state visited respects capacity, maxVms, pins
 * and anti-affinity.
 */
import louvainModule from 'graphology-communities-louvain';
import { ErrorCode, VmsError } from '../errors.js';
import { UndirectedGraph } from 'graphology';
import {
  sharingGraphOf,
  type GraphMethod,
  type SharingEdgeAttributes,
  type SharingGraph,
  type SharingNodeAttributes,
} from './graph.js';
import { findFeasible } from './exhaustive.js';
import { greedyPlacement } from './greedy.js';
import { AssignmentState, formatBytes, makeRng, trafficPages, type PlacementProblem } from './objective.js';
import type { FleetVm } from './types.js';

// The package is CommonJS with an `export default` typing; normalise the interop shape.
type Louvain = typeof louvainModule.default;
const louvain: Louvain =
  (louvainModule as unknown as { default?: Louvain }).default ?? (louvainModule as unknown as Louvain);

export interface PlacementOptions {
  seed?: number;
  /** How the sharing graph is built (default 'auto'). */
  graph?: 'auto' | GraphMethod;
  sketchSize?: number;
  /** Multiplier of the local-search work budget (default 1). */
  effort?: number;
  /** A graph built earlier for the same fleet. */
  sharingGraph?: SharingGraph;
  /** Ruin-and-recreate iterations on small problems (default min(4000, 30 x VMs), times effort). */
  ruinIterations?: number;
  /** Rounds of iterated local search (default min(2000, 10 x VMs), times effort). */
  ilsRounds?: number;
  /** Work budget of those rounds in pass-equivalents (default 100 small, 10 medium, 2 large). */
  ilsUnits?: number;
  /** Progress lines for debugging (phases, costs, work done). */
  trace?: (line: string) => void;
}

export interface PlacementStart {
  name: string;
  /** Shared cost of the start before local search (null when the start could not pack). */
  initial: number | null;
  /** After local search. */
  final: number | null;
}

export interface PlacementResult {
  /** VM index -> target index. */
  assignment: Int32Array;
  /** sum over shared classes of weight x targets holding it. */
  sharedCost: number;
  /** Predicted traffic in pages (sender link + every target link). */
  trafficPages: number;
  graphMethod: GraphMethod;
  communities: { coarse: number; fine: number };
  starts: PlacementStart[];
  /** Traffic pages of VMScatter's greedy on its own, or null if it could not pack the fleet. */
  greedyTrafficPages: number | null;
}

/** Per-run scratch and knobs of the local search. */
class Search {
  readonly p: PlacementProblem;
  readonly s: AssignmentState;
  readonly T: number;
  readonly add: Float64Array;
  readonly add2: Float64Array;
  readonly union: Uint32Array;
  readonly stamp: Int32Array;
  gen = 0;
  readonly movable: Uint8Array;
  readonly rng: () => number;
  budgetEnd = Infinity;
  trace: ((line: string) => void) | undefined;
  /** Swap pass: targets tried per VM, partners evaluated per target. */
  swapTargets = 2;
  swapPartners = 64;

  constructor(p: PlacementProblem, s: AssignmentState, rng: () => number) {
    this.p = p;
    this.s = s;
    this.T = p.targetCount;
    this.add = new Float64Array(p.targetCount);
    this.add2 = new Float64Array(p.targetCount);
    this.union = new Uint32Array(Math.max(1, p.classCount));
    this.stamp = new Int32Array(Math.max(1, p.classCount));
    this.movable = new Uint8Array(p.vmCount);
    for (let v = 0; v < p.vmCount; v++) this.movable[v] = p.pinned[v]! < 0 ? 1 : 0;
    this.rng = rng;
  }

  get exhausted(): boolean {
    return this.s.ops >= this.budgetEnd;
  }

  /** Union of the classes of `vms` into this.union; returns its length. */
  unionOf(vms: ArrayLike<number>, n: number): number {
    const { vmOff, vmClasses } = this.p;
    if (n === 1) {
      const v = vms[0]!;
      const len = vmOff[v + 1]! - vmOff[v]!;
      this.union.set(vmClasses.subarray(vmOff[v]!, vmOff[v + 1]!));
      return len;
    }
    const g = ++this.gen;
    let m = 0;
    for (let i = 0; i < n; i++) {
      const v = vms[i]!;
      for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
        const c = vmClasses[k]!;
        if (this.stamp[c] !== g) {
          this.stamp[c] = g;
          this.union[m++] = c;
        }
      }
    }
    this.s.ops += m;
    return m;
  }

  /**
   * Move the VMs `set` (all on one target, all movable) to the target where they add least, if
   * that lowers the cost and the target can take them all. Returns true when they moved.
   */
  relocate(set: ArrayLike<number>, n: number): boolean {
    if (n === 1) return this.relocateOne(set[0]!);
    const { p, s, T, add } = this;
    const a = s.target[set[0]!]!;
    let mem = 0;
    for (let i = 0; i < n; i++) {
      s.unplace(set[i]!);
      mem += p.memory[set[i]!]!;
    }
    const m = this.unionOf(set, n);
    s.addCosts(this.union, m, add);
    let best = a;
    for (let t = 0; t < T; t++) {
      if (t === a || add[t]! >= add[best]!) continue;
      if (s.memLoad[t]! + mem > p.capacity[t]! || s.vmLoad[t]! + n > p.maxVms[t]!) continue;
      let ok = true;
      for (let i = 0; i < n && ok; i++) ok = s.antiOk(set[i]!, t);
      if (ok) best = t;
    }
    for (let i = 0; i < n; i++) s.place(set[i]!, best);
    return best !== a;
  }

  /**
   * relocate() of one VM without taking it off its target first: most VMs stay, and for them
   * the unplace and place were pure cost. The add costs on other targets do not depend on v's own
   * presence; on its own target v adds the classes only it holds there. The work counter moves as
   * relocate() moved it, so budgets, and with them plans, stay what they were.
   */
  relocateOne(v: number): boolean {
    const { p, s, T, add } = this;
    const a = s.target[v]!;
    const len = this.addCostsInPlace(v);
    const mem = p.memory[v]!;
    let best = a;
    for (let t = 0; t < T; t++) {
      if (t === a || add[t]! >= add[best]!) continue;
      if (s.memLoad[t]! + mem > p.capacity[t]! || s.vmLoad[t]! + 1 > p.maxVms[t]!) continue;
      if (s.antiOk(v, t)) best = t;
    }
    if (best === a) return false;
    s.ops -= 2 * len;
    s.unplace(v);
    s.place(v, best);
    return true;
  }

  /**
   * Into this.add, the cost of placed VM v on every target as if it were not placed (on its own
   * target: the classes only it holds there), without taking it off: what `unplace(v);
   * addCostsOf(v); place(v, a)` gives, at a third of the memory traffic. The work counter moves as
   * those three calls would have moved it (so budgets, and with them plans, are unchanged).
   * Returns v's class count.
   */
  addCostsInPlace(v: number): number {
    const { p, s, T, add } = this;
    const { vmOff, vmClasses, classWeight } = p;
    const a = s.target[v]!;
    const start = vmOff[v]!;
    const end = vmOff[v + 1]!;
    s.addCostsOf(v, add);
    const cnt = s.cnt;
    let own = 0;
    let ownClasses = 0;
    for (let k = start; k < end; k++) {
      const c = vmClasses[k]!;
      if (cnt[c * T + a] === 1) {
        own += classWeight[c]!;
        ownClasses++;
      }
    }
    add[a] = own;
    // addCosts met bit a once more for each class only v holds on a than it would have with v
    // off a; unplace and place would each have counted v's classes.
    s.ops += 2 * (end - start) - ownClasses;
    return end - start;
  }

  movePass(): boolean {
    const order = this.shuffled();
    let improved = false;
    const one = new Int32Array(1);
    for (const v of order) {
      if (this.exhausted) break;
      one[0] = v;
      if (this.relocate(one, 1)) improved = true;
    }
    return improved;
  }

  blockPass(blocks: readonly Int32Array[]): boolean {
    let improved = false;
    const { s } = this;
    const byTarget = new Map<number, number[]>();
    for (const block of blocks) {
      if (this.exhausted) break;
      byTarget.clear();
      for (const v of block) {
        if (!this.movable[v]) continue;
        const t = s.target[v]!;
        const l = byTarget.get(t);
        if (l) l.push(v);
        else byTarget.set(t, [v]);
      }
      for (const part of byTarget.values()) if (part.length >= 2 && this.relocate(part, part.length)) improved = true;
    }
    return improved;
  }

  /** Swaps of two VMs on different targets, for VMs whose better target has no room. */
  swapPass(): boolean {
    const { p, s, T, add } = this;
    const on: number[][] = Array.from({ length: T }, () => []);
    for (let v = 0; v < p.vmCount; v++) if (this.movable[v]) on[s.target[v]!]!.push(v);
    let improved = false;
    const cands: Array<{ b: number; d: number }> = [];
    const us: Array<{ u: number; est: number }> = [];
    for (const v of this.shuffled()) {
      if (this.exhausted) break;
      const a = s.target[v]!;
      this.addCostsInPlace(v);
      cands.length = 0;
      for (let b = 0; b < T; b++) if (b !== a && add[b]! < add[a]!) cands.push({ b, d: add[b]! - add[a]! });
      cands.sort((x, y) => x.d - y.d || x.b - y.b);
      let done = false;
      for (const { b, d } of cands.slice(0, this.swapTargets)) {
        us.length = 0;
        for (const u of on[b]!) {
          if (s.memLoad[b]! - p.memory[u]! + p.memory[v]! > p.capacity[b]!) continue;
          if (s.memLoad[a]! - p.memory[v]! + p.memory[u]! > p.capacity[a]!) continue;
          us.push({ u, est: Math.abs(p.memory[u]! - p.memory[v]!) });
        }
        // Estimate (ignoring what v and u share) for the closest in size first.
        if (us.length > this.swapPartners) {
          us.sort((x, y) => x.est - y.est || x.u - y.u);
          us.length = this.swapPartners;
        }
        for (const x of us) x.est = d + s.moveDelta(x.u, a);
        for (let i = us.length - 1; i >= 0; i--) if (us[i]!.est >= 0) us.splice(i, 1);
        us.sort((x, y) => x.est - y.est || x.u - y.u);
        for (const { u } of us.slice(0, 3)) {
          const c0 = s.cost;
          s.unplace(v);
          s.unplace(u);
          if (s.fits(v, b)) {
            s.place(v, b);
            if (s.fits(u, a)) {
              s.place(u, a);
              if (s.cost < c0) {
                const ia = on[a]!.indexOf(v);
                on[a]![ia] = u;
                const ib = on[b]!.indexOf(u);
                on[b]![ib] = v;
                improved = done = true;
                break;
              }
              s.unplace(u);
            }
            s.unplace(v);
          }
          s.place(v, a);
          s.place(u, b);
        }
        if (done) break;
      }
    }
    return improved;
  }

  shuffled(): number[] {
    const order: number[] = [];
    for (let v = 0; v < this.p.vmCount; v++) if (this.movable[v]) order.push(v);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(this.rng() * (i + 1));
      const x = order[i]!;
      order[i] = order[j]!;
      order[j] = x;
    }
    return order;
  }

  /** Local search to a local optimum (or until the budget runs out). */
  descend(blocks: readonly Int32Array[], maxRounds = 50): void {
    const dbg = this.trace ? (m: string) => this.trace?.(`  ${m}: cost ${this.s.cost}, ops ${(this.s.ops / 1e6).toFixed(0)}M`) : () => {};
    for (let round = 0; round < maxRounds && !this.exhausted; round++) {
      let improved = this.movePass();
      dbg('move');
      improved = this.blockPass(blocks) || improved;
      dbg('block');
      improved = this.swapPass() || improved;
      dbg('swap');
      if (!improved) break;
    }
  }

  /**
   * Ruin and recreate: empty two or three targets that share content, put their VMs back one by
   * one where each adds least (best fit on ties), keep the result unless it is worse.
   * `labels` order the reinsertion (VMs of one community together) half of the time.
   */
  ruinRecreate(iterations: number, coarse: Int32Array, fine: Int32Array): void {
    const { p, s, T, add } = this;
    const movables: number[] = [];
    for (let v = 0; v < p.vmCount; v++) if (this.movable[v]) movables.push(v);
    if (movables.length < 2 || T < 2) return;
    const on: number[][] = Array.from({ length: T }, () => []);
    const chosen = new Uint8Array(T);
    const prevT = new Int32Array(p.vmCount);
    for (let it = 0; it < iterations && !this.exhausted; it++) {
      for (const l of on) l.length = 0;
      for (const v of movables) on[s.target[v]!]!.push(v);
      const v0 = movables[Math.floor(this.rng() * movables.length)]!;
      const a = s.target[v0]!;
      // The target sharing most with v0, and sometimes a random third.
      this.addCostsInPlace(v0);
      let b = -1;
      for (let t = 0; t < T; t++) if (t !== a && on[t]!.length > 0 && (b < 0 || add[t]! < add[b]! || (add[t] === add[b] && this.rng() < 0.5))) b = t;
      if (b < 0) b = (a + 1 + Math.floor(this.rng() * (T - 1))) % T;
      const targets = [a, b];
      if (T > 2 && this.rng() < 0.6) {
        let c = Math.floor(this.rng() * T);
        while (c === a || c === b) c = (c + 1) % T;
        targets.push(c);
      }
      const set: number[] = [];
      for (const t of targets) {
        chosen[t] = 1;
        for (const v of on[t]!) set.push(v);
      }
      const c0 = s.cost;
      for (const v of set) {
        prevT[v] = s.target[v]!;
        s.unplace(v);
      }
      // Order: by community (coarse, then fine), larger VMs first; or plain decreasing size.
      const jitter = new Map<number, number>();
      for (const v of set) jitter.set(v, this.rng());
      if (this.rng() < 0.8) {
        const lab = this.rng() < 0.5 ? coarse : fine;
        set.sort((x, y) => lab[x]! - lab[y]! || p.memory[y]! - p.memory[x]! || jitter.get(x)! - jitter.get(y)!);
      } else set.sort((x, y) => p.memory[y]! - p.memory[x]! || jitter.get(x)! - jitter.get(y)!);
      let ok = true;
      for (const v of set) {
        s.addCostsOf(v, add);
        // Little overlap is no reason to join a target: treat it as starting afresh, so that
        // communities open a roomy ruined target rather than scatter into leftovers.
        const wv = p.vmWeight[v]!;
        for (let t = 0; t < T; t++) if (wv - add[t]! < 0.3 * wv) add[t] = wv;
        let best = -1;
        for (let t = 0; t < T; t++) {
          if (!s.fits(v, t)) continue;
          if (best < 0 || add[t]! < add[best]!) best = t;
          else if (add[t] === add[best]) {
            // Prefer the ruined targets, then the roomier.
            const ft = p.capacity[t]! - s.memLoad[t]!;
            const fb = p.capacity[best]! - s.memLoad[best]!;
            if (chosen[t]! > chosen[best]! || (chosen[t] === chosen[best] && ft > fb)) best = t;
          }
        }
        if (best < 0) {
          ok = false;
          break;
        }
        s.place(v, best);
      }
      if (!ok || s.cost > c0) {
        for (const v of set) s.unplace(v);
        for (const v of set) s.place(v, prevT[v]!);
      }
      for (const t of targets) chosen[t] = 0;
    }
  }

  /**
   * Descent restricted to the VMs of `targets` and of every target that changes while it runs:
   * single moves, then swaps, until nothing on those targets improves.
   */
  focusedDescent(targets: Iterable<number>): void {
    const { p, s } = this;
    const N = p.vmCount;
    const inQ = new Uint8Array(N);
    const queue: number[] = [];
    const queued = new Set<number>();
    const enqueue = (t: number) => {
      if (queued.has(t)) return;
      queued.add(t);
      for (let v = 0; v < N; v++)
        if (s.target[v] === t && this.movable[v] && !inQ[v]) {
          inQ[v] = 1;
          queue.push(v);
        }
    };
    for (const t of targets) enqueue(t);
    const one = new Int32Array(1);
    while (queue.length > 0 && !this.exhausted) {
      const v = queue.pop()!;
      inQ[v] = 0;
      const a = s.target[v]!;
      one[0] = v;
      if (this.relocate(one, 1)) {
        queued.delete(a);
        queued.delete(s.target[v]!);
        enqueue(a);
        enqueue(s.target[v]!);
        continue;
      }
      const u = this.swapOne(v);
      if (u >= 0) {
        queued.delete(a);
        queued.delete(s.target[v]!);
        enqueue(a);
        enqueue(s.target[v]!);
      }
    }
  }

  /** Best-effort improving swap of v with a VM on the target v would rather be on; returns the partner or -1. */
  swapOne(v: number): number {
    const { p, s, T, add } = this;
    const a = s.target[v]!;
    this.addCostsInPlace(v);
    let b = -1;
    for (let t = 0; t < T; t++) if (t !== a && add[t]! < add[a]! && (b < 0 || add[t]! < add[b]!)) b = t;
    if (b < 0) return -1;
    const d = add[b]! - add[a]!;
    const us: Array<{ u: number; est: number }> = [];
    for (let u = 0; u < p.vmCount; u++) {
      if (s.target[u] !== b || !this.movable[u]) continue;
      if (s.memLoad[b]! - p.memory[u]! + p.memory[v]! > p.capacity[b]!) continue;
      if (s.memLoad[a]! - p.memory[v]! + p.memory[u]! > p.capacity[a]!) continue;
      us.push({ u, est: Math.abs(p.memory[u]! - p.memory[v]!) });
    }
    if (us.length > this.swapPartners) {
      us.sort((x, y) => x.est - y.est || x.u - y.u);
      us.length = this.swapPartners;
    }
    for (const x of us) x.est = d + s.moveDelta(x.u, a);
    const good = us.filter((x) => x.est < 0).sort((x, y) => x.est - y.est || x.u - y.u);
    for (const { u } of good.slice(0, 3)) {
      const c0 = s.cost;
      s.unplace(v);
      s.unplace(u);
      if (s.fits(v, b)) {
        s.place(v, b);
        if (s.fits(u, a)) {
          s.place(u, a);
          if (s.cost < c0) return u;
          s.unplace(u);
        }
        s.unplace(v);
      }
      s.place(v, a);
      s.place(u, b);
    }
    return -1;
  }

  /**
   * Iterated local search with focused descents: kick one to three random community parts or VMs
   * to random targets with room, descend on the targets involved, keep the result if it is no
   * worse, else undo exactly the VMs that moved.
   */
  iterate(blocks: readonly Int32Array[], rounds: number): void {
    const { p, s, T } = this;
    const movables: number[] = [];
    for (let v = 0; v < p.vmCount; v++) if (this.movable[v]) movables.push(v);
    if (movables.length === 0 || T < 2) return;
    const snap = new Int32Array(p.vmCount);
    // Communities small enough to sit on one target, for gather kicks; each VM's first block.
    let maxCap = 0;
    for (let t = 0; t < T; t++) maxCap = Math.max(maxCap, p.capacity[t]!);
    const gatherable = blocks.filter((b) => b.reduce((m, v) => m + p.memory[v]!, 0) <= maxCap);
    const blockOf = new Int32Array(p.vmCount).fill(-1);
    blocks.forEach((b, i) => {
      for (const v of b) if (blockOf[v]! < 0) blockOf[v] = i;
    });
    for (let r = 0; r < rounds && !this.exhausted; r++) {
      snap.set(s.target);
      const c0 = s.cost;
      const touched = new Set<number>();
      if (gatherable.length > 0 && this.rng() < 0.3) {
        this.gather(gatherable[Math.floor(this.rng() * gatherable.length)]!, blockOf, touched);
        if (touched.size > 0) this.focusedDescent(touched);
        if (s.cost > c0) this.restore(snap);
        continue;
      }
      const kicks = 1 + Math.floor(this.rng() * 3);
      for (let k = 0; k < kicks; k++) this.kick(blocks, movables, touched);
      if (touched.size === 0) continue;
      this.focusedDescent(touched);
      if (s.cost > c0) this.restore(snap);
    }
  }

  /**
   * One kick: a random community part (the VMs of a random block on one target) or a random VM
   * goes whole to the first target with room for all of it, from a random start; stays put if
   * none has. The targets involved go into `touched`.
   */
  kick(blocks: readonly Int32Array[], movables: readonly number[], touched: Set<number> | null): void {
    const { s, T } = this;
    let set: number[];
    if (blocks.length > 0 && this.rng() < 0.5) {
      const block = blocks[Math.floor(this.rng() * blocks.length)]!;
      const v0 = block[Math.floor(this.rng() * block.length)]!;
      set = [...block].filter((v) => this.movable[v] && s.target[v] === s.target[v0]);
    } else set = [movables[Math.floor(this.rng() * movables.length)]!];
    if (set.length === 0) return;
    const a = s.target[set[0]!]!;
    for (const v of set) s.unplace(v);
    const t0 = Math.floor(this.rng() * T);
    for (let i = 0; i < T; i++) {
      const t = (t0 + i) % T;
      if (t === a) continue;
      let j = 0;
      for (; j < set.length && s.fits(set[j]!, t); j++) s.place(set[j]!, t);
      if (j === set.length) {
        touched?.add(a);
        touched?.add(t);
        return;
      }
      for (let q = 0; q < j; q++) s.unplace(set[q]!);
    }
    for (const v of set) s.place(v, a);
  }

  /** Undo: every VM whose target differs from the snapshot goes back. */
  restore(snap: Int32Array): void {
    const { p, s } = this;
    const moved: number[] = [];
    for (let v = 0; v < p.vmCount; v++) if (s.target[v] !== snap[v]) moved.push(v);
    for (const v of moved) s.unplace(v);
    for (const v of moved) s.place(v, snap[v]!);
  }

  /**
   * Kick of the iterated search: gather a community split over several targets onto the target
   * holding most of it, making room there by sending other VMs (those of the communities with the
   * smallest part on it first) where they add least. Moves nothing if it cannot make room.
   */
  gather(block: Int32Array, blockOf: Int32Array, touched: Set<number>): void {
    const { p, s, T, add } = this;
    const part = new Map<number, number>();
    for (const v of block) if (this.movable[v]) part.set(s.target[v]!, (part.get(s.target[v]!) ?? 0) + p.memory[v]!);
    if (part.size < 2) return;
    let b = -1;
    for (const [t, m] of part) if (b < 0 || m > part.get(b)! || (m === part.get(b) && t < b)) b = t;
    const inBlock = new Set<number>(block);
    const movers: number[] = [];
    let need = 0;
    for (const v of block)
      if (this.movable[v] && s.target[v] !== b) {
        movers.push(v);
        need += p.memory[v]!;
      }
    // Strangers on b, those of the communities least present there first, larger VMs first.
    const strangers: number[] = [];
    const onB = new Map<number, number>();
    for (let v = 0; v < p.vmCount; v++) {
      if (s.target[v] !== b || inBlock.has(v) || !this.movable[v]) continue;
      strangers.push(v);
      onB.set(blockOf[v]!, (onB.get(blockOf[v]!) ?? 0) + p.memory[v]!);
    }
    strangers.sort((x, y) => onB.get(blockOf[x]!)! - onB.get(blockOf[y]!)! || p.memory[y]! - p.memory[x]! || x - y);
    const evicted: number[] = [];
    let freeMem = p.capacity[b]! - s.memLoad[b]!;
    let freeSlots = p.maxVms[b]! - s.vmLoad[b]!;
    for (const u of strangers) {
      if (freeMem >= need && freeSlots >= movers.length) break;
      evicted.push(u);
      freeMem += p.memory[u]!;
      freeSlots++;
    }
    if (freeMem < need || freeSlots < movers.length) return;
    const from = new Map<number, number>();
    for (const v of movers) from.set(v, s.target[v]!);
    for (const u of evicted) from.set(u, b);
    for (const u of evicted) s.unplace(u);
    for (const v of movers) s.unplace(v);
    let ok = true;
    for (const v of movers) {
      if (!s.fits(v, b)) {
        ok = false;
        break;
      }
      s.place(v, b);
    }
    evicted.sort((x, y) => p.memory[y]! - p.memory[x]! || x - y);
    for (let i = 0; i < evicted.length && ok; i++) {
      const u = evicted[i]!;
      s.addCostsOf(u, add);
      let best = -1;
      for (let t = 0; t < T; t++) {
        if (t === b || !s.fits(u, t)) continue;
        if (best < 0 || add[t]! < add[best]! || (add[t] === add[best] && p.capacity[t]! - s.memLoad[t]! > p.capacity[best]! - s.memLoad[best]!)) best = t;
      }
      if (best < 0) ok = false;
      else {
        s.place(u, best);
        touched.add(best);
      }
    }
    if (!ok) {
      for (const v of from.keys()) s.unplace(v);
      for (const [v, t] of from) s.place(v, t);
      touched.clear();
      return;
    }
    touched.add(b);
    for (const t of part.keys()) touched.add(t);
  }

  /**
   * Iterated local search: kick a random fine community part (or VM) to a random target that can
   * take it, descend, keep the result if it is better, else go back.
   */
  perturb(blocks: readonly Int32Array[], rounds: number): void {
    const { p, s } = this;
    let best = s.assignment();
    let bestCost = s.cost;
    const movables: number[] = [];
    for (let v = 0; v < p.vmCount; v++) if (this.movable[v]) movables.push(v);
    if (movables.length === 0) return;
    for (let r = 0; r < rounds && !this.exhausted; r++) {
      const kicks = 1 + Math.floor(this.rng() * 3);
      for (let k = 0; k < kicks; k++) this.kick(blocks, movables, null);
      this.descend(blocks);
      if (s.cost < bestCost) {
        bestCost = s.cost;
        best = s.assignment();
      } else if (s.cost > bestCost) s.load(best);
    }
    if (s.cost !== bestCost) s.load(best);
  }
}

function communitiesOf(g: SharingGraph, resolution: number, seed: number, N: number): Int32Array {
  const out = new Int32Array(N);
  if (g.graph.size === 0) {
    for (let v = 0; v < N; v++) out[v] = v;
    return out;
  }
  const map = louvain(g.graph, { getEdgeWeight: 'weight', resolution, rng: makeRng(seed) });
  g.graph.forEachNode((key, attr) => {
    out[attr.index] = map[key] ?? 0;
  });
  return out;
}

/**
 * Communities inside communities: Louvain again on each coarse community's own subgraph, where
 * modularity is measured against that community alone (one resolution for the whole graph tends
 * to split some OS images into tenants and leave others whole).
 */
function subCommunities(g: SharingGraph, coarse: Int32Array, seed: number): Int32Array {
  const N = coarse.length;
  const fine = new Int32Array(N);
  const members = new Map<number, string[]>();
  g.graph.forEachNode((key, attr) => {
    const c = coarse[attr.index]!;
    const l = members.get(c);
    if (l) l.push(key);
    else members.set(c, [key]);
  });
  let next = 0;
  for (const keys of members.values()) {
    if (keys.length < 4) {
      for (const k of keys) fine[g.graph.getNodeAttribute(k, 'index')] = next;
      next++;
      continue;
    }
    const sub = new UndirectedGraph<SharingNodeAttributes, SharingEdgeAttributes>();
    for (const k of keys) sub.addNode(k, g.graph.getNodeAttributes(k));
    for (const k of keys)
      g.graph.forEachEdge(k, (_e, attr, src, dst) => {
        if (src === k && sub.hasNode(dst) && !sub.hasEdge(src, dst)) sub.addEdge(src, dst, attr);
        else if (dst === k && sub.hasNode(src) && !sub.hasEdge(src, dst)) sub.addEdge(src, dst, attr);
      });
    const labels = sub.size === 0 ? null : louvain(sub, { getEdgeWeight: 'weight', rng: makeRng(seed + next) });
    const local = new Map<number, number>();
    for (const k of keys) {
      const l = labels ? (labels[k] ?? 0) : 0;
      if (!local.has(l)) local.set(l, next++);
      fine[g.graph.getNodeAttribute(k, 'index')] = local.get(l)!;
    }
  }
  return fine;
}

function groupBy(labels: Int32Array, keep: (v: number) => boolean): Int32Array[] {
  const m = new Map<number, number[]>();
  for (let v = 0; v < labels.length; v++) {
    if (!keep(v)) continue;
    const l = m.get(labels[v]!);
    if (l) l.push(v);
    else m.set(labels[v]!, [v]);
  }
  return [...m.values()].map((l) => Int32Array.from(l));
}

/**
 * Pack communities onto targets: VMs ordered by coarse community (largest first), then fine
 * community, then size; targets filled one at a time, roomiest first, with the next VMs in that
 * order. When a VM does not fit, the fill looks further only inside the same coarse community,
 * so targets are not topped up with strangers; VMs left over go where they add least.
 * Returns false if some VM found no room.
 */
function communityFill(search: Search, coarse: Int32Array, fine: Int32Array): boolean {
  const { p, s, T } = search;
  s.reset();
  for (let v = 0; v < p.vmCount; v++) if (p.pinned[v]! >= 0) s.place(v, p.pinned[v]!);
  const coarseMem = new Map<number, number>();
  const fineMem = new Map<number, number>();
  const order: number[] = [];
  for (let v = 0; v < p.vmCount; v++) {
    if (p.pinned[v]! >= 0) continue;
    order.push(v);
    coarseMem.set(coarse[v]!, (coarseMem.get(coarse[v]!) ?? 0) + p.memory[v]!);
    fineMem.set(fine[v]!, (fineMem.get(fine[v]!) ?? 0) + p.memory[v]!);
  }
  order.sort(
    (x, y) =>
      coarseMem.get(coarse[y]!)! - coarseMem.get(coarse[x]!)! ||
      coarse[x]! - coarse[y]! ||
      fineMem.get(fine[y]!)! - fineMem.get(fine[x]!)! ||
      fine[x]! - fine[y]! ||
      p.memory[y]! - p.memory[x]! ||
      x - y,
  );
  const targets = [...Array(T).keys()].sort((x, y) => p.capacity[y]! - s.memLoad[y]! - (p.capacity[x]! - s.memLoad[x]!) || x - y);
  let remaining = order;
  for (const t of targets) {
    const rest: number[] = [];
    let community = -1;
    let blocked = false;
    for (const v of remaining) {
      if (blocked && coarse[v] !== community) {
        rest.push(v);
        continue;
      }
      if (s.fits(v, t)) {
        s.place(v, t);
        community = coarse[v]!;
      } else {
        rest.push(v);
        if (community >= 0) blocked = true;
      }
    }
    remaining = rest;
    if (remaining.length === 0) break;
  }
  return placeLeftovers(search, remaining);
}

/**
 * Pack whole communities: fine communities (typically a tenant's VMs), largest first, each onto
 * the target where it adds least among those with room for all of it, the tightest fit on ties.
 * Where targets have room to spare this keeps every tenant on one target, which a fill to the brim
 * (greedy, communityFill) does not: it splits the community that straddles each target's end.
 * A community that no target can take whole goes VM by VM where each adds least.
 */
function blockPacking(search: Search, fine: Int32Array, coarse: Int32Array | null): boolean {
  const { p, s, T, add } = search;
  s.reset();
  for (let v = 0; v < p.vmCount; v++) if (p.pinned[v]! >= 0) s.place(v, p.pinned[v]!);
  const blocks = groupBy(fine, (v) => p.pinned[v]! < 0);
  const memOf = (b: Int32Array) => {
    let m = 0;
    for (const v of b) m += p.memory[v]!;
    return m;
  };
  const mems = new Map(blocks.map((b) => [b, memOf(b)]));
  const coarseMem = new Map<number, number>();
  if (coarse) for (const b of blocks) coarseMem.set(coarse[b[0]!]!, (coarseMem.get(coarse[b[0]!]!) ?? 0) + mems.get(b)!);
  const cm = (b: Int32Array) => (coarse ? coarseMem.get(coarse[b[0]!]!)! : 0);
  const cl = (b: Int32Array) => (coarse ? coarse[b[0]!]! : 0);
  blocks.sort((x, y) => cm(y) - cm(x) || cl(x) - cl(y) || mems.get(y)! - mems.get(x)! || x[0]! - y[0]!);
  const leftovers: number[] = [];
  for (const block of blocks) {
    const mem = mems.get(block)!;
    const n = block.length;
    const m = search.unionOf(block, n);
    s.addCosts(search.union, m, add);
    let best = -1;
    let bestFree = 0;
    for (let t = 0; t < T; t++) {
      const free = p.capacity[t]! - s.memLoad[t]! - mem;
      if (free < 0 || s.vmLoad[t]! + n > p.maxVms[t]!) continue;
      if (best >= 0 && (add[t]! > add[best]! || (add[t] === add[best] && free >= bestFree))) continue;
      let ok = true;
      for (let i = 0; i < n && ok; i++) ok = s.antiOk(block[i]!, t);
      // Anti-affine VMs inside one community cannot go together: they take the VM-by-VM path.
      for (let i = 0; i < n && ok; i++) for (let j = i + 1; j < n && ok; j++) ok = !antiPair(p, block[i]!, block[j]!);
      if (!ok) continue;
      best = t;
      bestFree = free;
    }
    if (best >= 0) {
      for (const v of block) s.place(v, best);
      continue;
    }
    // Too big for any target's room: into the roomiest targets, as few pieces as it goes.
    const vs = [...block].sort((x, y) => p.memory[y]! - p.memory[x]! || x - y);
    const rooms = [...Array(T).keys()].sort((x, y) => p.capacity[y]! - s.memLoad[y]! - (p.capacity[x]! - s.memLoad[x]!) || x - y);
    for (const t of rooms) {
      let j = 0;
      for (const v of vs) {
        if (s.fits(v, t)) s.place(v, t);
        else vs[j++] = v;
      }
      vs.length = j;
      if (j === 0) break;
    }
    for (const v of vs) leftovers.push(v);
  }
  return placeLeftovers(search, leftovers);
}

function antiPair(p: PlacementProblem, u: number, v: number): boolean {
  for (let k = p.antiOff[u]!; k < p.antiOff[u + 1]!; k++)
    for (let q = p.antiOff[v]!; q < p.antiOff[v + 1]!; q++) if (p.antiIdx[k] === p.antiIdx[q]) return true;
  return false;
}

/** Place VMs (largest first) where each adds least; roomier target on ties. */
function placeLeftovers(search: Search, vms: number[]): boolean {
  const { p, s, add } = search;
  vms.sort((x, y) => p.memory[y]! - p.memory[x]! || x - y);
  for (const v of vms) {
    s.addCostsOf(v, add);
    let best = -1;
    for (let t = 0; t < p.targetCount; t++) {
      if (!s.fits(v, t)) continue;
      if (best < 0 || add[t]! < add[best]! || (add[t] === add[best] && p.capacity[t]! - s.memLoad[t]! > p.capacity[best]! - s.memLoad[best]!))
        best = t;
    }
    if (best < 0) return false;
    s.place(v, best);
  }
  return true;
}

/**
 * Plain packings used only to find a feasible start when the others fail: decreasing memory,
 * anti-affinity groups first, onto the roomiest (or the tightest) target that fits.
 */
function feasiblePacking(s: AssignmentState, bestFit: boolean): boolean {
  const p = s.p;
  s.reset();
  const order: number[] = [];
  for (let v = 0; v < p.vmCount; v++) {
    if (p.pinned[v]! >= 0) s.place(v, p.pinned[v]!);
    else order.push(v);
  }
  const anti = (v: number) => p.antiOff[v + 1]! - p.antiOff[v]!;
  order.sort((x, y) => anti(y) - anti(x) || p.memory[y]! - p.memory[x]! || x - y);
  for (const v of order) {
    let best = -1;
    for (let t = 0; t < p.targetCount; t++) {
      if (!s.fits(v, t)) continue;
      const free = p.capacity[t]! - s.memLoad[t]!;
      const bfree = best < 0 ? 0 : p.capacity[best]! - s.memLoad[best]!;
      if (best < 0 || (bestFit ? free < bfree : free > bfree)) best = t;
    }
    if (best < 0) return false;
    s.place(v, best);
  }
  return true;
}

/**
 * Balance: moves that leave traffic unchanged and lower the fuller end's utilisation, from the
 * fullest targets first. Traffic stays the primary objective.
 */
function balance(search: Search): void {
  const { p, s, T, add } = search;
  const util = (t: number, extra: number) => (p.capacity[t]! > 0 ? (s.memLoad[t]! + extra) / p.capacity[t]! : Infinity);
  for (let round = 0; round < 4 && !search.exhausted; round++) {
    let moved = false;
    const order = [...Array(p.vmCount).keys()].filter((v) => search.movable[v]);
    order.sort((x, y) => util(s.target[y]!, 0) - util(s.target[x]!, 0) || p.memory[x]! - p.memory[y]! || x - y);
    for (const v of order) {
      if (search.exhausted) break;
      const a = s.target[v]!;
      s.unplace(v);
      s.addCostsOf(v, add);
      const before = util(a, p.memory[v]!);
      let best = a;
      let bestUtil = before;
      for (let t = 0; t < T; t++) {
        if (t === a || add[t] !== add[a] || !s.fits(v, t)) continue;
        const after = util(t, p.memory[v]!);
        if (after < bestUtil - 1e-9 && after < before - 1e-9) {
          best = t;
          bestUtil = after;
        }
      }
      s.place(v, best);
      if (best !== a) moved = true;
    }
    if (!moved) break;
  }
}

/** The graph-based planner. `vms` are the fleet's VMs in problem order (for sketches). */
export function placeVms(p: PlacementProblem, vms: readonly FleetVm[], opts: PlacementOptions = {}): PlacementResult {
  const N = p.vmCount;
  const dbg = opts.trace ? (m: string) => opts.trace?.(`${m} (ops ${(s.ops / 1e6).toFixed(0)}M)`) : () => {};
  const seed = opts.seed ?? 1;
  const rng = makeRng(seed);
  const s = new AssignmentState(p);
  const search = new Search(p, s, rng);
  search.trace = opts.trace;
  dbg('state');

  const sg =
    opts.sharingGraph ??
    sharingGraphOf(p, vms, { method: opts.graph ?? 'auto', ...(opts.sketchSize !== undefined ? { sketchSize: opts.sketchSize } : {}), seed });
  dbg(`graph ${sg.method} edges=${sg.graph.size}`);
  const coarse = communitiesOf(sg, 1, seed, N);
  const fine = subCommunities(sg, coarse, seed + 1);
  const coarseBlocks = groupBy(coarse, (v) => p.pinned[v]! < 0).filter((b) => b.length >= 2);
  const fineBlocks = groupBy(fine, (v) => p.pinned[v]! < 0).filter((b) => b.length >= 2);
  const blocks = [...fineBlocks, ...coarseBlocks];
  dbg('communities');

  // Work budgets in AssignmentState ops (class-list entries and mask bits touched): a move
  // pass over all VMs costs about `unit`. Small problems run to convergence; large ones get a
  // fixed number of pass-equivalents, so the planning time grows with the fleet, not beyond.
  let entries = 0;
  for (let v = 0; v < N; v++) entries += p.vmOff[v + 1]! - p.vmOff[v]!;
  const unit = Math.max(1, entries) * (4 + s.W);
  const effort = opts.effort ?? 1;
  const small = entries * p.targetCount <= 2e6;
  const descentBudget = unit * (small ? 1000 : 10) * effort;
  if (N > 400) {
    search.swapTargets = 1;
    search.swapPartners = 8;
  }
  const lnsBudget = unit * 300 * effort;
  const finalBudget = unit * 1000 * effort;
  const ilsBudget = unit * (opts.ilsUnits ?? (small ? 100 : N > 400 ? 2 : 10)) * effort;

  const starts: PlacementStart[] = [];
  const best: { a: Int32Array | null; cost: number } = { a: null, cost: Infinity };
  const initials: Array<{ name: string; a: Int32Array; cost: number }> = [];
  let noPacking = '';
  const greedy = greedyPlacement(p, s);
  dbg('greedy');
  const greedyTraffic = greedy.complete ? trafficPages(p, greedy.sharedCost) : null;
  if (greedy.complete) initials.push({ name: 'greedy', a: greedy.assignment, cost: greedy.sharedCost });
  else starts.push({ name: 'greedy', initial: null, final: null });
  if (communityFill(search, coarse, fine)) initials.push({ name: 'communities', a: s.assignment(), cost: s.cost });
  else starts.push({ name: 'communities', initial: null, final: null });
  dbg('community fill');
  if (blockPacking(search, fine, coarse)) initials.push({ name: 'whole communities', a: s.assignment(), cost: s.cost });
  else starts.push({ name: 'whole communities', initial: null, final: null });
  dbg('whole communities');
  if (initials.length === 0) {
    if (feasiblePacking(s, false) || feasiblePacking(s, true)) initials.push({ name: 'packing', a: s.assignment(), cost: s.cost });
    else {
      const found = findFeasible(p);
      if (found.assignment) {
        s.load(found.assignment);
        initials.push({ name: 'search for a packing', a: found.assignment, cost: s.cost });
      } else noPacking = found.proven ? 'none exists' : 'none found in 1e6 search steps';
    }
  }
  initials.sort((x, y) => x.cost - y.cost);
  for (const init of initials) {
    // A start far behind the best one rarely catches up: on large problems skip it.
    if (!small && init !== initials[0] && init.cost > initials[0]!.cost * 1.05) {
      starts.push({ name: init.name, initial: init.cost, final: null });
      continue;
    }
    s.load(init.a);
    search.budgetEnd = s.ops + descentBudget;
    search.descend(blocks);
    dbg(`descended ${init.name} ${init.cost} -> ${s.cost}`);
    starts.push({ name: init.name, initial: init.cost, final: s.cost });
    if (s.cost < best.cost) {
      best.cost = s.cost;
      best.a = s.assignment();
    }
  }
  if (best.a !== null) {
    s.load(best.a);
    const before = s.cost;
    if (small) {
      // Small problems: ruin and recreate, full perturbation rounds, then focused ones.
      search.budgetEnd = s.ops + lnsBudget;
      search.ruinRecreate(Math.round((opts.ruinIterations ?? Math.min(4000, Math.max(50, 30 * N))) * effort), coarse, fine);
      dbg(`ruin-recreate ${s.cost}`);
      search.budgetEnd = s.ops + finalBudget;
      search.descend(blocks);
      search.budgetEnd = s.ops + unit * 200 * effort;
      search.perturb(blocks, Math.min(200, 20 + 4 * N));
      dbg(`perturbed ${s.cost}`);
    }
    // Iterated local search with focused descents (cheap rounds: only the targets involved).
    search.budgetEnd = s.ops + ilsBudget;
    search.iterate(blocks, Math.round((opts.ilsRounds ?? Math.min(2000, 10 * N)) * effort));
    dbg(`iterated ${s.cost}`);
    starts.push({ name: 'iterated search', initial: before, final: s.cost });
    if (s.cost < best.cost) {
      best.cost = s.cost;
      best.a = s.assignment();
    }
  }
  if (best.a === null) {
    const unplaced = greedy.unplaced.map((v) => `${p.vmNames[v]} (${formatBytes(p.memory[v]!)})`);
    let free = 0;
    for (let t = 0; t < p.targetCount; t++) free += p.capacity[t]!;
    let need = 0;
    for (let v = 0; v < N; v++) need += p.memory[v]!;
    throw new VmsError(
      ErrorCode.PLAN,
      `could not pack the fleet onto the targets: it needs ${formatBytes(need)} of ${formatBytes(free)} offered, ` +
        `but no packing leaves room for every VM (${noPacking}; VMScatter's greedy left over ${unplaced.slice(0, 8).join(', ') || 'none'}). ` +
        `Add capacity or relax maxVms/anti-affinity/pins.`,
    );
  }
  if (s.cost !== best.cost) s.load(best.a);
  search.budgetEnd = s.ops + unit * (small ? 4 : 1);
  balance(search);
  dbg('balanced');
  return {
    assignment: s.assignment(),
    sharedCost: s.cost,
    trafficPages: trafficPages(p, s.cost),
    graphMethod: sg.method,
    communities: { coarse: new Set(coarse).size, fine: new Set(fine).size },
    starts,
    greedyTrafficPages: greedyTraffic,
  };
}
