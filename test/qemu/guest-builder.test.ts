import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import {
  buildGuest,
  DEFAULT_WORKLOAD,
  findXzPayloads,
  INIT_SCRIPT,
  parseTicks,
  SHARED_LINE,
  workloadAppend,
  writeCpioNewc,
  type GuestImage,
} from '../../src/qemu/guest-builder.js';
import { qemuTestEnv, requireQemu } from './qemu-env.js';

/** Minimal newc reader, to check the writer without external tools. */
function readCpio(buf: Buffer): Array<{ name: string; mode: number; data: Buffer; rdev: [number, number] }> {
  const out: Array<{ name: string; mode: number; data: Buffer; rdev: [number, number] }> = [];
  let off = 0;
  const field = (i: number): number => parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
  for (;;) {
    expect(buf.toString('ascii', off, off + 6)).toBe('070701');
    const mode = field(1);
    const size = field(6);
    const rdev: [number, number] = [field(9), field(10)];
    const nameSize = field(11);
    const name = buf.toString('utf8', off + 110, off + 110 + nameSize - 1);
    let p = off + 110 + nameSize;
    p = (p + 3) & ~3;
    const data = buf.subarray(p, p + size);
    p = (p + size + 3) & ~3;
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode, data, rdev });
    off = p;
  }
}

