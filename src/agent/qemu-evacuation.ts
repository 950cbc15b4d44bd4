/**
 * An embedded evacuation of real QEMU guests (the QEMU counterpart of runSimEvacuation): every
 * source guest runs here with its RAM in a shared /dev/shm file, one TargetAgent per target host
 * on loopback starts a target QEMU per incoming VM, and runEvacuation drives collect -> plan ->
 * scatter -> converge -> verify. Verification is what a real guest allows:
 *  - live targets: the guest ticks on, its tick counter continues and its uniq_md5 is unchanged;
 *  - paused targets (-S): the target's RAM file equals the stopped source's byte for byte.
 * Used by the end-to-end test, `vmscatter bench qemu` and `vmscatter demo --qemu`.
 */
import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino, type Logger } from 'pino';
import { mergeConfig, resolveConfig, type EvacuationConfigInput } from '../config.js';
import { createLoopbackScatter } from '../coordinator/loopback-scatter.js';
import { createPlanner } from '../coordinator/planner.js';
import { runEvacuation, type EvacuationReport, type EvacuationTarget } from '../coordinator/evacuation.js';
import type { EventSink } from '../coordinator/events.js';
import { ErrorCode, VmsError } from '../errors.js';
import { buildGuest, checkWorkloadFits, parseTicks, TICK_RE, workloadAppend, type GuestImage, type Tick, type WorkloadParams } from '../qemu/guest-builder.js';
import { launchGuest, type QemuGuest } from '../qemu/launcher.js';
import { QemuSourceVm, QemuTargetHost, type LaunchedGuest, type QemuMigrationParams } from './qemu-agents.js';
import { TargetAgent } from './target-agent.js';

const MiB = 1024 * 1024;

export const QEMU_FLEET_DEFAULTS = {
  vms: 3,
  memoryMiB: 256,
  targets: 2,
  /** One VM at a time: on two cores, three ticking guests plus a loading target is the limit. */
  parallel: 1,
  bootTimeoutMs: 180_000,
  tickTimeoutMs: 30_000,
} as const;

export interface QemuFleetOptions {
  /** Default: buildGuest() (cached kernel + initramfs). */
  readonly image?: GuestImage;
  readonly vms?: number;
  readonly memoryMiB?: number;
  readonly workload?: Partial<WorkloadParams>;
  /** Guest names are `${namePrefix}${i}`. Default "vm". */
  readonly namePrefix?: string;
  /** QEMU accelerator. Default tcg (see notes/qemu.md). */
  readonly accel?: string;
  readonly bootTimeoutMs?: number;
  readonly log?: (msg: string) => void;
}

/**
 * Start the source guests (same kernel and initramfs, RAM in shared files) and wait until each
 * ticks. On failure every guest started here is disposed.
 */
export async function launchQemuFleet(opts: QemuFleetOptions = {}): Promise<LaunchedGuest[]> {
  const append = workloadAppend(opts.workload);
  checkWorkloadFits(opts.workload ?? {}, opts.memoryMiB ?? QEMU_FLEET_DEFAULTS.memoryMiB);
  const image = opts.image ?? (await buildGuest(opts.log ? { log: opts.log } : {}));
  const n = opts.vms ?? QEMU_FLEET_DEFAULTS.vms;
  const launches = Array.from({ length: n }, (_, i) => ({
    image,
    append,
    name: `${opts.namePrefix ?? 'vm'}${i}`,
    memoryMiB: opts.memoryMiB ?? QEMU_FLEET_DEFAULTS.memoryMiB,
    sharedRam: true,
    ...(opts.accel !== undefined ? { accel: opts.accel } : {}),
  }));
  const settled = await Promise.allSettled(launches.map((l) => launchGuest(l)));
  const guests = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  try {
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const timeout = opts.bootTimeoutMs ?? QEMU_FLEET_DEFAULTS.bootTimeoutMs;
    await Promise.all(guests.map((g) => g.waitForSerial(TICK_RE, timeout)));
    return guests.map((guest, i) => ({ guest, launch: launches[i]! }));
  } catch (e) {
    await Promise.all(guests.map((g) => g.dispose()));
    throw e;
  }
}

