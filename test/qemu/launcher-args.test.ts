/**
 * The QEMU command line (no QEMU needed): TCG guests get RAM that is not a multiple of 64 pages,
 * so QEMU < 9.0 takes the dirty-bitmap sync path that keeps TCG's dirty tracking coherent
 * (TCG_RAM_PAD_KIB); KVM guests get exactly what was asked.
 */
import { describe, expect, it } from 'vitest';
import { qemuArgs, TCG_RAM_PAD_KIB } from '../../src/qemu/launcher.js';

const files = { serialPath: '/tmp/x.serial', qmpPath: '/tmp/x.qmp', pidPath: '/tmp/x.pid', ramPath: '/dev/shm/x.ram' };
const arg = (args: string[], flag: string): string | undefined => args[args.indexOf(flag) + 1];

describe('qemuArgs', () => {
  it('pads TCG guest RAM off the 64-page fast path, backend and -m alike', () => {
    const args = qemuArgs({ kernel: '/k', memoryMiB: 256, accel: 'tcg' }, files);
    const kib = 256 * 1024 + TCG_RAM_PAD_KIB;
    expect(arg(args, '-m')).toBe(`${kib}K`);
    expect(arg(args, '-object')).toContain(`size=${kib}K,`);
    // QEMU rounds -m up to 8 KiB: the pad must survive that, and leave whole pages off 64-page words.
    expect(TCG_RAM_PAD_KIB % 8).toBe(0);
    expect(((kib * 1024) / 4096) % 64).not.toBe(0);
  });

  it('gives KVM guests exactly the RAM asked for', () => {
    const args = qemuArgs({ kernel: '/k', memoryMiB: 256, accel: 'kvm' }, files);
    expect(arg(args, '-m')).toBe(`${256 * 1024}K`);
    expect(arg(args, '-object')).toContain(`size=${256 * 1024}K,`);
  });
});