describe('guest builder: pure parts', () => {
  it('the shared line makes identical 4 KiB pages', () => {
    expect(SHARED_LINE.length).toBe(63);
    expect(4096 % (SHARED_LINE.length + 1)).toBe(0);
    expect(SHARED_LINE).not.toContain("'");
    expect(INIT_SCRIPT).toContain(`yes '${SHARED_LINE}'`);
  });

  it('workloadAppend puts every parameter on the kernel command line and validates them', () => {
    const a = workloadAppend({ zeroMiB: 1, sharedMiB: 2, uniqueMiB: 3, dirtyMiB: 4, dirtyPagesPerTick: 5, tickIntervalSec: 0.25 });
    expect(a).toBe('console=ttyS0 quiet panic=-1 vms.zero_mb=1 vms.shared_mb=2 vms.uniq_mb=3 vms.dirty_mb=4 vms.dirty_pages=5 vms.interval=0.25');
    expect(workloadAppend()).toContain(`vms.uniq_mb=${DEFAULT_WORKLOAD.uniqueMiB}`);
    for (const bad of [{ zeroMiB: -1 }, { uniqueMiB: 1.5 }, { tickIntervalSec: Number.NaN }]) {
      const err = (() => {
        try {
          workloadAppend(bad);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).toBeInstanceOf(VmsError);
      expect((err as VmsError).code).toBe(ErrorCode.CONFIG);
    }
    // Every parameter the script reads is one workloadAppend writes.
    for (const name of ['zero_mb', 'shared_mb', 'uniq_mb', 'dirty_mb', 'dirty_pages', 'interval']) {
      expect(INIT_SCRIPT).toContain(`vms.${name}=*)`);
      expect(a).toContain(`vms.${name}=`);
    }
  });

  it('parseTicks reads tick lines out of noisy serial output', () => {
    const md5 = '0123456789abcdef0123456789abcdef';
    const log = `[    1.0] kernel noise\nVMS READY x\nTICK 1 uniq_md5=${md5}\r\nTICK 2 uniq_md5=${md5}\ngarbage TICK 3 uniq_md5=short\n`;
    expect(parseTicks(log)).toEqual([
      { n: 1, md5 },
      { n: 2, md5 },
    ]);
  });

  it('findXzPayloads finds every xz stream header', () => {
    const magic = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
    const buf = Buffer.concat([Buffer.alloc(100, 1), magic, Buffer.alloc(10), magic, Buffer.from([0xfd, 0x37])]);
    expect(findXzPayloads(buf)).toEqual([100, 116]);
    expect(findXzPayloads(Buffer.alloc(64))).toEqual([]);
  });

  it('writeCpioNewc writes an archive the newc format and cpio(1) read back', async () => {
    const entries = [
      { name: 'bin', mode: 0o040755 },
      { name: 'bin/tool', mode: 0o100755, data: Buffer.from('#!/bin/sh\necho odd-length\n') },
      { name: 'dev', mode: 0o040755 },
      { name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 },
      { name: 'init', mode: 0o100755, data: Buffer.alloc(4097, 7) },
    ];
    const buf = writeCpioNewc(entries);
    expect(buf.length % 4).toBe(0);
    const back = readCpio(buf);
    expect(back.map((e) => e.name)).toEqual(entries.map((e) => e.name));
    expect(back[1]?.data.toString()).toBe('#!/bin/sh\necho odd-length\n');
    expect(back[3]?.rdev).toEqual([5, 1]);
    expect(back[3]?.mode).toBe(0o020600);
    expect(back[4]?.data.equals(Buffer.alloc(4097, 7))).toBe(true);
    const cpio = spawnSync('cpio', ['-it', '--quiet'], { input: buf });
    if (cpio.error === undefined) {
      expect(cpio.status).toBe(0);
      expect(cpio.stdout.toString().trim().split('\n')).toEqual(entries.map((e) => e.name));
    }
  });
});

const env = await qemuTestEnv();
const run = requireQemu(env, 'guest builder (Debian packages)');

describe.skipIf(!run)('guest builder: from Debian packages', () => {
  const temps: string[] = [];
  let image: GuestImage;
  afterAll(async () => {
    for (const d of temps) await rm(d, { recursive: true, force: true });
  });

  it('builds an ELF vmlinux and a busybox initramfs, then reuses them', async () => {
    const t0 = Date.now();
    image = await buildGuest({ log: (m) => console.log(`guest build: ${m}`) });
    console.log(`guest build (maybe cached): ${Date.now() - t0} ms, ${image.key}`);
    expect(image.kernelId).toMatch(/^linux-image-6\.1\.0-\d+-amd64_/);
    const kernel = await readFile(image.kernel);
    expect(kernel.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(kernel[4]).toBe(2); // 64-bit
    expect(kernel.readUInt16LE(18)).toBe(0x3e); // x86-64
    const files = readCpio(gunzipSync(await readFile(image.initrd)));
    const names = files.map((f) => f.name);
    expect(names).toEqual(expect.arrayContaining(['init', 'bin/busybox', 'dev/console']));
    expect(files.find((f) => f.name === 'init')?.data.toString()).toBe(INIT_SCRIPT);
    expect((files.find((f) => f.name === 'init')?.mode ?? 0) & 0o111).not.toBe(0);

    const mtime = (await stat(image.kernel)).mtimeMs;
    const t1 = Date.now();
    const again = await buildGuest();
    expect(again).toEqual(image);
    expect((await stat(image.kernel)).mtimeMs).toBe(mtime);
  }, 180_000);

  it('concurrent builders in several processes agree and leave no temp files', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'vmsq-cache-'));
    temps.push(cacheDir);
    const script = `${INIT_SCRIPT}# variant ${Date.now()}\n`;
    const child = (): Promise<GuestImage> =>
      new Promise((resolve, reject) => {
        const p = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'build-guest-child.ts'), cacheDir, image.kernel, script], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        let err = '';
        p.stdout.on('data', (c: Buffer) => (out += c.toString()));
        p.stderr.on('data', (c: Buffer) => (err += c.toString()));
        p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as GuestImage) : reject(new Error(`child exited ${code}: ${err}`))));
      });
    const results = await Promise.all([child(), child(), child(), buildGuest({ cacheDir, kernel: image.kernel, initScript: script })]);
    for (const r of results) expect(r).toEqual(results[0]);
    const entries = await readdir(cacheDir);
    expect(entries.filter((e) => e.startsWith('.tmp-'))).toEqual([]);
    expect(entries).toEqual([`initrd-${results[0]?.initrdHash}`]);
    const files = readCpio(gunzipSync(await readFile(results[0]!.initrd)));
    expect(files.find((f) => f.name === 'init')?.data.toString()).toBe(script);
  }, 60_000);

  it('a missing busybox is a CONFIG error that says what to install', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'vmsq-cache-'));
    temps.push(cacheDir);
    const err = await buildGuest({ cacheDir, kernel: image.kernel, busybox: join(cacheDir, 'no-busybox') }).catch((e: unknown) => e);
    expect((err as VmsError).code).toBe(ErrorCode.CONFIG);
    expect((err as VmsError).message).toMatch(/busybox-static/);
  });
});
