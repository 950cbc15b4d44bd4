/**
 * Simulated VMs plugged into the agents: a SourceVm over a SimVm, and an IncomingFactory that
 * rebuilds each VM into a SimTarget. Used by the embedded demo, the tests and the benchmarks.
 */
import type { Writable } from 'node:stream';
import { ErrorCode, VmsError } from '../errors.js';
import { SimVm } from '../memory/sim-vm.js';
import { runPrecopy } from '../memory/sim-source.js';
import { SimTarget } from '../memory/sim-target.js';
import { defaultFleet, type SimVmSpec } from '../memory/sim-profile.js';
import type { EvacuationConfig } from '../config.js';
import type { RamImage } from '../memory/ram-image.js';
import type { IncomingFactory, IncomingVm } from '../transport/converge-target.js';
import type { MigrationHooks, SourceMigrationResult, SourceVm } from './source-vm.js';

export interface SimMigrationOptions {
  /** 0 = unlimited. */
  maxBandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  maxRounds: number;
}

export class SimSourceVm implements SourceVm {
  readonly vm: SimVm;
  constructor(
    readonly spec: SimVmSpec,
    private readonly migration: SimMigrationOptions,
  ) {
    this.vm = new SimVm(spec);
    this.vm.start();
  }

  get name(): string {
    return this.spec.name;
  }

  get memoryBytes(): number {
    return this.spec.memoryBytes;
  }

  get ram(): SimVm {
    return this.vm;
  }

  async migrate(out: Writable, signal: AbortSignal, hooks?: MigrationHooks): Promise<SourceMigrationResult> {
    let pass = 0;
    let stopped = false;
    const r = await runPrecopy(this.vm, out, {
      maxBandwidthBytesPerSec: this.migration.maxBandwidthBytesPerSec,
      downtimeLimitMs: this.migration.downtimeLimitMs,
      maxRounds: this.migration.maxRounds,
      signal,
      ...(hooks
        ? {
            onProgress: (p) => {
              if (p.phase === 'iterate' && p.round > pass) {
                pass = p.round;
                hooks.onPass?.(pass);
              } else if (p.phase === 'stop-copy' && !stopped) {
                stopped = true;
                hooks.onStopped?.();
              }
            },
          }
        : {}),
    });
    const resentPages = r.roundStats.slice(1).reduce((sum, x) => sum + x.pages, 0);
    return { rounds: r.rounds, forced: r.forced, stoppedAtEpochMs: performance.timeOrigin + r.stoppedAt, resentPages, deviceStateBytes: r.deviceTail.length };
  }

  resume(): void {
    this.vm.cont();
  }
}

/**
 * The simulated VMs a fleet configuration describes, running (dirtying) from now on. VM i gets
 * OS image i mod osImages; names get `namePrefix` (a source agent prefixes its host name).
 */
export function simFleetFromConfig(cfg: Pick<EvacuationConfig, 'fleet' | 'migration'>, namePrefix = ''): SimSourceVm[] {
  const specs = defaultFleet({
    vms: cfg.fleet.vms,
    memoryMiB: cfg.fleet.memoryMiB,
    tenants: cfg.fleet.tenants,
    seed: cfg.fleet.seed,
    dirtyPagesPerSec: cfg.fleet.dirtyPagesPerSec,
    workingSetPages: cfg.fleet.workingSetPages,
  });
  specs.forEach((s, i) => {
    s.name = namePrefix + s.name;
    if (cfg.fleet.osImages > 1) s.osImage = `os-image-${i % cfg.fleet.osImages}`;
  });
  const migration = {
    maxBandwidthBytesPerSec: cfg.migration.maxBandwidthMiBps * 1024 * 1024,
    downtimeLimitMs: cfg.migration.downtimeLimitMs,
    maxRounds: cfg.migration.maxRounds,
  };
  return specs.map((s) => new SimSourceVm(s, migration));
}

/** Rebuilds incoming VMs into simulated targets and keeps their images for verification. */
export class SimTargetHost {
  readonly images = new Map<string, RamImage>();
  readonly deviceState = new Map<string, Buffer>();

  readonly incoming: IncomingFactory = (hello): IncomingVm => {
    const target = new SimTarget();
    const done = target.done.then((r) => {
      this.images.set(hello.vm, r.image);
      this.deviceState.set(hello.vm, r.deviceState);
      return { resumedAtEpochMs: performance.timeOrigin + r.resumedAt };
    });
    return { stream: target.stream, done, abort: (err) => target.abort(err) };
  };
}

/** Byte-for-byte comparison of a rebuilt image with its stopped source. */
export function verifySimVm(source: SimSourceVm, host: SimTargetHost): { verified: boolean; detail?: string } {
  const image = host.images.get(source.name);
  if (!image) return { verified: false, detail: 'no rebuilt image on the target' };
  if (!source.vm.stopped) throw new VmsError(ErrorCode.VERIFY, `source VM ${source.name} is still running; compare only after switchover`);
  const cmp = source.vm.sameAs(image);
  return cmp.equal ? { verified: true } : { verified: false, detail: `first differing page ${cmp.firstDiffPage}` };
}
