import type { Writable } from 'node:stream';
import type { PageSource } from '../memory/page.js';

/** What the source agent needs from a VM it migrates: a simulated VM or a QEMU guest. */
export interface SourceVm {
  readonly name: string;
  readonly memoryBytes: number;
  /** Guest RAM as the scan reads it (every block the source can read, in stream order). */
  readonly ram: PageSource;
  /**
   * Run the VM's own pre-copy into `out` and end it. Resolves once the VM is stopped and its
   * whole stream written; must leave the VM running (resumed) when it rejects.
   */
  migrate(out: Writable, signal: AbortSignal, hooks?: MigrationHooks): Promise<SourceMigrationResult>;
  /** Resume a VM stopped for a migration that then failed: the source keeps running. */
  resume(): void | Promise<void>;
}

export interface MigrationHooks {
  /**
   * A pre-copy pass has started: 1 is the first (every page), 2 and on resend what the guest
   * dirtied meanwhile (QEMU's dirty-sync-count). Seen late by up to a poll interval on QEMU.
   */
  onPass?: (pass: number) => void;
  /** The VM has just stopped for its stop-and-copy: its downtime starts. */
  onStopped?: () => void;
}

export interface SourceMigrationResult {
  rounds: number;
  /** Stop-and-copy was forced after the round limit (the dirty rate outran the link). */
  forced: boolean;
  /** Epoch ms (sub-ms) when the source VM stopped. */
  stoppedAtEpochMs: number;
  /** PAGE records sent again after the first pass (dirtied while migrating), when known. */
  resentPages?: number;
  /** Bytes of the device-state tail, when known. */
  deviceStateBytes?: number;
}

/** Sub-millisecond wall clock comparable across processes on one host. */
export function epochNowMs(): number {
  return performance.timeOrigin + performance.now();
}
