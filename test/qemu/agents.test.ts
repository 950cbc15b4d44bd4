/**
 * Running QEMU guests evacuated through the service, as an operator would: a coordinator, a
 * source agent given the guests (`--fleet qemu:GUESTS.json`: a QMP socket reserved for vmscatter
 * and the shared RAM file of each), target agents that start a target QEMU per incoming guest
 * (`--fleet qemu`), and the job asked for over the HTTP API. Checked:
 *  - a guests file that does not describe the running guest is refused at start;
 *  - a guest asked to go to a target that receives simulated VMs is refused, and runs on;
 *  - a migration cancelled over the API while the target QEMU receives: the guest runs on at its
 *    source with the same memory, the target QEMU is discarded;
 *  - the evacuation: every guest resumes on its target, ticks on with an unchanged uniq_md5,
 *    the source QEMU is told to quit, and the job reports each VM verified as running;
 *  - a guest listed but not running is skipped when the source agent starts;
 *  - a target agent restarted takes back the guests it started (they ran on meanwhile).
 * The guests are started here from the command line `vmscatter qemu-command` prints (standing in
 * for whoever runs the VMs) and killed here by the pids in their pidfiles; the target QEMUs are
 * the target agents' and are disposed of through them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type AgentHandle } from '../../src/agent/agent-main.js';
import type { QemuSourceVm } from '../../src/agent/qemu-agents.js';
import { qemuCommandLines } from '../../src/cli/qemu-command.js';
import { resolveConfig, type EvacuationConfig } from '../../src/config.js';
import { buildCoordinator, type CoordinatorApp } from '../../src/coordinator/server.js';
import { buildGuest, TICK_RE, workloadAppend, type GuestImage, type Tick } from '../../src/qemu/guest-builder.js';
import { killAllGuests } from '../../src/qemu/launcher.js';
import { CONVERGE_PROTOCOL_VERSION, encodeJsonFrame, FrameType } from '../../src/wire/converge-frame.js';
import { TOKEN, waitFor, waitForJobEnd } from '../coordinator/harness.js';
import { qemuTestEnv, requireQemu } from './qemu-env.js';

const env = await qemuTestEnv();
const run = requireQemu(env, 'QEMU guests through the coordinator and agents');
const MEM = 256;
const NAMES = ['qa0', 'qa1'];
const silent = pino({ level: process.env.VMSCATTER_TEST_LOG ?? 'silent' }, pino.destination(2));
const auth = { authorization: `Bearer ${TOKEN}` };

/** A guest the test started from `vmscatter qemu-command`'s line, as its owner would. */
interface OwnGuest {
  name: string;
  pidPath: string;
  serialPath: string;
  ramFile: string;
}

/** The last TICK line in a serial log from byte `from` on, waiting up to timeoutMs for one. */
async function tickAfter(serialPath: string, from: number, timeoutMs = 30_000): Promise<Tick & { end: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await readFile(serialPath, 'latin1').catch(() => '')).slice(from);
    const all = [...text.matchAll(new RegExp(TICK_RE.source, 'g'))];
    const m = all.at(-1);
    if (m) return { n: Number(m[1]), md5: m[2] ?? '', end: from + text.length };
    if (Date.now() > deadline) throw new Error(`no TICK in ${serialPath} within ${timeoutMs} ms; tail ${JSON.stringify(text.slice(-300))}`);
    await sleep(200);
  }
}

function pidOf(g: OwnGuest): number | undefined {
  try {
    const pid = Number(readFileSync(g.pidPath, 'utf8').trim());
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(g.pidPath) ? pid : undefined;
  } catch {
    return undefined;
  }
}

