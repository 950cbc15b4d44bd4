/**
 * `vmscatter bench strategies`: the same simulated fleet migrated by every strategy in one run.
 *
 *   (a) plain QEMU-style migration, one VM at a time, over TCP
 *   (b) the same, all VMs at once
 *   (c) converge only: per-target dedup through the converge channel, no multicast
 *   (d) vmscatter: multicast scatter + converge
 *   (e) vmscatter with LZ4 on converge frames
 *
 * The main table runs on loopback in one process, so it is bound by this machine's two cores,
 * not by a network: bytes are exact, times are the CPU-bound figure (see notes/benchmarking.md).
 * With `netns` (root), every strategy runs again between processes in network namespaces with
 * the sender's link limited by tbf (bench/strategies-netns.ts): the link-bound figure, with
 * bytes from the interfaces' own counters next to the program's. Where QEMU is installed, real
 * guests are migrated too (bench/qemu.ts, reused as is) and their rows are labelled as such.
 * Ratios are against (a) measured in the same run, on a fleet built from the same seeds.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { simFleetFromConfig } from '../src/agent/sim-agents.js';
import { resolveConfig, type EvacuationConfig } from '../src/config.js';
import { runSimEvacuation } from '../src/cli/demo-command.js';
import { ErrorCode, VmsError } from '../src/errors.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { DEFAULT_PROFILE } from '../src/memory/sim-profile.js';
import { checkQemu } from '../src/qemu/launcher.js';
import { plainMigrate, servePlainTargets } from './plain-migration.js';
import type { NetnsOptions, NetnsRunResult, NetnsStrategyResult } from './strategies-netns.js';

export const STRATEGIES = {
  a: 'plain QEMU, one VM at a time',
  b: 'plain QEMU, all at once',
  c: 'converge only (per-target dedup)',
  d: 'vmscatter (scatter + converge), no compression',
  e: 'vmscatter + lz4 (its default)',
} as const;
type StrategyId = keyof typeof STRATEGIES;

interface Scenario {
  id: string;
  label: string;
  /** The default scenario is the headline; the others are labelled as chosen profiles. */
  headline: boolean;
  config: EvacuationConfig;
}

function scenario(id: string, label: string, headline: boolean, fleet: Partial<EvacuationConfig['fleet']>, targets: number): Scenario {
  return { id, label, headline, config: resolveConfig({ fleet, targets, plan: { strategy: 'graph' } }) };
}

export function scenarios(quick: boolean): Scenario[] {
  const def = scenario('default', '8 VMs x 256 MiB, one OS image, 2 tenants, 500 dirty pages/s -> 4 targets (measured guest profile)', true, {}, 4);
  if (quick) return [def];
  return [
    def,
    scenario('idle', 'idle fleet: 8 VMs x 256 MiB, no dirtying -> 4 targets', false, { dirtyPagesPerSec: 0 }, 4),
    scenario('mixed-images', 'mixed images: 8 VMs x 256 MiB from 4 OS images -> 4 targets', false, { osImages: 4 }, 4),
    scenario('heavy-dirty', 'heavy dirtiers: 8 VMs x 256 MiB, 20,000 dirty pages/s over 64 MiB -> 4 targets', false, { dirtyPagesPerSec: 20000, workingSetPages: 16384 }, 4),
    scenario('larger-fleet', '16 VMs x 128 MiB, one OS image -> 8 targets', false, { vms: 16, memoryMiB: 128 }, 8),
  ];
}

export interface StrategyResult {
  strategy: StrategyId;
  name: string;
  available: boolean;
  note?: string;
  /** Bytes leaving the source host. */
  senderBytes: number;
  /** Bytes on every link: sender's plus each target's (unicast: twice the sender's). */
  allLinksBytes: number;
  wallSeconds: number;
  cpuSeconds: number;
  downtimeMs: { mean: number; max: number; perVm: number[] };
  verified: boolean;
}

