/**
 * Jobs: one evacuation or batch migration from one source host, run by that host's source agent
 * and followed here. The coordinator
 *  - checks the request against the registry (agents ready, VMs known, no VM in two jobs: 409),
 *  - starts the run on the source agent (POST /v1/runs) and follows its NDJSON event stream,
 *    keeping job state and a numbered event log that GET /v1/jobs/:id/events re-serves as SSE,
 *  - plans for the agent (the planner sees the target pool's capacity minus what other running
 *    jobs placed there) and grants per-VM migration slots (per-host limits over all jobs),
 *  - fails what depended on a lost agent, cancels on request, and persists every job so that a
 *    restarted coordinator re-attaches to running jobs (README, "Restart").
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { planToJson } from '../plan/serialize.js';
import type { FleetTarget, FleetVm, Plan } from '../plan/types.js';
import type { AgentRecord, AgentRegistry } from './agents-registry.js';
import type { EvacuationReport, Planner } from './evacuation.js';
import { MOVED_STATES, type EvacuationEvent } from './events.js';
import { fleetFromWire } from './fleet-wire.js';
import { ControlHttpError, controlCall, lines, openStream, sleep } from './http-client.js';
import { ApiError } from './http-server.js';
import type { CoordinatorMetrics } from './metrics.js';
import type { MigrationSlots } from './migration-slots.js';
import { createPlanner, type PlanStrategy } from './planner.js';
import type { FleetVmWire, JobState, JobView, JobVmView, PlanReply, PlanSummary, RunStatus, SlotReply } from './schemas.js';
import { TERMINAL_STATES } from './schemas.js';
import type { StateStore } from './state-store.js';

export type JobEvent = EvacuationEvent | { type: 'job'; state: JobState; detail?: string };
export interface StoredEvent {
  id: number;
  at: number;
  event: JobEvent;
}

/** A job as persisted (plain data). */
export interface Job {
  id: string;
  kind: 'evacuation' | 'migration';
  state: JobState;
  source: string;
  targets: string[];
  strategy: PlanStrategy;
  parallel: number;
  verify: boolean;
  pins?: Record<string, string>;
  createdAt: number;
  endedAt?: number;
  phase?: string;
  phases: Record<string, { state: 'running' | 'done' | 'skipped'; ms?: number; detail?: string }>;
  vms: JobVmView[];
  detail?: string;
  error?: { code: string; message: string };
  plan?: PlanSummary;
  report?: EvacuationReport;
  /** Control URLs at submission, for re-attaching after a restart. */
  agents: { source: string; targets: Record<string, string> };
  /** Last source-agent event applied. */
  agentCursor: number;
  cancelRequested: boolean;
  events: StoredEvent[];
  nextEventId: number;
}

export interface JobRequest {
  kind: 'evacuation' | 'migration';
  source: string;
  targets: string[];
  vms?: string[];
  pins?: Record<string, string>;
  parallel?: number;
  strategy?: PlanStrategy;
  verify?: boolean;
}

interface Runtime {
  ac: AbortController;
  /** The job's source agent was found lost and has not reported since. */
  sourceLost?: boolean;
  /** Ends the job `interrupted` when the grace for its lost source runs out. */
  graceTimer?: NodeJS.Timeout;
  closeStream?: () => void;
  persistTimer?: NodeJS.Timeout;
  subscribers: Set<Subscriber>;
}

interface Subscriber {
  send: (e: StoredEvent) => void;
  end: () => void;
}

export interface JobManagerOptions {
  cfg: EvacuationConfig;
  token: string;
  registry: AgentRegistry;
  store: StateStore;
  metrics: CoordinatorMetrics;
  slots: MigrationSlots;
  logger: Logger;
  /** Planner per strategy (default: createPlanner). */
  planner?: (strategy: PlanStrategy) => Planner;
  /** How long a slot request is held open before the agent asks again. */
  slotWaitMs?: number;
}

/** Events kept per job; beyond it the oldest progress events go (phase and VM events stay). */
const MAX_EVENTS = 5000;
const MAX_JOBS = 1000;
const STREAM_SILENCE_MS = 20_000;

