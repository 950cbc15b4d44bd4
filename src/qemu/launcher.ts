/**
 * Starts QEMU guests and drives their migration through QMP.
 *
 * A guest gets its own work directory holding the QMP socket, serial log, pidfile (and, when not
 * daemonized, QEMU's stderr log). Processes are addressed by pid only, and only after checking
 * that the pid still belongs to the QEMU we started (its command line names our pidfile).
 * Every guest started here is tracked; `killAllGuests()` and a process 'exit' hook make sure no
 * QEMU outlives its creator by accident.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, VmsError } from '../errors.js';
import { TICK_RE, workloadAppend, type GuestImage, type Tick, type WorkloadParams } from './guest-builder.js';
import { QmpClient, type QmpEvent } from './qmp.js';

export const QEMU_DEFAULTS = {
  binary: 'qemu-system-x86_64',
  machine: 'pc',
  accel: 'tcg',
  cpu: 'qemu64',
  smp: 1,
  memoryMiB: 256,
  /** Time from launch to a connected QMP monitor. */
  startTimeoutMs: 20_000,
  /** SIGTERM, then SIGKILL after this long. */
  killGraceMs: 3_000,
  migrationTimeoutMs: 120_000,
} as const;

export interface LaunchOptions {
  /** Kernel + initramfs from buildGuest(); or give kernel/initrd paths. */
  readonly image?: GuestImage;
  readonly kernel?: string;
  readonly initrd?: string;
  /** Kernel command line. Default: workloadAppend(workload). */
  readonly append?: string;
  readonly workload?: Partial<WorkloadParams>;
  /** Used in file names and messages. Default "guest". */
  readonly name?: string;
  /** Where the QMP socket, serial log and pidfile go. Default: a fresh dir under os.tmpdir(). */
  readonly workDir?: string;
  readonly memoryMiB?: number;
  /** QEMU accelerator ("tcg", "kvm", ...). Default tcg. */
  readonly accel?: string;
  readonly cpu?: string;
  readonly smp?: number;
  readonly machine?: string;
  /**
   * Guest RAM as a shared file (memory-backend-file, share=on), readable by other processes.
   * `true`: a new file under /dev/shm, removed by dispose(). A path: that file (kept).
   */
  readonly sharedRam?: boolean | string;
  /**
   * With sharedRam: allocate the file's pages at start (prealloc=on). A migration target wants
   * this: otherwise every incoming page, zero pages included, first faults a new page into the
   * shared file (allocate + clear), which made target loads several times slower.
   */
  readonly preallocRam?: boolean;
  /** `-incoming` argument: "defer" (then migrateIncoming()) or a URI. */
  readonly incoming?: string;
  /** `-S`: do not start the CPUs. */
  readonly paused?: boolean;
  /**
   * Run with -daemonize (default). With false, QEMU runs detached but as our child and its
   * stderr goes to `<name>.log` in the work dir: error messages of a failed incoming migration
   * are kept (a daemonized QEMU sends them to /dev/null).
   */
  readonly daemonize?: boolean;
  readonly qemuBinary?: string;
  readonly extraArgs?: readonly string[];
  readonly startTimeoutMs?: number;
}

export interface MigrationRamStats {
  readonly transferred: number;
  readonly total: number;
  readonly remaining: number;
  /** Pages sent as ZERO records. */
  readonly duplicate: number;
  /** Pages sent as PAGE records. */
  readonly normal: number;
  readonly normalBytes: number;
  readonly skipped: number;
  /** Pre-copy iterations. */
  readonly dirtySyncCount: number;
  readonly mbps: number;
  readonly pagesPerSecond: number;
  readonly dirtyPagesRate: number;
  readonly precopyBytes: number;
  readonly downtimeBytes: number;
}

export interface MigrationStats {
  readonly status: string;
  readonly totalTimeMs: number;
  readonly downtimeMs: number;
  readonly setupTimeMs: number;
  readonly ram: MigrationRamStats;
  /** Events seen on the source while migrating (STOP, MIGRATION, MIGRATION_PASS, ...). */
  readonly events: readonly QmpEvent[];
  /** query-migrate as QEMU returned it. */
  readonly raw: Record<string, unknown>;
}

