/**
 * The send order of multicast groups and when each target joins and leaves.
 *
 * Model. The sender works through `order` one group at a time. Groups go out on C channels
 * (multicast addresses), turn i on channel i mod C, so that while one group is sent the targets
 * of the next C-1 groups can already join theirs (joins take an IGMP round and are confirmed
 * before a turn starts). A target stays on a channel from one group to the next group on the same
 * channel when it needs both; it joins a channel after the previous group on it has finished and
 * before its group's turn, and leaves after the turn when the next group on that channel does not
 * include it. A target is therefore a member of at most C channels at once, and C is capped by
 * `maxGroupsPerReceiver` (Linux igmp_max_memberships, default 20).
 *
 * Cost. Joins + leaves = for each channel, |S_first| + sum |S_k xor S_k+1| + |S_last|: each channel
 * is a tour from the empty set through its groups and back, with Hamming distance between target
 * sets. The order is built by nearest neighbour over the channels in turn, then improved by 2-opt
 * within a channel and by exchanging two groups' turns, each scored exactly.
 *
 * The unordered baseline is the groups in id order with the same channel rule.
 */
import { ErrorCode, VmsError } from '../errors.js';
import { popcount32 } from './groups.js';
import type { MulticastGroup, PlanStep } from './types.js';

export interface ScheduleOptions {
  /** Channels (multicast addresses used in turn; default 4). */
  channels?: number;
  /** Groups a receiver may hold at once (default 20); caps the channels. */
  maxGroupsPerReceiver?: number;
}

/** A turn: group, channel, and who joins before / leaves after it (see PlanStep). */
export type ScheduleStep = PlanStep;

export interface Schedule {
  order: number[];
  channels: number;
  steps: ScheduleStep[];
  joins: number;
  leaves: number;
}

export const DEFAULT_CHANNELS = 4;
const NN_WINDOW = 256;
export const DEFAULT_MAX_GROUPS_PER_RECEIVER = 20;

export function channelCount(opts: ScheduleOptions, groups: number): number {
  const ch = opts.channels ?? DEFAULT_CHANNELS;
  const cap = opts.maxGroupsPerReceiver ?? DEFAULT_MAX_GROUPS_PER_RECEIVER;
  if (!Number.isInteger(ch) || ch < 1) throw new VmsError(ErrorCode.CONFIG, `channels must be an integer >= 1, got ${ch}`);
  if (!Number.isInteger(cap) || cap < 1)
    throw new VmsError(ErrorCode.CONFIG, `maxGroupsPerReceiver must be an integer >= 1, got ${cap}`);
  return Math.max(1, Math.min(ch, cap, groups));
}

class SetTable {
  readonly W: number;
  readonly bits: Uint32Array;
  /** Row G is the empty set. */
  constructor(groups: readonly MulticastGroup[], targetCount: number) {
    this.W = Math.max(1, Math.ceil(targetCount / 32));
    this.bits = new Uint32Array((groups.length + 1) * this.W);
    groups.forEach((g, i) => {
      for (const t of g.targets) this.bits[i * this.W + (t >>> 5)]! |= (1 << (t & 31)) >>> 0;
    });
  }
  dist(a: number, b: number): number {
    let n = 0;
    const W = this.W;
    for (let w = 0; w < W; w++) n += popcount32(this.bits[a * W + w]! ^ this.bits[b * W + w]!);
    return n;
  }
}

/** Steps, joins and leaves of a given order of (multicast) groups. */
export function scheduleInOrder(
  groups: readonly MulticastGroup[],
  order: readonly number[],
  channels: number,
): Schedule {
  const byId = new Map<number, MulticastGroup>();
  for (const g of groups) byId.set(g.id, g);
  const C = Math.max(1, Math.min(channels, order.length));
  const steps: ScheduleStep[] = [];
  let joins = 0;
  let leaves = 0;
  for (let i = 0; i < order.length; i++) {
    const g = byId.get(order[i]!);
    if (!g) throw new VmsError(ErrorCode.PLAN, `schedule names unknown group ${order[i]}`);
    const prev = i >= C ? new Set(byId.get(order[i - C]!)!.targets) : new Set<number>();
    const next = i + C < order.length ? new Set(byId.get(order[i + C]!)!.targets) : new Set<number>();
    const join = g.targets.filter((t) => !prev.has(t));
    const leave = g.targets.filter((t) => !next.has(t));
    joins += join.length;
    leaves += leave.length;
    steps.push({ group: g.id, channel: i % C, join, leave });
  }
  return { order: [...order], channels: C, steps, joins, leaves };
}

/**
 * Order the multicast groups (those with `multicast !== false`) to minimise joins + leaves.
 */
