/**
 * A real QEMU 7.2 migration stream for codec tests, kept on disk between runs.
 *
 * `realStreamFixture()` returns the cached capture if there is one for the current guest image,
 * memory size and QEMU version, else boots a guest, captures its live migration and stores it:
 *   ${VMSCATTER_STREAM_DIR:-${XDG_CACHE_HOME:-~/.cache}/vmscatter/streams}/<key>.qemu-stream
 *   ... and <key>.json with QEMU's statistics, the guest's uniq_md5 and how to restore it.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildGuest, parseTicks, TICK_RE, workloadAppend, type GuestImage } from '../../src/qemu/guest-builder.js';
import { captureMigration, checkQemu, launchGuest, TCG_RAM_PAD_KIB, type MigrationStats, type QemuGuest } from '../../src/qemu/launcher.js';

export interface RealStreamInfo {
  /** How to start a guest that can load this stream. */
  readonly launch: { readonly kernel: string; readonly initrd: string; readonly append: string; readonly memoryMiB: number };
  readonly qemuVersion: string;
  /** uniq_md5 the source guest printed: a restored guest must print the same. */
  readonly uniqMd5: string;
  /** Last tick number seen on the source before the capture. */
  readonly lastTick: number;
  readonly stats: Omit<MigrationStats, 'events'>;
  readonly bytes: number;
  readonly capturedAt: string;
}

export interface RealStream extends RealStreamInfo {
  readonly path: string;
  readonly stream: Buffer;
}

export const REAL_STREAM_MEMORY_MIB = 128;

export function streamDir(): string {
  const env = process.env['VMSCATTER_STREAM_DIR'];
  if (env !== undefined && env !== '') return env;
  const base = process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache');
  return join(base, 'vmscatter', 'streams');
}

function keyOf(image: GuestImage, memoryMiB: number, qemuVersion: string, append: string): string {
  const appendTag = Buffer.from(append).toString('base64url').slice(-12);
  return `${image.key}-m${memoryMiB}+${TCG_RAM_PAD_KIB}k-q${qemuVersion}-${appendTag}`.replace(/[^A-Za-z0-9._+-]/g, '_');
}

async function writeAtomically(path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/**
 * Capture the live migration of a running, ticking guest and store it as the fixture for
 * `image`. The guest ends in "postmigrate".
 */
export async function captureRealStream(guest: QemuGuest, image: GuestImage, append: string): Promise<RealStream> {
  const q = await checkQemu();
  const ticks = parseTicks(await guest.serial());
  const last = ticks[ticks.length - 1];
  if (last === undefined) throw new Error(`guest ${guest.name} has not ticked yet; wait for ${TICK_RE} first`);
  const { stream, stats } = await captureMigration(guest);
  const { events: _events, ...statsNoEvents } = stats;
  const info: RealStreamInfo = {
    launch: { kernel: image.kernel, initrd: image.initrd, append, memoryMiB: guest.memoryMiB },
    qemuVersion: q.version ?? '',
    uniqMd5: last.md5,
    lastTick: last.n,
    stats: statsNoEvents,
    bytes: stream.length,
    capturedAt: new Date().toISOString(),
  };
  const path = join(streamDir(), `${keyOf(image, guest.memoryMiB, info.qemuVersion, append)}.qemu-stream`);
  await mkdir(dirname(path), { recursive: true });
  await writeAtomically(path, stream);
  await writeAtomically(path.replace(/\.qemu-stream$/, '.json'), `${JSON.stringify(info, null, 2)}\n`);
  return { ...info, path, stream };
}

/** The cached real stream, captured now if there is none yet. */
export async function realStreamFixture(opts: { fresh?: boolean } = {}): Promise<RealStream> {
  const image = await buildGuest();
  const q = await checkQemu();
  const append = workloadAppend();
  const path = join(streamDir(), `${keyOf(image, REAL_STREAM_MEMORY_MIB, q.version ?? '', append)}.qemu-stream`);
  if (opts.fresh !== true) {
    try {
      const info = JSON.parse(await readFile(path.replace(/\.qemu-stream$/, '.json'), 'utf8')) as RealStreamInfo;
      const stream = await readFile(path);
      if (stream.length === info.bytes) return { ...info, path, stream };
    } catch {
      /* not cached yet */
    }
  }
  const guest = await launchGuest({ name: 'fixture', image, memoryMiB: REAL_STREAM_MEMORY_MIB, append });
  try {
    await guest.waitForSerial(TICK_RE, 90_000);
    await guest.nextTick(30_000);
    return await captureRealStream(guest, image, append);
  } finally {
    await guest.dispose();
  }
}