export interface QemuEvacuationOptions {
  /** Running source guests with shared RAM; they are not disposed here. */
  readonly sources: readonly LaunchedGuest[];
  /** Target hosts. Default 2. */
  readonly targets?: number;
  /** VMs a target may take. Default ceil(vms / targets): every target gets some. */
  readonly vmsPerTarget?: number;
  /** Keep targets paused (-S) and compare their RAM with the stopped sources instead. */
  readonly paused?: boolean;
  /** Target RAM in shared files (needed for `paused` and to migrate the VMs onwards). Default true. */
  readonly targetSharedRam?: boolean;
  readonly migration?: QemuMigrationParams;
  /** VMs migrating at once. Default 1. */
  readonly parallel?: number;
  /** Converge frames: the config's migration.compress by default (lz4). */
  readonly compress?: 'lz4' | 'none';
  /** Scatter and plan sections of the evacuation config (the fleet section is ignored). */
  readonly config?: EvacuationConfigInput;
  readonly job?: string;
  readonly logLevel?: string;
  readonly logger?: Logger;
  readonly onEvent?: EventSink;
  readonly signal?: AbortSignal;
  /** A target QEMU is up and listening for its VM (tests inject failures here). */
  readonly onTargetLaunched?: (vm: string, guest: QemuGuest, target: string) => void;
  readonly tickTimeoutMs?: number;
}

export interface QemuGuestCheck {
  vm: string;
  target: string;
  migrated: boolean;
  /** The source's last tick before it stopped (or before the check, when it kept running). */
  lastSourceTick: Tick | undefined;
  /**
   * Migrated: the target's second tick, the first whose md5sum ran wholly on the target. Not
   * migrated: the source's next tick.
   */
  nextTick: Tick | undefined;
  /**
   * Migrated: the target's first tick. Its md5sum may have run across the switch-over; under
   * CPU load QEMU 7.2 TCG occasionally gets that one wrong with plain QEMU-to-QEMU migration too
   * (seen 1 in 15 direct TCP migrations with two busy loops beside the guests), while the RAM
   * is intact: the next tick is right, and paused targets compare equal byte for byte.
   */
  firstTick?: Tick;
  /** The tick counter went on from where the source was (it lives in guest RAM). */
  ticksContinue: boolean;
  /** uniq_md5 unchanged: the guest's unique region survived. */
  md5Match: boolean;
  /** Paused targets: target RAM file == stopped source RAM file. */
  ramIdentical?: boolean;
  ramDetail?: string;
  /** A failed running target: the first lines its console printed after the switch-over. */
  targetConsole?: string;
  sourceStatus: string;
  targetStatus?: string;
  /** Source STOP -> target RESUME (QMP timestamps), ms. */
  downtimeMs: number;
  ok: boolean;
}

export interface QemuEvacuationResult {
  ok: boolean;
  report: EvacuationReport;
  checks: QemuGuestCheck[];
  /** The VMs on their targets, with launch options (to migrate them onwards). Owned by `hosts`. */
  arrived: LaunchedGuest[];
  /** Dispose these to kill the target QEMUs. */
  hosts: QemuTargetHost[];
  /** QEMU's own view of each source migration. */
  sourceVms: QemuSourceVm[];
}

