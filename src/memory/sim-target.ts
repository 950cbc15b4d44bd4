/**
 * A simulated migration target: what `qemu -incoming` does with a standard v3 stream. Pages are
 * written into a sparse RamImage, the device state is checked against the simulated devices, and
 * only a complete stream "resumes" the VM. A truncated or malformed stream, an error of the
 * input, or abort() rejects `done`; the target then never reports resumed.
 */
import { Writable } from 'node:stream';
import { ErrorCode, StreamError, VmsError } from '../errors.js';
import { type RamBlockInfo, SectionType, StreamParser } from '../wire/qemu-stream.js';
import { RamImage } from './ram-image.js';
import { parseSimDeviceTail, type SimDeviceState } from './sim-devices.js';

export interface TargetResult {
  /** performance.now() when the VM resumed (the stream was complete and loaded). */
  resumedAt: number;
  image: RamImage;
  /** The device tail as received (first FULL section to the end). */
  deviceState: Buffer;
  devices: SimDeviceState;
  /** Stream bytes consumed. */
  bytes: number;
  /** Records applied (QEMU's `normal` and `duplicate` on the receiving side). */
  pages: number;
  zeroPages: number;
}

export interface SimTargetOptions {
  /** For error messages. */
  name?: string;
  /** Upper bound of the device tail; more is a malformed stream (default 16 MiB; QEMU's is ~100 KB). */
  maxTailBytes?: number;
}

export class SimTarget {
  /** Write the migration stream here (pipe a socket into it). */
  readonly stream: Writable;
  /** Resolves when the VM resumed; rejects on a bad or incomplete stream or abort(). */
  readonly done: Promise<TargetResult>;
  private readonly name: string;
  private readonly maxTail: number;
  private readonly parser: StreamParser;
  private image: RamImage | undefined;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private tailOffset = -1;
  private sawStart = false;
  private sawEnd = false;
  private pages = 0;
  private zeroPages = 0;
  private settled = false;
  private resolveDone!: (r: TargetResult) => void;
  private rejectDone!: (e: VmsError) => void;

  constructor(opts: SimTargetOptions = {}) {
    this.name = opts.name ?? 'target';
    this.maxTail = opts.maxTailBytes ?? 16 * 1024 * 1024;
    this.done = new Promise<TargetResult>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // A caller that never awaits `done` must not crash the process with an unhandled rejection.
    this.done.catch(() => {});
    this.parser = new StreamParser({
      section: (type) => {
        if (type === SectionType.START) this.sawStart = true;
        else if (type === SectionType.END) this.sawEnd = true;
      },
      memSize: (blocks) => this.onMemSize(blocks),
      zero: (block, offset, fill) => {
        this.image!.fillPage(block, offset, fill);
        this.zeroPages++;
      },
      page: (block, offset, data) => {
        this.image!.writePage(block, offset, data, 0);
        this.pages++;
      },
      deviceTail: (chunk) => this.onTail(chunk),
    });
    this.stream = new Writable({
      highWaterMark: 1024 * 1024,
      write: (chunk: Buffer, _enc, cb) => {
        if (this.settled) return cb(this.failedError());
        try {
          this.parser.push(chunk);
        } catch (e) {
          cb(this.settle(e));
          return;
        }
        cb();
      },
      final: (cb) => {
        if (this.settled) return cb(this.failedError());
        try {
          const result = this.complete();
          this.settled = true;
          this.resolveDone(result);
          cb();
        } catch (e) {
          cb(this.settle(e));
        }
      },
    });
    this.stream.on('error', (e) => this.settle(e));
    this.stream.on('close', () => {
      if (!this.settled)
        this.settle(new StreamError(ErrorCode.STREAM_TRUNCATED, this.parser.offset, `migration stream into ${this.name} closed before it ended; the VM is not resumed`));
    });
  }

  /** The RAM image being materialized (undefined until MEM_SIZE arrives). */
  get ramImage(): RamImage | undefined {
    return this.image;
  }

  /** Discard the incoming VM: `done` rejects (with `err`, or CANCELLED), the stream is destroyed. */
  abort(err?: unknown): void {
    const e = this.settle(err ?? new VmsError(ErrorCode.CANCELLED, `incoming migration into ${this.name} aborted; the target VM is discarded`));
    if (!this.stream.destroyed) this.stream.destroy(e);
  }

  private failedError(): VmsError {
    return new VmsError(ErrorCode.CANCELLED, `incoming migration into ${this.name} was already discarded`);
  }

  /** Reject `done` once; returns the error. */
  private settle(e: unknown): VmsError {
    const err = e instanceof VmsError ? e : new VmsError(ErrorCode.CONVERGE, `incoming migration into ${this.name} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    if (!this.settled) {
      this.settled = true;
      this.image = undefined;
      this.tail = [];
      this.rejectDone(err);
    }
    return err;
  }

  private onMemSize(blocks: readonly RamBlockInfo[]): void {
    try {
      this.image = new RamImage(blocks);
    } catch (e) {
      throw new StreamError(ErrorCode.STREAM_MALFORMED, this.parser.offset, `MEM_SIZE announces unusable RAM blocks: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private onTail(chunk: Buffer): void {
    if (this.tailOffset < 0) this.tailOffset = this.parser.offset - chunk.length;
    this.tailBytes += chunk.length;
    if (this.tailBytes > this.maxTail)
      throw new StreamError(ErrorCode.STREAM_MALFORMED, this.parser.offset, `device state longer than ${this.maxTail} bytes; not a simulated VM's stream`);
    this.tail.push(Buffer.from(chunk)); // the parser's chunk is only valid during the call
  }

  /** The input ended: check that the stream was complete. Throws StreamError otherwise. */
  private complete(): TargetResult {
    this.parser.end(); // STREAM_TRUNCATED unless the device state began
    const at = this.parser.offset;
    if (!this.image || !this.sawStart) throw new StreamError(ErrorCode.STREAM_MALFORMED, at, 'device state without a "ram" START section and MEM_SIZE; the stream is not from a pre-copy migration');
    if (!this.sawEnd) throw new StreamError(ErrorCode.STREAM_MALFORMED, this.tailOffset, 'device state began before the "ram" END section; the source never completed its RAM');
    const deviceState = Buffer.concat(this.tail, this.tailBytes);
    const devices = parseSimDeviceTail(deviceState, this.tailOffset);
    return { resumedAt: performance.now(), image: this.image, deviceState, devices, bytes: this.parser.offset, pages: this.pages, zeroPages: this.zeroPages };
  }
}
