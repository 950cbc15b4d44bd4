/**
 * The target agent's state: the converge server (TargetAgent, with the host's content store) and
 * the VMs it received: rebuilt into simulated targets, or (agent.fleet "qemu") loaded into a
 * target QEMU started per incoming VM with the machine its source agent announced
 * (PUT /v1/incoming/:vm). It answers which VMs it holds and, for simulated ones, their RAM
 * digests for verification.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Type, type Static } from 'typebox';
import { Value } from 'typebox/value';
import { TargetAgent } from './target-agent.js';
import { SimTargetHost } from './sim-agents.js';
import { ramImageDigest } from './vm-digest.js';
import { QemuTargetHost } from './qemu-agents.js';
import { machineLaunch, machineRamBytes } from './qemu-guests.js';
import { QemuMachine, type AgentVm, type DigestReply } from '../coordinator/schemas.js';
import { ErrorCode, VmsError } from '../errors.js';
import { reattachGuest, type GuestRecord, type LaunchOptions } from '../qemu/launcher.js';
import type { IncomingFactory, IncomingVm } from '../transport/converge-target.js';
import type { HelloFrame } from '../wire/converge-frame.js';
import { ScatterReceiver, sessionFromJson } from '../transport/scatter.js';

interface Received {
  job: string;
  state: 'receiving' | 'running' | 'failed';
  memoryBytes: number;
  detail?: string;
  digest?: string;
}

export interface TargetHostOptions {
  name: string;
  host: string;
  port: number;
  logger: Logger;
  /** Interface address multicast is received on (the scatter). */
  scatterInterface?: string;
  /** Coalesced reads of the scatter's datagrams (UDP GRO; default true). */
  scatterUdpOffload?: boolean;
  /** Receive QEMU guests (a target QEMU per incoming VM) instead of simulated VMs. */
  qemu?: boolean;
  /**
   * QEMU guests: a record per guest that arrived is kept here, so that a restarted agent takes
   * back the guests it started (restore()). Undefined: in memory only.
   */
  stateDir?: string;
}

/** What a target agent keeps on disk about a QEMU guest that arrived (one JSON file per guest). */
const ArrivedRecord = Type.Object({
  vm: Type.String({ minLength: 1 }),
  job: Type.String(),
  memoryBytes: Type.Integer({ minimum: 0 }),
  machine: QemuMachine,
  guest: Type.Object({
    name: Type.String({ minLength: 1 }),
    pid: Type.Integer({ minimum: 1 }),
    pidPath: Type.String({ minLength: 1 }),
    qmpPath: Type.String({ minLength: 1 }),
    serialPath: Type.String(),
    logPath: Type.Optional(Type.String()),
    workDir: Type.String({ minLength: 1 }),
    ramPath: Type.Optional(Type.String()),
    memoryMiB: Type.Integer({ minimum: 1 }),
  }),
});
type ArrivedRecord = Static<typeof ArrivedRecord> & { guest: GuestRecord };

export class TargetHost {
  readonly name: string;
  readonly sim = new SimTargetHost();
  /** The target QEMUs, when this host receives QEMU guests. */
  readonly qemu: QemuTargetHost | undefined;
  readonly agent: TargetAgent;
  private readonly received = new Map<string, Received>();
  private readonly receivers = new Map<string, ScatterReceiver>();
  /** Machines announced by source agents, by VM: what a target QEMU is started as. */
  private readonly announced = new Map<string, { job: string; machine: QemuMachine }>();

  constructor(private readonly opts: TargetHostOptions) {
    this.name = opts.name;
    const sources = {
      get: (vm: string): LaunchOptions | undefined => {
        const a = this.announced.get(vm);
        return a && machineLaunch(a.machine);
      },
    };
    this.qemu = opts.qemu ? new QemuTargetHost({ name: opts.name, sources, logger: opts.logger }) : undefined;
    const incoming: IncomingFactory = (hello) => {
      const prev = this.received.get(hello.vm);
      // A guest that runs here (or is arriving) keeps its record: the second one is refused.
      if (this.qemu && prev && prev.state !== 'failed') {
        return Promise.reject(new VmsError(ErrorCode.CONFLICT, `VM ${hello.vm} is already ${prev.state === 'running' ? 'running' : 'arriving'} on ${this.name} (job ${prev.job})`));
      }
      const rec: Received = { job: hello.job, state: 'receiving', memoryBytes: 0 };
      this.received.set(hello.vm, rec);
      const log = opts.logger.child({ job: hello.job, vm: hello.vm, target: this.name });
      const failed = (e: unknown): void => {
        rec.state = 'failed';
        rec.detail = (e as Error).message;
        // A discarded VM holds no memory here.
        this.sim.images.delete(hello.vm);
        log.warn({ err: rec.detail }, 'incoming VM discarded');
      };
      const arrived = (memoryBytes: number): void => {
        rec.state = 'running';
        rec.memoryBytes = memoryBytes;
        log.info({ memoryBytes }, 'VM running on this target');
        if (this.qemu) this.saveArrived(hello.vm, rec, log);
      };
      if (this.qemu) {
        const p = this.incomingQemu(hello);
        p.then(
          (inc) => inc.done.then(() => arrived(this.announcedBytes(hello.vm)), failed),
          failed,
        );
        return p;
      }
      // SimTargetHost builds its incoming VM synchronously.
      const inc = this.sim.incoming(hello) as IncomingVm;
      inc.done.then(() => {
        const image = this.sim.images.get(hello.vm);
        arrived(image?.blocks.reduce((s, b) => s + b.usedLength, 0) ?? 0);
      }, failed);
      return inc;
    };
    // Content ids are per job (each source's index numbers its own): one store per job.
    this.agent = new TargetAgent({ name: opts.name, host: opts.host, port: opts.port, incoming, logger: opts.logger, storePerJob: true });
  }

