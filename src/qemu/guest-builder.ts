/**
 * Builds a bootable test guest from Debian packages only:
 *  - kernel: the `linux-image-6.1.0-*-amd64` package that `linux-image-amd64` depends on,
 *    its bzImage unpacked to the ELF vmlinux inside (boots through PVH with `-kernel`, which
 *    skips the bzImage decompressor: about 8 s saved under TCG);
 *  - initramfs: busybox-static plus an `/init` workload driven by the kernel command line.
 *
 * Results are cached (kernel by package version, initramfs by a hash of its content) and built
 * into a temporary directory that is renamed into place, so concurrent builders never see a
 * half-written file: the loser of the rename race discards its copy.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ErrorCode, VmsError } from '../errors.js';

/** The 63-character line (plus newline) that fills the shared region: 64 lines per page. */
export const SHARED_LINE = 'vmscatter shared page: identical in every guest, 64 bytes/line.';

/** Workload parameters, passed on the kernel command line as `vms.NAME=VALUE`. */
export interface WorkloadParams {
  /** MiB written from /dev/zero (zero pages). */
  readonly zeroMiB: number;
  /** MiB of SHARED_LINE repeated (identical pages within and across guests). */
  readonly sharedMiB: number;
  /** MiB from /dev/urandom (unique pages); its md5 is printed on every tick. */
  readonly uniqueMiB: number;
  /** MiB of a region rewritten from /dev/urandom in a loop (dirty pages). */
  readonly dirtyMiB: number;
  /** Pages of the dirty region rewritten per tick; the dirty rate is this / tickIntervalSec. */
  readonly dirtyPagesPerTick: number;
  /** Seconds to sleep between ticks (fractions allowed). */
  readonly tickIntervalSec: number;
}

export const DEFAULT_WORKLOAD: WorkloadParams = {
  zeroMiB: 8,
  sharedMiB: 16,
  uniqueMiB: 16,
  dirtyMiB: 4,
  dirtyPagesPerTick: 64,
  tickIntervalSec: 0.5,
};

/**
 * MiB of guest RAM the workload's regions may not use: the kernel and its allocations, the
 * initramfs (unpacked) and the shell, which must fit beside the regions' tmpfs.
 */
export const GUEST_OS_MIB = 64;

/**
 * Throws a CONFIG error naming the shortfall when the workload's regions (zero, shared, unique
 * and dirty, all kept in a tmpfs) and the guest's own GUEST_OS_MIB do not fit in `memoryMiB`.
 */
export function checkWorkloadFits(params: Partial<WorkloadParams>, memoryMiB: number): void {
  const p = { ...DEFAULT_WORKLOAD, ...params };
  const regions = p.zeroMiB + p.sharedMiB + p.uniqueMiB + p.dirtyMiB;
  if (regions + GUEST_OS_MIB > memoryMiB) {
    throw new VmsError(
      ErrorCode.CONFIG,
      `the workload's regions (${p.zeroMiB} zero + ${p.sharedMiB} shared + ${p.uniqueMiB} unique + ${p.dirtyMiB} dirty = ${regions} MiB) and ${GUEST_OS_MIB} MiB for the guest's kernel and shell need ${regions + GUEST_OS_MIB} MiB; the guests have ${memoryMiB} MiB`,
    );
  }
}

/** Kernel command line for a guest running the workload (serial console, no reboot loop). */
export function workloadAppend(params: Partial<WorkloadParams> = {}): string {
  const p = { ...DEFAULT_WORKLOAD, ...params };
  for (const [k, v] of Object.entries(p)) {
    if (!Number.isFinite(v) || v < 0) {
      throw new VmsError(ErrorCode.CONFIG, `workload parameter ${k} must be a finite number >= 0, got ${v}`);
    }
  }
  const ints = ['zeroMiB', 'sharedMiB', 'uniqueMiB', 'dirtyMiB', 'dirtyPagesPerTick'] as const;
  for (const k of ints) {
    if (!Number.isInteger(p[k])) throw new VmsError(ErrorCode.CONFIG, `workload parameter ${k} must be an integer, got ${p[k]}`);
  }
  return [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    `vms.zero_mb=${p.zeroMiB}`,
    `vms.shared_mb=${p.sharedMiB}`,
    `vms.uniq_mb=${p.uniqueMiB}`,
    `vms.dirty_mb=${p.dirtyMiB}`,
    `vms.dirty_pages=${p.dirtyPagesPerTick}`,
    `vms.interval=${p.tickIntervalSec}`,
  ].join(' ');
}

