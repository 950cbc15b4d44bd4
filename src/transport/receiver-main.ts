/**
 * A scatter receiver as its own process, for targets in other network namespaces:
 *
 *   ip netns exec NS node --import tsx src/transport/receiver-main.ts \
 *     --session session.json --target 0 --iface 10.200.0.11 --out held.json [--digests] [--udp-offload on|off]
 *
 * Prints "ready" once its first groups are joined, runs until the source says goodbye (or goes
 * silent), then writes what it holds (ids, digests, counters) as JSON to --out.
 */
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ContentStore } from '../memory/content-store.js';
import { ScatterReceiver, type ScatterReceiverOptions } from './multicast-receiver.js';
import { offloadArg, pageDigest, parseArgs, readSessionFile, storeDigest, type ReceiverOutput } from './scatter-child.js';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const sessionPath = args.get('session');
  const out = args.get('out');
  const iface = args.get('iface');
  const target = Number(args.get('target'));
  if (!sessionPath || !out || !iface || !Number.isInteger(target)) {
    throw new Error('usage: receiver-main --session FILE --target N --iface ADDR --out FILE [--digests] [--idle-timeout MS] [--udp-offload on|off]');
  }
  const session = readSessionFile(sessionPath);
  let expected = 0;
  for (const g of session.groups) if (g.targets.includes(target)) expected += g.contents.length;
  const store = new ContentStore(Math.max(1024, expected));
  const o: ScatterReceiverOptions = { session, target, store, iface, udpOffload: offloadArg(args) };
  if (args.has('idle-timeout')) o.idleTimeoutMs = Number(args.get('idle-timeout'));
  const openedAt = Date.now();
  const lag = monitorEventLoopDelay({ resolution: 5 });
  lag.enable();
  const cpu0 = process.cpuUsage();
  const faults0 = process.resourceUsage().minorPageFault;
  const r = await ScatterReceiver.open(o);
  process.stdout.write('ready\n');
  const stop = (): void => r.close();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  const res = await r.done;
  const endedAt = Date.now();
  lag.disable();
  const cpu = process.cpuUsage(cpu0);
  const pageFaults = process.resourceUsage().minorPageFault - faults0;
  const result: ReceiverOutput = {
    target,
    ended: res.ended,
    held: Array.from(res.held),
    setDigest: storeDigest(store, res.held),
    counters: res.counters,
    openedAt,
    endedAt,
    cpuMs: { user: cpu.user / 1000, system: cpu.system / 1000 },
    pageFaults,
    loopDelayMs: { max: lag.max / 1e6, p99: lag.percentile(99) / 1e6, mean: lag.mean / 1e6 },
  };
  if (args.get('digests') === 'true') result.digests = Array.from(res.held, (id) => pageDigest(store.get(id)!));
  writeFileSync(out, JSON.stringify(result));
  process.stdout.write(`done ${res.ended} held=${res.held.length}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`receiver-main: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
