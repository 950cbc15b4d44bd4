/**
 * Target agent: accepts one converge connection per incoming VM, keeps the host's content store
 * (filled by the scatter and by converge pages), and hands each rebuilt stream to whatever runs
 * the VM here: a simulated target or a target QEMU (IncomingFactory).
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { ContentStore } from '../memory/content-store.js';
import { ConvergeTargetConnection, type IncomingFactory } from '../transport/converge-target.js';
import type { ConvergeResult } from '../wire/converge-frame.js';

export interface TargetAgentOptions {
  name: string;
  /** Listen address: loopback by default. */
  host?: string;
  port?: number;
  incoming: IncomingFactory;
  /** Content ids expected in the job (sizes the store index). */
  expectedContents?: number;
  /**
   * Keep one content store per job (content ids are the source's, per job): for a long-running
   * agent that serves many jobs. Default false: one store, `store`, for the single job.
   */
  storePerJob?: boolean;
  logger?: Logger;
}

export class TargetAgent {
  readonly name: string;
  readonly store: ContentStore;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly connections: ConvergeTargetConnection[] = [];
  private readonly vmResults = new Map<string, Promise<ConvergeResult & { vm: string }>>();
  private readonly jobStores = new Map<string, ContentStore>();

  constructor(private readonly opts: TargetAgentOptions) {
    this.name = opts.name;
    this.store = new ContentStore(opts.expectedContents ?? 1024);
    this.server = createServer((socket) => this.accept(socket));
  }

  async listen(): Promise<{ host: string; port: number }> {
    const host = this.opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port ?? 0, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const a = this.server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** The converge result of a VM once its connection has said who it is. */
  resultOf(vm: string): Promise<ConvergeResult & { vm: string }> | undefined {
    return this.vmResults.get(vm);
  }

  /** The content store of `job` (with storePerJob; otherwise the one store). */
  storeFor(job: string): ContentStore {
    if (!this.opts.storePerJob) return this.store;
    let st = this.jobStores.get(job);
    if (!st) {
      st = new ContentStore(this.opts.expectedContents ?? 1024);
      this.jobStores.set(job, st);
    }
    return st;
  }

  /** Jobs whose content store this agent holds (storePerJob). */
  storeJobs(): string[] {
    return [...this.jobStores.keys()];
  }

  /** Forget a finished job's store (storePerJob). */
  dropStore(job: string): boolean {
    return this.jobStores.delete(job);
  }

  get convergeStats() {
    return this.connections.map((c) => c.stats);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    const conn = new ConvergeTargetConnection(
      socket,
      this.opts.storePerJob ? (hello) => this.storeFor(hello.job) : this.store,
      (hello) => {
        this.vmResults.set(hello.vm, conn.result);
        this.opts.logger?.debug({ vm: hello.vm, job: hello.job, target: this.name }, 'converge connection');
        return this.opts.incoming(hello);
      },
    );
    this.connections.push(conn);
    conn.result.then(
      (r) => this.opts.logger?.debug({ vm: r.vm, target: this.name, streamBytes: r.streamBytes }, 'vm resumed on target'),
      (e: unknown) => this.opts.logger?.warn({ vm: conn.stats.vm, target: this.name, err: (e as Error).message }, 'converge failed on target'),
    );
  }
}
