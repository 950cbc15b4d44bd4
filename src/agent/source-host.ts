/**
 * The source agent's state: the VMs it owns and the evacuation runs it executes for the
 * coordinator. A run is `runEvacuation` on this host with
 *  - the planner asking the coordinator (which knows the target pool and the other jobs),
 *  - each VM's migration admitted by a coordinator-granted slot (per-host limits over all jobs),
 *  - verification by RAM digest against the target agent,
 * and its progress events kept in order, numbered, for the coordinator to stream (and re-read
 * after a restart). The data path does not need the coordinator once a VM's migration started.
 */
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { ContentIndex } from '../memory/content-index.js';
import { parsePlan } from '../plan/serialize.js';
import type { Plan } from '../plan/types.js';
import { failureSummary, runEvacuation, type EvacuationReport, type VmVerifier } from '../coordinator/evacuation.js';
import type { EvacuationEvent } from '../coordinator/events.js';
import { fleetToWire } from '../coordinator/fleet-wire.js';
import { callWithRetry, controlCall } from '../coordinator/http-client.js';
import { ApiError } from '../coordinator/http-server.js';
import type { AgentVm, DigestReply, FleetVmWire, IncomingRequest, QemuMachine, RunRequest, RunState, RunStatus, SlotReply } from '../coordinator/schemas.js';
import type { SimSourceVm } from './sim-agents.js';
import type { MigrationHooks, SourceMigrationResult, SourceVm } from './source-vm.js';
import { createRemoteScatter } from './remote-scatter.js';
import { simVmDigest } from './vm-digest.js';

/** A VM this host owns, with what the agent needs beyond migrating it. */
export interface HostedVm {
  readonly vm: SourceVm;
  runState(): 'running' | 'stopped' | 'unknown';
  /** RAM digest for verification (only meaningful while stopped); undefined: cannot tell. */
  digest?(): string;
  /**
   * A QEMU guest's machine: the target agent is told it before the VM is sent (it starts that
   * machine with -incoming defer), and the VM counts as verified once its target QEMU runs.
   */
  machine?: QemuMachine;
  /** The VM now runs on `target` (resumed there): release what this host still holds of it. */
  onMigrated?(target: string): Promise<void>;
}

export function hostedSimVm(vm: SimSourceVm): HostedVm {
  return {
    vm,
    runState: () => (vm.vm.state === 'running' ? 'running' : 'stopped'),
    digest: () => simVmDigest(vm.vm),
  };
}

export type RunRecord =
  | { seq: number; at: number; event: EvacuationEvent }
  | { seq: number; at: number; end: { state: Exclude<RunState, 'running'>; report?: EvacuationReport; error?: { code: string; message: string } } };

interface OwnedVm {
  hosted: HostedVm;
  job?: string;
  migratedTo?: string;
}

export interface SourceHostOptions {
  name: string;
  vms: HostedVm[];
  token: string;
  logger: Logger;
  /** How long plan and slot calls retry an unreachable coordinator before the VM (or run) fails. */
  coordinatorGraceMs: number;
  /** Compress converge DATA frames. */
  compress?: 'lz4';
  /** Hold the job's other VMs' pre-copy while one is stopped (default true). */
  stopCopyFirst?: boolean;
  /** Once a VM has sent every page once, it has the job's bandwidth until it has moved (default true). */
  convergeInTurn?: boolean;
  /** Multicast scatter settings (this host's interface); disabled: converge carries every page. */
  scatter?: EvacuationConfig['scatter'];
  /** Finished runs kept for the coordinator to read back (default 200). */
  keepRuns?: number;
}

export class SourceHost {
  readonly name: string;
  private readonly vms = new Map<string, OwnedVm>();
  private readonly runs = new Map<string, SourceRun>();

  constructor(readonly opts: SourceHostOptions) {
    this.name = opts.name;
    for (const h of opts.vms) {
      if (this.vms.has(h.vm.name)) throw new VmsError(ErrorCode.CONFIG, `two VMs on source host ${opts.name} are named ${h.vm.name}`);
      this.vms.set(h.vm.name, { hosted: h });
    }
  }

