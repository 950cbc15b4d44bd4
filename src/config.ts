/**
 * Configuration: named defaults in one place and one schema that validates a config file,
 * environment variables and API/CLI input alike.
 */
import { readFileSync } from 'node:fs';
import { Type, type Static } from 'typebox';
import { Value } from 'typebox/value';
import { ErrorCode, VmsError } from './errors.js';

const MiB = 1024 * 1024;

/** QEMU 7.2's own migration defaults (notes/qemu.md). */
export const QEMU_DEFAULT_MAX_BANDWIDTH = 128 * MiB;
export const QEMU_DEFAULT_DOWNTIME_LIMIT_MS = 300;

export const FleetSchema = Type.Object(
  {
    vms: Type.Integer({ minimum: 1, maximum: 4096, default: 8, description: 'number of simulated VMs' }),
    memoryMiB: Type.Integer({ minimum: 4, maximum: 65536, default: 256, description: 'guest RAM of each VM, MiB' }),
    osImages: Type.Integer({ minimum: 1, maximum: 64, default: 1, description: 'distinct OS images in the fleet' }),
    tenants: Type.Integer({ minimum: 1, maximum: 1024, default: 2, description: 'tenants (pages shared within a tenant)' }),
    seed: Type.Integer({ minimum: 0, maximum: 0xffffffff, default: 1 }),
    dirtyPagesPerSec: Type.Number({ minimum: 0, default: 500, description: 'guest writes, pages/s (a real idle guest measured 458)' }),
    workingSetPages: Type.Integer({ minimum: 1, default: 4096, description: 'pages the dirtying process writes into' }),
  },
  { additionalProperties: false },
);

export const MigrationSchema = Type.Object(
  {
    maxBandwidthMiBps: Type.Number({ minimum: 0, default: QEMU_DEFAULT_MAX_BANDWIDTH / MiB, description: "pre-copy rate limit per VM like QEMU's max-bandwidth; 0 = unlimited" }),
    downtimeLimitMs: Type.Number({ minimum: 1, default: QEMU_DEFAULT_DOWNTIME_LIMIT_MS }),
    maxRounds: Type.Integer({ minimum: 1, default: 30, description: 'pre-copy rounds before stop-and-copy is forced' }),
    parallel: Type.Integer({ minimum: 1, default: 8, description: 'VMs migrating at once' }),
    compress: Type.Union([Type.Literal('none'), Type.Literal('lz4')], {
      default: 'lz4',
      description:
        'compress converge frames (lz4: a frame is tried only if a 4 KiB sample of it compresses, and sent as it is if it does not shrink; none: for a path faster than the source host compresses)',
    }),
    stopCopyFirst: Type.Boolean({ default: true, description: "while a VM is stopped for its stop-and-copy, hold the job's other VMs' pre-copy, and keep what they have in flight small (shorter downtime with parallel > 1)" }),
    convergeInTurn: Type.Boolean({
      default: true,
      description: "a VM still in pre-copy after its first pass gets the job's bandwidth until it has moved, in the order VMs got there, while the others hold (with parallel > 1, VMs that dirty faster than 1/parallel of the bandwidth converge instead of iterating to the round limit)",
    }),
  },
  { additionalProperties: false },
);

export const ScatterSchema = Type.Object(
  {
    enabled: Type.Boolean({ default: true }),
    interface: Type.String({ default: '127.0.0.1', description: 'IPv4 address of the interface multicast is sent and received on' }),
    groupPool: Type.String({ default: '239.192.0.0/14', description: 'multicast addresses for groups (organization-local scope)' }),
    rateMBps: Type.Number({ minimum: 1, default: 100, description: 'sender ceiling, MB/s' }),
    mtu: Type.Integer({ minimum: 576, maximum: 65535, default: 9000, description: 'MTU of the multicast path: 9000 sends two pages per datagram, 1500 page fragments' }),
    udpOffload: Type.Boolean({
      default: true,
      description: 'Linux UDP offloads: the sender sends several datagrams per system call (GSO), receivers read them at once (GRO); off or unavailable, one per call',
    }),
  },
  { additionalProperties: false },
);

export const PlanSchema = Type.Object(
  {
    strategy: Type.Union([Type.Literal('graph'), Type.Literal('greedy'), Type.Literal('round-robin')], { default: 'graph' }),
  },
  { additionalProperties: false },
);

