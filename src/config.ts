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
    compress: Type.Union([Type.Literal('none'), Type.Literal('lz4')], { default: 'none', description: 'compress converge frames' }),
  },
  { additionalProperties: false },
);

export const ScatterSchema = Type.Object(
  {
    enabled: Type.Boolean({ default: true }),
    interface: Type.String({ default: '127.0.0.1', description: 'IPv4 address of the interface multicast is sent and received on' }),
    groupPool: Type.String({ default: '239.192.0.0/14', description: 'multicast addresses for groups (organization-local scope)' }),
    rateMBps: Type.Number({ minimum: 1, default: 100, description: 'sender ceiling, MB/s' }),
    datagramBytes: Type.Integer({ minimum: 576, maximum: 65000, default: 8400, description: 'datagram payload budget (MTU 9000: two pages)' }),
  },
  { additionalProperties: false },
);

export const PlanSchema = Type.Object(
  {
    strategy: Type.Union([Type.Literal('graph'), Type.Literal('greedy'), Type.Literal('round-robin')], { default: 'graph' }),
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
  },
  { additionalProperties: false },
);
export type EvacuationConfig = Static<typeof EvacuationConfigSchema>;

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };
export type EvacuationConfigInput = DeepPartial<EvacuationConfig>;

/** Validate and fill defaults. Errors name every bad field and what was expected. */
export function resolveConfig(input: unknown, source = 'configuration'): EvacuationConfig {
  const withSections = { fleet: {}, migration: {}, scatter: {}, plan: {}, ...(isObject(input) ? input : {}) };
  if (input !== undefined && !isObject(input)) throw new VmsError(ErrorCode.CONFIG, `${source}: expected an object, got ${typeof input}`);
  const value = Value.Default(EvacuationConfigSchema, Value.Clone(withSections));
  if (!Value.Check(EvacuationConfigSchema, value)) {
    const problems = [...Value.Errors(EvacuationConfigSchema, value)]
      .filter((e) => e.keyword !== 'boolean')
      .map((e) => {
        const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperties?: string[] }).additionalProperties ?? '')})` : '';
        return `${e.instancePath || '/'} ${e.message}${extra}`;
      });
    throw new VmsError(ErrorCode.CONFIG, `${source} is invalid: ${problems.join('; ')}`);
  }
  return value as EvacuationConfig;
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
