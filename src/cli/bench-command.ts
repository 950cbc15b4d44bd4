/**
 * `vmscatter bench SUITE`: every suite returns its numbers as one object; --json prints it,
 * otherwise the suite prints its own table. Results are also written under bench/results/.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode, VmsError } from '../errors.js';
import type { WorkloadParams } from '../qemu/guest-builder.js';

export interface BenchOptions {
  quick: boolean;
  json: boolean;
  /** strategies: also run link-bound on the network-namespace topology (root). */
  netns?: boolean;
  /** strategies --netns: the sender's link rate, Mbit/s. */
  linkMbit?: number;
  /** strategies --netns: TCP congestion control in the namespaces (default cubic). */
  tcpCongestion?: string;
  /** qemu: the guests' workload instead of DEFAULT_WORKLOAD. */
  workload?: Partial<WorkloadParams>;
}


type Suite = (opts: BenchOptions) => Promise<Record<string, unknown>>;

const suites: Record<string, () => Promise<Suite>> = {
  scan: async () => (await import('../../bench/scan.js')).runScanBench,
  plan: async () => (await import('../../bench/plan.js')).runPlanBench,
  scatter: async () => (await import('../../bench/scatter.js')).runScatterBench,
  qemu: async () => (await import('../../bench/qemu.js')).runQemuBench,
  strategies: async () => (await import('../../bench/strategies.js')).runStrategiesBench,
};

export const BENCH_SUITES = Object.keys(suites);

export async function benchCommand(name: string, opts: BenchOptions): Promise<void> {
  const load = suites[name];
  if (!load) throw new VmsError(ErrorCode.CONFIG, `unknown bench suite "${name}"; expected one of: ${BENCH_SUITES.join(', ')}`);
  const run = await load();
  const result = await run(opts);
  const dir = join(process.cwd(), 'bench', 'results');
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${name}${opts.quick ? '-quick' : ''}.json`), JSON.stringify(result, null, 2) + '\n');
  } catch {
    // A read-only checkout still prints its results.
  }
  if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
}
