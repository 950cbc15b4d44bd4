/**
 * Multicast groups: for every distinct content, S = the set of targets whose VMs hold it; a group
 * is a distinct S with its contents. A content in a group with targets S costs PAGE_SIZE x
 * (1 + |S|) of traffic (see objective.ts).
 *
 * Groups with fewer than `minTargetsForScatter` targets (default 2: contents one target needs)
 * are kept in the plan with `multicast: false`: the converge stream carries them, at the same
 * cost. Only multicast groups take part in the cap and in the schedule.
 *
 * Cap: when there are more than `maxGroups` multicast groups, the pair of groups whose union costs
 * least extra traffic (n_g (|S_g u S_h| - |S_g|) + n_h (|S_g u S_h| - |S_h|) target-link pages) is
 * merged into one group for the union, until the cap holds. A superset absorbing a subset is the
 * cheapest case of this rule. With more than 2,048 groups (that pairwise rule is quadratic), the
 * smallest groups are first absorbed, one by one, by the cheapest of the few hundred biggest.
 *
 * Group ids are dense and follow each group's smallest content id (the order a naive sender that
 * walks the content index would meet them in).
 */
import { ErrorCode, VmsError } from '../errors.js';
import { denseContents } from './objective.js';
import type { FleetVm, MulticastGroup } from './types.js';

export interface GroupOptions {
  /** Maximum multicast groups (default 256, the address pool size). */
  maxGroups?: number;
  /** Groups with fewer targets go by the converge stream (default 2). */
  minTargetsForScatter?: number;
}

export interface GroupsResult {
  groups: MulticastGroup[];
  /** Multicast groups before the cap merged any. */
  multicastGroupsBeforeCap: number;
  /** Extra target-link pages the merges cost. */
  mergeCostPages: number;
}

export const DEFAULT_MAX_GROUPS = 256;
export const DEFAULT_MIN_TARGETS_FOR_SCATTER = 2;

export function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Traffic in pages of a set of groups: sum of contents x (1 + targets). */
export function groupTrafficPages(groups: readonly MulticastGroup[]): number {
  let s = 0;
  for (const g of groups) s += g.contents.length * (1 + g.targets.length);
  return s;
}

