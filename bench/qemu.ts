/**
 * `vmscatter bench qemu`: the same real guests, in the same run, migrated
 *  (a) by QEMU directly over TCP on loopback (target `-incoming tcp:127.0.0.1:PORT`), one guest
 *      after the other and (labelled) all at once, and
 *  (b) through vmscatter (scan, plan, multicast scatter, converge) to 2 target hosts, with the
 *      default configuration (LZ4-compressed converge frames), again without compression
 *      (`--compress none`), and (labelled, without compression) without the multicast scatter
 *      (converge only: per-target dedup),
 * one round after the other: the guests that arrived in one round are the sources of the next,
 * so every round moves the same VMs with the same RAM (give or take what they dirtied). The
 * order is mirrored to cancel drift (quick: WAYS once; full: WAYS, then the reverse).
 *
 * Bytes: direct = QEMU's own count of what it wrote into the socket (query-migrate
 * ram.transferred; QEMU 7.2 leaves the ~0.1 MB of device state out of it, which flatters direct
 * slightly); vmscatter = what left the source agent (converge connections + multicast datagrams).
 * Downtime: source STOP event -> target RESUME event (QMP timestamps, same host clock), never
 * QEMU's own `downtime`, which ends when the source has written its last byte.
 * Both ways run with the same QEMU parameters: max-bandwidth QEMU's default, downtime-limit
 * BENCH_DOWNTIME_LIMIT_MS. QEMU stops the guest once what is left fits the limit at the bandwidth
 * it measured; through vmscatter that is the agent pipeline's rate (backpressure reaches QEMU),
 * so QEMU's default 300 ms let it stop with 2-8 MB left (seen: 53-510 ms downtime), while the
 * same limit directly over loopback TCP left only what a 1 GB/s socket clears in a few ms.
 * Everything runs on loopback without a rate limit: these figures are CPU-bound (two cores
 * shared by the guests, QEMU's migration threads and the agents), not link-bound.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { pathToFileURL } from 'node:url';
import { launchQemuFleet, runQemuEvacuation, QEMU_FLEET_DEFAULTS } from '../src/agent/qemu-evacuation.js';
import { machineOptions, type LaunchedGuest } from '../src/agent/qemu-agents.js';
import { QEMU_DEFAULT_MAX_BANDWIDTH } from '../src/config.js';
import { ErrorCode, VmsError } from '../src/errors.js';
import { buildGuest, checkWorkloadFits, DEFAULT_WORKLOAD, parseTicks, TICK_RE, type WorkloadParams } from '../src/qemu/guest-builder.js';
import { checkQemu, launchGuest, type LaunchOptions } from '../src/qemu/launcher.js';

/** downtime-limit for both ways (QEMU's default is 300 ms; see the header). */
export const BENCH_DOWNTIME_LIMIT_MS = 20;

/**
 * direct: QEMU to QEMU over TCP, one guest after the other; direct-parallel: the same, all guests
 * at once; converge-only: through vmscatter without the multicast scatter (per-target dedup
 * only), uncompressed; vmscatter-uncompressed: vmscatter with `--compress none`; vmscatter: its
 * defaults (LZ4). The goals are about direct and vmscatter (with and without compression).
 */
export type QemuBenchWay = 'direct' | 'direct-parallel' | 'converge-only' | 'vmscatter-uncompressed' | 'vmscatter';
const WAYS: readonly QemuBenchWay[] = ['direct', 'direct-parallel', 'converge-only', 'vmscatter-uncompressed', 'vmscatter'];
/** Each way's key in the JSON summaries (bytes, downtimeMs, totalTimeMs). */
const WAY_KEY = { direct: 'direct', 'direct-parallel': 'directParallel', 'converge-only': 'convergeOnly', 'vmscatter-uncompressed': 'vmscatterUncompressed', vmscatter: 'vmscatter' } as const;
type WayKey = (typeof WAY_KEY)[QemuBenchWay];
const perWay = <T>(f: (w: QemuBenchWay) => T): Record<WayKey, T> => Object.fromEntries(WAYS.map((w) => [WAY_KEY[w], f(w)])) as Record<WayKey, T>;

