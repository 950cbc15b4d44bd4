/**
 * `vmscatter jobs [JOB]`, `vmscatter cancel JOB`, `vmscatter agents`: what the coordinator knows,
 * as tables for people or JSON for scripts.
 */
import type { AgentView, JobView } from '../coordinator/schemas.js';
import { MOVED_STATES } from '../coordinator/events.js';
import { ApiClient, type ClientFlags } from './client.js';
import { formatJobEnd, watchJob } from './evacuate-command.js';

export interface JobsFlags extends ClientFlags {
  state?: string;
  limit?: number;
  json?: boolean;
  watch?: boolean;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n';
  return line(head) + line(widths.map((w) => '-'.repeat(w))) + rows.map(line).join('');
}

const moved = (j: JobView): string => `${j.vms.filter((v) => MOVED_STATES.has(v.state)).length}/${j.vms.length}`;

export async function jobsCommand(id: string | undefined, flags: JobsFlags): Promise<void> {
  const client = ApiClient.fromFlags(flags);
  if (id) {
    if (flags.watch) {
      const j = await watchJob(client, id, { json: flags.json === true });
      process.stdout.write(flags.json ? JSON.stringify(j) + '\n' : formatJobEnd(j));
      return;
    }
    const j = await client.job(id);
    if (flags.json) {
      process.stdout.write(JSON.stringify(j) + '\n');
      return;
    }
    let out = `job ${j.id} (${j.kind}) ${j.state}: ${j.source} -> ${j.targets.join(', ')}, created ${j.createdAt}${j.endedAt ? `, ended ${j.endedAt}` : ''}\n`;
    if (j.phase) out += `phase: ${j.phase}; ${Object.entries(j.phases).map(([k, v]) => `${k} ${v.state}${v.ms !== undefined ? ` ${Math.round(v.ms)} ms` : ''}`).join(', ')}\n`;
    if (j.error) out += `error: ${j.error.message} [${j.error.code}]\n`;
    out += table(
      ['vm', 'target', 'state', 'progress', 'detail'],
      j.vms.map((v) => [v.name, v.target ?? '-', v.state, v.progress && v.state === 'migrating' ? `${Math.round((100 * v.progress.done) / Math.max(1, v.progress.total))}%` : '', v.detail ?? '']),
    );
    if (j.report) out += formatJobEnd(j);
    process.stdout.write(out);
    return;
  }
  const { jobs } = await client.jobs({ ...(flags.state ? { state: flags.state } : {}), ...(flags.limit ? { limit: flags.limit } : {}) });
  if (flags.json) {
    process.stdout.write(JSON.stringify(jobs) + '\n');
    return;
  }
  if (jobs.length === 0) {
    process.stdout.write(`no jobs at ${client.baseUrl}\n`);
    return;
  }
  process.stdout.write(
    table(
      ['job', 'kind', 'state', 'source', 'targets', 'moved', 'phase', 'created'],
      jobs.map((j) => [j.id, j.kind, j.state, j.source, j.targets.join(','), moved(j), j.phase ?? '-', j.createdAt]),
    ),
  );
}

export async function cancelCommand(id: string, flags: ClientFlags & { json?: boolean; wait?: boolean }): Promise<void> {
  const client = ApiClient.fromFlags(flags);
  const j = await client.cancel(id);
  if (flags.wait) {
    const end = await watchJob(client, id, { json: flags.json === true });
    process.stdout.write(flags.json ? JSON.stringify(end) + '\n' : formatJobEnd(end));
    return;
  }
  process.stdout.write(flags.json ? JSON.stringify(j) + '\n' : `job ${j.id}: ${j.state}; VMs not switched over keep running on ${j.source}\n`);
}

export async function agentsCommand(flags: ClientFlags & { json?: boolean }): Promise<void> {
  const client = ApiClient.fromFlags(flags);
  const { agents } = await client.agents();
  if (flags.json) {
    process.stdout.write(JSON.stringify(agents) + '\n');
    return;
  }
  if (agents.length === 0) {
    process.stdout.write(`no agents have registered with ${client.baseUrl}\n`);
    return;
  }
  const cap = (a: AgentView): string => (a.role === 'target' ? `${((a.usedBytes ?? 0) / 2 ** 20).toFixed(0)}/${((a.capacityBytes ?? 0) / 2 ** 20).toFixed(0)} MiB` : '');
  process.stdout.write(
    table(
      ['agent', 'role', 'hosts', 'state', 'control URL', 'VMs', 'memory', 'slots out/in', 'last seen'],
      agents.map((a) => [a.name, a.role, a.fleet ?? 'sim', a.state, a.controlUrl, String(a.vms?.filter((v) => v.state !== 'migrated').length ?? 0), cap(a), `${a.slots.outgoing}/${a.slots.incoming}`, a.lastSeenAt]),
    ),
  );
}