/** Printed once when the regions are filled. */
export const READY_RE = /VMS READY (.*)/;
/** Printed every loop: `TICK n uniq_md5=...`. */
export const TICK_RE = /TICK (\d+) uniq_md5=([0-9a-f]{32})/;

export interface Tick {
  readonly n: number;
  readonly md5: string;
}

/** Every tick line in a serial log, in order. */
export function parseTicks(serial: string): Tick[] {
  const out: Tick[] = [];
  for (const m of serial.matchAll(new RegExp(TICK_RE.source, 'g'))) {
    out.push({ n: Number(m[1]), md5: m[2] ?? '' });
  }
  return out;
}

/**
 * The guest's /init. The dirty region is rewritten in place: tmpfs overwrites reuse the same
 * page-cache pages, so the same guest-physical pages get dirty again and again.
 */
export const INIT_SCRIPT = `#!/bin/busybox sh
# vmscatter test guest: fills RAM with zero, shared, unique and dirty regions, then ticks.
/bin/busybox mkdir -p /proc /sys /dev /w /sbin /usr/bin /usr/sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
ZERO=8 SHARED=16 UNIQ=16 DIRTY=4 DIRTY_PAGES=64 INTERVAL=0.5
for w in $(cat /proc/cmdline); do
  case "$w" in
    vms.zero_mb=*) ZERO=\${w#*=} ;;
    vms.shared_mb=*) SHARED=\${w#*=} ;;
    vms.uniq_mb=*) UNIQ=\${w#*=} ;;
    vms.dirty_mb=*) DIRTY=\${w#*=} ;;
    vms.dirty_pages=*) DIRTY_PAGES=\${w#*=} ;;
    vms.interval=*) INTERVAL=\${w#*=} ;;
  esac
done
mount -t tmpfs -o size=95% w /w
dd if=/dev/zero of=/w/zero bs=4096 count=$((ZERO * 256)) 2>/dev/null
yes '${SHARED_LINE}' | head -c $((SHARED * 1048576)) > /w/shared
dd if=/dev/urandom of=/w/uniq bs=4096 count=$((UNIQ * 256)) 2>/dev/null
dd if=/dev/urandom of=/w/dirty bs=4096 count=$((DIRTY * 256)) 2>/dev/null
DIRTY_TOTAL=$((DIRTY * 256))
echo "VMS READY zero_mb=$ZERO shared_mb=$SHARED uniq_mb=$UNIQ dirty_mb=$DIRTY dirty_pages=$DIRTY_PAGES interval=$INTERVAL"
n=0
off=0
while :; do
  if [ "$DIRTY_TOTAL" -gt 0 ] && [ "$DIRTY_PAGES" -gt 0 ]; then
    cnt=$DIRTY_PAGES
    [ $((off + cnt)) -gt "$DIRTY_TOTAL" ] && cnt=$((DIRTY_TOTAL - off))
    dd if=/dev/urandom of=/w/dirty bs=4096 count=$cnt seek=$off conv=notrunc 2>/dev/null
    off=$(( (off + cnt) % DIRTY_TOTAL ))
  fi
  set -- $(md5sum /w/uniq)
  n=$((n + 1))
  echo "TICK $n uniq_md5=$1"
  sleep "$INTERVAL"
done
`;

// ---------------------------------------------------------------------------------------------
// cpio (newc) writer: deterministic (mtime 0, uid/gid 0), no external cpio needed.

export interface CpioEntry {
  readonly name: string;
  /** Full st_mode, type bits included (0o040755 dir, 0o100755 file, 0o020600 char device). */
  readonly mode: number;
  readonly data?: Buffer;
  readonly rdevMajor?: number;
  readonly rdevMinor?: number;
}

