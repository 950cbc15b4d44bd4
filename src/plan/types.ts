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
  /**
   * False when the group has fewer targets than `minTargetsForScatter` (default 2): its contents
   * go by the converge stream, and it is not in `Plan.order`. makePlan always sets it.
   */
  multicast?: boolean;
  /** Channel (index into Plan.channels) the group is sent on; set for multicast groups. */
  channel?: number;
}

/** A multicast channel: the address groups are sent on in turn (see src/plan/schedule.ts). */
export interface PlanChannel {
  id: number;
  address?: string;
}

/**
 * One turn of the schedule: `join` targets join the channel after its previous group finished
 * and before this turn; `leave` targets leave it after this turn.
 */
export interface PlanStep {
  group: number;
  channel: number;
  join: number[];
  leave: number[];
}

/** Per-target load after placement. */
export interface PlanTargetLoad {
  vms: number;
  memoryBytes: number;
  capacityBytes: number;
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
    /** Joins and leaves of the same groups sent in id order (the unordered baseline). */
    unorderedJoins?: number;
    unorderedLeaves?: number;
    /** Sender bytes that go by multicast (groups with multicast: true). */
    multicastSenderBytes?: number;
    /** Traffic of the placement before the group cap merged groups, and what merging added. */
    placementTrafficBytes?: number;
    mergeExtraTrafficBytes?: number;
    /** What sending groups below minTargetsForScatter by unicast (once per target) added. */
    unicastExtraTrafficBytes?: number;
    /** Traffic VMScatter's greedy placement would give (when computed). */
    greedyTrafficBytes?: number;
  };
  /** Channels the multicast groups are sent on, in turn (makePlan sets it). */
  channels?: PlanChannel[];
  /** The schedule: one step per entry of `order` (makePlan sets it). */
  steps?: PlanStep[];
  /** Per target, in `targets` order (makePlan sets it). */
  load?: PlanTargetLoad[];
  /** How the plan was made (makePlan sets it). */
  info?: {
    placement: 'graph' | 'greedy' | 'exhaustive';
    graphMethod?: 'exact' | 'minhash';
    multicastGroups: number;
    multicastGroupsBeforeCap: number;
    maxGroups: number;
    minTargetsForScatter: number;
    maxGroupsPerReceiver: number;
  };
}
