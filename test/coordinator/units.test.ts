/**
 * The control plane's pieces without sockets: per-host migration slots, agent liveness, the
 * fleet wire format, configuration layering (file < environment < flags) and the job store.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { envConfig, resolveConfig } from '../../src/config.js';
import { AgentRegistry, type AgentRecord } from '../../src/coordinator/agents-registry.js';
import { decodeContents, encodeContents } from '../../src/coordinator/fleet-wire.js';
import { MigrationSlots } from '../../src/coordinator/migration-slots.js';
import { FileStateStore } from '../../src/coordinator/state-store.js';
import { agentConfig, parseAgentFleet, parseFleetSpec } from '../../src/cli/agent-command.js';
import { parseWorkloadSpec } from '../../src/cli/key-values.js';
import { checkWorkloadFits, GUEST_OS_MIB } from '../../src/qemu/guest-builder.js';
import { coordinatorConfig } from '../../src/cli/coordinator-command.js';
import { AdmittedVm, type SourceRun } from '../../src/agent/source-host.js';
import { startAgent } from '../../src/agent/agent-main.js';
import { TargetHost } from '../../src/agent/target-host.js';
import { formatSummary } from '../../src/cli/demo-command.js';
import type { EvacuationReport } from '../../src/coordinator/evacuation.js';
import type { MigrationHooks, SourceVm } from '../../src/agent/source-vm.js';
import { PassThrough } from 'node:stream';
import { createServer, type AddressInfo } from 'node:net';

const silent = pino({ level: 'silent' });

describe('MigrationSlots', () => {
  it('bounds outgoing per source and incoming per target over all jobs', async () => {
    const s = new MigrationSlots({ maxOutgoingPerSource: 2, maxIncomingPerTarget: 1 });
    expect(await s.acquire('j1', 'a', 'src', 't1', { timeoutMs: 10 })).toBe(true);
    expect(await s.acquire('j1', 'b', 'src', 't2', { timeoutMs: 10 })).toBe(true);
    // Source full (2 out), and t1 full (1 in).
    expect(await s.acquire('j2', 'c', 'src', 't3', { timeoutMs: 10 })).toBe(false);
    expect(await s.acquire('j3', 'x', 'other', 't1', { timeoutMs: 10 })).toBe(false);
    expect(await s.acquire('j3', 'y', 'other', 't3', { timeoutMs: 10 })).toBe(true);
    expect(s.outgoing('src')).toBe(2);
    expect(s.incoming('t1')).toBe(1);
    expect(s.describe('src', 't1')).toMatch(/source src has 2\/2 outgoing.*target t1 has 1\/1 incoming/);
    // Asking again for a held slot is idempotent.
    expect(await s.acquire('j1', 'a', 'src', 't1', { timeoutMs: 10 })).toBe(true);
    expect(s.outgoing('src')).toBe(2);
  });

  it('grants waiters in order when slots are released, and turns away a finished job', async () => {
    const s = new MigrationSlots({ maxOutgoingPerSource: 1, maxIncomingPerTarget: 5 });
    expect(await s.acquire('j1', 'a', 'src', 't1', { timeoutMs: 10 })).toBe(true);
    const order: string[] = [];
    const b = s.acquire('j1', 'b', 'src', 't1', { timeoutMs: 5000 }).then((g) => (order.push('b'), g));
    const c = s.acquire('j2', 'c', 'src', 't2', { timeoutMs: 5000 }).then((g) => (order.push('c'), g));
    const d = s.acquire('j3', 'd', 'src', 't2', { timeoutMs: 5000 }).then((g) => (order.push('d'), g));
    expect(s.waiting()).toBe(3);
    s.release('j1', 'a');
    expect(await b).toBe(true);
    s.releaseJob('j2'); // c is turned away
    expect(await c).toBe(false);
    s.release('j1', 'b');
    expect(await d).toBe(true);
    expect(order).toEqual(['b', 'c', 'd']);
    s.releaseJob('j3');
    expect(s.usage()).toEqual([]);
  });

  it('a waiter that does not fit blocks later waiters on the same hosts only', async () => {
    const s = new MigrationSlots({ maxOutgoingPerSource: 1, maxIncomingPerTarget: 1 });
    await s.acquire('j1', 'a', 's1', 't1', { timeoutMs: 10 });
    const blocked = s.acquire('j2', 'b', 's2', 't1', { timeoutMs: 5000 }); // t1 full
    // s2 is "claimed" by the earlier waiter: a newcomer on s2 waits behind it.
    expect(await s.acquire('j3', 'c', 's2', 't2', { timeoutMs: 20 })).toBe(false);
    // Other hosts go ahead.
    expect(await s.acquire('j4', 'd', 's3', 't3', { timeoutMs: 10 })).toBe(true);
    s.release('j1', 'a');
    expect(await blocked).toBe(true);
  });

  it('restore holds a slot whatever the limits (re-attach after a restart); an aborted wait gives up', async () => {
    const s = new MigrationSlots({ maxOutgoingPerSource: 1, maxIncomingPerTarget: 1 });
    s.restore('j', 'a', 'src', 't');
    s.restore('j', 'b', 'src', 't');
    expect(s.outgoing('src')).toBe(2);
    const ac = new AbortController();
    const p = s.acquire('j', 'c', 'src', 't', { timeoutMs: 5000, signal: ac.signal });
    ac.abort();
    expect(await p).toBe(false);
    expect(s.waiting()).toBe(0);
  });
});

describe('AgentRegistry', () => {
  it('marks a silent agent lost once, and ready again when it reports', () => {
    let now = 1000;
    const lost: string[] = [];
    const r = new AgentRegistry({ lostAfterMs: 500, pollIntervalMs: 100, staticAgents: [], token: 'x', logger: silent, onLost: (a: AgentRecord) => lost.push(a.name), now: () => now });
    r.register({ name: 't1', role: 'target', controlUrl: 'http://h:1' });
    r.register({ name: 's1', role: 'source', controlUrl: 'http://h:2' });
    now += 400;
    r.heartbeat('s1', {});
    now += 200;
    r.checkLiveness();
    expect(lost).toEqual(['t1']);
    expect(r.get('t1')?.state).toBe('lost');
    r.checkLiveness();
    expect(lost).toEqual(['t1']);
    expect(() => r.require('t1', 'target')).toThrow(/lost: no heartbeat/);
    expect(() => r.require('s1', 'target')).toThrow(/s1 is a source agent/);
    r.heartbeat('t1', { usedBytes: 5 });
    expect(r.require('t1', 'target').usedBytes).toBe(5);
    expect(r.heartbeat('nobody', {})).toBeUndefined();
    // An agent never seen counts as gone only after lostAfterMs of coordinator uptime.
    expect(r.isGone('nobody')).toBe(true);
    expect(r.list().map((a) => a.name)).toEqual(['s1', 't1']);
  });

  it('refuses a second live agent under a taken name; the name passes on once the first is lost', () => {
    let now = 1000;
    const r = new AgentRegistry({ lostAfterMs: 500, pollIntervalMs: 100, staticAgents: [], token: 'x', logger: silent, onLost: () => {}, now: () => now });
    r.register({ name: 't1', role: 'target', controlUrl: 'http://a:1' });
    // Two hosts with one hostname (the default name): the second is refused, and says why.
    expect(() => r.register({ name: 't1', role: 'target', controlUrl: 'http://b:1' })).toThrow(/an agent named t1 is already registered at http:\/\/a:1 .*start the one at http:\/\/b:1 with another --name/);
    expect(r.get('t1')?.controlUrl).toBe('http://a:1');
    // The same agent registering again (a coordinator that forgot it) is fine.
    r.register({ name: 't1', role: 'target', controlUrl: 'http://a:1', usedBytes: 3 });
    expect(r.heartbeat('t1', { controlUrl: 'http://a:1', usedBytes: 4 })).toMatchObject({ usedBytes: 4 });
    // Lost: another agent may take the name, and then the first one's heartbeats are refused
    // (it registers again and is told the name is taken) instead of mixing into its record.
    now += 600;
    r.checkLiveness();
    r.register({ name: 't1', role: 'target', controlUrl: 'http://b:1', usedBytes: 7 });
    expect(r.heartbeat('t1', { controlUrl: 'http://a:1', usedBytes: 1 })).toBe('other');
    expect(r.get('t1')).toMatchObject({ controlUrl: 'http://b:1', usedBytes: 7, state: 'ready' });
  });

  it("logs registrations and losses with the agent's role next to the coordinator's own, not over it", () => {
    const out = new PassThrough();
    const lines: string[] = [];
    out.on('data', (d: Buffer) => lines.push(...d.toString().split('\n').filter(Boolean)));
    const logger = pino({ level: 'info', base: { role: 'coordinator' } }, out);
    let now = 1000;
    const r = new AgentRegistry({ lostAfterMs: 500, pollIntervalMs: 100, staticAgents: [], token: 'x', logger, onLost: () => {}, now: () => now });
    r.register({ name: 's1', role: 'source', controlUrl: 'http://h:2' });
    now += 600;
    r.checkLiveness();
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.map((e) => [e.msg, e.role, e.agent, e.agentRole])).toEqual([
      ['agent registered', 'coordinator', 's1', 'source'],
      ['agent lost', 'coordinator', 's1', 'source'],
    ]);
    // Each key once per line: JSON.parse keeps the last of duplicated keys, hiding the first.
    for (const l of lines) expect(l.match(/"role":/g)).toHaveLength(1);
  });
});

describe('fleet wire format', () => {
  it('round-trips content ids as little-endian base64 and rejects bad input', () => {
    const ids = Uint32Array.of(0, 7, 65536, 0xfffffffe);
    const b64 = encodeContents(ids);
    expect(Buffer.from(b64, 'base64').readUInt32LE(4)).toBe(7);
    expect(decodeContents(b64, 'x')).toEqual(ids);
    expect(() => decodeContents(Buffer.from([1, 2, 3]).toString('base64'), 'vm a')).toThrow(/vm a: .*multiple of 4/);
    expect(() => decodeContents(encodeContents(Uint32Array.of(3, 3)), 'vm b')).toThrow(/ascending and distinct/);
  });
});

describe('configuration', () => {
  it('layers file < environment < flags through one schema with named defaults', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmscatter-cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, JSON.stringify({ coordinator: { listen: '0.0.0.0:7000', maxOutgoingPerSource: 3 }, auth: { token: 'from-file-token-0000' } }));
      const env = { VMSCATTER_TOKEN: 'from-env-token-11111', VMSCATTER_STATE_DIR: '/tmp/x' };
      const { cfg, urlGiven } = coordinatorConfig({ config: file, maxOutgoing: 5 }, env);
      expect(cfg.coordinator).toMatchObject({ listen: '0.0.0.0:7000', maxOutgoingPerSource: 5, maxIncomingPerTarget: 2, stateDir: '/tmp/x', heartbeatIntervalMs: 2000 });
      expect(cfg.auth.token).toBe('from-env-token-11111');
      expect(urlGiven).toBe(false);
      expect(coordinatorConfig({ url: 'http://c:1' }, {}).urlGiven).toBe(true);
      expect(() => coordinatorConfig({ listen: 'nonsense' }, {})).toThrow(/\/coordinator\/listen must match pattern/);
      expect(() => coordinatorConfig({ maxIncoming: 0 }, {})).toThrow(/maxIncomingPerTarget must be >= 1/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps the environment variables it names, and nothing else', () => {
    expect(envConfig({ VMSCATTER_TOKEN: 't', VMSCATTER_COORDINATOR: 'http://c:1', VMSCATTER_LOG_LEVEL: 'debug', OTHER: 'x', VMSCATTER_AGENT_NAME: '' })).toEqual({
      auth: { token: 't' },
      coordinator: { url: 'http://c:1' },
      log: { level: 'debug' },
    });
    expect(() => resolveConfig(envConfig({ VMSCATTER_LOG_LEVEL: 'loud' }))).toThrow(/\/log\/level/);
  });

  it('stop-and-copy first is on by default, can be switched off, and takes only a boolean', () => {
    expect(resolveConfig({}).migration.stopCopyFirst).toBe(true);
    expect(resolveConfig({ migration: { stopCopyFirst: false } }).migration.stopCopyFirst).toBe(false);
    expect(() => resolveConfig({ migration: { stopCopyFirst: 'yes' } })).toThrow(/\/migration\/stopCopyFirst/);
  });

  it('converge in turn is on by default, can be switched off, and takes only a boolean', () => {
    expect(resolveConfig({}).migration.convergeInTurn).toBe(true);
    expect(resolveConfig({ migration: { convergeInTurn: false } }).migration.convergeInTurn).toBe(false);
    expect(() => resolveConfig({ migration: { convergeInTurn: 1 } })).toThrow(/\/migration\/convergeInTurn/);
  });

  it('parses --fleet sim:key=value into the fleet section', () => {
    expect(parseFleetSpec('sim')).toEqual({});
    expect(parseFleetSpec('sim:vms=3,memoryMiB=32,dirtypagespersec=10')).toEqual({ vms: 3, memoryMiB: 32, dirtyPagesPerSec: 10 });
    expect(() => parseFleetSpec('qemu:x')).toThrow(/"sim" or "sim:key=value/);
    expect(() => parseFleetSpec('sim:color=red')).toThrow(/key among vms, memoryMiB/);
    expect(() => parseFleetSpec('sim:vms=many')).toThrow(/vms must be a number/);
    expect(() => parseFleetSpec('sim:vms=')).toThrow(/vms must be a number/);
  });

  it('parses --fleet qemu[:FILE] into agent.fleet and agent.guests; sim stays the default', () => {
    expect(parseAgentFleet('qemu:/etc/vmscatter/guests.json')).toEqual({ agent: { fleet: 'qemu', guests: '/etc/vmscatter/guests.json' } });
    expect(parseAgentFleet('qemu')).toEqual({ agent: { fleet: 'qemu' } });
    expect(parseAgentFleet('sim:vms=2')).toEqual({ agent: { fleet: 'sim' }, fleet: { vms: 2 } });
    expect(() => parseAgentFleet('qemu:')).toThrow(/needs the guests file/);
    expect(() => parseAgentFleet('kvm')).toThrow(/"sim" or "sim:key=value/);
    const cfg = agentConfig({ role: 'source', fleet: 'qemu:/g.json' }, { VMSCATTER_TOKEN: 't'.repeat(16) });
    expect(cfg.agent).toMatchObject({ fleet: 'qemu', guests: '/g.json' });
    expect(agentConfig({ role: 'target' }, {}).agent.fleet).toBe('sim');
    expect(cfg.agent.quitMigrated).toBe(true);
    expect(cfg.agent.stateDir).toBe('var/agent');
    expect(agentConfig({ role: 'source', fleet: 'qemu:/g.json', keepMigrated: true }, {}).agent.quitMigrated).toBe(false);
    expect(() => resolveConfig({ agent: { fleet: 'xen' } })).toThrow(/\/agent\/fleet/);
  });

  it('takes the scatter sender ceiling from --scatter-rate-mbps (default 100 MB/s), and refuses one below 1', () => {
    expect(agentConfig({ role: 'source' }, {}).scatter.rateMBps).toBe(100);
    expect(agentConfig({ role: 'source', scatterRateMbps: 1000 }, {}).scatter.rateMBps).toBe(1000);
    expect(() => agentConfig({ role: 'source', scatterRateMbps: 0 }, {})).toThrow(/\/scatter\/rateMBps/);
  });

  it('uses the UDP offloads for the scatter unless --no-udp-offload or the config says no', () => {
    expect(agentConfig({ role: 'source' }, {}).scatter.udpOffload).toBe(true);
    // commander gives a --no-* flag true when absent: only false counts.
    expect(agentConfig({ role: 'target', udpOffload: true }, {}).scatter.udpOffload).toBe(true);
    expect(agentConfig({ role: 'target', udpOffload: false }, {}).scatter.udpOffload).toBe(false);
    expect(resolveConfig({ scatter: { udpOffload: false } }).scatter.udpOffload).toBe(false);
    expect(() => resolveConfig({ scatter: { udpOffload: 'no' } })).toThrow(/\/scatter\/udpOffload/);
  });

  it('compresses converge frames with LZ4 unless --compress none', () => {
    expect(agentConfig({ role: 'source' }, {}).migration.compress).toBe('lz4');
    expect(agentConfig({ role: 'source', compress: 'none' }, {}).migration.compress).toBe('none');
    expect(() => resolveConfig({ migration: { compress: 'zstd' } })).toThrow(/\/migration\/compress/);
  });

  it('parses --workload key=value into QEMU guest workload parameters, and checks they fit the guest', () => {
    expect(parseWorkloadSpec('uniqueMiB=64,dirtypagespertick=256,tickIntervalSec=0.2')).toEqual({ uniqueMiB: 64, dirtyPagesPerTick: 256, tickIntervalSec: 0.2 });
    expect(() => parseWorkloadSpec('')).toThrow(/--workload needs key=value/);
    expect(() => parseWorkloadSpec('vms=3')).toThrow(/key among zeroMiB, sharedMiB, uniqueMiB, dirtyMiB, dirtyPagesPerTick, tickIntervalSec/);
    expect(() => parseWorkloadSpec('uniqueMiB=lots')).toThrow(/uniqueMiB must be a number/);
    // Defaults: 8 + 16 + 16 + 4 = 44 MiB of regions.
    expect(() => checkWorkloadFits({}, 44 + GUEST_OS_MIB)).not.toThrow();
    expect(() => checkWorkloadFits({}, 43 + GUEST_OS_MIB)).toThrow(/= 44 MiB\) and 64 MiB .* need 108 MiB; the guests have 107 MiB/);
    expect(() => checkWorkloadFits({ uniqueMiB: 200 }, 256)).toThrow(/200 unique/);
    const cfg = agentConfig({ role: 'source', fleet: 'sim:vms=3,memoryMiB=32', register: true }, { VMSCATTER_TOKEN: 'x'.repeat(16) });
    expect(cfg.fleet).toMatchObject({ vms: 3, memoryMiB: 32, tenants: 2 });
    expect(cfg.agent).toMatchObject({ role: 'source', register: true, listen: '127.0.0.1:7401' });
    expect(agentConfig({ register: false }, {}).agent.register).toBe(false);
    expect(() => agentConfig({ fleet: 'sim:vms=0' }, {})).toThrow(/\/fleet\/vms must be >= 1/);
  });
});

describe('FileStateStore', () => {
  it('writes one file per job atomically and skips unreadable ones', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmscatter-state-'));
    try {
      const st = new FileStateStore(dir, silent);
      st.save('j-1', { id: 'j-1', n: 1 });
      st.save('j-1', { id: 'j-1', n: 2 });
      st.save('j-2', { id: 'j-2' });
      writeFileSync(join(dir, 'jobs', 'broken.json'), '{');
      expect(readdirSync(join(dir, 'jobs')).sort()).toEqual(['broken.json', 'j-1.json', 'j-2.json']);
      expect(st.load()).toEqual(expect.arrayContaining([{ id: 'j-1', n: 2 }, { id: 'j-2' }]));
      expect(st.load()).toHaveLength(2);
      st.remove('j-2');
      expect(() => st.save('../evil', {})).toThrow(/not a safe file name/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('AdmittedVm (a VM of an agent run)', () => {
  it('hands the migration hooks on to the VM: the job priority reaches VMs migrated by agents too', async () => {
    const seen: Array<MigrationHooks | undefined> = [];
    const inner: SourceVm = {
      name: 'vm0',
      memoryBytes: 4096,
      ram: { pageCount: 1, readPage: () => {} } as unknown as SourceVm['ram'],
      migrate: async (_out, _signal, hooks) => {
        seen.push(hooks);
        return { rounds: 1, forced: false, stoppedAtEpochMs: 0 };
      },
      resume: () => {},
    };
    const run = { vmAbort: () => new AbortController() } as unknown as SourceRun;
    const hooks: MigrationHooks = { onPass: () => {}, onStopped: () => {} };
    await new AdmittedVm(inner, run).migrate(new PassThrough(), new AbortController().signal, hooks);
    expect(seen).toEqual([hooks]);
  });
});

describe('a source host taking on and letting go of VMs (guests file reload)', () => {
  it('forgets only idle VMs, takes on only new names; a simulated-VM source refuses a guests reload', async () => {
    const token = 't'.repeat(16);
    const a = await startAgent(
      resolveConfig({ auth: { token }, agent: { role: 'source', name: 's-sim', listen: '127.0.0.1:0', register: false }, fleet: { vms: 3, memoryMiB: 4 } }),
      { logger: pino({ level: 'silent' }) },
    );
    try {
      const src = a.source!;
      const names = src.listVms().map((v) => v.name);
      expect(names).toHaveLength(3);
      const [v0, v1, v2] = names as [string, string, string];
      const hosted = src.vm(v0)!.hosted;
      expect(src.removeVm(v0)).toBe('removed');
      expect(src.removeVm(v0)).toBe('absent');
      expect(src.listVms().map((v) => v.name)).toEqual([v1, v2]);
      src.addVms([hosted]);
      expect(src.listVms().map((v) => v.name).sort()).toEqual([...names].sort());
      expect(() => src.addVms([hosted])).toThrow(/already has a VM named/);
      src.vm(v1)!.job = 'j1';
      expect(src.removeVm(v1)).toBe('busy');
      src.markMigrated(v2, 't1');
      expect(src.removeVm(v2)).toBe('busy');
      expect(src.listVms()).toHaveLength(3);
      expect(a.reloadGuests).toBeUndefined();
      const r = await a.app.inject({ method: 'POST', url: '/v1/guests/reload', headers: { authorization: `Bearer ${token}` } });
      expect(r.statusCode).toBe(409);
      expect(r.json().message).toMatch(/hosts simulated VMs; a guests file is read by a source agent with agent.fleet "qemu"/);
    } finally {
      await a.close();
    }
  });
});

describe('agent start-up', () => {
  it('refuses a scatter interface that is not an address of this host, unless the scatter is off', async () => {
    const silent = pino({ level: 'silent' });
    const cfg = (role: 'source' | 'target', scatter: Record<string, unknown>) =>
      resolveConfig({ auth: { token: 't'.repeat(16) }, agent: { role, name: `a-${role}`, listen: '127.0.0.1:0', register: false }, scatter });
    await expect(startAgent(cfg('target', { interface: '198.51.100.250' }), { logger: silent })).rejects.toThrow(
      /^--scatter-interface 198\.51\.100\.250 \(scatter\.interface\) is not an address of this host \(its IPv4 addresses: 127\.0\.0\.1.*\): give the address of its interface on the multicast network$/,
    );
    await expect(startAgent(cfg('source', { interface: '198.51.100.250' }), { logger: silent })).rejects.toThrow(/multicast network, or --no-scatter$/);
    const off = await startAgent(cfg('source', { interface: '198.51.100.250', enabled: false }), { logger: silent });
    await off.close();
  });

  it('a target whose converge port is taken says so, and a second start on freed ports works', async () => {
    const silent = pino({ level: 'silent' });
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as AddressInfo).port;
    const cfg = resolveConfig({ auth: { token: 't'.repeat(16) }, agent: { role: 'target', name: 't-busy', listen: '127.0.0.1:0', dataListen: `127.0.0.1:${port}`, register: false } });
    try {
      await expect(startAgent(cfg, { logger: silent })).rejects.toThrow(new RegExp(`^agent cannot listen for converge connections on 127\\.0\\.0\\.1:${port} \\(--data-listen\\): listen EADDRINUSE`));
    } finally {
      await new Promise((r) => busy.close(r));
    }
    const ok = await startAgent(cfg, { logger: silent });
    await ok.close();
  });
});

describe('PUT /v1/incoming/:vm (a source announces a QEMU machine to a target agent)', () => {
  it('a QEMU target takes it once, checks its files exist there; a simulated-VM target refuses it', async () => {
    const silent = pino({ level: 'silent' });
    const start = (fleet: 'sim' | 'qemu') =>
      startAgent(resolveConfig({ auth: { token: 't'.repeat(16) }, agent: { role: 'target', name: `t-${fleet}`, listen: '127.0.0.1:0', register: false, fleet } }), { logger: silent });
    const [q, s] = await Promise.all([start('qemu'), start('sim')]);
    try {
      const put = (a: typeof q, vm: string, machine: Record<string, unknown>) =>
        a.app.inject({ method: 'PUT', url: `/v1/incoming/${vm}`, headers: { authorization: `Bearer ${'t'.repeat(16)}` }, payload: { job: 'j1', machine } });
      const here = process.execPath; // a file that exists on this host
      const ok = await put(q, 'vm1', { memoryMiB: 64, kernel: here });
      expect(ok.statusCode, ok.body).toBe(200);
      expect(ok.json()).toEqual({ vm: 'vm1', job: 'j1' });
      const missing = await put(q, 'vm2', { memoryMiB: 64, kernel: '/nonexistent/vmlinux' });
      expect(missing.statusCode).toBe(422);
      expect(missing.json().message).toMatch(/has no kernel \/nonexistent\/vmlinux for VM vm2/);
      expect((await put(q, 'vm3', { memoryMiB: 'lots' })).statusCode).toBe(400);
      const sim = await put(s, 'vm1', { memoryMiB: 64, kernel: here });
      expect(sim.statusCode).toBe(422);
      expect(sim.json().message).toMatch(/receives simulated VMs .* cannot start QEMU guest vm1/);
    } finally {
      await Promise.all([q.close(), s.close()]);
    }
  });
});

describe('the evacuation summary', () => {
  const vm = (name: string, extra: Record<string, unknown>) => ({ name, target: 't1', ok: true, rounds: 2, forced: false, downtimeMs: 5, wireBytes: 1e6, plainBytes: 2e6, pagesWhole: 1, pagesStored: 0, pagesRef: 3, verified: false, ...extra });
  const report = (vms: unknown[]) =>
    ({ ok: true, vms, bytes: { wire: 1e6, converge: 1e6, scatter: 0, plainQemu: 2e6 }, index: { pages: 4, zeroPages: 0, distinct: 4, sharedAcrossVms: 0 }, phasesMs: { converge: 10 } }) as unknown as EvacuationReport;
  it('claims byte-identical only for VMs whose RAM was compared', () => {
    expect(formatSummary(report([vm('a', { verified: true, verifiedBy: 'ram' }), vm('b', { verified: true })]))).toMatch(/all 2 VMs rebuilt byte-identical on their targets/);
    expect(formatSummary(report([vm('a', { verified: true, verifiedBy: 'ram' })]))).toMatch(/^the VM was rebuilt byte-identical on its target$/m);
    const mixed = formatSummary(report([vm('a', { verified: true, verifiedBy: 'ram' }), vm('q', { verified: true, verifiedBy: 'running' }), vm('n', {})]));
    expect(mixed).toMatch(/all 3 VMs moved: 1 rebuilt byte-identical, 1 running on their targets \(RAM not compared\), 1 not verified/);
    expect(mixed).not.toMatch(/all 3 VMs rebuilt byte-identical/);
    expect(mixed).toMatch(/^q\s+t1 .* running$/m);
  });

  it("prints the scatter's notes", () => {
    const r = { ...report([vm('a', { verified: true, verifiedBy: 'ram' })]), scatter: { bytesSent: 0, datagrams: 0, repairs: 0, notes: ['scatter failed: cannot bind UDP; converge carried every page'] } } as unknown as EvacuationReport;
    expect(formatSummary(r)).toMatch(/^scatter: scatter failed: cannot bind UDP; converge carried every page$/m);
  });
});

describe('a QEMU target agent restarting (its guest records)', () => {
  it('ignores unreadable and malformed records, removes those of guests that are gone, and takes back none of them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsq-records-'));
    try {
      const record = (pid: number) => ({
        vm: 'vm1',
        job: 'j1',
        memoryBytes: 4096,
        machine: { memoryMiB: 64, kernel: '/k' },
        guest: { name: 'vm1', pid, pidPath: '/nonexistent/vm1.pid', qmpPath: '/nonexistent/vm1.qmp', serialPath: '', workDir: '/nonexistent', memoryMiB: 64 },
      });
      writeFileSync(join(dir, 'garbage.json'), '{ not json');
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...record(process.pid), guest: { pid: 'x' } }));
      // A live pid whose command line does not name the record's pidfile: not our QEMU, gone.
      writeFileSync(join(dir, 'gone.json'), JSON.stringify(record(process.pid)));
      const lines: string[] = [];
      const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
      const host = new TargetHost({ name: 't', host: '127.0.0.1', port: 0, logger, qemu: true, stateDir: dir });
      expect(await host.restore()).toEqual([]);
      expect(host.listVms()).toEqual([]);
      expect(readdirSync(dir).sort()).toEqual(['bad.json', 'garbage.json']);
      expect(lines.join('')).toMatch(/unreadable guest record ignored/);
      const malformed = lines.map((l) => JSON.parse(l) as { msg: string; problems?: string[] }).find((l) => l.msg === 'malformed guest record ignored');
      expect(malformed?.problems?.join(' ')).toMatch(/\/guest\/pid/);
      await host.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
