/**
 * A scatter sender as its own process over synthetic contents, for the network-namespace tests
 * and the scatter bench:
 *
 *   ip netns exec NS node --import tsx src/transport/sender-main.ts \
 *     --session session.json --iface 10.200.0.1 --seed 7 --out result.json \
 *     [--skip-every K] [--rate BYTES_PER_S] [--wait-go] [--igmp auto|on|off] [--udp-offload on|off]
 *     [--flow-window BYTES]
 *
 * Generates the contents, binds the session's sender address, prints "ready", (with --wait-go
 * waits for a "go" line on stdin), runs the scatter and writes the result as JSON.
 */
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { ScatterSender, type ScatterSenderOptions } from './multicast-sender.js';
import { offloadArg, parseArgs, readSessionFile, syntheticContentSource } from './scatter-child.js';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const sessionPath = args.get('session');
  const out = args.get('out');
  const iface = args.get('iface');
  const seed = Number(args.get('seed') ?? 1);
  if (!sessionPath || !out || !iface) {
    throw new Error('usage: sender-main --session FILE --iface ADDR --out FILE [--seed S] [--skip-every K] [--rate B/s] [--wait-go] [--igmp auto|on|off] [--udp-offload on|off] [--flow-window BYTES]');
  }
  const session = readSessionFile(sessionPath);
  const skipEvery = Number(args.get('skip-every') ?? 0);
  const ids: number[] = [];
  for (const g of session.groups) for (const id of g.contents) if (!(skipEvery > 0 && id % skipEvery === skipEvery - 1)) ids.push(id);
  const src = syntheticContentSource(seed, ids);
  const igmpArg = args.get('igmp') ?? 'auto';
  const o: ScatterSenderOptions = {
    session,
    contentBytes: src.contentBytes,
    iface,
    igmp: igmpArg === 'on' ? true : igmpArg === 'off' ? false : 'auto',
    udpOffload: offloadArg(args),
  };
  if (args.has('rate')) o.rateBytesPerSec = Number(args.get('rate'));
  if (args.has('hello-timeout')) o.helloTimeoutMs = Number(args.get('hello-timeout'));
  if (args.has('join-timeout')) o.joinTimeoutMs = Number(args.get('join-timeout'));
  if (args.has('flow-window')) {
    const w = Number(args.get('flow-window'));
    if (!Number.isInteger(w) || w < 0) throw new Error(`--flow-window must be a whole number of bytes (0: off), got ${args.get('flow-window')}`);
    o.flowWindowBytes = w;
  }
  const sender = await ScatterSender.open(o);
  process.stdout.write('ready\n');
  if (args.get('wait-go') === 'true') {
    const rl = createInterface({ input: process.stdin });
    await new Promise<void>((resolve) => rl.on('line', (l) => l.trim() === 'go' && resolve()));
    rl.close();
  }
  const stop = (): void => sender.close();
  process.once('SIGTERM', stop);
  const runStartedAt = Date.now();
  const cpu0 = process.cpuUsage();
  try {
    const r = await sender.run();
    const runEndedAt = Date.now();
    const cpu = process.cpuUsage(cpu0);
    writeFileSync(
      out,
      JSON.stringify({
        runStartedAt,
        runEndedAt,
        /** CPU time of the sender process over run(), ms. */
        cpuMs: { user: cpu.user / 1000, system: cpu.system / 1000 },
        sender: r.sender,
        targets: r.targets.map((t) => ({ ...t, held: Array.from(t.held) })),
      }),
    );
    process.stdout.write(`done ${runEndedAt - runStartedAt} ms\n`);
  } finally {
    sender.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`sender-main: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
