/**
 * What a target needs to take part in one scatter: the job's groups, schedule, addresses,
 * datagram geometry and (optionally) the per-job authentication key. The coordinator hands it
 * to each target agent over the control channel (HTTP); tests pass it directly or as JSON.
 */
import { randomBytes } from 'node:crypto';
import { ErrorCode, VmsError } from '../errors.js';
import type { Plan } from '../plan/types.js';
import { datagramLayout, parseAuthKey, type DatagramLayout } from '../wire/datagram.js';
import type { Peer } from './scatter-transport.js';

export const SCATTER_DEFAULTS = {
  /** Organization-local scope (RFC 2365). */
  addressPool: '239.192.0.0/14',
  iface: '127.0.0.1',
  mtu: 9000,
  pagesPerDatagram: 2,
  /** Groups a target joins ahead of its turn, the current one included (with planner channels: channels + 1). */
  window: 3,
  dataPortBase: 47100,
  dataPortSpan: 800,
} as const;

export interface SessionGroup {
  id: number;
  /** Target indices, ascending. */
  targets: number[];
  /** Content ids, ascending. */
  contents: Uint32Array;
  address: string;
}

export interface ScatterSession {
  job: number;
  /** Per-job AES key (hex, 16 or 32 bytes). Absent: datagrams are not authenticated. */
  key?: string;
  targets: string[];
  groups: SessionGroup[];
  /** Group ids in send order. */
  order: number[];
  /** UDP port of every group. */
  dataPort: number;
  /** Where targets send control messages (join confirms, NACKs, reports). */
  sender: Peer;
  mtu: number;
  pagesPerDatagram: number;
  window: number;
}

/** JSON form: typed arrays as plain arrays. */
export interface ScatterSessionJson extends Omit<ScatterSession, 'groups'> {
  groups: Array<Omit<SessionGroup, 'contents'> & { contents: number[] }>;
}

export function sessionToJson(s: ScatterSession): ScatterSessionJson {
  return { ...s, groups: s.groups.map((g) => ({ ...g, contents: Array.from(g.contents) })) };
}

/** Parse and validate a session from JSON (a child process's argv file, an HTTP body). */
export function sessionFromJson(j: unknown): ScatterSession {
  const bad = (what: string): never => {
    throw new VmsError(ErrorCode.CONFIG, `invalid scatter session: ${what}`);
  };
  if (typeof j !== 'object' || j === null) bad('expected an object');
  const o = j as Record<string, unknown>;
  const u32 = (v: unknown, name: string): number => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff ? (v as number) : bad(`${name} must be a u32, got ${String(v)}`));
  const targets = Array.isArray(o.targets) && o.targets.every((t) => typeof t === 'string') ? (o.targets as string[]) : bad('targets must be strings');
  if (!Array.isArray(o.groups)) bad('groups must be an array');
  const groups = (o.groups as unknown[]).map((g, i) => {
    const gg = g as Record<string, unknown>;
    const ts = Array.isArray(gg.targets) ? gg.targets.map((t) => u32(t, `groups[${i}].targets`)) : bad(`groups[${i}].targets`);
    if (ts.some((t) => t >= targets.length)) bad(`groups[${i}] names a target beyond ${targets.length}`);
    const cs = Array.isArray(gg.contents) ? Uint32Array.from(gg.contents.map((c) => u32(c, `groups[${i}].contents`))) : bad(`groups[${i}].contents`);
    const address = typeof gg.address === 'string' && isMulticastAddress(gg.address) ? gg.address : bad(`groups[${i}].address must be an IPv4 multicast address`);
    return { id: u32(gg.id, `groups[${i}].id`), targets: ts, contents: cs, address };
  });
  const order = Array.isArray(o.order) ? o.order.map((g) => u32(g, 'order')) : bad('order');
  const sender = o.sender as Record<string, unknown> | undefined;
  if (!sender || typeof sender.address !== 'string') bad('sender.address');
  const s: ScatterSession = {
    job: u32(o.job, 'job'),
    targets,
    groups,
    order,
    dataPort: u32(o.dataPort, 'dataPort'),
    sender: { address: sender!.address as string, port: u32(sender!.port, 'sender.port') },
    mtu: u32(o.mtu, 'mtu'),
    pagesPerDatagram: u32(o.pagesPerDatagram, 'pagesPerDatagram'),
    window: u32(o.window, 'window'),
  };
  if (o.key !== undefined) {
    if (typeof o.key !== 'string' || !parseAuthKey(o.key)) bad('key must be 16 or 32 bytes in hex');
    s.key = o.key as string;
  }
  validateSession(s);
  return s;
}

export function validateSession(s: ScatterSession): void {
  const ids = new Set(s.groups.map((g) => g.id));
  if (ids.size !== s.groups.length) throw new VmsError(ErrorCode.CONFIG, 'scatter session: duplicate group ids');
  for (const g of s.order) if (!ids.has(g)) throw new VmsError(ErrorCode.CONFIG, `scatter session: order names unknown group ${g}`);
  if (new Set(s.order).size !== s.order.length) throw new VmsError(ErrorCode.CONFIG, 'scatter session: order repeats a group');
  if (s.window < 1) throw new VmsError(ErrorCode.CONFIG, `scatter session: window must be >= 1, got ${s.window}`);
  if (s.dataPort < 1 || s.dataPort > 65535) throw new VmsError(ErrorCode.CONFIG, `scatter session: dataPort ${s.dataPort} out of range`);
  for (const g of s.groups) {
    for (let i = 1; i < g.contents.length; i++) {
      if (g.contents[i]! <= g.contents[i - 1]!) throw new VmsError(ErrorCode.CONFIG, `scatter session: group ${g.id} contents must be strictly ascending`);
    }
  }
  layoutOf(s);
}