export function buildGroups(
  vms: readonly FleetVm[],
  assignment: ArrayLike<number>,
  targetCount: number,
  opts: GroupOptions = {},
): GroupsResult {
  const maxGroups = opts.maxGroups ?? DEFAULT_MAX_GROUPS;
  const minTargets = opts.minTargetsForScatter ?? DEFAULT_MIN_TARGETS_FOR_SCATTER;
  if (!Number.isInteger(maxGroups) || maxGroups < 1)
    throw new VmsError(ErrorCode.CONFIG, `maxGroups must be an integer >= 1, got ${maxGroups}`);
  if (!Number.isInteger(minTargets) || minTargets < 1)
    throw new VmsError(ErrorCode.CONFIG, `minTargetsForScatter must be an integer >= 1, got ${minTargets}`);
  const W = Math.max(1, Math.ceil(targetCount / 32));
  const dense = denseContents(vms);
  const space = dense.space;
  const masks = new Uint32Array(space * W);
  for (let v = 0; v < vms.length; v++) {
    const t = assignment[v]!;
    if (!(t >= 0 && t < targetCount)) throw new VmsError(ErrorCode.PLAN, `VM ${vms[v]!.name} has no target (assignment ${t})`);
    const off = t >>> 5;
    const bit = (1 << (t & 31)) >>> 0;
    const l = dense.lists[v]!;
    for (let i = 0; i < l.length; i++) masks[l[i]! * W + off]! |= bit;
  }

  // Distinct masks -> raw groups (open addressing over the mask words).
  let cap = 1024;
  let keys = new Uint32Array(cap * W);
  let sizes = new Float64Array(cap);
  let first = new Float64Array(cap);
  let G = 0;
  let tsize = 4096;
  let table = new Int32Array(tsize).fill(-1);
  const groupOf = new Int32Array(space).fill(-1);
  const hashAt = (arr: Uint32Array, off: number): number => {
    let h = 0x811c9dc5;
    for (let w = 0; w < W; w++) h = Math.imul(h ^ arr[off + w]!, 0x01000193) ^ (h >>> 15);
    return h >>> 0;
  };
  const insertTable = (g: number) => {
    let s = hashAt(keys, g * W) & (tsize - 1);
    while (table[s]! >= 0) s = (s + 1) & (tsize - 1);
    table[s] = g;
  };
  // Contents of one target (most of them: pages no other VM holds) skip the hash table.
  const single = new Int32Array(targetCount).fill(-1);
  for (let d = 0; d < space; d++) {
    const off = d * W;
    let nz = -1;
    let many = false;
    for (let w = 0; w < W; w++)
      if (masks[off + w] !== 0) {
        if (nz >= 0) many = true;
        nz = w;
      }
    if (nz < 0) continue;
    const m = masks[off + nz]!;
    if (!many && (m & (m - 1)) === 0) {
      const t = (nz << 5) + 31 - Math.clz32(m);
      const g0 = single[t]!;
      if (g0 >= 0) {
        sizes[g0]!++;
        groupOf[d] = g0;
        continue;
      }
    }
    let s = hashAt(masks, off) & (tsize - 1);
    let g = -1;
    for (;;) {
      const e = table[s]!;
      if (e < 0) break;
      let eq = true;
      for (let w = 0; w < W && eq; w++) eq = keys[e * W + w] === masks[off + w];
      if (eq) {
        g = e;
        break;
      }
      s = (s + 1) & (tsize - 1);
    }
    if (g < 0) {
      if (G === cap) {
        cap *= 2;
        const nk = new Uint32Array(cap * W);
        nk.set(keys);
        keys = nk;
        const ns = new Float64Array(cap);
        ns.set(sizes);
        sizes = ns;
        const nf = new Float64Array(cap);
        nf.set(first);
        first = nf;
      }
      g = G++;
      for (let w = 0; w < W; w++) keys[g * W + w] = masks[off + w]!;
      if (!many && (m & (m - 1)) === 0) single[(nz << 5) + 31 - Math.clz32(m)] = g;
      first[g] = d;
      if (G * 2 > tsize) {
        tsize *= 2;
        table = new Int32Array(tsize).fill(-1);
        for (let x = 0; x < G; x++) insertTable(x);
      } else table[s] = g;
    }
    sizes[g]!++;
    groupOf[d] = g;
  }

  const count = (g: number) => {
    let n = 0;
    for (let w = 0; w < W; w++) n += popcount32(keys[g * W + w]!);
    return n;
  };
  // Merge multicast groups down to the cap.
  const parent = new Int32Array(G);
  for (let g = 0; g < G; g++) parent[g] = g;
  const mc: number[] = [];
  for (let g = 0; g < G; g++) if (count(g) >= minTargets) mc.push(g);
  const before = mc.length;
  let mergeCost = 0;
  if (mc.length > maxGroups) {
    let live = mc;
    if (live.length > EXACT_MERGE_LIMIT) {
      const r = absorbSmallGroups(live, keys, sizes, first, parent, W, Math.max(maxGroups, EXACT_MERGE_LIMIT));
      live = r.live;
      mergeCost += r.cost;
    }
    if (live.length > maxGroups) mergeCost += mergeGroups(live, keys, sizes, first, parent, W, maxGroups);
  }
  const find = (g: number): number => {
    while (parent[g] !== g) {
      parent[g] = parent[parent[g]!]!;
      g = parent[g]!;
    }
    return g;
  };

  // Final groups, ids by smallest content id.
  const roots: number[] = [];
  for (let g = 0; g < G; g++) if (find(g) === g) roots.push(g);
  roots.sort((a, b) => first[a]! - first[b]!);
  const idOf = new Int32Array(G).fill(-1);
  roots.forEach((g, i) => {
    idOf[g] = i;
  });
  const finalSizes = new Uint32Array(roots.length);
  for (let d = 0; d < space; d++) {
    const g = groupOf[d]!;
    if (g < 0) continue;
    const id = idOf[find(g)]!;
    groupOf[d] = id;
    finalSizes[id]!++;
  }
  const contents = roots.map((_, i) => new Uint32Array(finalSizes[i]!));
  const fill = new Uint32Array(roots.length);
  for (let d = 0; d < space; d++) {
    const id = groupOf[d]!;
    if (id < 0) continue;
    contents[id]![fill[id]!++] = dense.ids ? dense.ids[d]! : d;
  }
  const groups: MulticastGroup[] = roots.map((g, i) => {
    const targets: number[] = [];
    for (let t = 0; t < targetCount; t++) if ((keys[g * W + (t >>> 5)]! >>> (t & 31)) & 1) targets.push(t);
    return { id: i, targets, contents: contents[i]!, multicast: targets.length >= minTargets };
  });
  return { groups, multicastGroupsBeforeCap: before, mergeCostPages: mergeCost };
}

/** Above this many multicast groups, small groups are first absorbed by a few big ones. */
const EXACT_MERGE_LIMIT = 2048;
const ABSORB_CANDIDATES = 256;

/**
 * Cheap first phase for very many groups (the pairwise merge is quadratic): the smallest groups,
 * one by one, merge with whichever of the biggest groups (by contents x targets) or the widest
 * (most targets) costs least, until `limit` groups remain. Returns the live groups and the cost.
 */
