import { describe, expect, it } from 'vitest';
import { MigrationPriority, TURN_AFTER_PASSES } from '../../src/agent/migration-priority.js';

/** A pass past the ones a VM may take side by side. */
const LATE = TURN_AFTER_PASSES + 1;

/** Whether `p` has settled after the pending callbacks have run. */
async function settled(p: Promise<void>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('MigrationPriority: stop-and-copy first', () => {
  const stopOnly = (maxHoldMs?: number): MigrationPriority => new MigrationPriority({ convergeInTurn: false, ...(maxHoldMs ? { maxHoldMs } : {}) });

  it('lets every write go while no VM is stopped, and a stopped VM its own', () => {
    const p = stopOnly();
    expect(p.turn('a')).toBeNull();
    p.enter('a');
    expect(p.turn('a')).toBeNull();
    p.leave('a');
    expect(p.turn('b')).toBeNull();
    expect(p.stats.stopCopyFirst.holds).toBe(0);
  });

  it("holds the others' writes until the last stopped VM leaves", async () => {
    const p = stopOnly();
    p.enter('a');
    p.enter('b');
    const held = p.turn('c')!;
    expect(held).not.toBeNull();
    p.leave('a');
    expect(await settled(held)).toBe(false);
    p.leave('b');
    expect(await settled(held)).toBe(true);
    expect(p.stats.stopCopyFirst.holds).toBe(1);
    expect(p.turn('c')).toBeNull();
  });

  it('releases the held writes of a VM that stops itself (its round ended with writes queued)', async () => {
    const p = stopOnly();
    p.enter('a');
    const ofB = p.turn('b')!;
    const ofC = p.turn('c')!;
    p.enter('b');
    expect(await settled(ofB)).toBe(true);
    expect(await settled(ofC)).toBe(false);
    p.leave('a');
    expect(await settled(ofC)).toBe(false); // b is still stopped
    p.leave('b');
    expect(await settled(ofC)).toBe(true);
  });

  it('holds no longer than maxHoldMs, whatever happens to the stopped VM', async () => {
    const p = stopOnly(30);
    p.enter('a'); // never leaves
    const held = p.turn('b')!;
    expect(await settled(held)).toBe(false);
    await held;
    expect(p.stats.stopCopyFirst.heldMs).toBeGreaterThan(0);
  });

  it('leave of a VM that never entered changes nothing', async () => {
    const p = stopOnly();
    p.enter('a');
    const held = p.turn('b')!;
    p.leave('zzz');
    expect(await settled(held)).toBe(false);
    p.leave('a');
    expect(await settled(held)).toBe(true);
  });

  it('with the rule off, a stopped VM holds nobody', () => {
    const p = new MigrationPriority({ stopCopyFirst: false, convergeInTurn: false });
    p.enter('a');
    expect(p.turn('b')).toBeNull();
  });
});

describe('MigrationPriority: converge in turn', () => {
  const turnOnly = (maxHoldMs?: number): MigrationPriority => new MigrationPriority({ stopCopyFirst: false, ...(maxHoldMs ? { maxHoldMs } : {}) });

  it(`VMs take their first ${TURN_AFTER_PASSES === 1 ? "pass" : `${TURN_AFTER_PASSES} passes`} side by side`, () => {
    const p = turnOnly();
    for (let n = 1; n <= TURN_AFTER_PASSES; n++) {
      p.pass('a', n);
      p.pass('b', n);
      expect(p.turn('a')).toBeNull();
      expect(p.turn('b')).toBeNull();
      expect(p.ahead('a')).toBe(false);
    }
    expect(p.stats.convergeInTurn.holds).toBe(0);
  });

  it('the first VM found not converging goes alone; the others, found so or not, wait in that order', async () => {
    const p = turnOnly();
    p.pass('a', LATE);
    p.pass('b', LATE);
    expect(p.turn('a')).toBeNull();
    const ofB = p.turn('b')!;
    const ofC = p.turn('c')!; // still in its first pass
    expect(ofB).not.toBeNull();
    expect(ofC).not.toBeNull();
    p.enter('a'); // stopped: still its turn
    expect(p.turn('a')).toBeNull();
    expect(await settled(ofB)).toBe(false);
    p.leave('a'); // moved: b's turn
    expect(await settled(ofB)).toBe(true);
    expect(await settled(ofC)).toBe(false);
    expect(p.turn('b')).toBeNull();
    p.leave('b');
    expect(await settled(ofC)).toBe(true);
    expect(p.turn('c')).toBeNull();
    expect(p.stats.convergeInTurn.holds).toBe(2);
  });

  it('a VM that fails while it has its turn leaves no turn behind', async () => {
    const p = turnOnly();
    p.pass('a', LATE);
    const ofB = p.turn('b')!;
    p.leave('a'); // failed
    expect(await settled(ofB)).toBe(true);
    p.leave('c'); // never had a turn
    expect(p.turn('b')).toBeNull();
  });

  it('a VM reported at later passes keeps its place', async () => {
    const p = turnOnly();
    p.pass('a', LATE);
    p.pass('b', LATE);
    p.pass('a', LATE + 1);
    const ofB = p.turn('b')!;
    p.leave('a');
    expect(await settled(ofB)).toBe(true);
  });

  it('holds no longer than maxHoldMs while the VM whose turn it is iterates on', async () => {
    const p = turnOnly(30);
    p.pass('a', LATE); // never converges
    const held = p.turn('b')!;
    expect(await settled(held)).toBe(false);
    await held;
    expect(p.stats.convergeInTurn.heldMs).toBeGreaterThan(0);
  });
});

describe('MigrationPriority: who goes ahead (a full in-flight window)', () => {
  it('nobody while VMs converge side by side; then the VM whose turn it is; a stopped VM before it', () => {
    const p = new MigrationPriority();
    expect(p.ahead('a')).toBe(false);
    p.pass('a', LATE);
    p.pass('b', LATE);
    expect([p.ahead('a'), p.ahead('b')]).toEqual([true, false]);
    p.enter('b');
    expect([p.ahead('a'), p.ahead('b')]).toEqual([false, true]);
    p.leave('b');
    expect([p.ahead('a'), p.ahead('b')]).toEqual([true, false]);
  });

  it('with converge in turn off, only a stopped VM', () => {
    const p = new MigrationPriority({ convergeInTurn: false });
    p.pass('a', LATE);
    expect(p.ahead('a')).toBe(false);
    p.enter('a');
    expect(p.ahead('a')).toBe(true);
  });
});

describe('MigrationPriority: both rules', () => {
  it('a stopped VM goes before the VM whose turn it is, and its holds count as stop-and-copy', async () => {
    const p = new MigrationPriority();
    p.pass('a', LATE);
    p.enter('b'); // converged side by side (or went on after the hold cap)
    const ofA = p.turn('a')!;
    expect(ofA).not.toBeNull();
    expect(p.turn('b')).toBeNull();
    p.leave('b');
    expect(await settled(ofA)).toBe(true);
    expect(p.stats.stopCopyFirst.holds).toBe(1);
    expect(p.stats.convergeInTurn.holds).toBe(0);
  });
});
