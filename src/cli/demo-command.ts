/**
 * `vmscatter demo` (= `npm start`): the embedded default. Simulated VMs on a simulated source
 * host are evacuated to simulated target hosts, all in this process on loopback; every rebuilt
 * VM is compared byte for byte with its stopped source.
 */
import { cpus, totalmem } from 'node:os';
import { pino } from 'pino';
import { mergeConfig, readConfigFile, resolveConfig, type EvacuationConfig } from '../config.js';
import { simFleetFromConfig, SimTargetHost, verifySimVm, type SimSourceVm } from '../agent/sim-agents.js';
import { TargetAgent } from '../agent/target-agent.js';
import { failureSummary, runEvacuation, type EvacuationReport, type EvacuationTarget } from '../coordinator/evacuation.js';
import { createPlanner } from '../coordinator/planner.js';
import { createLoopbackScatter } from '../coordinator/loopback-scatter.js';
import { createProgressView } from './progress.js';
import { ErrorCode, VmsError } from '../errors.js';

export interface DemoFlags {
  json?: boolean;
  config?: string;
  vms?: number;
  memoryMib?: number;
  targets?: number;
  osImages?: number;
  tenants?: number;
  seed?: number;
  dirtyRate?: number;
  maxBandwidthMibps?: number;
  downtimeLimitMs?: number;
  parallel?: number;
  compress?: 'lz4' | 'none';
  scatter?: boolean;
  strategy?: 'graph' | 'greedy' | 'round-robin';
  logLevel?: string;
}

export function demoConfig(flags: DemoFlags): EvacuationConfig {
  const fromFlags = {
    fleet: { vms: flags.vms, memoryMiB: flags.memoryMib, osImages: flags.osImages, tenants: flags.tenants, seed: flags.seed, dirtyPagesPerSec: flags.dirtyRate },
    targets: flags.targets,
    migration: { maxBandwidthMiBps: flags.maxBandwidthMibps, downtimeLimitMs: flags.downtimeLimitMs, parallel: flags.parallel, compress: flags.compress },
    scatter: flags.scatter === false ? { enabled: false } : {},
    plan: { strategy: flags.strategy },
  };
  const file = flags.config ? readConfigFile(flags.config) : {};
  return resolveConfig(mergeConfig(file, fromFlags), flags.config ? `config ${flags.config} with command-line flags` : 'command-line flags');
}

/**
 * The demo's peak memory: every rebuilt VM's non-zero pages, the source's content index and the
 * targets' stores live in this one process. Measured (max RSS, default profile): 1.32 GB for
 * 8 VMs x 256 MiB, 2.21 GB for 8 x 512 MiB, 15.0 GB for 8 x 4 GiB; this rounds that up.
 */
export function demoMemoryEstimate(cfg: EvacuationConfig): number {
  return 0.6 * cfg.fleet.vms * cfg.fleet.memoryMiB * 2 ** 20 + 512 * 2 ** 20;
}

/** Refuse a demo fleet this machine cannot hold, before it grows into the OOM killer. */
export function checkDemoFits(cfg: EvacuationConfig, machineBytes: number): void {
  const need = demoMemoryEstimate(cfg);
  if (need <= 0.9 * machineBytes) return;
  const GiB = (b: number): string => (b / 2 ** 30).toFixed(1);
  throw new VmsError(
    ErrorCode.CONFIG,
    `the demo holds the whole evacuation in one process: ${cfg.fleet.vms} VMs x ${cfg.fleet.memoryMiB} MiB needs about ${GiB(need)} GiB here (0.6 x the fleet's RAM + 0.5), more than this machine's ${GiB(machineBytes)} GiB allows; use fewer or smaller VMs (--vms, --memory-mib)`,
  );
}

export interface SimEvacuationOptions {
  logLevel?: string;
  onEvent?: Parameters<typeof runEvacuation>[0]['onEvent'];
  signal?: AbortSignal;
}

