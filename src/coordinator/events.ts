/** Progress events of one evacuation: drawn by the CLI, streamed by the HTTP API. */
export const Phase = {
  COLLECT: 'collect',
  PLAN: 'plan',
  SCATTER: 'scatter',
  CONVERGE: 'converge',
  VERIFY: 'verify',
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

export type VmState = 'queued' | 'migrating' | 'stopped' | 'resumed' | 'verified' | 'failed';

export type EvacuationEvent =
  | { type: 'phase'; phase: Phase; state: 'start' | 'end' | 'skipped'; ms?: number; detail?: string }
  /** key: a VM name, a target name, or 'all'. */
  | { type: 'progress'; phase: Phase; key: string; done: number; total: number; unit: 'pages' | 'bytes' | 'vms' | 'contents' }
  | { type: 'vm'; vm: string; state: VmState; target?: string; detail?: string };

export type EventSink = (e: EvacuationEvent) => void;