  /** What this host receives, as agents register it. */
  get kind(): 'sim' | 'qemu' {
    return this.qemu ? 'qemu' : 'sim';
  }

  /**
   * A source agent announces the machine of a VM it is about to send (QEMU hosts only). A VM
   * already here or arriving cannot be announced again.
   */
  expect(vm: string, job: string, machine: QemuMachine): void {
    if (!this.qemu) {
      throw new VmsError(ErrorCode.CONFIG, `target agent ${this.name} receives simulated VMs (agent.fleet sim); it cannot start QEMU guest ${vm}. Start it with --fleet qemu`);
    }
    const r = this.received.get(vm);
    if (r && r.state !== 'failed') throw new VmsError(ErrorCode.CONFLICT, `VM ${vm} is already ${r.state === 'running' ? 'running' : 'arriving'} on ${this.name} (job ${r.job})`);
    // Files the machine boots from are this host's: say so now, not when QEMU fails to start.
    for (const [what, path] of [['kernel', machine.kernel], ['initrd', machine.initrd]] as const) {
      if (path !== undefined && !existsSync(path)) throw new VmsError(ErrorCode.CONFIG, `target ${this.name} has no ${what} ${path} for VM ${vm}; the machine's files must exist on every target`);
    }
    this.announced.set(vm, { job, machine });
  }

  private incomingQemu(hello: HelloFrame): Promise<IncomingVm> {
    const a = this.announced.get(hello.vm);
    if (!a || a.job !== hello.job) {
      return Promise.reject(
        new VmsError(ErrorCode.CONFIG, `target ${this.name}: VM ${hello.vm} of job ${hello.job} arrived, but its source announced no QEMU machine for it${a ? ` (one for job ${a.job})` : ''}`),
      );
    }
    return Promise.resolve(this.qemu!.incoming(hello));
  }

  private recordPath(vm: string): string {
    return join(this.opts.stateDir!, `${encodeURIComponent(vm)}.json`);
  }

