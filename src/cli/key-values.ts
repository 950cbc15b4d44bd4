import { InvalidArgumentError } from 'commander';
import { ErrorCode, VmsError } from '../errors.js';
import { DEFAULT_WORKLOAD, type WorkloadParams } from '../qemu/guest-builder.js';

/**
 * An integer option's value (commander's argument parser): anything else is reported by
 * commander as the option's invalid argument, with the usage hint, not as a crash.
 */
export function intArg(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer, got "${v}".`);
  return n;
}

/**
 * `key=value,key=value` with numeric values and keys among `keys` (matched without regard to
 * case) -> an object with the keys spelled as in `keys`. `flag` names the option in errors.
 */
export function parseNumberPairs(text: string, keys: readonly string[], flag: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of text.split(',').filter(Boolean)) {
    const [k, v, ...rest] = part.split('=');
    const key = keys.find((x) => x.toLowerCase() === (k ?? '').trim().toLowerCase());
    if (!key || v === undefined || rest.length) throw new VmsError(ErrorCode.CONFIG, `${flag}: "${part}" is not key=value with a key among ${keys.join(', ')}`);
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new VmsError(ErrorCode.CONFIG, `${flag}: ${key} must be a number, got "${v}"`);
    out[key] = n;
  }
  return out;
}

export const WORKLOAD_KEYS = Object.keys(DEFAULT_WORKLOAD) as Array<keyof WorkloadParams>;

/** `--workload uniqueMiB=64,dirtyPagesPerTick=256,...` -> the guests' workload parameters. */
export function parseWorkloadSpec(spec: string, flag = '--workload'): Partial<WorkloadParams> {
  if (spec.trim() === '') throw new VmsError(ErrorCode.CONFIG, `${flag} needs key=value,... with keys among ${WORKLOAD_KEYS.join(', ')}`);
  return parseNumberPairs(spec, WORKLOAD_KEYS, flag) as Partial<WorkloadParams>;
}
