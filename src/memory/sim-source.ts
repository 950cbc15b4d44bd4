/**
 * Pre-copy migration of a simulated VM, emitting what QEMU 7.2 emits for the same RAM: header,
 * CONFIGURATION, START "ram" with MEM_SIZE, a bulk pass over every page, passes over the pages
 * dirtied meanwhile, and, once the rest fits the downtime limit at the observed bandwidth, stop
 * and copy (END section) followed by the device state. Its bandwidth is whatever the stream it
 * writes to accepts (backpressure), capped like QEMU's max-bandwidth.
 *
 * Convergence follows QEMU's rule: after each pass, sync the dirty log; remaining = dirty pages x
 * 4 KiB; bandwidth = bytes of the pass / its duration; stop when remaining / bandwidth <= the
 * downtime limit. (QEMU measures bandwidth over 100 ms windows and checks pending bytes between
 * iterations; per pass is the same rule at coarser grain.)
 */
import type { Writable } from 'node:stream';
import { ErrorCode, VmsError } from '../errors.js';
import { SectionType, StreamWriter } from '../wire/qemu-stream.js';
import { PAGE_SIZE } from './page.js';
import { buildSimDeviceTail } from './sim-devices.js';
import type { SimVm } from './sim-vm.js';

/** QEMU 7.2 defaults. */
export const QEMU_MAX_BANDWIDTH = 128 * 1024 * 1024;
export const QEMU_DOWNTIME_LIMIT_MS = 300;
export const SIM_MACHINE = 'pc-i440fx-7.2';
/** Section id QEMU gives "ram" on a pc machine. */
export const RAM_SECTION_ID = 2;

/** QEMU's rate-limit window (migration/migration.c BUFFER_DELAY): each window may carry rate / 10. */
export const RATE_WINDOW_MS = 100;
const WINDOW_MS = RATE_WINDOW_MS;
/** Pages between checks of abort, backpressure, rate limit and guest progress. */
const BATCH_PAGES = 64;

export interface PrecopyOptions {
  /** Bytes/s, default QEMU's 128 MiB/s; 0 = unlimited. */
  maxBandwidthBytesPerSec?: number;
  /** Default QEMU's 300 ms. */
  downtimeLimitMs?: number;
  /** Live passes before stop-and-copy is forced (result.forced); default 30. */
  maxRounds?: number;
  /** Page records per PART section (default 1024); END carries all the rest. */
  maxSectionPages?: number;
  signal?: AbortSignal;
  onProgress?: (p: PrecopyProgress) => void;
}

export interface PrecopyProgress {
  phase: 'iterate' | 'stop-copy' | 'device' | 'done';
  /** Live pass number (1 = bulk). Reported once as each pass starts, then as it goes. */
  round: number;
  bytes: number;
  pagesSent: number;
  zeroPagesSent: number;
  /** Dirty pages known to be still unsent (the current pass's remainder). */
  remainingPages: number;
}

export interface RoundStat {
  round: number;
  /** True for the stop-and-copy pass (END section). */
  final: boolean;
  /** PAGE records. */
  pages: number;
  /** ZERO records. */
  zeroPages: number;
  bytes: number;
  durationMs: number;
  /** bytes / duration of this pass (what the next decision used). */
  bandwidthBytesPerSec: number;
  /** Dirty pages at the sync after this pass (0 for the final pass). */
  dirtyAfter: number;
  /** dirtyAfter x 4 KiB / bandwidth: QEMU's expected downtime. */
  expectedDowntimeMs: number;
}

export interface PrecopyResult {
  /** Live passes (the bulk pass and the iterations), not counting stop-and-copy. */
  rounds: number;
  /** maxRounds was reached before convergence. */
  forced: boolean;
  /** Stream bytes: exactly what plain QEMU migration sends for this VM. */
  bytes: number;
  /** PAGE records (QEMU's `normal`). */
  pagesSent: number;
  /** ZERO records (QEMU's `duplicate`). */
  zeroPagesSent: number;
  /** QEMU's dirty-sync-count: setup, one per pass decision, one at completion. */
  dirtySyncs: number;
  /** performance.now() when the VM stopped. */
  stoppedAt: number;
  /** performance.now() when the stream was finished (out's 'finish'). */
  completedAt: number;
  /** Expected downtime at the decision to stop. */
  downtimeEstimateMs: number;
  roundStats: RoundStat[];
  /** The device tail sent (first FULL section to the end). */
  deviceTail: Buffer;
}

