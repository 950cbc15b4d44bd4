/**
 * Real QEMU guests plugged into the agents (the simulated equivalents are in sim-agents.ts):
 *
 *  - `QemuSourceVm`: a running QemuGuest whose RAM is a shared memory-backend file. The scan
 *    reads that file while the guest runs; `migrate()` runs QEMU's own pre-copy into a unix
 *    socket this process listens on and pipes it into the converge channel with backpressure:
 *    when the channel cannot take more, the socket is paused and QEMU's writes block, so QEMU's
 *    bandwidth and downtime estimates see the real path.
 *  - `QemuTargetHost`: an IncomingFactory that starts, per incoming VM, a target QEMU with the
 *    machine arguments of its source and `-incoming defer`, and feeds it the rebuilt stream.
 *
 * Invariants kept here: the source runs on whenever a migration fails or is cancelled
 * (`migrate_cancel`, `cont` if it was stopped); a target QEMU whose stream failed is killed,
 * never resumed.
 */
import { rm } from 'node:fs/promises';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { QEMU_DEFAULT_DOWNTIME_LIMIT_MS, QEMU_DEFAULT_MAX_BANDWIDTH } from '../config.js';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { FilePageSource } from '../memory/scan.js';
import { launchGuest, QEMU_DEFAULTS, type LaunchOptions, type QemuGuest } from '../qemu/launcher.js';
import type { QmpEvent } from '../qemu/qmp.js';
import type { IncomingFactory, IncomingVm } from '../transport/converge-target.js';
import type { HelloFrame } from '../wire/converge-frame.js';
import { epochNowMs, type MigrationHooks, type SourceMigrationResult, type SourceVm } from './source-vm.js';

const FINAL_STATES = new Set(['completed', 'failed', 'cancelled']);
/** query-migrate polls while migrating: a fallback for a MIGRATION event that never comes. */
const POLL_MS = 250;
/** When someone follows the passes (MigrationHooks.onPass). */
const PASS_POLL_MS = 100;

/** QEMU migration parameters; unset ones are QEMU's defaults (128 MiB/s, 300 ms). */
export interface QemuMigrationParams {
  /** Bytes per second (QEMU's max-bandwidth). */
  readonly maxBandwidth?: number;
  /** Milliseconds (QEMU's downtime-limit). */
  readonly downtimeLimitMs?: number;
  /** Cancel (the source keeps running) when the migration takes longer. Default 120 s. */
  readonly timeoutMs?: number;
}

/** What QEMU itself reported about the last outgoing migration (query-migrate, raw). */
export interface QemuSourceMigrationInfo {
  readonly status: string;
  /** Bytes QEMU wrote into the agent's socket. */
  readonly socketBytes: number;
  readonly stopEvent: QmpEvent | undefined;
  readonly queryMigrate: Record<string, unknown>;
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A running QEMU guest as the source agent migrates it. */
export class QemuSourceVm implements SourceVm {
  readonly ram: FilePageSource;
  /** Filled by migrate(): QEMU's own view, for reports and benchmarks. */
  lastMigration: QemuSourceMigrationInfo | undefined;
  /**
   * The last migrate() found the guest running, so a failure may (must) `cont` it. A guest that
   * was not running (paused by its owner, or in postmigrate because it already moved elsewhere)
   * is never resumed here: that could run one VM twice.
   */
  private mayResume = false;

  constructor(
    readonly guest: QemuGuest,
    private readonly params: QemuMigrationParams = {},
    private readonly logger?: Logger,
  ) {
    if (guest.ramPath === undefined) {
      throw new VmsError(
        ErrorCode.CONFIG,
        `guest ${guest.name} has no shared RAM file to scan; launch it with sharedRam (memory-backend-file,share=on)`,
      );
    }
    this.ram = new FilePageSource(guest.ramPath);
  }

  get name(): string {
    return this.guest.name;
  }

  /** The RAM file's size: what the guest really has (TCG guests get 8 KiB more, TCG_RAM_PAD_KIB). */
  get memoryBytes(): number {
    return this.ram.pageCount * PAGE_SIZE;
  }

  /** Close the RAM file (the guest is not touched). */
  close(): void {
    this.ram.close();
  }

