/**
 * The plan is data: what the planner decides and the scatter and converge consume.
 * Everything here is JSON-serializable except the typed arrays, which serialize as plain arrays
 * through `serializePlan` (src/plan/serialize.ts).
 */

/** What the planner needs to know about the VMs being moved. */
export interface FleetVm {
  /** Stable name, unique in the job. */
  name: string;
  /** Guest RAM in bytes (capacity accounting). */
  memoryBytes: number;
  /** Distinct non-zero content ids this VM holds, ascending, from the content index. */
  contents: Uint32Array;
  /** Total non-zero pages (with intra-VM repeats), for byte predictions. */
  nonZeroPages: number;
  /** Optional constraint: must go to this target. */
  pinnedTo?: string;
}

export interface FleetTarget {
  name: string;
  /** Memory available for incoming VMs, bytes. */
  capacityBytes: number;
  /** Maximum number of incoming VMs (default: unlimited). */
  maxVms?: number;
}

export interface PlanConstraints {
  /** Groups of VM names of which no two may share a target (anti-affinity). */
  antiAffinity?: string[][];
}

export interface MulticastGroup {
  /** Dense group id, 0..groups.length-1. */
  id: number;
  /** Indices into Plan.targets, ascending. */
  targets: number[];
  /** Content ids sent on this group, ascending. */
  contents: Uint32Array;
  /** Multicast address from the configured pool (set when addresses are assigned). */
  address?: string;
}

export interface Plan {
  targets: string[];
  /** VM name -> index into targets. */
  assignment: Record<string, number>;
  groups: MulticastGroup[];
  /** Group ids in send order. */
  order: number[];
  /** Predicted bytes and traffic (VMScatter's definition: sender link + every target link). */
  predicted: {
    senderBytes: number;
    trafficBytes: number;
    /** The same two figures for a naive plan (no dedup across VMs, unicast per VM). */
    naiveSenderBytes: number;
    naiveTrafficBytes: number;
    joins: number;
    leaves: number;
  };
}
