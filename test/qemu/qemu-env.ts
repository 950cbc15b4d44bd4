/**
 * Prerequisites of the tests that run real QEMU guests. Without them the tests skip with a
 * printed reason; under CI=true a missing prerequisite fails instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { it } from 'vitest';
import { checkQemu } from '../../src/qemu/launcher.js';

export interface QemuTestEnv {
  readonly ok: boolean;
  readonly reason: string;
  readonly qemuVersion: string;
}

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Checks QEMU and what the guest builder needs (busybox-static, xz, apt tools). */
export async function qemuTestEnv(): Promise<QemuTestEnv> {
  const missing: string[] = [];
  const q = await checkQemu();
  if (!q.ok) missing.push(q.reason ?? 'qemu-system-x86_64');
  if (!existsSync('/bin/busybox')) missing.push('/bin/busybox (busybox-static)');
  for (const cmd of ['xz', 'apt-get', 'apt-cache', 'dpkg-deb', 'tar']) if (!have(cmd)) missing.push(cmd);
  return { ok: missing.length === 0, reason: missing.length === 0 ? '' : `missing: ${missing.join(', ')}`, qemuVersion: q.version ?? '' };
}

/**
 * Call at the top of a test file. Returns true when the QEMU tests should run; otherwise
 * prints why they are skipped, or under CI=true registers a failing test naming what is missing.
 */
export function requireQemu(env: QemuTestEnv, what: string): boolean {
  if (env.ok) return true;
  if (process.env['CI'] === 'true') {
    it(`prerequisites for ${what}`, () => {
      throw new Error(`CI=true and the QEMU prerequisites are ${env.reason}`);
    });
  } else {
    console.log(`skipping ${what}: ${env.reason}`);
  }
  return false;
}

export const CI = process.env['CI'] === 'true';
