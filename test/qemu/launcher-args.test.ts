/**
 * The QEMU command line (no QEMU needed): TCG guests get RAM that is not a multiple of 64 pages,
 * so QEMU < 9.0 takes the dirty-bitmap sync path that keeps TCG's dirty tracking coherent
 * (TCG_RAM_PAD_KIB); KVM guests get exactly what was asked. Also the guests file of a QEMU
 * source agent and the command lines `vmscatter qemu-command` prints from it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { machineRamBytes, readGuestsFile } from '../../src/agent/qemu-guests.js';
import { qemuCommandLines } from '../../src/cli/qemu-command.js';
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

  it('boots from what extraArgs give when there is no kernel, and needs one or the other', () => {
    const args = qemuArgs({ memoryMiB: 64, extraArgs: ['-drive', 'file=/shared/d.qcow2,if=virtio'] }, files);
    expect(args).not.toContain('-kernel');
    expect(args).not.toContain('-append');
    expect(args.slice(-2)).toEqual(['-drive', 'file=/shared/d.qcow2,if=virtio']);
    expect(() => qemuArgs({ memoryMiB: 64 }, files)).toThrow(/needs a kernel .* or extraArgs/);
  });
});

describe('vmscatter qemu-command', () => {
  it('prints per guest the command line of its machine, with its RAM file and vmscatter QMP socket, quoted for sh', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsq-cmd-'));
    try {
      const file = join(dir, 'guests.json');
      const machine = { memoryMiB: 128, kernel: '/srv/vmlinux', append: "console=ttyS0 msg='hi there'", accel: 'kvm', smp: 2 };
      writeFileSync(file, JSON.stringify({ guests: [{ name: 'g1', qmp: '/run/vms/g1.vms.qmp', ramFile: '/dev/shm/g1.ram', machine }, { name: 'g2', qmp: '/run/vms/g2.qmp', ramFile: '/dev/shm/g2.ram', machine }] }));
      const lines = qemuCommandLines(file);
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/^qemu-system-x86_64 /);
      expect(lines[0]).toContain('mem-path=/dev/shm/g1.ram,share=on');
      expect(lines[0]).toContain('-qmp unix:/run/vms/g1.vms.qmp,server=on,wait=off');
      expect(lines[0]).toContain('-serial file:/run/vms/g1.serial');
      expect(lines[0]).toContain('-pidfile /run/vms/g1.pid');
      expect(lines[0]).toContain(`-append 'console=ttyS0 msg='\\''hi there'\\'''`);
      expect(lines[0]).toContain('-m 131072K');
      expect(qemuCommandLines(file, 'g2')).toHaveLength(1);
      expect(() => qemuCommandLines(file, 'g3')).toThrow(/no guest named g3/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('QEMU guests file (agent --fleet qemu:FILE)', () => {
  const write = (dir: string, body: unknown): string => {
    const f = join(dir, `g-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(f, typeof body === 'string' ? body : JSON.stringify(body));
    return f;
  };
  it('names every problem: unreadable, not JSON, fields, duplicates', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsq-guests-'));
    try {
      const ok = { name: 'g1', qmp: '/q', ramFile: '/r', machine: { memoryMiB: 64, kernel: '/k' } };
      expect(readGuestsFile(write(dir, { guests: [ok] }))).toHaveLength(1);
      expect(() => readGuestsFile(join(dir, 'none.json'))).toThrow(/cannot read the QEMU guests file .*none.json/);
      expect(() => readGuestsFile(write(dir, '{ not json'))).toThrow(/cannot read the QEMU guests file/);
      expect(() => readGuestsFile(write(dir, { guests: [] }))).toThrow(/is invalid: \/guests/);
      expect(() => readGuestsFile(write(dir, { guests: [{ ...ok, machine: { memoryMiB: 'lots' } }] }))).toThrow(/\/guests\/0\/machine\/memoryMiB/);
      expect(() => readGuestsFile(write(dir, { guests: [{ ...ok, colour: 'red' }] }))).toThrow(/is invalid/);
      expect(() => readGuestsFile(write(dir, { guests: [ok, ok] }))).toThrow(/lists g1 twice/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives the RAM file size a machine has: TCG guests 8 KiB more', () => {
    expect(machineRamBytes({ memoryMiB: 256 })).toBe(256 * 1024 * 1024 + TCG_RAM_PAD_KIB * 1024);
    expect(machineRamBytes({ memoryMiB: 256, accel: 'kvm' })).toBe(256 * 1024 * 1024);
  });
});
