/**
 * Flags every vmscatter process is started with: package.json's scripts, bin/vmscatter.js's
 * shebang, the Dockerfile and the processes the benches spawn name them
 * (test/pipeline/node-flags.test.ts keeps them in step). V8 reads them when the heap is set
 * up, so they cannot be set from inside the process (v8.setFlagsFromString is too late).
 *
 * --initial-old-space-size=256: the converge path allocates about a byte of Buffer per byte of
 * stream it moves (hundreds of MB/s), and with V8's default sizing for a heap of ~25 MB of live
 * objects that ran a mark-compact every 60-80 ms while guests migrated (--trace-gc: 81 in a
 * `bench qemu --quick` run, "GC in old space requested", 0.5 s of pauses of up to 13 ms plus as
 * much incremental marking), some inside a guest's downtime. With 256 MiB of initial old
 * space: 4. Three `bench qemu --quick` runs each way, alternating (18 migrations each):
 * downtime through vmscatter 12.4 ms mean, 24.0 max without the flag; 9.1 ms mean, 19.9 max
 * with; time per round -11%. Peak RSS of `npm start`: +2%. (Recycling the buffers would cut
 * the allocation itself; not done.)
 */
export const NODE_FLAGS = ['--initial-old-space-size=256'] as const;

/** NODE_FLAGS this process was started without (another value of the same flag counts as given). */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  const given = execArgv.map((a) => a.split('=')[0]!.replace(/_/g, '-'));
  return NODE_FLAGS.filter((f) => !given.includes(f.split('=')[0]!));
}
