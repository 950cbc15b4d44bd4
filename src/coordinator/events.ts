/** Progress events of one evacuation: drawn by the CLI, streamed by the HTTP API. */
export const Phase = {
  COLLECT: 'collect',
  PLAN: 'plan',
  SCATTER: 'scatter',
  CONVERGE: 'converge',
  VERIFY: 'verify',
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

/**
 * A VM's way through an evacuation. `failed`: not migrated, it keeps running on its source.
 * `resumed`: switched over, it runs on its target and its source no longer holds it; then
 * `verified`, or `unverified` when the check after switchover failed (its target unreachable, or
 * its RAM differs): it stays its target's all the same.
 */
export type VmState = 'queued' | 'migrating' | 'stopped' | 'resumed' | 'verified' | 'unverified' | 'failed';

/** States in which a VM runs on its target and no longer on its source. */
export const MOVED_STATES: ReadonlySet<string> = new Set<VmState>(['resumed', 'verified', 'unverified']);

export type EvacuationEvent =
  | { type: 'phase'; phase: Phase; state: 'start' | 'end' | 'skipped'; ms?: number; detail?: string }
  /** key: a VM name, a target name, or 'all'. */
  | { type: 'progress'; phase: Phase; key: string; done: number; total: number; unit: 'pages' | 'bytes' | 'vms' | 'contents' }
  | { type: 'vm'; vm: string; state: VmState; target?: string; detail?: string };

export type EventSink = (e: EvacuationEvent) => void;
