/**
 * `bench strategies --netns`: every strategy between processes on the network-namespace topology
 * (test/netns/topology.ts), with the sender's link limited by a tbf qdisc, so that the link and
 * not this machine's two cores is the bottleneck (notes/benchmarking.md).
 *
 *   sender namespace     (a)/(b): bench/plain-source-main.ts (the fleet, migrating over TCP)
 *                        (c)-(e): coordinator, source agent (the fleet), the `evacuate` CLI
 *   receiver namespace i (a)/(b): bench/plain-target-main.ts
 *                        (c)-(e): target agent ti (converge server, multicast receiver)
 *
 * Bytes come from the interfaces' own counters (`ip -s -j link show dev eth0` in every namespace,
 * before and after) and from the program's counters, side by side. CPU seconds per process come
 * from /proc/PID/stat over the same window (the plain source reports its own). Every process is
 * started per strategy, so each strategy starts from a fresh fleet built from the same seeds.
 */
import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EvacuationConfig } from '../src/config.js';
import {
  createTopology,
  netnsUnavailableReason,
  receiverAddr,
  SENDER_ADDR,
  senderQdiscCounters,
  tcpCongestionAllowed,
  tcpCongestionAvailable,
  type LinkCounters,
  type QdiscCounters,
  type Topology,
} from '../test/netns/topology.js';
import type { PlainMigrateResult } from './plain-migration.js';
import { NODE_FLAGS } from '../src/node-flags.js';

export type NetnsStrategyId = 'a' | 'b' | 'c' | 'd' | 'e';

export interface NetnsOptions {
  /** Rate of the sender's link, Mbit/s (tbf). */
  linkMbit: number;
  mtu: number;
  /**
   * TCP congestion control in every namespace of the topology (default `cubic`, Linux's default),
   * so that the TCP strategies run the same whatever the host's default is (here `bbr`; namespaces
   * would take it). Printed with the results. Where the host does not allow namespaces that
   * default, it is set on the links' routes (Topology.setTcpCongestion).
   */
  tcpCongestion?: string;
}

export interface NetnsScenarioInput {
  id: string;
  config: EvacuationConfig;
}

/** Interface counters over one strategy, bytes. */
export interface InterfaceBytes {
  senderTx: number;
  senderRx: number;
  receiversRx: number;
  receiversTx: number;
  /** Data direction on every link: sender's tx + every receiver's rx. */
  allLinks: number;
  /** The other direction (acks, control, NACKs): sender's rx + every receiver's tx. */
  reverse: number;
  perReceiverRx: number[];
}

export interface NetnsStrategyResult {
  strategy: NetnsStrategyId;
  /** Program counters: what left the source process(es). */
  programSenderBytes: number;
  /** Program counters: sender's link + each target's link, data direction. */
  programAllLinksBytes: number;
  iface: InterfaceBytes;
  /** iface.senderTx / programSenderBytes: headers and control traffic make it above 1. */
  senderGap: number;
  qdisc?: QdiscCounters;
  /** Migration window: first connect to last resume ((a)/(b)), collect + plan + scatter + converge ((c)-(e)). */
  wallSeconds: number;
  /** (c)-(e): the job from creation to end, verification included. */
  jobWallSeconds?: number;
  phasesMs?: Record<string, number>;
  cpuSeconds: Record<string, number>;
  cpuSecondsTotal: number;
  /** The window CPU was read over: (a)/(b) "go" to the last VM migrated; (c)-(e) job submitted to converge done. */
  cpuWindowSeconds: number;
  /** senderTx bits / (wall x link rate): near 1 means the link was the bottleneck. */
  linkUtilisation: number;
  /** Highest single-process CPU / CPU window: near 1 (or above, threads) means that process was CPU-bound. */
  maxProcessCpuShare: number;
  /**
   * 'link' when the sender's link was busy >= 80% of the window and no process used >= 80% of a
   * core; otherwise 'cpu?': this machine's cores, not the link, may have set the time.
   */
  boundBy: 'link' | 'cpu?';
  downtimeMs: { mean: number; max: number; perVm: number[] };
  verified: boolean;
  /** The strategy failed: why (the other strategies still ran). */
  error?: string;
  dedupMinimum?: number;
  scatterNotes?: string[];
  /** (c)-(e): pre-copy rounds per VM and whether its stop-and-copy was forced, from the job's report. */
  rounds?: Array<{ vm: string; rounds: number; forced: boolean }>;
}