export interface MigrateOptions {
  /** Bytes per second (QEMU's max-bandwidth). */
  readonly maxBandwidth?: number;
  /** Milliseconds (QEMU's downtime-limit). */
  readonly downtimeLimitMs?: number;
  /** Extra migration capabilities, e.g. { 'x-ignore-shared': true }. "events" is always on. */
  readonly capabilities?: Readonly<Record<string, boolean>>;
  /** Extra migrate-set-parameters arguments. */
  readonly parameters?: Readonly<Record<string, unknown>>;
  /** On timeout the migration is cancelled (the source keeps running) and TIMEOUT is thrown. */
  readonly timeoutMs?: number;
  /** Called with each query-migrate poll while the migration runs. */
  readonly onProgress?: (raw: Record<string, unknown>) => void;
  readonly pollIntervalMs?: number;
}

export interface IncomingOptions {
  /** Must match the source's (x-ignore-shared in particular). "events" is always on. */
  readonly capabilities?: Readonly<Record<string, boolean>>;
}

const live = new Set<QemuGuest>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const g of live) g.killSync();
  });
}

/** Kill every guest this process started and has not disposed of. */
export async function killAllGuests(): Promise<void> {
  await Promise.all([...live].map((g) => g.dispose()));
}

export interface QemuCheck {
  readonly ok: boolean;
  readonly version?: string;
  readonly reason?: string;
}