  async migrate(out: Writable, signal: AbortSignal, hooks?: MigrationHooks): Promise<SourceMigrationResult> {
    const g = this.guest;
    const log = this.logger?.child({ vm: g.name });
    const sockPath = join(g.workDir, `${g.name}.mig.sock`);
    const timeoutMs = this.params.timeoutMs ?? QEMU_DEFAULTS.migrationTimeoutMs;

    // Every wait below races `failure`: abort, an error of `out`, QEMU going away, the timeout.
    let failWith!: (e: Error) => void;
    let failed: Error | undefined;
    const failure = new Promise<never>((_, reject) => {
      failWith = (e) => {
        if (failed) return;
        failed = e;
        reject(e);
      };
    });
    failure.catch(() => {});
    const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, failure]);

    const onAbort = (): void =>
      failWith(
        new VmsError(ErrorCode.CANCELLED, `migration of ${g.name} cancelled: ${String((signal.reason as Error | undefined)?.message ?? signal.reason ?? 'aborted')}`, {
          cause: signal.reason,
        }),
      );
    const onOutError = (e: Error): void =>
      failWith(isVmsError(e) ? e : new VmsError(ErrorCode.CONVERGE, `converge channel of ${g.name} failed: ${e.message}`, { cause: e }));
    const onOutClose = (): void => {
      if (!out.writableFinished) failWith(new VmsError(ErrorCode.CONVERGE, `converge channel of ${g.name} closed before the stream ended`));
    };
    const onQmpClose = (): void => failWith(new VmsError(ErrorCode.QEMU, `QMP connection of source ${g.name} closed during migration (QEMU exited?)`));

    let stopEvent: QmpEvent | undefined;
    let finalAt = Number.NaN;
    let bytesAtStop = Number.NaN;
    let finalStatus: ((s: string) => void) | undefined;
    const final = new Promise<string>((resolve) => (finalStatus = resolve));
    const onEvent = (ev: QmpEvent): void => {
      if (ev.event === 'STOP' && stopEvent === undefined) {
        stopEvent = ev;
        bytesAtStop = socketBytes;
        hooks?.onStopped?.();
      }
      if (ev.event === 'MIGRATION' && FINAL_STATES.has(String(ev.data['status']))) {
        finalAt = ev.timeMs;
        finalStatus?.(String(ev.data['status']));
      }
    };

