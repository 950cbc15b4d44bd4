/**
 * The link-bound bench's TCP congestion control (root, network namespaces): set in every host
 * namespace, by sysctl where the host allows namespaces that default and otherwise on eth0's
 * subnet route, and used by a real connection across the topology on both of its ends (`ss -ti`).
 *
 * Skips with the reason when namespaces are not usable here; under CI=true that is a failure.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createTopology, netnsUnavailableReason, receiverAddr, tcpCongestionAllowed, tcpCongestionAvailable, type Topology } from '../netns/topology.js';

const reason = await netnsUnavailableReason();
if (reason && process.env.CI !== 'true') console.warn(`bench netns TCP congestion control tests skipped: ${reason}`);

const PORT = 7411;
const available = tcpCongestionAvailable;
const hostDefault = (): string => readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim();

/** The algorithm of the connection sender -> receiver 1, as `ss -ti` shows it in `ns`, while it carries data. */
async function algorithmOnBothEnds(topo: Topology): Promise<{ sender: string; receiver: string }> {
  const server = topo.spawn(topo.receiverNs(0), process.execPath, ['-e', `require('node:net').createServer((s) => s.resume()).listen(${PORT}, '${receiverAddr(0)}', () => console.log('listening'))`]);
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`server exited (${code})`)));
  });
  // Writes for as long as it lives; killed by topo.destroy().
  const client = topo.spawn(topo.senderNs, process.execPath, [
    '-e',
    `const s = require('node:net').connect(${PORT}, '${receiverAddr(0)}', () => { const b = Buffer.alloc(65536); const w = () => { while (s.write(b)); }; s.on('drain', w); w(); console.log('connected'); });`,
  ]);
  await new Promise<void>((resolve, reject) => {
    client.stdout!.once('data', () => resolve());
    client.once('exit', (code) => reject(new Error(`client exited (${code})`)));
  });
  const algo = async (ns: string): Promise<string> => {
    const out = await topo.exec(ns, 'ss', ['-tinH', 'state', 'established']);
    const names = new Set(available());
    const seen = out.split(/\s+/).filter((w) => names.has(w));
    expect(seen.length, `ss in ${ns}:\n${out}`).toBe(1);
    return seen[0]!;
  };
  return { sender: await algo(topo.senderNs), receiver: await algo(topo.receiverNs(0)) };
}

describe.skipIf(reason !== null && process.env.CI !== 'true')('bench netns: TCP congestion control', () => {
  it.runIf(reason !== null)('has its prerequisites (CI)', () => {
    throw new Error(`network-namespace tests cannot run under CI: ${reason}`);
  });

  // An algorithm other than the host's default, so that a namespace left alone would show the wrong one.
  const other = (pool: string[]): string | undefined => pool.find((a) => a !== hostDefault() && available().includes(a));

  it.skipIf(reason !== null)('on the route: a connection uses it on both ends, whatever the host allows namespaces', { timeout: 30_000 }, async () => {
    const cc = other(['cubic', 'reno', 'bbr']);
    expect(cc, `available: ${available().join(' ')}`).toBeDefined();
    const topo = await createTopology({ receivers: 1, mtu: 1500 });
    try {
      expect(await topo.setTcpCongestion(cc!, { viaRoutes: true })).toBe('routes');
      expect(await algorithmOnBothEnds(topo)).toEqual({ sender: cc, receiver: cc });
    } finally {
      await topo.destroy();
    }
  });

  it.skipIf(reason !== null)('picks sysctl for an allowed algorithm and the route for a restricted one', { timeout: 30_000 }, async () => {
    const allowed = tcpCongestionAllowed();
    const cc = other([...allowed, ...available()]);
    expect(cc).toBeDefined();
    const topo = await createTopology({ receivers: 1, mtu: 1500 });
    try {
      const via = await topo.setTcpCongestion(cc!);
      expect(via).toBe(allowed.includes(cc!) ? 'sysctl' : 'routes');
      if (via === 'sysctl') expect((await topo.exec(topo.senderNs, 'sysctl', ['-n', 'net.ipv4.tcp_congestion_control'])).trim()).toBe(cc);
      expect(await algorithmOnBothEnds(topo)).toEqual({ sender: cc, receiver: cc });
    } finally {
      await topo.destroy();
    }
  });
});
