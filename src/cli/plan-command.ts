/**
 * `vmscatter plan [FILE]`: a dry run. Reads a fleet description (src/plan/fleet.ts), makes the
 * plan and prints the assignment, groups, schedule and predicted bytes against plain per-VM
 * migration, or the plan itself as JSON. Without a file it plans an embedded fleet of 8 VMs on
 * 4 targets.
 */
import { writeFile } from 'node:fs/promises';
import { ErrorCode, VmsError } from '../errors.js';
import { defaultFleet, loadFleet, type FleetDescription } from '../plan/fleet.js';
import { formatBytes } from '../plan/objective.js';
import { makePlan, type PlacementAlgorithm, type PlanOptions } from '../plan/plan.js';
import { serializePlan } from '../plan/serialize.js';
import type { Plan } from '../plan/types.js';

export interface PlanCommandOptions {
  /** Fleet description (JSON); the embedded default fleet when absent. */
  file?: string;
  /** Print the plan as JSON (the format `parsePlan` reads) instead of the summary. */
  json: boolean;
  /** Also write the plan as JSON to this file. */
  out?: string;
  /** Overrides of the file's options. */
  placement?: PlacementAlgorithm;
  maxGroups?: number;
  maxGroupsPerReceiver?: number;
  minTargetsForScatter?: number;
  channels?: number;
  seed?: number;
  /** Print every VM's target (default: only when the fleet has at most 64 VMs). */
  vms?: boolean;
}

export async function planCommand(opts: PlanCommandOptions): Promise<void> {
  const fleet = opts.file ? await loadFleet(opts.file) : defaultFleet();
  const options: PlanOptions = { ...fleet.options };
  if (opts.placement !== undefined) options.placement = opts.placement;
  for (const k of ['maxGroups', 'maxGroupsPerReceiver', 'minTargetsForScatter', 'channels', 'seed'] as const) {
    const v = opts[k];
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v < (k === 'seed' ? 0 : 1)) throw new VmsError(ErrorCode.CONFIG, `--${k} must be an integer >= ${k === 'seed' ? 0 : 1}, got ${v}`);
    options[k] = v;
  }
  const plan = makePlan(fleet.vms, fleet.targets, fleet.constraints, options);
  if (opts.out) await writeFile(opts.out, serializePlan(plan) + '\n');
  if (opts.json) {
    process.stdout.write(serializePlan(plan) + '\n');
    return;
  }
  process.stdout.write(formatPlanSummary(plan, fleet, { source: opts.file ?? 'embedded default fleet', vms: opts.vms ?? fleet.vms.length <= 64 }));
}

function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows
    .map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd())
    .join('\n');
}

/** The readable summary printed by `vmscatter plan`. */
export function formatPlanSummary(plan: Plan, fleet: FleetDescription, opts: { source: string; vms: boolean }): string {
  const out: string[] = [];
  const info = plan.info;
  const pr = plan.predicted;
  const synthetic = fleet.synthetic ? ` (synthetic, profile ${fleet.synthetic.profile ?? 'measured'}, seed ${fleet.synthetic.seed ?? 1})` : '';
  out.push(`plan for ${fleet.vms.length} VMs on ${plan.targets.length} targets: ${opts.source}${synthetic}`);
  if (info) out.push(`placement: ${info.placement}${info.graphMethod ? ` (sharing graph: ${info.graphMethod})` : ''}`);
  out.push('');
  const rows = [['target', 'VMs', 'memory', 'capacity', 'used']];
  plan.targets.forEach((name, t) => {
    const l = plan.load?.[t];
    if (!l) return;
    rows.push([name, String(l.vms), formatBytes(l.memoryBytes), formatBytes(l.capacityBytes), pct(l.memoryBytes, l.capacityBytes)]);
  });
  out.push(table(rows));
  if (opts.vms) {
    out.push('');
    const byName = new Map(fleet.vms.map((v) => [v.name, v]));
    const vmRows = [['VM', 'memory', 'non-zero pages', 'target']];
    for (const [name, t] of Object.entries(plan.assignment)) {
      const vm = byName.get(name);
      vmRows.push([name, vm ? formatBytes(vm.memoryBytes) : '?', vm ? String(vm.nonZeroPages) : '?', plan.targets[t] ?? String(t)]);
    }
    out.push(table(vmRows));
  }
  out.push('');
  const mc = plan.groups.filter((g) => g.multicast !== false);
  const single = plan.groups.length - mc.length;
  const capNote = info && info.multicastGroupsBeforeCap > mc.length ? `, merged from ${info.multicastGroupsBeforeCap} (cap ${info.maxGroups})` : '';
  out.push(`multicast groups: ${mc.length}${capNote}; contents for one target only: ${single} groups, sent by the converge stream`);
  const unordered = (pr.unorderedJoins ?? 0) + (pr.unorderedLeaves ?? 0);
  out.push(
    `schedule: ${plan.order.length} turns on ${plan.channels?.length ?? 1} channels; joins ${pr.joins} + leaves ${pr.leaves} = ${pr.joins + pr.leaves}` +
      (pr.unorderedJoins !== undefined ? ` (groups in id order: ${unordered})` : ''),
  );
  out.push('');
  const pred = [
    ['predicted bytes', 'this plan', 'plain migration', 'saved'],
    ['sender link', formatBytes(pr.senderBytes), formatBytes(pr.naiveSenderBytes), pct(pr.naiveSenderBytes - pr.senderBytes, pr.naiveSenderBytes)],
    ['traffic (sender + targets)', formatBytes(pr.trafficBytes), formatBytes(pr.naiveTrafficBytes), pct(pr.naiveTrafficBytes - pr.trafficBytes, pr.naiveTrafficBytes)],
  ];
  out.push(table(pred));
  if (pr.greedyTrafficBytes !== undefined && info?.placement !== 'greedy')
    out.push(
      `VMScatter's greedy placement would give ${formatBytes(pr.greedyTrafficBytes)} of traffic; this plan ${pct(pr.greedyTrafficBytes - (pr.placementTrafficBytes ?? pr.trafficBytes), pr.greedyTrafficBytes)} less`,
    );
  if (pr.mergeExtraTrafficBytes) out.push(`merging groups to the cap added ${formatBytes(pr.mergeExtraTrafficBytes)} of traffic`);
  return out.join('\n') + '\n';
}
