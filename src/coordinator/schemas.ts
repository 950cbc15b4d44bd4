/**
 * The control plane's messages as TypeBox schemas: they validate requests (fastify + ajv),
 * document the API (OpenAPI via @fastify/swagger), and type the handlers and clients. Shared by
 * the coordinator's public API, the agents' control API, and the messages between them.
 */
import { Type, type Static, type TSchema } from 'typebox';

// ------------------------------------------------------------------ names

export const HostName = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$',
  description: 'host (agent) name: letters, digits, ".", "_", "-", at most 63 characters',
  examples: ['src1'],
});
export const VmName = Type.String({ minLength: 1, maxLength: 200, pattern: '^[^/\\s]+$', description: 'VM name, unique on its source host', examples: ['src1-vm0'] });
export const JobId = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'job id', examples: ['j-mbz3k1-4f2a'] });
const Url = Type.String({ pattern: '^https?://[^\\s]+$', description: 'http(s) URL' });
const Strategy = Type.Union([Type.Literal('graph'), Type.Literal('greedy'), Type.Literal('round-robin')], { description: 'placement strategy (default: the coordinator\'s plan.strategy)' });
const Bytes = Type.Integer({ minimum: 0, description: 'bytes' });
const Timestamp = Type.String({ description: 'ISO 8601 time' });

export const ErrorReply = Type.Object(
  {
    statusCode: Type.Integer(),
    code: Type.String({ description: 'stable error code: VMS_ERR_* or FST_ERR_* (fastify validation)' }),
    error: Type.String({ description: 'HTTP reason phrase' }),
    message: Type.String({ description: 'what was expected, what came, and what to do' }),
  },
  { description: 'an error' },
);
export type ErrorReply = Static<typeof ErrorReply>;

/** The error replies every authenticated route can give, for the OpenAPI document. */
export function errorReplies(...statuses: number[]): Record<number, TSchema> {
  const out: Record<number, TSchema> = {};
  for (const s of [401, ...statuses]) out[s] = ErrorReply;
  return out;
}

// ------------------------------------------------------------------ agents

export const AgentRole = Type.Union([Type.Literal('source'), Type.Literal('target')]);
export type AgentRole = Static<typeof AgentRole>;

export const AgentVm = Type.Object({
  name: VmName,
  memoryBytes: Bytes,
  state: Type.Union([Type.Literal('running'), Type.Literal('stopped'), Type.Literal('migrated'), Type.Literal('receiving'), Type.Literal('failed'), Type.Literal('unknown')], {
    description: 'source: running | stopped | migrated (switched over to a target); target: receiving | running | failed',
  }),
  job: Type.Optional(Type.String()),
  target: Type.Optional(Type.String({ description: 'source: where the VM went' })),
});
export type AgentVm = Static<typeof AgentVm>;

const StoreJobs = Type.Array(Type.String({ minLength: 1, maxLength: 128 }), {
  maxItems: 10_000,
  description: 'target: the jobs whose content store it holds (the coordinator releases those of ended jobs and of jobs it does not know)',
});

const AgentFields = {
  name: HostName,
  role: AgentRole,
  controlUrl: Url,
  data: Type.Optional(Type.Object({ host: Type.String({ minLength: 1 }), port: Type.Integer({ minimum: 1, maximum: 65535 }) }, { description: 'target: where converge connections go' })),
  capacityBytes: Type.Optional(Type.Integer({ minimum: 0, description: 'target: memory offered to incoming VMs' })),
  maxVms: Type.Optional(Type.Integer({ minimum: 0, description: 'target: incoming VMs accepted (0 = no limit)' })),
  usedBytes: Type.Optional(Type.Integer({ minimum: 0, description: 'target: memory of the VMs it runs' })),
  vmCount: Type.Optional(Type.Integer({ minimum: 0 })),
  vms: Type.Optional(Type.Array(AgentVm, { maxItems: 100_000 })),
  stores: Type.Optional(StoreJobs),
  version: Type.Optional(Type.String()),
  fleet: Type.Optional(Type.Union([Type.Literal('sim'), Type.Literal('qemu')], { description: 'what the agent hosts: simulated VMs or QEMU guests (absent: sim)' })),
};

export const AgentRegistration = Type.Object(AgentFields, { additionalProperties: false });
export type AgentRegistration = Static<typeof AgentRegistration>;

