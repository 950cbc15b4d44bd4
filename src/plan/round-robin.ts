import { ErrorCode, VmsError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { FleetTarget, FleetVm, Plan } from './types.js';

/**
 * The plan without any sharing awareness: VMs dealt to targets in turn (skipping targets that
 * are full), no multicast groups. The reference point the real planner is compared with, and
 * the plan for converge-only runs.
 */
export function roundRobinPlan(fleet: FleetVm[], targets: FleetTarget[]): Plan {
  const used = targets.map(() => ({ bytes: 0, vms: 0 }));
  const assignment: Record<string, number> = {};
  let next = 0;
  for (const vm of fleet) {
    let placed = -1;
    for (let k = 0; k < targets.length; k++) {
      const t = (next + k) % targets.length;
      const cap = targets[t]!;
      if (used[t]!.bytes + vm.memoryBytes <= cap.capacityBytes && used[t]!.vms < (cap.maxVms ?? Infinity)) {
        placed = t;
        break;
      }
    }
    if (placed < 0) throw new VmsError(ErrorCode.PLAN, `VM ${vm.name} (${vm.memoryBytes} bytes) fits no target: every target is full`);
    used[placed]!.bytes += vm.memoryBytes;
    used[placed]!.vms++;
    assignment[vm.name] = placed;
    next = (placed + 1) % targets.length;
  }
  const plain = fleet.reduce((s, v) => s + v.nonZeroPages * PAGE_SIZE, 0);
  return {
    targets: targets.map((t) => t.name),
    assignment,
    groups: [],
    order: [],
    predicted: { senderBytes: plain, trafficBytes: 2 * plain, naiveSenderBytes: plain, naiveTrafficBytes: 2 * plain, joins: 0, leaves: 0 },
  };
}