export class JobManager {
  private readonly jobs = new Map<string, Job>();
  private readonly runtime = new Map<string, Runtime>();
  /** `${source}/${vm}` -> job id, for VMs in active jobs. */
  private readonly locks = new Map<string, string>();
  /** Content stores being released: target + job. */
  private readonly releasing = new Set<string>();
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly o: JobManagerOptions) {
    this.log = o.logger;
  }

  // ---------------------------------------------------------------- queries

  get(id: string): Job | undefined {
    return this.jobs.get(id);
  }

  require(id: string): Job {
    const j = this.jobs.get(id);
    if (!j) throw new ApiError(404, ErrorCode.NOT_FOUND, `no job ${id}; GET /v1/jobs lists the jobs`);
    return j;
  }

  list(filter: { state?: string; limit?: number } = {}): Job[] {
    const all = [...this.jobs.values()].filter((j) => !filter.state || j.state === filter.state).sort((a, b) => b.createdAt - a.createdAt);
    return all.slice(0, filter.limit ?? 100);
  }

  countsByState(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const j of this.jobs.values()) out[j.state] = (out[j.state] ?? 0) + 1;
    return out;
  }

  view(j: Job, withReport: boolean): JobView {
    return {
      id: j.id,
      kind: j.kind,
      state: j.state,
      source: j.source,
      targets: j.targets,
      strategy: j.strategy,
      parallel: j.parallel,
      verify: j.verify,
      createdAt: new Date(j.createdAt).toISOString(),
      ...(j.endedAt !== undefined ? { endedAt: new Date(j.endedAt).toISOString() } : {}),
      ...(j.phase !== undefined ? { phase: j.phase } : {}),
      phases: j.phases,
      vms: j.vms,
      ...(j.detail !== undefined ? { detail: j.detail } : {}),
      ...(j.error ? { error: j.error } : {}),
      ...(j.plan ? { plan: j.plan } : {}),
      ...(withReport && j.report ? { report: j.report } : {}),
    };
  }

  // ---------------------------------------------------------------- submit

  async submit(req: JobRequest): Promise<Job> {
    if (this.closed) throw new ApiError(503, ErrorCode.UNREACHABLE, 'the coordinator is shutting down');
    const { registry } = this.o;
    const src = registry.require(req.source, 'source');
    const targets = req.targets.map((t) => registry.require(t, 'target'));
    for (const t of targets) if (!t.data) throw new ApiError(422, ErrorCode.AGENT, `target agent ${t.name} registered no data address for converge connections`);
    const kind = (a: { fleet?: 'sim' | 'qemu' }): string => (a.fleet === 'qemu' ? 'QEMU guests' : 'simulated VMs');
    for (const t of targets)
      if ((t.fleet ?? 'sim') !== (src.fleet ?? 'sim')) throw new ApiError(422, ErrorCode.AGENT, `source agent ${src.name} hosts ${kind(src)}, but target agent ${t.name} receives ${kind(t)}`);
    if (req.targets.includes(req.source)) throw new ApiError(400, ErrorCode.CONFIG, `${req.source} is both the source and a target`);
    const known = src.vms ?? [];
    const names = req.vms ?? known.filter((v) => v.state !== 'migrated').map((v) => v.name);
    if (names.length === 0) throw new ApiError(422, ErrorCode.NOT_FOUND, `source host ${src.name} reports no VMs left to migrate`);
    const vms: JobVmView[] = [];
    for (const n of names) {
      const v = known.find((x) => x.name === n);
      if (!v) throw new ApiError(422, ErrorCode.NOT_FOUND, `source host ${src.name} reports no VM named ${n}${known.length ? ` (it has ${known.slice(0, 10).map((x) => x.name).join(', ')}${known.length > 10 ? ', ...' : ''})` : ''}`);
      if (v.state === 'migrated') throw new ApiError(409, ErrorCode.CONFLICT, `VM ${n} was already migrated from ${src.name}${v.target ? ` to ${v.target}` : ''}`);
      const other = this.locks.get(`${src.name}/${n}`);
      if (other !== undefined) throw new ApiError(409, ErrorCode.CONFLICT, `VM ${n} is already in job ${other} (${this.jobs.get(other)?.state ?? 'running'}); cancel it or wait for it to end`);
      vms.push({ name: n, memoryBytes: v.memoryBytes, state: 'pending', ...(req.pins?.[n] ? { target: req.pins[n] } : {}) });
    }
    const cfg = this.o.cfg;
    const job: Job = {
      id: `j-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
      kind: req.kind,
      state: 'running',
      source: src.name,
      targets: targets.map((t) => t.name),
      strategy: req.strategy ?? cfg.plan.strategy,
      parallel: req.parallel ?? cfg.migration.parallel,
      verify: req.verify ?? true,
      ...(req.pins ? { pins: req.pins } : {}),
      createdAt: Date.now(),
      phases: {},
      vms,
      agents: { source: src.controlUrl, targets: Object.fromEntries(targets.map((t) => [t.name, t.controlUrl])) },
      agentCursor: 0,
      cancelRequested: false,
      events: [],
      nextEventId: 1,
    };
    for (const v of vms) this.locks.set(`${src.name}/${v.name}`, job.id);
    this.jobs.set(job.id, job);
    this.runtime.set(job.id, { ac: new AbortController(), subscribers: new Set() });
    this.push(job, { type: 'job', state: 'running', detail: `${vms.length} VMs from ${src.name} to ${job.targets.join(', ')}` });
    const log = this.log.child({ job: job.id });
    try {
      await controlCall(src.controlUrl, '/v1/runs', {
        body: {
          job: job.id,
          vms: vms.map((v) => v.name),
          targets: targets.map((t) => ({ name: t.name, host: t.data!.host, port: t.data!.port, capacityBytes: t.capacityBytes ?? 0, controlUrl: t.controlUrl, ...(t.maxVms ? { maxVms: t.maxVms } : {}) })),
          parallel: job.parallel,
          verify: job.verify,
          coordinatorUrl: cfg.coordinator.url,
        },
        token: this.o.token,
        peer: `source agent ${src.name}`,
        timeoutMs: 15_000,
      });
    } catch (e) {
      // The run never started: forget the job, the request fails as a whole.
      for (const v of vms) this.locks.delete(`${src.name}/${v.name}`);
      this.jobs.delete(job.id);
      this.runtime.delete(job.id);
      log.warn({ err: (e as Error).message }, 'the source agent refused or missed the run');
      throw dispatchError(src.name, e);
    }
    log.info({ source: job.source, targets: job.targets, vms: vms.length, kind: job.kind }, 'job started');
    this.persistNow(job);
    this.prune();
    void this.follow(job, false);
    return job;
  }

  // ---------------------------------------------------------------- cancel

  async cancel(id: string): Promise<Job> {
    const job = this.require(id);
    if (TERMINAL_STATES.has(job.state)) throw new ApiError(409, ErrorCode.CONFLICT, `job ${id} already ended (${job.state}); nothing to cancel`);
    if (!job.cancelRequested) {
      job.cancelRequested = true;
      job.state = 'cancelling';
      this.push(job, { type: 'job', state: 'cancelling', detail: 'cancel requested: VMs not switched over stay on their source' });
      this.persistNow(job);
      this.log.info({ job: id }, 'cancel requested');
    }
    await this.sendCancel(job);
    return job;
  }

  private async sendCancel(job: Job): Promise<void> {
    try {
      await controlCall(this.sourceUrl(job), `/v1/runs/${encodeURIComponent(job.id)}/cancel`, { body: { reason: 'cancelled through the API' }, token: this.o.token, peer: `source agent ${job.source}`, timeoutMs: 10_000 });
    } catch (e) {
      if (isVmsError(e) && e.code === ErrorCode.NOT_FOUND) {
        this.finalize(job, { state: 'cancelled', error: { code: ErrorCode.CANCELLED, message: `cancelled; source agent ${job.source} had no run for the job` } });
        return;
      }
      // Unreachable: the follow loop settles the job when the agent answers again or is lost.
      this.log.warn({ job: job.id, err: (e as Error).message }, 'could not deliver the cancel to the source agent yet');
    }
  }

  // ---------------------------------------------------------------- planning and slots (source agent -> coordinator)

  /** Plan a running job's fleet (the source agent's planner call). Returns the plan as JSON. */
  async planFor(id: string, wire: FleetVmWire[]): Promise<Record<string, unknown>> {
    const job = this.requireActive(id);
    const fleet = fleetFromWire(wire);
    for (const v of fleet) if (!job.vms.some((x) => x.name === v.name)) throw new ApiError(400, ErrorCode.CONFIG, `VM ${v.name} is not part of job ${id}`);
    const plan = await this.makePlan(job.strategy, fleet, job.targets, job.id, job.pins);
    job.plan = summarize(plan, job.strategy, fleet, this.capacities(job.targets, job.id));
    for (const v of job.vms) {
      const t = job.plan.assignment[v.name];
      if (t !== undefined) v.target = t;
    }
    this.log.info({ job: id, groups: plan.groups.length, predictedSenderBytes: plan.predicted.senderBytes }, 'planned');
    this.persistSoon(job);
    return planToJson(plan);
  }

  /** A dry run: scan the source's VMs through its agent and plan them, nothing moves. */
  async dryRun(req: JobRequest): Promise<PlanReply> {
    const { registry } = this.o;
    const src = registry.require(req.source, 'source');
    for (const t of req.targets) registry.require(t, 'target');
    let wire: FleetVmWire[];
    try {
      wire = (await controlCall<{ fleet: FleetVmWire[] }>(src.controlUrl, '/v1/scan', { body: req.vms ? { vms: req.vms } : {}, token: this.o.token, peer: `source agent ${src.name}`, timeoutMs: 300_000 })).fleet;
    } catch (e) {
      throw dispatchError(src.name, e);
    }
    const fleet = fleetFromWire(wire);
    const strategy = req.strategy ?? this.o.cfg.plan.strategy;
    const plan = await this.makePlan(strategy, fleet, req.targets, undefined, req.pins);
    const summary = summarize(plan, strategy, fleet, this.capacities(req.targets, undefined));
    return {
      ...summary,
      source: src.name,
      targets: req.targets,
      vms: fleet.map((v) => ({ name: v.name, memoryBytes: v.memoryBytes, nonZeroPages: v.nonZeroPages, distinctContents: v.contents.length })),
    };
  }

  async slot(id: string, vm: string, target: string, signal: AbortSignal): Promise<SlotReply> {
    const job = this.requireActive(id);
    if (!job.vms.some((v) => v.name === vm)) throw new ApiError(400, ErrorCode.CONFIG, `VM ${vm} is not part of job ${id}`);
    if (!job.targets.includes(target)) throw new ApiError(400, ErrorCode.CONFIG, `${target} is not a target of job ${id}`);
    if (this.o.registry.get(target)?.state === 'lost') throw new ApiError(409, ErrorCode.AGENT, `target ${target} is lost; VM ${vm} stays on its source`);
    const granted = await this.o.slots.acquire(id, vm, job.source, target, { timeoutMs: this.o.slotWaitMs ?? 20_000, signal });
    if (granted && TERMINAL_STATES.has(job.state)) {
      this.o.slots.release(id, vm);
      throw new ApiError(409, ErrorCode.CONFLICT, `job ${id} already ended (${job.state})`);
    }
    return granted ? { granted } : { granted, detail: this.o.slots.describe(job.source, target) };
  }

  private async makePlan(strategy: PlanStrategy, fleet: FleetVm[], targetNames: string[], excludeJob: string | undefined, pins?: Record<string, string>): Promise<Plan> {
    const caps = this.capacities(targetNames, excludeJob);
    if (pins) for (const v of fleet) if (pins[v.name]) v.pinnedTo = pins[v.name]!;
    const planner = (this.o.planner ?? createPlanner)(strategy);
    let plan: Plan;
    if (pins && fleet.every((v) => v.pinnedTo !== undefined)) {
      plan = await Promise.resolve(planner(fleet, caps)).catch(() => pinnedPlan(fleet, caps));
      if (fleet.some((v) => plan.targets[plan.assignment[v.name] ?? -1] !== v.pinnedTo)) plan = pinnedPlan(fleet, caps); // a planner that ignores pins
    } else {
      try {
        plan = await planner(fleet, caps);
      } catch (e) {
        if (isVmsError(e)) throw new ApiError(422, e.code === ErrorCode.CONFIG ? ErrorCode.PLAN : e.code, e.message, { cause: e });
        throw e;
      }
    }
    return plan;
  }

  /** Target capacities as the planner sees them: offered, minus what runs there, minus other jobs' placements. */
  private capacities(names: string[], excludeJob: string | undefined): FleetTarget[] {
    return names.map((name) => {
      const a = this.o.registry.require(name, 'target');
      let bytes = 0;
      let count = 0;
      for (const j of this.jobs.values()) {
        if (j.id === excludeJob || TERMINAL_STATES.has(j.state) || !j.plan) continue;
        for (const v of j.vms) if (j.plan.assignment[v.name] === name && v.state !== 'failed') (bytes += v.memoryBytes), count++;
      }
      const capacityBytes = Math.max(0, (a.capacityBytes ?? 0) - (a.usedBytes ?? 0) - bytes);
      const t: FleetTarget = { name, capacityBytes };
      if (a.maxVms) t.maxVms = Math.max(0, a.maxVms - (a.vmCount ?? 0) - count);
      return t;
    });
  }

  // ---------------------------------------------------------------- content stores

  /**
   * A target agent registered or sent a heartbeat: release the content stores it still holds of
   * ended jobs, and of jobs this coordinator does not know. An ended job's target could not be
   * reached when the job ended (stopped, cut off, restarting). A job unknown here was pruned
   * (ended, past MAX_JOBS) or is from before a restart that lost the state dir: its source agent
   * gets no migration slot for it any more (slot() refuses jobs that are not active here), so
   * no converge connection opens on that store again; one still open keeps its own reference to
   * the store until it ends. Each store can be as large as the job's shared contents.
   */
  releaseStores(a: AgentRecord): void {
    if (a.role !== 'target' || !a.stores?.length) return;
    for (const id of a.stores) {
      const job = this.jobs.get(id);
      if (!job) this.releaseStore(a.name, a.controlUrl, id, 'unknown');
      else if (TERMINAL_STATES.has(job.state)) this.releaseStore(a.name, a.controlUrl, id, 'late');
    }
  }

  /**
   * DELETE a job's content store on a target (once at a time). `why`: at the job's end, or a
   * store a heartbeat listed: of an ended job (`late`) or of a job not known here (`unknown`).
   */
  private releaseStore(target: string, url: string, job: string, why: 'end' | 'late' | 'unknown'): void {
    const key = `${target}\n${job}`;
    if (this.releasing.has(key)) return;
    this.releasing.add(key);
    void controlCall(url, `/v1/jobs/${encodeURIComponent(job)}/store`, { method: 'DELETE', token: this.o.token, peer: `target agent ${target}`, timeoutMs: 5000 })
      .then(() => {
        if (why === 'late') this.log.info({ job, target }, 'released the content store of an ended job that its target still held');
        if (why === 'unknown') this.log.info({ job, target }, 'released a content store its target held of a job this coordinator does not know (pruned, or from before a restart without its state)');
      })
      .catch((e: unknown) => {
        // At the job's end: absent (no VM went there) or unreachable (its heartbeats will list it).
        if (why !== 'end' && !(e instanceof ControlHttpError && e.status === 404)) this.log.warn({ job, target, err: (e as Error).message }, 'could not release a content store its target still held; retrying on the next heartbeat');
      })
      .finally(() => this.releasing.delete(key));
  }

  // ---------------------------------------------------------------- lost agents

  onAgentLost(a: AgentRecord): void {
    for (const job of this.jobs.values()) {
      if (TERMINAL_STATES.has(job.state)) continue;
      if (a.role === 'source' && job.source === a.name) {
        // Its run goes on without the coordinator (converge needs none): a source cut off or
        // stopped for a while finishes VMs the job would otherwise report as never moved. So
        // the job waits for it (follow() re-attaches) and ends `interrupted` after the grace.
        const grace = this.o.cfg.coordinator.sourceLostGraceMs;
        if (grace === 0) {
          this.finalize(job, lostSource(job, this.o.cfg.coordinator));
          continue;
        }
        const rt = this.runtimeOf(job);
        rt.sourceLost = true;
        // On time, not when the follow loop next looks: a stopped source keeps its connection
        // open, and the loop notices only when the stream's silence watchdog (20 s) and a
        // reconnect's header timeout (15 s) have run out.
        if (rt.graceTimer) clearTimeout(rt.graceTimer);
        rt.graceTimer = setTimeout(() => this.sourceGraceOver(job.id), grace);
        this.push(job, {
          type: 'job',
          state: job.state,
          detail: `source agent ${a.name} lost (no heartbeat for ${Math.round(this.o.cfg.coordinator.agentLostAfterMs / 1000)} s): its run goes on without the coordinator; waiting up to ${Math.round(grace / 1000)} s for it to come back`,
        });
      } else if (a.role === 'target' && job.targets.includes(a.name)) {
        const reason = `no heartbeat from target agent ${a.name} for ${Math.round(this.o.cfg.coordinator.agentLostAfterMs / 1000)} s`;
        this.push(job, { type: 'job', state: job.state, detail: `target ${a.name} lost: its VMs not yet switched over fail and stay on ${job.source}` });
        void controlCall(this.sourceUrl(job), `/v1/runs/${encodeURIComponent(job.id)}/abort-target`, { body: { target: a.name, reason }, token: this.o.token, peer: `source agent ${job.source}` }).catch((e: unknown) =>
          this.log.warn({ job: job.id, target: a.name, err: (e as Error).message }, 'could not tell the source agent about the lost target'),
        );
      }
    }
  }

  /** A lost agent reports again: the jobs that were waiting for it as their source say so. */
  onAgentBack(a: AgentRecord): void {
    if (a.role !== 'source') return;
    for (const job of this.jobs.values()) {
      const rt = this.runtime.get(job.id);
      if (TERMINAL_STATES.has(job.state) || job.source !== a.name || !rt?.sourceLost) continue;
      delete rt.sourceLost;
      if (rt.graceTimer) clearTimeout(rt.graceTimer);
      delete rt.graceTimer;
      this.push(job, { type: 'job', state: job.state, detail: `source agent ${a.name} is back: following its run again` });
    }
  }

  /** The grace for a job's lost source ran out: unless it is back, the job ends interrupted. */
  private sourceGraceOver(id: string): void {
    const job = this.jobs.get(id);
    if (!job || TERMINAL_STATES.has(job.state) || !this.o.registry.isGone(job.source)) return;
    this.finalize(job, lostSource(job, this.o.cfg.coordinator));
  }

  // ---------------------------------------------------------------- events

  /** Replay events after `after`, then live ones; `end` when the job ended. Returns unsubscribe. */
  subscribe(id: string, after: number, send: (e: StoredEvent) => void, end: () => void): () => void {
    const job = this.require(id);
    for (const e of job.events) if (e.id > after) send(e);
    if (TERMINAL_STATES.has(job.state)) {
      end();
      return () => {};
    }
    const rt = this.runtimeOf(job);
    const sub: Subscriber = { send, end };
    rt.subscribers.add(sub);
    return () => rt.subscribers.delete(sub);
  }

  private push(job: Job, event: JobEvent): void {
    const e: StoredEvent = { id: job.nextEventId++, at: Date.now(), event };
    job.events.push(e);
    if (job.events.length > MAX_EVENTS) {
      let drop = Math.floor(MAX_EVENTS / 5);
      job.events = job.events.filter((x) => !(x.event.type === 'progress' && drop-- > 0));
    }
    for (const s of this.runtime.get(job.id)?.subscribers ?? []) s.send(e);
  }

  private apply(job: Job, e: EvacuationEvent): void {
    const m = this.o.metrics;
    if (e.type === 'phase') {
      if (e.state === 'start') {
        job.phase = e.phase;
        job.phases[e.phase] = { state: 'running' };
      } else if (e.state === 'end') {
        job.phases[e.phase] = { state: 'done', ...(e.ms !== undefined ? { ms: e.ms } : {}), ...(e.detail ? { detail: e.detail } : {}) };
        if (e.ms !== undefined) m.phaseSeconds.observe({ phase: e.phase }, e.ms / 1000);
      } else job.phases[e.phase] = { state: 'skipped' };
      this.persistSoon(job);
    } else if (e.type === 'vm') {
      const v = job.vms.find((x) => x.name === e.vm);
      if (v) {
        const was = v.state;
        v.state = e.state;
        if (e.target !== undefined) v.target = e.target;
        if (e.detail !== undefined) v.detail = e.detail;
        else delete v.detail;
        if (e.state === 'resumed') m.migrations.inc({ result: 'succeeded' });
        if (e.state === 'failed' && !MOVED_STATES.has(was)) {
          m.migrations.inc({ result: job.cancelRequested ? 'cancelled' : 'failed' });
          m.drops.inc({ what: 'vm' });
        }
      }
      if (e.state === 'resumed' || e.state === 'failed') this.o.slots.release(job.id, e.vm);
      this.persistSoon(job);
    } else if (e.type === 'progress' && e.phase === 'converge') {
      const v = job.vms.find((x) => x.name === e.key);
      if (v) v.progress = { done: e.done, total: e.total, unit: e.unit };
    }
    this.push(job, e);
  }

  // ---------------------------------------------------------------- following a run

  private async follow(job: Job, recovering: boolean): Promise<void> {
    const rt = this.runtimeOf(job);
    let failures = 0;
    while (!TERMINAL_STATES.has(job.state) && !rt.ac.signal.aborted) {
      try {
        const s = await openStream(this.sourceUrl(job), `/v1/runs/${encodeURIComponent(job.id)}/events?after=${job.agentCursor}`, {
          token: this.o.token,
          peer: `source agent ${job.source}`,
          accept: 'application/x-ndjson',
        });
        rt.closeStream = s.close;
        let lastData = Date.now();
        const watchdog = setInterval(() => Date.now() - lastData > STREAM_SILENCE_MS && s.close(), 2000);
        try {
          for await (const line of lines(s.body)) {
            lastData = Date.now();
            failures = 0;
            const rec = JSON.parse(line) as { ping?: true; seq?: number; event?: EvacuationEvent; end?: { state: JobState; report?: EvacuationReport; error?: { code: string; message: string } } };
            if (rec.ping || rec.seq === undefined || rec.seq <= job.agentCursor) continue;
            job.agentCursor = rec.seq;
            if (rec.event) this.apply(job, rec.event);
            else if (rec.end) {
              this.finalize(job, rec.end);
              return;
            }
          }
        } finally {
          clearInterval(watchdog);
          delete rt.closeStream;
        }
      } catch (e) {
        if (rt.ac.signal.aborted || TERMINAL_STATES.has(job.state)) return;
        if (isVmsError(e) && e.code === ErrorCode.NOT_FOUND) {
          const msg = `source agent ${job.source} no longer knows job ${job.id} (it restarted); VMs it had stopped for the job are resumed when it starts`;
          this.finalize(job, { state: recovering ? 'interrupted' : job.cancelRequested ? 'cancelled' : 'failed', error: { code: ErrorCode.AGENT, message: msg } });
          return;
        }
        this.log.debug({ job: job.id, err: (e as Error).message }, 'event stream from the source agent broke');
      }
      if (TERMINAL_STATES.has(job.state)) return;
      if (this.o.registry.isGone(job.source) && this.sourceSilentMs(job) > this.o.cfg.coordinator.agentLostAfterMs + this.o.cfg.coordinator.sourceLostGraceMs) {
        this.finalize(job, lostSource(job, this.o.cfg.coordinator));
        return;
      }
      await sleep(Math.min(2000, 100 * 2 ** failures++), rt.ac.signal);
    }
  }

  private finalize(job: Job, end: { state: JobState; report?: EvacuationReport; error?: { code: string; message: string }; sourceLost?: boolean }): void {
    if (TERMINAL_STATES.has(job.state)) return;
    const state: JobState = job.cancelRequested && (end.state === 'failed' || end.state === 'succeeded') && !end.report?.ok ? 'cancelled' : end.state;
    job.state = state;
    job.endedAt = Date.now();
    if (end.report) {
      job.report = end.report;
      this.o.metrics.recordReport(end.report);
      for (const r of end.report.vms) {
        const v = job.vms.find((x) => x.name === r.name);
        if (!v) continue;
        v.target = r.target;
        if (!r.ok && v.state !== 'failed' && !MOVED_STATES.has(v.state)) {
          v.state = 'failed';
          v.detail = r.error ?? r.verifyDetail ?? 'not migrated';
        }
      }
    }
    if (end.error) job.error = end.error;
    for (const v of job.vms)
      if (v.state === 'pending' || v.state === 'queued' || v.state === 'migrating') {
        const was = v.state;
        v.state = 'failed';
        v.detail =
          state === 'cancelled'
            ? 'not migrated: job cancelled; the VM kept running on its source'
            : end.sourceLost
              ? was === 'migrating'
                ? `migrating when source agent ${job.source} was lost: it may have switched over since`
                : `not migrated: source agent ${job.source} lost`
              : `not migrated: ${end.error?.message ?? state}`;
      }
    // Capacity the VMs now take on their targets, until the targets' next heartbeats say so.
    for (const v of job.vms) {
      if (!MOVED_STATES.has(v.state) || !v.target) continue;
      const t = this.o.registry.get(v.target);
      if (t) {
        t.usedBytes = (t.usedBytes ?? 0) + v.memoryBytes;
        t.vmCount = (t.vmCount ?? 0) + 1;
      }
    }
    this.o.slots.releaseJob(job.id);
    // Targets keep a content store per job; nothing references this one any more.
    // One that cannot be reached now lists it in its heartbeats once it is back (releaseStores).
    for (const t of job.targets) {
      const url = this.o.registry.get(t)?.controlUrl ?? job.agents.targets[t];
      if (url) this.releaseStore(t, url, job.id, 'end');
    }
    for (const v of job.vms) if (this.locks.get(`${job.source}/${v.name}`) === job.id) this.locks.delete(`${job.source}/${v.name}`);
    this.o.metrics.jobs.inc({ state });
    const moved = job.vms.filter((v) => MOVED_STATES.has(v.state)).length;
    job.detail = `${moved}/${job.vms.length} VMs moved${end.error ? `; ${end.error.message}` : ''}`;
    this.push(job, { type: 'job', state, detail: job.detail });
    this.log.info({ job: job.id, state, moved, vms: job.vms.length, ...(end.error ? { err: end.error.message } : {}) }, 'job ended');
    const rt = this.runtime.get(job.id);
    if (rt) {
      rt.closeStream?.();
      if (rt.persistTimer) clearTimeout(rt.persistTimer);
      if (rt.graceTimer) clearTimeout(rt.graceTimer);
      for (const s of rt.subscribers) s.end();
      rt.subscribers.clear();
      this.runtime.delete(job.id);
    }
    this.persistNow(job);
  }

  // ---------------------------------------------------------------- restart

  /** Load persisted jobs; re-attach to those that were running (README, "Restart"). */
  recover(): { loaded: number; reattaching: number } {
    let loaded = 0;
    const pending: Job[] = [];
    for (const doc of this.o.store.load()) {
      const job = doc as Job;
      if (!job || typeof job.id !== 'string' || !Array.isArray(job.vms) || !Array.isArray(job.events)) continue;
      this.jobs.set(job.id, job);
      loaded++;
      if (!TERMINAL_STATES.has(job.state)) {
        for (const v of job.vms) this.locks.set(`${job.source}/${v.name}`, job.id);
        this.runtime.set(job.id, { ac: new AbortController(), subscribers: new Set() });
        this.push(job, { type: 'job', state: job.state, detail: 'the coordinator restarted; re-attaching to the source agent' });
        pending.push(job);
      }
    }
    for (const job of pending) void this.reattach(job);
    if (loaded) this.log.info({ loaded, reattaching: pending.length, store: this.o.store.where }, 'jobs loaded');
    return { loaded, reattaching: pending.length };
  }

  private async reattach(job: Job): Promise<void> {
    const rt = this.runtimeOf(job);
    const graceMs = 2 * this.o.cfg.coordinator.agentLostAfterMs;
    const deadline = Date.now() + graceMs;
    let status: RunStatus | undefined;
    while (!status) {
      if (rt.ac.signal.aborted) return;
      try {
        status = await controlCall<RunStatus>(this.sourceUrl(job), `/v1/runs/${encodeURIComponent(job.id)}`, { token: this.o.token, peer: `source agent ${job.source}`, timeoutMs: 5000, signal: rt.ac.signal });
      } catch (e) {
        if (rt.ac.signal.aborted) return;
        if (isVmsError(e) && e.code === ErrorCode.NOT_FOUND) {
          this.finalize(job, {
            state: 'interrupted',
            error: { code: ErrorCode.AGENT, message: `the coordinator restarted and source agent ${job.source} no longer knows the job (it restarted too); VMs it had stopped are resumed when it starts` },
          });
          return;
        }
        if (Date.now() > deadline) {
          this.finalize(job, {
            state: 'interrupted',
            error: {
              code: ErrorCode.UNREACHABLE,
              message: `the coordinator restarted and source agent ${job.source} did not answer within ${Math.round(graceMs / 1000)} s; the agent finishes or fails the run on its own and resumes every VM it does not switch over`,
            },
          });
          return;
        }
        await sleep(500, rt.ac.signal);
      }
    }
    for (const s of status.slots) this.o.slots.restore(job.id, s.vm, job.source, s.target);
    this.log.info({ job: job.id, agentState: status.state, cursor: job.agentCursor, lastSeq: status.lastSeq }, 're-attached to the source agent');
    if (job.cancelRequested && status.state === 'running') await this.sendCancel(job);
    await this.follow(job, true);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Stop following (jobs keep running on their agents; a restart re-attaches). */
  close(): void {
    this.closed = true;
    for (const [id, rt] of this.runtime) {
      rt.ac.abort();
      rt.closeStream?.();
      for (const s of rt.subscribers) s.end();
      if (rt.persistTimer) clearTimeout(rt.persistTimer);
      const job = this.jobs.get(id);
      if (job) this.persistNow(job);
    }
  }

  private requireActive(id: string): Job {
    const job = this.require(id);
    if (TERMINAL_STATES.has(job.state)) throw new ApiError(409, ErrorCode.CONFLICT, `job ${id} already ended (${job.state})`);
    return job;
  }

  /** How long the job's source agent has been silent (never heard of: forever). */
  private sourceSilentMs(job: Job): number {
    const a = this.o.registry.get(job.source);
    return a ? Date.now() - a.lastSeenAt : Infinity;
  }

  private sourceUrl(job: Job): string {
    return this.o.registry.get(job.source)?.controlUrl ?? job.agents.source;
  }

  private runtimeOf(job: Job): Runtime {
    let rt = this.runtime.get(job.id);
    if (!rt) {
      rt = { ac: new AbortController(), subscribers: new Set() };
      this.runtime.set(job.id, rt);
    }
    return rt;
  }

  private persistSoon(job: Job): void {
    const rt = this.runtime.get(job.id);
    if (!rt || rt.persistTimer) return;
    rt.persistTimer = setTimeout(() => {
      delete rt.persistTimer;
      this.persistNow(job);
    }, 500);
  }

  private persistNow(job: Job): void {
    try {
      this.o.store.save(job.id, job);
    } catch (e) {
      this.log.error({ job: job.id, err: (e as Error).message }, 'cannot persist job state');
    }
  }

  private prune(): void {
    if (this.jobs.size <= MAX_JOBS) return;
    const ended = [...this.jobs.values()].filter((j) => TERMINAL_STATES.has(j.state)).sort((a, b) => a.createdAt - b.createdAt);
    for (const j of ended.slice(0, this.jobs.size - MAX_JOBS)) {
      this.jobs.delete(j.id);
      this.o.store.remove(j.id);
    }
  }
}

function lostSource(job: Job, c: { agentLostAfterMs: number; sourceLostGraceMs: number }): { state: JobState; error: { code: string; message: string }; sourceLost: true } {
  const silent = Math.round((c.agentLostAfterMs + c.sourceLostGraceMs) / 1000);
  return {
    sourceLost: true,
    state: job.cancelRequested ? 'cancelled' : 'interrupted',
    error: {
      code: ErrorCode.AGENT,
      message: `source agent ${job.source} lost (no heartbeat for ${silent} s): what its run did since is unknown here; VMs it did not switch over stay on it (the agent resumes any VM it stopped), and VMs still migrating when it was lost may have switched over since`,
    },
  };
}

/** Errors of starting a run on (or scanning through) the source agent, as API answers. */
function dispatchError(source: string, e: unknown): Error {
  if (e instanceof ControlHttpError) {
    if (e.status === 401) return new ApiError(502, ErrorCode.AGENT, `source agent ${source} refused the coordinator's token; coordinator and agents must share VMSCATTER_TOKEN`);
    if (e.status < 500) return new ApiError(e.status === 400 ? 422 : e.status, e.code, e.message);
    return new ApiError(502, ErrorCode.AGENT, e.message);
  }
  if (isVmsError(e) && e.code === ErrorCode.UNREACHABLE) return new ApiError(502, ErrorCode.UNREACHABLE, e.message);
  return e instanceof Error ? e : new VmsError(ErrorCode.AGENT, String(e));
}

