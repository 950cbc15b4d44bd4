/**
 * Fleet descriptions for `vmscatter plan FILE` (a dry run), and a seeded generator of synthetic
 * fleets with clustered sharing (OS images, tenants, unique pages) for tests and the bench.
 *
 * File format (JSON):
 * {
 *   "vms": [{ "name": "web-1", "memoryGiB": 4, "contents": [1, 2, 3], "nonZeroPages": 5, "pinnedTo": "t1" }],
 *   "targets": [{ "name": "t1", "capacityGiB": 16, "maxVms": 8 }],
 *   "constraints": { "antiAffinity": [["web-1", "web-2"]] },
 *   "options": { "maxGroups": 256, "maxGroupsPerReceiver": 20, "minTargetsForScatter": 2, "channels": 4,
 *                "placement": "graph", "addresses": ["239.1.1.1", ...], "seed": 1 }
 * }
 * Sizes take one of memoryBytes / memoryMiB / memoryGiB (capacityBytes / capacityMiB / capacityGiB).
 * `contents` are content ids (any order; repeats count as non-zero pages); nonZeroPages defaults
 * to the number of ids listed. Instead of "vms", "synthetic": { ClusteredFleetSpec } generates the
 * VMs (and the targets, when "targets" is absent); "pins": { "vm-0001": "t-01" } pins generated VMs.
 */
import { readFile } from 'node:fs/promises';
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { makeRng } from './objective.js';
import type { PlanOptions } from './plan.js';
import type { FleetTarget, FleetVm, PlanConstraints } from './types.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

export type FleetProfile = 'measured' | 'clustered' | 'cloned';

/**
 * Synthetic fleet with clustered sharing. Each VM runs one OS image (through its tenant) and holds
 * each page of that image's pool with the page's popularity (a core near 0.95, the rest 0.15-0.85);
 * likewise for its tenant's pool (0.3-0.9); a small pool common to all images (fill patterns);
 * the rest of its pages are unique. Profiles:
 * - 'measured' (default) follows notes/qemu.md: same-OS guests share about half of their distinct
 *   non-zero pages (3 VMs: 48,822 per-VM distinct -> 33,113 fleet distinct), ~8% intra-VM
 *   duplicates, ~70% zero pages;
 * - 'clustered': tenants running the same application stack also share a third of their pages
 *   (the setting VMScatter targets); labelled wherever it is used;
 * - 'cloned': each tenant's VMs are clones of the tenant's golden image (VDI linked clones, CI
 *   runners, microVMs restored from one snapshot): 60% of a VM's contents come from its tenant's
 *   image, each page kept by 85-100% of the clones, 20% from the OS image, 18% unique. Chosen, not
 *   measured: two bare same-OS guests already share 68% of their distinct non-zero pages
 *   (notes/qemu.md), clones that have not diverged far share more. Labelled wherever it is used.
 */
export interface ClusteredFleetSpec {
  seed?: number;
  vms: number;
  targets: number;
  profile?: FleetProfile;
  /** Default max(1, round(vms / 40)), at most 12. */
  osImages?: number;
  /** Default max(1, round(vms / 5)). */
  tenants?: number;
  /** Mean distinct non-zero contents per VM (default 4096). */
  pagesPerVm?: number;
  /** Shares of a VM's distinct contents (defaults per profile). */
  osShare?: number;
  tenantShare?: number;
  commonShare?: number;
  /** Extra non-zero pages repeating the VM's own contents, as a share of distinct (default 0.08). */
  duplicateShare?: number;
  /** Share of zero pages in guest RAM (default 0.7). */
  zeroShare?: number;
  /** VM size multipliers drawn uniformly (default [0.5, 1, 1, 2]). */
  sizeMix?: number[];
  /** Total target capacity over total VM memory, minus one (default 0.15). */
  capacitySlack?: number;
  /** Relative spread of target capacities (default 0.3). */
  capacitySpread?: number;
  maxVmsPerTarget?: number;
}

export interface FleetDescription {
  vms: FleetVm[];
  targets: FleetTarget[];
  constraints: PlanConstraints;
  options: PlanOptions;
  /** Present when the fleet was generated. */
  synthetic?: ClusteredFleetSpec;
}

/**
 * Shares of a VM's distinct contents, and a tenant page's popularity: uniform in
 * [popLow, popLow + popWidth], mean popMean (written out so that the older profiles' fleets stay
 * bit for bit what they were).
 */
