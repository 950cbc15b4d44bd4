/**
 * Source side of the converge channel. A Writable that takes one VM's QEMU migration stream
 * (from a simulated VM or from QEMU's `migrate` socket) and forwards it to the target agent
 * over one TCP connection, replacing each page whose content the target already holds by a
 * reference. Backpressure is end to end: the write callback waits for the socket to drain, so
 * the VM's pre-copy sees the real path's bandwidth.
 */
import { Writable, type Duplex } from 'node:stream';
import { compress } from 'lz4-napi';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { ContentSet } from '../memory/content-set.js';
import { worthCompressing } from './compress-probe.js';
import type { XXHash } from 'xxhash-wasm';
import { loadXxhash } from '../memory/xxhash.js';
import {
  CONVERGE_PROTOCOL_VERSION,
  FrameDecoder,
  FrameType,
  decodeJson,
  decodeConsumed,
  decodeStored,
  encodeEndFrame,
  encodeFrame,
  encodeFrameHeader,
  encodeJsonFrame,
  type ConvergeResult,
  type HelloFrame,
} from '../wire/converge-frame.js';
import { StreamParser, StreamWriter, type StreamHandler } from '../wire/qemu-stream.js';

/** Collision-safe identity of a page content (the content index). */
export interface ContentLookup {
  /** Id of a stored content byte-identical to buf[off..off+4096), or -1. */
  lookup(buf: Buffer, off?: number): number;
}

export interface ConvergeSourceOptions {
  socket: Duplex;
  job: string;
  vm: string;
  /** Content identity; without it every page goes whole (plain migration through the proxy). */
  contents?: ContentLookup;
  /** What the target is known to hold: filled by scatter reports and by the target's STORED acks. */
  holds?: ContentSet;
  /** Job-wide: index contents that appeared in any VM's stream (for the dedup minimum). */
  seen?: ContentSet;
  /** How long to wait for the target's RESULT after END. */
  resultTimeoutMs?: number;
  /**
   * Compress DATA frames with LZ4, in libuv's thread pool (pays where the link, not the CPU, is
   * the bottleneck): frames whose samples do not compress are sent as they are (worthCompressing).
   */
  compress?: 'lz4';
  /**
   * Order among a job's concurrent migrations (MigrationPriority): asked before each write of the
   * VM's stream; a promise holds the write (backpressure to the VM's pre-copy) while other VMs
   * go first. A VM going ahead of the others has a full window (CONVERGE_WINDOW_BYTES) even when
   * `windowBytes` is its smaller share of the job's budget.
   */
  priority?: { turn(vm: string): Promise<void> | null; ahead(vm: string): boolean };
  /**
   * Stream bytes allowed in flight beyond what the target reported CONSUMED (once it reports at
   * all). Socket buffers alone would let megabytes pile up ahead of a slow target QEMU, all of
   * which the VM's downtime then waits for. Default CONVERGE_WINDOW_BYTES.
   */
  windowBytes?: number;
}

/**
 * 1 MiB: above the 2 x 256 KiB the StreamWriters on both ends may hold back (smaller could
 * stall), small enough to drain in a few ms at the target.
 */
export const CONVERGE_WINDOW_BYTES = 1024 * 1024;
/** The smallest window: four CONSUMED reports' worth (the target reports every 64 KiB). */
export const MIN_WINDOW_BYTES = 256 * 1024;
/**
 * In flight for all of a job's concurrent VMs together, with a priority among them (the VM going
 * ahead of the others has a full window on top): 2 MiB keeps a
 * 250 Mbit/s link with a 28 ms round trip busy (its bandwidth-delay product is 0.9 MB).
 */
export const JOB_WINDOW_BYTES = 2 * 1024 * 1024;

