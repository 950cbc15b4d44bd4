/**
 * A small synthetic fleet for scatter tests: VMs on targets sharing contents in overlapping
 * patterns (all targets, pairs, single), so that simpleGroups makes several groups of
 * different sizes and target sets.
 */
import { simpleGroups } from '../../src/transport/simple-groups.js';
import type { ScatterPlan } from '../../src/transport/scatter-session.js';

export interface Fleet {
  plan: ScatterPlan;
  assignment: Record<string, number>;
  vmContents: Record<string, Uint32Array>;
  /** Per target: the distinct contents its VMs hold, ascending. */
  needs: Uint32Array[];
}

/** One VM per target, every VM holding the same `contents`: a single group of every target. */
export function sharedFleet(contents: number, targets = 4): Fleet {
  const names = Array.from({ length: targets }, (_, i) => `t${i}`);
  const all = Uint32Array.from({ length: contents }, (_, i) => i);
  const vmContents = Object.fromEntries(names.map((_, t) => [`vm${t}`, all]));
  const assignment = Object.fromEntries(names.map((_, t) => [`vm${t}`, t]));
  return { plan: simpleGroups(assignment, vmContents, names), assignment, vmContents, needs: names.map(() => all) };
}

export function makeFleet(contents: number, targets = 4, vmsPerTarget = 2, seed = 1): Fleet {
  const names = Array.from({ length: targets }, (_, i) => `t${i}`);
  const assignment: Record<string, number> = {};
  const vmContents: Record<string, Uint32Array> = {};
  let x = seed >>> 0 || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
  const vms = targets * vmsPerTarget;
  for (let v = 0; v < vms; v++) {
    const ids: number[] = [];
    for (let id = 0; id < contents; id++) {
      const band = id % 10;
      // 30% of contents on every VM (OS), 30% per pair of targets, the rest per VM.
      const hit = band < 3 ? true : band < 6 ? (id >> 4) % targets === v % targets || (id >> 4) % targets === (v + 1) % targets : rnd() < 1 / vms;
      if (hit) ids.push(id);
    }
    vmContents[`vm${v}`] = Uint32Array.from(ids);
    assignment[`vm${v}`] = v % targets;
  }
  const plan = simpleGroups(assignment, vmContents, names);
  const needs = names.map((_, t) => {
    const s = new Set<number>();
    for (const [vm, ti] of Object.entries(assignment)) if (ti === t) for (const id of vmContents[vm]!) s.add(id);
    return Uint32Array.from([...s].sort((a, b) => a - b));
  });
  return { plan, assignment, vmContents, needs };
}
