/**
 * `vmscatter demo --qemu`: the demo on real QEMU guests instead of simulated VMs. Boots the test
 * guests (cached kernel + busybox initramfs, RAM in shared /dev/shm files), evacuates them live
 * through vmscatter to target QEMUs on this host, checks that every guest ticks on with the same
 * uniq_md5, and removes every QEMU and file it made. Needs qemu-system-x86_64 and busybox-static.
 */
import { cpus, totalmem } from 'node:os';
import { describeCheck, QEMU_FLEET_DEFAULTS, runQemuDemo, type QemuDemoResult } from '../agent/qemu-evacuation.js';
import { checkWorkloadFits, workloadAppend } from '../qemu/guest-builder.js';
import { mergeConfig, resolveConfig } from '../config.js';
import { checkQemu } from '../qemu/launcher.js';
import { parseWorkloadSpec } from './key-values.js';
import { ErrorCode, VmsError } from '../errors.js';
import { formatSummary } from './demo-command.js';
import { createProgressView } from './progress.js';

export interface DemoQemuFlags {
  json?: boolean;
  /** The guests' workload (`key=value,...`, keys WORKLOAD_KEYS); default DEFAULT_WORKLOAD. */
  workload?: string;
  /** Guests (default 3). */
  vms?: number;
  /** Guest RAM, MiB (default 256). */
  memoryMib?: number;
  /** Target hosts (default 2). */
  targets?: number;
  /** QEMU max-bandwidth in MiB/s (default QEMU's 128). */
  maxBandwidthMibps?: number;
  /** QEMU downtime-limit in ms (default QEMU's 300). */
  downtimeLimitMs?: number;
  /** VMs migrating at once (default 1: two cores). */
  parallel?: number;
  scatter?: boolean;
  strategy?: 'graph' | 'greedy' | 'round-robin';
  compress?: 'lz4' | 'none';
  /** QEMU accelerator (default tcg). */
  accel?: string;
  logLevel?: string;
}

export async function demoQemuCommand(flags: DemoQemuFlags): Promise<QemuDemoResult> {
  // The migration flags are the simulated demo's: the same schema checks them, before anything starts.
  resolveConfig(mergeConfig({}, { migration: { maxBandwidthMiBps: flags.maxBandwidthMibps, downtimeLimitMs: flags.downtimeLimitMs } }), 'command-line flags');
  const workload = flags.workload !== undefined ? parseWorkloadSpec(flags.workload) : undefined;
  workloadAppend(workload);
  checkWorkloadFits(workload ?? {}, flags.memoryMib ?? QEMU_FLEET_DEFAULTS.memoryMiB);
  const q = await checkQemu();
  if (!q.ok) throw new VmsError(ErrorCode.CONFIG, `demo --qemu needs QEMU: ${q.reason ?? 'qemu-system-x86_64 not found'}`);
  const MiB = 1024 * 1024;
  const view = flags.json ? undefined : createProgressView();
  const log = (m: string): void => {
    if (!flags.json) process.stderr.write(`vmscatter demo --qemu: ${m}\n`);
  };
  let result: QemuDemoResult;
  try {
    result = await runQemuDemo({
      ...(flags.vms !== undefined ? { vms: flags.vms } : {}),
      ...(flags.memoryMib !== undefined ? { memoryMiB: flags.memoryMib } : {}),
      ...(flags.targets !== undefined ? { targets: flags.targets } : {}),
      ...(workload !== undefined ? { workload } : {}),
      migration: {
        ...(flags.maxBandwidthMibps !== undefined ? { maxBandwidth: flags.maxBandwidthMibps * MiB } : {}),
        ...(flags.downtimeLimitMs !== undefined ? { downtimeLimitMs: flags.downtimeLimitMs } : {}),
      },
      ...(flags.parallel !== undefined ? { parallel: flags.parallel } : {}),
      ...(flags.compress !== undefined ? { compress: flags.compress } : {}),
      config: {
        ...(flags.scatter === false ? { scatter: { enabled: false } } : {}),
        ...(flags.strategy !== undefined ? { plan: { strategy: flags.strategy } } : {}),
      },
      ...(flags.accel !== undefined ? { accel: flags.accel } : {}),
      ...(flags.logLevel !== undefined ? { logLevel: flags.logLevel } : {}),
      ...(view ? { onEvent: (e: Parameters<typeof view.onEvent>[0]) => view.onEvent(e) } : {}),
      log,
    });
  } finally {
    view?.stop();
  }
  if (flags.json) {
    process.stdout.write(
      JSON.stringify({ ...result.report, ok: result.ok, checks: result.checks, bootMs: Math.round(result.bootMs), evacuationMs: Math.round(result.evacuationMs), machine: machine(q.version ?? '') }) + '\n',
    );
  } else {
    process.stdout.write(formatSummary(result.report));
    for (const c of result.checks) {
      process.stdout.write(`${c.vm} on ${c.target}: ${c.ok ? 'ok' : 'NOT OK'}, ${describeCheck(c)}\n`);
      if (c.targetConsole) process.stdout.write(`  console of ${c.vm} on ${c.target} after the switch-over:\n${c.targetConsole.replace(/^/gm, '    ')}\n`);
    }
    process.stdout.write(result.ok ? `all ${result.checks.length} guests run on their targets with their RAM intact\n` : 'FAILED: see above\n');
  }
  if (!result.ok) process.exitCode = 1;
  return result;
}

function machine(qemu: string): Record<string, unknown> {
  return { nproc: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform, qemu };
}