/** HOST:PORT, IPv4 or a name; port 0 picks a free one. */
const HOST_PORT = '^[A-Za-z0-9_.-]+:[0-9]{1,5}$';

/** Defaults of the control plane, named once (README "Operations" quotes them). */
export const CONTROL_DEFAULTS = {
  coordinatorListen: '127.0.0.1:7400',
  coordinatorUrl: 'http://127.0.0.1:7400',
  agentListen: '127.0.0.1:7401',
  stateDir: 'var/coordinator',
  heartbeatIntervalMs: 2000,
  agentLostAfterMs: 6000,
  /** How long a job waits for its lost source agent to come back before it ends interrupted. */
  sourceLostGraceMs: 120_000,
  /** KubeVirt's parallelOutboundMigrationsPerNode default. */
  maxOutgoingPerSource: 2,
  maxIncomingPerTarget: 2,
  /** How long an agent retries a coordinator that does not answer before it gives up the call. */
  coordinatorGraceMs: 30_000,
  minTokenLength: 16,
} as const;

export const CoordinatorSchema = Type.Object(
  {
    listen: Type.String({ pattern: HOST_PORT, default: CONTROL_DEFAULTS.coordinatorListen, description: 'HOST:PORT of the HTTP API' }),
    url: Type.String({ pattern: '^https?://', default: CONTROL_DEFAULTS.coordinatorUrl, description: 'where agents and the CLI reach the coordinator' }),
    stateDir: Type.String({ default: CONTROL_DEFAULTS.stateDir, description: 'directory job state is persisted in (restart); "" keeps it in memory only' }),
    heartbeatIntervalMs: Type.Integer({ minimum: 50, maximum: 600_000, default: CONTROL_DEFAULTS.heartbeatIntervalMs, description: 'how often agents report' }),
    agentLostAfterMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: CONTROL_DEFAULTS.agentLostAfterMs, description: 'an agent silent this long is lost: a lost target fails its VMs, a lost source is waited for (sourceLostGraceMs)' }),
    sourceLostGraceMs: Type.Integer({
      minimum: 0,
      maximum: 86_400_000,
      default: CONTROL_DEFAULTS.sourceLostGraceMs,
      description: "how long a job waits for its lost source agent to come back (its run goes on without the coordinator) before it ends interrupted",
    }),
    maxOutgoingPerSource: Type.Integer({ minimum: 1, maximum: 1024, default: CONTROL_DEFAULTS.maxOutgoingPerSource, description: 'VM migrations out of one source host at once, over all jobs' }),
    maxIncomingPerTarget: Type.Integer({ minimum: 1, maximum: 1024, default: CONTROL_DEFAULTS.maxIncomingPerTarget, description: 'VM migrations into one target host at once, over all jobs' }),
    agents: Type.Array(Type.String({ pattern: '^https?://' }), { default: [], description: 'control URLs of agents the coordinator polls (instead of waiting for them to register)' }),
  },
  { additionalProperties: false },
);

export const AgentSchema = Type.Object(
  {
    role: Type.Union([Type.Literal('source'), Type.Literal('target')], { default: 'target', description: 'source: owns VMs and runs their migrations; target: receives VMs' }),
    name: Type.String({ pattern: '^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$', default: '', description: 'host name the agent registers under ("" = the machine\'s hostname)' }),
    listen: Type.String({ pattern: HOST_PORT, default: CONTROL_DEFAULTS.agentListen, description: 'HOST:PORT of the agent\'s HTTP control API' }),
    dataListen: Type.String({ pattern: HOST_PORT, default: '127.0.0.1:0', description: 'HOST:PORT a target agent accepts converge connections on' }),
    advertise: Type.String({ default: '', description: 'address other hosts reach this agent at ("" = the listen host)' }),
    register: Type.Boolean({ default: true, description: 'register with the coordinator and send heartbeats' }),
    capacityMiB: Type.Integer({ minimum: 1, default: 16384, description: 'memory a target offers incoming VMs, MiB' }),
    maxVms: Type.Integer({ minimum: 0, default: 0, description: 'incoming VMs a target accepts (0 = no limit)' }),
    fleet: Type.Union([Type.Literal('sim'), Type.Literal('qemu')], {
      default: 'sim',
      description: 'what the agent hosts: sim = simulated VMs (a source\'s are described by the fleet section); qemu = QEMU guests (a source migrates the running guests agent.guests lists, a target starts a QEMU per incoming guest)',
    }),
    guests: Type.String({ default: '', description: 'source agent with fleet qemu: JSON file listing the running QEMU guests to migrate (docs/operations.md)' }),
    stateDir: Type.String({
      default: 'var/agent',
      description: 'target agent with fleet qemu: a record per guest that arrived is kept in STATE_DIR/NAME, so a restarted agent takes back the guests it started ("" = memory only)',
    }),
    quitMigrated: Type.Boolean({
      default: true,
      description: "source agent with fleet qemu: quit a guest's source QEMU once the guest runs on its target (a paused copy holds its memory, and resuming it would run the guest twice); false leaves it paused (postmigrate) for its owner",
    }),
  },
  { additionalProperties: false },
);