/** Is QEMU installed? For tests that skip (or fail under CI) without it. */
export async function checkQemu(binary: string = QEMU_DEFAULTS.binary): Promise<QemuCheck> {
  return new Promise((resolve) => {
    const child = spawn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.on('error', (e) => resolve({ ok: false, reason: `${binary} not runnable: ${e.message} (apt-get install qemu-system-x86)` }));
    child.on('close', (code) => {
      if (code !== 0) resolve({ ok: false, reason: `${binary} --version exited with ${code}` });
      else resolve({ ok: true, version: /version (\S+)/.exec(out)?.[1] ?? out.trim() });
    });
  });
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function toMigrationStats(raw: Record<string, unknown>, events: readonly QmpEvent[] = []): MigrationStats {
  const r = isRecord(raw['ram']) ? raw['ram'] : {};
  return {
    status: String(raw['status'] ?? 'none'),
    totalTimeMs: num(raw['total-time']),
    downtimeMs: num(raw['downtime']),
    setupTimeMs: num(raw['setup-time']),
    ram: {
      transferred: num(r['transferred']),
      total: num(r['total']),
      remaining: num(r['remaining']),
      duplicate: num(r['duplicate']),
      normal: num(r['normal']),
      normalBytes: num(r['normal-bytes']),
      skipped: num(r['skipped']),
      dirtySyncCount: num(r['dirty-sync-count']),
      mbps: num(r['mbps']),
      pagesPerSecond: num(r['pages-per-second']),
      dirtyPagesRate: num(r['dirty-pages-rate']),
      precopyBytes: num(r['precopy-bytes']),
      downtimeBytes: num(r['downtime-bytes']),
    },
    events,
    raw,
  };
}

const FINAL_STATES = new Set(['completed', 'failed', 'cancelled']);

export class QemuGuest {
  readonly name: string;
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly workDir: string;
  readonly serialPath: string;
  readonly qmpPath: string;
  readonly pidPath: string;
  /** QEMU's stderr (only when not daemonized). */
  readonly logPath: string | undefined;
  /** The memory-backend file, when RAM is shared. */
  readonly ramPath: string | undefined;
  readonly memoryMiB: number;
  readonly args: readonly string[];
  /**
   * Started by someone else and only attached to through its QMP socket (attachGuest): never
   * signalled, killed or cleaned up here; it is alive while its QMP connection is.
   */
  readonly adopted: boolean;
  private readonly ownsWorkDir: boolean;
  private readonly ownsRamFile: boolean;
  private exited = false;
  private disposed = false;

  /** @internal use launchGuest() */
  constructor(init: {
    name: string;
    pid: number;
    qmp: QmpClient;
    workDir: string;
    ownsWorkDir: boolean;
    serialPath: string;
    qmpPath: string;
    pidPath: string;
    logPath: string | undefined;
    ramPath: string | undefined;
    ownsRamFile: boolean;
    memoryMiB: number;
    args: readonly string[];
    adopted?: boolean;
  }) {
    this.adopted = init.adopted === true;
    this.name = init.name;
    this.pid = init.pid;
    this.qmp = init.qmp;
    this.workDir = init.workDir;
    this.ownsWorkDir = init.ownsWorkDir;
    this.serialPath = init.serialPath;
    this.qmpPath = init.qmpPath;
    this.pidPath = init.pidPath;
    this.logPath = init.logPath;
    this.ramPath = init.ramPath;
    this.ownsRamFile = init.ownsRamFile;
    this.memoryMiB = init.memoryMiB;
    this.args = init.args;
    if (this.adopted) return;
    live.add(this);
    installExitHook();
  }

  /** True while our QEMU process exists (a zombie counts as gone); adopted: while QMP is connected. */
  isAlive(): boolean {
    if (this.exited) return false;
    if (this.adopted) return !this.qmp.closed;
    try {
      const st = readFileSync(`/proc/${this.pid}/stat`, 'latin1');
      const state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
      if (state === 'Z' || state === 'X') return false;
      // The pid may have been recycled: ours names our pidfile on its command line.
      const cmdline = readFileSync(`/proc/${this.pid}/cmdline`, 'latin1');
      if (!cmdline.includes(this.pidPath)) return false;
      return true;
    } catch {
      return false;
    }
  }

  /** The whole serial log so far. */
  async serial(): Promise<string> {
    try {
      return await readFile(this.serialPath, 'latin1');
    } catch {
      return '';
    }
  }

  /** Current length of the serial log: pass it as `from` to wait only for newer output. */
  async serialOffset(): Promise<number> {
    try {
      return (await stat(this.serialPath)).size;
    } catch {
      return 0;
    }
  }

  /**
   * Wait until the serial log (from byte `from` on) matches `re`. Fails early with QEMU's
   * last output when the process exits.
   */
  async waitForSerial(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = (await this.serial()).slice(from);
      const m = new RegExp(re.source, re.flags.replace('g', '')).exec(text);
      if (m !== null) return m;
      if (!this.isAlive()) {
        throw new VmsError(
          ErrorCode.QEMU,
          `guest ${this.name} (pid ${this.pid}) exited while waiting for ${re} on its serial port; ${await this.lastWords()}`,
        );
      }
      if (Date.now() >= deadline) {
        throw new VmsError(
          ErrorCode.TIMEOUT,
          `guest ${this.name}: ${re} did not appear on the serial port within ${timeoutMs} ms; last output: ${JSON.stringify(text.slice(-300))}`,
        );
      }
      await sleep(100);
    }
  }

  /** The next TICK line written after this call. */
  async nextTick(timeoutMs: number): Promise<Tick> {
    const m = await this.waitForSerial(TICK_RE, timeoutMs, await this.serialOffset());
    return { n: Number(m[1]), md5: m[2] ?? '' };
  }

  /** query-status: "running", "paused", "inmigrate", "postmigrate", "prelaunch", ... */
  async status(): Promise<string> {
    const r = await this.qmp.execute<{ status: string }>('query-status');
    return r.status;
  }

  async cont(): Promise<void> {
    await this.qmp.execute('cont');
  }

  async queryMigrate(): Promise<Record<string, unknown>> {
    return this.qmp.execute<Record<string, unknown>>('query-migrate');
  }

  async setMigrationCapabilities(caps: Readonly<Record<string, boolean>>): Promise<void> {
    const list = Object.entries({ events: true, ...caps }).map(([capability, state]) => ({ capability, state }));
    await this.qmp.execute('migrate-set-capabilities', { capabilities: list });
  }

  /**
   * Live-migrate to `uri` ("unix:/path", "tcp:host:port", "exec:cmd") and wait for the end.
   * Resolves with QEMU's statistics on success; the source is then in "postmigrate".
   * Throws VmsError(QEMU) when QEMU reports failure, CANCELLED when cancelled, TIMEOUT (after
   * cancelling, so the source keeps running) when it takes longer than timeoutMs.
   */
  async migrateTo(uri: string, opts: MigrateOptions = {}): Promise<MigrationStats> {
    const timeoutMs = opts.timeoutMs ?? QEMU_DEFAULTS.migrationTimeoutMs;
    const pollMs = opts.pollIntervalMs ?? 200;
    await this.setMigrationCapabilities(opts.capabilities ?? {});
    const params: Record<string, unknown> = { ...opts.parameters };
    if (opts.maxBandwidth !== undefined) params['max-bandwidth'] = Math.round(opts.maxBandwidth);
    if (opts.downtimeLimitMs !== undefined) params['downtime-limit'] = Math.round(opts.downtimeLimitMs);
    if (Object.keys(params).length > 0) await this.qmp.execute('migrate-set-parameters', params);

    const events: QmpEvent[] = [];
    let finalEvent: string | undefined;
    const onEvent = (ev: QmpEvent): void => {
      events.push(ev);
      if (ev.event === 'MIGRATION' && FINAL_STATES.has(String(ev.data['status']))) finalEvent = String(ev.data['status']);
    };
    this.qmp.on('event', onEvent);
    try {
      await this.qmp.execute('migrate', { uri });
      const deadline = Date.now() + timeoutMs;
      let raw = await this.queryMigrate();
      // The MIGRATION event ends the wait early; polling covers progress and a missed event.
      while (!FINAL_STATES.has(String(raw['status'])) && finalEvent === undefined) {
        opts.onProgress?.(raw);
        if (Date.now() >= deadline) {
          await this.migrateCancel().catch(() => {});
          throw new VmsError(
            ErrorCode.TIMEOUT,
            `migration of ${this.name} to ${uri} did not finish within ${timeoutMs} ms (status ${String(raw['status'])}, ` +
              `${num(isRecord(raw['ram']) ? raw['ram']['dirty-sync-count'] : 0)} dirty syncs); cancelled, the source keeps running. ` +
              'Raise max-bandwidth or downtime-limit, or lower the dirty rate.',
          );
        }
        await Promise.race([sleep(pollMs), this.qmp.waitEvent('MIGRATION', (e) => FINAL_STATES.has(String(e.data['status'])), pollMs).catch(() => {})]);
        raw = await this.queryMigrate();
      }
      if (!FINAL_STATES.has(String(raw['status']))) raw = await this.queryMigrate();
      // QEMU announces "completed" before it stores total-time and downtime (7.2:
      // migration_calculate_complete runs after the state change); wait for them briefly.
      for (let i = 0; i < 100 && String(raw['status']) === 'completed' && num(raw['total-time']) === 0; i++) {
        await sleep(20);
        raw = await this.queryMigrate();
      }
      const stats = toMigrationStats(raw, events);
      if (stats.status === 'failed') {
        throw new VmsError(ErrorCode.QEMU, `migration of ${this.name} to ${uri} failed: ${String(raw['error-desc'] ?? 'no error-desc from QEMU')}`);
      }
      if (stats.status === 'cancelled') {
        throw new VmsError(ErrorCode.CANCELLED, `migration of ${this.name} to ${uri} was cancelled`);
      }
      return stats;
    } finally {
      this.qmp.off('event', onEvent);
    }
  }

  /** Cancel an outgoing migration and wait until QEMU says so; the source runs on. */
  async migrateCancel(timeoutMs = 10_000): Promise<void> {
    await this.qmp.execute('migrate_cancel');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = String((await this.queryMigrate())['status']);
      if (s === 'cancelled' || s === 'failed' || s === 'completed' || s === 'none') return;
      if (Date.now() >= deadline) throw new VmsError(ErrorCode.TIMEOUT, `migrate_cancel on ${this.name}: still ${s} after ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  /** Start listening for an incoming migration (the guest was started with incoming "defer"). */
  async migrateIncoming(uri: string, opts: IncomingOptions = {}): Promise<void> {
    await this.setMigrationCapabilities(opts.capabilities ?? {});
    await this.qmp.execute('migrate-incoming', { uri });
  }

  /**
   * Wait until an incoming migration has been loaded (query-migrate "completed"); unless the
   * guest was started paused, also until it runs. Throws with QEMU's own message if it fails.
   */
  async waitIncoming(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let raw: Record<string, unknown> | undefined;
      let status: string | undefined;
      try {
        raw = await this.queryMigrate();
        status = await this.status();
      } catch (err) {
        if (this.qmp.closed || !this.isAlive()) {
          await this.waitForExit(2000);
          throw new VmsError(ErrorCode.QEMU, `incoming migration into ${this.name} failed: QEMU exited; ${await this.lastWords()}`, { cause: err });
        }
        throw err;
      }
      const ms = String(raw['status'] ?? 'none');
      if (ms === 'failed') {
        throw new VmsError(ErrorCode.QEMU, `incoming migration into ${this.name} failed: ${String(raw['error-desc'] ?? '')}; ${await this.lastWords()}`);
      }
      if (ms === 'completed') {
        // Without -S, QEMU starts the CPUs right after loading; with -S it stays paused.
        const startedPaused = this.args.includes('-S');
        if (startedPaused ? status !== 'inmigrate' : status === 'running') return;
      }
      if (Date.now() >= deadline) {
        throw new VmsError(ErrorCode.TIMEOUT, `incoming migration into ${this.name} not complete after ${timeoutMs} ms (migration ${ms}, vm ${status})`);
      }
      await sleep(100);
    }
  }

  /** Wait for the process to be gone; true when it is. */
  async waitForExit(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.isAlive()) {
      if (Date.now() >= deadline) return false;
      await sleep(50);
    }
    this.exited = true;
    return true;
  }

  /** Ask QEMU to quit (QMP "quit"); kill it if it does not. */
  async quit(timeoutMs = 5000): Promise<void> {
    if (this.adopted) throw new VmsError(ErrorCode.QEMU, `guest ${this.name} was started by someone else; vmscatter does not quit it`);
    if (this.isAlive()) {
      await this.qmp.execute('quit', undefined, { timeoutMs }).catch(() => {});
      if (await this.waitForExit(timeoutMs)) {
        this.qmp.destroy();
        return;
      }
    }
    await this.kill();
  }

  /** SIGTERM, then SIGKILL after graceMs. Only ever signals our own QEMU's pid. */
  async kill(graceMs: number = QEMU_DEFAULTS.killGraceMs): Promise<void> {
    this.qmp.destroy();
    if (this.adopted) return; // not ours to kill: only our connection goes
    if (!this.isAlive()) {
      this.exited = true;
      return;
    }
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
    if (await this.waitForExit(graceMs)) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    if (!(await this.waitForExit(5000))) {
      throw new VmsError(ErrorCode.QEMU, `QEMU ${this.name} (pid ${this.pid}) survived SIGKILL for 5 s`);
    }
  }

  /** Synchronous last resort for process exit hooks. */
  killSync(): void {
    if (this.adopted) return;
    if (this.isAlive()) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.cleanupFilesSync();
  }

  /** What reattachGuest() needs to take this guest back after a restart (launched guests only). */
  record(): GuestRecord {
    return {
      name: this.name,
      pid: this.pid,
      pidPath: this.pidPath,
      qmpPath: this.qmpPath,
      serialPath: this.serialPath,
      ...(this.logPath !== undefined ? { logPath: this.logPath } : {}),
      workDir: this.workDir,
      ...(this.ramPath !== undefined ? { ramPath: this.ramPath } : {}),
      memoryMiB: this.memoryMiB,
    };
  }

  /**
   * Let the guest run on without this process: it is no longer killed at exit or by
   * killAllGuests(), and the QMP connection closes. Its files stay (QEMU uses them).
   */
  detach(): void {
    live.delete(this);
    this.disposed = true;
    this.qmp.destroy();
  }

  /** Kill QEMU and remove the files this guest created (adopted: only disconnect). Safe to call twice. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    try {
      await this.kill();
    } finally {
      live.delete(this);
      if (!this.adopted) {
        // An adopted guest's files are its owner's.
        if (this.ownsWorkDir) await rm(this.workDir, { recursive: true, force: true });
        else {
          const own = [this.serialPath, this.qmpPath, this.pidPath, this.logPath].filter((p): p is string => p !== undefined);
          await Promise.all(own.map((p) => rm(p, { force: true })));
        }
        if (this.ownsRamFile && this.ramPath !== undefined) await rm(this.ramPath, { force: true });
      }
    }
  }

  private cleanupFilesSync(): void {
    try {
      if (this.ownsWorkDir) rmSync(this.workDir, { recursive: true, force: true });
      if (this.ownsRamFile && this.ramPath !== undefined) unlinkSync(this.ramPath);
    } catch {
      /* best effort at exit */
    }
  }

  /** QEMU's stderr tail and the serial tail, for error messages. */
  async lastWords(): Promise<string> {
    let log = '';
    if (this.logPath !== undefined) {
      try {
        log = (await readFile(this.logPath, 'utf8')).trim().slice(-800);
      } catch {
        /* none */
      }
    }
    const serial = (await this.serial()).slice(-300);
    return `QEMU stderr: ${log === '' ? '(none; daemonized QEMU discards it, launch with daemonize: false to keep it)' : JSON.stringify(log)}; serial tail: ${JSON.stringify(serial)}`;
  }
}

/**
 * QEMU before 9.0 loses guest writes during a TCG migration: the aligned fast path of its dirty
 * bitmap sync (cpu_physical_memory_sync_dirty_bitmap) clears the migration's dirty bits without
 * resetting the vCPUs' TLB write entries, so later stores through those entries are never marked
 * dirty and the stream carries stale pages. Seen here with QEMU 7.2: after a verified-identical
 * stream, target RAM differed from the stopped source in 9-12 pages (idle-task stack, per-CPU
 * data) and the guest oopsed or rebooted, in about 1 of 12 migrations under load, direct QEMU to
 * QEMU as well as through vmscatter. Fixed upstream in QEMU 9.0 ("physmem: Fix migration dirty
 * bitmap coherency with TCG memory access"). A RAM block whose size is not a multiple of 64 pages
 * takes the slow path, which does reset the TLB entries: TCG guests launched here get two pages
 * (8 KiB: QEMU rounds -m up to 8 KiB) more than asked. KVM guests are not affected (KVM keeps its
 * own dirty log).
 */
export const TCG_RAM_PAD_KIB = 8;

/** The QEMU command line for these options (without the binary). */
export function qemuArgs(
  opts: LaunchOptions,
  files: { serialPath: string; qmpPath: string; pidPath: string; ramPath: string | undefined },
): string[] {
  const kernel = opts.kernel ?? opts.image?.kernel;
  const initrd = opts.initrd ?? opts.image?.initrd;
  // Without a kernel the guest boots from what extraArgs gives it (a disk, say).
  if (kernel === undefined && (opts.extraArgs ?? []).length === 0) {
    throw new VmsError(ErrorCode.CONFIG, 'launchGuest needs a kernel (image from buildGuest(), or kernel) or extraArgs that give the guest something to boot');
  }
  const accel = opts.accel ?? QEMU_DEFAULTS.accel;
  const memKiB = (opts.memoryMiB ?? QEMU_DEFAULTS.memoryMiB) * 1024 + (accel === 'tcg' ? TCG_RAM_PAD_KIB : 0);
  const machine = opts.machine ?? QEMU_DEFAULTS.machine;
  const args: string[] = [];
  if (files.ramPath !== undefined) {
    const prealloc = opts.preallocRam === true ? ',prealloc=on' : '';
    args.push('-object', `memory-backend-file,id=pc.ram,size=${memKiB}K,mem-path=${files.ramPath},share=on${prealloc}`);
    args.push('-machine', `${machine},memory-backend=pc.ram`);
  } else {
    args.push('-machine', machine);
  }
  args.push(
    '-accel', accel,
    '-cpu', opts.cpu ?? QEMU_DEFAULTS.cpu,
    '-smp', String(opts.smp ?? QEMU_DEFAULTS.smp),
    '-m', `${memKiB}K`,
    '-nodefaults',
    '-display', 'none',
    '-no-user-config',
  );
  if (kernel !== undefined) {
    args.push('-kernel', kernel);
    if (initrd !== undefined) args.push('-initrd', initrd);
    args.push('-append', opts.append ?? workloadAppend(opts.workload));
  }
  args.push(
    '-serial', `file:${files.serialPath}`,
    '-qmp', `unix:${files.qmpPath},server=on,wait=off`,
    '-pidfile', files.pidPath,
  );
  if (opts.incoming !== undefined) args.push('-incoming', opts.incoming);
  if (opts.paused === true) args.push('-S');
  if (opts.daemonize !== false) args.push('-daemonize');
  args.push(...(opts.extraArgs ?? []));
  return args;
}

/** Start a guest and connect its QMP monitor. */
export async function launchGuest(opts: LaunchOptions = {}): Promise<QemuGuest> {
  const name = opts.name ?? 'guest';
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new VmsError(ErrorCode.CONFIG, `guest name ${JSON.stringify(name)}: use letters, digits, . _ -`);
  const ownsWorkDir = opts.workDir === undefined;
  const workDir = opts.workDir ?? (await mkdtemp(join(tmpdir(), 'vmsq-')));
  const serialPath = join(workDir, `${name}.serial`);
  const qmpPath = join(workDir, `${name}.qmp`);
  const pidPath = join(workDir, `${name}.pid`);
  const daemonize = opts.daemonize !== false;
  const logPath = daemonize ? undefined : join(workDir, `${name}.log`);
  let ramPath: string | undefined;
  let ownsRamFile = false;
  if (typeof opts.sharedRam === 'string') ramPath = opts.sharedRam;
  else if (opts.sharedRam === true) {
    ramPath = join('/dev/shm', `vmsq-${basename(workDir)}-${name}.ram`);
    ownsRamFile = true;
  }
  if (Buffer.byteLength(qmpPath) > 100) {
    throw new VmsError(ErrorCode.CONFIG, `QMP socket path ${qmpPath} is too long for a unix socket; use a shorter workDir`);
  }
  const args = qemuArgs(opts, { serialPath, qmpPath, pidPath, ramPath });
  const binary = opts.qemuBinary ?? QEMU_DEFAULTS.binary;
  const startTimeoutMs = opts.startTimeoutMs ?? QEMU_DEFAULTS.startTimeoutMs;
  const cleanupOnFail = async (): Promise<void> => {
    // Without a QemuGuest yet, find the pid from the pidfile if QEMU got that far.
    try {
      const pid = Number((await readFile(pidPath, 'utf8')).trim());
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      if (pid > 0 && cmdline.includes(pidPath)) process.kill(pid, 'SIGKILL');
    } catch {
      /* not running */
    }
    if (ownsWorkDir) await rm(workDir, { recursive: true, force: true });
    if (ownsRamFile && ramPath !== undefined) await rm(ramPath, { force: true });
  };

  let earlyExit: Promise<string> | undefined;
  try {
    if (daemonize) {
      // The foreground process exits once the daemon is set up: QMP socket and pidfile exist.
      await new Promise<void>((resolve, reject) => {
        const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new VmsError(ErrorCode.TIMEOUT, `${binary} did not daemonize within ${startTimeoutMs} ms`));
        }, startTimeoutMs);
        child.on('error', (e) => {
          clearTimeout(timer);
          reject(new VmsError(ErrorCode.QEMU, `cannot run ${binary}: ${e.message}; install qemu-system-x86`, { cause: e }));
        });
        child.on('close', (code) => {
          clearTimeout(timer);
          if (code === 0) resolve();
          else reject(new VmsError(ErrorCode.QEMU, `${binary} exited with ${code} at start: ${err.trim().slice(-800)}\nargs: ${args.join(' ')}`));
        });
      });
    } else {
      const fd = openSync(logPath ?? '/dev/null', 'a');
      try {
        const child = spawn(binary, args, { stdio: ['ignore', fd, fd], detached: true });
        child.unref();
        earlyExit = new Promise<string>((resolve) => {
          child.on('error', (e) => resolve(`cannot run ${binary}: ${e.message}`));
          child.on('exit', (code, sig) => resolve(`exited with ${code ?? sig}`));
        });
      } finally {
        closeSync(fd);
      }
    }
    const connect = QmpClient.connect(qmpPath, { timeoutMs: startTimeoutMs });
    let qmp: QmpClient;
    if (earlyExit === undefined) qmp = await connect;
    else {
      const exited = earlyExit.then(async (how) => {
        let log = '';
        if (logPath !== undefined) log = await readFile(logPath, 'utf8').catch(() => '');
        throw new VmsError(ErrorCode.QEMU, `${binary} ${how} at start: ${log.trim().slice(-800)}\nargs: ${args.join(' ')}`);
      });
      exited.catch(() => {});
      qmp = await Promise.race([connect, exited]);
    }
    const pid = await readPid(pidPath, startTimeoutMs);
    return new QemuGuest({ name, pid, qmp, workDir, ownsWorkDir, serialPath, qmpPath, pidPath, logPath, ramPath, ownsRamFile, memoryMiB: opts.memoryMiB ?? QEMU_DEFAULTS.memoryMiB, args });
  } catch (err) {
    await cleanupOnFail();
    throw err;
  }
}

export interface AttachOptions {
  readonly name: string;
  /** A QMP socket of the running QEMU that nobody else is connected to. */
  readonly qmpPath: string;
  /** Its RAM's memory-backend file (share=on), for the scan. */
  readonly ramPath?: string;
  /** Where files of this process about the guest go (migration sockets). */
  readonly workDir: string;
  readonly memoryMiB: number;
  readonly connectTimeoutMs?: number;
}

/**
 * Attach to a QEMU this process did not start, through a QMP socket of its own. The guest is
 * `adopted`: nothing here ever signals, kills or removes files of it; dispose() only disconnects.
 */
export async function attachGuest(o: AttachOptions): Promise<QemuGuest> {
  if (!/^[A-Za-z0-9._-]+$/.test(o.name)) throw new VmsError(ErrorCode.CONFIG, `guest name ${JSON.stringify(o.name)}: use letters, digits, . _ -`);
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(o.qmpPath, { timeoutMs: o.connectTimeoutMs ?? 10_000 });
  } catch (e) {
    throw new VmsError(
      ErrorCode.QEMU,
      `cannot attach to guest ${o.name} at QMP socket ${o.qmpPath}: ${(e as Error).message} (a QMP socket takes one client at a time: give vmscatter its own, e.g. a second -qmp)`,
      { cause: e },
    );
  }
  return new QemuGuest({
    name: o.name,
    pid: -1,
    qmp,
    workDir: o.workDir,
    ownsWorkDir: false,
    serialPath: '',
    qmpPath: o.qmpPath,
    pidPath: '',
    logPath: undefined,
    ramPath: o.ramPath,
    ownsRamFile: false,
    memoryMiB: o.memoryMiB,
    args: [],
    adopted: true,
  });
}

/** What it takes to take a launched guest back after this process restarted (QemuGuest.record()). */
export interface GuestRecord {
  readonly name: string;
  readonly pid: number;
  readonly pidPath: string;
  readonly qmpPath: string;
  readonly serialPath: string;
  readonly logPath?: string;
  readonly workDir: string;
  readonly ramPath?: string;
  readonly memoryMiB: number;
}

/**
 * Take back a guest an earlier run of this program launched (launchGuest), from its record: it
 * is ours again (dispose() kills it and removes its files), as if launched here. Undefined when
 * its QEMU is gone (the pid no longer names its pidfile on its command line).
 */
export async function reattachGuest(r: GuestRecord, connectTimeoutMs = 10_000): Promise<QemuGuest | undefined> {
  try {
    if (!readFileSync(`/proc/${r.pid}/cmdline`, 'latin1').includes(r.pidPath)) return undefined;
  } catch {
    return undefined;
  }
  const qmp = await QmpClient.connect(r.qmpPath, { timeoutMs: connectTimeoutMs });
  return new QemuGuest({
    name: r.name,
    pid: r.pid,
    qmp,
    workDir: r.workDir,
    ownsWorkDir: true,
    serialPath: r.serialPath,
    qmpPath: r.qmpPath,
    pidPath: r.pidPath,
    logPath: r.logPath,
    ramPath: r.ramPath,
    ownsRamFile: r.ramPath !== undefined,
    memoryMiB: r.memoryMiB,
    args: [],
  });
}

async function readPid(pidPath: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const pid = Number((await readFile(pidPath, 'utf8')).trim());
      if (Number.isInteger(pid) && pid > 0) return pid;
    } catch {
      /* not yet */
    }
    if (Date.now() >= deadline) throw new VmsError(ErrorCode.TIMEOUT, `QEMU wrote no pid to ${pidPath} within ${timeoutMs} ms`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------------------
// Migration streams into and out of Node

export interface CapturedMigration {
  readonly stream: Buffer;
  readonly stats: MigrationStats;
}

/**
 * Migrate `guest` into a unix socket this process listens on and return every byte QEMU sent
 * (a complete v3 stream), with QEMU's statistics. The guest ends in "postmigrate".
 */
export async function captureMigration(guest: QemuGuest, opts: MigrateOptions = {}): Promise<CapturedMigration> {
  const path = join(guest.workDir, `${guest.name}.capture.sock`);
  const chunks: Buffer[] = [];
  let server: Server | undefined;
  try {
    const received = new Promise<void>((resolve, reject) => {
      server = createServer((sock: Socket) => {
        server?.close();
        sock.on('data', (c: Buffer) => chunks.push(c));
        sock.on('end', () => resolve());
        sock.on('error', reject);
      });
      server.on('error', reject);
    });
    received.catch(() => {});
    await new Promise<void>((resolve, reject) => {
      server?.once('error', reject);
      server?.listen(path, () => resolve());
    });
    const stats = await guest.migrateTo(`unix:${path}`, opts);
    await received;
    return { stream: Buffer.concat(chunks), stats };
  } finally {
    server?.close();
    await rm(path, { force: true });
  }
}

/** The bytes of a live migration of `guest`, as QEMU wrote them. */
export async function captureMigrationStream(guest: QemuGuest, opts: MigrateOptions = {}): Promise<Buffer> {
  return (await captureMigration(guest, opts)).stream;
}

/**
 * Feed a migration stream into a guest started with incoming "defer": it listens on a unix
 * socket, this process connects and writes `data`; resolves once the guest has loaded it (and,
 * unless started with -S, runs).
 */
export async function sendStreamToIncoming(
  guest: QemuGuest,
  data: Buffer | AsyncIterable<Uint8Array>,
  opts: IncomingOptions & { timeoutMs?: number } = {},
): Promise<void> {
  const path = join(guest.workDir, `${guest.name}.incoming.sock`);
  await guest.migrateIncoming(`unix:${path}`, opts.capabilities === undefined ? {} : { capabilities: opts.capabilities });
  const sock = await new Promise<Socket>((resolve, reject) => {
    const s = netConnect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  const done = guest.waitIncoming(opts.timeoutMs ?? QEMU_DEFAULTS.migrationTimeoutMs);
  done.catch(() => {});
  try {
    // QEMU closes early when it rejects the stream: writing stops, and waitIncoming says why.
    let broken = false;
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    sock.on('error', () => {
      broken = true;
    });
    const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = Buffer.isBuffer(data) ? [data] : data;
    for await (const chunk of chunks) {
      if (broken) break;
      if (!sock.write(chunk)) await Promise.race([new Promise((r) => sock.once('drain', r)), closed]);
    }
    if (!broken) await Promise.race([new Promise<void>((resolve) => sock.end(() => resolve())), closed]);
    await done;
  } finally {
    sock.destroy();
    await rm(path, { force: true });
  }
}