    const server: Server = createServer();
    server.maxConnections = 1;
    let sock: Socket | undefined;
    let socketBytes = 0;
    let started = false;
    let wasRunning = true;
    let poller: Promise<void> | undefined;
    let stopPolling = false;
    const timer = setTimeout(
      () =>
        failWith(
          new VmsError(
            ErrorCode.TIMEOUT,
            `migration of ${g.name} did not finish within ${timeoutMs} ms; cancelled, the source keeps running. Raise max-bandwidth or downtime-limit, or lower the dirty rate.`,
          ),
        ),
      timeoutMs,
    );

    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    out.on('error', onOutError);
    out.on('close', onOutClose);
    g.qmp.on('close', onQmpClose);
    g.qmp.on('event', onEvent);
    try {
      await rm(sockPath, { force: true });
      const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
      await race(
        new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(sockPath, () => resolve());
        }),
      );
      wasRunning = (await race(g.status())) === 'running';
      this.mayResume = wasRunning;
      await race(g.setMigrationCapabilities({}));
      // Always set both: parameters stick to the QEMU, and an earlier run may have changed them.
      await race(
        g.qmp.execute('migrate-set-parameters', {
          'max-bandwidth': Math.round(this.params.maxBandwidth ?? QEMU_DEFAULT_MAX_BANDWIDTH),
          'downtime-limit': Math.round(this.params.downtimeLimitMs ?? QEMU_DEFAULT_DOWNTIME_LIMIT_MS),
        }),
      );

      await race(g.qmp.execute('migrate', { uri: `unix:${sockPath}` }));
      started = true;
      // The MIGRATION event ends the wait; polling covers a missed event, and follows the passes
      // (dirty-sync-count: 1 after setup, while the first pass runs; one more per pass).
      const onPass = hooks?.onPass;
      let pass = 0;
      poller = (async () => {
        while (!stopPolling && !failed) {
          await sleep(onPass ? PASS_POLL_MS : POLL_MS);
          if (stopPolling || failed) return;
          const raw = await g.queryMigrate().catch(() => ({ status: 'active' }) as Record<string, unknown>);
          const s = String(raw['status']);
          if (FINAL_STATES.has(s)) finalStatus?.(s);
          else if (onPass && stopEvent === undefined) {
            const syncs = num(isRecord(raw['ram']) ? raw['ram']['dirty-sync-count'] : 0);
            if (syncs > pass) onPass((pass = syncs));
          }
        }
      })();

      sock = await race(
        Promise.race([accepted, final.then((s) => Promise.reject(new VmsError(ErrorCode.QEMU, `migration of ${g.name} ended ${s} before QEMU connected to ${sockPath}`)))]),
      );
      server.close();
      let lastDataAt = 0;
      const eof = pipeWithBackpressure(sock, out, g.name, (n) => {
        socketBytes += n;
        lastDataAt = epochNowMs();
      }, failWith);

      const status = await race(final);
      if (status !== 'completed') {
        const raw = await g.queryMigrate().catch(() => ({}) as Record<string, unknown>);
        throw new VmsError(
          status === 'cancelled' ? ErrorCode.CANCELLED : ErrorCode.QEMU,
          `migration of ${g.name} ended ${status}: ${String(raw['error-desc'] ?? 'no error-desc from QEMU')}`,
        );
      }
      // Completed: QEMU closes the socket once everything is written. Only a whole stream is ended.
      await race(eof);
      const eofAt = epochNowMs();
      await race(new Promise<void>((resolve) => out.end(() => resolve())));
      const endedAt = epochNowMs();
      if (failed) throw failed;
      stopPolling = true;
      const raw = await g.queryMigrate();
      const ram = isRecord(raw['ram']) ? raw['ram'] : {};
      this.lastMigration = { status, socketBytes, stopEvent, queryMigrate: raw };
      if (stopEvent === undefined) {
        // The STOP event may still be in flight on the QMP socket.
        stopEvent = g.qmp.recentEvents.findLast((e) => e.event === 'STOP');
      }
      log?.debug(
        { socketBytes, rounds: num(ram['dirty-sync-count']), stopAt: stopEvent?.timeMs, bytesAfterStop: socketBytes - bytesAtStop, completedEventAfterStopMs: finalAt - (stopEvent?.timeMs ?? NaN), lastDataAfterStopMs: lastDataAt - (stopEvent?.timeMs ?? NaN), eofAfterStopMs: eofAt - (stopEvent?.timeMs ?? NaN), endedAfterStopMs: endedAt - (stopEvent?.timeMs ?? NaN) },
        'source QEMU completed',
      );
      return { rounds: num(ram['dirty-sync-count']), forced: false, stoppedAtEpochMs: stopEvent?.timeMs ?? Number.NaN };
    } catch (e) {
      const err = isVmsError(e)
        ? e
        : new VmsError(ErrorCode.QEMU, `migration of ${g.name} failed: ${(e as Error).message}`, { cause: e });
      stopPolling = true;
      sock?.destroy();
      if (!out.destroyed) out.destroy(err);
      // Invariant: the source keeps running.
      if (started) await g.migrateCancel().catch((c: unknown) => log?.warn({ err: (c as Error).message }, 'migrate_cancel failed'));
      if (wasRunning) await this.resume().catch((c: unknown) => log?.error({ err: (c as Error).message }, 'could not resume the source'));
      const raw = await g.queryMigrate().catch(() => ({}) as Record<string, unknown>);
      this.lastMigration = { status: String(raw['status'] ?? 'unknown'), socketBytes, stopEvent, queryMigrate: raw };
      throw err;
    } finally {
      stopPolling = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      out.off('error', onOutError);
      out.off('close', onOutClose);
      g.qmp.off('close', onQmpClose);
      g.qmp.off('event', onEvent);
      server.close();
      await poller?.catch(() => {});
      await rm(sockPath, { force: true });
    }
  }

  /**
   * Make sure the source runs: cancel a migration still under way, then `cont` a guest left
   * paused or in postmigrate. Waits out the transient finish-migrate state.
   */
  async resume(): Promise<void> {
    const g = this.guest;
    if (!g.isAlive()) throw new VmsError(ErrorCode.QEMU, `source ${g.name} is gone; nothing to resume`);
    const ms = String((await g.queryMigrate())['status'] ?? 'none');
    if (!FINAL_STATES.has(ms) && ms !== 'none') await g.migrateCancel();
    const deadline = Date.now() + 10_000;
    for (;;) {
      const s = await g.status();
      if (s === 'running') return;
      if (!this.mayResume) {
        this.logger?.warn({ vm: g.name, status: s }, 'source was not running when its migration began; left as it is');
        return;
      }
      if (s === 'paused' || s === 'postmigrate') {
        await g.cont();
        this.mayResume = false;
        return;
      }
      if (Date.now() >= deadline) throw new VmsError(ErrorCode.QEMU, `source ${g.name} is '${s}' and did not become resumable within 10 s`);
      await sleep(20);
    }
  }
}

