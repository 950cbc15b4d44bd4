/**
 * Targets lost or cut off around a job's end, with real agents in this process, on loopback:
 *  - a target lost after a VM switched over to it, before the VM was verified: the VM is no
 *    longer its source's (it was resumed on the target), so the job must not report it like a
 *    VM that was not migrated and keeps running on its source;
 *  - a target that still holds an ended job's content store (it could not be reached when the
 *    job ended) has it released once its heartbeats list it; so is the store of a job this
 *    coordinator does not know (from before a restart that lost its state dir).
 */
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { resolveConfig, type EvacuationConfig } from '../../src/config.js';
import { startAgent, type AgentHandle } from '../../src/agent/agent-main.js';
import { buildCoordinator, type CoordinatorApp } from '../../src/coordinator/server.js';
import { sessionFromPlan, sessionToJson } from '../../src/transport/scatter-session.js';
import { TOKEN, waitFor, waitForJobEnd } from './harness.js';

const silent = pino({ level: process.env.VMSCATTER_TEST_LOG ?? 'silent' }, pino.destination(2));
const auth = { authorization: `Bearer ${TOKEN}` };

let app: CoordinatorApp;
const agents = new Map<string, AgentHandle>();

function config(extra: Record<string, unknown>): EvacuationConfig {
  return resolveConfig({
    auth: { token: TOKEN },
    log: { level: 'silent' },
    coordinator: { stateDir: '', listen: '127.0.0.1:0', heartbeatIntervalMs: 200, agentLostAfterMs: 2000, maxOutgoingPerSource: 4, maxIncomingPerTarget: 4 },
    // ~2.7 MB of non-zero pages per VM at 2 MiB/s: about 1.3 s each, one after the other.
    migration: { maxBandwidthMiBps: 2, maxRounds: 5 },
    ...extra,
  });
}

async function agent(role: 'source' | 'target', name: string): Promise<AgentHandle> {
  const cfg = config({
    agent: { role, name, listen: '127.0.0.1:0', dataListen: '127.0.0.1:0', capacityMiB: 512 },
    coordinator: { ...config({}).coordinator, url: app.coordinator.config.coordinator.url },
    fleet: { vms: 2, memoryMiB: 8, dirtyPagesPerSec: 50, workingSetPages: 64, seed: 100 },
  });
  const a = await startAgent(cfg, { logger: silent });
  agents.set(name, a);
  return a;
}

const get = (url: string) => app.inject({ method: 'GET', url, headers: auth });
let endedJob = '';

beforeAll(async () => {
  app = await buildCoordinator({ config: config({}), logger: silent, slotWaitMs: 2000 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const a = app.server.address();
  app.coordinator.config.coordinator.url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  await Promise.all([agent('source', 'src'), agent('target', 't1'), agent('target', 't2')]);
  await waitFor('3 agents registered', async () => get('/v1/agents').then((r) => r.json().agents.length === 3));
});

afterAll(async () => {
  await Promise.all([...agents.values()].map((a) => a.close()));
  await app?.close();
});

it('a VM whose target is lost after switchover is unverified and its target\'s, not "not migrated"', async () => {
  const r = await app.inject({
    method: 'POST',
    url: '/v1/migrations',
    headers: auth,
    payload: { pairs: [{ vm: 'src-vm0', target: 't2' }, { vm: 'src-vm1', target: 't1' }], parallel: 1 },
  });
  expect(r.statusCode).toBe(202);
  const id: string = r.json().id;
  endedJob = id;
  // src-vm0 runs on t2 now; src-vm1 is still on its way to t1, and verification comes after it.
  await waitFor('src-vm0 switched over', async () => (await get(`/v1/jobs/${id}`)).json().vms[0].state === 'resumed', 30_000, 20);
  const during = (await get(`/v1/jobs/${id}`)).json();
  expect(during.state).toBe('running');
  expect(during.vms[1].state).toBe('migrating');
  await agents.get('t2')!.close();
  agents.delete('t2');

  const end = await waitForJobEnd((url) => get(url), id, 30_000);
  expect(end.state).toBe('failed');
  expect(end.vms[0]).toMatchObject({ name: 'src-vm0', target: 't2', state: 'unverified' });
  expect(end.vms[0].detail).toMatch(/cannot reach target agent t2/);
  expect(end.vms[1]).toMatchObject({ name: 'src-vm1', target: 't1', state: 'verified' });
  expect(end.report.vms[0]).toMatchObject({ ok: false, switchedOver: true, verified: false });
  expect(end.report.vms[1]).toMatchObject({ ok: true, switchedOver: true, verified: true });
  // Both left the source: the job says one is unverified, not that it stayed there.
  expect(end.error.message).toMatch(/^1 of 2 VMs switched over but not verified \(running on their target\); src-vm0: cannot reach target agent t2/);
  expect(end.error.message).not.toMatch(/not migrated/);
  expect(end.detail).toMatch(/^2\/2 VMs moved/);
  expect(agents.get('src')!.source!.listVms().map((v) => v.state)).toEqual(['migrated', 'migrated']);
}, 60_000);

it("an ended job's content store left on a target is released once the target's heartbeat lists it", async () => {
  expect(endedJob).not.toBe('');
  const t1 = agents.get('t1')!;
  // Released when the job ended (the coordinator's DELETE follows the job's end).
  await waitFor('the job end to release its store on t1', async () => !t1.target!.storeJobs().includes(endedJob), 10_000, 20);
  // The state a target is left in when the job's end could not reach it (cut off, stopped):
  // here a late scatter request for the ended job, which opens a store for it.
  await openStore(t1, endedJob);
  await waitFor('the coordinator to release it', async () => !t1.target!.storeJobs().includes(endedJob), 10_000, 50);
  // And the next heartbeat says so.
  await waitFor('t1 to list no store of it', async () => {
    const view = (await get('/v1/agents')).json().agents.find((a: { name: string }) => a.name === 't1');
    return !(view.stores as string[]).includes(endedJob);
  }, 10_000, 50);
});

it('a content store of a job the coordinator does not know is released once the target lists it', async () => {
  // What a coordinator restarted without its state dir finds: a store of a job from before.
  const t1 = agents.get('t1')!;
  const job = 'j-from-before-a-restart';
  expect(app.coordinator.jobs.get(job)).toBeUndefined();
  await openStore(t1, job);
  await waitFor('the coordinator to release it', async () => !t1.target!.storeJobs().includes(job), 10_000, 50);
});

/** Open a content store of `job` on a target the way a late scatter request does. */
async function openStore(t: AgentHandle, job: string): Promise<void> {
  const plan = { targets: [t.name], groups: [{ id: 0, targets: [0], contents: Uint32Array.of(1, 2, 3) }], order: [0] };
  const session = sessionToJson(sessionFromPlan(plan, { job: 7, key: null, sender: { address: '127.0.0.1', port: 9 }, mtu: 9000, window: 3 }));
  const res = await fetch(`${t.url}/v1/jobs/${job}/scatter`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ session, target: 0 }),
  });
  expect(res.status).toBe(202);
  expect(t.target!.storeJobs()).toContain(job);
}