const PROFILES: Record<FleetProfile, { os: number; tenant: number; common: number; popLow: number; popWidth: number; popMean: number }> = {
  measured: { os: 0.42, tenant: 0.06, common: 0.02, popLow: 0.3, popWidth: 0.6, popMean: 0.6 },
  clustered: { os: 0.35, tenant: 0.33, common: 0.02, popLow: 0.3, popWidth: 0.6, popMean: 0.6 },
  cloned: { os: 0.2, tenant: 0.6, common: 0.02, popLow: 0.85, popWidth: 0.15, popMean: 0.925 },
};

export interface GeneratedFleet {
  vms: FleetVm[];
  targets: FleetTarget[];
  /** Ground truth of the generator, per VM: tenant and OS image indices. */
  tenantOf: Int32Array;
  osOf: Int32Array;
}

export function generateClusteredFleet(spec: ClusteredFleetSpec): GeneratedFleet {
  const N = spec.vms;
  const T = spec.targets;
  if (!Number.isInteger(N) || N < 0) throw new VmsError(ErrorCode.CONFIG, `synthetic.vms must be an integer >= 0, got ${N}`);
  if (!Number.isInteger(T) || T < 1) throw new VmsError(ErrorCode.CONFIG, `synthetic.targets must be an integer >= 1, got ${T}`);
  const rng = makeRng(spec.seed ?? 1);
  const prof = PROFILES[spec.profile ?? 'measured'];
  if (!prof) throw new VmsError(ErrorCode.CONFIG, `synthetic.profile must be 'measured', 'clustered' or 'cloned', got ${String(spec.profile)}`);
  const pages = spec.pagesPerVm ?? 4096;
  const osShare = spec.osShare ?? prof.os;
  const tenantShare = spec.tenantShare ?? prof.tenant;
  const commonShare = spec.commonShare ?? prof.common;
  const uniqueShare = Math.max(0, 1 - osShare - tenantShare - commonShare);
  const dupShare = spec.duplicateShare ?? 0.08;
  const zeroShare = spec.zeroShare ?? 0.7;
  const sizeMix = spec.sizeMix ?? [0.5, 1, 1, 2];
  const meanMix = sizeMix.reduce((a, b) => a + b, 0) / sizeMix.length;
  const images = Math.max(1, spec.osImages ?? Math.min(12, Math.round(N / 40)));
  const tenants = Math.max(1, Math.min(N, spec.tenants ?? Math.round(N / 5)));

  // Pools with per-page popularity.
  const osPop = (n: number) => {
    const p = new Float64Array(n);
    for (let i = 0; i < n; i++) p[i] = i < n * 0.4 ? 0.95 : 0.15 + 0.7 * rng();
    return p;
  };
  const tenantPop = (n: number) => {
    const p = new Float64Array(n);
    for (let i = 0; i < n; i++) p[i] = prof.popLow + prof.popWidth * rng();
    return p;
  };
  const commonN = Math.round((commonShare * pages) / 0.9);
  const osN = Math.round((osShare * pages) / 0.68);
  const tenN = Math.round((tenantShare * pages) / prof.popMean);
  const commonPop = new Float64Array(commonN).fill(0.9);
  const osPops = Array.from({ length: images }, () => osPop(osN));
  const tenPops = Array.from({ length: tenants }, () => tenantPop(tenN));
  const osBase = (j: number) => commonN + j * osN;
  const tenBase = (i: number) => commonN + images * osN + i * tenN;
  let nextUnique = commonN + images * osN + tenants * tenN;

  // Tenants: skewed sizes; each tenant runs one OS image (skewed popularity).
  const pick = (weights: number[]) => {
    const total = weights.reduce((a, b) => a + b, 0);
    let x = rng() * total;
    for (let i = 0; i < weights.length; i++) {
      x -= weights[i]!;
      if (x < 0) return i;
    }
    return weights.length - 1;
  };
  const osWeights = Array.from({ length: images }, (_, j) => 1 / (j + 1) ** 0.7);
  const tenantOs = Array.from({ length: tenants }, (_, i) => (i < images ? i : pick(osWeights)));
  const tenantWeights = Array.from({ length: tenants }, (_, i) => (0.5 + rng()) / (i + 1) ** 0.5);
  const vmTenant = Array.from({ length: N }, (_, v) => (v < tenants ? v : pick(tenantWeights)));
  // Shuffle so that VM index says nothing about tenant.
  for (let i = N - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const x = vmTenant[i]!;
    vmTenant[i] = vmTenant[j]!;
    vmTenant[j] = x;
  }

  const scratch = new Uint32Array(commonN + osN + tenN + Math.ceil(uniqueShare * pages * (Math.max(...sizeMix) / meanMix)) + 16);
  const width = Math.max(4, String(N).length);
  const vms: FleetVm[] = [];
  for (let v = 0; v < N; v++) {
    const tenant = vmTenant[v]!;
    const os = tenantOs[tenant]!;
    const mult = sizeMix[Math.floor(rng() * sizeMix.length)]! / meanMix;
    let n = 0;
    const draw = (pop: Float64Array, base: number) => {
      for (let i = 0; i < pop.length; i++) if (rng() < pop[i]!) scratch[n++] = base + i;
    };
    draw(commonPop, 0);
    draw(osPops[os]!, osBase(os));
    draw(tenPops[tenant]!, tenBase(tenant));
    const uniq = Math.round(uniqueShare * pages * mult);
    for (let i = 0; i < uniq; i++) scratch[n++] = nextUnique++;
    const contents = scratch.slice(0, n);
    const nonZero = Math.round(n * (1 + dupShare));
    const totalPages = nonZero / (1 - zeroShare);
    const memoryBytes = Math.max(1, Math.ceil((totalPages * PAGE_SIZE) / (64 * MiB))) * 64 * MiB;
    vms.push({ name: `vm-${String(v + 1).padStart(width, '0')}`, memoryBytes, contents, nonZeroPages: nonZero });
  }

  const totalMem = vms.reduce((a, vm) => a + vm.memoryBytes, 0);
  const maxVm = vms.reduce((a, vm) => Math.max(a, vm.memoryBytes), 0);
  const slack = spec.capacitySlack ?? 0.15;
  const spread = spec.capacitySpread ?? 0.3;
  const raw = Array.from({ length: T }, () => 1 + spread * (2 * rng() - 1));
  const rawSum = raw.reduce((a, b) => a + b, 0);
  const targets: FleetTarget[] = raw.map((r, t) => {
    const cap = Math.max(maxVm, Math.round(((totalMem * (1 + slack) * r) / rawSum) / (64 * MiB)) * 64 * MiB);
    return {
      name: `t-${String(t + 1).padStart(2, '0')}`,
      capacityBytes: cap,
      ...(spec.maxVmsPerTarget !== undefined ? { maxVms: spec.maxVmsPerTarget } : {}),
    };
  });
  return { vms, targets, tenantOf: Int32Array.from(vmTenant), osOf: Int32Array.from(vmTenant, (t) => tenantOs[t]!) };
}