  listVms(): AgentVm[] {
    return [...this.vms.values()].map((o) => ({
      name: o.hosted.vm.name,
      memoryBytes: o.hosted.vm.memoryBytes,
      state: o.migratedTo !== undefined ? 'migrated' : o.hosted.runState(),
      ...(o.job !== undefined ? { job: o.job } : {}),
      ...(o.migratedTo !== undefined ? { target: o.migratedTo } : {}),
    }));
  }

  vm(name: string): OwnedVm | undefined {
    return this.vms.get(name);
  }

  /** Take on more VMs (a reload of the guests file); their names must be new on this host. */
  addVms(hosted: readonly HostedVm[]): void {
    for (const h of hosted) if (this.vms.has(h.vm.name)) throw new VmsError(ErrorCode.CONFIG, `source host ${this.name} already has a VM named ${h.vm.name}`);
    for (const h of hosted) this.vms.set(h.vm.name, { hosted: h });
  }

  /** Forget a VM that is in no job and was not migrated: 'removed', else 'busy' (or 'absent'). */
  removeVm(name: string): 'removed' | 'busy' | 'absent' {
    const o = this.vms.get(name);
    if (!o) return 'absent';
    if (o.job !== undefined || o.migratedTo !== undefined) return 'busy';
    this.vms.delete(name);
    return 'removed';
  }

  /** Scan the VMs' RAM into one content index: what the planner needs (a dry-run plan). */
  async scan(names?: string[]): Promise<FleetVmWire[]> {
    const chosen = this.resolve(names ?? [...this.vms.keys()].filter((n) => this.vms.get(n)!.migratedTo === undefined), false);
    const index = await ContentIndex.create({ expectedPages: chosen.reduce((s, o) => s + o.hosted.vm.ram.pageCount, 0) });
    const fleet = [];
    for (const o of chosen) {
      const scan = index.addVm(o.hosted.vm.name, o.hosted.vm.ram);
      fleet.push({ name: o.hosted.vm.name, memoryBytes: o.hosted.vm.memoryBytes, contents: scan.distinct, nonZeroPages: scan.pages - scan.zeroPages });
      await new Promise((r) => setImmediate(r)); // keep the control API answering between VMs
    }
    return fleetToWire(fleet);
  }

  run(job: string): SourceRun | undefined {
    return this.runs.get(job);
  }

  /** Start a run (idempotent for the same job id). */
  startRun(req: RunRequest): SourceRun {
    const existing = this.runs.get(req.job);
    if (existing) return existing;
    const owned = this.resolve(req.vms, true);
    for (const o of owned) o.job = req.job;
    const run = new SourceRun(this, req, owned, this.opts.logger.child({ job: req.job }));
    this.runs.set(req.job, run);
    this.trimRuns();
    void run.done.then(() => {
      for (const o of owned) if (o.job === req.job) delete o.job;
    });
    return run;
  }