export const Heartbeat = Type.Object(
  {
    controlUrl: Type.Optional(Type.String({ description: 'the agent\'s control URL as registered: another agent under its name is refused' })),
    vms: Type.Optional(Type.Array(AgentVm, { maxItems: 100_000 })),
    stores: Type.Optional(StoreJobs),
    usedBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    vmCount: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type Heartbeat = Static<typeof Heartbeat>;

export const RegisterReply = Type.Object({
  heartbeatIntervalMs: Type.Integer(),
  agentLostAfterMs: Type.Integer(),
});
export type RegisterReply = Static<typeof RegisterReply>;

export const AgentView = Type.Object({
  ...AgentFields,
  state: Type.Union([Type.Literal('ready'), Type.Literal('lost')], { description: 'lost: no heartbeat for coordinator.agentLostAfterMs' }),
  static: Type.Boolean({ description: 'listed in the coordinator config and polled, instead of registered' }),
  registeredAt: Timestamp,
  lastSeenAt: Timestamp,
  slots: Type.Object({ outgoing: Type.Integer(), incoming: Type.Integer() }, { description: 'VM migrations in flight from / to this host' }),
});
export type AgentView = Static<typeof AgentView>;

export const AgentList = Type.Object({ agents: Type.Array(AgentView) });

// ------------------------------------------------------------------ jobs

export const EvacuationRequest = Type.Object(
  {
    source: HostName,
    targets: Type.Array(HostName, { minItems: 1, maxItems: 256, uniqueItems: true, description: 'the target pool; the planner places every VM' }),
    vms: Type.Optional(Type.Array(VmName, { minItems: 1, maxItems: 4096, uniqueItems: true, description: 'only these VMs (default: every VM on the source host)' })),
    parallel: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'VMs of this job migrating at once (per-host limits apply on top)' })),
    strategy: Type.Optional(Strategy),
    verify: Type.Optional(Type.Boolean({ description: 'compare every rebuilt VM with its source (default true)' })),
  },
  { additionalProperties: false },
);
export type EvacuationRequest = Static<typeof EvacuationRequest>;

export const MigrationPair = Type.Object({ vm: VmName, target: HostName }, { additionalProperties: false });

export const MigrationRequest = Type.Object(
  {
    source: Type.Optional(HostName),
    pairs: Type.Optional(Type.Array(MigrationPair, { minItems: 1, maxItems: 4096, description: 'VM -> target pairs (placement fixed)' })),
    vms: Type.Optional(Type.Array(VmName, { minItems: 1, maxItems: 4096, uniqueItems: true, description: 'with targets: these VMs to a pool, placed by the planner' })),
    targets: Type.Optional(Type.Array(HostName, { minItems: 1, maxItems: 256, uniqueItems: true })),
    parallel: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    strategy: Type.Optional(Strategy),
    verify: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false, description: 'either pairs, or vms + targets; all VMs on one source host (found by name when source is omitted)' },
);
export type MigrationRequest = Static<typeof MigrationRequest>;

export const JobState = Type.Union(
  [Type.Literal('running'), Type.Literal('cancelling'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled'), Type.Literal('interrupted')],
  { description: 'running -> succeeded | failed | cancelling -> cancelled; interrupted: the coordinator restarted and nobody could say how the job ended' },
);
export type JobState = 'running' | 'cancelling' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

export const JobVmView = Type.Object({
  name: VmName,
  memoryBytes: Bytes,
  target: Type.Optional(Type.String()),
  state: Type.String({
    description:
      'pending | queued | migrating | stopped | resumed | verified | unverified | failed. failed: not migrated, runs on its source; resumed, verified, unverified: switched over, runs on its target (unverified: the check after switchover failed, see detail)',
  }),
  detail: Type.Optional(Type.String()),
  progress: Type.Optional(Type.Object({ done: Type.Number(), total: Type.Number(), unit: Type.String() })),
});
export type JobVmView = Static<typeof JobVmView>;

export const PhaseView = Type.Object({
  state: Type.Union([Type.Literal('running'), Type.Literal('done'), Type.Literal('skipped')]),
  ms: Type.Optional(Type.Number()),
  detail: Type.Optional(Type.String()),
});

const Predicted = Type.Object({
  senderBytes: Type.Number(),
  trafficBytes: Type.Number(),
  naiveSenderBytes: Type.Number(),
  naiveTrafficBytes: Type.Number(),
  joins: Type.Integer(),
  leaves: Type.Integer(),
});

export const PlanSummary = Type.Object({
  strategy: Type.String(),
  assignment: Type.Record(Type.String(), Type.String(), { description: 'VM -> target' }),
  predicted: Predicted,
  groups: Type.Integer({ description: 'content groups' }),
  multicastGroups: Type.Integer({ description: 'groups sent by multicast (two or more targets)' }),
  load: Type.Array(Type.Object({ target: Type.String(), vms: Type.Integer(), memoryBytes: Type.Number(), capacityBytes: Type.Number() })),
});
export type PlanSummary = Static<typeof PlanSummary>;

const JobFields = {
  id: JobId,
  kind: Type.Union([Type.Literal('evacuation'), Type.Literal('migration')]),
  state: JobState,
  source: Type.String(),
  targets: Type.Array(Type.String()),
  strategy: Type.String(),
  parallel: Type.Integer(),
  verify: Type.Boolean(),
  createdAt: Timestamp,
  endedAt: Type.Optional(Timestamp),
  phase: Type.Optional(Type.String({ description: 'the phase running now (or the last one)' })),
  phases: Type.Record(Type.String(), PhaseView),
  vms: Type.Array(JobVmView),
  detail: Type.Optional(Type.String()),
  error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String() })),
  plan: Type.Optional(PlanSummary),
};

