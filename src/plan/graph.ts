/**
 * The sharing graph: VMs are nodes, an edge's weight is the number of distinct contents the two
 * VMs share.
 *
 * Exact weights come from the content classes (per-content holder lists): each VM's row is summed
 * over its classes' holders, so the work is sum over classes of degree^2 and memory stays O(VMs).
 * When that work is too large (big fleets where an OS image is held by hundreds of VMs), weights
 * are estimated from MinHash sketches of each VM's contents: J ~ |A n B| / |A u B| from the share
 * of sketch bins on which the two VMs agree, and |A n B| = J (|A| + |B|) / (1 + J). The placement uses the
 * graph only to find communities; every move it makes is scored on the exact objective, so the
 * sketch error reaches the objective only through the communities. The bench measures that.
 * The sketch is one-permutation MinHash (k bins, each keeping its smallest hash), so a VM's sketch
 * costs one hash per content and a pair costs k comparisons.
 *
 * Large graphs keep each VM's strongest `maxNeighbours` edges (an edge stays if either end keeps
 * it), which is what community detection needs and keeps graphology's memory small.
 */
import { UndirectedGraph } from 'graphology';
import type { FleetVm } from './types.js';
import { buildContentClasses, type PlacementProblem } from './objective.js';

export type GraphMethod = 'exact' | 'minhash';

export interface SharingGraphOptions {
  /** 'auto' (default): exact unless the pair work exceeds `exactPairBudget`. */
  method?: 'auto' | GraphMethod;
  /** Bins per VM for MinHash, a power of two (default 128). */
  sketchSize?: number;
  /** Edges kept per VM (default: all up to 256 VMs, else 32). */
  maxNeighbours?: number;
  /** Max sum of class degree^2 for exact weights in 'auto' mode (default 3e8). */
  exactPairBudget?: number;
  seed?: number;
}

export interface SharingNodeAttributes {
  index: number;
  memoryBytes: number;
}
export interface SharingEdgeAttributes {
  weight: number;
}

export interface SharingGraph {
  graph: UndirectedGraph<SharingNodeAttributes, SharingEdgeAttributes>;
  method: GraphMethod;
  /** Hashes per VM when method is 'minhash'. */
  sketchSize?: number;
  /** Edges with a non-zero weight left out by the neighbour cap. */
  droppedEdges: number;
}

/** Build the sharing graph of a fleet (public entry: computes content classes itself). */
export function buildSharingGraph(vms: readonly FleetVm[], opts: SharingGraphOptions = {}): SharingGraph {
  const cls = buildContentClasses(vms);
  const p = {
    vmCount: vms.length,
    vmNames: vms.map((v) => v.name),
    memory: Float64Array.from(vms.map((v) => v.memoryBytes)),
    ...cls,
  };
  return sharingGraphOf(p, vms, opts);
}

type GraphInput = Pick<
  PlacementProblem,
  'vmCount' | 'vmNames' | 'memory' | 'classCount' | 'classWeight' | 'classOff' | 'classHolders' | 'vmOff' | 'vmClasses'
>;

/** Estimated pair work of exact weights: sum over classes of degree^2. */
export function exactPairWork(p: Pick<PlacementProblem, 'classCount' | 'classOff'>): number {
  let work = 0;
  for (let c = 0; c < p.classCount; c++) {
    const d = p.classOff[c + 1]! - p.classOff[c]!;
    work += d * d;
  }
  return work;
}