/** A plan that follows the pins and nothing else (converge-only: no multicast groups). */
function pinnedPlan(fleet: FleetVm[], targets: FleetTarget[]): Plan {
  const names = targets.map((t) => t.name);
  const assignment: Record<string, number> = {};
  for (const v of fleet) {
    const t = names.indexOf(v.pinnedTo ?? '');
    if (t < 0) throw new ApiError(422, ErrorCode.PLAN, `VM ${v.name} is pinned to ${v.pinnedTo}, which is not a target of the job`);
    assignment[v.name] = t;
  }
  const plain = fleet.reduce((s, v) => s + v.nonZeroPages * PAGE_SIZE, 0);
  return {
    targets: names,
    assignment,
    groups: [],
    order: [],
    predicted: { senderBytes: plain, trafficBytes: 2 * plain, naiveSenderBytes: plain, naiveTrafficBytes: 2 * plain, joins: 0, leaves: 0 },
  };
}

function summarize(plan: Plan, strategy: string, fleet: FleetVm[], caps: FleetTarget[]): PlanSummary {
  const assignment: Record<string, string> = {};
  for (const [vm, t] of Object.entries(plan.assignment)) assignment[vm] = plan.targets[t] ?? '?';
  const p = plan.predicted;
  return {
    strategy,
    assignment,
    predicted: { senderBytes: p.senderBytes, trafficBytes: p.trafficBytes, naiveSenderBytes: p.naiveSenderBytes, naiveTrafficBytes: p.naiveTrafficBytes, joins: p.joins, leaves: p.leaves },
    groups: plan.groups.length,
    multicastGroups: plan.groups.filter((g) => g.multicast !== false && g.targets.length >= 2).length,
    load: plan.targets.map((name, i) => {
      const placed = fleet.filter((v) => plan.assignment[v.name] === i);
      return { target: name, vms: placed.length, memoryBytes: placed.reduce((s, v) => s + v.memoryBytes, 0), capacityBytes: caps.find((c) => c.name === name)?.capacityBytes ?? 0 };
    }),
  };
}

