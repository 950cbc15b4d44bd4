/**
 * Shared by the scatter's child-process entry points (sender-main, receiver-main), which the
 * network-namespace tests and `vmscatter bench scatter` run inside other namespaces:
 * deterministic synthetic page contents, digests, argv parsing, and the JSON they write back.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ContentStore } from '../memory/content-store.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { ReceiverCounters } from '../wire/datagram.js';
import { sessionFromJson, type ScatterSession } from './scatter-session.js';

/** Fill dst[off..off+PAGE_SIZE) with the synthetic content `id` of data set `seed`. */
export function syntheticPage(seed: number, id: number, dst: Buffer, off = 0): void {
  let x = (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(id + 1, 0x85ebca6b)) >>> 0 || 1;
  for (let w = 0; w < PAGE_SIZE; w += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    dst.writeUInt32LE(x, off + w);
  }
  dst.writeUInt32LE(id >>> 0, off); // readable in a hex dump
}

/**
 * A content source over synthetic pages for `ids`, generated once into one arena. Looked up
 * through an id-indexed array, as the content index does (a Map cost the sender of `bench
 * scatter` 0.7 us per page, in its timed window; CPU profile).
 */
export function syntheticContentSource(seed: number, ids: Iterable<number>): { contentBytes: (id: number) => Buffer | undefined; bytes: number } {
  const list = [...ids];
  const arena = Buffer.allocUnsafe(list.length * PAGE_SIZE);
  const end = list.reduce((m, id) => Math.max(m, id + 1), 0);
  list.forEach((id, i) => syntheticPage(seed, id, arena, i * PAGE_SIZE));
  const page = (s: number): Buffer => arena.subarray(s * PAGE_SIZE, (s + 1) * PAGE_SIZE);
  if (end > 4 * list.length + 65536) {
    // Sparse ids (tests): a Map.
    const slot = new Map(list.map((id, i) => [id, i]));
    return { contentBytes: (id) => (slot.has(id) ? page(slot.get(id)!) : undefined), bytes: arena.length };
  }
  const slot = new Int32Array(end).fill(-1);
  list.forEach((id, i) => (slot[id] = i));
  return { contentBytes: (id) => (id >= 0 && id < end && slot[id]! >= 0 ? page(slot[id]!) : undefined), bytes: arena.length };
}

/** Short digest of one page (first 16 hex digits of SHA-256). */
export function pageDigest(page: Buffer): string {
  return createHash('sha256').update(page).digest('hex').slice(0, 16);
}

/** SHA-256 over (id, page) for `ids` in ascending order, from the store; missing ids count as absent. */
export function storeDigest(store: ContentStore, ids: Uint32Array): string {
  const h = createHash('sha256');
  const idb = Buffer.allocUnsafe(4);
  for (const id of ids) {
    const p = store.get(id);
    if (!p) continue;
    idb.writeUInt32BE(id, 0);
    h.update(idb);
    h.update(p);
  }
  return h.digest('hex');
}

/** The same digest computed from synthetic contents. */
export function syntheticDigest(seed: number, ids: Uint32Array | number[]): string {
  const h = createHash('sha256');
  const idb = Buffer.allocUnsafe(4);
  const page = Buffer.allocUnsafe(PAGE_SIZE);
  for (const id of [...ids].sort((a, b) => a - b)) {
    idb.writeUInt32BE(id, 0);
    syntheticPage(seed, id, page);
    h.update(idb);
    h.update(page);
  }
  return h.digest('hex');
}

export interface ReceiverOutput {
  target: number;
  ended: string;
  /** Held content ids of this target's groups, ascending. */
  held: number[];
  /** pageDigest of each held content, aligned with `held` (with --digests). */
  digests?: string[];
  /** storeDigest over `held`. */
  setDigest: string;
  counters: ReceiverCounters;
  /** Wall-clock ms: receiver opened, ended. */
  openedAt: number;
  endedAt: number;
  /** CPU time of the receiver process from open to end (before digests), ms. */
  cpuMs: { user: number; system: number };
  /** Minor page faults of the receiver process over the same span (first touches of memory). */
  pageFaults: number;
  /** Event-loop delay over the run (how long datagrams may have waited), ms. */
  loopDelayMs: { max: number; p99: number; mean: number };
}

export function parseArgs(argv: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument "${a}"`);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out.set(a.slice(2), 'true');
    else {
      out.set(a.slice(2), next);
      i++;
    }
  }
  return out;
}

export function readSessionFile(path: string): ScatterSession {
  return sessionFromJson(JSON.parse(readFileSync(path, 'utf8')));
}

/** `--udp-offload on|off` (default on). */
export function offloadArg(args: Map<string, string>): boolean {
  const v = args.get('udp-offload') ?? 'on';
  if (v !== 'on' && v !== 'off') throw new Error(`--udp-offload must be on or off, got "${v}"`);
  return v === 'on';
}