export function orderGroups(groups: readonly MulticastGroup[], targetCount: number, opts: ScheduleOptions = {}): Schedule {
  const mc = groups.filter((g) => g.multicast !== false);
  const G = mc.length;
  const C = channelCount(opts, G);
  if (G === 0) return { order: [], channels: C, steps: [], joins: 0, leaves: 0 };
  const sets = new SetTable(mc, targetCount);
  const EMPTY = G;
  const useMatrix = G <= 2048;
  const mat = useMatrix ? new Int32Array((G + 1) * (G + 1)) : null;
  if (mat)
    for (let a = 0; a <= G; a++)
      for (let b = a + 1; b <= G; b++) {
        const d = sets.dist(a, b);
        mat[a * (G + 1) + b] = d;
        mat[b * (G + 1) + a] = d;
      }
  const dist = mat ? (a: number, b: number) => mat[a * (G + 1) + b]! : (a: number, b: number) => sets.dist(a, b);

  // Nearest neighbour, channels in turn. With many groups, the candidates are the first
  // NN_WINDOW unscheduled groups in target-set order (quadratic otherwise).
  const window = G <= 2048 ? G : NN_WINDOW;
  const sorted = [...Array(G).keys()].sort((a, b) => {
    for (let w = sets.W - 1; w >= 0; w--) {
      const x = sets.bits[a * sets.W + w]!;
      const y = sets.bits[b * sets.W + w]!;
      if (x !== y) return x - y;
    }
    return a - b;
  });
  const pos: number[] = [];
  const cur = new Int32Array(C).fill(EMPTY);
  // Unscheduled groups as a linked list in sorted order.
  const next = new Int32Array(G + 1);
  const prev = new Int32Array(G + 1);
  const HEAD = G;
  let last = HEAD;
  for (const g of sorted) {
    next[last] = g;
    prev[g] = last;
    last = g;
  }
  next[last] = -1;
  for (let i = 0; i < G; i++) {
    const c = i % C;
    let best = -1;
    let bestD = Infinity;
    for (let g = next[HEAD]!, seen = 0; g >= 0 && seen < window; g = next[g]!, seen++) {
      const d = dist(cur[c]!, g);
      if (d < bestD) {
        bestD = d;
        best = g;
      }
    }
    next[prev[best]!] = next[best]!;
    if (next[best]! >= 0) prev[next[best]!] = prev[best]!;
    pos.push(best);
    cur[c] = best;
  }

  // Improvement. Position i's neighbours on its channel are i - C and i + C (EMPTY past the ends).
  const at = (i: number) => (i < 0 || i >= G ? EMPTY : pos[i]!);
  const around = (i: number, g: number) => dist(at(i - C), g) + dist(g, at(i + C));
  const maxPasses = G <= 512 ? 50 : G <= 2048 ? 5 : 2;
  // Moves between distant turns only for moderate sizes.
  const reach = G <= 2048 ? G : 64;
  for (let pass = 0; pass < maxPasses; pass++) {
    let improved = false;
    // 2-opt on each channel: reverse the run of that channel's positions from i to j.
    for (let i = 0; i < G; i++)
      for (let j = i + C; j < Math.min(G, i + reach); j += C) {
        const a = at(i - C);
        const b = at(j + C);
        const delta = dist(a, pos[j]!) + dist(pos[i]!, b) - dist(a, pos[i]!) - dist(pos[j]!, b);
        if (delta < 0) {
          for (let x = i, y = j; x < y; x += C, y -= C) {
            const t = pos[x]!;
            pos[x] = pos[y]!;
            pos[y] = t;
          }
          improved = true;
        }
      }
    // Exchange two turns (any channels).
    for (let i = 0; i < G; i++)
      for (let j = i + 1; j < Math.min(G, i + reach); j++) {
        const gi = pos[i]!;
        const gj = pos[j]!;
        let delta: number;
        if (j - i === C) {
          // Adjacent on one channel: only the outer edges change.
          delta = dist(at(i - C), gj) + dist(gi, at(j + C)) - dist(at(i - C), gi) - dist(gj, at(j + C));
        } else delta = around(i, gj) + around(j, gi) - around(i, gi) - around(j, gj);
        if (delta < 0) {
          pos[i] = gj;
          pos[j] = gi;
          improved = true;
        }
      }
    if (!improved) break;
  }
  const ordered = scheduleInOrder(mc, pos.map((g) => mc[g]!.id), C);
  // The heuristic is not guaranteed to beat id order; never do worse than it.
  const byId = unorderedSchedule(mc, { channels: C, maxGroupsPerReceiver: C });
  return byId.joins + byId.leaves < ordered.joins + ordered.leaves ? byId : ordered;
}

/** The unordered baseline: multicast groups by id, same channel rule. */
export function unorderedSchedule(groups: readonly MulticastGroup[], opts: ScheduleOptions = {}): Schedule {
  const mc = groups.filter((g) => g.multicast !== false).sort((a, b) => a.id - b.id);
  return scheduleInOrder(mc, mc.map((g) => g.id), channelCount(opts, mc.length));
}
