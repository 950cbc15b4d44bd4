/**
 * The fleet description a source agent sends the coordinator's planner: per VM the distinct
 * content ids of its content index, as a little-endian Uint32Array in base64 (a JSON array of
 * numbers would be about three times larger).
 */
import { endianness } from 'node:os';
import { ErrorCode, VmsError } from '../errors.js';
import type { FleetVm } from '../plan/types.js';
import type { FleetVmWire } from './schemas.js';

const LE = endianness() === 'LE';

export function encodeContents(ids: Uint32Array): string {
  const buf = Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength);
  if (LE) return buf.toString('base64');
  const copy = Buffer.from(buf);
  copy.swap32();
  return copy.toString('base64');
}

export function decodeContents(b64: string, where: string): Uint32Array {
  const buf = Buffer.from(b64, 'base64');
  if (buf.length % 4 !== 0) throw new VmsError(ErrorCode.CONFIG, `${where}: contents must be base64 of little-endian uint32 values (a multiple of 4 bytes), got ${buf.length} bytes`);
  const out = new Uint32Array(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readUInt32LE(i * 4);
  for (let i = 1; i < out.length; i++)
    if (out[i]! <= out[i - 1]!) throw new VmsError(ErrorCode.CONFIG, `${where}: content ids must be ascending and distinct (id ${out[i]} follows ${out[i - 1]})`);
  return out;
}

export function fleetToWire(fleet: readonly FleetVm[]): FleetVmWire[] {
  return fleet.map((v) => ({ name: v.name, memoryBytes: v.memoryBytes, nonZeroPages: v.nonZeroPages, contents: encodeContents(v.contents) }));
}

export function fleetFromWire(wire: readonly FleetVmWire[]): FleetVm[] {
  return wire.map((v, i) => ({ name: v.name, memoryBytes: v.memoryBytes, nonZeroPages: v.nonZeroPages, contents: decodeContents(v.contents, `fleet[${i}] (${v.name})`) }));
}