/**
 * Socket -> out, pausing the socket while `out` needs draining (so QEMU's writes block). Resolves
 * with the byte count at the socket's end; errors go to `fail`.
 */
function pipeWithBackpressure(sock: Socket, out: Writable, vm: string, count: (n: number) => void, fail: (e: Error) => void): Promise<void> {
  return new Promise<void>((resolve) => {
    let waiting = false;
    const onDrain = (): void => {
      waiting = false;
      sock.resume();
    };
    sock.on('data', (chunk: Buffer) => {
      count(chunk.length);
      if (out.destroyed) return;
      if (!out.write(chunk) && !waiting) {
        waiting = true;
        sock.pause();
        out.once('drain', onDrain);
      }
    });
    let ended = false;
    sock.once('end', () => {
      ended = true;
      out.off('drain', onDrain);
      resolve();
    });
    sock.on('error', (e) => fail(new VmsError(ErrorCode.QEMU, `migration socket of ${vm} failed: ${e.message}`, { cause: e })));
    sock.once('close', () => {
      if (!ended) fail(new VmsError(ErrorCode.QEMU, `migration socket of ${vm} closed before QEMU ended its stream`));
    });
  });
}

// ---------------------------------------------------------------------------------------------

/** A guest together with the options it was launched with (what a target needs to match it). */
export interface LaunchedGuest {
  readonly guest: QemuGuest;
  readonly launch: LaunchOptions;
}

/** The machine-defining part of a source's launch options: a target must use the same. */
export function machineOptions(launch: LaunchOptions): LaunchOptions {
  const pick: LaunchOptions = {
    ...(launch.image !== undefined ? { image: launch.image } : {}),
    ...(launch.kernel !== undefined ? { kernel: launch.kernel } : {}),
    ...(launch.initrd !== undefined ? { initrd: launch.initrd } : {}),
    ...(launch.append !== undefined ? { append: launch.append } : {}),
    ...(launch.workload !== undefined ? { workload: launch.workload } : {}),
    ...(launch.memoryMiB !== undefined ? { memoryMiB: launch.memoryMiB } : {}),
    ...(launch.accel !== undefined ? { accel: launch.accel } : {}),
    ...(launch.cpu !== undefined ? { cpu: launch.cpu } : {}),
    ...(launch.smp !== undefined ? { smp: launch.smp } : {}),
    ...(launch.machine !== undefined ? { machine: launch.machine } : {}),
    ...(launch.qemuBinary !== undefined ? { qemuBinary: launch.qemuBinary } : {}),
    ...(launch.extraArgs !== undefined ? { extraArgs: launch.extraArgs } : {}),
  };
  return pick;
}

