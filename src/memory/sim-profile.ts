/**
 * What a simulated VM's memory looks like: the content profile (which share of pages is zero,
 * shared by an OS image, shared within a tenant, duplicated inside the VM, unique), the VM specs
 * built on it, and the default demo fleet. Defaults follow the real guests measured in
 * notes/qemu.md; anything else must be labelled as a chosen profile.
 */
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SIZE } from './page.js';

/**
 * Fractions of a VM's main RAM block ("pc.ram"), each in [0, 1]; what is left over is unique to
 * the VM. Fractions are of pages, not of distinct contents.
 */
export interface SimProfile {
  /** All-zero pages (QEMU sends them as ZERO records). */
  zeroFraction: number;
  /** Pages filled with one byte (`fillByte`): Linux poisons freed init memory with 0xCC. */
  fillFraction: number;
  /** Distinct contents every VM of the same OS image holds (kernel text, shared libraries). */
  osSharedFraction: number;
  /** Distinct contents shared by the VMs of one tenant (its application stack and data). */
  tenantSharedFraction: number;
  /** Pages repeating an OS or tenant content already present in the same VM. */
  intraDupFraction: number;
  /** Byte of the fill pages, 1..255 (0 would make them zero pages). */
  fillByte: number;
  /** Mean length of a run of non-zero pages of one kind (memory is laid out in runs, not page by page). */
  meanRunPages: number;
  /** Mean length of a run of zero pages: free memory lies in large blocks (the buddy allocator's). */
  meanZeroRunPages: number;
}

/**
 * Measured on real guests (notes/qemu.md, 256 MiB Debian 12 guests running the test workload):
 * per VM 66.2% zero pages, 8.9% duplicate non-zero pages, 24.8% distinct non-zero pages; across 3
 * such VMs cross-VM dedup sends 32.2% less than per-VM dedup.
 */
export const MEASURED_GUEST = {
  zeroFraction: 0.662,
  dupNonZeroFraction: 0.089,
  distinctNonZeroFraction: 0.248,
  crossVmSaving3: 0.322,
} as const;

/**
 * Derivation of DEFAULT_PROFILE.
 *
 * Per VM, distinct non-zero content D = S (OS-shared) + T (tenant-shared) + U (unique), as
 * fractions of the VM's pages; D = 1 - zero - dup = 0.249 (the measured 24.8% plus the 0.1% the
 * measurement's rounding leaves over). Duplicates (fill pages and intra-VM repeats of OS/tenant
 * contents) add no distinct content.
 *
 * Per-VM dedup of n VMs sends n*D; cross-VM dedup sends S + k*T + n*U for k tenants among them.
 * The reference 3-VM fleet is defaultFleet({ vms: 3 }): tenants a, b, a (k = 2), so
 *   saving = 1 - (S + 2T + 3U) / 3D = (2S + T) / 3D   =>   S = (3 * 0.322 * D - T) / 2.
 * With T = 0.04 (a tenant's stack: an assumption, the real guests had no tenants) this gives
 * S = 0.1003 and U = 0.1087.
 *
 * Fill pages: the most repeated non-zero content in the real guests is 0xCC (freed kernel init
 * memory, a few MiB in 256 MiB): 1.2% is assumed, the rest of the measured 8.9% duplicates are
 * repeats of OS/tenant contents inside the VM.
 */
const D = 1 - MEASURED_GUEST.zeroFraction - MEASURED_GUEST.dupNonZeroFraction;
const FILL = 0.012;
const TENANT = 0.04;
const OS_SHARED = (3 * MEASURED_GUEST.crossVmSaving3 * D - TENANT) / 2;

export const DEFAULT_PROFILE: Readonly<SimProfile> = Object.freeze({
  zeroFraction: MEASURED_GUEST.zeroFraction,
  fillFraction: FILL,
  osSharedFraction: OS_SHARED,
  tenantSharedFraction: TENANT,
  intraDupFraction: MEASURED_GUEST.dupNonZeroFraction - FILL,
  fillByte: 0xcc,
  meanRunPages: 16,
  meanZeroRunPages: 2048,
});

