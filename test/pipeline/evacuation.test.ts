import { execFile } from 'node:child_process';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { SimSourceVm, SimTargetHost, verifySimVm } from '../../src/agent/sim-agents.js';
import { migrateVm, type VmMigrationReport } from '../../src/agent/source-agent.js';
import type { SourceVm } from '../../src/agent/source-vm.js';
import { MigrationPriority, TURN_AFTER_PASSES } from '../../src/agent/migration-priority.js';
import { TargetAgent } from '../../src/agent/target-agent.js';
import { resolveConfig } from '../../src/config.js';
import { checkDemoFits, demoConfig, runSimEvacuation } from '../../src/cli/demo-command.js';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { ContentIndex } from '../../src/memory/content-index.js';
import { ContentSet } from '../../src/memory/content-set.js';
import { defaultFleet } from '../../src/memory/sim-profile.js';
import type { ConvergeSourceStats } from '../../src/transport/converge-source.js';

const MIGRATION = { maxBandwidthBytesPerSec: 0, downtimeLimitMs: 300, maxRounds: 10 };
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function fleet(n: number, memoryMiB: number, seed = 7, migration = MIGRATION): SimSourceVm[] {
  const vms = defaultFleet({ vms: n, memoryMiB, seed, dirtyPagesPerSec: 2000, workingSetPages: 512 }).map((s) => new SimSourceVm(s, migration));
  cleanups.push(() => vms.forEach((v) => v.vm.stop()));
  return vms;
}

async function targetAgent(name: string): Promise<{ agent: TargetAgent; host: SimTargetHost; addr: { name: string; host: string; port: number } }> {
  const host = new SimTargetHost();
  const agent = new TargetAgent({ name, incoming: host.incoming });
  const a = await agent.listen();
  cleanups.push(() => agent.close());
  return { agent, host, addr: { name, ...a } };
}

/**
 * Migrates `a` (wrapping the simulated `simA`) and `b` side by side to `t`, with `priority` if
 * given; once `ready()` holds, measures how many stream bytes B's converge source took between
 * `fromMs` and `fromMs` + 600 ms later. Both VMs must rebuild exactly.
 */
async function sideBySide(o: {
  a: SourceVm;
  simA: SimSourceVm;
  b: SimSourceVm;
  t: { host: SimTargetHost; addr: { name: string; host: string; port: number } };
  job: string;
  priority: MigrationPriority | undefined;
  ready: () => boolean;
  fromMs: number;
}): Promise<{ advanced: number; a: VmMigrationReport }> {
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const prio = o.priority ? { priority: o.priority } : {};
  let bStats: ConvergeSourceStats | undefined;
  const both = Promise.all([
    migrateVm({ vm: o.a, target: o.t.addr, job: o.job, ...prio }),
    migrateVm({ vm: o.b, target: o.t.addr, job: o.job, onStats: (st) => (bStats ??= st), ...prio }),
  ]);
  while (!o.ready()) await sleep(10);
  await sleep(o.fromMs);
  const from = bStats!.streamBytes;
  await sleep(600);
  const advanced = bStats!.streamBytes - from;
  const [ra] = await both;
  expect(verifySimVm(o.simA, o.t.host)).toEqual({ verified: true });
  expect(verifySimVm(o.b, o.t.host)).toEqual({ verified: true });
  return { advanced, a: ra };
}