export interface QemuTargetHostOptions {
  /** Target host name (logs, messages). */
  readonly name: string;
  /** Launch options of each incoming VM's source, by VM name. */
  readonly sources: Pick<ReadonlyMap<string, LaunchOptions>, 'get'>;
  /** Target RAM as a shared /dev/shm file too: to compare it, or to migrate the VM on. Default true. */
  readonly sharedRam?: boolean;
  /**
   * Allocate a shared RAM file's pages when the target starts (prealloc=on). Default false:
   * loading into unallocated shared pages costs a page allocation per incoming page (downtime
   * shows it), but with prealloc=on the end-to-end test saw target guests that never ticked again
   * or rebooted after switchover although their stream was verified byte-identical (QEMU 7.2,
   * TCG, share=on in /dev/shm). Not understood yet; off until it is.
   */
  readonly preallocRam?: boolean;
  /** Start targets with -S: loaded, never run (compared byte for byte instead). */
  readonly paused?: boolean;
  /** From the stream's end to a running target. Default 120 s. */
  readonly incomingTimeoutMs?: number;
  /** Called once a target QEMU is up and listening (tests use it to inject failures). */
  readonly onLaunched?: (vm: string, guest: QemuGuest) => void;
  readonly logger?: Logger;
}

/**
 * The QEMU side of a target host: one target QEMU per incoming VM. VMs that arrived stay in
 * `vms` (running, or paused with `paused`) until `dispose()`; failed ones are killed at once.
 */
export class QemuTargetHost {
  readonly name: string;
  /** VMs that arrived here (and their launch options, for a later migration onwards). */
  readonly vms = new Map<string, LaunchedGuest>();
  /** Target QEMUs still loading. */
  private readonly loading = new Map<string, QemuGuest>();
  /** incoming() calls not yet returned. */
  private readonly starting = new Set<Promise<IncomingVm>>();
  private closed = false;

  constructor(private readonly opts: QemuTargetHostOptions) {
    this.name = opts.name;
  }

  readonly incoming: IncomingFactory = (hello) => {
    const p = this.start(hello);
    this.starting.add(p);
    const forget = (): void => void this.starting.delete(p);
    p.then(forget, forget);
    return p;
  };

  /**
   * Kill every target QEMU of this host (arrived, loading, or still being launched) and remove
   * its files. No VM arrives here afterwards.
   */
  async dispose(): Promise<void> {
    this.closed = true;
    // A launch under way would otherwise leave its QEMU behind once it returns.
    await Promise.allSettled([...this.starting]);
    const all = [...this.loading.values(), ...[...this.vms.values()].map((v) => v.guest)];
    this.loading.clear();
    this.vms.clear();
    await Promise.all(all.map((g) => g.dispose()));
  }

  /** Forget a VM without killing it: the caller owns it now. */
  release(vm: string): LaunchedGuest | undefined {
    const v = this.vms.get(vm);
    this.vms.delete(vm);
    return v;
  }

