import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { NODE_FLAGS } from '../../src/node-flags.js';

const read = (f: string): string => readFileSync(f, 'utf8');

describe('node flags (src/node-flags.ts) on every way vmscatter is started', () => {
  it('package.json scripts start tsx with them', () => {
    const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
    for (const name of ['start', 'vmscatter', 'bench']) {
      expect(scripts[name], name).toMatch(/^tsx /);
      for (const f of NODE_FLAGS) expect(scripts[name], name).toContain(` ${f} `);
    }
  });

  it("bin/vmscatter.js's shebang and the Dockerfile's entrypoint pass them to node", () => {
    const shebang = read('bin/vmscatter.js').split('\n')[0]!;
    expect(shebang).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
    const entry = read('Dockerfile').split('\n').find((l) => l.startsWith('ENTRYPOINT'))!;
    expect(JSON.parse(entry.slice('ENTRYPOINT'.length))).toEqual(['node', ...NODE_FLAGS, 'bin/vmscatter.js']);
  });

  it('the executable bin runs with them (the shebang is honoured)', async () => {
    // `demo --help` goes through the whole CLI; V8 rejects an unknown flag before any of it runs.
    const { stdout } = await promisify(execFile)('./bin/vmscatter.js', ['demo', '--help'], { cwd: process.cwd() });
    expect(stdout).toContain('Usage: vmscatter demo');
  });
});