/** A TCP relay that lets a test damage or cut the traffic from source to target. */
async function relay(to: { host: string; port: number }, tamper: (chunk: Buffer, seen: number, cut: () => void) => Buffer | null): Promise<{ host: string; port: number }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((down) => {
    const up = connect(to.port, to.host);
    sockets.add(up).add(down);
    const cut = (): void => {
      up.destroy();
      down.destroy();
    };
    let seen = 0;
    down.on('data', (c: Buffer) => {
      const out = tamper(c, seen, cut);
      seen += c.length;
      if (out) up.write(out);
    });
    up.on('data', (c) => down.write(c));
    down.on('end', () => up.end());
    up.on('end', () => down.end());
    down.on('error', () => up.destroy());
    up.on('error', () => down.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const so of sockets) so.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { host: '127.0.0.1', port: (server.address() as AddressInfo).port };
}

describe('evacuation pipeline (simulated VMs, loopback)', () => {
  it('rebuilds every VM byte for byte and sends less than plain QEMU', async () => {
    const cfg = resolveConfig({
      fleet: { vms: 4, memoryMiB: 16, dirtyPagesPerSec: 1000, workingSetPages: 256 },
      targets: 2,
      scatter: { enabled: false },
      plan: { strategy: 'round-robin' },
      migration: { maxBandwidthMiBps: 0 },
    });
    const events: string[] = [];
    const report = await runSimEvacuation(cfg, { onEvent: (e) => e.type === 'phase' && events.push(`${e.phase}:${e.state}`) });
    expect(report.ok).toBe(true);
    expect(report.vms.map((v) => v.verified)).toEqual([true, true, true, true]);
    expect(report.bytes.wire).toBeLessThan(report.bytes.plainQemu);
    // Shared OS content goes whole once per target, then as references.
    expect(report.vms.reduce((s, v) => s + v.pagesRef, 0)).toBeGreaterThan(0);
    expect(events).toEqual(['collect:start', 'collect:end', 'plan:start', 'plan:end', 'scatter:skipped', 'converge:start', 'converge:end', 'verify:start', 'verify:end']);
  });

  it('rebuilds byte for byte with LZ4-compressed converge frames, sending fewer bytes', async () => {
    const [a] = fleet(1, 16);
    const t = await targetAgent('t0');
    const r = await migrateVm({ vm: a!, target: t.addr, job: 'lz4', compress: 'lz4' });
    expect(r.stats.compressedFrames).toBeGreaterThan(0);
    expect(r.stats.wireBytes).toBeLessThan(r.stats.streamBytes);
    expect(verifySimVm(a!, t.host)).toEqual({ verified: true });
  });

  it('never merges pages on a fast-hash match: every page hashing alike still rebuilds exactly', async () => {
    const [a, b] = fleet(2, 8);
    const index = await ContentIndex.create({ hash: () => 42n }); // every page collides
    index.addVm(a!.name, a!.ram);
    index.addVm(b!.name, b!.ram);
    expect(index.stats().hashCollisions).toBeGreaterThan(0);
    const t = await targetAgent('t0');
    const holds = new ContentSet();
    for (const vm of [a!, b!]) {
      const r = await migrateVm({ vm, target: t.addr, job: 'collide', contents: index, holds });
      expect(r.stats.pagesRef + r.stats.pagesStored).toBeGreaterThan(0);
      expect(verifySimVm(vm, t.host)).toEqual({ verified: true });
    }
  });

  it('a corrupted byte in transit fails the VM loudly; the target never resumes it and the source keeps running', async () => {
    const [vm] = fleet(1, 8);
    const t = await targetAgent('t0');
    const index = await ContentIndex.create();
    index.addVm(vm!.name, vm!.ram);
    // Flip one byte deep inside the page data, well after the stream header.
    const addr = await relay(t.addr, (c, seen) => {
      const at = 1_000_000 - seen;
      if (at >= 0 && at < c.length) {
        const d = Buffer.from(c);
        d[at] = d[at]! ^ 0x5a;
        return d;
      }
      return c;
    });
    const err = await migrateVm({ vm: vm!, target: { ...t.addr, ...addr }, job: 'corrupt', contents: index, holds: new ContentSet() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsError);
    expect(t.host.images.has(vm!.name)).toBe(false);
    expect(vm!.vm.state).toBe('running');
    await expect(t.agent.resultOf(vm!.name)).rejects.toThrow();
  });

  it('a connection cut mid-stream fails the VM; the target reports truncation and never resumes', async () => {
    const [vm] = fleet(1, 8);
    const t = await targetAgent('t0');
    const addr = await relay(t.addr, (c, seen, cut) => {
      if (seen + c.length > 1_000_000) {
        cut();
        return null;
      }
      return c;
    });
    const err = await migrateVm({ vm: vm!, target: { ...t.addr, ...addr }, job: 'cut' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsError);
    expect(vm!.vm.state).toBe('running');
    expect(t.host.images.has(vm!.name)).toBe(false);
    const targetErr = await t.agent.resultOf(vm!.name)!.catch((e: unknown) => e);
    expect((targetErr as VmsError).code).toMatch(/STREAM_TRUNCATED|CONVERGE/);
  });

  it.each([undefined, 'lz4' as const])('cancelling a migration (compress %s) resumes the source and discards the target', async (compress) => {
    // Rate-limited so that the first pass takes well over 30 ms: the cancel lands mid-migration
    // (unlimited, a fast machine sometimes finished 32 MiB before the 30 ms were up).
    const [vm] = fleet(1, 32, 7, { ...MIGRATION, maxBandwidthBytesPerSec: 64 * 1024 * 1024 });
    const t = await targetAgent('t0');
    const ac = new AbortController();
    setTimeout(() => ac.abort(new VmsError(ErrorCode.CANCELLED, 'test cancel')), 30);
    let stats: ConvergeSourceStats | undefined;
    const err = await migrateVm({ vm: vm!, target: t.addr, job: 'cancel', signal: ac.signal, onStats: (s) => (stats = s), ...(compress ? { compress } : {}) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsError);
    expect(vm!.vm.state).toBe('running');
    expect(t.host.images.has(vm!.name)).toBe(false);
    // Frames still in compression when the abort went out are dropped, not sent after it.
    const sent = stats!.wireBytes;
    await new Promise((r) => setTimeout(r, 100));
    expect(stats!.wireBytes).toBe(sent);
  });

  it("stop-and-copy first: while one VM is stopped, another VM's stream is held, and both rebuild exactly", async () => {
    // A (unlimited) stops early and is kept 'stopped' for 1.5 s after its stream ends; B (6 MiB/s,
    // a first pass of 2.7 s) is still in pre-copy all that time. Sampled 0.3 s and 0.9 s after A
    // stopped, B's stream must not have advanced with the priority, and must have without it.
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    const run = async (priority: MigrationPriority | undefined): Promise<{ advanced: number }> => {
      const [a, b] = fleet(2, 16, 11, { ...MIGRATION, maxBandwidthBytesPerSec: 6 * 1024 * 1024 });
      const fastA = new SimSourceVm(a!.spec, MIGRATION);
      cleanups.push(() => fastA.vm.stop());
      const t = await targetAgent(`t-${priority ? 'prio' : 'plain'}`);
      let stoppedAt = -1;
      const slowLeaving: SourceVm = {
        name: fastA.name,
        memoryBytes: fastA.memoryBytes,
        ram: fastA.ram,
        resume: () => fastA.resume(),
        migrate: async (out, signal, hooks) => {
          const r = await fastA.migrate(out, signal, {
            onStopped: () => {
              stoppedAt = performance.now();
              hooks?.onStopped?.();
            },
          });
          await sleep(1500);
          return r;
        },
      };
      const { advanced } = await sideBySide({ a: slowLeaving, simA: fastA, b: b!, t, job: `prio-${priority ? 'on' : 'off'}`, priority, ready: () => stoppedAt >= 0, fromMs: 300 });
      return { advanced };
    };
    const priority = new MigrationPriority({ convergeInTurn: false });
    expect((await run(priority)).advanced).toBe(0);
    expect(priority.stats.stopCopyFirst.holds).toBeGreaterThan(0);
    expect((await run(undefined)).advanced).toBeGreaterThan(1024 * 1024);
  });

  it("converge in turn: while a VM that does not converge has its turn, another VM is held, and both rebuild exactly", async () => {
    // A (8 MiB/s, a 2 MiB working set dirtied at 16 MB/s) cannot converge and iterates until its
    // round limit (8 passes, ~0.25 s each after the first); B (2 MiB/s,
    // a first pass of ~2.7 s, then a stop-and-copy within its 2 s limit) is still in its first
    // pass when A's pass TURN_AFTER_PASSES + 1 starts. Sampled 0.2 s and 0.8 s after that, B's
    // stream must not have advanced with the priority, and must have without it.
    const run = async (priority: MigrationPriority | undefined): Promise<{ advanced: number; aRounds: number; passes: number[]; stoppedAfter: number }> => {
      const [a, b] = fleet(2, 16, 13, { ...MIGRATION, maxBandwidthBytesPerSec: 2 * 1024 * 1024, downtimeLimitMs: 2000 });
      const slowA = new SimSourceVm({ ...a!.spec, dirtyPagesPerSec: 4000 }, { maxBandwidthBytesPerSec: 8 * 1024 * 1024, downtimeLimitMs: 1, maxRounds: 8 });
      cleanups.push(() => slowA.vm.stop());
      const t = await targetAgent(`t-turn-${priority ? 'prio' : 'plain'}`);
      let turnAt = -1;
      const passes: number[] = [];
      let stoppedAfter = -1;
      const watchedA: SourceVm = {
        name: slowA.name,
        memoryBytes: slowA.memoryBytes,
        ram: slowA.ram,
        resume: () => slowA.resume(),
        migrate: (out, signal, hooks) =>
          slowA.migrate(out, signal, {
            onPass: (n) => {
              passes.push(n);
              if (n === TURN_AFTER_PASSES + 1) turnAt = performance.now();
              hooks?.onPass?.(n);
            },
            onStopped: () => {
              stoppedAfter = passes.length;
              hooks?.onStopped?.();
            },
          }),
      };
      const { advanced, a: ra } = await sideBySide({ a: watchedA, simA: slowA, b: b!, t, job: `turn-${priority ? 'on' : 'off'}`, priority, ready: () => turnAt >= 0, fromMs: 200 });
      return { advanced, aRounds: ra.rounds, passes, stoppedAfter };
    };
    const priority = new MigrationPriority({ stopCopyFirst: false });
    const on = await run(priority);
    expect(on.passes).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(on.stoppedAfter).toBe(8);
    expect(on.aRounds).toBe(8);
    expect(on.advanced).toBe(0);
    expect(priority.stats.convergeInTurn.holds).toBeGreaterThan(0);
    expect((await run(undefined)).advanced).toBeGreaterThan(512 * 1024);
  });

  it('an unreachable target agent is a clear error and the source keeps running', async () => {
    const [vm] = fleet(1, 8);
    const err = (await migrateVm({ vm: vm!, target: { name: 'gone', host: '127.0.0.1', port: 1 }, job: 'x' }).catch((e: unknown) => e)) as VmsError;
    expect(err.code).toBe(ErrorCode.CONVERGE);
    expect(err.message).toMatch(/cannot reach the target agent at 127.0.0.1:1/);
    expect(vm!.vm.state).toBe('running');
  });
});

describe('vmscatter demo --json', () => {
  it('prints one JSON summary with every VM verified and fewer bytes than plain QEMU', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'demo', '--json', '--vms', '3', '--memory-mib', '16', '--targets', '2', '--no-scatter'],
      { cwd: process.cwd(), maxBuffer: 16 * 1024 * 1024 },
    );
    const r = JSON.parse(stdout) as { vms: Array<{ verified: boolean }>; bytes: { wire: number; plainQemu: number } };
    expect(r.vms).toHaveLength(3);
    expect(r.vms.every((v) => v.verified === true)).toBe(true);
    expect(r.bytes.wire).toBeLessThan(r.bytes.plainQemu);
  });

  it('rejects bad flags with a clear error and exit code 2', async () => {
    const err = (await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'demo', '--vms', '0'], { cwd: process.cwd() }).catch((e: unknown) => e)) as {
      code: number;
      stderr: string;
    };
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/fleet\/vms must be >= 1/);
  });

  it('refuses a fleet the machine cannot hold, before starting anything', async () => {
    // 4096 x 64 GiB: the schema allows it, no machine holds the ~150 TiB it would need.
    const err = (await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'demo', '--vms', '4096', '--memory-mib', '65536'], { cwd: process.cwd() }).catch((e: unknown) => e)) as {
      code: number;
      stderr: string;
    };
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/4096 VMs x 65536 MiB needs about 157286\.9 GiB here .*use fewer or smaller VMs/);
    // The default fleet fits a machine of 4 GiB; 8 x 4 GiB needs about 20 GiB.
    expect(() => checkDemoFits(demoConfig({}), 4 * 2 ** 30)).not.toThrow();
    expect(() => checkDemoFits(demoConfig({ memoryMib: 4096 }), 16 * 2 ** 30)).toThrow(/needs about 19\.7 GiB/);
  });

  it('takes --downtime-limit-ms into the migration config, and rejects a bad one before starting anything', async () => {
    expect(demoConfig({ downtimeLimitMs: 20 }).migration.downtimeLimitMs).toBe(20);
    expect(demoConfig({}).migration.downtimeLimitMs).toBe(300);
    for (const args of [['demo', '--downtime-limit-ms', 'soon'], ['demo', '--qemu', '--downtime-limit-ms', '0']]) {
      const err = (await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: process.cwd() }).catch((e: unknown) => e)) as {
        code: number;
        stderr: string;
      };
      expect(err.code).toBe(2);
      expect(err.stderr).toMatch(/downtime-?limit-?ms/i);
    }
  });
});
