/**
 * `vmscatter evacuate --source HOST --targets A,B,C`: submits the evacuation to the coordinator,
 * follows its server-sent events with progress bars per phase and per VM, and prints the
 * summary. Ctrl-C cancels the job (every VM not switched over keeps running on the source); a
 * second Ctrl-C stops watching. --dry-run asks for the plan only.
 */
import type { EvacuationReport } from '../coordinator/evacuation.js';
import type { EvacuationEvent } from '../coordinator/events.js';
import type { JobView, PlanReply } from '../coordinator/schemas.js';
import { ErrorCode, VmsError } from '../errors.js';
import { ApiClient, type ClientFlags } from './client.js';
import { formatSummary } from './demo-command.js';
import { createProgressView } from './progress.js';

export interface EvacuateFlags extends ClientFlags {
  source: string;
  targets: string;
  vms?: string;
  parallel?: number;
  strategy?: 'graph' | 'greedy' | 'round-robin';
  verify?: boolean;
  dryRun?: boolean;
  detach?: boolean;
  json?: boolean;
}

export function splitList(s: string | undefined, what: string): string[] | undefined {
  if (s === undefined) return undefined;
  const items = s.split(',').map((x) => x.trim()).filter(Boolean);
  if (items.length === 0) throw new VmsError(ErrorCode.CONFIG, `${what} must be a comma-separated list, got "${s}"`);
  return items;
}

export async function evacuateCommand(flags: EvacuateFlags): Promise<void> {
  const client = ApiClient.fromFlags(flags);
  const vms = splitList(flags.vms, '--vms');
  const body = {
    source: flags.source,
    targets: splitList(flags.targets, '--targets')!,
    ...(vms ? { vms } : {}),
    ...(flags.parallel !== undefined ? { parallel: flags.parallel } : {}),
    ...(flags.strategy ? { strategy: flags.strategy } : {}),
    ...(flags.verify === false ? { verify: false } : {}),
  };
  if (flags.dryRun) {
    const plan = await client.plan(body);
    process.stdout.write(flags.json ? JSON.stringify(plan) + '\n' : formatPlan(plan));
    return;
  }
  const job = await client.evacuate(body);
  if (flags.detach) {
    process.stdout.write(flags.json ? JSON.stringify(job) + '\n' : `${job.id}\n`);
    return;
  }
  process.stderr.write(`job ${job.id}: ${job.vms.length} VMs from ${job.source} to ${job.targets.join(', ')} (coordinator ${client.baseUrl})\n`);
  const final = await watchJob(client, job.id, { json: flags.json === true });
  if (flags.json) process.stdout.write(JSON.stringify(final) + '\n');
  else process.stdout.write(formatJobEnd(final));
  if (final.state !== 'succeeded') process.exitCode = 1;
}

/**
 * Follow a job's events to its end with progress on stderr (bars on a terminal, lines otherwise;
 * --json only changes stdout); Ctrl-C cancels, a second one detaches.
 */
export async function watchJob(client: ApiClient, id: string, _o: { json: boolean }): Promise<JobView> {
  const view = createProgressView();
  const ac = new AbortController();
  let interrupts = 0;
  const onSigint = (): void => {
    interrupts++;
    if (interrupts === 1) {
      process.stderr.write(`\ncancelling job ${id}: VMs not switched over keep running on the source (Ctrl-C again to stop watching)\n`);
      client.cancel(id).catch((e: unknown) => process.stderr.write(`cancel failed: ${(e as Error).message}\n`));
    } else {
      process.stderr.write(`stopped watching; job ${id} goes on (vmscatter jobs ${id})\n`);
      ac.abort();
    }
  };
  process.on('SIGINT', onSigint);
  let first = true;
  try {
    await client.events(
      id,
      (ev) => {
        // A job's first event says it started (the caller has said so); the later ones say what
        // happened to it (a lost agent and its return, a cancel, the end).
        const start = first && ev.type === 'job' && (ev.data as { state: string }).state === 'running';
        first = false;
        if (ev.type === 'job') {
          const d = ev.data as { state: string; detail?: string };
          if (!start) process.stderr.write(`job ${id}: ${d.state}${d.detail ? ` (${d.detail})` : ''}\n`);
        } else view.onEvent(ev.data as EvacuationEvent);
      },
      {
        signal: ac.signal,
        onUnreachable: (err, forMs) =>
          process.stderr.write(`lost the coordinator (${err.message}); the job goes on without it; reconnecting for up to ${Math.round(forMs / 1000)} s\n`),
      },
    );
  } finally {
    view.stop();
    process.off('SIGINT', onSigint);
  }
  return client.job(id);
}

const MB = (b: number): string => (b / 1e6).toFixed(1);

export function formatJobEnd(job: JobView): string {
  let out = '';
  const report = job.report as EvacuationReport | undefined;
  if (report && Array.isArray(report.vms)) out += formatSummary(report);
  else {
    out += '\n';
    for (const v of job.vms) out += `  ${v.name.padEnd(20)} ${(v.target ?? '-').padEnd(12)} ${v.state}${v.detail ? ` (${v.detail})` : ''}\n`;
  }
  out += `job ${job.id} ${job.state}${job.detail ? `: ${job.detail}` : ''}\n`;
  return out;
}

export function formatPlan(p: PlanReply): string {
  const byTarget = new Map<string, string[]>();
  for (const [vm, t] of Object.entries(p.assignment)) byTarget.set(t, [...(byTarget.get(t) ?? []), vm]);
  let out = `plan (${p.strategy}) for ${p.vms.length} VMs from ${p.source}:\n`;
  for (const l of p.load) {
    out += `  ${l.target.padEnd(14)} ${String(l.vms).padStart(3)} VMs  ${MB(l.memoryBytes).padStart(9)} / ${MB(l.capacityBytes)} MB  ${(byTarget.get(l.target) ?? []).join(', ')}\n`;
  }
  const pr = p.predicted;
  const saved = pr.naiveSenderBytes > 0 ? (100 * (1 - pr.senderBytes / pr.naiveSenderBytes)).toFixed(1) : '0';
  out += `predicted: sender ${MB(pr.senderBytes)} MB (naive ${MB(pr.naiveSenderBytes)} MB, ${saved}% less), traffic ${MB(pr.trafficBytes)} MB (naive ${MB(pr.naiveTrafficBytes)} MB)\n`;
  out += `groups: ${p.groups} (${p.multicastGroups} multicast), joins ${pr.joins}, leaves ${pr.leaves}\n`;
  return out;
}
