/**
 * `vmscatter bench` flags that come from the user: refused with a clear error (exit 2) before any
 * run starts.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { congestionControlUnavailable } from '../../bench/strategies-netns.js';

async function cliError(args: string[]): Promise<{ code: number; stderr: string }> {
  return (await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: process.cwd() }).catch((e: unknown) => e)) as {
    code: number;
    stderr: string;
  };
}

describe('bench strategies --tcp-cc', () => {
  it('knows the kernel algorithms: reno is always there, a made-up name is not and the error lists what is', () => {
    expect(congestionControlUnavailable('reno')).toBeUndefined();
    const why = congestionControlUnavailable('no_such_cc');
    expect(why).toMatch(/"no_such_cc" is not available here \(available: .*reno/);
  });

  it('refuses --tcp-cc without --netns, and an unknown algorithm before running anything', async () => {
    const without = await cliError(['bench', 'strategies', '--tcp-cc', 'cubic']);
    expect(without.code).toBe(2);
    expect(without.stderr).toMatch(/--tcp-cc needs --netns/);
    const unknown = await cliError(['bench', 'strategies', '--netns', '--tcp-cc', 'no_such_cc']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--tcp-cc: TCP congestion control "no_such_cc" is not available/);
    // Refused before the CPU-bound runs: nothing of the first scenario was printed.
    expect(unknown.stderr).not.toMatch(/plain QEMU, one VM at a time/);
  });
});