interface VmRow {
  vm: string;
  target?: string;
  /** Bytes this VM's migration put on the wire (vmscatter: its converge connection only). */
  bytes: number;
  /** QEMU's own stream for this VM in this round (direct: ram.transferred). */
  streamBytes: number;
  downtimeMs: number;
  /** QEMU's own figure (ends when the source wrote its last byte). */
  qemuDowntimeMs: number;
  /** Pre-copy iterations (dirty-sync-count). */
  syncs: number;
  /** Migration start to the target running, ms (vmscatter: the converge of this VM only). */
  totalMs: number;
  ok: boolean;
}

interface RoundResult {
  way: QemuBenchWay;
  /** Wire bytes of the round (vmscatter: converge + multicast). */
  bytes: number;
  /** First migration start to the last target running (vmscatter: collect + plan + scatter + converge). */
  totalMs: number;
  vms: VmRow[];
  phasesMs?: Record<string, number>;
  scatterBytes?: number;
  /** vmscatter: the least any dedup without compression sends for the streams of this round. */
  dedupMinimum?: number;
  ok: boolean;
}

const r1 = (x: number): number => Math.round(x * 10) / 10;
const mean = (xs: number[]): number => (xs.length === 0 ? Number.NaN : xs.reduce((s, x) => s + x, 0) / xs.length);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * QEMU -> QEMU over TCP, one VM after the other (time: the migrations' sum) or all at once (time:
 * first start to last resume). Returns the arrived guests (the next sources).
 */
async function directRound(
  way: 'direct' | 'direct-parallel',
  sources: LaunchedGuest[],
  owned: Set<LaunchedGuest>,
  log: (m: string) => void,
): Promise<{ round: RoundResult; arrived: LaunchedGuest[] }> {
  const rows: VmRow[] = [];
  const arrived: LaunchedGuest[] = [];
  let busyMs = 0;
  const one = async (src: LaunchedGuest): Promise<void> => {
    const port = await freePort();
    // Same target set-up as vmscatter's: shared, preallocated RAM (it is the next round's source).
    const launch: LaunchOptions = { ...machineOptions(src.launch), name: src.guest.name, sharedRam: true, preallocRam: true, incoming: `tcp:127.0.0.1:${port}`, daemonize: false };
    const guest = await launchGuest(launch);
    const target: LaunchedGuest = { guest, launch };
    owned.add(target);
    const resumed = guest.qmp.waitEvent('RESUME', undefined, 180_000);
    resumed.catch(() => {});
    const lastTick = parseTicks(await src.guest.serial()).pop();
    const t0 = performance.now();
    const stats = await src.guest.migrateTo(`tcp:127.0.0.1:${port}`, {
      maxBandwidth: QEMU_DEFAULT_MAX_BANDWIDTH,
      downtimeLimitMs: BENCH_DOWNTIME_LIMIT_MS,
      timeoutMs: 180_000,
    });
    const resumeEv = await resumed;
    const totalMs = performance.now() - t0;
    busyMs += totalMs;
    const stop = stats.events.find((e) => e.event === 'STOP');
    const tick = await guest.waitForSerial(TICK_RE, 30_000, 0);
    const ok = stats.status === 'completed' && tick[2] === lastTick?.md5 && Number(tick[1]) > (lastTick?.n ?? Infinity);
    const row: VmRow = {
      vm: src.guest.name,
      bytes: stats.ram.transferred,
      streamBytes: stats.ram.transferred,
      downtimeMs: stop ? resumeEv.timeMs - stop.timeMs : Number.NaN,
      qemuDowntimeMs: stats.downtimeMs,
      syncs: stats.ram.dirtySyncCount,
      totalMs: Math.round(totalMs),
      ok,
    };
    rows.push(row);
    log(`  ${way} ${row.vm}: ${(row.bytes / 1e6).toFixed(1)} MB, downtime ${r1(row.downtimeMs)} ms (QEMU says ${row.qemuDowntimeMs}), ${row.syncs} syncs${ok ? '' : ' CHECK FAILED'}`);
    arrived.push(target);
    await src.guest.dispose();
    owned.delete(src);
  };
  const t0 = performance.now();
  if (way === 'direct') for (const src of sources) await one(src);
  else await Promise.all(sources.map(one));
  const totalMs = way === 'direct' ? busyMs : performance.now() - t0;
  // Rows and guests in the sources' order, whichever finished first.
  const order = (n: string): number => sources.findIndex((s) => s.guest.name === n);
  rows.sort((x, y) => order(x.vm) - order(y.vm));
  arrived.sort((x, y) => order(x.guest.name) - order(y.guest.name));
  return { round: { way, bytes: rows.reduce((s, r) => s + r.bytes, 0), totalMs, vms: rows, ok: rows.every((r) => r.ok) }, arrived };
}