function failedResult(id: NetnsStrategyId, err: unknown): NetnsStrategyResult {
  const n = Number.NaN;
  return {
    strategy: id,
    programSenderBytes: n,
    programAllLinksBytes: n,
    iface: { senderTx: n, senderRx: n, receiversRx: n, receiversTx: n, allLinks: n, reverse: n, perReceiverRx: [] },
    senderGap: n,
    wallSeconds: n,
    cpuSeconds: {},
    cpuSecondsTotal: n,
    cpuWindowSeconds: n,
    linkUtilisation: n,
    maxProcessCpuShare: n,
    boundBy: 'cpu?',
    downtimeMs: { mean: n, max: n, perVm: [] },
    verified: false,
    error: (err instanceof Error ? err.message : String(err)).slice(0, 4000),
  };
}

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process (all its threads), seconds; NaN when it is gone. */
export function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return Number.NaN;
  }
}

export const LINK_BOUND = { minLinkUse: 0.8, maxProcessCpu: 0.8 } as const;
const linkBound = (linkUse: number, cpuShare: number): 'link' | 'cpu?' => (linkUse >= LINK_BOUND.minLinkUse && cpuShare < LINK_BOUND.maxProcessCpu ? 'link' : 'cpu?');

const NODE_TSX = [process.execPath, ...NODE_FLAGS, '--import', 'tsx'];
const r1 = (x: number): number => Math.round(x * 10) / 10;
const r3 = (x: number): number => Math.round(x * 1000) / 1000;

interface Proc {
  name: string;
  child: ChildProcess;
  stdout: string[];
  stderr: string;
  line(re: RegExp, timeoutMs: number): Promise<string>;
  /** Resolves when stderr has matched re (or the process exited). */
  errMatch(re: RegExp): Promise<void>;
  exited: Promise<number | null>;
}

function track(name: string, child: ChildProcess): Proc {
  const stdout: string[] = [];
  let rest = '';
  const p: Proc = {
    name,
    child,
    stdout,
    stderr: '',
    exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))),
    errMatch: () => Promise.resolve(),
    line: (re, timeoutMs) =>
      new Promise((resolve, reject) => {
        const hit = stdout.find((l) => re.test(l));
        if (hit !== undefined) return resolve(hit);
        const timer = setTimeout(() => reject(new Error(`${name}: no line matching ${String(re)} within ${timeoutMs} ms; stderr: ${p.stderr.slice(-2000)}`)), timeoutMs);
        const onLine = (l: string): void => {
          if (!re.test(l)) return;
          clearTimeout(timer);
          child.stdout?.off('line', onLine);
          resolve(l);
        };
        child.stdout?.on('line', onLine);
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`${name} exited (code ${code}) before printing ${String(re)}; stderr: ${p.stderr.slice(-2000)}`));
        });
      }),
  };
  child.stdout?.on('data', (d: Buffer) => {
    rest += d.toString();
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      const l = rest.slice(0, i);
      rest = rest.slice(i + 1);
      stdout.push(l);
      child.stdout?.emit('line', l);
    }
  });
  const errWaiters: Array<{ re: RegExp; resolve: () => void }> = [];
  p.errMatch = (re) =>
    new Promise<void>((resolve) => {
      if (re.test(p.stderr)) return resolve();
      errWaiters.push({ re, resolve });
      child.once('exit', () => resolve());
    });
  child.stderr?.on('data', (d: Buffer) => {
    p.stderr = (p.stderr + d.toString()).slice(-20_000);
    for (const w of errWaiters.splice(0)) {
      if (w.re.test(p.stderr)) w.resolve();
      else errWaiters.push(w);
    }
    if (process.env.VMSCATTER_DEBUG) process.stderr.write(`[${name}] ${d.toString()}`);
  });
  return p;
}

