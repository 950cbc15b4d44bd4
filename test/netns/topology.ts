/**
 * Network-namespace topology for tests and benches (see topology.sh): a sender and N receivers
 * on a bridge, with a unique name prefix per run, torn down even on failure (destroy() in a
 * finally, plus a process-exit hook for crashes).
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const TOPOLOGY_SH = fileURLToPath(new URL('./topology.sh', import.meta.url));
export const PROJECT_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const SENDER_ADDR = '10.200.0.1';
export const receiverAddr = (i: number): string => `10.200.0.${11 + i}`;

export interface Impairment {
  loss?: number;
  duplicate?: number;
  reorder?: number;
  /** Rate of the slow lane that reorders (default 20mbit). */
  reorderRate?: string;
}

export interface TopologyOptions {
  receivers: number;
  mtu: number;
  /** Applied to every receiver's link. */
  impair?: Impairment;
  /** tbf rate on the sender's link (e.g. '1gbit'). */
  senderRate?: string;
  /** Name prefix (default: 'vs' + random). */
  prefix?: string;
}

export interface LinkCounters {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
  rxDropped: number;
  txDropped: number;
}

export class Topology {
  readonly senderNs: string;
  readonly bridgeNs: string;
  private readonly children = new Set<ChildProcess>();
  private destroyed = false;
  private readonly exitHook = (): void => this.destroySync();

  constructor(
    readonly prefix: string,
    readonly receivers: number,
    readonly mtu: number,
  ) {
    this.senderNs = `${prefix}-s`;
    this.bridgeNs = `${prefix}-br`;
    process.once('exit', this.exitHook);
  }

  receiverNs(i: number): string {
    return `${this.prefix}-r${i + 1}`;
  }

  /** Run a command inside a namespace; resolves with stdout. */
  async exec(ns: string, cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
    const { stdout } = await run('ip', ['netns', 'exec', ns, cmd, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  }

  /** Start a long-running process inside a namespace; killed (by pid) in destroy(). */
  spawn(ns: string, cmd: string, args: string[], opts: { cwd?: string } = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { cwd: opts.cwd ?? PROJECT_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** The sender's and every receiver's namespace (not the bridge's). */
  hostNamespaces(): string[] {
    return [this.senderNs, ...Array.from({ length: this.receivers }, (_, i) => this.receiverNs(i))];
  }

  /**
   * TCP congestion control `cc` for every connection of the host namespaces. A namespace other
   * than the initial one may take as its default only an algorithm the host allows
   * (net.ipv4.tcp_allowed_congestion_control; seen here: "reno bbr" with cubic loaded), so for
   * any other `cc` (or with `viaRoutes`) it goes on eth0's subnet route instead (`congctl`, which
   * the kernel applies to the connections on that route on both ends without that restriction;
   * the sockets' default stays the host's, which only loopback connections would use).
   * Returns where it was set.
   */
  async setTcpCongestion(cc: string, o: { viaRoutes?: boolean } = {}): Promise<'sysctl' | 'routes'> {
    const via = o.viaRoutes || !tcpCongestionAllowed().includes(cc) ? 'routes' : 'sysctl';
    for (const ns of this.hostNamespaces()) {
      if (via === 'sysctl') {
        await this.exec(ns, 'sysctl', ['-q', '-w', `net.ipv4.tcp_congestion_control=${cc}`]);
        continue;
      }
      const routes = JSON.parse(await this.exec(ns, 'ip', ['-j', 'route', 'show', 'dev', 'eth0', 'proto', 'kernel', 'scope', 'link'])) as Array<{ dst: string; prefsrc?: string }>;
      if (routes.length === 0) throw new Error(`${ns}: no subnet route on eth0 to set TCP congestion control on`);
      for (const r of routes) {
        await this.exec(ns, 'ip', ['route', 'replace', r.dst, 'dev', 'eth0', 'proto', 'kernel', 'scope', 'link', ...(r.prefsrc ? ['src', r.prefsrc] : []), 'congctl', cc]);
      }
    }
    return via;
  }

  /**
   * Give receiver i's link (its eth0 and its bridge port) another MTU, e.g. smaller than a
   * session's. The bridge forwards a GSO packet (a segmented UDP send) whatever its segments'
   * size (is_skb_forwardable), where a physical link would drop each segment larger than its MTU;
   * so the port also gets a tbf whose peak-rate bucket holds one frame of the MTU, which drops
   * larger frames and GSO packets whose segments are larger (checked here: 1,472-byte datagrams
   * pass, 1,473 and segments of 8,220 do not).
   */
  async setReceiverMtu(i: number, mtu: number): Promise<void> {
    const port = `p-r${i + 1}`;
    await run('ip', ['-n', this.bridgeNs, 'link', 'set', port, 'mtu', String(mtu)]);
    await run('ip', ['-n', this.receiverNs(i), 'link', 'set', 'eth0', 'mtu', String(mtu)]);
    // Under an impairment's htb (topology.sh impair), as the leaf of its default class.
    const impaired = (await run('tc', ['-n', this.bridgeNs, 'qdisc', 'show', 'dev', port])).stdout.includes('htb 1:');
    const frame = ['tbf', 'rate', '10gbit', 'burst', '64kb', 'peakrate', '20gbit', 'mtu', String(mtu + 14), 'limit', '10mb'];
    await run('tc', ['-n', this.bridgeNs, 'qdisc', 'replace', 'dev', port, ...(impaired ? ['parent', '1:10', 'handle', '10:'] : ['root']), ...frame]);
  }

  /** Kernel counters of eth0 in every host namespace (sender first), from `ip -s -j link show`. */
  async linkCounters(): Promise<{ sender: LinkCounters; receivers: LinkCounters[] }> {
    const read = async (ns: string): Promise<LinkCounters> => {
      const out = await this.exec(ns, 'ip', ['-s', '-j', 'link', 'show', 'dev', 'eth0']);
      const j = JSON.parse(out) as Array<{ stats64: { rx: Record<string, number>; tx: Record<string, number> } }>;
      const s = j[0]!.stats64;
      return { rxBytes: s.rx.bytes!, rxPackets: s.rx.packets!, txBytes: s.tx.bytes!, txPackets: s.tx.packets!, rxDropped: s.rx.dropped!, txDropped: s.tx.dropped! };
    };
    const sender = await read(this.senderNs);
    const receivers = await Promise.all(Array.from({ length: this.receivers }, (_, i) => read(this.receiverNs(i))));
    return { sender, receivers };
  }

  /** Packets the impairment dropped on each receiver's bridge port (tc counters). */
  async impairmentDrops(): Promise<number[]> {
    const out: number[] = [];
    for (let i = 0; i < this.receivers; i++) {
      try {
        const j = JSON.parse(await run('tc', ['-n', this.bridgeNs, '-s', '-j', 'qdisc', 'show', 'dev', `p-r${i + 1}`]).then((r) => r.stdout)) as Array<{ handle: string; drops?: number }>;
        out.push(j.find((q) => q.handle === '20:')?.drops ?? 0);
      } catch {
        out.push(0);
      }
    }
    return out;
  }

  /** Multicast database of the bridge (which ports joined which groups). */
  async mdb(): Promise<string> {
    return (await run('bridge', ['-n', this.bridgeNs, 'mdb', 'show'])).stdout;
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    process.off('exit', this.exitHook);
    await this.killChildren();
    await run(TOPOLOGY_SH, ['down', this.prefix]).catch(() => undefined);
  }

  private async killChildren(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const c of this.children) {
      if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined) continue;
      waits.push(new Promise((resolve) => c.once('exit', () => resolve())));
      // `ip netns exec` execs the command, so the pid is the program itself.
      c.kill('SIGTERM');
      const pid = c.pid;
      setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 2000).unref();
    }
    await Promise.all(waits);
  }

  private destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.children) if (c.pid !== undefined && c.exitCode === null) c.kill('SIGKILL');
    try {
      execFileSync(TOPOLOGY_SH, ['down', this.prefix], { stdio: 'ignore' });
    } catch {
      /* best effort at exit */
    }
  }
}