export const AuthSchema = Type.Object(
  {
    token: Type.String({ default: '', description: 'shared bearer token of coordinator, agents and CLI; set it with VMSCATTER_TOKEN' }),
  },
  { additionalProperties: false },
);

export const LogSchema = Type.Object(
  {
    level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }),
  },
  { additionalProperties: false },
);

export const EvacuationConfigSchema = Type.Object(
  {
    fleet: FleetSchema,
    targets: Type.Integer({ minimum: 1, maximum: 256, default: 4, description: 'number of target hosts' }),
    migration: MigrationSchema,
    scatter: ScatterSchema,
    plan: PlanSchema,
    coordinator: CoordinatorSchema,
    agent: AgentSchema,
    auth: AuthSchema,
    log: LogSchema,
  },
  { additionalProperties: false },
);
export type EvacuationConfig = Static<typeof EvacuationConfigSchema>;

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };
export type EvacuationConfigInput = DeepPartial<EvacuationConfig>;

/** Validate and fill defaults. Errors name every bad field and what was expected. */
export function resolveConfig(input: unknown, source = 'configuration'): EvacuationConfig {
  const withSections = { fleet: {}, migration: {}, scatter: {}, plan: {}, coordinator: {}, agent: {}, auth: {}, log: {}, ...(isObject(input) ? input : {}) };
  if (input !== undefined && !isObject(input)) throw new VmsError(ErrorCode.CONFIG, `${source}: expected an object, got ${typeof input}`);
  const value = Value.Default(EvacuationConfigSchema, Value.Clone(withSections));
  if (!Value.Check(EvacuationConfigSchema, value)) {
    const problems = [...Value.Errors(EvacuationConfigSchema, value)]
      .filter((e) => e.keyword !== 'boolean')
      .map((e) => {
        const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperties?: string[] }).additionalProperties ?? '')})` : '';
        return `${e.instancePath || '/'} ${e.message}${extra}`;
      });
    throw new VmsError(ErrorCode.CONFIG, `invalid ${source}: ${problems.join('; ')}`);
  }
  return value as EvacuationConfig;
}

/**
 * Environment variables, each mapped onto one field of the schema (so they are validated like the
 * file). Precedence: defaults < config file < environment < command-line flags.
 */
export const ENV_VARS = {
  VMSCATTER_TOKEN: 'auth.token',
  VMSCATTER_COORDINATOR: 'coordinator.url',
  VMSCATTER_STATE_DIR: 'coordinator.stateDir',
  VMSCATTER_AGENT_NAME: 'agent.name',
  VMSCATTER_LOG_LEVEL: 'log.level',
} as const;

/** The config layer the environment gives (unset and empty variables are left out). */
export function envConfig(env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, path] of Object.entries(ENV_VARS)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    const [section, key] = path.split('.') as [string, string];
    const sec = (out[section] ??= {}) as Record<string, unknown>;
    sec[key] = v;
  }
  return out;
}

/** Split HOST:PORT (validated by the schema's pattern) into its parts. */
export function parseHostPort(s: string, what = 'address'): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new VmsError(ErrorCode.CONFIG, `${what} must be HOST:PORT with a port 0..65535, got "${s}"`);
  return { host: s.slice(0, i), port };
}

/** Read a JSON config file (under config/ by convention). */
export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new VmsError(ErrorCode.CONFIG, `cannot read config file ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new VmsError(ErrorCode.CONFIG, `config file ${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** Deep merge of plain objects, later ones winning; arrays and scalars replace. */
export function mergeConfig(...layers: unknown[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const layer of layers) {
    if (!isObject(layer)) continue;
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      out[k] = isObject(v) && isObject(out[k]) ? mergeConfig(out[k], v) : v;
    }
  }
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