/** SIGTERM by pid, SIGKILL after 5 s. */
async function stop(procs: Proc[]): Promise<void> {
  await Promise.all(
    procs.map(async (p) => {
      if (p.child.exitCode !== null || p.child.signalCode !== null || p.child.pid === undefined) return;
      const pid = p.child.pid;
      p.child.kill('SIGTERM');
      const t = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 5000);
      await p.exited;
      clearTimeout(t);
    }),
  );
}

function delta(before: { sender: LinkCounters; receivers: LinkCounters[] }, after: { sender: LinkCounters; receivers: LinkCounters[] }): InterfaceBytes {
  const perReceiverRx = after.receivers.map((r, i) => r.rxBytes - before.receivers[i]!.rxBytes);
  const receiversRx = perReceiverRx.reduce((s, x) => s + x, 0);
  const receiversTx = after.receivers.reduce((s, r, i) => s + r.txBytes - before.receivers[i]!.txBytes, 0);
  const senderTx = after.sender.txBytes - before.sender.txBytes;
  const senderRx = after.sender.rxBytes - before.sender.rxBytes;
  return { senderTx, senderRx, receiversRx, receiversTx, allLinks: senderTx + receiversRx, reverse: senderRx + receiversTx, perReceiverRx };
}

function downtimes(list: number[]): NetnsStrategyResult['downtimeMs'] {
  return { mean: r1(list.reduce((s, x) => s + x, 0) / Math.max(1, list.length)), max: r1(Math.max(0, ...list)), perVm: list.map(r1) };
}

/** Room for half again the fleet's fair share per target, as in the in-process run. */
function capacityMiB(cfg: EvacuationConfig): number {
  return Math.ceil((1.5 * cfg.fleet.vms) / cfg.targets) * cfg.fleet.memoryMiB;
}

function fleetSpec(cfg: EvacuationConfig): string {
  return 'sim:' + Object.entries(cfg.fleet).map(([k, v]) => `${k}=${String(v)}`).join(',');
}

class NetnsRun {
  private readonly dir = mkdtempSync(join(tmpdir(), 'vmscatter-bench-netns-'));
  private readonly linkBytesPerSec: number;