describe.skipIf(!run).sequential('QEMU guests evacuated through the coordinator and agents', () => {
  let dir = '';
  let image: GuestImage;
  let app: CoordinatorApp;
  const guests: OwnGuest[] = [];
  const agents: AgentHandle[] = [];
  let guestsFile = '';

  function config(extra: Record<string, unknown>): EvacuationConfig {
    return resolveConfig({
      auth: { token: TOKEN },
      log: { level: 'silent' },
      coordinator: { stateDir: '', listen: '127.0.0.1:0', heartbeatIntervalMs: 200, agentLostAfterMs: 30_000, url: app ? app.coordinator.config.coordinator.url : undefined },
      // QEMU stops the guest once what is left fits this; the pipeline is fast (README).
      migration: { downtimeLimitMs: 20 },
      ...extra,
    });
  }

  async function agent(role: 'source' | 'target', name: string, agentExtra: Record<string, unknown>): Promise<AgentHandle> {
    const a = await startAgent(config({ agent: { role, name, listen: '127.0.0.1:0', dataListen: '127.0.0.1:0', capacityMiB: 1024, ...agentExtra } }), { logger: silent });
    agents.push(a);
    return a;
  }

  async function writeGuests(file: string, memoryMiB = MEM, names: readonly string[] = NAMES): Promise<string> {
    const path = join(dir, file);
    const list = names.map((name) => ({
      name,
      qmp: join(dir, `${name}.vms.qmp`),
      ramFile: `/dev/shm/${basename(dir)}-${name}.ram`,
      machine: { memoryMiB, kernel: image.kernel, initrd: image.initrd, append: workloadAppend() },
    }));
    await writeFile(path, JSON.stringify({ guests: list }, null, 2));
    return path;
  }

  const get = (url: string) => app.inject({ method: 'GET', url, headers: auth });
  const post = (url: string, payload: Record<string, unknown>) => app.inject({ method: 'POST', url, payload, headers: auth });

  const jobEnd = (id: string, timeoutMs: number): Promise<Record<string, any>> => waitForJobEnd(get, id, timeoutMs, 250);

  /** The source agent's own QMP view of a guest it migrates. */
  function sourceStatus(name: string): Promise<string> {
    const src = agents.find((a) => a.name === 'qsrc')!;
    return (src.source!.vm(name)!.hosted.vm as QemuSourceVm).guest.status();
  }

  beforeAll(async () => {
    image = await buildGuest({ log: (m) => console.log(`guest build: ${m}`) });
    dir = await mkdtemp(join(tmpdir(), 'vmsq-agents-'));
    guestsFile = await writeGuests('guests.json');
    // The VMs' owner starts them with the command line vmscatter prints for the guests file.
    const lines = qemuCommandLines(guestsFile);
    for (const [i, name] of NAMES.entries()) {
      const g = { name, pidPath: join(dir, `${name}.pid`), serialPath: join(dir, `${name}.serial`), ramFile: `/dev/shm/${basename(dir)}-${name}.ram` };
      guests.push(g);
      const r = spawnSync('sh', ['-c', lines[i]!], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, `${lines[i]}\n${r.stderr}`).toBe(0);
    }
    await Promise.all(guests.map((g) => tickAfter(g.serialPath, 0, 180_000)));

    app = await buildCoordinator({ config: config({}), logger: silent, slotWaitMs: 2000 });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const a = app.server.address();
    app.coordinator.config.coordinator.url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    // Room for one guest each: the evacuation uses both targets.
    await agent('target', 'qt1', { fleet: 'qemu', capacityMiB: MEM + 16, stateDir: join(dir, 'state') });
    await agent('target', 'qt2', { fleet: 'qemu', capacityMiB: MEM + 16, stateDir: join(dir, 'state') });
    await agent('target', 'simt', {});
    // The source's file also lists a guest that is not running: skipped, with a warning.
    // At 24 MiB/s a guest's pre-copy (~100 MB) takes about 4 s: long enough to cancel one.
    const src = await startAgent(
      config({
        // qa1 joins by a reload of the file (first test).
        agent: { role: 'source', name: 'qsrc', listen: '127.0.0.1:0', fleet: 'qemu', guests: await writeGuests('source.json', MEM, [NAMES[0]!, 'gone']) },
        migration: { downtimeLimitMs: 20, maxBandwidthMiBps: 24 },
      }),
      { logger: silent },
    );
    agents.push(src);
    await waitFor('4 agents registered', async () => (await get('/v1/agents')).json().agents.length === 4);
  }, 300_000);

  afterAll(async () => {
    // Arrived guests outlive their target agent by design: dispose of them through it first.
    for (const a of agents) await a.target?.qemu?.dispose();
    await Promise.all(agents.map((a) => a.close()));
    await app?.close();
    for (const g of guests) {
      const pid = pidOf(g);
      if (pid !== undefined) process.kill(pid, 'SIGKILL');
      await waitFor(`${g.name} (pid ${pid}) gone`, () => pidOf(g) === undefined, 10_000);
      await rm(g.ramFile, { force: true });
    }
    await killAllGuests();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('skips a listed guest that is not running; refuses a guests file that does not describe a running guest, or is missing', async () => {
    const src = agents.find((a) => a.name === 'qsrc')!;
    expect(src.source!.listVms().map((v) => [v.name, v.state])).toEqual([['qa0', 'running']]);
    // The owner lists qa1 too and has the agent read the file again (what SIGHUP does).
    const reload = () => src.app.inject({ method: 'POST', url: '/v1/guests/reload', headers: auth });
    await writeGuests('source.json', MEM, [...NAMES, 'gone']);
    let r = await reload();
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json()).toEqual({ added: ['qa1'], removed: [], readopted: [], unchanged: ['qa0'], notRunning: ['gone'], busy: [], failed: [] });
    // A description that does not match the running guest: let go, not taken on again; then fixed.
    await writeFile(join(dir, 'source.json'), (await readFile(join(dir, 'source.json'), 'utf8')).replace(`"memoryMiB": ${MEM}`, `"memoryMiB": ${MEM / 2}`));
    r = await reload();
    expect(r.json().failed).toEqual([{ name: 'qa0', error: expect.stringMatching(new RegExp(`RAM file .* has \\d+ bytes, but its machine \\(memoryMiB ${MEM / 2},`)) }]);
    expect(src.source!.listVms().map((v) => v.name)).toEqual(['qa1']);
    await writeGuests('source.json', MEM, [...NAMES, 'gone']);
    r = await reload();
    expect(r.json()).toMatchObject({ added: ['qa0'], unchanged: ['qa1'], failed: [] });
    // An invalid file changes nothing.
    await writeFile(join(dir, 'source.json'), JSON.stringify({ guests: 'qa0' }));
    r = await reload();
    expect(r.statusCode).toBe(422);
    expect(r.json().message).toMatch(/QEMU guests file .*source.json is invalid/);
    await writeGuests('source.json', MEM, [...NAMES, 'gone']);
    expect(src.source!.listVms().map((v) => [v.name, v.state]).sort()).toEqual([
      ['qa0', 'running'],
      ['qa1', 'running'],
    ]);
    // Checked before the agent connects to QMP (the sockets are taken by qsrc).
    const wrong = await writeGuests('wrong.json', MEM / 2);
    const bad = (agentExtra: Record<string, unknown>) => startAgent(config({ agent: { role: 'source', name: 'bad', listen: '127.0.0.1:0', register: false, fleet: 'qemu', ...agentExtra } }), { logger: silent });
    await expect(bad({ guests: wrong })).rejects.toThrow(/RAM file .* has \d+ bytes, but its machine \(memoryMiB 128, accel tcg\) gives \d+/);
    await expect(bad({ guests: join(dir, 'none.json') })).rejects.toThrow(/cannot read the QEMU guests file/);
    await expect(bad({})).rejects.toThrow(/needs the JSON file of its QEMU guests/);
  });

  it('refuses to send a guest to a target that receives simulated VMs; the guest runs on', async () => {
    const g = guests[0]!;
    const before = await tickAfter(g.serialPath, 0);
    const r = await post('/v1/migrations', { pairs: [{ vm: g.name, target: 'simt' }] });
    expect(r.statusCode, r.body).toBe(422);
    expect(r.json().message).toMatch(/source agent qsrc hosts QEMU guests, but target agent simt receives simulated VMs/);
    // The target agent refuses such a VM itself too (a coordinator that does not check).
    expect(agents.find((a) => a.name === 'simt')!.target!.kind).toBe('sim');
    expect(await sourceStatus(g.name)).toBe('running');
    const after = await tickAfter(g.serialPath, before.end);
    expect(after.n).toBeGreaterThan(before.n);
    expect(after.md5).toBe(before.md5);
  }, 120_000);

  it('a cancelled migration leaves the guest running on its source and no QEMU on the target', async () => {
    const g = guests[1]!;
    const before = await tickAfter(g.serialPath, 0);
    const r = await post('/v1/migrations', { pairs: [{ vm: g.name, target: 'qt1' }] });
    expect(r.statusCode, r.body).toBe(202);
    const id = r.json().id as string;
    const qt1 = agents.find((a) => a.name === 'qt1')!.target!;
    // Cancel once the target QEMU is receiving the guest.
    await waitFor('the guest arriving on qt1', () => qt1.listVms().some((v) => v.name === g.name && v.state === 'receiving'), 30_000, 50);
    const c = await app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: auth });
    expect(c.statusCode, c.body).toBe(202);
    const job = await jobEnd(id, 60_000);
    expect(job.state, JSON.stringify(job)).toBe('cancelled');
    expect(await sourceStatus(g.name)).toBe('running');
    const after = await tickAfter(g.serialPath, before.end);
    expect(after.n).toBeGreaterThan(before.n);
    expect(after.md5).toBe(before.md5);
    expect(qt1.listVms().find((v) => v.name === g.name)?.state).toBe('failed');
    expect(qt1.qemu!.vms.size).toBe(0);
  }, 120_000);

  it('evacuates the running guests into target QEMUs: they resume and tick on with the same memory', async () => {
    const before = await Promise.all(guests.map((g) => tickAfter(g.serialPath, 0)));
    const r = await post('/v1/evacuations', { source: 'qsrc', targets: ['qt1', 'qt2'], parallel: 1 });
    expect(r.statusCode, r.body).toBe(202);
    const job = await jobEnd(r.json().id, 240_000);
    expect(job.state, JSON.stringify(job)).toBe('succeeded');
    console.log(`evacuation through the agents: ${job.vms.map((v: Record<string, unknown>) => `${String(v.name)} -> ${String(v.target)} ${String(v.state)} (${String(v.detail ?? '')})`).join('; ')}`);
    for (const v of job.vms) expect(v.state, JSON.stringify(v)).toBe('verified');
    // The report says how: the targets run the guests; their RAM was not compared.
    expect(job.report.vms.map((v: Record<string, unknown>) => v.verifiedBy)).toEqual(['running', 'running']);
    const targets = agents.filter((a) => a.target?.qemu);
    for (const [i, g] of guests.entries()) {
      // The guest runs on its target: its source QEMU was told to quit.
      await waitFor(`source QEMU of ${g.name} gone`, () => pidOf(g) === undefined, 15_000);
      const arrived = targets.map((a) => a.target!.qemu!.vms.get(g.name)).find((x) => x !== undefined);
      expect(arrived, `${g.name} on a target QEMU`).toBeDefined();
      const t = await arrived!.guest.nextTick(30_000);
      expect(t.n, g.name).toBeGreaterThan(before[i]!.n);
      expect(t.md5, g.name).toBe(before[i]!.md5);
    }
    // The source agent lists them as migrated; the targets as running.
    const src = agents.find((a) => a.name === 'qsrc')!;
    expect(src.source!.listVms().map((v) => v.state)).toEqual(['migrated', 'migrated']);
    const onTargets = targets.flatMap((a) => a.target!.listVms());
    expect(onTargets.filter((v) => v.state === 'running').map((v) => v.name).sort()).toEqual(NAMES);
    expect(new Set(job.vms.map((v: Record<string, unknown>) => v.target)).size).toBe(2);

    // The same guest again, on a converge connection of its own: refused, its record untouched.
    const host = targets.find((a) => a.target!.qemu!.vms.has('qa0'))!;
    expect((await host.app.inject({ method: 'PUT', url: '/v1/incoming/qa0', headers: auth, payload: { job: 'j-again', machine: { memoryMiB: MEM } } })).statusCode).toBe(409);
    const reply = await new Promise<string>((resolve, reject) => {
      const s = netConnect({ host: host.data!.host, port: host.data!.port });
      let got = '';
      s.on('connect', () => s.write(encodeJsonFrame(FrameType.HELLO, { job: String(job.id), vm: 'qa0', version: CONVERGE_PROTOCOL_VERSION })));
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      s.on('close', () => resolve(got));
      s.on('error', reject);
    });
    expect(reply).toMatch(/already running on/);
    expect(host.target!.listVms().find((v) => v.name === 'qa0')?.state).toBe('running');
    expect(host.target!.qemu!.vms.has('qa0')).toBe(true);
  }, 300_000);

  it('a restarted target agent takes back the guests it started, which ran on meanwhile', async () => {
    const host = agents.find((a) => a.target?.qemu?.vms.has('qa0'))!;
    const name = host.name;
    const before = host.target!.listVms().find((v) => v.name === 'qa0')!;
    const pid = host.target!.qemu!.vms.get('qa0')!.guest.pid;
    await host.close();
    agents.splice(agents.indexOf(host), 1);
    expect(existsSync(`/proc/${pid}`), 'the guest runs on without its agent').toBe(true);
    const again = await agent('target', name, { fleet: 'qemu', capacityMiB: MEM + 16, stateDir: join(dir, 'state') });
    expect(again.target!.listVms()).toEqual([before]);
    expect(again.target!.usage()).toEqual({ usedBytes: before.memoryBytes, vmCount: 1 });
    const g = again.target!.qemu!.vms.get('qa0')!.guest;
    expect(g.pid).toBe(pid);
    expect(await g.status()).toBe('running');
    const t1 = await g.nextTick(30_000);
    expect((await g.nextTick(30_000)).n).toBeGreaterThan(t1.n);
    // The coordinator sees its memory used again.
    await waitFor(`${name} reports its guest`, async () => (await get('/v1/agents')).json().agents.find((a: { name: string; usedBytes?: number }) => a.name === name)?.usedBytes === before.memoryBytes);
  }, 120_000);
});
