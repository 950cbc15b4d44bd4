/**
 * The CLI's own options: --version prints package.json's version; a value that is not an integer
 * for an integer option is refused by the option parser with the option's name and the usage
 * hint, before anything runs, and never as a stack trace.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

async function cliError(args: string[]): Promise<{ code: number; stderr: string }> {
  return (await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: process.cwd() }).catch((e: unknown) => e)) as {
    code: number;
    stderr: string;
  };
}

describe('--version', () => {
  it("prints package.json's version", async () => {
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    const r = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--version'], { cwd: process.cwd() });
    expect(r.stdout.trim()).toBe(version);
  });
});

describe('integer options', () => {
  it.each([
    [['demo', '--vms', 'abc'], '--vms <n>', 'abc'],
    [['demo', '--parallel', '2.5'], '--parallel <n>', '2.5'],
    [['agent', '--role', 'target', '--max-vms', 'x'], '--max-vms <n>', 'x'],
    [['jobs', '--limit', ''], '--limit <n>', ''],
  ])('%j is refused by the option parser', async (args, option, value) => {
    const r = await cliError(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`option '${option}' argument '${value}' is invalid. expected an integer, got "${value}".`);
    expect(r.stderr).toContain('(run with --help for usage)');
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });
});
