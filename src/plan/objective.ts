/**
 * The placement problem as typed arrays, and the traffic objective every placer optimises.
 *
 * Traffic model (VMScatter's definition: bytes on the sender's link plus bytes on every target's
 * link). With multicast, a distinct content needed by the set S of targets costs one page on the
 * sender's link and one page on each target link in S: PAGE_SIZE x (1 + |S|). With |S| == 1 it is
 * in effect unicast and still costs 1 + 1. Repeats of a content inside one target (the same content
 * in several VMs placed there, or several times in one VM) cost nothing more: the target references
 * its store. Zero pages are not counted (QEMU sends a tiny record) and device state is ignored.
 * The naive plan is plain per-VM migration: every non-zero page of every VM by unicast, so sender
 * bytes = sum(nonZeroPages) x PAGE_SIZE and traffic = 2 x that.
 *
 * Hence traffic / PAGE_SIZE = distinct + sum over contents of |S|. Contents held by one VM only
 * add exactly 1 wherever that VM goes, so placement can only change the part from shared contents.
 * Shared contents with the same holder set behave identically; they are merged into weighted
 * "classes", and the placer minimises  sum over classes of weight x (number of targets holding it).
 */
import { ErrorCode, VmsError } from '../errors.js';
import type { FleetTarget, FleetVm, PlanConstraints } from './types.js';

export interface PlacementProblem {
  readonly vmNames: readonly string[];
  readonly targetNames: readonly string[];
  readonly vmCount: number;
  readonly targetCount: number;
  /** Per VM: guest RAM, bytes. */
  readonly memory: Float64Array;
  /** Per target: capacity, bytes. */
  readonly capacity: Float64Array;
  /** Per target: maximum VMs (Infinity when unlimited). */
  readonly maxVms: Float64Array;
  /** Per VM: index of the target it is pinned to, or -1. */
  readonly pinned: Int32Array;
  /** Anti-affinity groups as VM indices (deduplicated, each of size >= 2). */
  readonly antiGroups: readonly Uint32Array[];
  /** Per VM: the anti-affinity groups it belongs to (CSR). */
  readonly antiOff: Uint32Array;
  readonly antiIdx: Uint32Array;
  /** Shared-content classes: contents with the same holder set (>= 2 VMs). */
  readonly classCount: number;
  readonly classWeight: Uint32Array;
  /** Holders of each class (CSR, VM indices ascending). */
  readonly classOff: Uint32Array;
  readonly classHolders: Uint32Array;
  /** Classes of each VM (CSR, ascending). */
  readonly vmOff: Uint32Array;
  readonly vmClasses: Uint32Array;
  /** Per VM: shared distinct contents (sum of its classes' weights). */
  readonly vmWeight: Float64Array;
  /** Distinct non-zero contents in the fleet. */
  readonly distinctContents: number;
  /** Contents held by exactly one VM. */
  readonly uniqueContents: number;
  /** Sum of the VMs' nonZeroPages. */
  readonly nonZeroPages: number;
  readonly maxClassDegree: number;
}

/** Pages of traffic for a placement whose shared part costs `sharedCost` (= sum w x lambda). */
export function trafficPages(p: PlacementProblem, sharedCost: number): number {
  return p.distinctContents + p.uniqueContents + sharedCost;
}

/** Lower bound on the shared part: every class on one target. */
export function sharedLowerBound(p: PlacementProblem): number {
  let s = 0;
  for (let c = 0; c < p.classCount; c++) s += p.classWeight[c]!;
  return s;
}