  private saveArrived(vm: string, rec: Received, log: Logger): void {
    const a = this.announced.get(vm);
    const g = this.qemu?.vms.get(vm)?.guest;
    if (this.opts.stateDir === undefined || !a || !g) return;
    const r: ArrivedRecord = { vm, job: rec.job, memoryBytes: rec.memoryBytes, machine: a.machine, guest: g.record() };
    try {
      mkdirSync(this.opts.stateDir, { recursive: true });
      const path = this.recordPath(vm);
      writeFileSync(`${path}.tmp`, JSON.stringify(r));
      renameSync(`${path}.tmp`, path);
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'cannot record the arrived guest; a restarted agent will not know it');
    }
  }

  private dropArrived(vm: string): void {
    if (this.opts.stateDir !== undefined) rmSync(this.recordPath(vm), { force: true });
  }

  /**
   * QEMU guests: take back the guests an earlier run of this agent started and that still run
   * (their records in stateDir); records of guests that are gone are removed. Returns their names.
   */
  async restore(): Promise<string[]> {
    const dir = this.opts.stateDir;
    if (!this.qemu || dir === undefined || !existsSync(dir)) return [];
    const back: string[] = [];
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.json'))) {
      const path = join(dir, f);
      let r: unknown;
      try {
        r = JSON.parse(readFileSync(path, 'utf8'));
      } catch (e) {
        this.opts.logger.warn({ file: path, err: (e as Error).message }, 'unreadable guest record ignored');
        continue;
      }
      if (!Value.Check(ArrivedRecord, r)) {
        const why = [...Value.Errors(ArrivedRecord, r)].slice(0, 3).map((e) => `${e.instancePath || '/'} ${e.message}`);
        this.opts.logger.warn({ file: path, problems: why }, 'malformed guest record ignored');
        continue;
      }
      let guest;
      try {
        guest = await reattachGuest(r.guest);
      } catch (e) {
        this.opts.logger.warn({ vm: r.vm, err: (e as Error).message }, 'a guest this agent started runs, but its QMP socket does not answer; not taken back');
        continue;
      }
      if (!guest) {
        rmSync(path, { force: true });
        this.opts.logger.info({ vm: r.vm }, 'a guest this agent started is gone; its record removed');
        continue;
      }
      this.qemu.vms.set(r.vm, { guest, launch: machineLaunch(r.machine) });
      this.announced.set(r.vm, { job: r.job, machine: r.machine });
      this.received.set(r.vm, { job: r.job, state: 'running', memoryBytes: r.memoryBytes });
      back.push(r.vm);
    }
    if (back.length > 0) this.opts.logger.info({ vms: back }, 'took back the guests an earlier run of this agent started');
    return back;
  }

  private announcedBytes(vm: string): number {
    const a = this.announced.get(vm);
    return a ? machineRamBytes(a.machine) : 0;
  }

  listen(): Promise<{ host: string; port: number }> {
    return this.agent.listen();
  }

  listVms(): AgentVm[] {
    return [...this.received].map(([name, r]) => ({ name, memoryBytes: r.memoryBytes, state: r.state, job: r.job }));
  }

  usage(): { usedBytes: number; vmCount: number } {
    let usedBytes = 0;
    let vmCount = 0;
    for (const r of this.received.values())
      if (r.state === 'running') {
        usedBytes += r.memoryBytes;
        vmCount++;
      }
    return { usedBytes, vmCount };
  }

  /** RAM digest of a received VM (computed once; the simulated target does not run on). */
  digest(vm: string): DigestReply | undefined {
    const r = this.received.get(vm);
    if (!r) return undefined;
    if (r.state !== 'running') return { vm, state: r.state, ...(r.detail ? { detail: r.detail } : {}) };
    // A target QEMU runs the guest on: there is no fixed image to digest.
    if (this.qemu) return { vm, state: r.state, detail: 'QEMU guest running; its RAM is not digested' };
    const image = this.sim.images.get(vm);
    if (!image) return { vm, state: r.state, detail: 'image gone' };
    r.digest ??= ramImageDigest(image);
    return { vm, state: r.state, digest: r.digest };
  }

  /**
   * Forget a VM: the operator took it over (a QEMU guest runs on, no longer watched here) or
   * shut it down.
   */
  forget(vm: string): boolean {
    this.sim.images.delete(vm);
    this.sim.deviceState.delete(vm);
    this.qemu?.release(vm)?.guest.detach();
    this.dropArrived(vm);
    this.announced.delete(vm);
    return this.received.delete(vm);
  }

  /**
   * Take part in a job's scatter: a receiver on this host's interface fills the job's content
   * store; it ends when the source says BYE (or goes silent). Returns the groups it will join.
   */
  async openScatter(job: string, session: unknown, target: number): Promise<number[]> {
    this.receivers.get(job)?.close();
    const s = sessionFromJson(session);
    const r = await ScatterReceiver.open({
      session: s,
      target,
      store: this.agent.storeFor(job),
      iface: this.opts.scatterInterface ?? '127.0.0.1',
      udpOffload: this.opts.scatterUdpOffload ?? true,
    });
    this.receivers.set(job, r);
    const log = this.opts.logger.child({ job, target: this.name });
    void r.done.then((res) => {
      if (this.receivers.get(job) === r) this.receivers.delete(job);
      log.info({ ended: res.ended, held: res.held.length, ...(res.coalescingOff ? { coalescingOff: res.coalescingOff } : {}) }, 'scatter receiver done');
    });
    return r.groups;
  }

  /** A job ended: its content store is no longer referenced. */
  releaseJob(job: string): boolean {
    this.receivers.get(job)?.close();
    this.receivers.delete(job);
    const held = this.agent.dropStore(job);
    if (held) this.opts.logger.info({ job }, 'content store of the ended job released');
    return held;
  }

  /** Jobs whose content store this host holds (heartbeats list them; see JobManager.releaseStores). */
  storeJobs(): string[] {
    return this.agent.storeJobs();
  }

  /**
   * Stop receiving. Target QEMUs still loading are discarded; guests that arrived run on without
   * this agent (they are guests now, not ours to stop).
   */
  async close(): Promise<void> {
    for (const r of this.receivers.values()) r.close();
    this.receivers.clear();
    await this.agent.close();
    if (this.qemu) {
      for (const vm of [...this.qemu.vms.keys()]) this.qemu.release(vm)?.guest.detach();
      await this.qemu.dispose();
    }
  }
}
