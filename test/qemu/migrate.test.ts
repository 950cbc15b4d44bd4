/**
 * Real QEMU: boot the workload guest, QMP against a live monitor, live migration over a unix
 * socket into a second QEMU, cancel and failure paths, and a stream capture kept for codec tests.
 * At most two guests run at once.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuSourceVm } from '../../src/agent/qemu-agents.js';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { buildGuest, DEFAULT_WORKLOAD, parseTicks, READY_RE, SHARED_LINE, TICK_RE, workloadAppend, type GuestImage } from '../../src/qemu/guest-builder.js';
import { killAllGuests, launchGuest, QEMU_DEFAULTS, TCG_RAM_PAD_KIB, type QemuGuest } from '../../src/qemu/launcher.js';
import { QmpCommandError } from '../../src/qemu/qmp.js';
import { qemuTestEnv, requireQemu } from './qemu-env.js';
import { captureRealStream } from './real-stream.js';

const env = await qemuTestEnv();
const run = requireQemu(env, 'QEMU migration tests');
const MEM = 128;
const MiB = 1024 * 1024;

/** Accepts connections and swallows the bytes (a migration target that never finishes). */
async function sink(path: string): Promise<{ server: Server; bytes: () => number; close: () => Promise<void> }> {
  let n = 0;
  const socks: Socket[] = [];
  const server = createServer((s) => {
    socks.push(s);
    s.on('data', (c: Buffer) => (n += c.length));
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(path, () => resolve()));
  return {
    server,
    bytes: () => n,
    close: async () => {
      for (const s of socks) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(!run).sequential('QEMU guest and live migration', () => {
  let image: GuestImage;
  let dir: string;
  let source: QemuGuest | undefined;
  let target: QemuGuest | undefined;
  let sourceMd5 = '';
  const append = workloadAppend();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmsq-mig-'));
    const t0 = Date.now();
    image = await buildGuest({ log: (m) => console.log(`guest build: ${m}`) });
    console.log(`guest image ${image.key} ready in ${Date.now() - t0} ms`);
  }, 180_000);

  afterAll(async () => {
    await killAllGuests();
    await rm(dir, { recursive: true, force: true });
  });

  it('boots the workload guest and ticks', async () => {
    const t0 = Date.now();
    // RAM in a shared file, as the source agent needs it for scanning.
    source = await launchGuest({ name: 'src', image, memoryMiB: MEM, append, sharedRam: true });
    const launched = Date.now() - t0;
    expect(source.pid).toBeGreaterThan(0);
    expect(source.isAlive()).toBe(true);
    const ready = await source.waitForSerial(READY_RE, 90_000);
    expect(ready[1]).toContain('uniq_mb=16');
    const m = await source.waitForSerial(TICK_RE, 30_000);
    console.log(`boot: launched in ${launched} ms, first TICK after ${Date.now() - t0} ms`);
    sourceMd5 = m[2] ?? '';
    expect(sourceMd5).toMatch(/^[0-9a-f]{32}$/);
    const next = await source.nextTick(15_000);
    expect(next.md5).toBe(sourceMd5);
    expect(await source.status()).toBe('running');

    // The guest's RAM is readable from the backing file: the shared region shows up as
    // identical pages of SHARED_LINE, the unique region does not repeat.
    expect(source.ramPath).toMatch(/^\/dev\/shm\//);
    const ram = await readFile(source.ramPath!);
    expect(ram.length).toBe(MEM * MiB + TCG_RAM_PAD_KIB * 1024);
    const sharedPage = Buffer.from(`${SHARED_LINE}\n`.repeat(64));
    let shared = 0;
    let zero = 0;
    const zeroPage = Buffer.alloc(4096);
    for (let off = 0; off < ram.length; off += 4096) {
      const p = ram.subarray(off, off + 4096);
      if (p.equals(sharedPage)) shared++;
      else if (p.equals(zeroPage)) zero++;
    }
    console.log(`RAM file: ${shared} shared-line pages, ${zero} zero pages of ${ram.length / 4096}`);
    expect(shared).toBeGreaterThanOrEqual(DEFAULT_WORKLOAD.sharedMiB * 256);
    expect(zero).toBeGreaterThan(0);
  }, 150_000);

  it('QMP against QEMU: bad commands give coded errors, stop/cont give timestamped events', async () => {
    const g = source!;
    const notFound = await g.qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(notFound).toBeInstanceOf(QmpCommandError);
    expect((notFound as QmpCommandError).code).toBe(ErrorCode.QEMU);
    expect((notFound as QmpCommandError).qmpClass).toBe('CommandNotFound');
    const badArg = await g.qmp.execute('migrate-set-parameters', { 'downtime-limit': 'soon' }).catch((e: unknown) => e);
    expect((badArg as QmpCommandError).qmpClass).toBe('GenericError');
    expect((badArg as QmpCommandError).qmpDesc).toMatch(/downtime-limit/);

    const before = Date.now();
    const stop = g.qmp.waitEvent('STOP', undefined, 5000);
    await g.qmp.execute('stop');
    const stopEv = await stop;
    expect(await g.status()).toBe('paused');
    const resume = g.qmp.waitEvent('RESUME', undefined, 5000);
    await g.cont();
    const resumeEv = await resume;
    // QEMU's wall-clock timestamps, not Node's arrival times.
    expect(stopEv.timeMs).toBeGreaterThan(before - 5000);
    expect(resumeEv.timeMs).toBeGreaterThanOrEqual(stopEv.timeMs);
    expect(Number.isInteger(stopEv.timestamp.microseconds)).toBe(true);
    expect(await g.status()).toBe('running');
  });

  it('timeouts: a frozen QEMU times a command out, the monitor recovers', async () => {
    const g = source!;
    process.kill(g.pid, 'SIGSTOP');
    try {
      const err = await g.qmp.execute('query-status', undefined, { timeoutMs: 300 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmsError);
      expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
    } finally {
      process.kill(g.pid, 'SIGCONT');
    }
    expect(await g.status()).toBe('running');
    const ev = await g.qmp.waitEvent('NO_SUCH_EVENT', undefined, 200).catch((e: unknown) => e);
    expect((ev as VmsError).code).toBe(ErrorCode.TIMEOUT);
    const ser = await g.waitForSerial(/NEVER PRINTED/, 300).catch((e: unknown) => e);
    expect((ser as VmsError).code).toBe(ErrorCode.TIMEOUT);
  });

  it('migrates live over a unix socket; the target ticks on with the same uniq_md5', async () => {
    const src = source!;
    const lastSrcTick = parseTicks(await src.serial()).pop()!;
    target = await launchGuest({ name: 'dst', image, memoryMiB: MEM, append, incoming: 'defer', daemonize: false });
    expect(await target.status()).toBe('inmigrate');
    const sock = join(dir, 'mig.sock');
    await target.migrateIncoming(`unix:${sock}`);
    const resumed = target.qmp.waitEvent('RESUME', undefined, 60_000);
    const t0 = Date.now();
    const stats = await src.migrateTo(`unix:${sock}`, { maxBandwidth: 128 * MiB, downtimeLimitMs: 300 });
    const wall = Date.now() - t0;
    await target.waitIncoming(30_000);
    const resumeEv = await resumed;
    const stopEv = stats.events.find((e) => e.event === 'STOP');
    console.log(
      `live migration ${MEM} MiB: wall ${wall} ms, total ${stats.totalTimeMs} ms, downtime ${stats.downtimeMs} ms, ` +
        `transferred ${stats.ram.transferred} B, normal ${stats.ram.normal}, duplicate ${stats.ram.duplicate}, ` +
        `dirty syncs ${stats.ram.dirtySyncCount}, source STOP -> target RESUME ${stopEv ? (resumeEv.timeMs - stopEv.timeMs).toFixed(1) : '?'} ms`,
    );
    expect(stats.status).toBe('completed');
    expect(stats.ram.normal).toBeGreaterThan((16 * MiB) / 4096); // at least the unique region
    expect(stats.ram.duplicate).toBeGreaterThan(0);
    expect(stats.ram.dirtySyncCount).toBeGreaterThanOrEqual(2);
    expect(stats.totalTimeMs).toBeGreaterThan(0);
    expect(stats.events.some((e) => e.event === 'MIGRATION' && e.data['status'] === 'completed')).toBe(true);
    expect(stopEv).toBeDefined();
    expect(await src.status()).toBe('postmigrate');
    expect(await target.status()).toBe('running');

    const tick = await target.nextTick(30_000);
    expect(tick.md5).toBe(sourceMd5);
    // The tick counter lives in guest memory: it continues where the source left off.
    expect(tick.n).toBeGreaterThan(lastSrcTick.n);
    const ramPath = src.ramPath!;
    await src.dispose();
    expect(src.isAlive()).toBe(false);
    expect(existsSync(ramPath)).toBe(false);
    expect(existsSync(src.workDir)).toBe(false);
    source = undefined;
  }, 120_000);

  it('migrate_cancel leaves the source running', async () => {
    const g = target!;
    const s = await sink(join(dir, 'sink1.sock'));
    try {
      const mig = g.migrateTo(`unix:${join(dir, 'sink1.sock')}`, { maxBandwidth: 1 * MiB });
      mig.catch(() => {});
      await new Promise((r) => setTimeout(r, 1000));
      expect(String((await g.queryMigrate())['status'])).toBe('active');
      await g.migrateCancel();
      const err = await mig.catch((e: unknown) => e);
      expect((err as VmsError).code).toBe(ErrorCode.CANCELLED);
      expect(s.bytes()).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
    expect(await g.status()).toBe('running');
    expect((await g.nextTick(20_000)).md5).toBe(sourceMd5);
  }, 60_000);

  it('a migration that takes too long is cancelled with TIMEOUT; the source keeps running', async () => {
    const g = target!;
    const s = await sink(join(dir, 'sink2.sock'));
    try {
      const err = await g.migrateTo(`unix:${join(dir, 'sink2.sock')}`, { maxBandwidth: 1 * MiB, timeoutMs: 1500 }).catch((e: unknown) => e);
      expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
      expect((err as VmsError).message).toMatch(/cancelled, the source keeps running/);
    } finally {
      await s.close();
    }
    expect(await g.status()).toBe('running');
    expect(['cancelled', 'failed']).toContain(String((await g.queryMigrate())['status']));
  }, 60_000);

  it("the source agent follows QEMU's pre-copy passes (dirty-sync-count) while it migrates", async () => {
    // A guest rewriting 4 MiB every ~0.1 s against 16 MiB/s and a 1 ms downtime limit never
    // converges: QEMU iterates until the agent's timeout cancels it, and the guest runs on.
    const g = await launchGuest({
      name: 'dirtier',
      image,
      memoryMiB: MEM,
      append: workloadAppend({ zeroMiB: 1, sharedMiB: 1, uniqueMiB: 1, dirtyMiB: 4, dirtyPagesPerTick: 1024, tickIntervalSec: 0.1 }),
      sharedRam: true,
    });
    try {
      await g.waitForSerial(TICK_RE, 60_000);
      const vm = new QemuSourceVm(g, { maxBandwidth: 16 * MiB, downtimeLimitMs: 1, timeoutMs: 5000 });
      let bytes = 0;
      const out = new Writable({
        write(chunk: Buffer, _enc, cb) {
          bytes += chunk.length;
          cb();
        },
      });
      const passes: number[] = [];
      const err = await vm.migrate(out, new AbortController().signal, { onPass: (n) => passes.push(n) }).catch((e: unknown) => e);
      console.log(`passes seen: ${passes.join(' ')}; ${(bytes / 1e6).toFixed(1)} MB`);
      expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
      expect(passes[0]).toBe(1);
      expect(passes.length).toBeGreaterThanOrEqual(3);
      for (let i = 1; i < passes.length; i++) expect(passes[i]!).toBeGreaterThan(passes[i - 1]!);
      const ram = vm.lastMigration!.queryMigrate['ram'] as Record<string, number> | undefined;
      if (ram) expect(passes.at(-1)!).toBeLessThanOrEqual(ram['dirty-sync-count']!);
      expect(await g.status()).toBe('running');
    } finally {
      await g.dispose();
    }
  }, 90_000);

  it('a migration to nowhere fails with a QEMU-coded error', async () => {
    const g = target!;
    const err = await g.migrateTo(`unix:${join(dir, 'nobody-listens.sock')}`, { timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsError);
    expect((err as VmsError).code).toBe(ErrorCode.QEMU);
    expect(await g.status()).toBe('running');
  }, 30_000);

  it('captures a real migration stream (kept for codec tests)', async () => {
    const g = target!;
    await g.nextTick(20_000);
    // Defaults again: the earlier tests lowered max-bandwidth.
    await g.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 128 * MiB });
    const t0 = Date.now();
    const cap = await captureRealStream(g, image, append);
    console.log(
      `captured ${cap.bytes} B in ${Date.now() - t0} ms to ${cap.path}: normal ${cap.stats.ram.normal}, duplicate ${cap.stats.ram.duplicate}, ` +
        `dirty syncs ${cap.stats.ram.dirtySyncCount}, downtime ${cap.stats.downtimeMs} ms`,
    );
    expect(cap.stream.subarray(0, 8).toString('hex')).toBe('5145564d00000003');
    expect(cap.stream[8]).toBe(0x07); // CONFIGURATION
    expect(cap.uniqMd5).toBe(sourceMd5);
    // Every byte QEMU counted reached us (transferred also counts the device state).
    expect(cap.bytes).toBeGreaterThanOrEqual(cap.stats.ram.normal * 4096);
    expect(Math.abs(cap.bytes - cap.stats.ram.transferred)).toBeLessThan(1 * MiB);
    expect(await g.status()).toBe('postmigrate');
    await g.dispose();
    target = undefined;
  }, 90_000);

  it('launch failures are reported with QEMU stderr and leave nothing behind', async () => {
    const err = await launchGuest({ name: 'bad', image, memoryMiB: MEM, extraArgs: ['-no-such-option'] }).catch((e: unknown) => e);
    expect((err as VmsError).code).toBe(ErrorCode.QEMU);
    expect((err as VmsError).message).toMatch(/no-such-option/);
    const err2 = await launchGuest({ name: 'bad2', image, memoryMiB: MEM, daemonize: false, extraArgs: ['-no-such-option'] }).catch((e: unknown) => e);
    expect((err2 as VmsError).code).toBe(ErrorCode.QEMU);
    expect((err2 as VmsError).message).toMatch(/no-such-option/);
    expect(QEMU_DEFAULTS.accel).toBe('tcg');
  }, 30_000);
});