export function writeCpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  const all: CpioEntry[] = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((e, i) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`, 'utf8');
    const isDir = (e.mode & 0o170000) === 0o040000;
    const header =
      '070701' +
      hex(e.name === 'TRAILER!!!' ? 0 : i + 1) + // ino
      hex(e.mode) +
      hex(0) + // uid
      hex(0) + // gid
      hex(isDir ? 2 : 1) + // nlink
      hex(0) + // mtime
      hex(data.length) +
      hex(0) + // devmajor
      hex(0) + // devminor
      hex(e.rdevMajor ?? 0) +
      hex(e.rdevMinor ?? 0) +
      hex(name.length) +
      hex(0); // check
    parts.push(Buffer.from(header, 'ascii'), name, pad4(110 + name.length), data, pad4(data.length));
  });
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** Offsets of every xz stream header in a bzImage (the first is normally the kernel payload). */
export function findXzPayloads(bzImage: Buffer): number[] {
  const out: number[] = [];
  for (let i = bzImage.indexOf(XZ_MAGIC); i >= 0; i = bzImage.indexOf(XZ_MAGIC, i + 1)) out.push(i);
  return out;
}

export interface GuestImage {
  /** Cache key: kernel id + initramfs hash. */
  readonly key: string;
  /** ELF vmlinux, for `-kernel`. */
  readonly kernel: string;
  /** gzip'd newc initramfs, for `-initrd`. */
  readonly initrd: string;
  /** e.g. `linux-image-6.1.0-56-amd64_6.1.192-2`. */
  readonly kernelId: string;
  readonly initrdHash: string;
}

export interface GuestBuildOptions {
  /** Default: `${XDG_CACHE_HOME:-~/.cache}/vmscatter/guest`. */
  readonly cacheDir?: string;
  /** Use this ELF vmlinux (or any -kernel image) instead of one built from a package. */
  readonly kernel?: string;
  /** Kernel package; default: what `linux-image-amd64` depends on. */
  readonly kernelPackage?: string;
  /** busybox-static binary. Default /bin/busybox. */
  readonly busybox?: string;
  /** Replace the workload /init. */
  readonly initScript?: string;
  /** Progress messages (download, extract). */
  readonly log?: (msg: string) => void;
}

export function defaultGuestCacheDir(): string {
  const base = process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache');
  return join(base, 'vmscatter', 'guest');
}

const inFlight = new Map<string, Promise<unknown>>();

/** Build (or reuse from the cache) the kernel and initramfs of the test guest. */
export async function buildGuest(opts: GuestBuildOptions = {}): Promise<GuestImage> {
  const cacheDir = opts.cacheDir ?? defaultGuestCacheDir();
  await mkdir(cacheDir, { recursive: true });
  const [kernel, initrd] = await Promise.all([ensureKernel(cacheDir, opts), ensureInitrd(cacheDir, opts)]);
  return {
    key: `${kernel.id}+${initrd.hash}`,
    kernel: kernel.path,
    initrd: initrd.path,
    kernelId: kernel.id,
    initrdHash: initrd.hash,
  };
}

/** Coalesce builds of the same artifact within this process (across processes: rename). */
function once<T>(key: string, build: () => Promise<T>): Promise<T> {
  const existing = inFlight.get(key);
  if (existing !== undefined) return existing as Promise<T>;
  const p = build().finally(() => inFlight.delete(key));
  inFlight.set(key, p);
  return p;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Build into a fresh temp dir under cacheDir, then rename it to `finalDir`. */
async function buildAtomically(cacheDir: string, finalDir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(cacheDir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  await mkdir(tmp, { recursive: true });
  try {
    await fill(tmp);
    try {
      await rename(tmp, finalDir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Another builder got there first: its result is as good as ours.
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

interface RunResult {
  readonly stdout: Buffer;
  readonly stderr: string;
}

function run(cmd: string, args: readonly string[], opts: { cwd?: string; input?: Buffer } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('error', (e) =>
      reject(new VmsError(ErrorCode.CONFIG, `cannot run ${cmd}: ${e.message}; is it installed?`, { cause: e })),
    );
    child.on('close', (code) => {
      if (code === 0) resolve({ stdout: Buffer.concat(out), stderr: err });
      else reject(new VmsError(ErrorCode.CONFIG, `${cmd} ${args.join(' ')} exited with ${code}: ${err.trim().slice(-500)}`));
    });
    child.stdin.on('error', () => {}); // EPIPE if the tool exits early; its exit code says why
    child.stdin.end(opts.input);
  });
}

interface KernelInfo {
  readonly id: string;
  readonly path: string;
}

let resolved: Promise<{ pkg: string; version: string }> | undefined;

/** The kernel package and version, from apt's local metadata (about 1 s; once per process). */
function resolveKernelPackage(opts: GuestBuildOptions): Promise<{ pkg: string; version: string }> {
  if (opts.kernelPackage !== undefined) return showVersion(opts.kernelPackage);
  if (resolved === undefined) {
    resolved = (async () => {
      const show = (await run('apt-cache', ['show', '--no-all-versions', 'linux-image-amd64'])).stdout.toString();
      // "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
      const m = /^Depends:.*?\b(linux-image-[0-9][^\s,]*-amd64)(?:\s*\(=\s*([^)\s]+)\))?/m.exec(show);
      if (m?.[1] === undefined) {
        throw new VmsError(ErrorCode.CONFIG, `linux-image-amd64 depends on no linux-image-*-amd64 package: ${show.trim().slice(0, 300)}; run apt-get update`);
      }
      return m[2] !== undefined ? { pkg: m[1], version: m[2] } : showVersion(m[1]);
    })();
    resolved.catch(() => {
      resolved = undefined;
    });
  }
  return resolved;
}

async function showVersion(pkg: string): Promise<{ pkg: string; version: string }> {
  const show = (await run('apt-cache', ['show', '--no-all-versions', pkg])).stdout.toString();
  const v = /^Version:\s*(\S+)/m.exec(show);
  if (v?.[1] === undefined) throw new VmsError(ErrorCode.CONFIG, `apt-cache show ${pkg} gives no version; run apt-get update`);
  return { pkg, version: v[1] };
}

async function ensureKernel(cacheDir: string, opts: GuestBuildOptions): Promise<KernelInfo> {
  if (opts.kernel !== undefined) {
    let bytes: Buffer;
    try {
      bytes = await readFile(opts.kernel);
    } catch (err) {
      throw new VmsError(ErrorCode.CONFIG, `cannot read kernel ${opts.kernel}: ${(err as Error).message}`, { cause: err });
    }
    return { id: `file-${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}`, path: opts.kernel };
  }
  let pkg: string;
  let version: string;
  try {
    ({ pkg, version } = await resolveKernelPackage(opts));
  } catch (err) {
    // No apt metadata (offline, not Debian): a kernel built earlier still serves.
    const cached = (await readdir(cacheDir)).filter((d) => d.startsWith('kernel-')).sort();
    const last = cached[cached.length - 1];
    if (last !== undefined && (await exists(join(cacheDir, last, 'vmlinux')))) {
      return { id: last.slice('kernel-'.length), path: join(cacheDir, last, 'vmlinux') };
    }
    throw err;
  }
  const id = `${pkg}_${version}`;
  const dir = join(cacheDir, `kernel-${id}`);
  const path = join(dir, 'vmlinux');
  if (await exists(path)) return { id, path };
  return once(dir, async () => {
    if (await exists(path)) return { id, path };
    await buildAtomically(cacheDir, dir, async (tmp) => {
      opts.log?.(`downloading ${pkg}=${version}`);
      await run('apt-get', ['download', `${pkg}=${version}`], { cwd: tmp });
      const deb = (await readdir(tmp)).find((f) => f.endsWith('.deb'));
      if (deb === undefined) throw new VmsError(ErrorCode.CONFIG, `apt-get download ${pkg} left no .deb in ${tmp}`);
      opts.log?.(`extracting boot/vmlinuz from ${deb}`);
      // Same as dpkg -x, but only the one file we need (the package holds ~400 MB of modules).
      await extractFromDeb(join(tmp, deb), tmp, './boot/vmlinuz-*');
      await rm(join(tmp, deb), { force: true });
      const boot = join(tmp, 'boot');
      const vmlinuz = (await readdir(boot)).find((f) => f.startsWith('vmlinuz-'));
      if (vmlinuz === undefined) throw new VmsError(ErrorCode.CONFIG, `${deb} holds no boot/vmlinuz-*`);
      const bz = await readFile(join(boot, vmlinuz));
      const elf = await unpackVmlinux(bz, vmlinuz);
      await writeFile(join(tmp, 'vmlinux'), elf);
      await rm(boot, { recursive: true, force: true });
      await writeFile(join(tmp, 'info.json'), `${JSON.stringify({ package: pkg, version, vmlinuz, bytes: elf.length }, null, 2)}\n`);
    });
    return { id, path };
  });
}

function extractFromDeb(deb: string, cwd: string, pattern: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const dpkg = spawn('dpkg-deb', ['--fsys-tarfile', deb], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tar = spawn('tar', ['-x', '--wildcards', pattern], { cwd, stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    dpkg.stderr.on('data', (c: Buffer) => (err += c.toString()));
    tar.stderr.on('data', (c: Buffer) => (err += c.toString()));
    dpkg.stdout.pipe(tar.stdin);
    tar.stdin.on('error', () => {});
    let pending = 2;
    let failed = false;
    const done = (who: string) => (code: number | null) => {
      if (code !== 0 && !failed) {
        failed = true;
        reject(new VmsError(ErrorCode.CONFIG, `${who} failed (exit ${code}) extracting ${pattern} from ${deb}: ${err.trim().slice(-500)}`));
      }
      if (--pending === 0 && !failed) resolve();
    };
    dpkg.on('error', (e) => reject(new VmsError(ErrorCode.CONFIG, `cannot run dpkg-deb: ${e.message}`, { cause: e })));
    tar.on('error', (e) => reject(new VmsError(ErrorCode.CONFIG, `cannot run tar: ${e.message}`, { cause: e })));
    dpkg.on('close', done('dpkg-deb'));
    tar.on('close', done('tar'));
  });
}

/** The ELF kernel inside a bzImage: the xz stream after the setup code, decompressed. */
async function unpackVmlinux(bz: Buffer, name: string): Promise<Buffer> {
  const offsets = findXzPayloads(bz);
  for (const off of offsets) {
    let out: Buffer;
    try {
      // --single-stream: stop at the end of the payload and ignore the trailing bytes.
      out = (await run('xz', ['-dc', '--single-stream'], { input: bz.subarray(off) })).stdout;
    } catch {
      continue;
    }
    if (out.length > 4 && out.subarray(0, 4).equals(ELF_MAGIC)) return out;
  }
  throw new VmsError(
    ErrorCode.CONFIG,
    `no xz-compressed ELF kernel found in ${name} (${offsets.length} xz headers tried); is xz-utils installed and is this an xz bzImage?`,
  );
}

async function ensureInitrd(cacheDir: string, opts: GuestBuildOptions): Promise<{ hash: string; path: string }> {
  const busyboxPath = opts.busybox ?? '/bin/busybox';
  let busybox: Buffer;
  try {
    busybox = await readFile(busyboxPath);
  } catch (err) {
    throw new VmsError(ErrorCode.CONFIG, `cannot read ${busyboxPath}: install busybox-static`, { cause: err });
  }
  const script = opts.initScript ?? INIT_SCRIPT;
  const hash = createHash('sha256').update(script).update('\0').update(busybox).digest('hex').slice(0, 16);
  const dir = join(cacheDir, `initrd-${hash}`);
  const path = join(dir, 'initrd.gz');
  if (await exists(path)) return { hash, path };
  return once(dir, async () => {
    if (await exists(path)) return { hash, path };
    await buildAtomically(cacheDir, dir, async (tmp) => {
      const cpio = writeCpioNewc([
        { name: 'bin', mode: 0o040755 },
        { name: 'bin/busybox', mode: 0o100755, data: busybox },
        { name: 'dev', mode: 0o040755 },
        // The kernel opens /dev/console for init before anything can mount devtmpfs.
        { name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 },
        { name: 'init', mode: 0o100755, data: Buffer.from(script, 'utf8') },
      ]);
      await writeFile(join(tmp, 'initrd.gz'), gzipSync(cpio, { level: 9 }));
      await writeFile(join(tmp, 'init'), script, { mode: 0o644 });
    });
    return { hash, path };
  });
}