export function sharingGraphOf(p: GraphInput, vms: readonly FleetVm[], opts: SharingGraphOptions = {}): SharingGraph {
  const N = p.vmCount;
  const method: GraphMethod =
    opts.method === 'exact' || opts.method === 'minhash'
      ? opts.method
      : exactPairWork(p) <= (opts.exactPairBudget ?? 3e8)
        ? 'exact'
        : 'minhash';
  const maxNb = opts.maxNeighbours ?? (N <= 256 ? N : 32);
  const graph = new UndirectedGraph<SharingNodeAttributes, SharingEdgeAttributes>();
  for (let v = 0; v < N; v++) graph.addNode(p.vmNames[v]!, { index: v, memoryBytes: p.memory[v]! });
  let dropped = 0;
  const row = new Float64Array(N);
  const touched = new Int32Array(N);
  const topIdx = new Int32Array(Math.max(1, maxNb));
  const topW = new Float64Array(Math.max(1, maxNb));
  /** Keep v's strongest `maxNb` edges among `cands` (weights in row). */
  const keep = (v: number, cands: ArrayLike<number>, n: number): void => {
    let m = 0;
    for (let i = 0; i < n; i++) {
      const u = cands[i]!;
      const w = row[u]!;
      if (m === maxNb && !(w > topW[m - 1]! || (w === topW[m - 1] && u < topIdx[m - 1]!))) continue;
      // Insertion into the descending top list.
      let j = m < maxNb ? m++ : m - 1;
      while (j > 0 && (topW[j - 1]! < w || (topW[j - 1] === w && topIdx[j - 1]! > u))) {
        topW[j] = topW[j - 1]!;
        topIdx[j] = topIdx[j - 1]!;
        j--;
      }
      topW[j] = w;
      topIdx[j] = u;
    }
    dropped += n - m;
    const vn = p.vmNames[v]!;
    for (let i = 0; i < m; i++) {
      const un = p.vmNames[topIdx[i]!]!;
      if (!graph.hasEdge(vn, un)) graph.addEdge(vn, un, { weight: topW[i]! });
    }
  };

  if (method === 'exact') {
    const { classOff, classHolders, classWeight, vmOff, vmClasses } = p;
    for (let v = 0; v < N; v++) {
      let nt = 0;
      for (let k = vmOff[v]!; k < vmOff[v + 1]!; k++) {
        const c = vmClasses[k]!;
        const w = classWeight[c]!;
        for (let h = classOff[c]!; h < classOff[c + 1]!; h++) {
          const u = classHolders[h]!;
          if (u === v) continue;
          if (row[u] === 0) touched[nt++] = u;
          row[u]! += w;
        }
      }
      keep(v, touched, nt);
      for (let i = 0; i < nt; i++) row[touched[i]!] = 0;
    }
    return { graph, method, droppedEdges: dropped / 2 };
  }

  const k = opts.sketchSize ?? 128;
  const sketches = vms.map((vm) => binMinSketch(vm.contents, k, opts.seed ?? 0x5eed));
  const sizes = vms.map((vm) => vm.contents.length);
  // Symmetric pair estimates (dense N x N floats; N is a fleet, not a page count).
  const est = new Float32Array(N * N);
  for (let v = 0; v < N; v++)
    for (let u = v + 1; u < N; u++) {
      const x = estimateBinIntersection(sketches[v]!, sketches[u]!, sizes[v]!, sizes[u]!);
      est[v * N + u] = x;
      est[u * N + v] = x;
    }
  const cands = new Int32Array(N);
  for (let v = 0; v < N; v++) {
    let n = 0;
    for (let u = 0; u < N; u++) {
      const x = est[v * N + u]!;
      if (u === v || x < 0.5) continue;
      row[u] = Math.round(x);
      cands[n++] = u;
    }
    keep(v, cands, n);
    for (let i = 0; i < n; i++) row[cands[i]!] = 0;
  }
  return { graph, method, sketchSize: k, droppedEdges: dropped / 2 };
}

const EMPTY_BIN = 0xffffffff;

/**
 * One-permutation MinHash: each content's hash picks one of k bins (its top bits) and every bin
 * keeps its smallest remaining bits. Two sets agree on a non-empty bin with probability equal to
 * their Jaccard similarity. k must be a power of two.
 */
export function binMinSketch(contents: Uint32Array, k: number, seed: number): Uint32Array {
  if (k < 2 || (k & (k - 1)) !== 0) throw new RangeError(`sketch size must be a power of two >= 2, got ${k}`);
  const shift = 32 - Math.log2(k);
  const low = (2 ** shift - 1) >>> 0;
  const bins = new Uint32Array(k).fill(EMPTY_BIN);
  for (let i = 0; i < contents.length; i++) {
    const h = hash32(contents[i]!, seed);
    const b = h >>> shift;
    const x = (h & low) >>> 0;
    if (x < bins[b]!) bins[b] = x;
  }
  return bins;
}

/** Estimated |A n B| from two one-permutation sketches and the set sizes. */
export function estimateBinIntersection(a: Uint32Array, b: Uint32Array, na: number, nb: number): number {
  let same = 0;
  let differ = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x !== y) differ++;
    else if (x !== EMPTY_BIN) same++;
  }
  if (same === 0) return 0;
  const J = same / (same + differ);
  return (J * (na + nb)) / (1 + J);
}

function hash32(x: number, seed: number): number {
  let h = (x ^ seed) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}