  constructor(
    private readonly topo: Topology,
    private readonly o: NetnsOptions,
    private readonly log: (s: string) => void,
  ) {
    this.linkBytesPerSec = (o.linkMbit * 1e6) / 8;
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private spawn(name: string, ns: string, args: string[]): Proc {
    return track(name, this.topo.spawn(ns, NODE_TSX[0]!, [...NODE_TSX.slice(1), ...args]));
  }

  private cpuOf(procs: Proc[]): Record<string, number> {
    return Object.fromEntries(procs.map((p) => [p.name, procCpuSeconds(p.child.pid)]));
  }

  private finish(
    id: NetnsStrategyId,
    m: {
      programSender: number;
      programAll: number;
      iface: InterfaceBytes;
      qdisc: QdiscCounters | undefined;
      wallSeconds: number;
      cpuSeconds: Record<string, number>;
      cpuWindowSeconds: number;
      downtimes: number[];
      verified: boolean;
    },
  ): NetnsStrategyResult {
    const cpu = Object.fromEntries(Object.entries(m.cpuSeconds).map(([k, v]) => [k, Math.round(v * 100) / 100]));
    const total = Object.values(cpu).reduce((s, x) => s + (Number.isFinite(x) ? x : 0), 0);
    return {
      strategy: id,
      programSenderBytes: m.programSender,
      programAllLinksBytes: m.programAll,
      iface: m.iface,
      senderGap: r3(m.iface.senderTx / Math.max(1, m.programSender)),
      ...(m.qdisc ? { qdisc: m.qdisc } : {}),
      wallSeconds: Math.round(m.wallSeconds * 1000) / 1000,
      cpuSeconds: cpu,
      cpuSecondsTotal: Math.round(total * 100) / 100,
      cpuWindowSeconds: r3(m.cpuWindowSeconds),
      linkUtilisation: r3(m.iface.senderTx / (m.wallSeconds * this.linkBytesPerSec)),
      maxProcessCpuShare: r3(Math.max(0, ...Object.values(cpu).filter(Number.isFinite)) / m.cpuWindowSeconds),
      boundBy: linkBound(m.iface.senderTx / (m.wallSeconds * this.linkBytesPerSec), Math.max(0, ...Object.values(cpu).filter(Number.isFinite)) / m.cpuWindowSeconds),
      downtimeMs: downtimes(m.downtimes),
      verified: m.verified,
    };
  }

  private async qdiscDelta<T>(fn: () => Promise<T>): Promise<{ value: T; qdisc: QdiscCounters | undefined }> {
    const q0 = await senderQdiscCounters(this.topo).catch(() => undefined);
    const value = await fn();
    const q1 = await senderQdiscCounters(this.topo).catch(() => undefined);
    const qdisc =
      q0 && q1 ? { kind: q1.kind, bytes: q1.bytes - q0.bytes, packets: q1.packets - q0.packets, drops: q1.drops - q0.drops, overlimits: q1.overlimits - q0.overlimits } : undefined;
    return { value, qdisc };
  }

  /** (a) one VM at a time, (b) all at once: plain streams over TCP from the sender's namespace. */
  async plain(id: 'a' | 'b', sc: NetnsScenarioInput): Promise<NetnsStrategyResult> {
    const cfg = sc.config;
    const n = cfg.targets;
    const procs: Proc[] = [];
    try {
      const targets = Array.from({ length: n }, (_, i) => this.spawn(`plain-target-${i + 1}`, this.topo.receiverNs(i), ['bench/plain-target-main.ts', '--listen', `${receiverAddr(i)}:7500`]));
      procs.push(...targets);
      await Promise.all(targets.map((t) => t.line(/^listening /, 60_000)));
      const cfgPath = join(this.dir, `${sc.id}-${id}.json`);
      writeFileSync(cfgPath, JSON.stringify({ fleet: cfg.fleet, migration: cfg.migration, targets: cfg.targets }));
      const outPath = join(this.dir, `${sc.id}-${id}-out.json`);
      const addrs = Array.from({ length: n }, (_, i) => `${receiverAddr(i)}:7500`).join(',');
      const src = this.spawn('plain-source', this.topo.senderNs, ['bench/plain-source-main.ts', '--config', cfgPath, '--targets', addrs, '--parallel', String(id === 'a' ? 1 : cfg.fleet.vms), '--out', outPath]);
      procs.push(src);
      await src.line(/^ready$/, 120_000);
      const before = await this.topo.linkCounters();
      const cpu0 = this.cpuOf(targets);
      const { value: w, qdisc } = await this.qdiscDelta(async () => {
        const t0 = performance.now();
        src.child.stdin?.write('go\n');
        // CPU up to the last VM migrated; the digests for verification come after.
        await src.line(/^migrated$/, 3_600_000);
        const cpu1 = this.cpuOf(targets);
        const windowSeconds = (performance.now() - t0) / 1000;
        const code = await src.exited;
        if (code !== 0) throw new Error(`plain source exited with code ${code}: ${src.stderr.slice(-2000)}`);
        return { cpu1, windowSeconds };
      });
      const cpu1 = w.cpu1;
      const after = await this.topo.linkCounters();
      const r = JSON.parse(readFileSync(outPath, 'utf8')) as PlainMigrateResult;
      const bytes = r.vms.reduce((s, v) => s + v.bytes, 0);
      return this.finish(id, {
        programSender: bytes,
        programAll: 2 * bytes,
        iface: delta(before, after),
        qdisc,
        wallSeconds: r.wallSeconds,
        cpuSeconds: { 'plain-source': r.cpuSeconds, ...Object.fromEntries(targets.map((t) => [t.name, cpu1[t.name]! - cpu0[t.name]!])) },
        cpuWindowSeconds: w.windowSeconds,
        downtimes: r.vms.map((v) => v.downtimeMs),
        verified: r.vms.length === cfg.fleet.vms && r.vms.every((v) => v.verified),
      });
    } finally {
      await stop(procs);
    }
  }

  /** (c) converge only, (d) vmscatter, (e) vmscatter + lz4: coordinator and agents as processes. */
  async agents(id: 'c' | 'd' | 'e', sc: NetnsScenarioInput): Promise<NetnsStrategyResult> {
    const cfg = sc.config;
    const n = cfg.targets;
    const coordUrl = `http://${SENDER_ADDR}:7400`;
    const procs: Proc[] = [];
    try {
      const coord = this.spawn('coordinator', this.topo.senderNs, [
        'src/cli/main.ts', 'coordinator', '--listen', `${SENDER_ADDR}:7400`, '--state-dir', '', '--max-outgoing', '64', '--max-incoming', '64', '--log-level', 'warn',
      ]);
      procs.push(coord);
      await coord.line(/listening on/, 60_000);
      // The source's settings as an operator would set them: lz4 for (e); the multicast pacing
      // ceiling no higher than the link (the default 100 MB/s already is at >= 800 Mbit/s).
      const srcCfg = join(this.dir, `${sc.id}-${id}-source.json`);
      const rateMBps = Math.min(cfg.scatter.rateMBps, (0.95 * this.linkBytesPerSec) / 1e6);
      writeFileSync(srcCfg, JSON.stringify({ migration: { ...cfg.migration, compress: id === 'e' ? 'lz4' : 'none' }, scatter: { rateMBps, mtu: this.o.mtu } }));
      const source = this.spawn('source-agent', this.topo.senderNs, [
        'src/cli/main.ts', 'agent', '--role', 'source', '--name', 'src', '--config', srcCfg, '--listen', `${SENDER_ADDR}:0`, '--coordinator', coordUrl,
        '--scatter-interface', SENDER_ADDR, '--fleet', fleetSpec(cfg), '--log-level', 'warn', ...(id === 'c' ? ['--no-scatter'] : []),
      ]);
      const targets = Array.from({ length: n }, (_, i) =>
        this.spawn(`target-agent-${i + 1}`, this.topo.receiverNs(i), [
          'src/cli/main.ts', 'agent', '--role', 'target', '--name', `t${i + 1}`, '--listen', `${receiverAddr(i)}:0`, '--data-listen', `${receiverAddr(i)}:0`,
          '--coordinator', coordUrl, '--scatter-interface', receiverAddr(i), '--mtu', String(this.o.mtu), '--capacity-mib', String(capacityMiB(cfg)), '--log-level', 'warn',
        ]),
      );
      procs.push(source, ...targets);
      await Promise.all([source, ...targets].map((p) => p.line(/listening on/, 120_000)));
      // Registration follows "listening" by one HTTP call; give it a moment before submitting.
      await new Promise((r) => setTimeout(r, 1000));
      const measured = [coord, source, ...targets];
      const before = await this.topo.linkCounters();
      const cpu0 = this.cpuOf(measured);
      const { value: out, qdisc } = await this.qdiscDelta(async () => {
        const ev = this.spawn('evacuate', this.topo.senderNs, [
          'src/cli/main.ts', 'evacuate', '--source', 'src', '--targets', targets.map((_, i) => `t${i + 1}`).join(','), '--parallel', String(cfg.migration.parallel), '--coordinator', coordUrl, '--json',
        ]);
        const t0 = performance.now();
        procs.push(ev);
        // CPU up to the end of converge (the CLI prints each phase's end); verification comes after.
        await ev.errMatch(/converge: (done|failed)/);
        const cpu1 = this.cpuOf(measured);
        const windowSeconds = (performance.now() - t0) / 1000;
        const code = await ev.exited;
        const last = ev.stdout.at(-1);
        if (!last) throw new Error(`evacuate printed nothing (code ${code}): ${ev.stderr.slice(-2000)}`);
        return { job: JSON.parse(last) as JobJson, code, cpu1, windowSeconds, stderr: ev.stderr };
      });
      const after = await this.topo.linkCounters();
      const job = out.job;
      const rep = job.report;
      if (!rep || !Array.isArray(rep.vms)) throw new Error(`job ${job.id} ended ${job.state} without a report: ${job.detail ?? out.stderr.slice(-2000)}`);
      const scatterLinks = rep.scatter ? rep.scatter.bytesSent + (rep.scatter.bytesReceived ?? rep.scatter.bytesSent) : 0;
      const phasesMs = Object.fromEntries(Object.entries(rep.phasesMs).map(([k, v]) => [k, Math.round(v)]));
      const wallMs = Object.entries(rep.phasesMs).reduce((s, [k, v]) => s + (k === 'verify' ? 0 : v), 0);
      const res = this.finish(id, {
        programSender: rep.bytes.wire,
        programAll: 2 * rep.bytes.converge + scatterLinks,
        iface: delta(before, after),
        qdisc,
        wallSeconds: wallMs / 1000,
        cpuSeconds: Object.fromEntries(measured.map((p) => [p.name, out.cpu1[p.name]! - cpu0[p.name]!])),
        cpuWindowSeconds: out.windowSeconds,
        downtimes: rep.vms.map((v) => v.downtimeMs),
        verified: job.state === 'succeeded' && rep.ok && rep.vms.every((v) => v.verified),
      });
      const jobWall = job.endedAt && job.createdAt ? (Date.parse(job.endedAt) - Date.parse(job.createdAt)) / 1000 : undefined;
      return {
        ...res,
        ...(jobWall !== undefined ? { jobWallSeconds: jobWall } : {}),
        phasesMs,
        dedupMinimum: rep.bytes.dedupMinimum,
        ...(rep.scatter?.notes?.length ? { scatterNotes: rep.scatter.notes } : {}),
        rounds: rep.vms.map((v) => ({ vm: v.name, rounds: v.rounds, forced: v.forced })),
      };
    } finally {
      await stop(procs);
    }
  }
}

interface JobJson {
  id: string;
  state: string;
  detail?: string;
  createdAt?: string;
  endedAt?: string;
  report?: {
    ok: boolean;
    vms: Array<{ name: string; downtimeMs: number; verified: boolean; rounds: number; forced: boolean }>;
    bytes: { wire: number; converge: number; scatter: number; dedupMinimum: number };
    phasesMs: Record<string, number>;
    scatter?: { bytesSent: number; bytesReceived?: number; notes?: string[] };
  };
}

export interface NetnsScenarioResult {
  scenario: string;
  results: NetnsStrategyResult[];
  dedupMinimum: number;
}

export interface NetnsRunResult {
  available: boolean;
  reason?: string;
  linkMbit: number;
  mtu: number;
  topology?: string;
  scenarios: NetnsScenarioResult[];
}

export const DEFAULT_TCP_CONGESTION = 'cubic';

/**
 * Why `cc` cannot be used here, or undefined: checked against the kernel's loaded algorithms before
 * the bench starts, so a typo fails at once and not after the CPU-bound runs.
 */
export function congestionControlUnavailable(cc: string): string | undefined {
  let available: string[];
  try {
    available = tcpCongestionAvailable();
  } catch (e) {
    return `cannot read the available TCP congestion control algorithms: ${e instanceof Error ? e.message : String(e)}`;
  }
  if (available.includes(cc)) return undefined;
  return `TCP congestion control "${cc}" is not available here (available: ${available.join(', ')}; a module such as tcp_${cc} loads with modprobe)`;
}

/**
 * Runs every strategy of every scenario on one topology (receivers: the most targets any
 * scenario has), torn down with the run's files in a finally, on SIGINT/SIGTERM, and at exit.
 */
export async function runNetnsStrategies(
  scenarios: NetnsScenarioInput[],
  order: NetnsStrategyId[],
  o: NetnsOptions,
  log: (s: string) => void,
): Promise<NetnsRunResult> {
  const reason = await netnsUnavailableReason();
  if (reason) return { available: false, reason, linkMbit: o.linkMbit, mtu: o.mtu, scenarios: [] };
  const receivers = Math.max(...scenarios.map((s) => s.config.targets));
  const prefix = `vsbench${randomBytes(2).toString('hex')}`;
  const topo = await createTopology({ receivers, mtu: o.mtu, senderRate: `${o.linkMbit}mbit`, prefix });
  const run = new NetnsRun(topo, o, log);
  const onSignal = (sig: NodeJS.Signals): void => {
    run.cleanup(); // its files (configs, outputs); the topology goes next
    void topo.destroy().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const savedToken = process.env.VMSCATTER_TOKEN;
  // Children of `ip netns exec` inherit this environment: the token of this run only.
  process.env.VMSCATTER_TOKEN = `bench-${randomBytes(16).toString('hex')}`;
  const out: NetnsScenarioResult[] = [];
  const cc = o.tcpCongestion ?? DEFAULT_TCP_CONGESTION;
  let ccWhere = '';
  try {
    if ((await topo.setTcpCongestion(cc)) === 'routes') ccWhere = ` (on the links' routes: this host restricts namespaces' defaults to ${tcpCongestionAllowed().join(', ')})`;
    log(`\nlink-bound: namespaces ${prefix}-*, sender link tbf ${o.linkMbit} Mbit/s, MTU ${o.mtu}, ${receivers} receivers, TCP congestion control ${cc}${ccWhere}\n`);
    for (const sc of scenarios) {
      log(`\n[netns] ${sc.id}\n`);
      const results: NetnsStrategyResult[] = [];
      for (const id of order) {
        log(`  (${id}) ... `);
        let r: NetnsStrategyResult;
        try {
          r = id === 'a' || id === 'b' ? await run.plain(id, sc) : await run.agents(id, sc);
        } catch (e) {
          r = failedResult(id, e);
          results.push(r);
          log(`FAILED: ${r.error!.split('\n')[0]}\n`);
          continue;
        }
        results.push(r);
        log(
          `program ${(r.programSenderBytes / 1e6).toFixed(1)} MB, eth0 tx ${(r.iface.senderTx / 1e6).toFixed(1)} MB, ${r.wallSeconds.toFixed(2)} s, ` +
            `link ${(100 * r.linkUtilisation).toFixed(0)}%, busiest process ${(100 * r.maxProcessCpuShare).toFixed(0)}% CPU: ${r.boundBy === 'link' ? 'link-bound' : 'CPU MAY BE THE BOTTLENECK'}${r.verified ? '' : ', NOT VERIFIED'}\n`,
        );
      }
      out.push({ scenario: sc.id, results, dedupMinimum: results.find((r) => r.strategy === 'd')?.dedupMinimum ?? 0 });
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (savedToken === undefined) delete process.env.VMSCATTER_TOKEN;
    else process.env.VMSCATTER_TOKEN = savedToken;
    run.cleanup();
    await topo.destroy();
  }
  return { available: true, linkMbit: o.linkMbit, mtu: o.mtu, topology: `sender + ${receivers} receiver namespaces on a bridge (test/netns/topology.sh), sender eth0 tbf ${o.linkMbit}mbit burst 256kb, queue 1000 packets, TCP congestion control ${cc}${ccWhere}`, scenarios: out };
}