export interface ConvergeSourceStats {
  /** Bytes of the original stream (what plain QEMU migration sends). */
  streamBytes: number;
  /** Bytes written to the socket (frames included). */
  wireBytes: number;
  pagesWhole: number;
  pagesStored: number;
  pagesRef: number;
  /** DATA frames sent LZ4-compressed. */
  compressedFrames: number;
  /** Stream bytes sent uncompressed without a try: frames whose samples did not compress (worthCompressing). */
  compressSkippedBytes: number;
  /** Pages whose content the index did not hold (unique at scan time, or written since). */
  pagesUnindexed: number;
}

/**
 * Stream bytes of DATA frames that may wait for their LZ4 compression (libuv's thread pool) or
 * behind one that does: four frames, so that the pool's threads can all work on one VM.
 */
export const COMPRESS_QUEUE_BYTES = 1024 * 1024;

/** Frames (or other writes) waiting, in stream order, for a compression ahead of them. */
interface Queued {
  ready: boolean;
  bufs: Buffer[];
  /** What it counts against COMPRESS_QUEUE_BYTES. */
  bytes: number;
}

export class ConvergeSource extends Writable {
  readonly stats: ConvergeSourceStats = { streamBytes: 0, wireBytes: 0, pagesWhole: 0, pagesStored: 0, pagesRef: 0, compressedFrames: 0, compressSkippedBytes: 0, pagesUnindexed: 0 };
  /** Resolves with the target's RESULT once the VM runs there; rejects when the migration failed. */
  readonly result: Promise<ConvergeResult>;

  private readonly socket: Duplex;
  private readonly parser: StreamParser;
  private readonly writer: StreamWriter;
  private readonly queue: Queued[] = [];
  private queuedBytes = 0;
  private hash: XXHash<bigint> | undefined;
  private drainWaiter: ((err?: Error | null) => void) | undefined;
  /** Stream bytes the target's consumer has taken; -1 until the target reports (old targets never do). */
  private consumed = -1;
  private readonly windowBytes: number;
  private settled = false;
  private resolveResult!: (r: ConvergeResult) => void;
  private rejectResult!: (e: Error) => void;
  private resultTimer: NodeJS.Timeout | undefined;
  private readonly resultTimeoutMs: number;

