/**
 * One evacuation, phase by phase (DESIGN.md): collect -> plan -> scatter -> converge -> verify.
 * The phases are seams: the planner, the scatter and how a VM is verified are passed in, so the
 * same driver runs simulated VMs in one process and real agents across hosts.
 */
import type { Logger } from 'pino';
import { ErrorCode, VmsError } from '../errors.js';
import { ContentIndex, type IndexStats, type VmScan } from '../memory/content-index.js';
import { ContentSet } from '../memory/content-set.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { FleetTarget, FleetVm, Plan } from '../plan/types.js';
import { migrateVm, type VmMigrationReport } from '../agent/source-agent.js';
import type { SourceVm } from '../agent/source-vm.js';
import { MigrationPriority, type HoldStats } from '../agent/migration-priority.js';
import { CONVERGE_WINDOW_BYTES, JOB_WINDOW_BYTES, MIN_WINDOW_BYTES } from '../transport/converge-source.js';
import { Phase, type EventSink } from './events.js';

export interface EvacuationTarget {
  name: string;
  capacityBytes: number;
  maxVms?: number;
  /** Where the target agent accepts converge connections. */
  host: string;
  port: number;
}

/** Decides where each VM goes and which multicast groups exist (src/plan). */
export type Planner = (fleet: FleetVm[], targets: FleetTarget[]) => Plan | Promise<Plan>;

export interface ScatterOutcome {
  /** Per target index: content ids the target reported holding. The only source of truth. */
  held: Uint32Array[];
  bytesSent: number;
  /** Sum over targets of the scatter bytes each one's link carried, when known. */
  bytesReceived?: number;
  datagrams: number;
  repairs: number;
  /** Human-readable notes (e.g. IGMP check skipped). */
  notes: string[];
}

/** Warms the targets' content stores by multicast (src/transport/scatter.ts). */
export type ScatterRunner = (
  plan: Plan,
  index: ContentIndex,
  ctx: { signal: AbortSignal; onProgress: (bytesDone: number, bytesTotal: number) => void },
) => Promise<ScatterOutcome>;

/**
 * How a VM was verified: `ram`, its rebuilt RAM equals the stopped source's (simulated targets);
 * `running`, its target runs it (a QEMU guest runs on at once: there is no fixed RAM to compare).
 */
export type VerifiedBy = 'ram' | 'running';

export type VmVerifier = (vm: SourceVm, report: VmMigrationReport) => Promise<{ verified: boolean; detail?: string; by?: VerifiedBy }>;

export interface EvacuationInput {
  job: string;
  vms: SourceVm[];
  targets: EvacuationTarget[];
  planner: Planner;
  scatter?: ScatterRunner;
  verify?: VmVerifier;
  parallel: number;
  /** Compress converge DATA frames. */
  compress?: 'lz4';
  /**
   * While a VM is stopped for its stop-and-copy, hold the other VMs' pre-copy (default true;
   * matters only with parallel > 1).
   */
  stopCopyFirst?: boolean;
  /**
   * Once a VM has sent every page once, it has the job's bandwidth until it has moved; the others
   * hold (default true; matters only with parallel > 1). See MigrationPriority.
   */
  convergeInTurn?: boolean;
  /**
   * Called before a VM's converge connection opens; the VM waits until it resolves (e.g. for a
   * migration slot under per-host limits). Rejecting fails the VM, which was never touched.
   */
  admit?: (vm: SourceVm, target: EvacuationTarget, signal: AbortSignal) => Promise<void>;
  onEvent?: EventSink;
  logger?: Logger;
  signal?: AbortSignal;
}

export interface VmOutcome {
  name: string;
  target: string;
  ok: boolean;
  error?: string;
  rounds: number;
  forced: boolean;
  downtimeMs: number;
  /** Bytes this VM's converge connection put on the wire. */
  wireBytes: number;
  /** Bytes of the VM's own migration stream: what plain QEMU migration sends. */
  plainBytes: number;
  pagesWhole: number;
  pagesStored: number;
  pagesRef: number;
  /** With compression: DATA frames sent LZ4-compressed, and stream bytes sent without a try (incompressible stretches). */
  compressedFrames?: number;
  compressSkippedBytes?: number;
  /** Pages sent again after the first pass, when the VM reports it. */
  resentPages?: number;
  deviceStateBytes?: number;
  /**
   * Stopped on its source and resumed on its target: from then on the VM is its target's, even
   * when `ok` is false because verification failed. False: it keeps running on its source.
   */
  switchedOver: boolean;
  verified: boolean;
  /** How it was verified (when verified). */
  verifiedBy?: VerifiedBy;
  verifyDetail?: string;
}