  private async start(hello: HelloFrame): Promise<IncomingVm> {
    const log = this.opts.logger?.child({ vm: hello.vm, target: this.name });
    const source = this.opts.sources.get(hello.vm);
    if (source === undefined) {
      throw new VmsError(ErrorCode.CONFIG, `target ${this.name}: no launch options for incoming VM ${hello.vm}; the target must start the same machine as its source`);
    }
    if (this.vms.has(hello.vm) || this.loading.has(hello.vm)) {
      throw new VmsError(ErrorCode.CONVERGE, `target ${this.name}: VM ${hello.vm} is already here or arriving`);
    }
    const paused = this.opts.paused === true;
    const launch: LaunchOptions = {
      ...machineOptions(source),
      name: hello.vm,
      sharedRam: this.opts.sharedRam !== false,
      preallocRam: this.opts.preallocRam === true,
      incoming: 'defer',
      paused,
      // Not daemonized: QEMU's stderr says why a load failed.
      daemonize: false,
    };
    if (this.closed) throw new VmsError(ErrorCode.CANCELLED, `target ${this.name} is shutting down; VM ${hello.vm} not accepted`);
    const guest = await launchGuest(launch);
    this.loading.set(hello.vm, guest);
    if (this.closed) {
      this.loading.delete(hello.vm);
      await guest.dispose();
      throw new VmsError(ErrorCode.CANCELLED, `target ${this.name} shut down while VM ${hello.vm} was arriving`);
    }
    let aborted = false;
    const discard = (why: string): void => {
      if (aborted) return;
      aborted = true;
      this.loading.delete(hello.vm);
      if (this.vms.get(hello.vm)?.guest === guest) this.vms.delete(hello.vm);
      log?.warn({ why }, 'target QEMU discarded');
      void guest.dispose().catch((e: unknown) => log?.error({ err: (e as Error).message }, 'could not kill the target QEMU'));
    };
    try {
      const sockPath = join(guest.workDir, `${hello.vm}.in.sock`);
      const done = this.watchIncoming(guest, paused).then((r) => {
        if (aborted) throw new VmsError(ErrorCode.CANCELLED, `VM ${hello.vm} was discarded on ${this.name}`);
        this.loading.delete(hello.vm);
        this.vms.set(hello.vm, { guest, launch });
        return r;
      });
      done.catch(() => {});
      await guest.migrateIncoming(`unix:${sockPath}`);
      const stream = await connectUnix(sockPath);
      // QEMU reads the stream until EOF of its own accord; once it is attached the path can go.
      await rm(sockPath, { force: true });
      stream.on('error', () => {}); // reported through ConvergeTargetConnection's own listener
      // A target QEMU that exits or gives up closes its end without a word, and writes into a
      // closed socket fail silently: turn both into an error of the stream, so the converge
      // channel fails at once instead of pushing the rest of the VM into nowhere.
      const lost = (err: Error): void => {
        if (!stream.destroyed && !stream.writableEnded) stream.destroy(err);
      };
      stream.on('end', () => lost(new VmsError(ErrorCode.QEMU, `target QEMU of ${hello.vm} on ${this.name} closed its incoming socket before the stream ended (QEMU exited?)`)));
      done.catch((e: unknown) => lost(e as Error));
      stream.once('finish', () => log?.debug({ at: epochNowMs() }, 'rebuilt stream handed to the target QEMU'));
      done.then((r) => log?.debug({ resumedAt: r.resumedAtEpochMs, now: epochNowMs() }, 'target QEMU resumed'), () => {});
      this.opts.onLaunched?.(hello.vm, guest);
      return {
        stream,
        done,
        abort: (err: Error) => {
          stream.destroy();
          discard(err.message);
        },
      };
    } catch (e) {
      discard((e as Error).message);
      throw e;
    }
  }

  /**
   * Resolves with the target's RESUME (or, paused, its completed load) timestamp; rejects when
   * QEMU reports failure or exits, as it does when a load fails.
   */
  private watchIncoming(guest: QemuGuest, paused: boolean): Promise<{ resumedAtEpochMs: number }> {
    const timeoutMs = this.opts.incomingTimeoutMs ?? QEMU_DEFAULTS.migrationTimeoutMs;
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (err: Error | undefined, at?: number): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        guest.qmp.off('event', onEvent);
        guest.qmp.off('close', onClose);
        if (err) reject(err);
        else resolve({ resumedAtEpochMs: at! });
      };
      const failLoad = async (what: string): Promise<void> => {
        await guest.waitForExit(1000);
        finish(new VmsError(ErrorCode.QEMU, `incoming migration into ${guest.name} on ${this.name} ${what}; ${await guest.lastWords()}`));
      };
      const onEvent = (ev: QmpEvent): void => {
        if (!paused && ev.event === 'RESUME') finish(undefined, ev.timeMs);
        else if (ev.event === 'MIGRATION') {
          const s = String(ev.data['status']);
          if (s === 'failed') void failLoad('failed');
          else if (paused && s === 'completed') {
            // Loaded; QEMU leaves "inmigrate" for "paused" in the bottom half that follows.
            void (async () => {
              for (let i = 0; i < 250 && (await guest.status().catch(() => 'gone')) === 'inmigrate'; i++) await sleep(20);
              finish(undefined, ev.timeMs);
            })();
          }
        }
      };
      const onClose = (): void => void failLoad('failed: QEMU exited');
      const timer = setTimeout(
        () => finish(new VmsError(ErrorCode.TIMEOUT, `target ${guest.name} on ${this.name} was not ${paused ? 'loaded' : 'running'} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      guest.qmp.on('event', onEvent);
      guest.qmp.on('close', onClose);
      if (guest.qmp.closed) onClose();
    });
  }
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // Half-open: QEMU closing its end must not end ours; the target host decides what it means.
    const s = netConnect({ path, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (e) => reject(new VmsError(ErrorCode.QEMU, `cannot connect to the target QEMU's incoming socket ${path}: ${e.message}`, { cause: e })));
  });
}