async function vmscatterRound(way: 'converge-only' | 'vmscatter-uncompressed' | 'vmscatter', sources: LaunchedGuest[], owned: Set<LaunchedGuest>, log: (m: string) => void): Promise<{ round: RoundResult; arrived: LaunchedGuest[] }> {
  const r = await runQemuEvacuation({
    sources,
    targets: QEMU_FLEET_DEFAULTS.targets,
    migration: { maxBandwidth: QEMU_DEFAULT_MAX_BANDWIDTH, downtimeLimitMs: BENCH_DOWNTIME_LIMIT_MS, timeoutMs: 180_000 },
    // vmscatter: the defaults, whatever they are; the other two without compression.
    ...(way === 'vmscatter' ? {} : { compress: 'none' as const }),
    ...(way === 'converge-only' ? { config: { scatter: { enabled: false } } } : {}),
  });
  // Take the arrived guests over from their hosts: they are the next round's sources.
  const arrived: LaunchedGuest[] = [];
  for (const s of sources) {
    for (const h of r.hosts) {
      const a = h.release(s.guest.name);
      if (a) {
        arrived.push(a);
        owned.add(a);
      }
    }
  }
  await Promise.all(r.hosts.map((h) => h.dispose()));
  const rep = r.report;
  const rows: VmRow[] = rep.vms.map((v) => {
    const m = r.sourceVms.find((s) => s.name === v.name)?.lastMigration;
    const q = m?.queryMigrate;
    return {
      vm: v.name,
      target: v.target,
      bytes: v.wireBytes,
      streamBytes: v.plainBytes,
      downtimeMs: v.downtimeMs,
      qemuDowntimeMs: typeof q?.['downtime'] === 'number' ? q['downtime'] : Number.NaN,
      syncs: v.rounds,
      totalMs: typeof q?.['total-time'] === 'number' ? q['total-time'] : Number.NaN,
      ok: v.ok && (r.checks.find((c) => c.vm === v.name)?.ok ?? false),
    };
  });
  for (const row of rows) {
    log(`  ${way} ${row.vm} -> ${row.target ?? '?'}: ${(row.bytes / 1e6).toFixed(1)} MB converge, downtime ${r1(row.downtimeMs)} ms (QEMU says ${row.qemuDowntimeMs}), ${row.syncs} syncs${row.ok ? '' : ' CHECK FAILED'}`);
  }
  log(`  ${way}: multicast ${(rep.bytes.scatter / 1e6).toFixed(1)} MB`);
  const p = rep.phasesMs;
  const totalMs = (p.collect ?? 0) + (p.plan ?? 0) + (p.scatter ?? 0) + (p.converge ?? 0);
  for (const s of sources) {
    await s.guest.dispose();
    owned.delete(s);
  }
  return {
    round: {
      way,
      bytes: rep.bytes.wire,
      totalMs,
      vms: rows,
      phasesMs: Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Math.round(v)])),
      scatterBytes: rep.bytes.scatter,
      dedupMinimum: rep.bytes.dedupMinimum,
      ok: r.ok,
    },
    arrived,
  };
}

function qemuVersion(): string {
  try {
    return execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  } catch {
    return 'unknown';
  }
}

