/**
 * Fallback multicast groups for the scatter when no planner output is at hand: every distinct
 * content goes to the group made of exactly the targets whose VMs hold it; groups are ordered
 * simply (more targets first, then larger groups, then by target set). The planner
 * (src/plan/) replaces both the grouping and the order.
 */
import { ErrorCode, VmsError } from '../errors.js';
import type { MulticastGroup } from '../plan/types.js';
import type { ScatterPlan } from './scatter-session.js';

/**
 * @param assignment VM name -> index into `targets`
 * @param vmContents VM name -> its distinct non-zero content ids
 * @param targets target names
 */
export function simpleGroups(
  assignment: Record<string, number>,
  vmContents: Record<string, Uint32Array> | Map<string, Uint32Array>,
  targets: readonly string[],
): ScatterPlan {
  const entries = vmContents instanceof Map ? [...vmContents.entries()] : Object.entries(vmContents);
  let maxId = -1;
  for (const [vm, ids] of entries) {
    const t = assignment[vm];
    if (t === undefined || !Number.isInteger(t) || t < 0 || t >= targets.length) {
      throw new VmsError(ErrorCode.CONFIG, `VM "${vm}" has no valid target in the assignment (got ${String(t)}, ${targets.length} targets)`);
    }
    for (const id of ids) if (id > maxId) maxId = id;
  }
  // Target set of every content, as a list of 32-bit words (any number of targets).
  const words = Math.max(1, Math.ceil(targets.length / 32));
  const sets = new Uint32Array((maxId + 1) * words);
  for (const [vm, ids] of entries) {
    const t = assignment[vm]!;
    const w = t >>> 5;
    const bitv = 1 << (t & 31);
    for (const id of ids) sets[id * words + w]! |= bitv;
  }
  const byKey = new Map<string, { targets: number[]; ids: number[] }>();
  for (let id = 0; id <= maxId; id++) {
    let key = '';
    let any = false;
    for (let w = 0; w < words; w++) {
      const v = sets[id * words + w]!;
      if (v !== 0) any = true;
      key += v.toString(16).padStart(8, '0');
    }
    if (!any) continue;
    let g = byKey.get(key);
    if (!g) {
      const ts: number[] = [];
      for (let t = 0; t < targets.length; t++) if (sets[id * words + (t >>> 5)]! & (1 << (t & 31))) ts.push(t);
      g = { targets: ts, ids: [] };
      byKey.set(key, g);
    }
    g.ids.push(id);
  }
  const list = [...byKey.entries()].sort(([ka, a], [kb, b]) => b.targets.length - a.targets.length || b.ids.length - a.ids.length || (ka < kb ? -1 : ka > kb ? 1 : 0));
  const groups: MulticastGroup[] = list.map(([, g], i) => ({ id: i, targets: g.targets, contents: Uint32Array.from(g.ids) }));
  return { targets: [...targets], groups, order: groups.map((g) => g.id) };
}
