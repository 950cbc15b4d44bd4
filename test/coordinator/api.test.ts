/**
 * Every route of the coordinator's API and every error code, through fastify's inject(), with
 * real agents in this process (on loopback) behind them: a fast source, a slow source (so jobs
 * are still running when a second request or a cancel comes), and two targets.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig, type EvacuationConfig } from '../../src/config.js';
import { startAgent, type AgentHandle } from '../../src/agent/agent-main.js';
import { buildCoordinator, type CoordinatorApp } from '../../src/coordinator/server.js';
import { encodeContents } from '../../src/coordinator/fleet-wire.js';
import { parseSseText, TOKEN, waitFor, waitForJobEnd } from './harness.js';

const silent = pino({ level: process.env.VMSCATTER_TEST_LOG ?? 'silent' }, pino.destination(2));
const auth = { authorization: `Bearer ${TOKEN}` };
const LOST_AFTER_MS = 2000;

let app: CoordinatorApp;
const agents: AgentHandle[] = [];

function config(extra: Record<string, unknown>): EvacuationConfig {
  return resolveConfig({
    auth: { token: TOKEN },
    log: { level: 'silent' },
    coordinator: { stateDir: '', listen: '127.0.0.1:0', heartbeatIntervalMs: 200, agentLostAfterMs: LOST_AFTER_MS, maxOutgoingPerSource: 4, maxIncomingPerTarget: 4 },
    migration: { maxBandwidthMiBps: 0, maxRounds: 5 },
    ...extra,
  });
}

async function agent(role: 'source' | 'target', name: string, extra: Record<string, unknown> = {}): Promise<AgentHandle> {
  const base = config({});
  const cfg = config({
    agent: { role, name, listen: '127.0.0.1:0', dataListen: '127.0.0.1:0', capacityMiB: 512 },
    coordinator: { ...base.coordinator, url: app.coordinator.config.coordinator.url },
    fleet: { vms: 3, memoryMiB: 8, dirtyPagesPerSec: 200, workingSetPages: 256 },
    ...extra,
  });
  const a = await startAgent(cfg, { logger: silent });
  agents.push(a);
  return a;
}

const get = (url: string, headers: Record<string, string> = auth) => app.inject({ method: 'GET', url, headers });
const post = (url: string, payload: unknown, headers: Record<string, string> = auth) => app.inject({ method: 'POST', url, payload: payload as Record<string, unknown>, headers });
const del = (url: string) => app.inject({ method: 'DELETE', url, headers: auth });

const jobEnd = (id: string, timeoutMs = 30_000): Promise<Record<string, any>> => waitForJobEnd(get, id, timeoutMs);

beforeAll(async () => {
  app = await buildCoordinator({ config: config({}), logger: silent, slotWaitMs: 2000 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const a = app.server.address();
  app.coordinator.config.coordinator.url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  await Promise.all([
    agent('source', 'src1'),
    // ~2.7 MB of non-zero pages per VM at 0.25 MiB/s: ~10 s per VM, so its jobs are still
    // running when the next request comes, even on a loaded machine. They are cancelled.
    agent('source', 'slow', { migration: { maxBandwidthMiBps: 0.25, maxRounds: 5 }, fleet: { vms: 2, memoryMiB: 8, dirtyPagesPerSec: 50, workingSetPages: 64, seed: 100 } }),
    agent('target', 't1'),
    agent('target', 't2'),
  ]);
  await waitFor('4 agents registered', async () => (get('/v1/agents').then((r) => r.json().agents.length === 4)));
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.close()));
  await app?.close();
});

describe('authentication', () => {
  it('GET /healthz needs no token', async () => {
    const r = await get('/healthz', {});
    expect(r.statusCode).toBe(200);
    expect(r.json()).toMatchObject({ ok: true, role: 'coordinator' });
  });

  it.each([
    ['GET', '/v1/jobs'],
    ['GET', '/v1/agents'],
    ['GET', '/metrics'],
    ['GET', '/documentation/json'],
    ['POST', '/v1/evacuations'],
    ['DELETE', '/v1/jobs/j-x'],
    ['POST', '/v1/internal/jobs/j-x/slots'],
  ])('%s %s answers 401 without a token and with a wrong one', async (method, url) => {
    const none = await app.inject({ method: method as 'GET', url });
    expect(none.statusCode).toBe(401);
    expect(none.json()).toMatchObject({ statusCode: 401, code: 'VMS_ERR_UNAUTHORIZED' });
    expect(none.json().message).toMatch(/missing bearer token/);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    const wrong = await app.inject({ method: method as 'GET', url, headers: { authorization: 'Bearer not-the-token-at-all' } });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.json().message).toMatch(/wrong bearer token/);
  });
});

describe('documentation and operations', () => {
  it('serves the OpenAPI document at /documentation/json with every route and the bearer scheme', async () => {
    const r = await get('/documentation/json');
    expect(r.statusCode).toBe(200);
    const doc = r.json();
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const p of ['/healthz', '/metrics', '/v1/agents', '/v1/evacuations', '/v1/migrations', '/v1/plans', '/v1/jobs', '/v1/jobs/{id}', '/v1/jobs/{id}/events', '/v1/internal/jobs/{id}/plan'])
      expect(Object.keys(doc.paths)).toContain(p);
    // The TypeBox schemas document the bodies.
    const ev = doc.paths['/v1/evacuations'].post;
    expect(JSON.stringify(ev.requestBody)).toMatch(/"targets"/);
    expect(Object.keys(ev.responses)).toEqual(expect.arrayContaining(['202', '400', '401', '409', '422']));
    expect(doc.paths['/healthz'].get.security).toEqual([]);
  });

  it('serves the documentation UI', async () => {
    const r = await get('/documentation');
    expect(r.statusCode).toBe(200);
    expect(r.body).toMatch(/swagger/i);
  });

  it('answers unknown routes with a JSON 404', async () => {
    const r = await get('/v1/nope');
    expect(r.statusCode).toBe(404);
    expect(r.json()).toMatchObject({ code: 'VMS_ERR_NOT_FOUND' });
  });
});

describe('agents', () => {
  it('GET /v1/agents lists sources and targets with their VMs and capacity', async () => {
    const r = await get('/v1/agents');
    expect(r.statusCode).toBe(200);
    const byName = Object.fromEntries(r.json().agents.map((a: { name: string }) => [a.name, a]));
    expect(byName.src1).toMatchObject({ role: 'source', state: 'ready', static: false, slots: { outgoing: 0, incoming: 0 } });
    expect(byName.src1.vms.map((v: { name: string }) => v.name)).toEqual(['src1-vm0', 'src1-vm1', 'src1-vm2']);
    expect(byName.t1).toMatchObject({ role: 'target', state: 'ready', capacityBytes: 512 * 2 ** 20 });
    expect(byName.t1.data.port).toBeGreaterThan(0);
  });

  it('POST /v1/agents validates, registers, and refuses a name taken by the other role (409)', async () => {
    const bad = await post('/v1/agents', { name: 'x1', controlUrl: 'http://127.0.0.1:9' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toMatchObject({ code: 'FST_ERR_VALIDATION' });
    expect(bad.json().message).toMatch(/role/);
    const extra = await post('/v1/agents', { name: 'x1', role: 'target', controlUrl: 'http://127.0.0.1:9', bogus: 1 });
    expect(extra.statusCode).toBe(400);
    expect(extra.json().message).toMatch(/additional properties/);
    const ok = await post('/v1/agents', { name: 'ghost', role: 'target', controlUrl: 'http://127.0.0.1:9', data: { host: '127.0.0.1', port: 9 }, capacityBytes: 1 << 30 });
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toEqual({ heartbeatIntervalMs: 200, agentLostAfterMs: LOST_AFTER_MS });
    const clash = await post('/v1/agents', { name: 'src1', role: 'target', controlUrl: 'http://127.0.0.1:9' });
    expect(clash.statusCode).toBe(409);
    expect(clash.json().message).toMatch(/already registered as a source agent/);
  });

  it('PUT /v1/agents/:name/heartbeat: 204, 404 for an unknown agent, 400 for a bad body', async () => {
    expect((await app.inject({ method: 'PUT', url: '/v1/agents/ghost/heartbeat', payload: {}, headers: auth })).statusCode).toBe(204);
    const unknown = await app.inject({ method: 'PUT', url: '/v1/agents/nobody/heartbeat', payload: {}, headers: auth });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().message).toMatch(/register first/);
    const bad = await app.inject({ method: 'PUT', url: '/v1/agents/ghost/heartbeat', payload: { usedBytes: -1 }, headers: auth });
    expect(bad.statusCode).toBe(400);
  });

  it('marks an agent that stops reporting as lost, and refuses jobs that need it (422)', async () => {
    await waitFor('ghost lost', async () => (await get('/v1/agents')).json().agents.find((a: { name: string; state: string }) => a.name === 'ghost')?.state === 'lost', LOST_AFTER_MS * 4);
    const r = await post('/v1/evacuations', { source: 'src1', targets: ['ghost'] });
    expect(r.statusCode).toBe(422);
    expect(r.json()).toMatchObject({ code: 'VMS_ERR_AGENT' });
    expect(r.json().message).toMatch(/target agent ghost is lost/);
  });
});

describe('plans (dry run)', () => {
  it('POST /v1/plans places every VM and predicts bytes and traffic; nothing moves', async () => {
    const r = await post('/v1/plans', { source: 'src1', targets: ['t1', 't2'] });
    expect(r.statusCode).toBe(200);
    const p = r.json();
    expect(Object.keys(p.assignment).sort()).toEqual(['src1-vm0', 'src1-vm1', 'src1-vm2']);
    for (const t of Object.values(p.assignment)) expect(['t1', 't2']).toContain(t);
    expect(p.predicted.senderBytes).toBeGreaterThan(0);
    expect(p.predicted.trafficBytes).toBeGreaterThanOrEqual(p.predicted.senderBytes);
    expect(p.vms[0].distinctContents).toBeGreaterThan(0);
    expect(p.load.map((l: { target: string }) => l.target)).toEqual(['t1', 't2']);
    const vms = (await get('/v1/agents')).json().agents.find((a: { name: string }) => a.name === 'src1').vms;
    expect(vms.every((v: { state: string }) => v.state === 'running')).toBe(true);
  });

  it('400 with the schema message, 422 for unknown hosts', async () => {
    const bad = await post('/v1/plans', { source: 'src1' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().message).toBe("body must have required property 'targets'");
    const unknown = await post('/v1/plans', { source: 'nohost', targets: ['t1'] });
    expect(unknown.statusCode).toBe(422);
    expect(unknown.json().message).toMatch(/no source agent named nohost/);
  });
});

describe('evacuations and jobs', () => {
  let jobId = '';

  it('POST /v1/evacuations: 400 for malformed input with the schema message', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ targets: ['t1'] }, /required property 'source'/],
      [{ source: 'src1', targets: [] }, /targets must NOT have fewer than 1 items/],
      [{ source: 'src1', targets: ['t1', 't1'] }, /duplicate items/],
      [{ source: 'src1', targets: ['t1'], parallel: 0 }, /parallel must be >= 1/],
      [{ source: 'bad host!', targets: ['t1'] }, /source must match pattern/],
      [{ source: 'src1', targets: ['t1'], color: 'red' }, /additional properties/],
    ];
    for (const [body, re] of cases) {
      const r = await post('/v1/evacuations', body);
      expect(r.statusCode, JSON.stringify(body)).toBe(400);
      expect(r.json().message, JSON.stringify(body)).toMatch(re);
    }
    const notJson = await app.inject({ method: 'POST', url: '/v1/evacuations', payload: '{', headers: { ...auth, 'content-type': 'application/json' } });
    expect(notJson.statusCode).toBe(400);
  });

  it('POST /v1/evacuations: 422 for unknown hosts and VMs, 400 when the source is also a target', async () => {
    expect((await post('/v1/evacuations', { source: 't1', targets: ['t2'] })).json().message).toMatch(/t1 is a target agent, not a source agent/);
    expect((await post('/v1/evacuations', { source: 'src1', targets: ['t9'] })).statusCode).toBe(422);
    const vm = await post('/v1/evacuations', { source: 'src1', targets: ['t1'], vms: ['src1-vm7'] });
    expect(vm.statusCode).toBe(422);
    expect(vm.json().message).toMatch(/no VM named src1-vm7/);
  });

  it('POST /v1/evacuations: 422 when the targets receive another kind of VM than the source hosts', async () => {
    // A target for QEMU guests starts without QEMU: it only launches one per incoming guest. It
    // stays registered (closed with the others), so the agent counts later tests check hold.
    await agent('target', 'tq', { agent: { role: 'target', name: 'tq', listen: '127.0.0.1:0', dataListen: '127.0.0.1:0', fleet: 'qemu' } });
    await waitFor('tq registered', async () => (await get('/v1/agents')).json().agents.some((a: { name: string; fleet?: string }) => a.name === 'tq' && a.fleet === 'qemu'));
    const r = await post('/v1/evacuations', { source: 'src1', targets: ['t1', 'tq'] });
    expect(r.statusCode).toBe(422);
    expect(r.json().message).toMatch(/source agent src1 hosts simulated VMs, but target agent tq receives QEMU guests/);
  });

  it('POST /v1/evacuations: 202, the job runs to success, GET /v1/jobs/:id has its report', async () => {
    const r = await post('/v1/evacuations', { source: 'src1', targets: ['t1', 't2'], vms: ['src1-vm0', 'src1-vm1'] });
    expect(r.statusCode).toBe(202);
    const job = r.json();
    jobId = job.id;
    expect(r.headers.location).toBe(`/v1/jobs/${job.id}`);
    expect(job).toMatchObject({ kind: 'evacuation', state: 'running', source: 'src1', targets: ['t1', 't2'], verify: true });
    expect(job.vms.map((v: { name: string }) => v.name)).toEqual(['src1-vm0', 'src1-vm1']);
    const end = await jobEnd(job.id);
    expect(end.state).toBe('succeeded');
    expect(end.vms.every((v: { state: string }) => v.state === 'verified')).toBe(true);
    expect(end.report.ok).toBe(true);
    expect(end.report.bytes.converge).toBeGreaterThan(0);
    expect(end.phases.collect.state).toBe('done');
    expect(end.phases.converge.ms).toBeGreaterThan(0);
    expect(Object.keys(end.plan.assignment).sort()).toEqual(['src1-vm0', 'src1-vm1']);
    // The source agent reports them migrated; the third VM still runs there.
    await waitFor('src1 heartbeat with migrated VMs', async () => {
      const vms = (await get('/v1/agents')).json().agents.find((a: { name: string }) => a.name === 'src1').vms;
      return vms.filter((v: { state: string }) => v.state === 'migrated').length === 2 && vms.find((v: { name: string }) => v.name === 'src1-vm2').state === 'running';
    });
  });

  it('GET /v1/jobs/:id/events replays the job as server-sent events, from Last-Event-ID too', async () => {
    const r = await get(`/v1/jobs/${jobId}/events`);
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/event-stream/);
    const msgs = await parseSseText(r.body);
    const types = new Set(msgs.map((m) => m.event));
    expect([...types]).toEqual(expect.arrayContaining(['job', 'phase', 'progress', 'vm']));
    expect(msgs.map((m) => m.id)).toEqual([...msgs.map((m) => m.id)].sort((a, b) => a - b));
    const phases = msgs.filter((m) => m.event === 'phase' && m.data.state === 'end').map((m) => m.data.phase);
    expect(phases).toEqual(['collect', 'plan', 'scatter', 'converge', 'verify']);
    expect(msgs.filter((m) => m.event === 'vm' && m.data.state === 'verified').map((m) => m.data.vm).sort()).toEqual(['src1-vm0', 'src1-vm1']);
    const last = msgs.at(-1)!;
    expect(last).toMatchObject({ event: 'job', data: { state: 'succeeded' } });
    const tail = await parseSseText((await get(`/v1/jobs/${jobId}/events`, { ...auth, 'last-event-id': String(last.id - 2) })).body);
    expect(tail.map((m) => m.id)).toEqual([last.id - 1, last.id]);
    const after = await parseSseText((await get(`/v1/jobs/${jobId}/events?after=${last.id - 1}`)).body);
    expect(after.map((m) => m.id)).toEqual([last.id]);
  });

  it('409 when a VM was already migrated', async () => {
    const r = await post('/v1/evacuations', { source: 'src1', targets: ['t1'], vms: ['src1-vm0'] });
    expect(r.statusCode).toBe(409);
    expect(r.json()).toMatchObject({ code: 'VMS_ERR_CONFLICT' });
    expect(r.json().message).toMatch(/already migrated/);
  });

  it('409 when a VM is already in a running job; DELETE cancels and every source keeps running', async () => {
    // parallel 1: the second VM is still queued in the job when the cancel comes; it must not start.
    const first = await post('/v1/evacuations', { source: 'slow', targets: ['t1', 't2'], parallel: 1 });
    expect(first.statusCode).toBe(202);
    const id = first.json().id;
    const again = await post('/v1/evacuations', { source: 'slow', targets: ['t2'], vms: ['slow-vm1'] });
    expect(again.statusCode).toBe(409);
    expect(again.json().message).toMatch(new RegExp(`VM slow-vm1 is already in job ${id}`));
    const viaPairs = await post('/v1/migrations', { pairs: [{ vm: 'slow-vm0', target: 't1' }] });
    expect(viaPairs.statusCode).toBe(409);
    await waitFor('converge to start', async () => (await get(`/v1/jobs/${id}`)).json().vms.some((v: { state: string; progress?: { done: number } }) => v.state === 'migrating' && (v.progress?.done ?? 0) > 0));
    const c = await del(`/v1/jobs/${id}`);
    expect(c.statusCode).toBe(202);
    expect(c.json().state).toBe('cancelling');
    const end = await jobEnd(id);
    expect(end.state).toBe('cancelled');
    expect(end.vms.map((v: { state: string }) => v.state)).toEqual(['failed', 'failed']);
    const slow = agents.find((a) => a.name === 'slow')!;
    expect(slow.source!.listVms().map((v) => v.state)).toEqual(['running', 'running']);
    expect((await del(`/v1/jobs/${id}`)).statusCode).toBe(409);
    // The VMs are free again.
    expect((await post('/v1/plans', { source: 'slow', targets: ['t1'] })).statusCode).toBe(200);
  });

  it('GET /v1/jobs lists newest first and filters by state; 400 for a bad state', async () => {
    const all = (await get('/v1/jobs')).json().jobs;
    expect(all.length).toBeGreaterThanOrEqual(2);
    expect(all[0].createdAt >= all[1].createdAt).toBe(true);
    expect(all[0].report).toBeUndefined();
    const ok = (await get('/v1/jobs?state=succeeded')).json().jobs;
    expect(ok.map((j: { id: string }) => j.id)).toContain(jobId);
    expect(ok.every((j: { state: string }) => j.state === 'succeeded')).toBe(true);
    expect((await get('/v1/jobs?limit=1')).json().jobs).toHaveLength(1);
    const bad = await get('/v1/jobs?state=bogus');
    expect(bad.statusCode).toBe(400);
    expect(bad.json().message).toMatch(/querystring\/state/);
  });

  it('404 for unknown jobs, 400 for malformed ids', async () => {
    for (const r of [await get('/v1/jobs/j-nope'), await get('/v1/jobs/j-nope/events'), await del('/v1/jobs/j-nope')]) {
      expect(r.statusCode).toBe(404);
      expect(r.json()).toMatchObject({ code: 'VMS_ERR_NOT_FOUND' });
      expect(r.json().message).toMatch(/no job j-nope/);
    }
    expect((await get('/v1/jobs/bad%20id!')).statusCode).toBe(400);
  });
});

describe('batch migrations', () => {
  it('POST /v1/migrations: 400 unless pairs or vms+targets, 422 for unknown VMs', async () => {
    expect((await post('/v1/migrations', { vms: ['src1-vm2'] })).json().message).toMatch(/give pairs/);
    expect((await post('/v1/migrations', { pairs: [{ vm: 'src1-vm2', target: 't1' }], targets: ['t2'] })).json().message).toMatch(/not both/);
    const dup = await post('/v1/migrations', { pairs: [{ vm: 'src1-vm2', target: 't1' }, { vm: 'src1-vm2', target: 't2' }] });
    expect(dup.statusCode).toBe(400);
    expect(dup.json().message).toMatch(/appears twice/);
    const unknown = await post('/v1/migrations', { vms: ['nobody-vm0'], targets: ['t1'] });
    expect(unknown.statusCode).toBe(422);
    expect(unknown.json().message).toMatch(/no registered source host reports VM nobody-vm0/);
    const spans = await post('/v1/migrations', { vms: ['src1-vm2', 'slow-vm0'], targets: ['t1'] });
    expect(spans.statusCode).toBe(422);
    expect(spans.json().message).toMatch(/spans source hosts/);
  });

  it('POST /v1/migrations with pairs puts each VM where it was told (source found by VM name)', async () => {
    const r = await post('/v1/migrations', { pairs: [{ vm: 'src1-vm2', target: 't2' }], strategy: 'round-robin' });
    expect(r.statusCode).toBe(202);
    expect(r.json()).toMatchObject({ kind: 'migration', source: 'src1', targets: ['t2'] });
    const end = await jobEnd(r.json().id);
    expect(end.state, JSON.stringify([end.error, end.vms])).toBe('succeeded');
    expect(end.vms).toEqual([expect.objectContaining({ name: 'src1-vm2', target: 't2', state: 'verified' })]);
    expect(agents.find((a) => a.name === 't2')!.target!.listVms().map((v) => v.name)).toContain('src1-vm2');
  });
});

describe('internal routes (source agents)', () => {
  it('plan and slot requests: 404 unknown job, 409 ended job, 400 bad content ids or foreign VMs', async () => {
    const fleet = [{ name: 'src1-vm0', memoryBytes: 8 << 20, nonZeroPages: 10, contents: encodeContents(Uint32Array.of(1, 2, 3)) }];
    expect((await post('/v1/internal/jobs/j-nope/plan', { fleet })).statusCode).toBe(404);
    expect((await post('/v1/internal/jobs/j-nope/slots', { vm: 'a', target: 't1' })).statusCode).toBe(404);
    const ended = (await get('/v1/jobs?state=succeeded')).json().jobs[0].id;
    expect((await post(`/v1/internal/jobs/${ended}/plan`, { fleet })).statusCode).toBe(409);
    expect((await post(`/v1/internal/jobs/${ended}/slots`, { vm: 'src1-vm0', target: 't1' })).statusCode).toBe(409);
    expect((await post(`/v1/internal/jobs/${ended}/slots`, { vm: 'src1-vm0' })).statusCode).toBe(400);

    // A running job (slow source, one VM) to send malformed requests to.
    const r = await post('/v1/migrations', { pairs: [{ vm: 'slow-vm0', target: 't1' }] });
    expect(r.statusCode).toBe(202);
    const id = r.json().id;
    const badIds = await post(`/v1/internal/jobs/${id}/plan`, { fleet: [{ ...fleet[0], name: 'slow-vm0', contents: Buffer.from([1, 2, 3]).toString('base64') }] });
    expect(badIds.statusCode).toBe(400);
    expect(badIds.json().message).toMatch(/multiple of 4 bytes/);
    const unordered = await post(`/v1/internal/jobs/${id}/plan`, { fleet: [{ ...fleet[0], name: 'slow-vm0', contents: encodeContents(Uint32Array.of(5, 2)) }] });
    expect(unordered.json().message).toMatch(/ascending/);
    expect((await post(`/v1/internal/jobs/${id}/plan`, { fleet })).json().message).toMatch(/not part of job/);
    expect((await post(`/v1/internal/jobs/${id}/slots`, { vm: 'slow-vm0', target: 't2' })).json().message).toMatch(/not a target of job/);
    await del(`/v1/jobs/${id}`);
    expect((await jobEnd(id)).state).toBe('cancelled');
  });
});

describe('metrics', () => {
  it('GET /metrics exposes bytes, pages, drops, phase durations, jobs, agents and slots', async () => {
    const r = await get('/metrics');
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain/);
    const m = r.body;
    expect(m).toMatch(/^vmscatter_bytes_total\{kind="converge"\} [1-9]\d*/m);
    expect(m).toMatch(/^vmscatter_pages_total\{kind="whole"\} [1-9]/m);
    expect(m).toMatch(/^vmscatter_phase_duration_seconds_count\{phase="converge"\} [1-9]/m);
    expect(m).toMatch(/^vmscatter_vm_migrations_total\{result="succeeded"\} 3/m);
    expect(m).toMatch(/^vmscatter_drops_total\{what="vm"\} [1-9]/m);
    expect(m).toMatch(/^vmscatter_jobs\{state="cancelled"\} 2/m);
    expect(m).toMatch(/^vmscatter_agents\{role="target",state="lost"\} 1/m);
    expect(m).toMatch(/^# TYPE vmscatter_migration_slots_in_use gauge/m);
    expect(m).toMatch(/^vmscatter_scatter_repairs_total /m);
  });
});
