/**
 * Plans to and from JSON. Content lists (Uint32Array) become plain arrays. Parsing validates the
 * whole structure and says where it is wrong: a plan file may be edited by hand or come from
 * another coordinator.
 */
import { ErrorCode, VmsError } from '../errors.js';
import type { MulticastGroup, Plan, PlanChannel, PlanStep, PlanTargetLoad } from './types.js';

export const PLAN_FORMAT = 'vmscatter-plan';
export const PLAN_VERSION = 1;

/** The plan as a JSON-ready object (contents as arrays), with format and version. */
export function planToJson(plan: Plan): Record<string, unknown> {
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    ...plan,
    groups: plan.groups.map((g) => ({ ...g, contents: Array.from(g.contents) })),
  };
}

export function serializePlan(plan: Plan, indent?: number): string {
  return JSON.stringify(planToJson(plan), null, indent);
}

function bad(path: string, expected: string, got: unknown): VmsError {
  let s: string;
  try {
    s = JSON.stringify(got) ?? String(got);
  } catch {
    s = String(got);
  }
  if (s.length > 60) s = `${s.slice(0, 60)}...`;
  return new VmsError(ErrorCode.CONFIG, `plan ${path}: expected ${expected}, got ${s}`);
}

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function nat(x: unknown, path: string, below?: number): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || (below !== undefined && x >= below))
    throw bad(path, below !== undefined ? `an integer in [0, ${below})` : 'a non-negative integer', x);
  return x;
}

function nonNeg(x: unknown, path: string): number {
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) throw bad(path, 'a non-negative number', x);
  return x;
}

function targetList(x: unknown, path: string, T: number, ascending: boolean): number[] {
  if (!Array.isArray(x)) throw bad(path, 'an array of target indices', x);
  const out = x.map((t, i) => nat(t, `${path}[${i}]`, T));
  if (ascending) for (let i = 1; i < out.length; i++) if (out[i]! <= out[i - 1]!) throw bad(`${path}[${i}]`, `a target index above ${out[i - 1]} (ascending, distinct)`, out[i]);
  return out;
}