/** Share of pages unique to the VM: what the other fractions leave. */
export function uniqueFraction(p: SimProfile): number {
  return Math.max(0, 1 - p.zeroFraction - p.fillFraction - p.osSharedFraction - p.tenantSharedFraction - p.intraDupFraction);
}

export interface SimVmSpec {
  /** Unique in a fleet. */
  name: string;
  /** Size of the main RAM block, a multiple of 4 KiB. */
  memoryBytes: number;
  /** VMs with the same OS image share its contents. */
  osImage: string;
  /** VMs of the same tenant share the tenant's contents. */
  tenant: string;
  /** Seeds the VM's own (unique, dirtied) contents, its layout and its write sequence. Unique in a fleet. */
  seed: number;
  profile: SimProfile;
  /** Page writes per second while running (QEMU measured a real guest at 458 pages/s). */
  dirtyPagesPerSec: number;
  /** How many pages the writes land on (the writable working set). */
  workingSetPages: number;
}

/** Largest supported main block: the page descriptor keeps page indices in 28 bits (1 TiB). */
export const MAX_SIM_PAGES = 1 << 28;

const FRACTIONS = ['zeroFraction', 'fillFraction', 'osSharedFraction', 'tenantSharedFraction', 'intraDupFraction'] as const;

function config(msg: string): VmsError {
  return new VmsError(ErrorCode.CONFIG, msg);
}

/** Throws VmsError(CONFIG) naming the first bad field. */
export function validateProfile(p: SimProfile, where = 'profile'): void {
  let sum = 0;
  for (const k of FRACTIONS) {
    const v = p[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1)
      throw config(`${where}.${k} must be a number between 0 and 1, got ${String(v)}`);
    sum += v;
  }
  if (sum > 1 + 1e-9)
    throw config(`${where}: zero, fill, OS-shared, tenant-shared and duplicate fractions add up to ${sum.toFixed(4)}; they must not exceed 1 (the rest is unique)`);
  if (!Number.isInteger(p.fillByte) || p.fillByte < 1 || p.fillByte > 255)
    throw config(`${where}.fillByte must be an integer 1..255 (0 would make fill pages zero pages), got ${String(p.fillByte)}`);
  if (!Number.isInteger(p.meanRunPages) || p.meanRunPages < 1 || p.meanRunPages > 65536)
    throw config(`${where}.meanRunPages must be an integer 1..65536, got ${String(p.meanRunPages)}`);
  if (!Number.isInteger(p.meanZeroRunPages) || p.meanZeroRunPages < 1 || p.meanZeroRunPages > 1 << 20)
    throw config(`${where}.meanZeroRunPages must be an integer 1..1048576, got ${String(p.meanZeroRunPages)}`);
}

/** Throws VmsError(CONFIG) naming the VM and the first bad field. */
export function validateSpec(s: SimVmSpec): void {
  const where = `simulated VM "${s.name}"`;
  if (typeof s.name !== 'string' || s.name.length === 0 || s.name.length > 200) throw config(`simulated VM name must be 1..200 characters, got ${JSON.stringify(s.name)}`);
  if (!Number.isSafeInteger(s.memoryBytes) || s.memoryBytes <= 0 || s.memoryBytes % PAGE_SIZE !== 0)
    throw config(`${where}: memoryBytes must be a positive multiple of ${PAGE_SIZE} (4 KiB), got ${String(s.memoryBytes)}`);
  if (s.memoryBytes / PAGE_SIZE > MAX_SIM_PAGES) throw config(`${where}: memoryBytes ${s.memoryBytes} exceeds the simulator's limit of ${MAX_SIM_PAGES} pages (1 TiB)`);
  if (typeof s.osImage !== 'string' || s.osImage.length === 0) throw config(`${where}: osImage must be a non-empty string`);
  if (typeof s.tenant !== 'string' || s.tenant.length === 0) throw config(`${where}: tenant must be a non-empty string`);
  if (!Number.isSafeInteger(s.seed) || s.seed < 0) throw config(`${where}: seed must be a non-negative safe integer, got ${String(s.seed)}`);
  validateProfile(s.profile, `${where} profile`);
  if (!Number.isFinite(s.dirtyPagesPerSec) || s.dirtyPagesPerSec < 0) throw config(`${where}: dirtyPagesPerSec must be a finite number >= 0, got ${String(s.dirtyPagesPerSec)}`);
  const pages = s.memoryBytes / PAGE_SIZE;
  if (!Number.isInteger(s.workingSetPages) || s.workingSetPages < 0 || s.workingSetPages > pages)
    throw config(`${where}: workingSetPages must be an integer 0..${pages} (the VM's page count), got ${String(s.workingSetPages)}`);
  if (s.dirtyPagesPerSec > 0 && s.workingSetPages === 0) throw config(`${where}: dirtyPagesPerSec is ${s.dirtyPagesPerSec} but workingSetPages is 0; give the writes pages to land on`);
}