async function measure<T>(fn: () => Promise<T>): Promise<{ value: T; wallSeconds: number; cpuSeconds: number }> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await fn();
  const wallSeconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { value, wallSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

function downtimes(list: number[]): StrategyResult['downtimeMs'] {
  const round = (x: number): number => Math.round(x * 10) / 10;
  return { mean: round(list.reduce((s, x) => s + x, 0) / Math.max(1, list.length)), max: round(Math.max(0, ...list)), perVm: list.map(round) };
}

async function runStrategy(id: StrategyId, sc: Scenario): Promise<StrategyResult & { dedupMinimum?: number }> {
  const cfg = sc.config;
  const migration = { maxBandwidthBytesPerSec: cfg.migration.maxBandwidthMiBps * 1024 * 1024, downtimeLimitMs: cfg.migration.downtimeLimitMs, maxRounds: cfg.migration.maxRounds };
  if (id === 'a' || id === 'b') {
    const vms = simFleetFromConfig(cfg);
    const server = await servePlainTargets();
    try {
      // Timed from the first connect to the last resume; the byte comparison comes after.
      const m = await plainMigrate(vms, { parallel: id === 'a' ? 1 : vms.length, targets: [{ host: server.host, port: server.port }], localImages: server.images, ...migration });
      const bytes = m.vms.reduce((s, v) => s + v.bytes, 0);
      return {
        strategy: id,
        name: STRATEGIES[id],
        available: true,
        senderBytes: bytes,
        allLinksBytes: 2 * bytes,
        wallSeconds: m.wallSeconds,
        cpuSeconds: m.cpuSeconds,
        downtimeMs: downtimes(m.vms.map((v) => v.downtimeMs)),
        verified: m.vms.length === vms.length && m.vms.every((v) => v.verified),
      };
    } finally {
      vms.forEach((v) => v.vm.stop());
      await server.close();
    }
  }
  const run: EvacuationConfig = {
    ...cfg,
    scatter: { ...cfg.scatter, enabled: id !== 'c' },
    migration: { ...cfg.migration, compress: id === 'e' ? 'lz4' : 'none' },
  };
  const m = await measure(() => runSimEvacuation(run));
  const r = m.value;
  const scatterOn = id !== 'c';
  const available = !scatterOn || r.scatter !== undefined;
  const scatterLinks = r.scatter ? r.scatter.bytesSent + (r.scatter.bytesReceived ?? r.scatter.bytesSent) : 0;
  return {
    strategy: id,
    name: STRATEGIES[id],
    available,
    ...(available ? {} : { note: 'multicast scatter not available in this build; ran converge only' }),
    senderBytes: r.bytes.wire,
    allLinksBytes: 2 * r.bytes.converge + scatterLinks,
    wallSeconds: m.wallSeconds,
    cpuSeconds: m.cpuSeconds,
    downtimeMs: downtimes(r.vms.map((v) => v.downtimeMs)),
    verified: r.vms.every((v) => v.verified),
    dedupMinimum: r.bytes.dedupMinimum,
  };
}

/** One setting switched off against the same scenario with it on (its default), same run. */
interface SwitchResult {
  scenario: string;
  strategy: StrategyId;
  setting: string;
  on: Pick<StrategyResult, 'senderBytes' | 'wallSeconds' | 'downtimeMs' | 'verified'>;
  off: Pick<StrategyResult, 'senderBytes' | 'wallSeconds' | 'downtimeMs' | 'verified'>;
  /** on / off: below 1 means the setting saves bytes (time). */
  bytesOnVsOff: number;
  timeOnVsOff: number;
}

/**
 * Settings whose worth a scenario shows, run once more with the setting off: converge in turn
 * is for heavy dirtiers with parallel migrations (without it every VM has 1/parallel of the
 * bandwidth and needs more passes, or never converges), so it is measured there.
 */
async function switchRuns(list: Scenario[], out: ScenarioOut[], log: (s: string) => void): Promise<SwitchResult[]> {
  const heavy = list.find((sc) => sc.id === 'heavy-dirty');
  const on = out.find((o) => o.scenario.id === 'heavy-dirty')?.results.find((r) => r.strategy === 'd');
  if (!heavy || !on) return [];
  log(`\n${heavy.label}, migration.convergeInTurn off\n  (d) ${STRATEGIES.d} ... `);
  const off = await runStrategy('d', { ...heavy, config: { ...heavy.config, migration: { ...heavy.config.migration, convergeInTurn: false } } });
  log(`${(off.senderBytes / 1e6).toFixed(1)} MB, ${off.wallSeconds.toFixed(2)} s${off.verified ? '' : ', NOT VERIFIED'}\n`);
  const pick = (r: StrategyResult): SwitchResult['on'] => ({ senderBytes: r.senderBytes, wallSeconds: r.wallSeconds, downtimeMs: r.downtimeMs, verified: r.verified });
  return [{ scenario: heavy.id, strategy: 'd', setting: 'migration.convergeInTurn', on: pick(on), off: pick(off), bytesOnVsOff: ratio(on.senderBytes, off.senderBytes), timeOnVsOff: ratio(on.wallSeconds, off.wallSeconds) }];
}

function switchesMarkdown(list: SwitchResult[]): string {
  if (list.length === 0) return '';
  let s = '## Settings switched off, same run (CPU-bound)\n\n| scenario | strategy | setting | sender MB on / off | wall s on / off | bytes on vs off | time on vs off | downtime ms mean on / off | verified |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n';
  for (const x of list) {
    s += `| ${x.scenario} | (${x.strategy}) | ${x.setting} | ${MB(x.on.senderBytes)} / ${MB(x.off.senderBytes)} | ${fx(x.on.wallSeconds, 2)} / ${fx(x.off.wallSeconds, 2)} | ${fx(x.bytesOnVsOff, 3)} | ${fx(x.timeOnVsOff, 3)} | ${fx(x.on.downtimeMs.mean, 1)} / ${fx(x.off.downtimeMs.mean, 1)} | ${x.on.verified && x.off.verified ? 'yes' : 'NO'} |\n`;
  }
  return s + '\n';
}

/**
 * Converge in turn where it is meant to act: link-bound, VMs that each converge alone on the link
 * but not side by side (8 VMs writing 82 Mbit/s each against a 250 Mbit/s link: 1/8 of it is
 * 31 Mbit/s). Same run: (a) plain QEMU one VM at a time as the baseline, then (d) with
 * `migration.convergeInTurn` on and off. Labelled: the dirty rate is chosen for this question.
 */
const TURN_SCENARIO = {
  id: 'moderate-dirty',
  label: 'moderate dirtiers: 8 VMs x 256 MiB, 2,500 dirty pages/s over 32 MiB -> 4 targets',
  fleet: { dirtyPagesPerSec: 2500, workingSetPages: 8192 },
  targets: 4,
};

export interface LinkBoundSwitch {
  scenario: string;
  label: string;
  setting: 'migration.convergeInTurn';
  /** Why it did not run (the link carries one VM's writes times the fleet, or not even one). */
  skipped?: string;
  plainOneAtATime?: NetnsStrategyResult;
  on?: NetnsStrategyResult;
  off?: NetnsStrategyResult;
  bytesOnVsOff?: number;
  timeOnVsOff?: number;
}

async function linkBoundSwitch(netns: NetnsOptions, log: (s: string) => void): Promise<LinkBoundSwitch> {
  const { linkMbit } = netns;
  const { runNetnsStrategies } = await import('./strategies-netns.js');
  const base = { scenario: TURN_SCENARIO.id, label: TURN_SCENARIO.label, setting: 'migration.convergeInTurn' as const };
  const config = (turn: boolean): EvacuationConfig =>
    resolveConfig({ fleet: TURN_SCENARIO.fleet, targets: TURN_SCENARIO.targets, plan: { strategy: 'graph' }, migration: { convergeInTurn: turn } });
  const on = config(true);
  const vmMbit = (on.fleet.dirtyPagesPerSec * PAGE_SIZE * 8) / 1e6;
  if (vmMbit >= linkMbit) return { ...base, skipped: `one VM writes ${Math.round(vmMbit)} Mbit/s, more than the ${linkMbit} Mbit/s link: it converges in no order` };
  if (vmMbit * on.fleet.vms <= linkMbit) return { ...base, skipped: `the ${on.fleet.vms} VMs write ${Math.round(vmMbit * on.fleet.vms)} Mbit/s together, no more than the ${linkMbit} Mbit/s link: side by side they converge anyway` };
  log(`\n[netns] ${TURN_SCENARIO.label}, migration.convergeInTurn on and off\n`);
  const first = await runNetnsStrategies([{ id: TURN_SCENARIO.id, config: on }], ['a', 'd'], netns, log);
  if (!first.available) return { ...base, skipped: first.reason ?? 'network namespaces not available' };
  const second = await runNetnsStrategies([{ id: `${TURN_SCENARIO.id}-turn-off`, config: config(false) }], ['d'], netns, log);
  const a = first.scenarios[0]?.results.find((r) => r.strategy === 'a');
  const d = first.scenarios[0]?.results.find((r) => r.strategy === 'd');
  const off = second.scenarios[0]?.results.find((r) => r.strategy === 'd');
  return {
    ...base,
    ...(a ? { plainOneAtATime: a } : {}),
    ...(d ? { on: d } : {}),
    ...(off ? { off } : {}),
    ...(d && off ? { bytesOnVsOff: ratio(d.iface.senderTx, off.iface.senderTx), timeOnVsOff: ratio(d.wallSeconds, off.wallSeconds) } : {}),
  };
}

function linkBoundSwitchMarkdown(x: LinkBoundSwitch, linkMbit: number): string {
  let s = `## Converge in turn, link-bound (same run, ${linkMbit} Mbit/s)\n\n(labelled scenario) ${x.label}\n\n`;
  if (x.skipped) return s + `Not run: ${x.skipped}.\n\n`;
  s += '| strategy | eth0 sender tx MB | bytes vs (a) | wall s | time vs (a) | downtime ms mean / max | verified |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n';
  const a = x.plainOneAtATime;
  const row = (name: string, r?: NetnsStrategyResult): string => {
    if (!r) return `| ${name} | not run | | | | | |\n`;
    if (r.error) return `| ${name} | FAILED: ${r.error.split('\n')[0]} | | | | | |\n`;
    const vsA = (v: number, b?: number): string => (b && a && !a.error ? fx(v / b, 3) : '-');
    return `| ${name} | ${MB(r.iface.senderTx)} | ${vsA(r.iface.senderTx, a?.iface.senderTx)} | ${fx(r.wallSeconds, 2)} | ${vsA(r.wallSeconds, a?.wallSeconds)} | ${fx(r.downtimeMs.mean, 1)} / ${fx(r.downtimeMs.max, 1)} | ${r.verified ? 'yes' : 'NO'} |\n`;
  };
  s += row(`(a) ${STRATEGIES.a}`, a) + row(`(d) ${STRATEGIES.d}, converge in turn on`, x.on) + row(`(d) ${STRATEGIES.d}, converge in turn off`, x.off);
  if (x.bytesOnVsOff !== undefined) s += `\nConverge in turn on vs off: ${fx(x.bytesOnVsOff, 3)}x the bytes, ${fx(x.timeOnVsOff!, 3)}x the time.\n`;
  return s + '\n';
}

export interface StrategiesOptions {
  quick: boolean;
  json: boolean;
  /** Also run every strategy link-bound on the namespace topology (root). */
  netns?: boolean;
  /** Sender's link rate there, Mbit/s (default 1000). */
  linkMbit?: number;
  /** TCP congestion control in the namespaces (default DEFAULT_TCP_CONGESTION, cubic). */
  tcpCongestion?: string;
  /** Skip the real-guest rows even where QEMU is installed. */
  noQemu?: boolean;
}

/**
 * 250 Mbit/s: on this project's 2-core machines the link is the bottleneck there for every
 * strategy of the default scenario (measured: (a)/(b) 99% link use, (c)-(e) 86-94%, no process
 * above 52% of a core); at 1000 Mbit/s (c)-(e) used 30-53% of the link and at 500 Mbit/s (e)
 * 60%: the cores set their time.
 */
export const DEFAULT_LINK_MBIT = 250;
const NETNS_MTU = 9000;
/**
 * A labelled scenario runs link-bound only if its CPU-bound bytes, all strategies together, take
 * at most this long at the link rate (a lower bound: slower links mean more resent dirty pages).
 * The default scenario always runs.
 */
const NETNS_SCENARIO_BUDGET_S = 300;

type ScenarioOut = { scenario: Omit<Scenario, 'config'> & { fleet: EvacuationConfig['fleet']; targets: number }; results: StrategyResult[]; dedupMinimum: number };

const ratio = (x: number, y: number): number => Math.round((x / y) * 1000) / 1000;

/** Real guests: bench/qemu.ts's rounds (direct over TCP, vmscatter without compression, vmscatter with its default lz4) as rows. */
async function realGuestRows(log: (s: string) => void): Promise<{ available: boolean; reason?: string; label?: string; results?: StrategyResult[]; qemu?: Record<string, unknown> }> {
  const q = await checkQemu();
  if (!q.ok) return { available: false, reason: `QEMU not usable here: ${q.reason ?? 'not found'}` };
  log('\nreal guests (bench/qemu.ts, quick rounds):\n');
  try {
    const { runQemuBench } = await import('./qemu.js');
    const r = (await runQemuBench({ quick: true, json: true })) as {
      ok: boolean;
      rounds: Array<{ way: string; bytes: number; totalMs: number; vms: Array<{ downtimeMs: number; ok: boolean }>; scatterBytes?: number }>;
      setup: { guests: number; memoryMiB: number; targets: number; kernel: string; accel: string };
      machine: { qemu: string };
    };
    const row = (id: StrategyId, way: string, name: string): StrategyResult => {
      const round = r.rounds.find((x) => x.way === way);
      if (!round) return { strategy: id, name, available: false, note: `no ${way} round`, senderBytes: NaN, allLinksBytes: NaN, wallSeconds: NaN, cpuSeconds: NaN, downtimeMs: { mean: NaN, max: NaN, perVm: [] }, verified: false };
      return {
        strategy: id,
        name,
        available: true,
        senderBytes: round.bytes,
        // Direct and converge only: one TCP stream per VM crosses the source's link and one
        // target's. Multicast reaches a target's link only if it joined the group, which bench
        // qemu does not count.
        allLinksBytes: way === 'direct' || way === 'direct-parallel' || way === 'converge-only' ? 2 * round.bytes : NaN,
        wallSeconds: round.totalMs / 1000,
        cpuSeconds: NaN,
        downtimeMs: downtimes(round.vms.map((v) => v.downtimeMs)),
        verified: round.vms.every((v) => v.ok),
      };
    };
    const s = r.setup;
    return {
      available: true,
      label: `REAL GUESTS: ${s.guests} QEMU guests x ${s.memoryMiB} MiB (${r.machine.qemu}, ${s.accel}, kernel ${s.kernel}) -> ${s.targets} targets, loopback, CPU-bound (bench/qemu.ts)`,
      results: [
        row('a', 'direct', 'QEMU direct over TCP, one VM at a time'),
        row('b', 'direct-parallel', 'QEMU direct over TCP, all at once'),
        row('c', 'converge-only', STRATEGIES.c),
        row('d', 'vmscatter-uncompressed', STRATEGIES.d),
        row('e', 'vmscatter', STRATEGIES.e),
      ],
      qemu: { ok: r.ok, setup: r.setup, machine: r.machine },
    };
  } catch (e) {
    return { available: false, reason: `real-guest rounds failed: ${(e as Error).message}` };
  }
}

export async function runStrategiesBench(opts: StrategiesOptions): Promise<Record<string, unknown>> {
  const out: ScenarioOut[] = [];
  const log = (s: string): void => {
    if (!opts.json) process.stderr.write(s);
  };
  if (opts.netns) {
    // Checked before the CPU-bound runs, the default too (its module may not be loaded).
    const { congestionControlUnavailable, DEFAULT_TCP_CONGESTION } = await import('./strategies-netns.js');
    const why = congestionControlUnavailable(opts.tcpCongestion ?? DEFAULT_TCP_CONGESTION);
    if (why) throw new VmsError(ErrorCode.CONFIG, opts.tcpCongestion !== undefined ? `--tcp-cc: ${why}` : `${why}; --tcp-cc NAME chooses another`);
  }
  const list = scenarios(opts.quick);
  for (const sc of list) {
    log(`\n${sc.label}\n`);
    const results: StrategyResult[] = [];
    let dedupMinimum = 0;
    for (const id of Object.keys(STRATEGIES) as StrategyId[]) {
      log(`  (${id}) ${STRATEGIES[id]} ... `);
      const r = await runStrategy(id, sc);
      if (r.dedupMinimum !== undefined && id === 'd') dedupMinimum = r.dedupMinimum;
      const { dedupMinimum: _drop, ...rest } = r;
      results.push(rest);
      log(`${(r.senderBytes / 1e6).toFixed(1)} MB, ${r.wallSeconds.toFixed(2)} s${r.verified ? '' : ', NOT VERIFIED'}\n`);
    }
    out.push({ scenario: { id: sc.id, label: sc.label, headline: sc.headline, fleet: sc.config.fleet, targets: sc.config.targets }, results, dedupMinimum });
  }
  const switches = await switchRuns(list, out, log);

  let linkBound: (NetnsRunResult & { bytesRatio?: number; timeRatio?: number; vsDedupMinimum?: number; skipped?: Array<{ scenario: string; reason: string }>; switches?: LinkBoundSwitch[] }) | undefined;
  if (opts.netns) {
    const { runNetnsStrategies } = await import('./strategies-netns.js');
    const linkMbit = opts.linkMbit ?? DEFAULT_LINK_MBIT;
    const skipped: Array<{ scenario: string; reason: string }> = [];
    const chosen = list.filter((sc) => {
      if (sc.headline) return true;
      const bytes = out.find((o) => o.scenario.id === sc.id)!.results.reduce((sum, r) => sum + r.senderBytes, 0);
      const seconds = (bytes * 8) / (linkMbit * 1e6);
      // A VM that dirties faster than the link carries never converges there: each strategy runs
      // it to the round limit, far more bytes (and time) than the CPU-bound run suggests.
      const dirtyMbit = (sc.config.fleet.dirtyPagesPerSec * PAGE_SIZE * 8) / 1e6;
      let reason: string;
      if (dirtyMbit >= linkMbit) reason = `one VM dirties ${Math.round(dirtyMbit)} Mbit/s, more than the ${linkMbit} Mbit/s link carries: no strategy converges there, every VM runs to the round limit`;
      else if (seconds > NETNS_SCENARIO_BUDGET_S) reason = `its strategies sent ${(bytes / 1e9).toFixed(1)} GB together CPU-bound: at least ${Math.round(seconds)} s at ${linkMbit} Mbit/s (budget ${NETNS_SCENARIO_BUDGET_S} s per scenario)`;
      else return true;
      skipped.push({ scenario: sc.id, reason });
      process.stderr.write(`bench strategies: link-bound run of scenario ${sc.id} skipped: ${reason}\n`);
      return false;
    });
    const netnsOpts: NetnsOptions = { linkMbit, mtu: NETNS_MTU, ...(opts.tcpCongestion !== undefined ? { tcpCongestion: opts.tcpCongestion } : {}) };
    linkBound = await runNetnsStrategies(chosen.map((sc) => ({ id: sc.id, config: sc.config })), Object.keys(STRATEGIES) as StrategyId[], netnsOpts, log);
    if (skipped.length) linkBound.skipped = skipped;
    if (!linkBound.available) process.stderr.write(`bench strategies: link-bound run skipped: ${linkBound.reason}\n`);
    const head = linkBound.scenarios.find((s) => s.scenario === 'default');
    if (head) {
      const nb = (id: StrategyId): NetnsStrategyResult => head.results.find((r) => r.strategy === id)!;
      // Bytes on the sender's link as the interface counted them; time = migration window.
      linkBound.bytesRatio = ratio(nb('e').iface.senderTx, nb('a').iface.senderTx);
      linkBound.timeRatio = ratio(nb('e').wallSeconds, nb('a').wallSeconds);
      linkBound.vsDedupMinimum = ratio(nb('d').programSenderBytes, head.dedupMinimum);
    }
    if (!opts.quick && linkBound.available) {
      linkBound.switches = [await linkBoundSwitch(netnsOpts, log)];
    }
  }

  const real = opts.noQemu ? { available: false, reason: 'skipped (--no-qemu)' } : await realGuestRows(log);
  if (!real.available) log(`\nreal guests: not included: ${real.reason}\n`);

  const head = out.find((s) => s.scenario.headline)!;
  const by = (id: StrategyId): StrategyResult => head.results.find((r) => r.strategy === id)!;
  const flags = `${opts.quick ? ' --quick' : ''}${opts.netns ? ` --netns --link-mbit ${opts.linkMbit ?? DEFAULT_LINK_MBIT}${opts.tcpCongestion !== undefined ? ` --tcp-cc ${opts.tcpCongestion}` : ''}` : ''}${opts.json ? ' --json' : ''}`;
  const result = {
    bench: 'strategies',
    date: new Date().toISOString(),
    command: `vmscatter bench strategies${flags}`,
    setting: 'loopback, one process, CPU-bound (2 cores): bytes exact, times are the CPU-bound figure',
    profile: { ...DEFAULT_PROFILE },
    machine: { nproc: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, loadavg: loadavg().map((x) => Math.round(x * 100) / 100) },
    bytesRatio: ratio(by('e').senderBytes, by('a').senderBytes),
    timeRatio: ratio(by('e').wallSeconds, by('a').wallSeconds),
    vsDedupMinimum: ratio(by('d').senderBytes, head.dedupMinimum),
    goals: { bytesRatio: 0.258, timeRatio: 0.309, vsDedupMinimum: 1.05 },
    scenarios: out,
    switches,
    ...(linkBound ? { linkBound } : {}),
    realGuests: real,
  };
  const md = markdown(result.scenarios, result) + switchesMarkdown(switches) + (linkBound ? netnsMarkdown(linkBound, list) + (linkBound.switches ?? []).map((x) => linkBoundSwitchMarkdown(x, linkBound!.linkMbit)).join('') : '') + realMarkdown(real);
  const svg = resultChart(result);
  try {
    const dir = join(process.cwd(), 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const base = `strategies${opts.quick ? '-quick' : ''}`;
    writeFileSync(join(dir, `${base}.md`), md);
    writeFileSync(join(dir, `${base}.svg`), svg);
    writeFileSync(join(dir, `${base}.json`), JSON.stringify(result, null, 2) + '\n');
  } catch {
    // read-only checkout: the results are still printed
  }
  if (!opts.json) process.stdout.write(md);
  return result;
}

const MB = (b: number): string => (Number.isFinite(b) ? (b / 1e6).toFixed(1) : '-');
const fx = (x: number, d: number): string => (Number.isFinite(x) ? x.toFixed(d) : '-');

function markdown(list: ScenarioOut[], r: { bytesRatio: number; timeRatio: number; vsDedupMinimum: number; machine: Record<string, unknown>; date: string; setting: string; command: string }): string {
  let s = `# vmscatter bench strategies\n\n${r.date}; ${String(r.machine.nproc)} CPUs (${String(r.machine.cpu)}), ${String(r.machine.memoryGiB)} GiB, node ${String(r.machine.node)}, load average at the end ${String(r.machine.loadavg)}.\n\nCommand: \`${r.command}\`\n\n`;
  s += `Fleet profile (measured on real guests, notes/qemu.md): ${JSON.stringify(DEFAULT_PROFILE)}\n\n## CPU-bound: ${r.setting}\n\n`;
  for (const sc of list) s += table(sc.scenario, sc.results, sc.dedupMinimum);
  s += `Headline, CPU-bound (default scenario): bytesRatio (e)/(a) = ${r.bytesRatio} (goal <= 0.258), timeRatio (e)/(a) = ${r.timeRatio} (goal <= 0.309), (d) vs dedup minimum = ${r.vsDedupMinimum} (goal <= 1.05).\n\n`;
  return s;
}

function table(scenario: { label: string; headline: boolean }, results: StrategyResult[], dedupMinimum?: number): string {
  const a = results.find((x) => x.strategy === 'a')!;
  let s = `### ${scenario.headline ? '' : '(labelled scenario) '}${scenario.label}\n\n`;
  s += '| strategy | sender MB | all links MB | bytes vs (a) | wall s | time vs (a) | CPU s | downtime ms mean / max | verified |\n';
  s += '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n';
  for (const x of results) {
    if (!x.available && !Number.isFinite(x.senderBytes)) {
      s += `| (${x.strategy}) ${x.name} | - | - | - | - | - | - | - | not run |\n`;
      continue;
    }
    s += `| (${x.strategy}) ${x.name}${x.available ? '' : ' *'} | ${MB(x.senderBytes)} | ${MB(x.allLinksBytes)} | ${fx(x.senderBytes / a.senderBytes, 3)} | ${fx(x.wallSeconds, 2)} | ${fx(x.wallSeconds / a.wallSeconds, 3)} | ${fx(x.cpuSeconds, 1)} | ${fx(x.downtimeMs.mean, 1)} / ${fx(x.downtimeMs.max, 1)} | ${x.verified ? 'yes' : 'NO'} |\n`;
  }
  if (dedupMinimum !== undefined) s += `\ndedup minimum (distinct contents + resent pages + device state): ${MB(dedupMinimum)} MB\n`;
  const na = results.filter((x) => !x.available && x.note);
  if (na.length) s += `\n\\* ${na[0]!.note}\n`;
  return s + '\n';
}

function netnsMarkdown(lb: NetnsRunResult & { bytesRatio?: number; timeRatio?: number; vsDedupMinimum?: number; skipped?: Array<{ scenario: string; reason: string }> }, list: Scenario[]): string {
  let s = `## Link-bound: processes in network namespaces, sender link ${lb.linkMbit} Mbit/s\n\n`;
  if (!lb.available) return s + `Not run: ${lb.reason ?? 'unknown'}\n\n`;
  s += `${lb.topology ?? ''}; MTU ${lb.mtu}. Source side in the sender namespace, one target per receiver namespace, every strategy over the bridge ((a)/(b) plain TCP streams, (c)-(e) coordinator + agents as processes). `;
  s += 'Bytes: program = what the source process counted; eth0 = the interfaces\' own counters (`ip -s -j link`), data direction (sender tx + every receiver rx) and reverse. ';
  s += 'Wall: migration window ((a)/(b) first connect to last resume; (c)-(e) collect + plan + scatter + converge, verification excluded). CPU: /proc/PID/stat of every process over the same window. ';
  s += 'Link use = sender eth0 tx bits / (wall x link rate); busiest CPU = the most loaded process\'s CPU seconds / its CPU window. Bound by: link when link use >= 80% and no process used >= 80% of a core, otherwise cpu? (this machine\'s cores may have set the time).\n\n';
  for (const r of lb.scenarios) {
    const sc = list.find((x) => x.id === r.scenario);
    s += `### ${sc?.headline ? '' : '(labelled scenario) '}${sc?.label ?? r.scenario}\n\n`;
    s += '| strategy | program sender MB | eth0 sender tx MB | tx / program | program all links MB | eth0 all links MB | eth0 reverse MB | tbf drops | wall s | time vs (a) | eth0 bytes vs (a) | link use | busiest CPU | bound by | CPU s total | downtime ms mean / max | verified |\n';
    s += '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |\n';
    const a = r.results.find((x) => x.strategy === 'a')!;
    for (const x of r.results) {
      if (x.error !== undefined) {
        s += `| (${x.strategy}) ${STRATEGIES[x.strategy]} | FAILED: ${x.error.split('\n').slice(0, 3).join(' ').replace(/\|/g, '/').slice(0, 300)} |||||||||||||||\n`;
        continue;
      }
      s += `| (${x.strategy}) ${STRATEGIES[x.strategy]} | ${MB(x.programSenderBytes)} | ${MB(x.iface.senderTx)} | ${fx(x.senderGap, 3)} | ${MB(x.programAllLinksBytes)} | ${MB(x.iface.allLinks)} | ${MB(x.iface.reverse)} | ${x.qdisc?.drops ?? '-'} | ${fx(x.wallSeconds, 2)} | ${fx(x.wallSeconds / a.wallSeconds, 3)} | ${fx(x.iface.senderTx / a.iface.senderTx, 3)} | ${fx(100 * x.linkUtilisation, 0)}% | ${fx(100 * x.maxProcessCpuShare, 0)}% | ${x.boundBy} | ${fx(x.cpuSecondsTotal, 1)} | ${fx(x.downtimeMs.mean, 1)} / ${fx(x.downtimeMs.max, 1)} | ${x.verified ? 'yes' : 'NO'} |\n`;
    }
    s += `\ndedup minimum: ${MB(r.dedupMinimum)} MB. CPU seconds per process:\n\n`;
    for (const x of r.results) s += `- (${x.strategy}) over ${fx(x.cpuWindowSeconds, 1)} s: ${Object.entries(x.cpuSeconds).map(([k, v]) => `${k} ${fx(v, 2)}`).join(', ')}\n`;
    s += '\n';
  }
  for (const k of lb.skipped ?? []) s += `Scenario ${k.scenario} not run link-bound: ${k.reason}.\n\n`;
  if (lb.bytesRatio !== undefined) {
    s += `Headline, link-bound (default scenario, ${lb.linkMbit} Mbit/s): bytesRatio (e)/(a) = ${lb.bytesRatio} (eth0 sender tx; goal <= 0.258), timeRatio (e)/(a) = ${lb.timeRatio} (goal <= 0.309), (d) vs dedup minimum = ${lb.vsDedupMinimum} (goal <= 1.05).\n\n`;
  }
  return s;
}

function realMarkdown(r: { available: boolean; reason?: string; label?: string; results?: StrategyResult[] }): string {
  if (!r.available || !r.results) return `## Real guests\n\nNot included: ${(r.reason ?? 'unknown').split('\n')[0]} (full message in the JSON, realGuests.reason)\n`;
  let s = `## Real guests\n\n`;
  s += table({ label: r.label ?? 'real guests', headline: false }, r.results);
  s += 'Bytes: direct = QEMU\'s ram.transferred (device state not included); vmscatter = converge + multicast sent. Time: direct one at a time = sum of the per-VM migrations, all at once = first start to last resume; vmscatter and converge only = collect + plan + scatter + converge (one VM at a time). CPU not measured for QEMU rows.\n';
  return s;
}

/**
 * The run's chart: the default scenario link-bound where it ran (bytes from eth0's counter),
 * else CPU-bound. Takes the JSON the bench writes, so a chart can be drawn again from it.
 */
export function resultChart(result: { scenarios: ScenarioOut[]; linkBound?: NetnsRunResult }): string {
  const head = result.scenarios.find((s) => s.scenario.headline)!;
  const linkBound = result.linkBound;
  const linkHead = linkBound?.scenarios.find((s) => s.scenario === 'default');
  return linkHead
    ? chart(
        linkHead.results.map((r) => ({ strategy: r.strategy, name: STRATEGIES[r.strategy], senderBytes: r.iface.senderTx, wallSeconds: r.wallSeconds })),
        `${head.scenario.label}; link-bound: sender link ${linkBound!.linkMbit} Mbit/s (tbf), namespaces`,
        `wall time, s (link-bound, ${linkBound!.linkMbit} Mbit/s)`,
        'MB on the sender link (eth0 counter)',
      )
    : chart(head.results, head.scenario.label);
}

/** Two bar charts side by side: MB on the sender's link, and wall seconds, per strategy. */
export function chart(
  results: Array<Pick<StrategyResult, 'strategy' | 'name' | 'senderBytes' | 'wallSeconds'>>,
  title: string,
  timeLabel = 'wall time, s (CPU-bound, loopback)',
  bytesLabel = 'MB on the sender link',
): string {
  const W = 880;
  // The title on as many lines as it needs (the link-bound one is wider than the chart).
  const titleLines = wrapWords(title, TITLE_CHARS);
  const extra = 15 * (titleLines.length - 1);
  const H = 360 + extra;
  const pad = { l: 60, r: 20, t: 50 + extra, b: 90 };
  const panelW = (W - pad.l - pad.r - 60) / 2;
  const colors = ['#7f7f7f', '#a0a0a0', '#4e79a7', '#59a14f', '#f28e2b'];
  const panel = (x0: number, label: string, values: number[], fmt: (v: number) => string): string => {
    const max = Math.max(...values, 1e-9) * 1.15;
    const bw = panelW / values.length;
    const h = H - pad.t - pad.b;
    let g = `<text x="${x0 + panelW / 2}" y="${pad.t - 12}" text-anchor="middle" font-size="13">${escapeXml(label)}</text>`;
    g += `<line x1="${x0}" y1="${pad.t + h}" x2="${x0 + panelW}" y2="${pad.t + h}" stroke="#333"/>`;
    values.forEach((v, i) => {
      const bh = (v / max) * h;
      const x = x0 + i * bw + bw * 0.15;
      g += `<rect x="${x.toFixed(1)}" y="${(pad.t + h - bh).toFixed(1)}" width="${(bw * 0.7).toFixed(1)}" height="${bh.toFixed(1)}" fill="${colors[i % colors.length]}"/>`;
      g += `<text x="${(x + bw * 0.35).toFixed(1)}" y="${(pad.t + h - bh - 4).toFixed(1)}" text-anchor="middle" font-size="11">${fmt(v)}</text>`;
      g += `<text x="${(x + bw * 0.35).toFixed(1)}" y="${pad.t + h + 16}" text-anchor="middle" font-size="12">(${results[i]!.strategy})</text>`;
    });
    return g;
  };
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>`;
  titleLines.forEach((line, i) => {
    svg += `<text x="${W / 2}" y="${20 + 15 * i}" text-anchor="middle" font-size="12" font-weight="bold">${escapeXml(line)}</text>`;
  });
  svg += panel(pad.l, bytesLabel, results.map((r) => r.senderBytes / 1e6), (v) => v.toFixed(0));
  svg += panel(pad.l + panelW + 60, timeLabel, results.map((r) => r.wallSeconds), (v) => v.toFixed(1));
  results.forEach((r, i) => {
    svg += `<text x="${pad.l}" y="${H - pad.b + 40 + i * 12}" font-size="11" fill="${colors[i % colors.length]}">(${r.strategy}) ${escapeXml(r.name)}</text>`;
  });
  return svg + '</svg>\n';
}

/**
 * Characters of a chart title line: 12 px bold sans-serif runs up to ~7.5 px a character, and the
 * chart is 880 px wide with 20 px margins.
 */
export const TITLE_CHARS = 110;

/** `text` in lines of at most `max` characters, broken between words (a longer word stands alone). */
export function wrapWords(text: string, max: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > max) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json');
  const mbit = argValue('--link-mbit');
  const cc = argValue('--tcp-cc');
  const r = await runStrategiesBench({
    quick: process.argv.includes('--quick'),
    json,
    netns: process.argv.includes('--netns'),
    ...(mbit !== undefined ? { linkMbit: Number(mbit) } : {}),
    ...(cc !== undefined ? { tcpCongestion: cc } : {}),
    noQemu: process.argv.includes('--no-qemu'),
  });
  if (json) console.log(JSON.stringify(r));
}
