/**
 * Source agent, per VM: connects the converge channel to the VM's target, runs the VM's own
 * pre-copy through it and waits until the target reports the VM running. On any failure the
 * target is told to discard the VM and the source VM keeps running.
 */
import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import type { ContentSet } from '../memory/content-set.js';
import { ConvergeSource, type ContentLookup, type ConvergeSourceStats } from '../transport/converge-source.js';
import type { SourceVm } from './source-vm.js';
import type { MigrationPriority } from './migration-priority.js';

export interface VmMigrationReport {
  vm: string;
  target: string;
  rounds: number;
  forced: boolean;
  /** From the source's stop to the target's resume. */
  downtimeMs: number;
  stats: ConvergeSourceStats;
  stoppedAtEpochMs: number;
  resumedAtEpochMs: number;
  resentPages?: number;
  deviceStateBytes?: number;
}

export interface MigrateVmOptions {
  vm: SourceVm;
  target: { name: string; host: string; port: number };
  job: string;
  contents?: ContentLookup;
  holds?: ContentSet;
  /** Job-wide set of index contents seen in the streams (dedup minimum accounting). */
  seen?: ContentSet;
  signal?: AbortSignal;
  logger?: Logger;
  onStats?: (stats: ConvergeSourceStats) => void;
  compress?: 'lz4';
  /** Order among the job's concurrent migrations (see MigrationPriority). */
  priority?: MigrationPriority;
  /** Stream bytes in flight beyond what the target consumed (ConvergeSourceOptions.windowBytes). */
  windowBytes?: number;
}

export async function migrateVm(opts: MigrateVmOptions): Promise<VmMigrationReport> {
  const { vm, target } = opts;
  const log = opts.logger?.child({ vm: vm.name, target: target.name });
  // A job cancelled before this VM's turn must not start it ('abort' never fires again).
  if (opts.signal?.aborted) throw new VmsError(ErrorCode.CANCELLED, `migration of VM ${vm.name} not started: the job was cancelled; the VM keeps running on the source`);
  const socket = await connectTcp(target.host, target.port);
  const local = new AbortController();
  const onAbort = (): void => local.abort(opts.signal?.reason);
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });
  const conv = new ConvergeSource({
    socket,
    job: opts.job,
    vm: vm.name,
    ...(opts.contents ? { contents: opts.contents } : {}),
    ...(opts.holds ? { holds: opts.holds } : {}),
    ...(opts.seen ? { seen: opts.seen } : {}),
    ...(opts.compress ? { compress: opts.compress } : {}),
    ...(opts.priority ? { priority: opts.priority } : {}),
    ...(opts.windowBytes ? { windowBytes: opts.windowBytes } : {}),
  });
  // If the target fails first, stop the producer too.
  conv.result.catch((e: unknown) => local.abort(e));
  const ticker = opts.onStats ? setInterval(() => opts.onStats!(conv.stats), 200) : undefined;
  try {
    const p = opts.priority;
    const mig = await vm.migrate(conv, local.signal, p ? { onPass: (n) => p.pass(vm.name, n), onStopped: () => p.enter(vm.name) } : undefined);
    const result = await conv.result;
    const resumedAt = result.resumedAtEpochMs ?? NaN;
    log?.info({ rounds: mig.rounds, downtimeMs: resumedAt - mig.stoppedAtEpochMs, ...conv.stats }, 'vm migrated');
    return {
      vm: vm.name,
      target: target.name,
      rounds: mig.rounds,
      forced: mig.forced,
      downtimeMs: resumedAt - mig.stoppedAtEpochMs,
      stats: { ...conv.stats },
      stoppedAtEpochMs: mig.stoppedAtEpochMs,
      resumedAtEpochMs: resumedAt,
      ...(mig.resentPages !== undefined ? { resentPages: mig.resentPages } : {}),
      ...(mig.deviceStateBytes !== undefined ? { deviceStateBytes: mig.deviceStateBytes } : {}),
    };
  } catch (e) {
    const err = isVmsError(e) ? e : new VmsError(ErrorCode.CONVERGE, `migration of VM ${vm.name} failed: ${(e as Error).message}`, { cause: e });
    conv.cancel(err.message);
    conv.destroy();
    // Invariant: a failed migration leaves the source running.
    await vm.resume();
    log?.warn({ err: err.message, code: err.code }, 'migration failed; source VM resumed');
    throw err;
  } finally {
    if (ticker) clearInterval(ticker);
    // Resumed on the target, or failed (and resumed on the source): its downtime is over.
    opts.priority?.leave(vm.name);
    opts.signal?.removeEventListener('abort', onAbort);
    opts.onStats?.(conv.stats);
  }
}

function connectTcp(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.off('error', reject);
      s.setNoDelay(true);
      resolve(s);
    });
    s.once('error', (e) =>
      reject(new VmsError(ErrorCode.CONVERGE, `cannot reach the target agent at ${host}:${port}: ${e.message}; is it running?`, { cause: e })),
    );
  });
}
