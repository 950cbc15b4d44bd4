/**
 * The source side of plain migration as its own process (bench strategies --netns, strategies
 * (a) and (b)): builds the simulated fleet of a scenario (same config, same seeds as every other
 * strategy), prints "ready", waits for "go" on stdin (so the caller can read the interfaces'
 * counters first), migrates every VM to the plain targets, verifies by digest, and writes one
 * JSON object (PlainMigrateResult) to --out.
 *
 *   plain-source-main.ts --config FILE --targets HOST:PORT,... --parallel N --out FILE
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { simFleetFromConfig } from '../src/agent/sim-agents.js';
import { resolveConfig } from '../src/config.js';
import { plainMigrate } from './plain-migration.js';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) {
    process.stderr.write(`plain-source-main: ${name} is required\n`);
    process.exit(2);
  }
  return v;
}

const cfg = resolveConfig(JSON.parse(readFileSync(arg('--config'), 'utf8')) as Record<string, unknown>, arg('--config'));
const targets = arg('--targets')
  .split(',')
  .map((t) => {
    const m = /^(.+):(\d+)$/.exec(t);
    if (!m) throw new Error(`--targets: "${t}" is not HOST:PORT`);
    return { host: m[1]!, port: Number(m[2]) };
  });
const parallel = Number(arg('--parallel'));
const out = arg('--out');

const vms = simFleetFromConfig(cfg);
try {
  process.stdout.write('ready\n');
  const rl = createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => rl.on('line', (l) => l.trim() === 'go' && resolve()));
  rl.close();
  const r = await plainMigrate(vms, {
    onMigrated: () => process.stdout.write('migrated\n'),
    parallel,
    targets,
    maxBandwidthBytesPerSec: cfg.migration.maxBandwidthMiBps * 1024 * 1024,
    downtimeLimitMs: cfg.migration.downtimeLimitMs,
    maxRounds: cfg.migration.maxRounds,
  });
  writeFileSync(out, JSON.stringify(r) + '\n');
  process.stdout.write('done\n');
} finally {
  for (const v of vms) v.vm.stop();
}
