/**
 * The target agent's state: the converge server (TargetAgent, with the host's content store) and
 * the VMs it received, rebuilt into simulated targets (QEMU targets later, through the same
 * IncomingFactory). It answers which VMs it holds and their RAM digests, for verification.
 */
import type { Logger } from 'pino';
import { TargetAgent } from './target-agent.js';
import { SimTargetHost } from './sim-agents.js';
import { ramImageDigest } from './vm-digest.js';
import type { AgentVm, DigestReply } from '../coordinator/schemas.js';
import type { IncomingFactory, IncomingVm } from '../transport/converge-target.js';
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
}

export class TargetHost {
  readonly name: string;
  readonly sim = new SimTargetHost();
  readonly agent: TargetAgent;
  private readonly received = new Map<string, Received>();
  private readonly receivers = new Map<string, ScatterReceiver>();

  constructor(private readonly opts: TargetHostOptions) {
    this.name = opts.name;
    const incoming: IncomingFactory = (hello) => {
      const rec: Received = { job: hello.job, state: 'receiving', memoryBytes: 0 };
      this.received.set(hello.vm, rec);
      const log = opts.logger.child({ job: hello.job, vm: hello.vm, target: this.name });
      // SimTargetHost builds its incoming VM synchronously.
      const inc = this.sim.incoming(hello) as IncomingVm;
      inc.done.then(
        () => {
          rec.state = 'running';
          const image = this.sim.images.get(hello.vm);
          rec.memoryBytes = image?.blocks.reduce((s, b) => s + b.usedLength, 0) ?? 0;
          log.info({ memoryBytes: rec.memoryBytes }, 'VM running on this target');
        },
        (e: unknown) => {
          rec.state = 'failed';
          rec.detail = (e as Error).message;
          // A discarded VM holds no memory here.
          this.sim.images.delete(hello.vm);
          log.warn({ err: rec.detail }, 'incoming VM discarded');
        },
      );
      return inc;
    };
    // Content ids are per job (each source's index numbers its own): one store per job.
    this.agent = new TargetAgent({ name: opts.name, host: opts.host, port: opts.port, incoming, logger: opts.logger, storePerJob: true });
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
    const image = this.sim.images.get(vm);
    if (!image) return { vm, state: r.state, detail: 'image gone' };
    r.digest ??= ramImageDigest(image);
    return { vm, state: r.state, digest: r.digest };
  }

  /** Forget a VM (the operator shut it down here). */
  forget(vm: string): boolean {
    this.sim.images.delete(vm);
    this.sim.deviceState.delete(vm);
    return this.received.delete(vm);
  }

  /**
   * Take part in a job's scatter: a receiver on this host's interface fills the job's content
   * store; it ends when the source says BYE (or goes silent). Returns the groups it will join.
   */
  async openScatter(job: string, session: unknown, target: number): Promise<number[]> {
    this.receivers.get(job)?.close();
    const s = sessionFromJson(session);
    const r = await ScatterReceiver.open({ session: s, target, store: this.agent.storeFor(job), iface: this.opts.scatterInterface ?? '127.0.0.1' });
    this.receivers.set(job, r);
    const log = this.opts.logger.child({ job, target: this.name });
    void r.done.then((res) => {
      if (this.receivers.get(job) === r) this.receivers.delete(job);
      log.info({ ended: res.ended, held: res.held.length }, 'scatter receiver done');
    });
    return r.groups;
  }

  /** A job ended: its content store is no longer referenced. */
  releaseJob(job: string): boolean {
    this.receivers.get(job)?.close();
    this.receivers.delete(job);
    return this.agent.dropStore(job);
  }

  close(): Promise<void> {
    for (const r of this.receivers.values()) r.close();
    this.receivers.clear();
    return this.agent.close();
  }
}