/** The embedded default fleet of `vmscatter plan` without a file: 8 VMs (about 256 MiB guests, as measured), 4 targets. */
export function defaultFleet(): FleetDescription {
  const synthetic: ClusteredFleetSpec = { seed: 7, vms: 8, targets: 4, osImages: 2, tenants: 3, pagesPerVm: 16384 };
  const { vms, targets } = generateClusteredFleet(synthetic);
  return { vms, targets, constraints: {}, options: {}, synthetic };
}

// ---- parsing -------------------------------------------------------------------------------

function cfg(path: string, msg: string): VmsError {
  return new VmsError(ErrorCode.CONFIG, `fleet ${path}: ${msg}`);
}

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function describe(x: unknown): string {
  if (x === undefined) return 'nothing';
  const s = JSON.stringify(x);
  return s === undefined ? String(x) : s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

function num(x: unknown, path: string, opts: { int?: boolean; min?: number } = {}): number {
  if (typeof x !== 'number' || !Number.isFinite(x)) throw cfg(path, `expected a number, got ${describe(x)}`);
  if (opts.int && !Number.isInteger(x)) throw cfg(path, `expected an integer, got ${x}`);
  if (opts.min !== undefined && x < opts.min) throw cfg(path, `expected a value >= ${opts.min}, got ${x}`);
  return x;
}

function str(x: unknown, path: string): string {
  if (typeof x !== 'string' || x === '') throw cfg(path, `expected a non-empty string, got ${describe(x)}`);
  return x;
}

function size(o: Record<string, unknown>, prefix: 'memory' | 'capacity', path: string): number {
  const keys = [`${prefix}Bytes`, `${prefix}MiB`, `${prefix}GiB`].filter((k) => o[k] !== undefined);
  if (keys.length !== 1)
    throw cfg(path, `expected exactly one of ${prefix}Bytes, ${prefix}MiB, ${prefix}GiB, got ${keys.length ? keys.join(', ') : 'none'}`);
  const k = keys[0]!;
  const v = num(o[k], `${path}.${k}`, { min: 0 });
  return k.endsWith('GiB') ? Math.round(v * GiB) : k.endsWith('MiB') ? Math.round(v * MiB) : v;
}

const SPEC_KEYS = new Set([
  'seed', 'vms', 'targets', 'profile', 'osImages', 'tenants', 'pagesPerVm', 'osShare', 'tenantShare', 'commonShare',
  'duplicateShare', 'zeroShare', 'sizeMix', 'capacitySlack', 'capacitySpread', 'maxVmsPerTarget',
]);

function parseSpec(x: unknown, hasTargets: number | null): ClusteredFleetSpec {
  if (!isObj(x)) throw cfg('synthetic', `expected an object, got ${describe(x)}`);
  for (const k of Object.keys(x)) if (!SPEC_KEYS.has(k)) throw cfg(`synthetic.${k}`, `unknown field (known: ${[...SPEC_KEYS].join(', ')})`);
  const spec: ClusteredFleetSpec = {
    vms: num(x.vms, 'synthetic.vms', { int: true, min: 0 }),
    targets: x.targets === undefined && hasTargets !== null ? hasTargets : num(x.targets, 'synthetic.targets', { int: true, min: 1 }),
  };
  const out = spec as unknown as Record<string, unknown>;
  for (const k of ['seed', 'osImages', 'tenants', 'pagesPerVm', 'maxVmsPerTarget'] as const)
    if (x[k] !== undefined) out[k] = num(x[k], `synthetic.${k}`, { int: true, min: k === 'seed' ? 0 : 1 });
  for (const k of ['osShare', 'tenantShare', 'commonShare', 'duplicateShare', 'zeroShare', 'capacitySlack', 'capacitySpread'] as const)
    if (x[k] !== undefined) {
      const v = num(x[k], `synthetic.${k}`, { min: 0 });
      if (k !== 'capacitySlack' && k !== 'duplicateShare' && v >= 1) throw cfg(`synthetic.${k}`, `expected a share below 1, got ${v}`);
      out[k] = v;
    }
  if (x.profile !== undefined) {
    if (x.profile !== 'measured' && x.profile !== 'clustered' && x.profile !== 'cloned')
      throw cfg('synthetic.profile', `expected "measured", "clustered" or "cloned", got ${describe(x.profile)}`);
    spec.profile = x.profile;
  }
  if (x.sizeMix !== undefined) {
    if (!Array.isArray(x.sizeMix) || x.sizeMix.length === 0) throw cfg('synthetic.sizeMix', `expected a non-empty array of numbers`);
    spec.sizeMix = x.sizeMix.map((m, i) => num(m, `synthetic.sizeMix[${i}]`, { min: 0.001 }));
  }
  return spec;
}

function parseOptions(x: unknown): PlanOptions {
  if (x === undefined) return {};
  if (!isObj(x)) throw cfg('options', `expected an object, got ${describe(x)}`);
  const o: PlanOptions = {};
  for (const [k, v] of Object.entries(x)) {
    const path = `options.${k}`;
    switch (k) {
      case 'maxGroups':
      case 'maxGroupsPerReceiver':
      case 'minTargetsForScatter':
      case 'channels':
        o[k] = num(v, path, { int: true, min: 1 });
        break;
      case 'seed':
        o.seed = num(v, path, { int: true, min: 0 });
        break;
      case 'effort':
        o.effort = num(v, path, { min: 0 });
        break;
      case 'placement':
        if (v !== 'graph' && v !== 'greedy' && v !== 'exhaustive') throw cfg(path, `expected "graph", "greedy" or "exhaustive", got ${describe(v)}`);
        o.placement = v;
        break;
      case 'graph':
        if (v !== 'auto' && v !== 'exact' && v !== 'minhash') throw cfg(path, `expected "auto", "exact" or "minhash", got ${describe(v)}`);
        o.graph = v;
        break;
      case 'addresses':
        if (!Array.isArray(v)) throw cfg(path, `expected an array of multicast addresses`);
        o.addresses = v.map((a, i) => {
          const s = str(a, `${path}[${i}]`);
          const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
          if (!m || m.slice(1).some((p) => Number(p) > 255) || Number(m[1]) < 224 || Number(m[1]) > 239)
            throw cfg(`${path}[${i}]`, `expected an IPv4 multicast address (224.0.0.0-239.255.255.255), got ${describe(s)}`);
          return s;
        });
        break;
      default:
        throw cfg(path, 'unknown option');
    }
  }
  return o;
}

/** Parse and validate a fleet description (JSON text or an already parsed value). */
export function parseFleet(input: string | unknown): FleetDescription {
  let doc: unknown = input;
  if (typeof input === 'string') {
    try {
      doc = JSON.parse(input);
    } catch (e) {
      throw new VmsError(ErrorCode.CONFIG, `fleet description is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }
  if (!isObj(doc)) throw cfg('(top level)', `expected an object with "vms" or "synthetic", and "targets", got ${describe(doc)}`);
  for (const k of Object.keys(doc))
    if (!['vms', 'targets', 'constraints', 'options', 'synthetic', 'pins', '$schema', 'comment'].includes(k))
      throw cfg(k, 'unknown field (expected vms, targets, constraints, options, synthetic, pins)');

  let targets: FleetTarget[] | null = null;
  if (doc.targets !== undefined) {
    if (!Array.isArray(doc.targets)) throw cfg('targets', `expected an array, got ${describe(doc.targets)}`);
    targets = doc.targets.map((t, i) => {
      const path = `targets[${i}]`;
      if (!isObj(t)) throw cfg(path, `expected an object, got ${describe(t)}`);
      const out: FleetTarget = { name: str(t.name, `${path}.name`), capacityBytes: size(t, 'capacity', path) };
      if (t.maxVms !== undefined) out.maxVms = num(t.maxVms, `${path}.maxVms`, { int: true, min: 0 });
      return out;
    });
  }

  let vms: FleetVm[];
  let synthetic: ClusteredFleetSpec | undefined;
  if (doc.synthetic !== undefined) {
    if (doc.vms !== undefined) throw cfg('vms', 'give either "vms" or "synthetic", not both');
    synthetic = parseSpec(doc.synthetic, targets ? targets.length : null);
    const gen = generateClusteredFleet(synthetic);
    vms = gen.vms;
    targets ??= gen.targets;
  } else {
    if (!Array.isArray(doc.vms)) throw cfg('vms', `expected an array of VMs (or a "synthetic" generator spec), got ${describe(doc.vms)}`);
    vms = doc.vms.map((x, i) => {
      const path = `vms[${i}]`;
      if (!isObj(x)) throw cfg(path, `expected an object, got ${describe(x)}`);
      const name = str(x.name, `${path}.name`);
      if (!Array.isArray(x.contents)) throw cfg(`${path}.contents`, `expected an array of content ids, got ${describe(x.contents)}`);
      const ids = x.contents.map((c, j) => num(c, `${path}.contents[${j}]`, { int: true, min: 0 }));
      for (const [j, c] of ids.entries()) if (c > 0xffffffff) throw cfg(`${path}.contents[${j}]`, `content ids are 32-bit, got ${c}`);
      const contents = Uint32Array.from(new Set(ids)).sort();
      const nonZeroPages = x.nonZeroPages === undefined ? ids.length : num(x.nonZeroPages, `${path}.nonZeroPages`, { int: true, min: contents.length });
      const vm: FleetVm = { name, memoryBytes: size(x, 'memory', path), contents, nonZeroPages };
      if (x.pinnedTo !== undefined) vm.pinnedTo = str(x.pinnedTo, `${path}.pinnedTo`);
      return vm;
    });
  }
  if (targets === null) throw cfg('targets', 'expected an array of targets');

  if (doc.pins !== undefined) {
    if (!isObj(doc.pins)) throw cfg('pins', `expected an object { vmName: targetName }, got ${describe(doc.pins)}`);
    const byName = new Map(vms.map((v) => [v.name, v]));
    for (const [name, t] of Object.entries(doc.pins)) {
      const vm = byName.get(name);
      if (!vm) throw cfg(`pins.${name}`, `no VM named ${name}`);
      vm.pinnedTo = str(t, `pins.${name}`);
    }
  }

  const constraints: PlanConstraints = {};
  if (doc.constraints !== undefined) {
    if (!isObj(doc.constraints)) throw cfg('constraints', `expected an object, got ${describe(doc.constraints)}`);
    for (const k of Object.keys(doc.constraints)) if (k !== 'antiAffinity') throw cfg(`constraints.${k}`, 'unknown constraint (known: antiAffinity)');
    const aa = doc.constraints.antiAffinity;
    if (aa !== undefined) {
      if (!Array.isArray(aa)) throw cfg('constraints.antiAffinity', 'expected an array of arrays of VM names');
      constraints.antiAffinity = aa.map((g, i) => {
        if (!Array.isArray(g)) throw cfg(`constraints.antiAffinity[${i}]`, `expected an array of VM names, got ${describe(g)}`);
        return g.map((n, j) => str(n, `constraints.antiAffinity[${i}][${j}]`));
      });
    }
  }
  const options = parseOptions(doc.options);
  return { vms, targets, constraints, options, ...(synthetic ? { synthetic } : {}) };
}

export async function loadFleet(path: string): Promise<FleetDescription> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new VmsError(ErrorCode.CONFIG, `cannot read fleet description ${path}: ${(e as Error).message}`, { cause: e });
  }
  return parseFleet(text);
}