  constructor(private readonly opts: ConvergeSourceOptions) {
    super({ highWaterMark: 256 * 1024 });
    this.socket = opts.socket;
    this.resultTimeoutMs = opts.resultTimeoutMs ?? 120_000;
    this.windowBytes = Math.max(opts.windowBytes ?? CONVERGE_WINDOW_BYTES, MIN_WINDOW_BYTES);
    this.result = new Promise((res, rej) => {
      this.resolveResult = res;
      this.rejectResult = rej;
    });
    // The result is also observed through 'error'; avoid an unhandled rejection if nobody awaits it.
    this.result.catch(() => {});

    this.writer = new StreamWriter((chunk) => this.sendData(chunk));
    this.parser = new StreamParser(this.rewriter(), {});

    const decoder = new FrameDecoder((type, payload, offset) => {
      if (type === FrameType.STORED) {
        if (opts.holds) for (const id of decodeStored(payload, offset)) opts.holds.add(id);
      } else if (type === FrameType.CONSUMED) {
        this.consumed = Math.max(this.consumed, decodeConsumed(payload, offset));
        this.release();
      } else if (type === FrameType.RESULT) this.onResult(decodeJson<ConvergeResult>(payload, offset, 'RESULT'));
      else if (type === FrameType.ABORT) this.settle(new VmsError(ErrorCode.CONVERGE, `target aborted VM ${opts.vm}: ${payload.toString('utf8')}`));
      else throw new VmsError(ErrorCode.CONVERGE, `unexpected frame type ${type} from the target`);
    });
    this.socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch (e) {
        this.settle(e instanceof Error ? e : new Error(String(e)));
      }
    });
    this.socket.on('drain', () => this.release());
    this.socket.on('error', (e) => this.settle(new VmsError(ErrorCode.CONVERGE, `converge connection for VM ${opts.vm} failed: ${e.message}`, { cause: e })));
    this.socket.on('close', () => this.settle(new VmsError(ErrorCode.CONVERGE, `target closed the converge connection for VM ${opts.vm} before reporting a result`)));

    const hello: HelloFrame = { job: opts.job, vm: opts.vm, version: CONVERGE_PROTOCOL_VERSION };
    this.put(encodeJsonFrame(FrameType.HELLO, hello));
  }

  private rewriter(): StreamHandler {
    const lookup = this.opts.contents;
    const holds = this.opts.holds;
    const seen = this.opts.seen;
    // Contents stored through this connection: the target has them before it parses anything
    // that follows on the same connection, so they can be referenced at once.
    const storedHere = new ContentSet(1024);
    const stats = this.stats;
    const raw = (): void => this.writer.raw(this.parser.record);
    return {
      preamble: raw,
      section: raw,
      memSize: raw,
      zero: raw,
      eos: raw,
      footer: raw,
      deviceTail: (chunk) => this.writer.raw(chunk),
      page: (block, offset, data, cont) => {
        const id = lookup ? lookup.lookup(data, 0) : -1;
        if (id < 0) stats.pagesUnindexed++;
        else seen?.add(id);
        if (id < 0 || !holds) {
          stats.pagesWhole++;
          raw();
          return;
        }
        const name = this.parser.ramBlocks[block]!.name;
        if (holds.has(id) || storedHere.has(id)) {
          stats.pagesRef++;
          this.writer.ref(name, offset, id, cont);
        } else {
          // Sent whole once and kept by the target, which acknowledges it (STORED): later pages
          // with this content, from any VM going to this target, become references.
          stats.pagesStored++;
          storedHere.add(id);
          this.writer.storePage(name, offset, id, data, 0, cont);
        }
      },
    };
  }

  override _construct(cb: (err?: Error | null) => void): void {
    loadXxhash().then(
      (x) => {
        this.hash = x.create64();
        cb();
      },
      (e: unknown) => cb(e as Error),
    );
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const hold = this.opts.priority?.turn(this.opts.vm);
    if (hold) void hold.then(() => this.writeNow(chunk, cb));
    else this.writeNow(chunk, cb);
  }

  private writeNow(chunk: Buffer, cb: (err?: Error | null) => void): void {
    if (this.settled) return cb(new VmsError(ErrorCode.CONVERGE, `converge for VM ${this.opts.vm} already ended`));
    try {
      this.stats.streamBytes += chunk.length;
      this.hash!.update(chunk);
      this.parser.push(chunk);
    } catch (e) {
      this.abortWith(e);
      return cb(e as Error);
    }
    this.afterDrain(cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    try {
      this.parser.end();
      this.writer.flush();
      this.put(encodeEndFrame(this.stats.streamBytes, this.hash!.digest()));
    } catch (e) {
      this.abortWith(e);
      return cb(e as Error);
    }
    this.resultTimer = setTimeout(
      () => this.settle(new VmsError(ErrorCode.TIMEOUT, `target did not report VM ${this.opts.vm} running within ${this.resultTimeoutMs} ms of the stream's end`)),
      this.resultTimeoutMs,
    );
    this.afterDrain(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (err && !this.settled) this.abortWith(err);
    cb(err);
  }

  /** Stop: tell the target to discard the VM. The source VM keeps running (caller's job). */
  cancel(reason: string): void {
    this.abortWith(new VmsError(ErrorCode.CANCELLED, reason));
  }

  private abortWith(e: unknown): void {
    if (this.settled) return;
    const err = isVmsError(e) ? e : new VmsError(ErrorCode.CONVERGE, String(e), { cause: e });
    if (!this.socket.destroyed) {
      this.socket.write(encodeFrame(FrameType.ABORT, Buffer.from(`${err.code}: ${err.message}`, 'utf8')));
      this.socket.end();
    }
    this.settle(err);
  }

  private sendData(chunk: Buffer): void {
    if (this.opts.compress === 'lz4') {
      if (!worthCompressing(chunk)) this.stats.compressSkippedBytes += chunk.length;
      else {
        // In libuv's thread pool, off the main thread, which parses, looks up and sends every
        // VM's stream (in the demo, 6 pairs: mean downtime 30 ms against 41 with compressSync
        // on the main thread, the same time). Frames leave in stream order: what follows a
        // frame in compression waits behind it.
        const entry: Queued = { ready: false, bufs: [], bytes: chunk.length };
        this.queue.push(entry);
        this.queuedBytes += entry.bytes;
        compress(chunk)
          .then(
            (packed) => this.compressed(entry, chunk, packed),
            () => this.compressed(entry, chunk, null),
          )
          .catch((e: unknown) => this.abortWith(e)); // a throw while sending: this VM fails, not the process
        return;
      }
    }
    this.put(encodeFrameHeader(FrameType.DATA, chunk.length));
    this.put(chunk);
  }

  /** A frame's compression is done (`packed` null if it failed: the frame goes as it is). */
  private compressed(entry: Queued, chunk: Buffer, packed: Buffer | null): void {
    if (packed && packed.length + 4 < chunk.length) {
      const len = Buffer.allocUnsafe(4);
      len.writeUInt32BE(chunk.length, 0);
      this.stats.compressedFrames++;
      entry.bufs = [encodeFrameHeader(FrameType.DATA_LZ4, packed.length + 4), len, packed];
    } else entry.bufs = [encodeFrameHeader(FrameType.DATA, chunk.length), chunk];
    entry.ready = true;
    while (this.queue[0]?.ready) {
      const e = this.queue.shift()!;
      this.queuedBytes -= e.bytes;
      for (const b of e.bufs) this.toSocket(b);
    }
    this.release();
  }

  /** Onto the connection, behind any frame still in compression. */
  private put(buf: Buffer): void {
    if (this.queue.length === 0) this.toSocket(buf);
    else {
      this.queue.push({ ready: true, bufs: [buf], bytes: buf.length });
      this.queuedBytes += buf.length;
    }
  }

  private toSocket(buf: Buffer): void {
    // Once settled (an abort went out, or the socket failed), frames still in compression are dropped.
    if (this.settled || this.socket.destroyed) return;
    this.stats.wireBytes += buf.length;
    this.socket.write(buf);
  }

  private afterDrain(cb: (err?: Error | null) => void): void {
    // The writer may hold back references standing for far more stream bytes than the window:
    // send them before waiting for the target to consume, or it never could.
    if (this.windowShut()) this.writer.flush();
    if (this.blocked()) this.drainWaiter = cb;
    else cb();
  }

  private windowShut(): boolean {
    if (this.consumed < 0) return false;
    const window = this.opts.priority?.ahead(this.opts.vm) ? Math.max(this.windowBytes, CONVERGE_WINDOW_BYTES) : this.windowBytes;
    return this.stats.streamBytes - this.consumed > window;
  }

  /** The socket needs draining, the target is a window behind, or compression is. */
  private blocked(): boolean {
    return this.socket.writableNeedDrain || this.windowShut() || this.queuedBytes > COMPRESS_QUEUE_BYTES;
  }

  private release(): void {
    if (!this.drainWaiter || this.blocked()) return;
    const w = this.drainWaiter;
    this.drainWaiter = undefined;
    w();
  }

  private onResult(r: ConvergeResult): void {
    if (r.ok) this.settle(undefined, r);
    else this.settle(new VmsError(ErrorCode.CONVERGE, `target failed VM ${this.opts.vm}: ${r.error ?? 'no reason given'}`));
  }

  private settle(err: Error | undefined, r?: ConvergeResult): void {
    if (this.settled) return;
    this.settled = true;
    if (this.resultTimer) clearTimeout(this.resultTimer);
    const w = this.drainWaiter;
    this.drainWaiter = undefined;
    w?.(err ?? null);
    if (err) {
      this.rejectResult(err);
      if (!this.socket.destroyed) this.socket.destroy();
    } else {
      this.resolveResult(r!);
      this.socket.end();
    }
  }
}