/** The TCP congestion control algorithms the kernel has loaded (throws if it cannot tell). */
export function tcpCongestionAvailable(): string[] {
  return sysctlList('tcp_available_congestion_control');
}

/** The algorithms a namespace other than the initial one may take as its default. */
export function tcpCongestionAllowed(): string[] {
  return sysctlList('tcp_allowed_congestion_control');
}

function sysctlList(name: string): string[] {
  return readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/);
}

/** Null when namespaces can be used here, otherwise why not. */
export async function netnsUnavailableReason(): Promise<string | null> {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces need root (run as root or in CI)';
  for (const [cmd, args] of [
    ['ip', ['netns', 'list']],
    ['tc', ['-V']],
    ['bridge', ['-V']],
  ] as const) {
    try {
      await run(cmd, [...args]);
    } catch (err) {
      return `${cmd} is not usable: ${(err as Error).message}`;
    }
  }
  return null;
}

export async function createTopology(o: TopologyOptions): Promise<Topology> {
  const prefix = o.prefix ?? `vs${randomBytes(4).toString('hex').slice(0, 7)}`;
  const t = new Topology(prefix, o.receivers, o.mtu);
  try {
    await run(TOPOLOGY_SH, ['up', prefix, String(o.receivers), String(o.mtu)]);
    const imp = o.impair;
    if (imp && (imp.loss || imp.duplicate || imp.reorder)) {
      for (let i = 1; i <= o.receivers; i++) {
        const args = ['impair', prefix, String(i), String(imp.loss ?? 0), String(imp.duplicate ?? 0), String(imp.reorder ?? 0)];
        if (imp.reorderRate) args.push(imp.reorderRate);
        await run(TOPOLOGY_SH, args);
      }
    }
    if (o.senderRate) await run(TOPOLOGY_SH, ['limit', prefix, o.senderRate]);
  } catch (err) {
    await t.destroy();
    throw err;
  }
  return t;
}

export interface QdiscCounters {
  kind: string;
  bytes: number;
  packets: number;
  drops: number;
  overlimits: number;
}

/** Counters of the root qdisc on the sender's eth0 (the tbf of `senderRate`), from `tc -s -j`. */
export async function senderQdiscCounters(t: Topology): Promise<QdiscCounters | undefined> {
  const out = await t.exec(t.senderNs, 'tc', ['-s', '-j', 'qdisc', 'show', 'dev', 'eth0']);
  const j = JSON.parse(out) as Array<{ kind: string; root?: boolean; bytes?: number; packets?: number; drops?: number; overlimits?: number }>;
  const q = j.find((x) => x.root) ?? j[0];
  return q ? { kind: q.kind, bytes: q.bytes ?? 0, packets: q.packets ?? 0, drops: q.drops ?? 0, overlimits: q.overlimits ?? 0 } : undefined;
}
