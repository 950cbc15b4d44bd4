/**
 * makePlan: placement, multicast groups and schedule for one evacuation, with the predicted bytes
 * (traffic model in objective.ts) against plain per-VM migration.
 */
import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import { exhaustivePlacement } from './exhaustive.js';
import { greedyPlacement } from './greedy.js';
import {
  buildGroups,
  DEFAULT_MAX_GROUPS,
  DEFAULT_MIN_TARGETS_FOR_SCATTER,
  groupTrafficPages,
  type GroupOptions,
} from './groups.js';
import { AssignmentState, buildProblem, formatBytes, trafficPages, type PlacementProblem } from './objective.js';
import { placeVms, type PlacementOptions, type PlacementResult } from './placement.js';
import { DEFAULT_MAX_GROUPS_PER_RECEIVER, orderGroups, unorderedSchedule, type ScheduleOptions } from './schedule.js';
import type { FleetTarget, FleetVm, Plan, PlanConstraints } from './types.js';

export type PlacementAlgorithm = 'graph' | 'greedy' | 'exhaustive';

export interface PlanOptions extends PlacementOptions, GroupOptions, ScheduleOptions {
  /** 'graph' (default): the sharing-aware planner; 'greedy': VMScatter's; 'exhaustive': optimum (small fleets). */
  placement?: PlacementAlgorithm;
  /** Multicast addresses for the channels, used in order (default: none assigned). */
  addresses?: readonly string[];
}

export interface PlanStats {
  problem: PlacementProblem;
  placement?: PlacementResult;
  seconds: { problem: number; placement: number; groups: number; schedule: number; total: number };
}

export function makePlan(
  vms: readonly FleetVm[],
  targets: readonly FleetTarget[],
  constraints: PlanConstraints = {},
  options: PlanOptions = {},
): Plan {
  return makePlanWithStats(vms, targets, constraints, options).plan;
}