export const JobSummaryView = Type.Object(JobFields);
export const JobView = Type.Object({
  ...JobFields,
  report: Type.Optional(Type.Unknown({ description: 'the evacuation report (bytes, phases, per-VM outcome) once the job ended' })),
});
export type JobView = Static<typeof JobView>;
export const JobList = Type.Object({ jobs: Type.Array(JobSummaryView) });
export const JobListQuery = Type.Object(
  {
    state: Type.Optional(JobState),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  },
  { additionalProperties: false },
);
export const JobParams = Type.Object({ id: JobId });
export const EventsQuery = Type.Object({ after: Type.Optional(Type.Integer({ minimum: 0, description: 'replay events after this id (like Last-Event-ID)' })) }, { additionalProperties: false });

export const PlanReply = Type.Object({
  ...PlanSummary.properties,
  source: Type.String(),
  targets: Type.Array(Type.String()),
  vms: Type.Array(Type.Object({ name: Type.String(), memoryBytes: Bytes, nonZeroPages: Type.Integer(), distinctContents: Type.Integer() })),
});
export type PlanReply = Static<typeof PlanReply>;

export const Health = Type.Object({ ok: Type.Boolean(), version: Type.String(), uptimeSeconds: Type.Number(), role: Type.String() });

// ------------------------------------------------------------------ coordinator <-> source agent

/** One VM as the planner needs it; contents: distinct content ids as a little-endian Uint32Array in base64. */
export const FleetVmWire = Type.Object(
  {
    name: VmName,
    memoryBytes: Bytes,
    nonZeroPages: Type.Integer({ minimum: 0 }),
    contents: Type.String({ contentEncoding: 'base64', description: 'ascending distinct content ids, little-endian uint32, base64' }),
  },
  { additionalProperties: false },
);
export type FleetVmWire = Static<typeof FleetVmWire>;

export const FleetUpload = Type.Object({ fleet: Type.Array(FleetVmWire, { minItems: 1, maxItems: 4096 }) }, { additionalProperties: false });
export type FleetUpload = Static<typeof FleetUpload>;

export const SlotRequest = Type.Object({ vm: VmName, target: HostName }, { additionalProperties: false });
export const SlotReply = Type.Object({ granted: Type.Boolean(), detail: Type.Optional(Type.String()) });
export type SlotReply = Static<typeof SlotReply>;

export const RunTarget = Type.Object(
  {
    name: HostName,
    host: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    capacityBytes: Bytes,
    maxVms: Type.Optional(Type.Integer({ minimum: 0 })),
    controlUrl: Url,
  },
  { additionalProperties: false },
);
export type RunTarget = Static<typeof RunTarget>;

export const RunRequest = Type.Object(
  {
    job: JobId,
    vms: Type.Array(VmName, { minItems: 1, uniqueItems: true }),
    targets: Type.Array(RunTarget, { minItems: 1 }),
    parallel: Type.Integer({ minimum: 1, maximum: 64 }),
    verify: Type.Boolean(),
    coordinatorUrl: Url,
  },
  { additionalProperties: false },
);
export type RunRequest = Static<typeof RunRequest>;

export type RunState = 'running' | 'succeeded' | 'failed' | 'cancelled';

