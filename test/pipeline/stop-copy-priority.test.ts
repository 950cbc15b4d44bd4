import { describe, expect, it } from 'vitest';
import { StopCopyPriority } from '../../src/agent/stop-copy-priority.js';

/** Whether `p` has settled after the pending callbacks have run. */
async function settled(p: Promise<void>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('StopCopyPriority', () => {
  it('lets every write go while no VM is stopped, and a stopped VM its own', () => {
    const p = new StopCopyPriority();
    expect(p.turn('a')).toBeNull();
    p.enter('a');
    expect(p.turn('a')).toBeNull();
    p.leave('a');
    expect(p.turn('b')).toBeNull();
    expect(p.holds).toBe(0);
  });

  it("holds the others' writes until the last stopped VM leaves", async () => {
    const p = new StopCopyPriority();
    p.enter('a');
    p.enter('b');
    const held = p.turn('c')!;
    expect(held).not.toBeNull();
    p.leave('a');
    expect(await settled(held)).toBe(false);
    p.leave('b');
    expect(await settled(held)).toBe(true);
    expect(p.holds).toBe(1);
    expect(p.turn('c')).toBeNull();
  });

  it('releases the held writes of a VM that stops itself (its round ended with writes queued)', async () => {
    const p = new StopCopyPriority();
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
    const p = new StopCopyPriority(30);
    p.enter('a'); // never leaves
    const held = p.turn('b')!;
    expect(await settled(held)).toBe(false);
    await held;
    expect(p.heldMs).toBeGreaterThan(0);
  });

  it('leave of a VM that never entered changes nothing', async () => {
    const p = new StopCopyPriority();
    p.enter('a');
    const held = p.turn('b')!;
    p.leave('zzz');
    expect(await settled(held)).toBe(false);
    p.leave('a');
    expect(await settled(held)).toBe(true);
  });
});
