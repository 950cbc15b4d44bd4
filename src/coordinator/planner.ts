import { makePlan } from '../plan/plan.js';
import { roundRobinPlan } from '../plan/round-robin.js';
import type { PlanConstraints } from '../plan/types.js';
import type { Planner } from './evacuation.js';

export type PlanStrategy = 'graph' | 'greedy' | 'round-robin';

/**
 * The planner an evacuation uses: 'graph' (sharing-aware placement, the default), 'greedy'
 * (VMScatter's heuristic, the baseline) or 'round-robin' (no sharing awareness, no groups).
 */
export function createPlanner(strategy: PlanStrategy, constraints: PlanConstraints = {}): Planner {
  if (strategy === 'round-robin') return roundRobinPlan;
  return (fleet, targets) => makePlan(fleet, targets, constraints, { placement: strategy });
}