export const RunStatus = Type.Object({
  job: Type.String(),
  state: Type.Union([Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled')]),
  vms: Type.Array(Type.Object({ name: Type.String(), state: Type.String(), target: Type.Optional(Type.String()) })),
  slots: Type.Array(Type.Object({ vm: Type.String(), target: Type.String() }), { description: 'migration slots the run holds' }),
  lastSeq: Type.Integer(),
  error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String() })),
});
export type RunStatus = Static<typeof RunStatus>;

export const ScanRequest = Type.Object({ vms: Type.Optional(Type.Array(VmName, { minItems: 1, uniqueItems: true })) }, { additionalProperties: false });
export const CancelRequest = Type.Object({ reason: Type.Optional(Type.String({ maxLength: 500 })) }, { additionalProperties: false });
export const AbortTargetRequest = Type.Object({ target: HostName, reason: Type.String({ maxLength: 500 }) }, { additionalProperties: false });
export const RunParams = Type.Object({ job: JobId });
export const VmParams = Type.Object({ name: VmName });
export const DigestReply = Type.Object({ vm: Type.String(), state: Type.String(), digest: Type.Optional(Type.String()), detail: Type.Optional(Type.String()) });
export type DigestReply = Static<typeof DigestReply>;
/** What a source agent's reload of its QEMU guests file did (POST /v1/guests/reload, SIGHUP). */
export const GuestsReload = Type.Object({
  /** Newly listed guests found running and taken on. */
  added: Type.Array(Type.String()),
  /** Guests no longer listed: let go (they run on, without vmscatter). */
  removed: Type.Array(Type.String()),
  /** Listed with another description than the one taken on: let go and taken on again. */
  readopted: Type.Array(Type.String()),
  unchanged: Type.Array(Type.String()),
  /** Listed but not running (QMP socket absent or refusing): skipped, as at start. */
  notRunning: Type.Array(Type.String()),
  /** Not listed any more or changed, but in a job (or migrated): left as they are. */
  busy: Type.Array(Type.String()),
  /** Guests that could not be taken on, with why (e.g. a RAM file that does not match the machine). */
  failed: Type.Array(Type.Object({ name: Type.String(), error: Type.String() })),
});
export type GuestsReload = Static<typeof GuestsReload>;

// ------------------------------------------------------------------ QEMU guests (agent.fleet "qemu")

/**
 * The machine a QEMU guest is: what a target needs to start the same machine with
 * `-incoming defer` (src/qemu/launcher.ts qemuArgs builds the command line from it). The source
 * QEMU must have been started as the same machine.
 */
export const QemuMachine = Type.Object(
  {
    memoryMiB: Type.Integer({ minimum: 4, maximum: 4_194_304, description: 'guest RAM, MiB (TCG guests get 8 KiB more, see docs/operations.md)' }),
    kernel: Type.Optional(Type.String({ minLength: 1, description: 'kernel file on the target (absent: the guest boots from what extraArgs gives it)' })),
    initrd: Type.Optional(Type.String({ minLength: 1 })),
    append: Type.Optional(Type.String({ description: 'kernel command line' })),
    accel: Type.Optional(Type.String({ pattern: '^[a-z]+$', description: 'QEMU accelerator (default tcg)' })),
    cpu: Type.Optional(Type.String({ minLength: 1 })),
    smp: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })),
    machine: Type.Optional(Type.String({ minLength: 1, description: 'QEMU machine type' })),
    qemuBinary: Type.Optional(Type.String({ minLength: 1 })),
    extraArgs: Type.Optional(Type.Array(Type.String(), { maxItems: 256, description: 'further QEMU arguments, e.g. the devices and disks on shared storage' })),
  },
  { additionalProperties: false },
);
export type QemuMachine = Static<typeof QemuMachine>;

/** A source agent tells the target which machine to start for a VM before it sends the VM. */
export const IncomingRequest = Type.Object({ job: JobId, machine: QemuMachine }, { additionalProperties: false });
export type IncomingRequest = Static<typeof IncomingRequest>;

/** One guest of a source agent's guests file (agent.guests). */
export const QemuGuestEntry = Type.Object(
  {
    name: VmName,
    qmp: Type.String({ minLength: 1, description: 'a QMP unix socket of the running QEMU reserved for vmscatter' }),
    ramFile: Type.String({ minLength: 1, description: "the guest RAM's memory-backend-file (share=on), e.g. under /dev/shm" }),
    machine: QemuMachine,
  },
  { additionalProperties: false },
);
export const QemuGuestsFile = Type.Object({ guests: Type.Array(QemuGuestEntry, { minItems: 1 }) }, { additionalProperties: false });
export type QemuGuestsFile = Static<typeof QemuGuestsFile>;