/** Evacuate `sources` to target QEMUs on this host through vmscatter, and check every guest. */
export async function runQemuEvacuation(opts: QemuEvacuationOptions): Promise<QemuEvacuationResult> {
  if (opts.sources.length === 0) throw new VmsError(ErrorCode.CONFIG, 'runQemuEvacuation: no source guests given');
  const logger = opts.logger ?? pino({ level: opts.logLevel ?? 'warn' }, pino.destination(2));
  const nTargets = opts.targets ?? QEMU_FLEET_DEFAULTS.targets;
  const cfg = resolveConfig(
    mergeConfig(
      { targets: nTargets, migration: { parallel: opts.parallel ?? QEMU_FLEET_DEFAULTS.parallel, ...(opts.compress !== undefined ? { compress: opts.compress } : {}) } },
      { scatter: opts.config?.scatter ?? {}, plan: opts.config?.plan ?? {} },
    ),
    'QEMU evacuation options',
  );
  const paused = opts.paused === true;
  const tickTimeout = opts.tickTimeoutMs ?? QEMU_FLEET_DEFAULTS.tickTimeoutMs;
  const launchOf = new Map(opts.sources.map((s) => [s.guest.name, s.launch]));
  const hosts = Array.from(
    { length: nTargets },
    (_, i) =>
      new QemuTargetHost({
        name: `target${i}`,
        sources: launchOf,
        paused,
        sharedRam: opts.targetSharedRam !== false || paused,
        logger,
        ...(opts.onTargetLaunched ? { onLaunched: (vm: string, g: QemuGuest) => opts.onTargetLaunched!(vm, g, `target${i}`) } : {}),
      }),
  );
  const agents = hosts.map((h) => new TargetAgent({ name: h.name, incoming: h.incoming, logger }));
  const vms: QemuSourceVm[] = [];
  const job = opts.job ?? `qemu-${Date.now().toString(36)}`;
  let ok = false;
  try {
    for (const s of opts.sources) vms.push(new QemuSourceVm(s.guest, opts.migration ?? {}, logger));
    const addrs = await Promise.all(agents.map((a) => a.listen()));
    const perTarget = opts.vmsPerTarget ?? Math.ceil(vms.length / nTargets);
    const maxMem = Math.max(...vms.map((v) => v.memoryBytes));
    const targets: EvacuationTarget[] = agents.map((a, i) => ({
      name: a.name,
      capacityBytes: perTarget * maxMem,
      maxVms: perTarget,
      host: addrs[i]!.host,
      port: addrs[i]!.port,
    }));
    const hostOf = (name: string): QemuTargetHost | undefined => hosts.find((h) => h.name === name);
    const checks = new Map<string, QemuGuestCheck>();
    const scatter = cfg.scatter.enabled ? createLoopbackScatter(cfg.scatter, agents, job) : undefined;
    const report = await runEvacuation({
      job,
      vms,
      targets,
      planner: createPlanner(cfg.plan.strategy),
      ...(scatter ? { scatter } : {}),
      verify: async (vm, r) => {
        const c = await checkArrived(vm as QemuSourceVm, hostOf(r.target), r.target, r.downtimeMs, paused, tickTimeout);
        checks.set(vm.name, c);
        return c.ok ? { verified: true } : { verified: false, detail: describeCheck(c) };
      },
      parallel: cfg.migration.parallel,
      ...(cfg.migration.compress === 'lz4' ? { compress: 'lz4' as const } : {}),
      stopCopyFirst: cfg.migration.stopCopyFirst,
      convergeInTurn: cfg.migration.convergeInTurn,
      logger,
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    // VMs that did not move: their source must run on, ticking with the same RAM.
    for (const v of report.vms) {
      if (checks.has(v.name)) continue;
      const src = vms.find((x) => x.name === v.name)!;
      checks.set(v.name, await checkStayed(src, v.target, tickTimeout));
    }
    const ordered = vms.map((v) => checks.get(v.name)!);
    const arrived = hosts.flatMap((h) => [...h.vms.values()]);
    ok = report.ok && ordered.every((c) => c.migrated && c.ok);
    return { ok, report, checks: ordered, arrived, hosts, sourceVms: vms };
  } catch (e) {
    await Promise.all(hosts.map((h) => h.dispose()));
    throw e;
  } finally {
    for (const v of vms) v.close();
    await Promise.all(agents.map((a) => a.close()));
  }
}

async function checkArrived(
  src: QemuSourceVm,
  host: QemuTargetHost | undefined,
  target: string,
  downtimeMs: number,
  paused: boolean,
  tickTimeoutMs: number,
): Promise<QemuGuestCheck> {
  const sourceStatus = await src.guest.status().catch(() => 'gone');
  const lastSourceTick = parseTicks(await src.guest.serial()).pop();
  const base = { vm: src.name, target, migrated: true, lastSourceTick, sourceStatus, downtimeMs };
  const arrived = host?.vms.get(src.name)?.guest;
  if (arrived === undefined) {
    return { ...base, nextTick: undefined, ticksContinue: false, md5Match: false, ok: false, ramDetail: `no VM ${src.name} on ${target}` };
  }
  const targetStatus = await arrived.status().catch(() => 'gone');
  if (paused) {
    // Both stopped at the same instant of guest time: the source in postmigrate, the target
    // loaded and held by -S. Their RAM must be identical.
    const cmp = await compareFiles(src.guest.ramPath!, arrived.ramPath!);
    const ok = cmp.equal && sourceStatus === 'postmigrate' && targetStatus === 'paused';
    return {
      ...base,
      nextTick: undefined,
      ticksContinue: false,
      md5Match: false,
      ramIdentical: cmp.equal,
      ...(cmp.detail !== undefined ? { ramDetail: cmp.detail } : {}),
      targetStatus,
      ok,
    };
  }
  // The target's serial log is its own: every tick there was printed after the resume.
  let firstTick: Tick | undefined;
  let nextTick: Tick | undefined;
  const deadline = Date.now() + tickTimeoutMs;
  while (nextTick === undefined && Date.now() < deadline && arrived.isAlive()) {
    const ticks = parseTicks(await arrived.serial());
    firstTick = ticks[0];
    nextTick = ticks[1];
    if (nextTick === undefined) await sleep(100);
  }
  const ticksContinue = nextTick !== undefined && lastSourceTick !== undefined && nextTick.n > lastSourceTick.n;
  const md5Match = nextTick !== undefined && lastSourceTick !== undefined && nextTick.md5 === lastSourceTick.md5;
  const ok = ticksContinue && md5Match && sourceStatus === 'postmigrate' && targetStatus === 'running';
  // What the guest said on the target tells a reboot (panic, triple fault) from a wrong tick.
  const targetConsole = ok ? undefined : (await arrived.serial().catch(() => '')).split('\n').slice(0, 40).join('\n');
  return {
    ...base,
    nextTick,
    ...(firstTick !== undefined ? { firstTick } : {}),
    ticksContinue,
    md5Match,
    targetStatus,
    ...(targetConsole ? { targetConsole } : {}),
    ok,
  };
}

async function checkStayed(src: QemuSourceVm, target: string, tickTimeoutMs: number): Promise<QemuGuestCheck> {
  const g = src.guest;
  const sourceStatus = await g.status().catch(() => 'gone');
  const lastSourceTick = parseTicks(await g.serial()).pop();
  let nextTick: Tick | undefined;
  if (sourceStatus === 'running') nextTick = await g.nextTick(tickTimeoutMs).catch(() => undefined);
  const ticksContinue = nextTick !== undefined && lastSourceTick !== undefined && nextTick.n > lastSourceTick.n;
  const md5Match = nextTick !== undefined && lastSourceTick !== undefined && nextTick.md5 === lastSourceTick.md5;
  return {
    vm: src.name,
    target,
    migrated: false,
    lastSourceTick,
    nextTick,
    ticksContinue,
    md5Match,
    sourceStatus,
    downtimeMs: Number.NaN,
    // Not migrated, but safe: the source runs on unharmed.
    ok: sourceStatus === 'running' && ticksContinue && md5Match,
  };
}

export function describeCheck(c: QemuGuestCheck): string {
  const t = (x: Tick | undefined): string => (x ? `#${x.n} ${x.md5.slice(0, 8)}` : '-');
  const parts = [`source ${c.sourceStatus}`];
  if (c.targetStatus !== undefined) parts.push(`target ${c.targetStatus}`);
  if (c.ramIdentical !== undefined) parts.push(c.ramIdentical ? 'RAM identical' : `RAM differs (${c.ramDetail ?? '?'})`);
  else {
    const first = c.firstTick !== undefined && c.firstTick.md5 !== c.lastSourceTick?.md5 ? ` (first tick #${c.firstTick.n} across the switch-over: ${c.firstTick.md5.slice(0, 8)})` : '';
    parts.push(`tick ${t(c.lastSourceTick)} -> ${t(c.nextTick)}${c.md5Match ? '' : ' md5 MISMATCH'}${c.ticksContinue ? '' : ' counter did not continue'}${first}`);
  }
  if (c.ramIdentical === undefined && c.ramDetail !== undefined) parts.push(c.ramDetail);
  return parts.join(', ');
}

/** Byte-for-byte comparison of two files, 4 MiB at a time. */
export async function compareFiles(a: string, b: string): Promise<{ equal: boolean; detail?: string }> {
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return { equal: false, detail: `sizes differ: ${sa.size} vs ${sb.size} bytes` };
    const CH = 4 * MiB;
    const ba = Buffer.allocUnsafe(CH);
    const bb = Buffer.allocUnsafe(CH);
    let differing = 0;
    let first = -1;
    for (let off = 0; off < sa.size; off += CH) {
      const n = Math.min(CH, sa.size - off);
      await Promise.all([fa.read(ba, 0, n, off), fb.read(bb, 0, n, off)]);
      if (ba.compare(bb, 0, n, 0, n) === 0) continue;
      for (let p = 0; p < n; p += 4096) {
        if (ba.compare(bb, p, p + 4096, p, p + 4096) !== 0) {
          differing++;
          if (first < 0) first = (off + p) / 4096;
        }
      }
    }
    return differing === 0 ? { equal: true } : { equal: false, detail: `${differing} pages differ, first at page ${first}` };
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

// ---------------------------------------------------------------------------------------------

export interface QemuDemoOptions {
  readonly vms?: number;
  readonly memoryMiB?: number;
  readonly targets?: number;
  readonly workload?: Partial<WorkloadParams>;
  readonly migration?: QemuMigrationParams;
  readonly parallel?: number;
  readonly compress?: 'lz4' | 'none';
  readonly config?: EvacuationConfigInput;
  readonly accel?: string;
  readonly logLevel?: string;
  readonly onEvent?: EventSink;
  readonly signal?: AbortSignal;
  /** Progress lines (guest build, boot). */
  readonly log?: (msg: string) => void;
}

export interface QemuDemoResult {
  ok: boolean;
  report: EvacuationReport;
  checks: QemuGuestCheck[];
  bootMs: number;
  evacuationMs: number;
}

/**
 * One whole run for `vmscatter demo --qemu`: boot the fleet, evacuate it live to the targets,
 * check every guest, and remove every QEMU and file it made, whatever happens.
 */
export async function runQemuDemo(opts: QemuDemoOptions = {}): Promise<QemuDemoResult> {
  const t0 = performance.now();
  opts.log?.(`booting ${opts.vms ?? QEMU_FLEET_DEFAULTS.vms} guests of ${opts.memoryMiB ?? QEMU_FLEET_DEFAULTS.memoryMiB} MiB`);
  const sources = await launchQemuFleet({
    ...(opts.vms !== undefined ? { vms: opts.vms } : {}),
    ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
    ...(opts.workload !== undefined ? { workload: opts.workload } : {}),
    ...(opts.accel !== undefined ? { accel: opts.accel } : {}),
    ...(opts.log !== undefined ? { log: opts.log } : {}),
  });
  const bootMs = performance.now() - t0;
  let hosts: QemuTargetHost[] = [];
  try {
    opts.log?.(`guests ticking after ${(bootMs / 1000).toFixed(1)} s; evacuating to ${opts.targets ?? QEMU_FLEET_DEFAULTS.targets} targets`);
    const t1 = performance.now();
    const r = await runQemuEvacuation({
      sources,
      ...(opts.targets !== undefined ? { targets: opts.targets } : {}),
      ...(opts.migration !== undefined ? { migration: opts.migration } : {}),
      ...(opts.parallel !== undefined ? { parallel: opts.parallel } : {}),
      ...(opts.compress !== undefined ? { compress: opts.compress } : {}),
      ...(opts.config !== undefined ? { config: opts.config } : {}),
      ...(opts.logLevel !== undefined ? { logLevel: opts.logLevel } : {}),
      ...(opts.onEvent !== undefined ? { onEvent: opts.onEvent } : {}),
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
    });
    hosts = r.hosts;
    return { ok: r.ok, report: r.report, checks: r.checks, bootMs, evacuationMs: performance.now() - t1 };
  } finally {
    await Promise.all([...hosts.map((h) => h.dispose()), ...sources.map((s) => s.guest.dispose())]);
  }
}
