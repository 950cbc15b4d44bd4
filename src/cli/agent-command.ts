/**
 * `vmscatter agent --role source|target`: a source host (simulated VMs by default: --fleet
 * sim:vms=8,memoryMiB=256; running QEMU guests: --fleet qemu:GUESTS.json) or a target host
 * (simulated VMs, or --fleet qemu: a target QEMU per incoming guest), registered with the
 * coordinator.
 */
import { envConfig, FleetSchema, mergeConfig, readConfigFile, resolveConfig, type EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError } from '../errors.js';
import { startAgent } from '../agent/agent-main.js';
import { parseNumberPairs } from './key-values.js';
import { untilSignal } from './coordinator-command.js';
import { missingNodeFlags } from '../node-flags.js';

export interface AgentFlags {
  config?: string;
  role?: 'source' | 'target';
  name?: string;
  listen?: string;
  dataListen?: string;
  advertise?: string;
  coordinator?: string;
  capacityMib?: number;
  maxVms?: number;
  fleet?: string;
  keepMigrated?: boolean;
  maxBandwidthMibps?: number;
  compress?: 'lz4' | 'none';
  register?: boolean;
  scatter?: boolean;
  scatterInterface?: string;
  scatterRateMbps?: number;
  udpOffload?: boolean;
  mtu?: number;
  logLevel?: string;
}

const FLEET_KEYS = Object.keys(FleetSchema.properties);

/** `sim` or `sim:vms=8,memoryMiB=256,...` -> the fleet section's fields (validated by the schema later). */
export function parseFleetSpec(spec: string): Record<string, number> {
  const m = /^sim(?::(.*))?$/.exec(spec.trim());
  if (!m) throw new VmsError(ErrorCode.CONFIG, `--fleet must be "sim" or "sim:key=value,...", got "${spec}"; keys: ${FLEET_KEYS.join(', ')}`);
  return parseNumberPairs(m[1] ?? '', FLEET_KEYS, '--fleet');
}

/**
 * --fleet: `sim[:key=value,...]` (simulated VMs), `qemu` (a target receiving QEMU guests) or
 * `qemu:FILE` (a source migrating the running QEMU guests FILE lists).
 */
export function parseAgentFleet(spec: string): { agent: { fleet: 'sim' | 'qemu'; guests?: string }; fleet?: Record<string, number> } {
  const q = /^qemu(?::(.*))?$/.exec(spec.trim());
  if (!q) return { agent: { fleet: 'sim' }, fleet: parseFleetSpec(spec) };
  const file = q[1]?.trim();
  if (q[1] !== undefined && !file) throw new VmsError(ErrorCode.CONFIG, '--fleet qemu:FILE needs the guests file after the colon');
  return { agent: { fleet: 'qemu', ...(file ? { guests: file } : {}) } };
}

export function agentConfig(flags: AgentFlags, env: NodeJS.ProcessEnv = process.env): EvacuationConfig {
  const file = flags.config ?? env.VMSCATTER_CONFIG;
  const fleet = flags.fleet ? parseAgentFleet(flags.fleet) : undefined;
  const fromFlags = {
    agent: {
      ...fleet?.agent,
      quitMigrated: flags.keepMigrated === true ? false : undefined,
      role: flags.role,
      name: flags.name,
      listen: flags.listen,
      dataListen: flags.dataListen,
      advertise: flags.advertise,
      capacityMiB: flags.capacityMib,
      maxVms: flags.maxVms,
      // commander defaults --no-register's value to true: only an explicit --no-register counts.
      register: flags.register === false ? false : undefined,
    },
    coordinator: { url: flags.coordinator },
    fleet: fleet?.fleet,
    migration: { maxBandwidthMiBps: flags.maxBandwidthMibps, compress: flags.compress },
    // commander defaults --no-scatter's value to true: only an explicit --no-scatter counts.
    scatter: {
      enabled: flags.scatter === false ? false : undefined,
      interface: flags.scatterInterface,
      mtu: flags.mtu,
      rateMBps: flags.scatterRateMbps,
      udpOffload: flags.udpOffload === false ? false : undefined,
    },
    log: { level: flags.logLevel },
  };
  return resolveConfig(mergeConfig(file ? readConfigFile(file) : {}, envConfig(env), fromFlags), file ? `config ${file} with environment and flags` : 'environment and flags');
}

export async function agentCommand(flags: AgentFlags): Promise<void> {
  const cfg = agentConfig(flags);
  const a = await startAgent(cfg);
  const kind = cfg.agent.fleet === 'qemu' ? 'QEMU guests' : 'simulated VMs';
  const what = a.role === 'source' ? `${a.source?.listVms().length ?? 0} ${kind}` : `${kind}, converge on ${a.data?.host}:${a.data?.port}`;
  process.stdout.write(`vmscatter agent ${a.name} (${a.role}) listening on ${a.url}; ${what}; coordinator ${cfg.coordinator.url}\n`);
  const missing = missingNodeFlags();
  if (missing.length > 0)
    process.stderr.write(
      `vmscatter agent ${a.name}: node was started without ${missing.join(' ')} (bin/vmscatter.js and the npm scripts pass it): expect garbage-collection pauses inside guests' downtime (docs/operations.md)\n`,
    );
  // SIGHUP: a source agent of QEMU guests reads its guests file again (POST /v1/guests/reload).
  const onHup = (): void => {
    if (!a.reloadGuests) {
      process.stderr.write(`vmscatter agent ${a.name}: SIGHUP ignored (only a source agent of QEMU guests reloads its guests file)\n`);
      return;
    }
    a.reloadGuests().then(
      (r) => process.stderr.write(`vmscatter agent ${a.name}: guests file reloaded: ${JSON.stringify(r)}\n`),
      (e: unknown) => process.stderr.write(`vmscatter agent ${a.name}: guests file not reloaded: ${(e as Error).message}\n`),
    );
  };
  process.on('SIGHUP', onHup);
  await untilSignal();
  process.off('SIGHUP', onHup);
  process.stderr.write(`vmscatter agent ${a.name}: shutting down${a.role === 'source' ? '; runs are cancelled and their VMs keep running here' : ''}\n`);
  await a.close();
}