function absorbSmallGroups(
  live0: number[],
  keys: Uint32Array,
  sizes: Float64Array,
  first: Float64Array,
  parent: Int32Array,
  W: number,
  limit: number,
): { live: number[]; cost: number } {
  const count = (g: number) => {
    let n = 0;
    for (let w = 0; w < W; w++) n += popcount32(keys[g * W + w]!);
    return n;
  };
  const weight = (g: number) => sizes[g]! * count(g);
  const byWeight = [...live0].sort((a, b) => weight(b) - weight(a) || a - b);
  const byWidth = [...live0].sort((a, b) => count(b) - count(a) || sizes[b]! - sizes[a]! || a - b);
  const cands = [...new Set([...byWeight.slice(0, ABSORB_CANDIDATES), ...byWidth.slice(0, ABSORB_CANDIDATES / 4)])];
  const isCand = new Set(cands);
  const small = live0.filter((g) => !isCand.has(g)).sort((a, b) => sizes[a]! - sizes[b]! || a - b);
  let liveCount = live0.length;
  let cost = 0;
  const dead = new Set<number>();
  for (const g of small) {
    if (liveCount <= limit) break;
    const kg = count(g);
    let best = -1;
    let bestC = Infinity;
    for (const h of cands) {
      let u = 0;
      for (let w = 0; w < W; w++) u += popcount32(keys[g * W + w]! | keys[h * W + w]!);
      const c = sizes[g]! * (u - kg) + sizes[h]! * (u - count(h));
      if (c < bestC || (c === bestC && h < best)) {
        bestC = c;
        best = h;
      }
    }
    for (let w = 0; w < W; w++) keys[best * W + w] = keys[best * W + w]! | keys[g * W + w]!;
    sizes[best] = sizes[best]! + sizes[g]!;
    first[best] = Math.min(first[best]!, first[g]!);
    parent[g] = best;
    dead.add(g);
    cost += bestC;
    liveCount--;
  }
  return { live: live0.filter((g) => !dead.has(g)), cost };
}

/**
 * Greedy merging: keep for every live group its cheapest partner; merge the globally cheapest pair;
 * refresh the partners that pointed at the merged pair. The merged group takes the slot of the
 * first and its union mask. Returns the traffic added, in pages.
 */
function mergeGroups(
  live0: number[],
  keys: Uint32Array,
  sizes: Float64Array,
  first: Float64Array,
  parent: Int32Array,
  W: number,
  maxGroups: number,
): number {
  const live = live0.slice();
  const M = live.length;
  const pos = new Map<number, number>();
  live.forEach((g, i) => pos.set(g, i));
  const alive = new Uint8Array(M).fill(1);
  const k = new Float64Array(M);
  for (let i = 0; i < M; i++) {
    let n = 0;
    for (let w = 0; w < W; w++) n += popcount32(keys[live[i]! * W + w]!);
    k[i] = n;
  }
  const pairCost = (i: number, j: number): number => {
    const gi = live[i]! * W;
    const gj = live[j]! * W;
    let u = 0;
    for (let w = 0; w < W; w++) u += popcount32(keys[gi + w]! | keys[gj + w]!);
    return sizes[live[i]!]! * (u - k[i]!) + sizes[live[j]!]! * (u - k[j]!);
  };
  const bestJ = new Int32Array(M).fill(-1);
  const bestC = new Float64Array(M).fill(Infinity);
  const refresh = (i: number) => {
    bestJ[i] = -1;
    bestC[i] = Infinity;
    for (let j = 0; j < M; j++) {
      if (j === i || !alive[j]) continue;
      const c = pairCost(i, j);
      if (c < bestC[i]! || (c === bestC[i] && j < bestJ[i]!)) {
        bestC[i] = c;
        bestJ[i] = j;
      }
    }
  };
  for (let i = 0; i < M; i++) refresh(i);
  let liveCount = M;
  let added = 0;
  while (liveCount > maxGroups) {
    let i = -1;
    for (let x = 0; x < M; x++) if (alive[x] && bestJ[x]! >= 0 && (i < 0 || bestC[x]! < bestC[i]!)) i = x;
    if (i < 0) break;
    const j = bestJ[i]!;
    added += bestC[i]!;
    const gi = live[i]!;
    const gj = live[j]!;
    for (let w = 0; w < W; w++) keys[gi * W + w] = keys[gi * W + w]! | keys[gj * W + w]!;
    sizes[gi] = sizes[gi]! + sizes[gj]!;
    first[gi] = Math.min(first[gi]!, first[gj]!);
    parent[gj] = gi;
    let n = 0;
    for (let w = 0; w < W; w++) n += popcount32(keys[gi * W + w]!);
    k[i] = n;
    alive[j] = 0;
    liveCount--;
    refresh(i);
    for (let x = 0; x < M; x++) {
      if (!alive[x] || x === i) continue;
      if (bestJ[x] === i || bestJ[x] === j) refresh(x);
      else {
        const c = pairCost(x, i);
        if (c < bestC[x]!) {
          bestC[x] = c;
          bestJ[x] = i;
        }
      }
    }
  }
  return added;
}