/** Validates every spec and that names and seeds are unique (equal seeds would mean equal unique pages). */
export function validateFleet(specs: readonly SimVmSpec[]): void {
  const names = new Set<string>();
  const seeds = new Map<number, string>();
  for (const s of specs) {
    validateSpec(s);
    if (names.has(s.name)) throw config(`two simulated VMs are named "${s.name}"; names must be unique`);
    names.add(s.name);
    const other = seeds.get(s.seed);
    if (other !== undefined) throw config(`simulated VMs "${other}" and "${s.name}" have the same seed ${s.seed}; their unique pages would be identical`);
    seeds.set(s.seed, s.name);
  }
}

export interface FleetOptions {
  /** Number of VMs (default 8). */
  vms?: number;
  /** Main RAM per VM in MiB (default 256). */
  memoryMiB?: number;
  /** Tenants, assigned round-robin (default 2). */
  tenants?: number;
  /** OS image of every VM (default "debian-12-linux-6.1"). */
  osImage?: string;
  /** Seed of the first VM; VM i gets seed + i (default 1). */
  seed?: number;
  profile?: SimProfile;
  /** Default 500 pages/s (a real guest measured 458). */
  dirtyPagesPerSec?: number;
  /** Default 4096 pages (16 MiB), capped at the VM's size. */
  workingSetPages?: number;
}

/** The demo fleet: same OS image, tenants round-robin, the measured profile. Validated. */
export function defaultFleet(opts: FleetOptions = {}): SimVmSpec[] {
  const n = opts.vms ?? 8;
  const mib = opts.memoryMiB ?? 256;
  const tenants = opts.tenants ?? 2;
  if (!Number.isInteger(n) || n < 1 || n > 10000) throw config(`fleet size must be an integer 1..10000, got ${String(n)}`);
  if (!Number.isInteger(tenants) || tenants < 1) throw config(`tenants must be a positive integer, got ${String(tenants)}`);
  if (!Number.isFinite(mib) || mib <= 0) throw config(`memoryMiB must be positive, got ${String(mib)}`);
  const memoryBytes = Math.round(mib * 1024 * 1024);
  const pages = Math.floor(memoryBytes / PAGE_SIZE);
  const seed = opts.seed ?? 1;
  const width = String(n - 1).length;
  const specs: SimVmSpec[] = [];
  for (let i = 0; i < n; i++) {
    specs.push({
      name: `vm${String(i).padStart(width, '0')}`,
      memoryBytes,
      osImage: opts.osImage ?? 'debian-12-linux-6.1',
      tenant: `tenant-${tenantName(i % tenants)}`,
      seed: seed + i,
      profile: { ...(opts.profile ?? DEFAULT_PROFILE) },
      dirtyPagesPerSec: opts.dirtyPagesPerSec ?? 500,
      workingSetPages: Math.min(opts.workingSetPages ?? 4096, pages),
    });
  }
  validateFleet(specs);
  return specs;
}

/** a, b, ..., z, aa, ab, ... */
function tenantName(i: number): string {
  let s = '';
  let k = i;
  do {
    s = String.fromCharCode(97 + (k % 26)) + s;
    k = Math.floor(k / 26) - 1;
  } while (k >= 0);
  return s;
}