export function formatBytes(n: number): string {
  const GiB = 1024 ** 3;
  const MiB = 1024 ** 2;
  if (Math.abs(n) >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (Math.abs(n) >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  return `${n} B`;
}

function planError(problems: string[]): VmsError {
  return new VmsError(ErrorCode.PLAN, problems.length === 1 ? problems[0]! : `cannot plan: ${problems.join('; ')}`);
}

/**
 * Validate the fleet, targets and constraints and build the problem. Throws VmsError(CONFIG) on
 * malformed input, VmsError(PLAN) on contradictions (naming the VMs) and shortfalls (naming the
 * missing capacity).
 */
export function buildProblem(
  vms: readonly FleetVm[],
  targets: readonly FleetTarget[],
  constraints: PlanConstraints = {},
): PlacementProblem {
  const N = vms.length;
  const T = targets.length;
  const vmIndex = new Map<string, number>();
  const targetIndex = new Map<string, number>();
  for (let t = 0; t < T; t++) {
    const tg = targets[t]!;
    if (typeof tg.name !== 'string' || tg.name === '') throw new VmsError(ErrorCode.CONFIG, `target #${t}: expected a non-empty name`);
    if (targetIndex.has(tg.name)) throw new VmsError(ErrorCode.CONFIG, `target name "${tg.name}" appears twice; names must be unique`);
    targetIndex.set(tg.name, t);
    if (!Number.isFinite(tg.capacityBytes) || tg.capacityBytes < 0)
      throw new VmsError(ErrorCode.CONFIG, `target ${tg.name}: capacityBytes must be a finite number >= 0, got ${tg.capacityBytes}`);
    if (tg.maxVms !== undefined && (!Number.isInteger(tg.maxVms) || tg.maxVms < 0))
      throw new VmsError(ErrorCode.CONFIG, `target ${tg.name}: maxVms must be an integer >= 0, got ${tg.maxVms}`);
  }
  for (let v = 0; v < N; v++) {
    const vm = vms[v]!;
    if (typeof vm.name !== 'string' || vm.name === '') throw new VmsError(ErrorCode.CONFIG, `VM #${v}: expected a non-empty name`);
    if (vmIndex.has(vm.name)) throw new VmsError(ErrorCode.CONFIG, `VM name "${vm.name}" appears twice; names must be unique`);
    vmIndex.set(vm.name, v);
    if (!Number.isFinite(vm.memoryBytes) || vm.memoryBytes < 0)
      throw new VmsError(ErrorCode.CONFIG, `VM ${vm.name}: memoryBytes must be a finite number >= 0, got ${vm.memoryBytes}`);
    if (!(vm.contents instanceof Uint32Array))
      throw new VmsError(ErrorCode.CONFIG, `VM ${vm.name}: contents must be a Uint32Array of content ids`);
    if (!Number.isInteger(vm.nonZeroPages) || vm.nonZeroPages < vm.contents.length)
      throw new VmsError(
        ErrorCode.CONFIG,
        `VM ${vm.name}: nonZeroPages must be an integer >= its distinct contents (${vm.contents.length}), got ${vm.nonZeroPages}`,
      );
  }

  const memory = new Float64Array(N);
  const capacity = new Float64Array(T);
  const maxVms = new Float64Array(T);
  const pinned = new Int32Array(N).fill(-1);
  for (let t = 0; t < T; t++) {
    capacity[t] = targets[t]!.capacityBytes;
    maxVms[t] = targets[t]!.maxVms ?? Infinity;
  }
  let totalMem = 0;
  let nonZeroPages = 0;
  for (let v = 0; v < N; v++) {
    memory[v] = vms[v]!.memoryBytes;
    totalMem += memory[v]!;
    nonZeroPages += vms[v]!.nonZeroPages;
  }

  // Constraints: contradictions are collected and reported together.
  const problems: string[] = [];
  for (let v = 0; v < N; v++) {
    const pin = vms[v]!.pinnedTo;
    if (pin === undefined) continue;
    const t = targetIndex.get(pin);
    if (t === undefined) problems.push(`VM ${vms[v]!.name} is pinned to unknown target "${pin}"`);
    else pinned[v] = t;
  }
  const antiGroups: Uint32Array[] = [];
  for (const [gi, group] of (constraints.antiAffinity ?? []).entries()) {
    if (!Array.isArray(group)) throw new VmsError(ErrorCode.CONFIG, `antiAffinity[${gi}]: expected an array of VM names`);
    const idx = new Set<number>();
    for (const name of group) {
      const v = vmIndex.get(name);
      if (v === undefined) throw new VmsError(ErrorCode.CONFIG, `antiAffinity[${gi}] names unknown VM "${name}"`);
      idx.add(v);
    }
    if (idx.size < 2) continue;
    const members = Uint32Array.from([...idx].sort((a, b) => a - b));
    if (members.length > T)
      problems.push(
        `anti-affinity group [${[...members].map((v) => vms[v]!.name).join(', ')}] has ${members.length} VMs but there are only ${T} targets`,
      );
    const byTarget = new Map<number, string[]>();
    for (const v of members) {
      const t = pinned[v]!;
      if (t < 0) continue;
      const l = byTarget.get(t) ?? [];
      l.push(vms[v]!.name);
      byTarget.set(t, l);
    }
    for (const [t, names] of byTarget)
      if (names.length > 1)
        problems.push(`VMs ${names.join(' and ')} must not share a target (anti-affinity) but are all pinned to ${targets[t]!.name}`);
    antiGroups.push(members);
  }
  const pinMem = new Float64Array(T);
  const pinCount = new Float64Array(T);
  for (let v = 0; v < N; v++) {
    const t = pinned[v]!;
    if (t < 0) continue;
    pinMem[t]! += memory[v]!;
    pinCount[t]! += 1;
  }
  for (let t = 0; t < T; t++) {
    const names = () => vms.filter((_, v) => pinned[v] === t).map((vm) => vm.name).join(', ');
    if (pinMem[t]! > capacity[t]!)
      problems.push(
        `VMs pinned to ${targets[t]!.name} (${names()}) need ${formatBytes(pinMem[t]!)}, ${targets[t]!.name} offers ${formatBytes(capacity[t]!)}`,
      );
    if (pinCount[t]! > maxVms[t]!)
      problems.push(`${pinCount[t]} VMs are pinned to ${targets[t]!.name} (${names()}) but it accepts at most ${maxVms[t]} VMs`);
  }
  if (problems.length > 0) throw planError(problems);

  // Shortfalls.
  if (N > 0 && T === 0) throw planError([`fleet has ${N} VMs but no targets were given`]);
  let totalCap = 0;
  let totalSlots = 0;
  let largest = 0;
  for (let t = 0; t < T; t++) {
    totalCap += capacity[t]!;
    totalSlots += maxVms[t]!;
    if (maxVms[t]! >= 1) largest = Math.max(largest, capacity[t]!);
  }
  for (let v = 0; v < N; v++)
    if (pinned[v]! < 0 && memory[v]! > largest)
      problems.push(`VM ${vms[v]!.name} (${formatBytes(memory[v]!)}) fits no target: the largest offers ${formatBytes(largest)}`);
  if (totalMem > totalCap)
    problems.push(`fleet needs ${formatBytes(totalMem)}, targets offer ${formatBytes(totalCap)} (short by ${formatBytes(totalMem - totalCap)})`);
  if (N > totalSlots) problems.push(`fleet has ${N} VMs but the targets accept at most ${totalSlots} (maxVms)`);
  if (problems.length > 0) throw planError(problems);

  const antiCount = new Uint32Array(N + 1);
  for (const g of antiGroups) for (const v of g) antiCount[v + 1]!++;
  for (let v = 0; v < N; v++) antiCount[v + 1]! += antiCount[v]!;
  const antiIdx = new Uint32Array(antiCount[N]!);
  const fillPos = antiCount.slice(0, N);
  antiGroups.forEach((g, gi) => {
    for (const v of g) antiIdx[fillPos[v]!++] = gi;
  });

  const classes = buildContentClasses(vms);
  return {
    vmNames: vms.map((v) => v.name),
    targetNames: targets.map((t) => t.name),
    vmCount: N,
    targetCount: T,
    memory,
    capacity,
    maxVms,
    pinned,
    antiGroups,
    antiOff: antiCount,
    antiIdx,
    ...classes,
    nonZeroPages,
  };
}

/** Dense per-VM content lists: the ids themselves when they are compact, else ranks. */
export interface DenseContents {
  lists: readonly Uint32Array[];
  /** Size of the dense id space. */
  space: number;
  /** Dense id -> original content id, or null when dense ids are the original ids. */
  ids: Uint32Array | null;
}

export function denseContents(vms: readonly FleetVm[]): DenseContents {
  let total = 0;
  let maxId = -1;
  for (const vm of vms) {
    const c = vm.contents;
    total += c.length;
    for (let i = 1; i < c.length; i++)
      if (c[i]! <= c[i - 1]!)
        throw new VmsError(
          ErrorCode.CONFIG,
          `VM ${vm.name}: contents must be distinct content ids in ascending order; at position ${i}: ${c[i - 1]} then ${c[i]}`,
        );
    if (c.length > 0) maxId = Math.max(maxId, c[c.length - 1]!);
  }
  if (maxId + 1 <= Math.max(1 << 22, 4 * total)) return { lists: vms.map((v) => v.contents), space: maxId + 1, ids: null };
  // Sparse ids (e.g. hashes): rank them.
  const all = new Uint32Array(total);
  let o = 0;
  for (const vm of vms) {
    all.set(vm.contents, o);
    o += vm.contents.length;
  }
  all.sort();
  let u = 0;
  for (let i = 0; i < total; i++) if (i === 0 || all[i] !== all[u - 1]) all[u++] = all[i]!;
  const ids = all.slice(0, u);
  const lists = vms.map((vm) => {
    const src = vm.contents;
    const out = new Uint32Array(src.length);
    let lo = 0;
    for (let i = 0; i < src.length; i++) {
      const x = src[i]!;
      let hi = u;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ids[mid]! < x) lo = mid + 1;
        else hi = mid;
      }
      out[i] = lo;
    }
    return out;
  });
  return { lists, space: u, ids };
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

type ContentClasses = Pick<
  PlacementProblem,
  | 'classCount'
  | 'classWeight'
  | 'classOff'
  | 'classHolders'
  | 'vmOff'
  | 'vmClasses'
  | 'vmWeight'
  | 'distinctContents'
  | 'uniqueContents'
  | 'maxClassDegree'
>;

/**
 * Merge shared contents with identical holder sets into weighted classes. Holder sets are
 * identified by a 64-bit hash built VM by VM; a collision would merge two different sets, which
 * shows up as a class with more holders than its contents' degree and triggers a rehash.
 */
export function buildContentClasses(vms: readonly FleetVm[]): ContentClasses {
  const dense = denseContents(vms);
  for (let attempt = 0; attempt < 4; attempt++) {
    const r = tryBuildClasses(dense, attempt);
    if (r) return r;
  }
  throw new VmsError(ErrorCode.PLAN, 'internal: content class hashing kept colliding');
}

function tryBuildClasses(dense: DenseContents, seed: number): ContentClasses | null {
  const { lists, space } = dense;
  const N = lists.length;
  const deg = new Uint32Array(space);
  const h1 = new Uint32Array(space);
  const h2 = new Uint32Array(space);
  for (let v = 0; v < N; v++) {
    const a = fmix32(v * 2 + 1 + seed * 0x9e3779b9) | 1;
    const b = fmix32(v * 2 + 2 + seed * 0x7f4a7c15) | 1;
    const l = lists[v]!;
    for (let i = 0; i < l.length; i++) {
      const d = l[i]!;
      deg[d]!++;
      h1[d] = Math.imul(h1[d]! ^ a, 0x01000193) + b;
      h2[d] = Math.imul(h2[d]! + a, 0x5bd1e995) ^ b;
    }
  }
  let distinct = 0;
  let unique = 0;
  let shared = 0;
  for (let d = 0; d < space; d++) {
    const g = deg[d]!;
    if (g === 0) continue;
    distinct++;
    if (g === 1) unique++;
    else shared++;
  }
  // Classify shared contents by (h1, h2, deg) with open addressing; h1 becomes the class id.
  let size = 1;
  while (size < shared * 2 + 2) size <<= 1;
  const table = new Int32Array(size).fill(-1);
  const mask = size - 1;
  const k1 = new Uint32Array(Math.max(1, shared));
  const k2 = new Uint32Array(Math.max(1, shared));
  const kd = new Uint32Array(Math.max(1, shared));
  const weight = new Uint32Array(Math.max(1, shared));
  let C = 0;
  const NONE = 0xffffffff;
  for (let d = 0; d < space; d++) {
    const g = deg[d]!;
    if (g < 2) {
      h1[d] = NONE;
      continue;
    }
    const x1 = h1[d]! >>> 0;
    const x2 = h2[d]! >>> 0;
    let s = fmix32(x1 ^ Math.imul(x2, 0x27d4eb2f) ^ g) & mask;
    for (;;) {
      const e = table[s]!;
      if (e < 0) {
        table[s] = C;
        k1[C] = x1;
        k2[C] = x2;
        kd[C] = g;
        weight[C] = 1;
        h1[d] = C++;
        break;
      }
      if (k1[e] === x1 && k2[e] === x2 && kd[e] === g) {
        weight[e]!++;
        h1[d] = e;
        break;
      }
      s = (s + 1) & mask;
    }
  }
  const cls = h1;
  const classOff = new Uint32Array(C + 1);
  let maxDeg = 0;
  for (let c = 0; c < C; c++) {
    classOff[c + 1] = classOff[c]! + kd[c]!;
    if (kd[c]! > maxDeg) maxDeg = kd[c]!;
  }
  const classHolders = new Uint32Array(classOff[C]!);
  const fill = classOff.slice(0, Math.max(1, C));
  const last = new Int32Array(Math.max(1, C)).fill(-1);
  for (let v = 0; v < N; v++) {
    const l = lists[v]!;
    for (let i = 0; i < l.length; i++) {
      const c = cls[l[i]!]!;
      if (c === NONE || last[c] === v) continue;
      last[c] = v;
      if (fill[c]! >= classOff[c + 1]!) return null; // two holder sets collided
      classHolders[fill[c]!++] = v;
    }
  }
  for (let c = 0; c < C; c++) if (fill[c] !== classOff[c + 1]) return null;
  // Transpose: classes of each VM.
  const vmOff = new Uint32Array(N + 1);
  for (let k = 0; k < classHolders.length; k++) vmOff[classHolders[k]! + 1]!++;
  for (let v = 0; v < N; v++) vmOff[v + 1]! += vmOff[v]!;
  const vmClasses = new Uint32Array(vmOff[N]!);
  const vfill = vmOff.slice(0, Math.max(1, N));
  const vmWeight = new Float64Array(N);
  for (let c = 0; c < C; c++)
    for (let k = classOff[c]!; k < classOff[c + 1]!; k++) {
      const v = classHolders[k]!;
      vmClasses[vfill[v]!++] = c;
      vmWeight[v]! += weight[c]!;
    }
  return {
    classCount: C,
    classWeight: weight.slice(0, C),
    classOff,
    classHolders,
    vmOff,
    vmClasses,
    vmWeight,
    distinctContents: distinct,
    uniqueContents: unique,
    maxClassDegree: maxDeg,
  };
}

/**
 * An assignment with per-class per-target VM counts, so that the objective change of placing or
 * removing a VM is computed from that VM's classes only.
 */
export class AssignmentState {
  readonly p: PlacementProblem;
  readonly T: number;
  readonly target: Int32Array;
  readonly cnt: Uint16Array | Uint32Array;
  /** Per class: bitmask of the targets holding it (W words per class). */
  readonly mask: Uint32Array;
  readonly W: number;
  readonly memLoad: Float64Array;
  readonly vmLoad: Float64Array;
  readonly antiCnt: Int32Array;
  /** sum over classes of weight x (targets holding the class). */
  cost = 0;
  /** Work counter (class-list entries touched), for deterministic budgets. */
  ops = 0;

  constructor(p: PlacementProblem) {
    this.p = p;
    this.T = p.targetCount;
    this.target = new Int32Array(p.vmCount).fill(-1);
    const n = p.classCount * p.targetCount;
    this.cnt = p.maxClassDegree < 0xffff ? new Uint16Array(n) : new Uint32Array(n);
    this.W = Math.max(1, Math.ceil(p.targetCount / 32));
    this.mask = new Uint32Array(p.classCount * this.W);
    this.memLoad = new Float64Array(p.targetCount);
    this.vmLoad = new Float64Array(p.targetCount);
    this.antiCnt = new Int32Array(p.antiGroups.length * p.targetCount);
  }

  reset(): void {
    this.target.fill(-1);
    this.cnt.fill(0);
    this.mask.fill(0);
    this.memLoad.fill(0);
    this.vmLoad.fill(0);
    this.antiCnt.fill(0);
    this.cost = 0;
  }

  /** Load a full or partial assignment (-1 = unassigned). */
  load(assign: Int32Array): void {
    this.reset();
    for (let v = 0; v < assign.length; v++) if (assign[v]! >= 0) this.place(v, assign[v]!);
  }

  place(v: number, t: number): number {
    const { vmOff, vmClasses, classWeight } = this.p;
    const T = this.T;
    const cnt = this.cnt;
    let delta = 0;
    const end = vmOff[v + 1]!;
    const W = this.W;
    const word = t >>> 5;
    const bit = 1 << (t & 31);
    const mask = this.mask;
    for (let k = vmOff[v]!; k < end; k++) {
      const c = vmClasses[k]!;
      if (cnt[c * T + t]!++ === 0) {
        delta += classWeight[c]!;
        mask[c * W + word]! |= bit;
      }
    }
    this.ops += end - vmOff[v]!;
    this.cost += delta;
    this.target[v] = t;
    this.memLoad[t]! += this.p.memory[v]!;
    this.vmLoad[t]! += 1;
    for (let k = this.p.antiOff[v]!; k < this.p.antiOff[v + 1]!; k++) this.antiCnt[this.p.antiIdx[k]! * T + t]!++;
    return delta;
  }

  unplace(v: number): number {
    const t = this.target[v]!;
    if (t < 0) return 0;
    const { vmOff, vmClasses, classWeight } = this.p;
    const T = this.T;
    const cnt = this.cnt;
    let delta = 0;
    const end = vmOff[v + 1]!;
    const W = this.W;
    const word = t >>> 5;
    const keep = ~(1 << (t & 31));
    const mask = this.mask;
    for (let k = vmOff[v]!; k < end; k++) {
      const c = vmClasses[k]!;
      if (--cnt[c * T + t]! === 0) {
        delta -= classWeight[c]!;
        mask[c * W + word]! &= keep;
      }
    }
    this.ops += end - vmOff[v]!;
    this.cost += delta;
    this.target[v] = -1;
    this.memLoad[t]! -= this.p.memory[v]!;
    this.vmLoad[t]! -= 1;
    for (let k = this.p.antiOff[v]!; k < this.p.antiOff[v + 1]!; k++) this.antiCnt[this.p.antiIdx[k]! * T + t]!--;
    return delta;
  }

  /** Whether unassigned VM v may be placed on t (pin, capacity, maxVms, anti-affinity). */
  fits(v: number, t: number): boolean {
    const p = this.p;
    const pin = p.pinned[v]!;
    if (pin >= 0 && pin !== t) return false;
    if (this.memLoad[t]! + p.memory[v]! > p.capacity[t]!) return false;
    if (this.vmLoad[t]! + 1 > p.maxVms[t]!) return false;
    return this.antiOk(v, t);
  }

  antiOk(v: number, t: number): boolean {
    const p = this.p;
    for (let k = p.antiOff[v]!; k < p.antiOff[v + 1]!; k++) if (this.antiCnt[p.antiIdx[k]! * this.T + t]! > 0) return false;
    return true;
  }

  /**
   * For each target t, the cost of adding the (currently unassigned) VMs whose classes are
   * listed in `classes` to t: sum of weights of those classes t does not hold yet. `classes` must
   * be free of duplicates.
   */
  addCosts(classes: ArrayLike<number>, n: number, out: Float64Array): void {
    const T = this.T;
    const W = this.W;
    const mask = this.mask;
    const w = this.p.classWeight;
    out.fill(0);
    let total = 0;
    let bits = 0;
    for (let i = 0; i < n; i++) {
      const c = classes[i]!;
      const wc = w[c]!;
      total += wc;
      const base = c * W;
      for (let x = 0; x < W; x++) {
        let m = mask[base + x]!;
        while (m !== 0) {
          const low = m & -m;
          out[(x << 5) + 31 - Math.clz32(low)]! -= wc;
          m ^= low;
          bits++;
        }
      }
    }
    for (let t = 0; t < T; t++) out[t]! += total;
    this.ops += n * (1 + W) + bits;
  }

  /** Add cost of unassigned VM v on each target. */
  addCostsOf(v: number, out: Float64Array): void {
    const { vmOff, vmClasses } = this.p;
    this.addCosts(vmClasses.subarray(vmOff[v]!, vmOff[v + 1]!), vmOff[v + 1]! - vmOff[v]!, out);
  }

  /** Cost change of moving assigned VM v to t, computed from v's classes only. */
  moveDelta(v: number, t: number): number {
    const a = this.target[v]!;
    if (a === t) return 0;
    const { vmOff, vmClasses, classWeight } = this.p;
    const T = this.T;
    const cnt = this.cnt;
    let delta = 0;
    const end = vmOff[v + 1]!;
    for (let k = vmOff[v]!; k < end; k++) {
      const c = vmClasses[k]!;
      const b = c * T;
      if (a >= 0 && cnt[b + a] === 1) delta -= classWeight[c]!;
      if (cnt[b + t] === 0) delta += classWeight[c]!;
    }
    this.ops += end - vmOff[v]!;
    return delta;
  }

  assignment(): Int32Array {
    return this.target.slice();
  }
}

/** Exact shared cost of a complete assignment (independent of AssignmentState, for checks). */
export function sharedCostOf(p: PlacementProblem, assign: Int32Array): number {
  let cost = 0;
  const seen = new Int32Array(p.targetCount).fill(-1);
  for (let c = 0; c < p.classCount; c++) {
    let lambda = 0;
    for (let k = p.classOff[c]!; k < p.classOff[c + 1]!; k++) {
      const t = assign[p.classHolders[k]!]!;
      if (seen[t] !== c) {
        seen[t] = c;
        lambda++;
      }
    }
    cost += lambda * p.classWeight[c]!;
  }
  return cost;
}

/** Check a complete assignment against every hard constraint; returns the violations found. */
export function checkAssignment(p: PlacementProblem, assign: Int32Array): string[] {
  const errs: string[] = [];
  const mem = new Float64Array(p.targetCount);
  const n = new Float64Array(p.targetCount);
  for (let v = 0; v < p.vmCount; v++) {
    const t = assign[v]!;
    if (!(t >= 0 && t < p.targetCount)) {
      errs.push(`VM ${p.vmNames[v]} is not assigned`);
      continue;
    }
    if (p.pinned[v]! >= 0 && p.pinned[v] !== t) errs.push(`VM ${p.vmNames[v]} is pinned to ${p.targetNames[p.pinned[v]!]} but placed on ${p.targetNames[t]}`);
    mem[t]! += p.memory[v]!;
    n[t]! += 1;
  }
  for (let t = 0; t < p.targetCount; t++) {
    if (mem[t]! > p.capacity[t]!) errs.push(`target ${p.targetNames[t]} holds ${formatBytes(mem[t]!)} > capacity ${formatBytes(p.capacity[t]!)}`);
    if (n[t]! > p.maxVms[t]!) errs.push(`target ${p.targetNames[t]} holds ${n[t]} VMs > maxVms ${p.maxVms[t]}`);
  }
  for (const g of p.antiGroups) {
    const seen = new Map<number, number>();
    for (const v of g) {
      const t = assign[v]!;
      const other = seen.get(t);
      if (other !== undefined) errs.push(`anti-affine VMs ${p.vmNames[other]} and ${p.vmNames[v]} share target ${p.targetNames[t]}`);
      else seen.set(t, v);
    }
  }
  return errs;
}

export { makeRng } from '../rng.js';
