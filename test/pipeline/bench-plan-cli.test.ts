/**
 * `vmscatter bench plan --quick --json` through the installed entry point (bin/vmscatter.js,
 * which registers tsx in-process), run from another directory: its scale case runs in a child
 * process, which must load TypeScript on its own; results go under that directory.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const BIN = fileURLToPath(new URL('../../bin/vmscatter.js', import.meta.url));

describe('bench plan from the vmscatter command', () => {
  it('runs the quick preset with its scale worker and writes the results where it was started', { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmsq-benchplan-'));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [BIN, 'bench', 'plan', '--quick', '--json'], { cwd: dir, maxBuffer: 16 * 1024 * 1024 });
      const r = JSON.parse(stdout) as Record<string, unknown>;
      expect(r).toMatchObject({ bench: 'plan', preset: 'quick', vsOptimum: 1 });
      expect(r.scaleSeconds).toBeGreaterThan(0); // from the child process
      expect(r.scaleRssMiB).toBeGreaterThan(0);
      expect(existsSync(join(dir, 'bench', 'results', 'plan-quick.json'))).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