export function makePlanWithStats(
  vms: readonly FleetVm[],
  targets: readonly FleetTarget[],
  constraints: PlanConstraints = {},
  options: PlanOptions = {},
): { plan: Plan; stats: PlanStats } {
  const t0 = performance.now();
  const problem = buildProblem(vms, targets, constraints);
  const t1 = performance.now();
  const algorithm = options.placement ?? 'graph';
  let assignment: Int32Array;
  let placement: PlacementResult | undefined;
  let greedyTraffic: number | null = null;
  if (algorithm === 'graph') {
    placement = placeVms(problem, vms, options);
    assignment = placement.assignment;
    greedyTraffic = placement.greedyTrafficPages;
  } else if (algorithm === 'greedy') {
    const g = greedyPlacement(problem, new AssignmentState(problem));
    if (!g.complete)
      throw new VmsError(
        ErrorCode.PLAN,
        `VMScatter's greedy could not pack the fleet: ${g.unplaced
          .slice(0, 8)
          .map((v) => `${problem.vmNames[v]} (${formatBytes(problem.memory[v]!)})`)
          .join(', ')} found no target with room. Use the graph placement, or add capacity.`,
      );
    assignment = g.assignment;
    greedyTraffic = trafficPages(problem, g.sharedCost);
  } else if (algorithm === 'exhaustive') {
    const g = greedyPlacement(problem, new AssignmentState(problem));
    assignment = exhaustivePlacement(problem, g.complete ? { incumbent: g.assignment } : {}).assignment;
    if (g.complete) greedyTraffic = trafficPages(problem, g.sharedCost);
  } else throw new VmsError(ErrorCode.CONFIG, `placement must be 'graph', 'greedy' or 'exhaustive', got ${String(algorithm)}`);
  const t2 = performance.now();

  const maxGroups = options.maxGroups ?? DEFAULT_MAX_GROUPS;
  const minTargets = options.minTargetsForScatter ?? DEFAULT_MIN_TARGETS_FOR_SCATTER;
  const grouped = buildGroups(vms, assignment, targets.length, { maxGroups, minTargetsForScatter: minTargets });
  const t3 = performance.now();
  const schedule = orderGroups(grouped.groups, targets.length, options);
  const unordered = unorderedSchedule(grouped.groups, options);
  const t4 = performance.now();

  const addresses = options.addresses ?? [];
  if (addresses.length > 0 && addresses.length < schedule.channels)
    throw new VmsError(ErrorCode.CONFIG, `the schedule uses ${schedule.channels} channels but only ${addresses.length} addresses were given`);
  const channels = Array.from({ length: schedule.channels }, (_, id) =>
    addresses[id] !== undefined ? { id, address: addresses[id]! } : { id },
  );
  const groups = grouped.groups;
  for (const step of schedule.steps) {
    const g = groups[step.group]!;
    g.channel = step.channel;
    const a = channels[step.channel]!.address;
    if (a !== undefined) g.address = a;
  }

  // Multicast groups: one copy on the sender link, one per target link. Groups below
  // minTargetsForScatter go by each target's converge stream: one copy per target on both ends
  // (the same as multicast when the group has one target, the default).
  let senderPages = 0;
  let multicastPages = 0;
  let traffic = 0;
  for (const g of groups) {
    const n = g.contents.length;
    const k = g.targets.length;
    if (g.multicast) {
      multicastPages += n;
      senderPages += n;
      traffic += n * (1 + k);
    } else {
      senderPages += n * k;
      traffic += 2 * n * k;
    }
  }
  const unicastExtra = traffic - groupTrafficPages(groups);
  const load = targets.map((t) => ({ vms: 0, memoryBytes: 0, capacityBytes: t.capacityBytes }));
  const record: Record<string, number> = {};
  for (let v = 0; v < vms.length; v++) {
    const t = assignment[v]!;
    record[vms[v]!.name] = t;
    load[t]!.vms++;
    load[t]!.memoryBytes += vms[v]!.memoryBytes;
  }
  const placementTraffic = traffic - grouped.mergeCostPages - unicastExtra;
  const plan: Plan = {
    targets: targets.map((t) => t.name),
    assignment: record,
    groups,
    order: schedule.order,
    predicted: {
      senderBytes: senderPages * PAGE_SIZE,
      trafficBytes: traffic * PAGE_SIZE,
      naiveSenderBytes: problem.nonZeroPages * PAGE_SIZE,
      naiveTrafficBytes: 2 * problem.nonZeroPages * PAGE_SIZE,
      joins: schedule.joins,
      leaves: schedule.leaves,
      unorderedJoins: unordered.joins,
      unorderedLeaves: unordered.leaves,
      multicastSenderBytes: multicastPages * PAGE_SIZE,
      placementTrafficBytes: placementTraffic * PAGE_SIZE,
      mergeExtraTrafficBytes: grouped.mergeCostPages * PAGE_SIZE,
      ...(unicastExtra > 0 ? { unicastExtraTrafficBytes: unicastExtra * PAGE_SIZE } : {}),
      ...(greedyTraffic !== null ? { greedyTrafficBytes: greedyTraffic * PAGE_SIZE } : {}),
    },
    channels,
    steps: schedule.steps,
    load,
    info: {
      placement: algorithm,
      ...(placement ? { graphMethod: placement.graphMethod } : {}),
      multicastGroups: schedule.order.length,
      multicastGroupsBeforeCap: grouped.multicastGroupsBeforeCap,
      maxGroups,
      minTargetsForScatter: minTargets,
      maxGroupsPerReceiver: options.maxGroupsPerReceiver ?? DEFAULT_MAX_GROUPS_PER_RECEIVER,
    },
  };
  const t5 = performance.now();
  return {
    plan,
    stats: {
      problem,
      ...(placement ? { placement } : {}),
      seconds: {
        problem: (t1 - t0) / 1e3,
        placement: (t2 - t1) / 1e3,
        groups: (t3 - t2) / 1e3,
        schedule: (t4 - t3) / 1e3,
        total: (t5 - t0) / 1e3,
      },
    },
  };
}