/** Runs one embedded evacuation of a simulated fleet; used by the demo, tests and benches. */
export async function runSimEvacuation(cfg: EvacuationConfig, opts: SimEvacuationOptions = {}): Promise<EvacuationReport & { config: EvacuationConfig }> {
  const logger = pino({ level: opts.logLevel ?? 'warn' }, pino.destination(2));
  const vms = simFleetFromConfig(cfg);
  const hosts = Array.from({ length: cfg.targets }, () => new SimTargetHost());
  const agents = hosts.map((h, i) => new TargetAgent({ name: `target${i}`, incoming: h.incoming, logger }));
  const job = `demo-${Date.now().toString(36)}`;
  try {
    const addrs = await Promise.all(agents.map((a) => a.listen()));
    // Room for half again the fleet's fair share per target, so placement has choices.
    const perTarget = Math.ceil((1.5 * cfg.fleet.vms) / cfg.targets);
    const targets: EvacuationTarget[] = agents.map((a, i) => ({
      name: a.name,
      capacityBytes: perTarget * cfg.fleet.memoryMiB * 1024 * 1024,
      host: addrs[i]!.host,
      port: addrs[i]!.port,
    }));
    const scatter = cfg.scatter.enabled ? createLoopbackScatter(cfg.scatter, agents, job) : undefined;
    const report = await runEvacuation({
      job,
      vms,
      targets,
      planner: createPlanner(cfg.plan.strategy),
      ...(scatter ? { scatter } : {}),
      verify: async (vm) => {
        const sim = vm as SimSourceVm;
        const host = hosts[agents.findIndex((a) => a.resultOf(vm.name))]!;
        return verifySimVm(sim, host);
      },
      parallel: cfg.migration.parallel,
      ...(cfg.migration.compress === 'lz4' ? { compress: 'lz4' as const } : {}),
      stopCopyFirst: cfg.migration.stopCopyFirst,
      convergeInTurn: cfg.migration.convergeInTurn,
      logger,
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return { ...report, config: cfg };
  } finally {
    for (const vm of vms) vm.vm.stop();
    await Promise.all(agents.map((a) => a.close()));
  }
}

export async function demoCommand(flags: DemoFlags): Promise<void> {
  const cfg = demoConfig(flags);
  checkDemoFits(cfg, totalmem());
  const view = flags.json ? undefined : createProgressView();
  if (!flags.json) {
    process.stderr.write(
      `vmscatter demo: ${cfg.fleet.vms} simulated VMs x ${cfg.fleet.memoryMiB} MiB (${cfg.fleet.osImages} OS image(s), ${cfg.fleet.tenants} tenants, ` +
        `${cfg.fleet.dirtyPagesPerSec} dirty pages/s) -> ${cfg.targets} targets on loopback; scatter ${cfg.scatter.enabled ? 'on' : 'off'}, placement ${cfg.plan.strategy}\n`,
    );
  }
  let report: Awaited<ReturnType<typeof runSimEvacuation>>;
  try {
    report = await runSimEvacuation(cfg, { ...(flags.logLevel ? { logLevel: flags.logLevel } : {}), ...(view ? { onEvent: (e) => view.onEvent(e) } : {}) });
  } finally {
    view?.stop();
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify({ ...report, machine: machine() }) + '\n');
  } else {
    process.stdout.write(formatSummary(report));
  }
  if (!report.ok) process.exitCode = 1;
}

function machine(): Record<string, unknown> {
  return { nproc: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform };
}

const MB = (b: number): string => (b / 1e6).toFixed(1);

export function formatSummary(r: EvacuationReport): string {
  const rows = r.vms.map((v) => [
    v.name,
    v.target,
    String(v.rounds),
    Number.isFinite(v.downtimeMs) ? v.downtimeMs.toFixed(1) : '-',
    MB(v.plainBytes),
    MB(v.wireBytes),
    `${v.pagesRef}/${v.pagesStored}/${v.pagesWhole}`,
    v.ok ? (v.verified ? (v.verifiedBy === 'running' ? 'running' : 'yes') : 'n/a') : `NO ${v.error ?? v.verifyDetail ?? ''}`,
  ]);
  const head = ['vm', 'target', 'rounds', 'downtime ms', 'plain MB', 'sent MB', 'ref/store/whole', 'verified'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ') + '\n';
  let out = '\n' + line(head) + line(widths.map((w) => '-'.repeat(w)));
  for (const row of rows) out += line(row);
  const b = r.bytes;
  const saved = b.plainQemu > 0 ? (100 * (1 - b.wire / b.plainQemu)).toFixed(1) : '0';
  out += `\nbytes on the wire: ${MB(b.wire)} MB (converge ${MB(b.converge)} MB + multicast ${MB(b.scatter)} MB)\n`;
  out += `plain QEMU migration of the same VMs: ${MB(b.plainQemu)} MB  ->  ${saved}% less\n`;
  out += `content index: ${r.index.pages} pages, ${r.index.zeroPages} zero, ${r.index.distinct} distinct, ${r.index.sharedAcrossVms} shared across VMs\n`;
  out += `phases (ms): ${Object.entries(r.phasesMs)
    .map(([k, v]) => `${k} ${Math.round(v)}`)
    .join(', ')}\n`;
  // What the scatter could not do (a failure, targets left to converge, checks skipped).
  for (const n of r.scatter?.notes ?? []) out += `scatter: ${n}\n`;
  out += r.ok ? `${verdict(r.vms)}\n` : `FAILED: ${failureSummary(r.vms)}\n`;
  return out;
}

/** What a successful job's checks showed, without claiming more than was compared. */
function verdict(vms: EvacuationReport['vms']): string {
  const ram = vms.filter((v) => v.verified && v.verifiedBy !== 'running').length;
  const running = vms.filter((v) => v.verified && v.verifiedBy === 'running').length;
  if (ram === vms.length) return vms.length === 1 ? 'the VM was rebuilt byte-identical on its target' : `all ${vms.length} VMs rebuilt byte-identical on their targets`;
  const parts = [ram > 0 ? `${ram} rebuilt byte-identical` : '', running > 0 ? `${running} running on their targets (RAM not compared)` : '', vms.length - ram - running > 0 ? `${vms.length - ram - running} not verified` : ''];
  return `all ${vms.length} VMs moved: ${parts.filter(Boolean).join(', ')}`;
}
