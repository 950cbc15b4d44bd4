/**
 * vmscatter command line. `npm start` runs `vmscatter demo`: an evacuation of simulated VMs on
 * loopback, no root and no QEMU needed.
 */
import { Command, Option } from 'commander';
import { ErrorCode, isVmsError, VmsError } from '../errors.js';
import { demoCommand } from './demo-command.js';
import { benchCommand, BENCH_SUITES } from './bench-command.js';
import { registerServiceCommands } from './service-commands.js';
import { intArg, parseWorkloadSpec, WORKLOAD_KEYS } from './key-values.js';
import { DEFAULT_WORKLOAD, type WorkloadParams } from '../qemu/guest-builder.js';
import { VERSION } from '../coordinator/version.js';

const WORKLOAD_HELP = `${WORKLOAD_KEYS.join(', ')}; default ${WORKLOAD_KEYS.map((k) => `${k}=${DEFAULT_WORKLOAD[k]}`).join(',')}`;

const program = new Command();
program
  .name('vmscatter')
  .description('One-to-many live migration of QEMU VMs: cross-VM page dedup, multicast scatter, sharing-aware placement')
  .version(VERSION, '-V, --version', "print vmscatter's version")
  .showHelpAfterError('(run with --help for usage)');

program
  .command('demo', { isDefault: true })
  .description('evacuate simulated VMs to simulated target hosts on loopback and verify every rebuilt VM byte for byte')
  .option('--json', 'print the summary as one JSON object on stdout')
  .option('--config <file>', 'JSON config file (see config/default.json)')
  .option('--vms <n>', 'number of VMs', intArg)
  .option('--memory-mib <n>', 'RAM per VM, MiB', intArg)
  .option('--targets <n>', 'number of target hosts', intArg)
  .option('--os-images <n>', 'distinct OS images in the fleet', intArg)
  .option('--tenants <n>', 'tenants in the fleet', intArg)
  .option('--seed <n>', 'fleet seed', intArg)
  .option('--dirty-rate <pages/s>', 'guest writes per VM, pages/s', Number)
  .option('--max-bandwidth-mibps <n>', 'pre-copy rate limit per VM (QEMU default 128; 0 = unlimited)', Number)
  .option('--downtime-limit-ms <n>', "QEMU's downtime-limit per VM (default QEMU's 300; through vmscatter 20 keeps downtime near direct QEMU's)", Number)
  .option('--parallel <n>', 'VMs migrating at once', intArg)
  .addOption(new Option('--compress <mode>', 'converge frames: lz4 (default) or none').choices(['lz4', 'none']))
  .option('--no-scatter', 'skip the multicast scatter (converge-only dedup)')
  .addOption(new Option('--strategy <name>', 'placement strategy').choices(['graph', 'greedy', 'round-robin']))
  .option('--qemu', 'real QEMU guests (built from Debian packages; needs qemu-system-x86) instead of simulated VMs')
  .option('--workload <spec>', `with --qemu: the guests' workload, key=value,... (${WORKLOAD_HELP})`)
  .option('--log-level <level>', 'pino log level on stderr', 'warn')
  .action(async (opts) => {
    if (opts.workload !== undefined && !opts.qemu) throw new VmsError(ErrorCode.CONFIG, '--workload sets the QEMU guests\' workload: it needs --qemu (simulated VMs take --dirty-rate and the fleet config)');
    if (opts.qemu) {
      const { demoQemuCommand } = await import('./demo-qemu.js');
      await demoQemuCommand(opts);
      return;
    }
    await demoCommand(opts);
  });

program
  .command('bench')
  .description(`run a benchmark suite (${BENCH_SUITES.join(', ')}), every figure next to a baseline measured in the same run`)
  .argument('<suite>', `one of: ${BENCH_SUITES.join(', ')}`)
  .option('--quick', 'small preset that finishes in a few minutes')
  .option('--json', 'print the results as one JSON object on stdout')
  .option('--netns', 'strategies: also run link-bound, as processes on a network-namespace topology (root)')
  .option('--link-mbit <n>', "strategies --netns: the sender's link rate in Mbit/s (default 250)")
  .option('--tcp-cc <name>', 'strategies --netns: TCP congestion control in the namespaces (default cubic)')
  .option('--workload <spec>', `qemu: the guests' workload, key=value,... (${WORKLOAD_HELP})`)
  .action(async (suite: string, opts: { quick?: boolean; json?: boolean; netns?: boolean; linkMbit?: string; tcpCc?: string; workload?: string }) => {
    let linkMbit: number | undefined;
    if (opts.linkMbit !== undefined) {
      linkMbit = Number(opts.linkMbit);
      if (!Number.isFinite(linkMbit) || linkMbit <= 0) throw new VmsError(ErrorCode.CONFIG, `--link-mbit must be a positive number of Mbit/s, got "${opts.linkMbit}"`);
      if (opts.netns !== true) throw new VmsError(ErrorCode.CONFIG, '--link-mbit needs --netns');
    }
    // The name itself is checked against the kernel's algorithms before the bench starts.
    if (opts.tcpCc !== undefined && opts.netns !== true) throw new VmsError(ErrorCode.CONFIG, '--tcp-cc needs --netns');
    let workload: Partial<WorkloadParams> | undefined;
    if (opts.workload !== undefined) {
      if (suite !== 'qemu') throw new VmsError(ErrorCode.CONFIG, `--workload is for bench qemu (the guests' workload), not bench ${suite}`);
      workload = parseWorkloadSpec(opts.workload);
    }
    await benchCommand(suite, {
      quick: opts.quick === true,
      json: opts.json === true,
      ...(opts.netns === true ? { netns: true } : {}),
      ...(linkMbit !== undefined ? { linkMbit } : {}),
      ...(opts.tcpCc !== undefined ? { tcpCongestion: opts.tcpCc } : {}),
      ...(workload !== undefined ? { workload } : {}),
    });
  });

program
  .command('qemu-command')
  .description('print the QEMU command line that starts each guest of a guests file as the machine it describes (RAM file, vmscatter\'s QMP socket): a guest a source agent with --fleet qemu:FILE can migrate')
  .argument('<guests>', 'guests file (docs/operations.md, "QEMU guests")')
  .option('--name <vm>', 'only this guest')
  .action(async (file: string, opts: { name?: string }) => {
    const { qemuCommand } = await import('./qemu-command.js');
    qemuCommand(file, opts);
  });

// coordinator, agent, evacuate, plan, jobs, cancel, agents
registerServiceCommands(program);


try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (isVmsError(e)) {
    process.stderr.write(`vmscatter: ${e.message} [${e.code}]\n`);
    process.exitCode = e.code === ErrorCode.CONFIG ? 2 : 1;
  } else {
    process.stderr.write(`vmscatter: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  }
}
