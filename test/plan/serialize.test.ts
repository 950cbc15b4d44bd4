import { describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { generateClusteredFleet } from '../../src/plan/fleet.js';
import { makePlan } from '../../src/plan/plan.js';
import { parsePlan, planToJson, serializePlan } from '../../src/plan/serialize.js';

const fleet = generateClusteredFleet({ seed: 2, vms: 12, targets: 4, pagesPerVm: 256 });
const plan = makePlan(fleet.vms, fleet.targets, {}, { addresses: ['239.1.1.1', '239.1.1.2', '239.1.1.3', '239.1.1.4'] });

function configError(input: unknown): VmsError {
  try {
    parsePlan(input);
  } catch (e) {
    expect(e).toBeInstanceOf(VmsError);
    expect((e as VmsError).code).toBe(ErrorCode.CONFIG);
    return e as VmsError;
  }
  throw new Error('expected parsePlan to fail');
}

describe('plan serialization', () => {
  it('round-trips', () => {
    const text = serializePlan(plan);
    const back = parsePlan(text);
    expect(back.groups.every((g) => g.contents instanceof Uint32Array)).toBe(true);
    expect(serializePlan(back)).toBe(text);
    expect(back.predicted).toEqual(plan.predicted);
    expect(back.steps).toEqual(plan.steps);
    expect(back.channels?.[0]?.address).toBe('239.1.1.1');
    expect(back.groups.filter((g) => g.multicast).every((g) => g.address !== undefined)).toBe(true);
  });
  it('says where a plan is wrong', () => {
    const good = JSON.parse(serializePlan(plan)) as Record<string, any>;
    const mutate = (f: (d: any) => void) => {
      const d = structuredClone(good);
      f(d);
      return d;
    };
    expect(configError('{').message).toContain('not valid JSON');
    expect(configError(mutate((d) => (d.format = 'x'))).message).toContain('plan format');
    expect(configError(mutate((d) => (d.version = 9))).message).toContain('version');
    expect(configError(mutate((d) => (d.assignment[Object.keys(d.assignment)[0]!] = 99))).message).toMatch(/assignment\.vm-\d+: expected an integer in \[0, 4\)/);
    expect(configError(mutate((d) => (d.groups[0].id = 5))).message).toContain('groups[0].id');
    expect(configError(mutate((d) => (d.groups[0].targets = [1, 0]))).message).toContain('groups[0].targets[1]');
    expect(configError(mutate((d) => (d.groups[0].contents = [5, 3]))).message).toContain('ascending');
    expect(configError(mutate((d) => (d.groups[1].contents = [...d.groups[1].contents, d.groups[0].contents[0]].sort((a: number, b: number) => a - b)))).message).toContain('one group only');
    expect(configError(mutate((d) => d.order.pop())).message).toContain('order');
    expect(configError(mutate((d) => (d.predicted.joins = -1))).message).toContain('predicted.joins');
    expect(configError(mutate((d) => (d.steps[0].group = -3))).message).toContain('steps[0].group');
    expect(configError(mutate((d) => (d.info.placement = 'magic'))).message).toContain('info.placement');
  });
  it('planToJson keeps contents as plain arrays', () => {
    const j = planToJson(plan) as { groups: Array<{ contents: unknown }> };
    expect(Array.isArray(j.groups[0]!.contents)).toBe(true);
  });
});
