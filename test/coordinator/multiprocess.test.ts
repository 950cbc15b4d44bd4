/**
 * The control plane as separate processes on loopback, started through the real CLI
 * (`node --import tsx src/cli/main.ts coordinator|agent|evacuate ...`) and killed by pid:
 * a coordinator, three source agents with simulated VMs (s3 rate-limited so its jobs take
 * seconds) and three target agents.
 *  - two evacuations at once, one read through the API's event stream, one through the CLI,
 *    under per-host limits (at most 2 outgoing per source, 1 incoming per target);
 *  - cancel mid-converge: every source VM keeps running;
 *  - a target that stops answering (SIGSTOP) is found lost, its VM's job fails, the source runs;
 *  - a source that stops answering is lost, and its job waits for it: back, the job ends with
 *    what its run did;
 *  - the coordinator is killed mid-job and restarted: it re-attaches and the job's end is visible;
 *  - with a short grace (a coordinator of its own), a source that does not come back in time
 *    ends its job interrupted.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, cli, freePort, readSse, TOKEN, waitFor, type Proc, type SseMessage } from './harness.js';

const HEARTBEAT_MS = 500;
const LOST_AFTER_MS = 3000;
const TERMINAL = ['succeeded', 'failed', 'cancelled', 'interrupted'];

interface Job {
  id: string;
  state: string;
  vms: Array<{ name: string; state: string; target?: string; detail?: string; progress?: { done: number } }>;
  error?: { message: string };
  report?: { ok: boolean; vms: Array<{ name: string; verified: boolean }> };
}
interface Agent {
  name: string;
  role: string;
  state: string;
  controlUrl: string;
  vms?: Array<{ name: string; state: string }>;
  slots: { outgoing: number; incoming: number };
}

const procs: Proc[] = [];
let stateDir = '';
let url = '';
let port = 0;
let coordinator: Proc;
const killAll = (): void => {
  for (const p of procs) if (p.child.pid && p.child.exitCode === null && p.child.signalCode === null) process.kill(p.child.pid, 'SIGKILL');
};

function startCoordinator(): Proc {
  const p = cli('coordinator', [
    'coordinator',
    '--listen',
    `127.0.0.1:${port}`,
    '--state-dir',
    stateDir,
    '--heartbeat-ms',
    String(HEARTBEAT_MS),
    '--lost-after-ms',
    String(LOST_AFTER_MS),
    '--max-outgoing',
    '2',
    '--max-incoming',
    '1',
    '--source-grace-ms',
    '60000',
    '--log-level',
    'info',
  ]);
  procs.push(p);
  return p;
}

function startAgent(name: string, role: 'source' | 'target', extra: string[]): Proc {
  const p = cli(name, ['agent', '--role', role, '--name', name, '--listen', '127.0.0.1:0', '--coordinator', url, '--log-level', 'warn', ...extra]);
  procs.push(p);
  return p;
}

const job = async (id: string): Promise<Job> => (await api<Job>(url, `/v1/jobs/${id}`)).body;
const agentsNow = async (): Promise<Agent[]> => (await api<{ agents: Agent[] }>(url, '/v1/agents')).body.agents;
const jobEnd = (id: string, timeoutMs = 60_000): Promise<Job> => waitFor(`job ${id} to end`, async () => ((j) => (TERMINAL.includes(j.state) ? j : undefined))(await job(id)), timeoutMs, 200);
async function sourceVms(name: string): Promise<Array<{ name: string; state: string }>> {
  const a = (await agentsNow()).find((x) => x.name === name)!;
  const r = await fetch(`${a.controlUrl}/v1/vms`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return ((await r.json()) as { vms: Array<{ name: string; state: string }> }).vms;
}
const migrating = (id: string) =>
  waitFor(`a VM of ${id} to stream`, async () => (await job(id)).vms.some((v) => v.state === 'migrating' && (v.progress?.done ?? 0) > 0), 30_000, 50);

beforeAll(async () => {
  process.once('exit', killAll);
  stateDir = mkdtempSync(join(tmpdir(), 'vmscatter-mp-'));
  port = await freePort();
  coordinator = startCoordinator();
  url = (await coordinator.line(/listening on (http:\/\/\S+)/, 60_000))[1]!;
  const fast = (seed: number) => ['--fleet', `sim:vms=3,memoryMiB=32,dirtyPagesPerSec=300,workingSetPages=512,seed=${seed}`, '--max-bandwidth-mibps', '0'];
  const agents = [
    startAgent('s1', 'source', fast(1)),
    startAgent('s2', 'source', fast(50)),
    // About 11 MB of non-zero pages per VM at 3 MiB/s: ~4 s per VM.
    startAgent('s3', 'source', ['--fleet', 'sim:vms=4,memoryMiB=32,dirtyPagesPerSec=100,workingSetPages=256,seed=90', '--max-bandwidth-mibps', '3']),
    startAgent('t1', 'target', ['--capacity-mib', '1024']),
    startAgent('t2', 'target', ['--capacity-mib', '1024']),
    startAgent('t3', 'target', ['--capacity-mib', '1024']),
  ];
  await Promise.all(agents.map((a) => a.line(/listening on/, 60_000)));
  await waitFor('6 agents ready', async () => (await agentsNow()).filter((a) => a.state === 'ready').length === 6, 30_000);
}, 120_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill('SIGTERM')));
  process.off('exit', killAll);
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
}, 30_000);

describe('coordinator and agents as processes on loopback', () => {
  it('runs two evacuations at once within per-host limits; a client reads the event stream, another uses the CLI', async () => {
    const r = await api<Job>(url, '/v1/evacuations', { body: { source: 's1', targets: ['t1', 't2', 't3'] } });
    expect(r.status).toBe(202);
    const id = r.body.id;
    const msgs: SseMessage[] = [];
    const stream = readSse(`${url}/v1/jobs/${id}/events`, TOKEN, (m) => msgs.push(m));
    const viaCli = cli('evacuate-s2', ['evacuate', '--source', 's2', '--targets', 't1,t2,t3', '--coordinator', url, '--json']);
    procs.push(viaCli);
    // Watch the slots while both run.
    const max = { out: new Map<string, number>(), in: new Map<string, number>() };
    let watching = true;
    const watch = (async () => {
      while (watching) {
        for (const a of await agentsNow().catch(() => [])) {
          max.out.set(a.name, Math.max(max.out.get(a.name) ?? 0, a.slots.outgoing));
          max.in.set(a.name, Math.max(max.in.get(a.name) ?? 0, a.slots.incoming));
        }
        await new Promise((res) => setTimeout(res, 40));
      }
    })();
    const [events, code] = await Promise.all([stream, viaCli.exited]);
    watching = false;
    await watch;

    // The API client saw phases, per-VM states and progress, ending with the job's final state.
    const ends = events.filter((m) => m.event === 'phase' && m.data.state === 'end').map((m) => m.data.phase);
    expect(ends).toEqual(['collect', 'plan', 'scatter', 'converge', 'verify']);
    expect(events.some((m) => m.event === 'progress' && m.data.phase === 'converge')).toBe(true);
    expect(events.filter((m) => m.event === 'vm' && m.data.state === 'verified').map((m) => m.data.vm).sort()).toEqual(['s1-vm0', 's1-vm1', 's1-vm2']);
    // Three VMs, two outgoing slots: one waited for its turn.
    expect(events.some((m) => m.event === 'vm' && m.data.state === 'queued')).toBe(true);
    expect(events.at(-1)).toMatchObject({ event: 'job', data: { state: 'succeeded' } });
    expect((await job(id)).report?.ok).toBe(true);

    // The CLI's job succeeded too, and it printed the final job as JSON.
    expect(code, viaCli.stderr.join('')).toBe(0);
    const cliJob = JSON.parse(viaCli.stdout.at(-1)!) as Job;
    expect(cliJob).toMatchObject({ source: 's2', state: 'succeeded' });
    expect(cliJob.vms.every((v) => v.state === 'verified')).toBe(true);

    // Per-host limits held across both jobs.
    for (const s of ['s1', 's2']) expect(max.out.get(s) ?? 0).toBeLessThanOrEqual(2);
    for (const t of ['t1', 't2', 't3']) expect(max.in.get(t) ?? 0).toBeLessThanOrEqual(1);
    expect(Math.max(...max.in.values())).toBe(1);
    const after = await agentsNow();
    expect(after.every((a) => a.slots.outgoing === 0 && a.slots.incoming === 0)).toBe(true);
    expect((await sourceVms('s1')).every((v) => v.state === 'migrated')).toBe(true);
  }, 120_000);

  it('SIGHUP does not stop an agent (a source of QEMU guests reloads its guests file; this one says it has none)', async () => {
    const s1 = procs.find((p) => p.name === 's1')!;
    process.kill(s1.child.pid!, 'SIGHUP');
    await waitFor('s1 to answer SIGHUP', async () => s1.stderr.join('').includes('SIGHUP ignored (only a source agent of QEMU guests reloads its guests file)'), 10_000, 50);
    expect(s1.child.exitCode).toBeNull();
    expect((await sourceVms('s1')).length).toBe(3);
  });

  it('cancel mid-converge leaves every source VM running', async () => {
    const r = await api<Job>(url, '/v1/evacuations', { body: { source: 's3', targets: ['t1', 't2'], vms: ['s3-vm0', 's3-vm1', 's3-vm2'] } });
    expect(r.status).toBe(202);
    await migrating(r.body.id);
    const c = await api<Job>(url, `/v1/jobs/${r.body.id}`, { method: 'DELETE' });
    expect(c.status).toBe(202);
    const end = await jobEnd(r.body.id);
    expect(end.state).toBe('cancelled');
    expect(end.vms.every((v) => v.state === 'failed')).toBe(true);
    expect((await sourceVms('s3')).map((v) => v.state)).toEqual(['running', 'running', 'running', 'running']);
  }, 60_000);

  it('a target that stops answering is lost: its VM fails and keeps running on the source', async () => {
    const r = await api<Job>(url, '/v1/migrations', { body: { pairs: [{ vm: 's3-vm3', target: 't3' }] } });
    expect(r.status).toBe(202);
    await migrating(r.body.id);
    const t3 = procs.find((p) => p.name === 't3')!;
    process.kill(t3.child.pid!, 'SIGSTOP');
    try {
      const end = await jobEnd(r.body.id, LOST_AFTER_MS * 5);
      expect(end.state).toBe('failed');
      expect(end.vms[0]).toMatchObject({ name: 's3-vm3', state: 'failed' });
      expect(end.vms[0]!.detail).toMatch(/t3 lost/);
      expect((await agentsNow()).find((a) => a.name === 't3')?.state).toBe('lost');
      expect((await sourceVms('s3')).find((v) => v.name === 's3-vm3')?.state).toBe('running');
    } finally {
      await t3.kill('SIGKILL');
    }
  }, 60_000);

  it('a coordinator killed mid-job re-attaches after its restart; the job ends and stays visible', async () => {
    const r = await api<Job>(url, '/v1/evacuations', { body: { source: 's3', targets: ['t1', 't2'], vms: ['s3-vm0', 's3-vm1', 's3-vm2'] } });
    expect(r.status).toBe(202);
    const id = r.body.id;
    await migrating(id);
    await coordinator.kill('SIGKILL');
    coordinator = startCoordinator();
    await coordinator.line(/listening on/, 60_000);
    const end = await jobEnd(id, 90_000).catch(async (e: unknown) => {
      console.error('DEBUG job', JSON.stringify(await job(id).catch(() => null)));
      console.error('DEBUG coordinator', coordinator.stderr.join('').slice(-6000));
      console.error('DEBUG s3', procs.find((p) => p.name === 's3')!.stderr.join('').slice(-6000));
      throw e;
    });
    expect(end.state, JSON.stringify(end.error)).toBe('succeeded');
    expect(end.report?.vms.every((v) => v.verified)).toBe(true);
    const events = await readSse(`${url}/v1/jobs/${id}/events`, TOKEN);
    expect(events.some((m) => m.event === 'job' && /coordinator restarted/.test(String(m.data.detail)))).toBe(true);
    const listed = (await api<{ jobs: Job[] }>(url, '/v1/jobs')).body.jobs;
    expect(listed.find((j) => j.id === id)?.state).toBe('succeeded');
    // No VM was left stopped: the migrated ones run on their targets, the fourth on s3.
    expect((await sourceVms('s3')).map((v) => v.state)).toEqual(['migrated', 'migrated', 'migrated', 'running']);
    // Agents registered again with the new coordinator.
    await waitFor('agents back', async () => (await agentsNow()).filter((a) => a.state === 'ready').length >= 5, 20_000);
  }, 150_000);

  it('a source that stops answering is waited for; back, its job ends with what its run did', async () => {
    const r = await api<Job>(url, '/v1/migrations', { body: { pairs: [{ vm: 's3-vm3', target: 't1' }] } });
    expect(r.status).toBe(202);
    const id = r.body.id;
    await migrating(id);
    const s3 = procs.find((p) => p.name === 's3')!;
    process.kill(s3.child.pid!, 'SIGSTOP');
    try {
      await waitFor('s3 to be lost', async () => (await agentsNow()).find((a) => a.name === 's3')?.state === 'lost', LOST_AFTER_MS * 4, 100);
      // Its run goes on without the coordinator (here it is merely stopped): the job waits.
      await new Promise((res) => setTimeout(res, 500));
      expect((await job(id)).state).toBe('running');
    } finally {
      process.kill(s3.child.pid!, 'SIGCONT');
    }
    const end = await jobEnd(id, 60_000);
    expect(end.state, JSON.stringify(end.error)).toBe('succeeded');
    expect(end.vms[0]).toMatchObject({ name: 's3-vm3', target: 't1', state: 'verified' });
    expect((await sourceVms('s3')).find((v) => v.name === 's3-vm3')?.state).toBe('migrated');
    const details = (await readSse(`${url}/v1/jobs/${id}/events`, TOKEN)).filter((m) => m.event === 'job').map((m) => String(m.data.detail));
    expect(details).toContainEqual(expect.stringMatching(/^source agent s3 lost .*waiting up to 60 s for it to come back$/));
    expect(details).toContainEqual('source agent s3 is back: following its run again');
  }, 90_000);
});

describe('a coordinator with a short grace for lost sources', () => {
  const GRACE_MS = 1500;
  let url2 = '';
  let dir2 = '';

  beforeAll(async () => {
    dir2 = mkdtempSync(join(tmpdir(), 'vmscatter-mp-grace-'));
    const c = cli('coordinator-grace', [
      'coordinator',
      '--listen',
      `127.0.0.1:${await freePort()}`,
      '--state-dir',
      dir2,
      '--heartbeat-ms',
      String(HEARTBEAT_MS),
      '--lost-after-ms',
      String(LOST_AFTER_MS),
      '--source-grace-ms',
      String(GRACE_MS),
      '--log-level',
      'warn',
    ]);
    procs.push(c);
    url2 = (await c.line(/listening on (http:\/\/\S+)/, 60_000))[1]!;
    const agent = (name: string, role: string, extra: string[]): Proc => {
      const p = cli(name, ['agent', '--role', role, '--name', name, '--listen', '127.0.0.1:0', '--coordinator', url2, '--log-level', 'warn', ...extra]);
      procs.push(p);
      return p;
    };
    // About 11 MB of non-zero pages at 3 MiB/s: the VM streams for seconds.
    const agents = [
      agent('s4', 'source', ['--fleet', 'sim:vms=1,memoryMiB=32,dirtyPagesPerSec=100,workingSetPages=256,seed=120', '--max-bandwidth-mibps', '3']),
      agent('t4', 'target', ['--capacity-mib', '1024']),
    ];
    await Promise.all(agents.map((a) => a.line(/listening on/, 60_000)));
    await waitFor('s4 and t4 ready', async () => (await api<{ agents: Agent[] }>(url2, '/v1/agents')).body.agents.filter((a) => a.state === 'ready').length === 2, 30_000);
  }, 120_000);

  afterAll(() => {
    if (dir2) rmSync(dir2, { recursive: true, force: true });
  });

  it('a source that does not come back within the grace ends its job interrupted, saying what is unknown', async () => {
    const job2 = async (id: string): Promise<Job> => (await api<Job>(url2, `/v1/jobs/${id}`)).body;
    const r = await api<Job>(url2, '/v1/migrations', { body: { pairs: [{ vm: 's4-vm0', target: 't4' }] } });
    expect(r.status).toBe(202);
    const id = r.body.id;
    await waitFor(`a VM of ${id} to stream`, async () => (await job2(id)).vms.some((v) => v.state === 'migrating' && (v.progress?.done ?? 0) > 0), 30_000, 50);
    const s4 = procs.find((p) => p.name === 's4')!;
    process.kill(s4.child.pid!, 'SIGSTOP');
    try {
      // Lost after LOST_AFTER_MS, then the grace; the job follows its source every 2 s at most.
      const end = await waitFor(`job ${id} to end`, async () => ((j) => (TERMINAL.includes(j.state) ? j : undefined))(await job2(id)), LOST_AFTER_MS + GRACE_MS + 15_000, 200);
      expect(end.state).toBe('interrupted');
      expect(end.error?.message).toMatch(/^source agent s4 lost \(no heartbeat for 5 s\): what its run did since is unknown here/);
      const details = (await readSse(`${url2}/v1/jobs/${id}/events`, TOKEN)).filter((m) => m.event === 'job').map((m) => String(m.data.detail));
      expect(details).toContainEqual(expect.stringMatching(/^source agent s4 lost .*waiting up to 2 s for it to come back$/));
    } finally {
      process.kill(s4.child.pid!, 'SIGCONT');
    }
  }, 90_000);
});