export async function runQemuBench(opts: { quick: boolean; json: boolean; workload?: Partial<WorkloadParams> }): Promise<Record<string, unknown>> {
  const log = (m: string): void => void process.stderr.write(`${m}\n`);
  const q = await checkQemu();
  if (!q.ok) throw new VmsError(ErrorCode.CONFIG, `bench qemu needs QEMU: ${q.reason ?? 'not found'}`);
  const vms = QEMU_FLEET_DEFAULTS.vms;
  const memoryMiB = QEMU_FLEET_DEFAULTS.memoryMiB;
  const workload: WorkloadParams = { ...DEFAULT_WORKLOAD, ...opts.workload };
  checkWorkloadFits(workload, memoryMiB);
  const order: QemuBenchWay[] = opts.quick ? [...WAYS] : [...WAYS, ...[...WAYS].reverse()];
  const started = new Date();
  const image = await buildGuest({ log });
  log(`bench qemu: ${vms} guests x ${memoryMiB} MiB (kernel ${image.kernelId}), workload ${JSON.stringify(workload)}, rounds ${order.join(', ')}; booting`);
  const owned = new Set<LaunchedGuest>();
  const rounds: RoundResult[] = [];
  try {
    let current = await launchQemuFleet({ image, vms, memoryMiB, workload });
    for (const g of current) owned.add(g);
    for (const way of order) {
      log(`round ${rounds.length + 1}: ${way}`);
      const { round, arrived } = way === 'direct' || way === 'direct-parallel' ? await directRound(way, current, owned, log) : await vmscatterRound(way, current, owned, log);
      rounds.push(round);
      current = arrived;
      if (arrived.length !== vms) throw new VmsError(ErrorCode.QEMU, `${way} round moved ${arrived.length} of ${vms} guests; stopping the bench`);
    }
  } finally {
    await Promise.all([...owned].map((g) => g.guest.dispose()));
  }

  const of = (w: QemuBenchWay): RoundResult[] => rounds.filter((r) => r.way === w);
  const bytesOf = (w: QemuBenchWay): number => mean(of(w).map((r) => r.bytes));
  const directBytes = bytesOf('direct');
  const ratio = (w: QemuBenchWay): number => Math.round((bytesOf(w) / directBytes) * 1000) / 1000;
  const names = rounds[0]?.vms.map((v) => v.vm) ?? [];
  const dt = (w: QemuBenchWay, n: string): number => r1(mean(of(w).map((r) => r.vms.find((v) => v.vm === n)?.downtimeMs ?? Number.NaN)));
  const downtimeMs = Object.fromEntries(names.map((n) => [n, perWay((w) => dt(w, n))]));
  const bytesRatio = ratio('vmscatter');
  const bytesRatioUncompressed = ratio('vmscatter-uncompressed');
  // The floor without compression: distinct contents + pages not indexed + device state.
  const dedupMinimum = mean(of('vmscatter-uncompressed').map((r) => r.dedupMinimum ?? Number.NaN));
  const dedupMinimumRatio = Math.round((dedupMinimum / directBytes) * 1000) / 1000;
  const vsDedupMinimum = Math.round((bytesOf('vmscatter-uncompressed') / dedupMinimum) * 1000) / 1000;
  const totalTimeMs = perWay((w) => Math.round(mean(of(w).map((r) => r.totalMs))));
  const downtimeMet = (k: 'vmscatter' | 'vmscatterUncompressed'): boolean => Object.values(downtimeMs).every((d) => d[k] <= d.direct + 20);
  const goals = {
    bytes: { goal: 'vmscatter wire bytes <= 0.5 x direct', vmscatter: bytesRatio <= 0.5, vmscatterUncompressed: bytesRatioUncompressed <= 0.5 },
    downtime: { goal: 'downtime <= direct + 20 ms, every guest', vmscatter: downtimeMet('vmscatter'), vmscatterUncompressed: downtimeMet('vmscatterUncompressed') },
  };
  const result = {
    bench: 'qemu',
    command: `vmscatter bench qemu${opts.quick ? ' --quick' : ''}${opts.json ? ' --json' : ''}${opts.workload ? ` --workload ${Object.entries(opts.workload).map(([k, v]) => `${k}=${v}`).join(',')}` : ''}`,
    date: started.toISOString(),
    ok: rounds.every((r) => r.ok),
    bytesRatio,
    bytesRatioUncompressed,
    dedupMinimumRatio,
    vsDedupMinimum,
    bytes: perWay((w) => Math.round(bytesOf(w))),
    downtimeMs,
    totalTimeMs,
    goals,
    rounds: rounds.map((r) => ({ ...r, totalMs: Math.round(r.totalMs), vms: r.vms.map((v) => ({ ...v, downtimeMs: r1(v.downtimeMs) })) })),
    setup: {
      guests: vms,
      memoryMiB,
      targets: QEMU_FLEET_DEFAULTS.targets,
      parallel: QEMU_FLEET_DEFAULTS.parallel,
      workload,
      kernel: image.kernelId,
      accel: 'tcg',
      maxBandwidthBytesPerSec: QEMU_DEFAULT_MAX_BANDWIDTH,
      downtimeLimitMs: BENCH_DOWNTIME_LIMIT_MS,
      compress: 'vmscatter: its default (lz4); vmscatter-uncompressed and converge-only: none',
      network: 'loopback, no rate limit: CPU-bound figures (the link-bound figure needs the namespace topology)',
      directBytes: 'QEMU query-migrate ram.transferred (device state, ~0.1 MB per VM, not included)',
      order,
    },
    machine: {
      nproc: availableParallelism(),
      cpu: cpus()[0]?.model ?? 'unknown',
      totalMemBytes: totalmem(),
      kernel: release(),
      node: process.version,
      qemu: qemuVersion(),
    },
  };
  if (opts.json) return result;

  const MB = (b: number): string => (b / 1e6).toFixed(1);
  console.log(`\nvmscatter bench qemu: ${vms} guests x ${memoryMiB} MiB, ${QEMU_FLEET_DEFAULTS.targets} targets, loopback (CPU-bound), ${result.machine.qemu}`);
  console.log(`machine: ${result.machine.nproc} CPUs (${result.machine.cpu}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${release()}, node ${process.version}; ${result.date}`);
  console.log(`command: ${result.command}\n`);
  console.table(
    rounds.flatMap((r, i) =>
      r.vms.map((v) => ({
        round: i + 1,
        way: r.way,
        vm: v.vm,
        'wire MB': MB(v.bytes),
        'stream MB': MB(v.streamBytes),
        'downtime ms': r1(v.downtimeMs),
        'QEMU downtime ms': v.qemuDowntimeMs,
        syncs: v.syncs,
        'migration ms': v.totalMs,
        ok: v.ok,
      })),
    ),
  );
  console.table(
    rounds.map((r, i) => ({
      round: i + 1,
      way: r.way,
      'wire MB (all VMs)': MB(r.bytes),
      'multicast MB': r.scatterBytes !== undefined ? MB(r.scatterBytes) : '',
      'total s': (r.totalMs / 1000).toFixed(2),
      phases: r.phasesMs ? Object.entries(r.phasesMs).map(([k, v]) => `${k} ${v}`).join(', ') : '',
    })),
  );
  const met = (b: boolean): string => (b ? 'met' : 'NOT met');
  console.log(`bytes vs direct: vmscatter ${bytesRatio} (${met(goals.bytes.vmscatter)}), uncompressed ${bytesRatioUncompressed} (${met(goals.bytes.vmscatterUncompressed)}); goal <= 0.5`);
  console.log(`dedup minimum of these streams (distinct contents + unindexed pages + device state): ${dedupMinimumRatio} x direct; vmscatter uncompressed sends ${vsDedupMinimum} x it`);
  for (const [n, d] of Object.entries(downtimeMs)) {
    console.log(`downtime ${n}: direct ${d.direct} ms, vmscatter ${d.vmscatter} ms, uncompressed ${d.vmscatterUncompressed} ms (direct all at once ${d.directParallel} ms, converge only ${d.convergeOnly} ms)`);
  }
  console.log(
    `downtime goal (<= direct + 20 ms): vmscatter ${met(goals.downtime.vmscatter)}, uncompressed ${met(goals.downtime.vmscatterUncompressed)}; ` +
      `time per round: direct ${totalTimeMs.direct} ms, vmscatter ${totalTimeMs.vmscatter} ms, uncompressed ${totalTimeMs.vmscatterUncompressed} ms (direct all at once ${totalTimeMs.directParallel} ms, converge only ${totalTimeMs.convergeOnly} ms)`,
  );
  return result;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const json = process.argv.includes('--json');
  const r = await runQemuBench({ quick: process.argv.includes('--quick'), json });
  if (json) console.log(JSON.stringify(r, null, 2));
}