/**
 * Migrate `vm` into `out` with QEMU's pre-copy algorithm. `out` is ended on success. The VM is
 * left stopped on success; on abort or an error of `out`, emission stops, `out` is destroyed, the
 * VM runs on (resumed if it had been stopped) and the promise rejects with VmsError (CANCELLED,
 * or the cause).
 */
export async function runPrecopy(vm: SimVm, out: Writable, opts: PrecopyOptions = {}): Promise<PrecopyResult> {
  const maxBw = opts.maxBandwidthBytesPerSec ?? QEMU_MAX_BANDWIDTH;
  const downtimeLimit = opts.downtimeLimitMs ?? QEMU_DOWNTIME_LIMIT_MS;
  const maxRounds = opts.maxRounds ?? 30;
  const maxSection = opts.maxSectionPages ?? 1024;
  if (!(maxBw >= 0) || !Number.isFinite(maxBw)) throw new VmsError(ErrorCode.CONFIG, `maxBandwidthBytesPerSec must be >= 0 (0 = unlimited), got ${maxBw}`);
  if (!(downtimeLimit >= 0) || !Number.isFinite(downtimeLimit)) throw new VmsError(ErrorCode.CONFIG, `downtimeLimitMs must be >= 0, got ${downtimeLimit}`);
  if (!Number.isInteger(maxRounds) || maxRounds < 1) throw new VmsError(ErrorCode.CONFIG, `maxRounds must be a positive integer, got ${maxRounds}`);
  if (!Number.isInteger(maxSection) || maxSection < 1) throw new VmsError(ErrorCode.CONFIG, `maxSectionPages must be a positive integer, got ${maxSection}`);
  const em = new Emitter(vm, out, maxBw, opts.signal);
  let stoppedByUs = false;
  try {
    em.throwIfFailed();
    return await migrate();
  } catch (e) {
    const err = em.fail(e);
    if (stoppedByUs && vm.state === 'stopped') vm.cont();
    throw err;
  } finally {
    em.detach();
  }

  async function migrate(): Promise<PrecopyResult> {
    const w = em.w;
    const stats: RoundStat[] = [];
    const progress = (phase: PrecopyProgress['phase'], round: number, remainingPages: number): void => {
      opts.onProgress?.({ phase, round, bytes: w.bytesWritten, pagesSent: em.pages, zeroPagesSent: em.zeroPages, remainingPages });
    };
    // Setup (ram_save_setup): dirty logging starts; the bulk pass sends every page anyway.
    vm.syncDirty();
    let syncs = 1;
    w.header();
    w.configuration(SIM_MACHINE);
    w.sectionStart(SectionType.START, RAM_SECTION_ID, 'ram', 0, 4);
    w.memSize(vm.blocks);
    w.eos();
    w.footer(RAM_SECTION_ID);

    let round = 0;
    let forced = false;
    let pass: Uint32Array | null = null; // null: every page
    let passCount = vm.totalPages;
    let estimate = 0;
    for (;;) {
      round++;
      const t0 = performance.now();
      const b0 = w.bytesWritten;
      const p0 = em.pages;
      const z0 = em.zeroPages;
      progress('iterate', round, passCount);
      await em.sendPass(pass, passCount, SectionType.PART, maxSection, (left) => progress('iterate', round, left));
      em.flush();
      const dt = performance.now() - t0;
      const bytes = w.bytesWritten - b0;
      const bw = dt > 0 ? (bytes * 1000) / dt : Infinity;
      const log = vm.syncDirty();
      syncs++;
      estimate = log.count === 0 ? 0 : ((log.count * PAGE_SIZE) / bw) * 1000;
      stats.push({ round, final: false, pages: em.pages - p0, zeroPages: em.zeroPages - z0, bytes, durationMs: dt, bandwidthBytesPerSec: bw, dirtyAfter: log.count, expectedDowntimeMs: estimate });
      pass = log.bits;
      passCount = log.count;
      if (estimate <= downtimeLimit) break;
      if (round >= maxRounds) {
        forced = true;
        break;
      }
    }

    // Stop and copy (ram_save_complete): what the last sync found plus what the guest wrote
    // between that sync and the stop.
    if (vm.state === 'running') {
      vm.stop();
      stoppedByUs = true;
    }
    const stoppedAt = vm.stoppedAt ?? performance.now();
    const last = vm.syncDirty();
    syncs++;
    const bits = pass!;
    let count = 0;
    for (let i = 0; i < bits.length; i++) {
      const v = (bits[i]! | last.bits[i]!) >>> 0;
      bits[i] = v;
      if (v !== 0) count += popcount(v);
    }
    const t0 = performance.now();
    const b0 = w.bytesWritten;
    const p0 = em.pages;
    const z0 = em.zeroPages;
    progress('stop-copy', round, count);
    await em.sendPass(bits, count, SectionType.END, Infinity, (left) => progress('stop-copy', round, left));

    progress('device', round, 0);
    const tail = buildSimDeviceTail(vm);
    w.raw(tail);
    em.flush();
    await em.finish();
    const completedAt = performance.now();
    const dt = completedAt - t0;
    const bytes = w.bytesWritten - b0;
    stats.push({ round, final: true, pages: em.pages - p0, zeroPages: em.zeroPages - z0, bytes, durationMs: dt, bandwidthBytesPerSec: dt > 0 ? (bytes * 1000) / dt : Infinity, dirtyAfter: 0, expectedDowntimeMs: 0 });
    progress('done', round, 0);
    return {
      rounds: round,
      forced,
      bytes: w.bytesWritten,
      pagesSent: em.pages,
      zeroPagesSent: em.zeroPages,
      dirtySyncs: syncs,
      stoppedAt,
      completedAt,
      downtimeEstimateMs: estimate,
      roundStats: stats,
      deviceTail: tail,
    };
  }
}