/** Parse and validate a serialized plan (JSON text or the parsed value). */
export function parsePlan(input: string | unknown): Plan {
  let doc: unknown = input;
  if (typeof input === 'string') {
    try {
      doc = JSON.parse(input);
    } catch (e) {
      throw new VmsError(ErrorCode.CONFIG, `plan is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }
  if (!isObj(doc)) throw bad('(top level)', 'an object', doc);
  if (doc.format !== PLAN_FORMAT) throw bad('format', `"${PLAN_FORMAT}"`, doc.format);
  if (doc.version !== PLAN_VERSION) throw bad('version', `${PLAN_VERSION} (this build reads version ${PLAN_VERSION} only)`, doc.version);

  if (!Array.isArray(doc.targets) || doc.targets.some((t) => typeof t !== 'string' || t === ''))
    throw bad('targets', 'an array of target names', doc.targets);
  const targets = doc.targets as string[];
  if (new Set(targets).size !== targets.length) throw bad('targets', 'distinct names', targets);
  const T = targets.length;

  if (!isObj(doc.assignment)) throw bad('assignment', 'an object { vmName: targetIndex }', doc.assignment);
  const assignment: Record<string, number> = {};
  for (const [name, t] of Object.entries(doc.assignment)) assignment[name] = nat(t, `assignment.${name}`, T);

  if (!Array.isArray(doc.groups)) throw bad('groups', 'an array', doc.groups);
  const groups: MulticastGroup[] = doc.groups.map((g, i) => {
    const path = `groups[${i}]`;
    if (!isObj(g)) throw bad(path, 'an object', g);
    if (g.id !== i) throw bad(`${path}.id`, `${i} (ids are dense and in array order)`, g.id);
    const tl = targetList(g.targets, `${path}.targets`, T, true);
    if (tl.length === 0) throw bad(`${path}.targets`, 'at least one target', g.targets);
    if (!Array.isArray(g.contents)) throw bad(`${path}.contents`, 'an array of content ids', g.contents);
    const contents = new Uint32Array(g.contents.length);
    for (let j = 0; j < g.contents.length; j++) {
      const c = g.contents[j];
      if (typeof c !== 'number' || !Number.isInteger(c) || c < 0 || c > 0xffffffff) throw bad(`${path}.contents[${j}]`, 'a 32-bit content id', c);
      if (j > 0 && c <= contents[j - 1]!) throw bad(`${path}.contents[${j}]`, `an id above ${contents[j - 1]} (ascending, distinct)`, c);
      contents[j] = c;
    }
    const out: MulticastGroup = { id: i, targets: tl, contents };
    if (g.multicast !== undefined) {
      if (typeof g.multicast !== 'boolean') throw bad(`${path}.multicast`, 'a boolean', g.multicast);
      out.multicast = g.multicast;
    }
    if (g.channel !== undefined) out.channel = nat(g.channel, `${path}.channel`);
    if (g.address !== undefined) {
      if (typeof g.address !== 'string') throw bad(`${path}.address`, 'a string', g.address);
      out.address = g.address;
    }
    return out;
  });
  // A content belongs to one group only.
  const seen = new Map<number, number>();
  for (const g of groups)
    for (const c of g.contents) {
      const other = seen.get(c);
      if (other !== undefined) throw bad(`groups[${g.id}].contents`, `content ${c} in one group only (also in group ${other})`, c);
      seen.set(c, g.id);
    }

  if (!Array.isArray(doc.order)) throw bad('order', 'an array of group ids', doc.order);
  const order = doc.order.map((g, i) => nat(g, `order[${i}]`, groups.length));
  const inOrder = new Set(order);
  if (inOrder.size !== order.length) throw bad('order', 'each group at most once', doc.order);
  for (const g of groups) {
    const mc = g.multicast !== false;
    if (mc && !inOrder.has(g.id)) throw bad('order', `every multicast group, including group ${g.id}`, doc.order);
    if (!mc && inOrder.has(g.id)) throw bad('order', `no group with multicast: false (group ${g.id})`, doc.order);
  }

  if (!isObj(doc.predicted)) throw bad('predicted', 'an object', doc.predicted);
  const pr = doc.predicted;
  const predicted: Plan['predicted'] = {
    senderBytes: nonNeg(pr.senderBytes, 'predicted.senderBytes'),
    trafficBytes: nonNeg(pr.trafficBytes, 'predicted.trafficBytes'),
    naiveSenderBytes: nonNeg(pr.naiveSenderBytes, 'predicted.naiveSenderBytes'),
    naiveTrafficBytes: nonNeg(pr.naiveTrafficBytes, 'predicted.naiveTrafficBytes'),
    joins: nat(pr.joins, 'predicted.joins'),
    leaves: nat(pr.leaves, 'predicted.leaves'),
  };
  for (const k of ['unorderedJoins', 'unorderedLeaves'] as const) if (pr[k] !== undefined) predicted[k] = nat(pr[k], `predicted.${k}`);
  for (const k of ['multicastSenderBytes', 'placementTrafficBytes', 'mergeExtraTrafficBytes', 'unicastExtraTrafficBytes', 'greedyTrafficBytes'] as const)
    if (pr[k] !== undefined) predicted[k] = nonNeg(pr[k], `predicted.${k}`);

  const plan: Plan = { targets, assignment, groups, order, predicted };

  if (doc.channels !== undefined) {
    if (!Array.isArray(doc.channels)) throw bad('channels', 'an array', doc.channels);
    plan.channels = doc.channels.map((c, i): PlanChannel => {
      if (!isObj(c) || c.id !== i) throw bad(`channels[${i}]`, `{ id: ${i}, address? }`, c);
      if (c.address !== undefined && typeof c.address !== 'string') throw bad(`channels[${i}].address`, 'a string', c.address);
      return typeof c.address === 'string' ? { id: i, address: c.address } : { id: i };
    });
  }
  if (doc.steps !== undefined) {
    if (!Array.isArray(doc.steps)) throw bad('steps', 'an array', doc.steps);
    if (doc.steps.length !== order.length) throw bad('steps', `one step per entry of order (${order.length})`, doc.steps.length);
    const C = plan.channels?.length;
    plan.steps = doc.steps.map((s, i): PlanStep => {
      const path = `steps[${i}]`;
      if (!isObj(s)) throw bad(path, 'an object', s);
      if (s.group !== order[i]) throw bad(`${path}.group`, `${order[i]} (the group at order[${i}])`, s.group);
      return {
        group: order[i]!,
        channel: nat(s.channel, `${path}.channel`, C),
        join: targetList(s.join, `${path}.join`, T, true),
        leave: targetList(s.leave, `${path}.leave`, T, true),
      };
    });
  }
  if (doc.load !== undefined) {
    if (!Array.isArray(doc.load) || doc.load.length !== T) throw bad('load', `an array of ${T} entries`, doc.load);
    plan.load = doc.load.map((l, i): PlanTargetLoad => {
      if (!isObj(l)) throw bad(`load[${i}]`, 'an object', l);
      return {
        vms: nat(l.vms, `load[${i}].vms`),
        memoryBytes: nonNeg(l.memoryBytes, `load[${i}].memoryBytes`),
        capacityBytes: nonNeg(l.capacityBytes, `load[${i}].capacityBytes`),
      };
    });
  }
  if (doc.info !== undefined) {
    const info = doc.info;
    if (!isObj(info)) throw bad('info', 'an object', info);
    if (info.placement !== 'graph' && info.placement !== 'greedy' && info.placement !== 'exhaustive')
      throw bad('info.placement', '"graph", "greedy" or "exhaustive"', info.placement);
    if (info.graphMethod !== undefined && info.graphMethod !== 'exact' && info.graphMethod !== 'minhash')
      throw bad('info.graphMethod', '"exact" or "minhash"', info.graphMethod);
    plan.info = {
      placement: info.placement,
      ...(info.graphMethod !== undefined ? { graphMethod: info.graphMethod } : {}),
      multicastGroups: nat(info.multicastGroups, 'info.multicastGroups'),
      multicastGroupsBeforeCap: nat(info.multicastGroupsBeforeCap, 'info.multicastGroupsBeforeCap'),
      maxGroups: nat(info.maxGroups, 'info.maxGroups'),
      minTargetsForScatter: nat(info.minTargetsForScatter, 'info.minTargetsForScatter'),
      maxGroupsPerReceiver: nat(info.maxGroupsPerReceiver, 'info.maxGroupsPerReceiver'),
    };
  }
  return plan;
}