export function layoutOf(s: ScatterSession): DatagramLayout {
  try {
    return datagramLayout(s.mtu, s.key !== undefined, s.pagesPerDatagram);
  } catch (err) {
    throw new VmsError(ErrorCode.CONFIG, `scatter session: ${(err as Error).message}`, { cause: err });
  }
}

/** Parse "a.b.c.d/len" into [first address as u32, size]. */
export function parsePool(cidr: string): { base: number; size: number } {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr);
  if (!m) throw new VmsError(ErrorCode.CONFIG, `address pool must be a.b.c.d/len, got "${cidr}"`);
  const parts = m.slice(1, 5).map(Number);
  const len = Number(m[5]);
  if (parts.some((p) => p > 255) || len < 4 || len > 30) throw new VmsError(ErrorCode.CONFIG, `address pool "${cidr}" is not a valid prefix (length 4..30)`);
  const ip = ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
  const size = 2 ** (32 - len);
  const base = Math.floor(ip / size) * size;
  if (!isMulticastAddress(u32ToIp(base)) || !isMulticastAddress(u32ToIp(base + size - 1))) {
    throw new VmsError(ErrorCode.CONFIG, `address pool "${cidr}" is not inside 224.0.0.0/4`);
  }
  if (base >>> 24 === 224 && ((base >>> 8) & 0xffff) === 0) {
    throw new VmsError(ErrorCode.CONFIG, `address pool "${cidr}" overlaps 224.0.0.0/24 (link-local control)`);
  }
  return { base, size };
}

/**
 * One address per group from the pool. The job id shifts the start so that concurrent jobs on
 * one segment rarely share addresses (a shared address only costs receive work: datagrams of
 * another job are dropped by job id).
 */
export function assignAddresses(groupIds: readonly number[], pool: string, job: number): Map<number, string> {
  const { base, size } = parsePool(pool);
  const usable = size - 2; // skip the first and last address of the block
  if (groupIds.length > usable) throw new VmsError(ErrorCode.CONFIG, `${groupIds.length} groups need more addresses than pool ${pool} has (${usable})`);
  const start = (job * 2654435761) % usable;
  const out = new Map<number, string>();
  groupIds.forEach((g, i) => out.set(g, u32ToIp(base + 1 + ((start + i) % usable))));
  return out;
}

export function u32ToIp(v: number): string {
  return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

export function isMulticastAddress(a: string): boolean {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(a);
  if (!m) return false;
  const p = m.slice(1).map(Number);
  return p.every((x) => x <= 255) && p[0]! >= 224 && p[0]! <= 239;
}

export interface SessionOptions {
  job?: number;
  /** 'random' (default): a fresh per-job key; null: no authentication; or a 16/32-byte key. */
  key?: Buffer | 'random' | null;
  sender: Peer;
  dataPort?: number;
  mtu?: number;
  pagesPerDatagram?: number;
  window?: number;
  addressPool?: string;
}

/** The subset of a Plan the scatter needs (channels: optional shared addresses, see src/plan/schedule.ts). */
export type ScatterPlan = Pick<Plan, 'targets' | 'groups' | 'order'> & Partial<Pick<Plan, 'channels'>>;

/**
 * Build a session from a plan. Only the groups in `order` are multicast (the planner leaves
 * groups it sends by unicast out of it). A group's address: its own, else its channel's (groups
 * on one channel share it), else one from the pool.
 */
export function sessionFromPlan(plan: ScatterPlan, o: SessionOptions): ScatterSession {
  const job = (o.job ?? randomBytes(4).readUInt32BE(0)) >>> 0;
  const pool = o.addressPool ?? SCATTER_DEFAULTS.addressPool;
  const inOrder = new Set(plan.order);
  const groups = plan.groups.filter((g) => inOrder.has(g.id));
  const channels = plan.channels ?? [];
  const useChannels = channels.length > 0 && groups.every((g) => g.channel !== undefined && g.channel < channels.length);
  // Pool addresses: one per channel, or one per group.
  const poolKeys = useChannels ? channels.map((c) => c.id) : groups.map((g) => g.id);
  const assigned = assignAddresses(poolKeys, pool, job);
  const key = o.key === undefined || o.key === 'random' ? randomBytes(16) : o.key;
  const addressOf = (g: (typeof groups)[number]): string => {
    if (g.address) return g.address;
    if (useChannels) {
      const ch = channels[g.channel!]!;
      return ch.address ?? assigned.get(ch.id)!;
    }
    return assigned.get(g.id)!;
  };
  const s: ScatterSession = {
    job,
    targets: [...plan.targets],
    groups: groups.map((g) => ({
      id: g.id,
      targets: [...g.targets].sort((a, b) => a - b),
      contents: g.contents,
      address: addressOf(g),
    })),
    order: [...plan.order],
    dataPort: o.dataPort ?? SCATTER_DEFAULTS.dataPortBase + (job % SCATTER_DEFAULTS.dataPortSpan),
    sender: { ...o.sender },
    mtu: o.mtu ?? SCATTER_DEFAULTS.mtu,
    pagesPerDatagram: o.pagesPerDatagram ?? SCATTER_DEFAULTS.pagesPerDatagram,
    // With channels, a target keeps its channel from one of its groups to the next on it.
    window: o.window ?? (useChannels ? Math.max(SCATTER_DEFAULTS.window, channels.length + 1) : SCATTER_DEFAULTS.window),
  };
  if (key) s.key = key.toString('hex');
  validateSession(s);
  return s;
}

/** Bit `i` of a per-datagram (or per-position) bitmap, as the sender and receivers keep them. */
export function bit(bits: Uint8Array, i: number): boolean {
  return (bits[i >>> 3]! & (1 << (i & 7))) !== 0;
}