function popcount(v: number): number {
  let x = v - ((v >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}

/**
 * The writing side: a StreamWriter into `out`, byte and record counts, and the three reasons to
 * pause between batches (backpressure, the rate limit, abort). Waits happen per batch, never per
 * page.
 */
class Emitter {
  readonly w: StreamWriter;
  pages = 0;
  zeroPages = 0;
  private needDrain = false;
  private failure: VmsError | undefined;
  private finished = false;
  private lastBlock = -1;
  private windowStart = performance.now();
  /** bytesWritten at the start of the rate window, less any overshoot carried from the last one. */
  private windowBase = 0;
  private readonly budget: number;
  private readonly scratch = Buffer.allocUnsafe(PAGE_SIZE);
  private wake: (() => void) | undefined;

  private readonly onError = (e: unknown): void => {
    this.setFailure(e instanceof VmsError ? e : new VmsError(ErrorCode.CONVERGE, `migration stream of VM ${this.vm.name} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e }));
  };
  private readonly onClose = (): void => {
    if (!this.finished) this.setFailure(new VmsError(ErrorCode.CONVERGE, `migration stream of VM ${this.vm.name} closed before the migration completed`));
  };
  private readonly onDrain = (): void => {
    this.needDrain = false;
    this.wakeUp();
  };
  private readonly onAbort = (): void => {
    this.setFailure(new VmsError(ErrorCode.CANCELLED, `migration of VM ${this.vm.name} cancelled; the VM keeps running on the source`, { cause: this.signal?.reason }));
  };

  constructor(
    private readonly vm: SimVm,
    private readonly out: Writable,
    maxBw: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.budget = maxBw > 0 ? (maxBw * WINDOW_MS) / 1000 : Infinity;
    this.w = new StreamWriter((chunk) => {
      if (!out.write(chunk)) this.needDrain = true;
    });
    out.on('error', this.onError);
    out.on('close', this.onClose);
    out.on('drain', this.onDrain);
    if (signal) {
      if (signal.aborted) this.onAbort();
      else signal.addEventListener('abort', this.onAbort, { once: true });
    }
    if (out.destroyed || out.writableEnded) this.onClose();
  }

  private setFailure(e: VmsError): void {
    this.failure ??= e;
    this.wakeUp();
  }

  private wakeUp(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** Record the failure (if not already), destroy `out`, return the error to reject with. */
  fail(e: unknown): VmsError {
    const err = this.failure ?? (e instanceof VmsError ? e : new VmsError(ErrorCode.CONVERGE, `migration of VM ${this.vm.name} failed: ${String(e)}`, { cause: e }));
    this.failure = err;
    // Keep a listener: destroy(err) emits 'error', which must not crash the process.
    this.out.on('error', () => {});
    if (!this.out.destroyed) this.out.destroy(err);
    return err;
  }

  detach(): void {
    this.out.off('error', this.onError);
    this.out.off('close', this.onClose);
    this.out.off('drain', this.onDrain);
    this.signal?.removeEventListener('abort', this.onAbort);
  }

  flush(): void {
    this.w.flush();
  }

  /**
   * One pass: the pages set in `bits` (every page when null), in block order, as page records in
   * sections of `type` holding at most `maxSection` records each.
   */
  async sendPass(bits: Uint32Array | null, count: number, type: typeof SectionType.PART | typeof SectionType.END, maxSection: number, progress: (left: number) => void): Promise<void> {
    const vm = this.vm;
    const blocks = vm.blocks;
    let left = count;
    let inSection = -1; // -1: no section open
    let batch = 0;
    let b = 0;
    let blockEnd = blocks[0]!.firstPage + blocks[0]!.pages;
    const total = vm.totalPages;
    const words = bits ? bits.length : 0;
    let wi = 0;
    let word = 0;
    let g = -1;
    for (;;) {
      // Next page of the pass.
      if (bits) {
        while (word === 0 && wi < words) word = bits[wi++]!;
        if (word === 0) break;
        const low = word & -word;
        g = ((wi - 1) << 5) + (31 - Math.clz32(low));
        word = (word ^ low) | 0;
        if (g >= total) break;
      } else {
        g++;
        if (g >= total) break;
      }
      while (g >= blockEnd) {
        b++;
        blockEnd = blocks[b]!.firstPage + blocks[b]!.pages;
      }
      if (inSection < 0) {
        this.w.sectionPart(type, RAM_SECTION_ID);
        inSection = 0;
      }
      this.emitPage(g, b);
      left--;
      if (++inSection >= maxSection) {
        this.w.eos();
        this.w.footer(RAM_SECTION_ID);
        inSection = -1;
        progress(left);
      }
      if (++batch >= BATCH_PAGES) {
        batch = 0;
        if (type === SectionType.PART) vm.advance();
        if (this.mustWait()) await this.waitForRoom();
      }
    }
    if (inSection >= 0 || type === SectionType.END) {
      if (inSection < 0) this.w.sectionPart(type, RAM_SECTION_ID);
      this.w.eos();
      this.w.footer(RAM_SECTION_ID);
      progress(0);
    }
    this.throwIfFailed();
  }

  private emitPage(g: number, b: number): void {
    const blk = this.vm.blocks[b]!;
    const offset = (g - blk.firstPage) * PAGE_SIZE;
    const cont = b === this.lastBlock;
    this.lastBlock = b;
    if (this.vm.isZero(g)) {
      this.w.zero(blk.name, offset, 0, cont);
      this.zeroPages++;
    } else {
      this.vm.readPage(g, this.scratch, 0);
      this.w.page(blk.name, offset, this.scratch, 0, cont);
      this.pages++;
    }
  }

  private mustWait(): boolean {
    return this.failure !== undefined || this.needDrain || this.w.bytesWritten - this.windowBase >= this.budget || performance.now() - this.windowStart >= WINDOW_MS;
  }

  /** Wait for whatever stops emission: failure (throws), drain, the next rate window. */
  private async waitForRoom(): Promise<void> {
    for (;;) {
      this.throwIfFailed();
      const now = performance.now();
      if (now - this.windowStart >= WINDOW_MS) {
        // A new window. Checks come per batch, so a window can overshoot its budget by a batch:
        // the excess counts against the next window (unused budget is not carried, as in QEMU).
        const over = this.w.bytesWritten - this.windowBase - this.budget;
        this.windowStart = now;
        this.windowBase = this.w.bytesWritten - (over > 0 && Number.isFinite(over) ? over : 0);
      }
      if (this.needDrain) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      if (this.w.bytesWritten - this.windowBase >= this.budget) {
        // QEMU's rate limit: the window's budget is spent; push out what is buffered, sleep to
        // the window's end.
        this.w.flush();
        const ms = this.windowStart + WINDOW_MS - now;
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            this.wake = undefined;
            resolve();
          }, Math.max(1, Math.ceil(ms)));
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        continue;
      }
      return;
    }
  }

  /** End `out` and wait until everything is written ('finish'). */
  async finish(): Promise<void> {
    while (this.needDrain) await this.waitForRoom();
    this.throwIfFailed();
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        this.finished = true;
        this.wake = undefined;
        resolve();
      };
      this.wake = () => {
        this.out.off('finish', done);
        reject(this.failure ?? new VmsError(ErrorCode.CONVERGE, `migration stream of VM ${this.vm.name} closed before it finished`));
      };
      this.out.once('finish', done);
      this.out.end();
    });
  }
}