/**
 * What went wrong with the VMs that are not ok, telling apart those still on their source from
 * those switched over whose check failed: "1 of 6 VMs not migrated (running on their source);
 * 1 switched over but not verified".
 */
export function failureSummary(vms: readonly VmOutcome[]): string {
  const bad = vms.filter((v) => !v.ok);
  const moved = bad.filter((v) => v.switchedOver).length;
  const parts: string[] = [];
  if (bad.length > moved) parts.push(`${bad.length - moved} of ${vms.length} VMs not migrated (running on their source)`);
  if (moved > 0) parts.push(`${moved}${parts.length ? '' : ` of ${vms.length} VMs`} switched over but not verified (running on their target)`);
  return parts.join('; ');
}

export interface EvacuationReport {
  job: string;
  ok: boolean;
  vms: VmOutcome[];
  targets: Array<{ name: string; vms: string[]; contentsHeldAfterScatter: number }>;
  bytes: {
    /** Everything sent by the source: converge connections + multicast datagrams. */
    wire: number;
    converge: number;
    scatter: number;
    /** What plain QEMU migration of the same VMs sends (their own streams). */
    plainQemu: number;
    /**
     * The least any dedup scheme must send for the streams the VMs actually produced: each
     * indexed content that appeared in them once, every page whose content was not in the index
     * (unique at scan time, or written since: the dirty pages), every device state.
     */
    dedupMinimum: number;
  };
  phasesMs: Partial<Record<Phase, number>>;
  index: IndexStats;
  plan: Plan['predicted'] & { groups: number };
  scatter?: Omit<ScatterOutcome, 'held'>;
  /** Stop-and-copy first (parallel > 1): pre-copy writes held while another VM was stopped. */
  stopCopyFirst?: HoldStats;
  /** Converge in turn (parallel > 1): pre-copy writes held while another VM had its turn. */
  convergeInTurn?: HoldStats;
}