  /** Cancel every run and wait (bounded) for them to end: their VMs keep running here. */
  async close(timeoutMs = 15_000): Promise<void> {
    const active = [...this.runs.values()].filter((r) => r.state === 'running');
    for (const r of active) r.cancel('the source agent is shutting down');
    await Promise.race([Promise.all(active.map((r) => r.done)), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }

  /** @internal */
  markMigrated(vm: string, target: string): void {
    const o = this.vms.get(vm);
    if (!o) return;
    o.migratedTo = target;
    o.hosted.onMigrated?.(target).catch((e: unknown) => this.opts.logger.warn({ vm, err: (e as Error).message }, 'releasing the migrated VM failed'));
  }

  private resolve(names: readonly string[], forRun: boolean): OwnedVm[] {
    const out: OwnedVm[] = [];
    for (const n of names) {
      const o = this.vms.get(n);
      if (!o) throw new ApiError(422, ErrorCode.NOT_FOUND, `source host ${this.name} has no VM named ${n}; it has ${[...this.vms.keys()].slice(0, 20).join(', ') || 'none'}`);
      if (o.migratedTo !== undefined) throw new ApiError(409, ErrorCode.CONFLICT, `VM ${n} was already migrated from ${this.name} to ${o.migratedTo}`);
      if (forRun && o.job !== undefined) throw new ApiError(409, ErrorCode.CONFLICT, `VM ${n} is already in job ${o.job}`);
      out.push(o);
    }
    if (out.length === 0) throw new ApiError(422, ErrorCode.NOT_FOUND, `source host ${this.name} has no VMs left to migrate`);
    return out;
  }

  private trimRuns(): void {
    const keep = this.opts.keepRuns ?? 200;
    for (const [id, r] of this.runs) {
      if (this.runs.size <= keep) break;
      if (r.state !== 'running') this.runs.delete(id);
    }
  }
}

/** Progress events of one key are forwarded at most this often (the last one always). */
const PROGRESS_INTERVAL_MS = 250;

export class SourceRun {
  readonly job: string;
  state: RunState = 'running';
  error: { code: string; message: string } | undefined;
  report: EvacuationReport | undefined;
  readonly done: Promise<void>;
  private readonly records: RunRecord[] = [];
  private seq = 0;
  private wake: (() => void) | undefined;
  private wakeP: Promise<void>;
  private readonly ac = new AbortController();
  private readonly vmAborts = new Map<string, AbortController>();
  private readonly slots = new Map<string, string>();
  private readonly vmStates = new Map<string, { state: string; target?: string }>();
  private readonly lostTargets = new Map<string, string>();
  private readonly lastProgress = new Map<string, number>();
  private plan: Plan | undefined;

  constructor(
    private readonly host: SourceHost,
    private readonly req: RunRequest,
    owned: OwnedVm[],
    private readonly log: Logger,
  ) {
    this.job = req.job;
    this.wakeP = new Promise((r) => (this.wake = r));
    for (const o of owned) this.vmStates.set(o.hosted.vm.name, { state: 'pending' });
    const vms = owned.map((o) => new AdmittedVm(o.hosted.vm, this));
    log.info({ vms: req.vms.length, targets: req.targets.map((t) => t.name) }, 'run started');
    this.done = runEvacuation({
      job: req.job,
      vms,
      targets: req.targets.map((t) => ({ name: t.name, capacityBytes: t.capacityBytes, host: t.host, port: t.port, ...(t.maxVms ? { maxVms: t.maxVms } : {}) })),
      planner: (fleet) => this.askPlan(fleet),
      admit: (vm, target, signal) => this.admit(vm.name, target.name, signal),
      ...(host.opts.scatter?.enabled
        ? { scatter: createRemoteScatter({ job: req.job, cfg: host.opts.scatter, targets: req.targets, token: host.opts.token, logger: host.opts.logger }) }
        : {}),
      ...(host.opts.compress ? { compress: host.opts.compress } : {}),
      ...(host.opts.stopCopyFirst === false ? { stopCopyFirst: false } : {}),
      ...(host.opts.convergeInTurn === false ? { convergeInTurn: false } : {}),
      ...(req.verify ? { verify: this.verifier(owned) } : {}),
      parallel: req.parallel,
      onEvent: (e) => this.emit(e),
      logger: host.opts.logger,
      signal: this.ac.signal,
    }).then(
      (report) => {
        this.report = report;
        this.finish(this.ac.signal.aborted ? 'cancelled' : report.ok ? 'succeeded' : 'failed', report.ok ? undefined : firstFailure(report));
      },
      (e: unknown) => {
        const err = isVmsError(e) ? e : new VmsError(ErrorCode.AGENT, (e as Error).message ?? String(e), { cause: e });
        this.finish(this.ac.signal.aborted ? 'cancelled' : 'failed', { code: err.code, message: err.message });
      },
    );
    void this.done;
  }

  status(): RunStatus {
    return {
      job: this.job,
      state: this.state,
      vms: [...this.vmStates].map(([name, s]) => ({ name, state: s.state, ...(s.target !== undefined ? { target: s.target } : {}) })),
      slots: [...this.slots].map(([vm, target]) => ({ vm, target })),
      lastSeq: this.seq,
      ...(this.error ? { error: this.error } : {}),
    };
  }

  /** Records after `after`, waiting for new ones; ends after the end record or when `signal` aborts. */
  async *records$(after: number, signal: AbortSignal): AsyncGenerator<RunRecord> {
    let next = after;
    const aborted = new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
    while (!signal.aborted) {
      const start = this.records.findIndex((r) => r.seq > next);
      if (start >= 0) {
        for (let i = start; i < this.records.length; i++) {
          const r = this.records[i]!;
          next = r.seq;
          yield r;
          if ('end' in r) return;
        }
        continue;
      }
      if (this.state !== 'running' && this.records.at(-1) && 'end' in this.records.at(-1)!) return;
      await Promise.race([this.wakeP, aborted]);
    }
  }

  cancel(reason: string): void {
    if (this.state !== 'running' || this.ac.signal.aborted) return;
    this.log.info({ reason }, 'run cancelled');
    this.ac.abort(new VmsError(ErrorCode.CANCELLED, `job ${this.job} cancelled: ${reason}`));
  }

  /** A target was lost: its VMs fail now (their sources resume); later ones never start. */
  abortTarget(target: string, reason: string): string[] {
    this.lostTargets.set(target, reason);
    const hit: string[] = [];
    for (const [vm, ac] of this.vmAborts) {
      if (this.targetOf(vm) !== target) continue;
      hit.push(vm);
      ac.abort(new VmsError(ErrorCode.AGENT, `target ${target} lost: ${reason}`));
    }
    this.log.warn({ target, reason, vms: hit }, 'target lost: its migrations aborted');
    return hit;
  }

  /** @internal */ targetOf(vm: string): string | undefined {
    const t = this.plan?.assignment[vm];
    return t === undefined ? undefined : this.plan?.targets[t];
  }

  /** @internal */ lostReason(target: string): string | undefined {
    return this.lostTargets.get(target);
  }

  /** @internal The VM's own abort (a lost target), made when the VM is admitted. */
  vmAbort(vm: string): AbortController {
    let ac = this.vmAborts.get(vm);
    if (!ac) {
      ac = new AbortController();
      this.vmAborts.set(vm, ac);
    }
    return ac;
  }

  /** Before the VM's converge connection opens: its target must be alive and a slot granted. */
  private async admit(vm: string, target: string, signal: AbortSignal): Promise<void> {
    const lost = this.lostTargets.get(target);
    if (lost !== undefined) throw new VmsError(ErrorCode.AGENT, `target ${target} lost: ${lost}`);
    const own = this.vmAbort(vm);
    try {
      const both = AbortSignal.any([signal, own.signal]);
      await this.acquireSlot(vm, target, both);
      // Granted just as the job was cancelled or the target lost: do not start.
      if (signal.aborted || own.signal.aborted) throw abortReason(own.signal.aborted ? own.signal : signal, `migration of ${vm} cancelled before it started`);
      const machine = this.host.vm(vm)?.hosted.machine;
      if (machine) await this.announceMachine(vm, target, machine, both);
    } catch (e) {
      if (own.signal.aborted && isVmsError(own.signal.reason)) throw own.signal.reason;
      throw e;
    }
  }

  /** Tell a target agent which QEMU machine to start for the VM that comes next. */
  private async announceMachine(vm: string, target: string, machine: QemuMachine, signal: AbortSignal): Promise<void> {
    const t = this.req.targets.find((x) => x.name === target);
    if (!t) throw new VmsError(ErrorCode.AGENT, `no control URL for target ${target}`);
    const body: IncomingRequest = { job: this.job, machine };
    await controlCall(t.controlUrl, `/v1/incoming/${encodeURIComponent(vm)}`, { method: 'PUT', body, token: this.host.opts.token, peer: `target agent ${t.name}`, timeoutMs: 30_000, signal });
  }

  /** @internal Wait until the coordinator grants a migration slot for vm -> target. */
  async acquireSlot(vm: string, target: string, signal: AbortSignal): Promise<void> {
    let announced = false;
    for (;;) {
      if (signal.aborted) throw abortReason(signal, `migration of ${vm} cancelled while waiting for a slot`);
      const r = await callWithRetry(
        () =>
          controlCall<SlotReply>(this.req.coordinatorUrl, `/v1/internal/jobs/${encodeURIComponent(this.job)}/slots`, {
            body: { vm, target },
            token: this.host.opts.token,
            peer: 'the coordinator',
            timeoutMs: 60_000,
            signal,
          }),
        { graceMs: this.host.opts.coordinatorGraceMs, signal, onRetry: (e, n) => n === 1 && this.log.warn({ vm, err: e.message }, 'coordinator unreachable; retrying the slot request') },
      ).catch((e: unknown) => {
        if (signal.aborted) throw abortReason(signal, `migration of ${vm} cancelled while waiting for a slot`);
        throw e;
      });
      if (r.granted) {
        this.slots.set(vm, target);
        if (announced) this.emit({ type: 'vm', vm, state: 'migrating', target, detail: 'migration slot granted' });
        return;
      }
      if (!announced) {
        announced = true;
        this.emit({ type: 'vm', vm, state: 'queued', target, detail: r.detail ?? 'waiting for a migration slot (per-host limit)' });
      }
    }
  }

  private async askPlan(fleet: Parameters<typeof fleetToWire>[0]): Promise<Plan> {
    const json = await callWithRetry(
      () =>
        controlCall<unknown>(this.req.coordinatorUrl, `/v1/internal/jobs/${encodeURIComponent(this.job)}/plan`, {
          body: { fleet: fleetToWire(fleet) },
          token: this.host.opts.token,
          peer: 'the coordinator',
          timeoutMs: 300_000,
          signal: this.ac.signal,
        }),
      { graceMs: this.host.opts.coordinatorGraceMs, signal: this.ac.signal },
    );
    const plan = parsePlan(json);
    for (const t of plan.targets)
      if (!this.req.targets.some((x) => x.name === t)) throw new VmsError(ErrorCode.PLAN, `the coordinator's plan names target ${t}, which is not among this run's targets`);
    this.plan = plan;
    for (const [vm, s] of this.vmStates) {
      const t = this.targetOf(vm);
      if (t !== undefined) s.target = t;
    }
    return plan;
  }

  private verifier(owned: OwnedVm[]): VmVerifier {
    return async (vm, report) => {
      const o = owned.find((x) => x.hosted.vm.name === vm.name);
      const mine = o?.hosted.digest?.();
      const qemu = o?.hosted.machine !== undefined;
      if (!mine && !qemu) return { verified: false, detail: 'this VM kind cannot be verified by digest' };
      const t = this.req.targets.find((x) => x.name === report.target);
      if (!t) return { verified: false, detail: `no control URL for target ${report.target}` };
      try {
        const d = await controlCall<DigestReply>(t.controlUrl, `/v1/vms/${encodeURIComponent(vm.name)}/digest`, { token: this.host.opts.token, peer: `target agent ${t.name}`, timeoutMs: 120_000 });
        if (!mine) {
          // A QEMU guest runs on at once: its RAM cannot be compared, but its target must run it.
          return d.state === 'running'
            ? { verified: true, by: 'running', detail: `target QEMU on ${t.name} runs the guest (a running guest's RAM is not compared)` }
            : { verified: false, detail: `target QEMU on ${t.name} is ${d.state}${d.detail ? `: ${d.detail}` : ''}` };
        }
        if (!d.digest) return { verified: false, detail: `target has no image of the VM: ${d.detail ?? d.state}` };
        return d.digest === mine ? { verified: true } : { verified: false, detail: `RAM digest on ${t.name} differs from the source's (${d.digest.slice(0, 12)} vs ${mine.slice(0, 12)})` };
      } catch (e) {
        return { verified: false, detail: (e as Error).message };
      }
    };
  }

  private emit(e: EvacuationEvent): void {
    if (e.type === 'progress' && e.done < e.total) {
      const key = `${e.phase}/${e.key}`;
      const now = performance.now();
      if (now - (this.lastProgress.get(key) ?? -Infinity) < PROGRESS_INTERVAL_MS) return;
      this.lastProgress.set(key, now);
    }
    if (e.type === 'vm') {
      const s = this.vmStates.get(e.vm) ?? { state: 'pending' };
      s.state = e.state;
      if (e.target !== undefined) s.target = e.target;
      this.vmStates.set(e.vm, s);
      if (e.state === 'resumed') this.host.markMigrated(e.vm, e.target ?? '?');
      if (e.state === 'resumed' || e.state === 'failed') {
        this.slots.delete(e.vm);
        this.vmAborts.delete(e.vm);
      }
    }
    this.push({ seq: ++this.seq, at: Date.now(), event: e });
  }

  private finish(state: Exclude<RunState, 'running'>, error?: { code: string; message: string }): void {
    // Invariant: a VM that did not switch over keeps running here.
    for (const name of this.req.vms) {
      const o = this.host.vm(name);
      if (!o || o.migratedTo !== undefined) continue;
      if (o.hosted.runState() === 'stopped') {
        this.log.error({ vm: name }, 'VM found stopped after its migration ended without switchover; resuming it');
        void Promise.resolve(o.hosted.vm.resume()).catch((e: unknown) => this.log.error({ vm: name, err: (e as Error).message }, 'resume failed'));
      }
    }
    this.state = state;
    if (error) this.error = error;
    this.slots.clear();
    this.log.info({ state, ...(error ? { err: error.message } : {}) }, 'run ended');
    this.push({ seq: ++this.seq, at: Date.now(), end: { state, ...(this.report ? { report: this.report } : {}), ...(error ? { error } : {}) } });
  }

  private push(r: RunRecord): void {
    this.records.push(r);
    const w = this.wake;
    this.wakeP = new Promise((res) => (this.wake = res));
    w?.();
  }
}

function firstFailure(r: EvacuationReport): { code: string; message: string } {
  const bad = r.vms.filter((v) => !v.ok);
  const first = bad[0];
  return {
    code: ErrorCode.CONVERGE,
    message: `${failureSummary(r.vms)}${first ? `; ${first.name}: ${first.error ?? first.verifyDetail ?? 'not verified'}` : ''}`,
  };
}

function abortReason(signal: AbortSignal, fallback: string): VmsError {
  const r: unknown = signal.reason;
  return isVmsError(r) ? r : new VmsError(ErrorCode.CANCELLED, fallback);
}

/**
 * A VM the run can abort on its own (its target was lost) without cancelling the whole job; the
 * coordinator's slot was granted before (`admit`).
 */
export class AdmittedVm implements SourceVm {
  constructor(
    private readonly inner: SourceVm,
    private readonly run: SourceRun,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  get memoryBytes(): number {
    return this.inner.memoryBytes;
  }
  get ram(): SourceVm['ram'] {
    return this.inner.ram;
  }

  async migrate(out: Writable, signal: AbortSignal, hooks?: MigrationHooks): Promise<SourceMigrationResult> {
    const own = this.run.vmAbort(this.name);
    // A lost target also breaks a switchover that waits for its answer: the source resumes.
    const onAbort = (): void => {
      out.destroy(own.signal.reason as Error);
    };
    if (own.signal.aborted) onAbort();
    else own.signal.addEventListener('abort', onAbort, { once: true });
    try {
      // The hooks carry the job's migration priority (stop-copy first, converge in turn).
      return await this.inner.migrate(out, AbortSignal.any([signal, own.signal]), hooks);
    } catch (e) {
      // Say why: the VM's own abort (its target was lost) rather than a bare "cancelled".
      if (own.signal.aborted && isVmsError(own.signal.reason)) throw own.signal.reason;
      throw e;
    }
  }

  resume(): void | Promise<void> {
    return this.inner.resume();
  }
}
