/**
 * `vmscatter bench strategies`: the same simulated fleet migrated by every strategy in one run.
 *
 *   (a) plain QEMU-style migration, one VM at a time, over TCP
 *   (b) the same, all VMs at once
 *   (c) converge only: per-target dedup through the converge channel, no multicast
 *   (d) vmscatter: multicast scatter + converge
 *   (e) vmscatter with LZ4 on converge frames
 *
 * Every run here is on loopback in one process, so it is bound by this machine's two cores, not
 * by a network: bytes are exact, times are the CPU-bound figure (see notes/benchmarking.md).
 * Ratios are against (a) measured in the same run, on a fleet built from the same seeds.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { simFleetFromConfig } from '../src/agent/sim-agents.js';
import { resolveConfig, type EvacuationConfig } from '../src/config.js';
import { runSimEvacuation } from '../src/cli/demo-command.js';
import { DEFAULT_PROFILE } from '../src/memory/sim-profile.js';
import { plainMigrate } from './plain-migration.js';

export const STRATEGIES = {
  a: 'plain QEMU, one VM at a time',
  b: 'plain QEMU, all at once',
  c: 'converge only (per-target dedup)',
  d: 'vmscatter (scatter + converge)',
  e: 'vmscatter + lz4',
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
    try {
      const m = await measure(() => plainMigrate(vms, { parallel: id === 'a' ? 1 : vms.length, ...migration }));
      const bytes = m.value.reduce((s, v) => s + v.bytes, 0);
      return {
        strategy: id,
        name: STRATEGIES[id],
        available: true,
        senderBytes: bytes,
        allLinksBytes: 2 * bytes,
        wallSeconds: m.wallSeconds,
        cpuSeconds: m.cpuSeconds,
        downtimeMs: downtimes(m.value.map((v) => v.downtimeMs)),
        verified: m.value.every((v) => v.verified),
      };
    } finally {
      vms.forEach((v) => v.vm.stop());
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

export async function runStrategiesBench(opts: { quick: boolean; json: boolean }): Promise<Record<string, unknown>> {
  const out: Array<{ scenario: Omit<Scenario, 'config'> & { fleet: EvacuationConfig['fleet']; targets: number }; results: StrategyResult[]; dedupMinimum: number }> = [];
  const log = (s: string): void => {
    if (!opts.json) process.stderr.write(s);
  };
  for (const sc of scenarios(opts.quick)) {
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
  const head = out.find((s) => s.scenario.headline)!;
  const by = (id: StrategyId): StrategyResult => head.results.find((r) => r.strategy === id)!;
  const ratio = (x: number, y: number): number => Math.round((x / y) * 1000) / 1000;
  const result = {
    bench: 'strategies',
    date: new Date().toISOString(),
    command: `vmscatter bench strategies${opts.quick ? ' --quick' : ''}${opts.json ? ' --json' : ''}`,
    setting: 'loopback, one process, CPU-bound (2 cores): bytes exact, times are the CPU-bound figure',
    profile: { ...DEFAULT_PROFILE },
    machine: { nproc: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    bytesRatio: ratio(by('e').senderBytes, by('a').senderBytes),
    timeRatio: ratio(by('e').wallSeconds, by('a').wallSeconds),
    vsDedupMinimum: ratio(by('d').senderBytes, head.dedupMinimum),
    goals: { bytesRatio: 0.258, timeRatio: 0.309, vsDedupMinimum: 1.05 },
    scenarios: out,
  };
  const md = markdown(result.scenarios, result);
  const svg = chart(head.results, head.scenario.label);
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

function markdown(list: Array<{ scenario: { label: string; headline: boolean }; results: StrategyResult[]; dedupMinimum: number }>, r: { bytesRatio: number; timeRatio: number; vsDedupMinimum: number; machine: Record<string, unknown>; date: string; setting: string }): string {
  let s = `# vmscatter bench strategies\n\n${r.date}; ${String(r.machine.nproc)} CPUs (${String(r.machine.cpu)}), ${String(r.machine.memoryGiB)} GiB, node ${String(r.machine.node)}; ${r.setting}.\n\n`;
  for (const sc of list) {
    const a = sc.results.find((x) => x.strategy === 'a')!;
    s += `## ${sc.scenario.headline ? '' : '(labelled scenario) '}${sc.scenario.label}\n\n`;
    s += '| strategy | sender MB | all links MB | bytes vs (a) | wall s | time vs (a) | CPU s | downtime ms mean / max | verified |\n';
    s += '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n';
    for (const x of sc.results) {
      s += `| (${x.strategy}) ${x.name}${x.available ? '' : ' *'} | ${(x.senderBytes / 1e6).toFixed(1)} | ${(x.allLinksBytes / 1e6).toFixed(1)} | ${(x.senderBytes / a.senderBytes).toFixed(3)} | ${x.wallSeconds.toFixed(2)} | ${(x.wallSeconds / a.wallSeconds).toFixed(3)} | ${x.cpuSeconds.toFixed(1)} | ${x.downtimeMs.mean} / ${x.downtimeMs.max} | ${x.verified ? 'yes' : 'NO'} |\n`;
    }
    s += `\ndedup minimum (distinct contents + resent pages + device state): ${(sc.dedupMinimum / 1e6).toFixed(1)} MB\n\n`;
    const na = sc.results.filter((x) => !x.available);
    if (na.length) s += `\\* ${na[0]!.note}\n\n`;
  }
  s += `Headline (default scenario): bytesRatio (e)/(a) = ${r.bytesRatio} (goal <= 0.258), timeRatio (e)/(a) = ${r.timeRatio} (goal <= 0.309), (d) vs dedup minimum = ${r.vsDedupMinimum} (goal <= 1.05).\n`;
  return s;
}

/** Two bar charts side by side: MB on the sender's link, and wall seconds, per strategy. */
export function chart(results: StrategyResult[], title: string): string {
  const W = 880;
  const H = 360;
  const pad = { l: 60, r: 20, t: 50, b: 90 };
  const panelW = (W - pad.l - pad.r - 60) / 2;
  const colors = ['#7f7f7f', '#a0a0a0', '#4e79a7', '#59a14f', '#f28e2b'];
  const panel = (x0: number, label: string, values: number[], fmt: (v: number) => string): string => {
    const max = Math.max(...values, 1e-9) * 1.15;
    const bw = panelW / values.length;
    const h = H - pad.t - pad.b;
    let g = `<text x="${x0 + panelW / 2}" y="${pad.t - 12}" text-anchor="middle" font-size="13">${label}</text>`;
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
  svg += `<text x="${W / 2}" y="20" text-anchor="middle" font-size="12" font-weight="bold">${escapeXml(title)}</text>`;
  svg += panel(pad.l, 'MB on the sender link', results.map((r) => r.senderBytes / 1e6), (v) => v.toFixed(0));
  svg += panel(pad.l + panelW + 60, 'wall time, s (CPU-bound, loopback)', results.map((r) => r.wallSeconds), (v) => v.toFixed(1));
  results.forEach((r, i) => {
    svg += `<text x="${pad.l}" y="${H - pad.b + 40 + i * 12}" font-size="11" fill="${colors[i % colors.length]}">(${r.strategy}) ${escapeXml(r.name)}</text>`;
  });
  return svg + '</svg>\n';
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json');
  const r = await runStrategiesBench({ quick: process.argv.includes('--quick'), json });
  if (json) console.log(JSON.stringify(r));
}
