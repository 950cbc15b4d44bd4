/**
 * Baseline (a)/(b): plain QEMU-style migration. Each simulated VM's own pre-copy stream goes
 * straight over TCP to a simulated target, no dedup, no proxy: what QEMU migrating directly
 * sends. Downtime is measured as everywhere else: source stop to target resume.
 */
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import type { SimSourceVm } from '../src/agent/sim-agents.js';
import { runPrecopy } from '../src/memory/sim-source.js';
import { SimTarget, type TargetResult } from '../src/memory/sim-target.js';

export interface PlainVmResult {
  vm: string;
  bytes: number;
  rounds: number;
  downtimeMs: number;
  verified: boolean;
}

export async function plainMigrate(
  vms: SimSourceVm[],
  opts: { parallel: number; maxBandwidthBytesPerSec: number; downtimeLimitMs: number; maxRounds: number },
): Promise<PlainVmResult[]> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    // A 32-byte name field precedes the stream: the plain path has no framing of its own.
    socket.once('readable', () => {
      const head = socket.read(32) as Buffer | null;
      if (!head) return socket.destroy();
      const name = head.toString('latin1').replace(/\0+$/, '');
      const t = new SimTarget({ name });
      t.done.catch(() => {});
      resolvers.get(name)?.(t.done);
      socket.pipe(t.stream);
    });
  });
  const resolvers = new Map<string, (p: Promise<TargetResult>) => void>();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const results: PlainVmResult[] = [];
  const queue = [...vms];
  const worker = async (): Promise<void> => {
    for (let vm = queue.shift(); vm; vm = queue.shift()) {
      const done = new Promise<Promise<TargetResult>>((r) => resolvers.set(vm.name, r));
      const socket = await new Promise<Socket>((resolve, reject) => {
        const s = connect(port, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
      socket.setNoDelay(true);
      const name = Buffer.alloc(32);
      name.write(vm.name, 'latin1');
      socket.write(name);
      const r = await runPrecopy(vm.vm, socket, {
        maxBandwidthBytesPerSec: opts.maxBandwidthBytesPerSec,
        downtimeLimitMs: opts.downtimeLimitMs,
        maxRounds: opts.maxRounds,
      });
      const target = await (await done);
      const cmp = vm.vm.sameAs(target.image);
      results.push({ vm: vm.name, bytes: r.bytes, rounds: r.rounds, downtimeMs: target.resumedAt - r.stoppedAt, verified: cmp.equal });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(opts.parallel, vms.length) }, worker));
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
  return results;
}
