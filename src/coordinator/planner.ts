import { roundRobinPlan } from '../plan/round-robin.js';
import type { Planner } from './evacuation.js';

export type PlanStrategy = 'graph' | 'greedy' | 'round-robin';

export function createPlanner(strategy: PlanStrategy): Planner {
  switch (strategy) {
    case 'round-robin':
    case 'graph':
    case 'greedy':
      return roundRobinPlan;
  }
}
