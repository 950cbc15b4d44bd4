import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { missingNodeFlags, NODE_FLAGS } from '../../src/node-flags.js';

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

  it("the shebang's command hands node the flags, and the executable bin starts with them", async () => {
    // What the kernel runs for the shebang, with a probe script instead of the bin.
    const [cmd, ...args] = read('bin/vmscatter.js').split('\n')[0]!.slice(2).split(' ');
    const probe = await promisify(execFile)(cmd!, [...args, '-e', 'console.log(JSON.stringify(process.execArgv))']);
    expect((JSON.parse(probe.stdout) as string[]).slice(0, NODE_FLAGS.length)).toEqual([...NODE_FLAGS]);
    // V8 refuses a flag it does not know before any of the CLI runs.
    const { stdout } = await promisify(execFile)('./bin/vmscatter.js', ['demo', '--help'], { cwd: process.cwd() });
    expect(stdout).toContain('Usage: vmscatter demo');
  });

  it('tells which flags a process lacks; another value of the same flag counts as given', () => {
    expect(missingNodeFlags([])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--import', 'tsx'])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags([...NODE_FLAGS])).toEqual([]);
    expect(missingNodeFlags(['--initial-old-space-size=512'])).toEqual([]);
    expect(missingNodeFlags(['--initial_old_space_size=512'])).toEqual([]);
    expect(missingNodeFlags(['--max-old-space-size=256'])).toEqual([...NODE_FLAGS]);
  });
});
