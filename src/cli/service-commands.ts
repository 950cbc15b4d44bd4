/**
 * The control-plane commands: processes (`coordinator`, `agent`) and the API client commands for
 * people (`evacuate`, `jobs`, `cancel`, `agents`). Registered on the program by main.ts; kept
 * apart so tests can check docker-compose.yml's commands against the real option lists.
 */
import { Command, Option } from 'commander';
import { CONTROL_DEFAULTS } from '../config.js';
import { ErrorCode, VmsError } from '../errors.js';
import { agentCommand } from './agent-command.js';
import { coordinatorCommand } from './coordinator-command.js';
import { evacuateCommand } from './evacuate-command.js';
import { agentsCommand, cancelCommand, jobsCommand } from './jobs-command.js';
import { intArg } from './key-values.js';
import { planCommand } from './plan-command.js';

const STRATEGIES = ['graph', 'greedy', 'round-robin'];
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];


function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

const coordinatorOption = (): Option =>
  new Option('--coordinator <url>', 'coordinator URL (default: VMSCATTER_COORDINATOR, else http://127.0.0.1:7400); the token comes from VMSCATTER_TOKEN');

export function registerServiceCommands(program: Command): Command {
  program
    .command('coordinator')
    .description('run the coordinator: HTTP API (/documentation), job state, planning; needs VMSCATTER_TOKEN')
    .option('--config <file>', 'JSON config file (default: VMSCATTER_CONFIG; see config/default.json)')
    .option('--listen <host:port>', 'where the API listens (default 127.0.0.1:7400)')
    .option('--url <url>', 'URL agents call back on (default: where it listens)')
    .option('--state-dir <dir>', 'job state directory ("" = memory only; default var/coordinator or VMSCATTER_STATE_DIR)')
    .option('--max-outgoing <n>', 'VM migrations out of one source host at once, over all jobs', intArg)
    .option('--max-incoming <n>', 'VM migrations into one target host at once, over all jobs', intArg)
    .option('--heartbeat-ms <ms>', 'agent heartbeat interval', intArg)
    .option('--lost-after-ms <ms>', 'an agent silent this long is lost (a lost target fails its VMs)', intArg)
    .option('--source-grace-ms <ms>', `how long a job waits for its lost source agent to come back before it ends interrupted (default ${CONTROL_DEFAULTS.sourceLostGraceMs})`, intArg)
    .addOption(new Option('--strategy <name>', 'default placement strategy').choices(STRATEGIES))
    .option('--agent <url>', 'control URL of an agent to poll instead of waiting for it to register (repeatable)', collect)
    .addOption(new Option('--log-level <level>', 'log level (logs: JSON on stderr)').choices(LOG_LEVELS))
    .action(async (opts) => {
      await coordinatorCommand(opts);
    });

  program
    .command('agent')
    .description('run a source agent (owns VMs, runs their migrations) or a target agent (receives VMs); needs VMSCATTER_TOKEN')
    .addOption(new Option('--role <role>', 'source or target').choices(['source', 'target']).makeOptionMandatory())
    .option('--name <name>', 'host name to register under (default: hostname)')
    .option('--listen <host:port>', 'control API (default 127.0.0.1:7401; port 0 picks one)')
    .option('--data-listen <host:port>', 'target: converge connections (default 127.0.0.1:0)')
    .option('--advertise <host>', 'address others reach this agent at (default: the listen host)')
    .addOption(coordinatorOption())
    .option('--capacity-mib <n>', 'target: memory offered to incoming VMs, MiB', intArg)
    .option('--max-vms <n>', 'target: incoming VMs accepted (0 = no limit)', intArg)
    .option('--keep-migrated', "source, QEMU guests: leave a guest's source QEMU paused after the guest moved, instead of quitting it")
    .option('--fleet <spec>', 'what the agent hosts: simulated VMs, "sim" or "sim:vms=8,memoryMiB=256,dirtyPagesPerSec=500,..."; QEMU guests, "qemu:GUESTS.json" (source: the running guests to migrate, docs/operations.md) or "qemu" (target)')
    .option('--max-bandwidth-mibps <n>', 'source: pre-copy rate limit per VM (QEMU default 128; 0 = unlimited)', Number)
    .addOption(new Option('--compress <mode>', 'source: converge frames, lz4 (default) or none').choices(['lz4', 'none']))
    .option('--scatter-interface <addr>', 'IPv4 address of the interface multicast is sent (source) or received (target) on (default 127.0.0.1)')
    .option('--mtu <bytes>', 'MTU of the multicast path (9000: two pages per datagram)', intArg)
    .option('--scatter-rate-mbps <n>', "source: the multicast sender's ceiling, MB/s (default 100); it starts there and backs off when receivers lose over 10% of datagrams", Number)
    .option('--no-scatter', 'source: skip the multicast scatter (converge carries every page)')
    .option('--no-udp-offload', 'send (source) or read (target) the scatter one datagram per system call, without Linux UDP GSO/GRO')
    .option('--no-register', 'do not register with the coordinator (it polls this agent: coordinator --agent URL)')
    .option('--config <file>', 'JSON config file (default: VMSCATTER_CONFIG)')
    .addOption(new Option('--log-level <level>', 'log level (logs: JSON on stderr)').choices(LOG_LEVELS))
    .action(async (opts) => {
      await agentCommand(opts);
    });

  program
    .command('evacuate')
    .description('evacuate a source host to target hosts through the coordinator, with progress bars and a summary; Ctrl-C cancels')
    .requiredOption('--source <host>', 'source host (agent name)')
    .requiredOption('--targets <a,b,c>', 'target hosts (agent names), comma-separated')
    .option('--vms <a,b>', 'only these VMs (default: all on the source)')
    .option('--parallel <n>', 'VMs of this job migrating at once (per-host limits apply on top)', intArg)
    .addOption(new Option('--strategy <name>', 'placement strategy').choices(STRATEGIES))
    .option('--no-verify', 'skip comparing rebuilt VMs with their sources')
    .option('--dry-run', 'only plan: placement and predicted bytes (POST /v1/plans)')
    .option('--detach', 'print the job id and return at once')
    .option('--json', 'JSON on stdout instead of tables')
    .addOption(coordinatorOption())
    .option('--config <file>', 'JSON config file for coordinator.url (default: VMSCATTER_CONFIG)')
    .action(async (opts) => {
      await evacuateCommand(opts);
    });

  program
    .command('plan')
    .description('dry run: with --source/--targets the coordinator plans a live source host (POST /v1/plans); otherwise plan a fleet description file offline')
    .argument('[file]', 'offline: fleet description JSON (default: an embedded fleet of 8 VMs on 4 targets)')
    .option('--source <host>', 'through the coordinator: the source host to plan')
    .option('--targets <a,b,c>', 'through the coordinator: the target pool')
    .option('--vms <a,b>', 'through the coordinator: only these VMs')
    .addOption(new Option('--strategy <name>', 'through the coordinator: placement strategy').choices(STRATEGIES))
    .addOption(new Option('--placement <name>', 'offline: placement algorithm').choices(['graph', 'greedy', 'exhaustive']))
    .option('--max-groups <n>', 'offline: cap on multicast groups', intArg)
    .option('--max-groups-per-receiver <n>', 'offline: groups a target joins at once', intArg)
    .option('--min-targets-for-scatter <n>', 'offline: smallest group sent by multicast', intArg)
    .option('--channels <n>', 'offline: multicast channels', intArg)
    .option('--seed <n>', 'offline: seed', intArg)
    .option('--out <file>', 'offline: also write the plan as JSON here')
    .option('--all-vms', "offline: print every VM's target")
    .option('--json', 'JSON on stdout')
    .addOption(coordinatorOption())
    .option('--config <file>', 'JSON config file for coordinator.url')
    .action(async (file: string | undefined, opts) => {
      if (opts.source !== undefined || opts.targets !== undefined) {
        if (file !== undefined) throw new VmsError(ErrorCode.CONFIG, 'give either a fleet file (offline) or --source/--targets (through the coordinator), not both');
        if (!opts.source || !opts.targets) throw new VmsError(ErrorCode.CONFIG, 'through the coordinator, plan needs both --source and --targets');
        await evacuateCommand({ ...opts, dryRun: true });
        return;
      }
      await planCommand({
        json: opts.json === true,
        ...(file !== undefined ? { file } : {}),
        ...(opts.out !== undefined ? { out: opts.out } : {}),
        ...(opts.placement !== undefined ? { placement: opts.placement } : {}),
        ...(opts.maxGroups !== undefined ? { maxGroups: opts.maxGroups } : {}),
        ...(opts.maxGroupsPerReceiver !== undefined ? { maxGroupsPerReceiver: opts.maxGroupsPerReceiver } : {}),
        ...(opts.minTargetsForScatter !== undefined ? { minTargetsForScatter: opts.minTargetsForScatter } : {}),
        ...(opts.channels !== undefined ? { channels: opts.channels } : {}),
        ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
        ...(opts.allVms ? { vms: true } : {}),
      });
    });

  program
    .command('jobs')
    .description('list jobs, or show one')
    .argument('[job]', 'job id')
    .option('--state <state>', 'only jobs in this state')
    .option('--limit <n>', 'at most this many', intArg)
    .option('--watch', 'with a job id: follow it to its end with progress bars')
    .option('--json', 'JSON on stdout')
    .addOption(coordinatorOption())
    .option('--config <file>', 'JSON config file for coordinator.url')
    .action(async (job: string | undefined, opts) => {
      await jobsCommand(job, opts);
    });

  program
    .command('cancel')
    .description('cancel a job: every VM not switched over keeps running on its source')
    .argument('<job>', 'job id')
    .option('--wait', 'follow the job until it ended')
    .option('--json', 'JSON on stdout')
    .addOption(coordinatorOption())
    .option('--config <file>', 'JSON config file for coordinator.url')
    .action(async (job: string, opts) => {
      await cancelCommand(job, opts);
    });

  program
    .command('agents')
    .description('list the agents the coordinator knows, their state and slots in use')
    .option('--json', 'JSON on stdout')
    .addOption(coordinatorOption())
    .option('--config <file>', 'JSON config file for coordinator.url')
    .action(async (opts) => {
      await agentsCommand(opts);
    });

  return program;
}
