/**
 * Baseline (a)/(b): plain QEMU-style migration. Each simulated VM's own pre-copy stream goes
 * straight over TCP to a simulated target, no dedup, no proxy: what QEMU migrating directly
 * sends. Downtime is measured as everywhere else: source stop to target resume (epoch ms of the
 * same host clock, so the two ends may be different processes).
 *
 * The target side (servePlainTargets) runs in this process on loopback, or as its own process
 * in a receiver namespace (bench/plain-target-main.ts); the source side (plainMigrate) connects
 * to a list of target addresses, VM i to target i mod N.
 *
 * Per connection: source -> target a 32-byte name field, then the VM's stream (the plain path
 * has no framing of its own). When the VM has resumed, target -> source one JSON line
 * {vm, resumedAtEpochMs, bytes} (the "migration completed" a real destination reports through
 * its management plane; about 100 bytes). Verification happens after the timed window, so
 * hashing never competes with the migrations it is compared against: a new connection whose
 * name field is "?NAME" gets one line {vm, digest} with the RAM digest of the rebuilt VM NAME.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import type { SimSourceVm } from '../src/agent/sim-agents.js';
import { ramImageDigest, simVmDigest } from '../src/agent/vm-digest.js';
import { runPrecopy } from '../src/memory/sim-source.js';
import type { RamImage } from '../src/memory/ram-image.js';
import { SimTarget } from '../src/memory/sim-target.js';

const NAME_BYTES = 32;

export interface PlainVmResult {
  vm: string;
  /** host:port of the target it went to. */
  target: string;
  bytes: number;
  rounds: number;
  stoppedAtEpochMs: number;
  resumedAtEpochMs: number;
  downtimeMs: number;
  verified: boolean;
}

export interface PlainTargetServer {
  host: string;
  port: number;
  /** Rebuilt images by VM name (for in-process verification). */
  images: Map<string, RamImage>;
  close(): Promise<void>;
}

/** Accepts plain migration streams, rebuilds each VM, and reports resume and digest per connection. */
export async function servePlainTargets(o: { host?: string; port?: number; onError?: (e: Error) => void } = {}): Promise<PlainTargetServer> {
  const sockets = new Set<Socket>();
  const images = new Map<string, RamImage>();
  // Half-open: the source ends its side when the stream is complete; the resume line goes back after.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', (e) => o.onError?.(e));
    socket.setNoDelay(true);
    socket.once('readable', function readName() {
      const head = socket.read(NAME_BYTES) as Buffer | null;
      if (!head) {
        if (socket.readableEnded) return socket.destroy();
        socket.once('readable', readName);
        return;
      }
      const name = head.toString('latin1').replace(/\0+$/, '');
      if (name.startsWith('?')) {
        const image = images.get(name.slice(1));
        socket.end(JSON.stringify({ vm: name.slice(1), digest: image ? ramImageDigest(image) : null }) + '\n');
        return;
      }
      const t = new SimTarget({ name });
      socket.pipe(t.stream);
      t.done.then(
        (r) => {
          // Everything after the stream's end is our small request protocol, not stream bytes.
          images.set(name, r.image);
          socket.end(JSON.stringify({ vm: name, resumedAtEpochMs: performance.timeOrigin + r.resumedAt, bytes: r.bytes }) + '\n');
        },
        (e: unknown) => {
          o.onError?.(e as Error);
          socket.destroy();
        },
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    host: a.address,
    port: a.port,
    images,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Reads JSON lines from a socket, one promise per line. */
function lineReader(socket: Socket): () => Promise<Record<string, unknown>> {
  let buf = '';
  const lines: string[] = [];
  const waiting: Array<{ resolve: (l: string) => void; reject: (e: Error) => void }> = [];
  let failure: Error | undefined;
  socket.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w.resolve(l);
      else lines.push(l);
    }
  });
  const fail = (e: Error): void => {
    failure ??= e;
    for (const w of waiting.splice(0)) w.reject(failure);
  };
  socket.on('error', fail);
  socket.on('close', () => fail(new Error('the plain target closed the connection before answering')));
  return async () => {
    const queued = lines.shift();
    if (queued !== undefined) return JSON.parse(queued) as Record<string, unknown>;
    if (failure) throw failure;
    const l = await new Promise<string>((resolve, reject) => waiting.push({ resolve, reject }));
    return JSON.parse(l) as Record<string, unknown>;
  };
}

export interface PlainMigrateOptions {
  parallel: number;
  maxBandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  maxRounds: number;
  /** Where the VMs go: VM i to targets[i mod N]. */
  targets: Array<{ host: string; port: number }>;
  /** Called when the last VM has resumed, before verification. */
  onMigrated?: () => void;
  /** In-process targets: compare images directly instead of asking for digests. */
  localImages?: Map<string, RamImage>;
}

export interface PlainMigrateResult {
  vms: PlainVmResult[];
  /** First connect to the last VM resumed (verification excluded). */
  wallSeconds: number;
  /** This process's CPU over the same window. */
  cpuSeconds: number;
}

export async function plainMigrate(vms: SimSourceVm[], opts: PlainMigrateOptions): Promise<PlainMigrateResult> {
  if (opts.targets.length === 0) throw new Error('plainMigrate: no targets');
  const open: Array<{ vm: SimSourceVm; target: { host: string; port: number }; row: PlainVmResult }> = [];
  const queue = vms.map((vm, i) => ({ vm, target: opts.targets[i % opts.targets.length]! }));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    for (let job = queue.shift(); job; job = queue.shift()) {
      const { vm, target } = job;
      const socket = await connectTarget(target, vm.name);
      const next = lineReader(socket);
      const r = await runPrecopy(vm.vm, socket, {
        maxBandwidthBytesPerSec: opts.maxBandwidthBytesPerSec,
        downtimeLimitMs: opts.downtimeLimitMs,
        maxRounds: opts.maxRounds,
      });
      const ack = await next();
      socket.destroy();
      const stoppedAtEpochMs = performance.timeOrigin + r.stoppedAt;
      const resumedAtEpochMs = Number(ack.resumedAtEpochMs);
      const row: PlainVmResult = {
        vm: vm.name,
        target: `${target.host}:${target.port}`,
        bytes: r.bytes,
        rounds: r.rounds,
        stoppedAtEpochMs,
        resumedAtEpochMs,
        downtimeMs: resumedAtEpochMs - stoppedAtEpochMs,
        verified: false,
      };
      open.push({ vm, target, row });
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.parallel, vms.length) }, worker));
  const wallSeconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  opts.onMigrated?.();
  for (const o of open) {
    const image = opts.localImages?.get(o.vm.name);
    if (image) {
      o.row.verified = o.vm.vm.sameAs(image).equal;
    } else {
      const socket = await connectTarget(o.target, `?${o.vm.name}`);
      try {
        const d = await lineReader(socket)();
        o.row.verified = d.digest === simVmDigest(o.vm.vm);
      } finally {
        socket.destroy();
      }
    }
  }
  return { vms: open.map((o) => o.row), wallSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

/** A connection to a plain target, its 32-byte name field written. */
async function connectTarget(target: { host: string; port: number }, name: string): Promise<Socket> {
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = connect(target.port, target.host, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
  socket.setNoDelay(true);
  const field = Buffer.alloc(NAME_BYTES);
  field.write(name, 'latin1');
  socket.write(field);
  return socket;
}