export async function runEvacuation(input: EvacuationInput): Promise<EvacuationReport> {
  const emit: EventSink = input.onEvent ?? (() => {});
  const log = input.logger?.child({ job: input.job });
  const signal = input.signal ?? new AbortController().signal;
  const phasesMs: Partial<Record<Phase, number>> = {};
  const timed = async <T>(phase: Phase, fn: () => Promise<T> | T, detail?: (r: T) => string): Promise<T> => {
    if (signal.aborted) throw new VmsError(ErrorCode.CANCELLED, `job ${input.job} cancelled before ${phase}`);
    emit({ type: 'phase', phase, state: 'start' });
    const t0 = performance.now();
    const r = await fn();
    const ms = performance.now() - t0;
    phasesMs[phase] = ms;
    const d = detail?.(r);
    emit({ type: 'phase', phase, state: 'end', ms, ...(d ? { detail: d } : {}) });
    log?.info({ phase, ms: Math.round(ms) }, 'phase done');
    return r;
  };
  if (input.vms.length === 0) throw new VmsError(ErrorCode.CONFIG, 'nothing to migrate: the VM list is empty');
  if (input.targets.length === 0) throw new VmsError(ErrorCode.CONFIG, 'no target hosts given');

  // 1. Collect: scan every VM's RAM into one content index.
  const totalPages = input.vms.reduce((s, v) => s + v.ram.pageCount, 0);
  const { index, scans } = await timed(
    Phase.COLLECT,
    async () => {
      const index = await ContentIndex.create({ expectedPages: totalPages });
      const scans: VmScan[] = [];
      let before = 0;
      for (const vm of input.vms) {
        scans.push(index.addVm(vm.name, vm.ram, (done) => emit({ type: 'progress', phase: Phase.COLLECT, key: 'all', done: before + done, total: totalPages, unit: 'pages' })));
        before += vm.ram.pageCount;
        emit({ type: 'progress', phase: Phase.COLLECT, key: 'all', done: before, total: totalPages, unit: 'pages' });
        await new Promise((r) => setImmediate(r)); // let progress and signals through between VMs
      }
      return { index, scans };
    },
    (r) => `${r.index.stats().distinct} distinct contents, ${r.index.stats().sharedAcrossVms} shared across VMs`,
  );

  // 2. Plan: placement, groups, schedule.
  const fleet: FleetVm[] = input.vms.map((vm, i) => ({
    name: vm.name,
    memoryBytes: vm.memoryBytes,
    contents: scans[i]!.distinct,
    nonZeroPages: scans[i]!.pages - scans[i]!.zeroPages,
  }));
  const fleetTargets: FleetTarget[] = input.targets.map((t) => ({ name: t.name, capacityBytes: t.capacityBytes, ...(t.maxVms !== undefined ? { maxVms: t.maxVms } : {}) }));
  const plan = await timed(Phase.PLAN, () => input.planner(fleet, fleetTargets), (p) => `${p.groups.length} groups`);
  const targetOf = (vm: string): EvacuationTarget => {
    const t = plan.assignment[vm];
    const target = t === undefined ? undefined : input.targets.find((x) => x.name === plan.targets[t]);
    if (!target) throw new VmsError(ErrorCode.PLAN, `the plan places no target for VM ${vm}`);
    return target;
  };

  // 3. Scatter: warm the targets' stores. Knowledge of holdings comes only from their reports.
  const holds = input.targets.map(() => new ContentSet(index.contentCount));
  let scatter: ScatterOutcome | undefined;
  if (input.scatter) {
    const run = input.scatter;
    scatter = await timed(
      Phase.SCATTER,
      () => run(plan, index, { signal, onProgress: (done, total) => emit({ type: 'progress', phase: Phase.SCATTER, key: 'all', done, total, unit: 'bytes' }) }),
      (s) => `${(s.bytesSent / 1e6).toFixed(1)} MB multicast, ${s.repairs} repairs`,
    );
    scatter.held.forEach((ids, t) => {
      const name = plan.targets[t];
      const idx = input.targets.findIndex((x) => x.name === name);
      if (idx >= 0) holds[idx]!.addAll(ids);
    });
  } else emit({ type: 'phase', phase: Phase.SCATTER, state: 'skipped' });

  // 4. Converge: every VM's own pre-copy through its converge channel, `parallel` at a time.
  const reports = new Map<string, VmMigrationReport>();
  const seen = new ContentSet(index.contentCount);
  const stopCopyFirst = input.stopCopyFirst !== false;
  const convergeInTurn = input.convergeInTurn !== false;
  const priority = (stopCopyFirst || convergeInTurn) && input.parallel > 1 ? new MigrationPriority({ stopCopyFirst, convergeInTurn }) : undefined;
  // What the other VMs already have in flight still goes ahead of the VM whose turn it is: with
  // a priority, the job's VMs share one in-flight budget instead of a full window each.
  const priorityWindow = Math.min(CONVERGE_WINDOW_BYTES, Math.max(MIN_WINDOW_BYTES, Math.floor(JOB_WINDOW_BYTES / input.parallel)));
  const failures = new Map<string, string>();
  await timed(
    Phase.CONVERGE,
    async () => {
      const queue = [...input.vms];
      const worker = async (): Promise<void> => {
        for (let vm = queue.shift(); vm; vm = queue.shift()) {
          const target = targetOf(vm.name);
          const holdSet = holds[input.targets.indexOf(target)]!;
          emit({ type: 'vm', vm: vm.name, state: 'migrating', target: target.name });
          const total = vm.memoryBytes;
          try {
            if (input.admit) await input.admit(vm, target, signal);
            const r = await migrateVm({
              vm,
              target,
              job: input.job,
              contents: index,
              holds: holdSet,
              seen,
              signal,
              ...(input.compress ? { compress: input.compress } : {}),
              ...(priority ? { priority, windowBytes: priorityWindow } : {}),
              ...(log ? { logger: log } : {}),
              onStats: (s) => emit({ type: 'progress', phase: Phase.CONVERGE, key: vm.name, done: Math.min(s.streamBytes, total), total, unit: 'bytes' }),
            });
            reports.set(vm.name, r);
            emit({ type: 'vm', vm: vm.name, state: 'resumed', target: target.name, detail: `downtime ${r.downtimeMs.toFixed(1)} ms` });
          } catch (e) {
            failures.set(vm.name, (e as Error).message);
            emit({ type: 'vm', vm: vm.name, state: 'failed', target: target.name, detail: (e as Error).message });
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(input.parallel, input.vms.length) }, worker));
    },
    () => `${reports.size}/${input.vms.length} VMs running on their targets`,
  );

  // 5. Verify what can be verified (simulated targets: byte for byte against the stopped source).
  const verified = new Map<string, { verified: boolean; detail?: string; by?: VerifiedBy }>();
  if (input.verify) {
    const verify = input.verify;
    await timed(
      Phase.VERIFY,
      async () => {
        let done = 0;
        for (const vm of input.vms) {
          const r = reports.get(vm.name);
          if (!r) continue;
          const v = await verify(vm, r);
          verified.set(vm.name, v);
          emit({ type: 'vm', vm: vm.name, state: v.verified ? 'verified' : 'unverified', target: r.target, ...(v.detail ? { detail: v.detail } : {}) });
          emit({ type: 'progress', phase: Phase.VERIFY, key: 'all', done: ++done, total: reports.size, unit: 'vms' });
        }
      },
      () => {
        const ok = [...verified.values()].filter((v) => v.verified);
        const running = ok.filter((v) => v.by === 'running').length;
        return `${ok.length - running}/${reports.size} identical${running > 0 ? `, ${running} running on their targets (RAM not compared)` : ''}`;
      },
    );
  }

  // 6. Report.
  const vms: VmOutcome[] = input.vms.map((vm) => {
    const r = reports.get(vm.name);
    const v = verified.get(vm.name);
    const base = { name: vm.name, target: targetOf(vm.name).name };
    if (!r) return { ...base, ok: false, error: failures.get(vm.name) ?? 'not migrated', rounds: 0, forced: false, downtimeMs: NaN, wireBytes: 0, plainBytes: 0, pagesWhole: 0, pagesStored: 0, pagesRef: 0, switchedOver: false, verified: false };
    return {
      ...base,
      ok: input.verify ? v?.verified === true : true,
      rounds: r.rounds,
      forced: r.forced,
      downtimeMs: r.downtimeMs,
      wireBytes: r.stats.wireBytes,
      plainBytes: r.stats.streamBytes,
      pagesWhole: r.stats.pagesWhole,
      pagesStored: r.stats.pagesStored,
      pagesRef: r.stats.pagesRef,
      ...(input.compress ? { compressedFrames: r.stats.compressedFrames, compressSkippedBytes: r.stats.compressSkippedBytes } : {}),
      ...(r.resentPages !== undefined ? { resentPages: r.resentPages } : {}),
      ...(r.deviceStateBytes !== undefined ? { deviceStateBytes: r.deviceStateBytes } : {}),
      switchedOver: true,
      verified: v?.verified === true,
      ...(v?.verified ? { verifiedBy: v.by ?? 'ram' } : {}),
      ...(v?.detail ? { verifyDetail: v.detail } : {}),
    };
  });
  const converge = vms.reduce((s, v) => s + v.wireBytes, 0);
  const scatterBytes = scatter?.bytesSent ?? 0;
  const report: EvacuationReport = {
    job: input.job,
    ok: vms.every((v) => v.ok),
    vms,
    targets: input.targets.map((t) => ({ name: t.name, vms: vms.filter((v) => v.target === t.name).map((v) => v.name), contentsHeldAfterScatter: scatter ? holdsFromScatter(scatter, plan, t.name) : 0 })),
    bytes: {
      wire: converge + scatterBytes,
      converge,
      scatter: scatterBytes,
      plainQemu: vms.reduce((s, v) => s + v.plainBytes, 0),
      dedupMinimum: (seen.size + [...reports.values()].reduce((s, r) => s + r.stats.pagesUnindexed, 0)) * PAGE_SIZE + vms.reduce((s, v) => s + (v.deviceStateBytes ?? 0), 0),
    },
    phasesMs,
    index: index.stats(),
    plan: { ...plan.predicted, groups: plan.groups.length },
    ...(priority?.stopCopyFirst ? { stopCopyFirst: roundHeld(priority.stats.stopCopyFirst) } : {}),
    ...(priority?.convergeInTurn ? { convergeInTurn: roundHeld(priority.stats.convergeInTurn) } : {}),
    ...(scatter ? { scatter: { bytesSent: scatter.bytesSent, ...(scatter.bytesReceived !== undefined ? { bytesReceived: scatter.bytesReceived } : {}), datagrams: scatter.datagrams, repairs: scatter.repairs, notes: scatter.notes } } : {}),
  };
  return report;
}

function roundHeld(s: HoldStats): HoldStats {
  return { holds: s.holds, heldMs: Math.round(s.heldMs) };
}

function holdsFromScatter(s: ScatterOutcome, plan: Plan, target: string): number {
  const t = plan.targets.indexOf(target);
  return t >= 0 ? (s.held[t]?.length ?? 0) : 0;
}
