/**
 * Target side of the converge channel: one accepted TCP connection = one VM being rebuilt.
 *
 * Expands references from the target's content store, acknowledges the pages it stores (STORED),
 * and writes a standard QEMU v3 stream to
 * the VM's consumer (a simulated target, or a target QEMU's `-incoming`). The device-state tail
 * is held back until the source's END frame proves the rebuilt stream is byte-identical to the
 * original (length and xxh64): a consumer never sees a complete stream that is not exactly what
 * the source sent, so a target never resumes a VM whose stream is incomplete or corrupted.
 */
import type { Duplex, Writable } from 'node:stream';
import { uncompressSync } from 'lz4-napi';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import type { ContentStore } from '../memory/content-store.js';
import { loadXxhash } from '../memory/xxhash.js';
import type { XXHash } from 'xxhash-wasm';
import {
  CONVERGE_PROTOCOL_VERSION,
  FrameDecoder,
  FrameType,
  MAX_FRAME_PAYLOAD,
  decodeEnd,
  decodeJson,
  encodeConsumedFrame,
  encodeJsonFrame,
  encodeStoredFrame,
  type ConvergeResult,
  type HelloFrame,
} from '../wire/converge-frame.js';
import { StreamParser, StreamWriter } from '../wire/qemu-stream.js';

/** Where a rebuilt stream goes: a simulated target or a target QEMU. */
export interface IncomingVm {
  /** Receives a standard v3 stream; end() is called once it is complete and verified. */
  stream: Writable;
  /** Resolves when the VM runs on the target (epoch ms of the resume). Must reject on failure. */
  done: Promise<{ resumedAtEpochMs: number }>;
  /** Discard the VM: it must never resume. */
  abort(err: Error): void;
}

export type IncomingFactory = (hello: HelloFrame) => IncomingVm | Promise<IncomingVm>;

export interface ConvergeTargetOptions {
  /** Pause the socket when this many rebuilt bytes wait for the consumer. */
  highWaterBytes?: number;
}

export interface ConvergeTargetStats {
  vm: string;
  wireBytes: number;
  streamBytes: number;
  pagesExpanded: number;
  pagesStored: number;
}

export class ConvergeTargetConnection {
  readonly stats: ConvergeTargetStats = { vm: '', wireBytes: 0, streamBytes: 0, pagesExpanded: 0, pagesStored: 0 };
  /** Resolves when the VM resumed on this target; rejects when the connection failed. */
  readonly result: Promise<ConvergeResult & { vm: string }>;

  private readonly decoder: FrameDecoder;
  private parser: StreamParser | undefined;
  private writer: StreamWriter | undefined;
  private consumer: IncomingVm | undefined;
  private consumerReady: Promise<void> | undefined;
  private hash: XXHash<bigint> | undefined;
  private readonly queue: Buffer[] = [];
  private readonly acks: number[] = [];
  private queuedBytes = 0;
  private readonly heldTail: Buffer[] = [];
  private heldBytes = 0;
  /** Last CONSUMED count sent to the source. */
  private reportedConsumed = -1;
  private pumping = false;
  private pumpIdle: (() => void) | undefined;
  private ended = false;
  private failed = false;
  private resolve!: (r: ConvergeResult & { vm: string }) => void;
  private reject!: (e: Error) => void;
  private readonly highWater: number;

  /** The content store of this connection's job (known once HELLO names the job). */
  private store!: ContentStore;

  constructor(
    private readonly socket: Duplex,
    /** A store, or how to find the job's store from HELLO (content ids are per job). */
    private readonly storeOf: ContentStore | ((hello: HelloFrame) => ContentStore),
    private readonly factory: IncomingFactory,
    opts: ConvergeTargetOptions = {},
  ) {
    this.highWater = opts.highWaterBytes ?? 1024 * 1024;
    this.result = new Promise((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.result.catch(() => {});
    this.decoder = new FrameDecoder((type, payload, offset) => this.onFrame(type, payload, offset));
    socket.on('data', (chunk: Buffer) => {
      this.stats.wireBytes += chunk.length;
      try {
        this.decoder.push(chunk);
      } catch (e) {
        this.fail(e);
      }
    });
    socket.on('end', () => {
      if (!this.ended) this.fail(new VmsError(ErrorCode.STREAM_TRUNCATED, `source closed the converge connection of VM ${this.stats.vm || '?'} before END: the VM is not migrated`));
    });
    socket.on('error', (e) => this.fail(new VmsError(ErrorCode.CONVERGE, `converge connection of VM ${this.stats.vm || '?'} failed: ${e.message}`, { cause: e })));
    socket.on('close', () => {
      if (!this.ended) this.fail(new VmsError(ErrorCode.CONVERGE, `converge connection of VM ${this.stats.vm || '?'} closed before END`));
    });
  }

  private onFrame(type: FrameType, payload: Buffer, offset: number): void {
    if (this.failed) return;
    switch (type) {
      case FrameType.HELLO: {
        if (this.consumerReady) throw new VmsError(ErrorCode.CONVERGE, 'second HELLO on one converge connection');
        const hello = decodeJson<HelloFrame>(payload, offset, 'HELLO');
        if (typeof hello.vm !== 'string' || typeof hello.job !== 'string' || hello.version !== CONVERGE_PROTOCOL_VERSION)
          throw new VmsError(ErrorCode.CONVERGE, `bad HELLO ${payload.toString('utf8').slice(0, 200)}: expected { job, vm, version: ${CONVERGE_PROTOCOL_VERSION} }`);
        this.stats.vm = hello.vm;
        this.store = typeof this.storeOf === 'function' ? this.storeOf(hello) : this.storeOf;
        this.writer = new StreamWriter((chunk) => this.enqueue(chunk));
        this.parser = new StreamParser(this.expander(), { converge: true });
        this.consumerReady = Promise.all([Promise.resolve(this.factory(hello)), loadXxhash()]).then(([c, x]) => {
          this.consumer = c;
          c.done.catch(() => {}); // observed in finish(); a failure before that is ours, not the consumer's
          this.hash = x.create64();
          c.stream.on('error', (e) => this.fail(e));
          if (this.failed) c.abort(new VmsError(ErrorCode.CONVERGE, 'converge failed before the target was ready'));
          else {
            this.reportConsumed(true);
            this.pump();
          }
        });
        this.consumerReady.catch((e: unknown) => this.fail(e));
        return;
      }
      case FrameType.DATA:
        if (!this.parser) throw new VmsError(ErrorCode.CONVERGE, 'DATA before HELLO');
        this.parser.push(payload);
        // Hand the consumer what this frame rebuilt now: holding it back would hold the
        // source's window shut (and the target QEMU idle) for nothing.
        this.writer!.flush();
        if (this.acks.length > 0) {
          this.socket.write(encodeStoredFrame(this.acks));
          this.acks.length = 0;
        }
        return;
      case FrameType.DATA_LZ4: {
        if (!this.parser) throw new VmsError(ErrorCode.CONVERGE, 'DATA before HELLO');
        if (payload.length < 4) throw new VmsError(ErrorCode.STREAM_MALFORMED, `DATA_LZ4 frame of ${payload.length} bytes`);
        const rawLen = payload.readUInt32BE(0);
        if (rawLen > MAX_FRAME_PAYLOAD) throw new VmsError(ErrorCode.STREAM_MALFORMED, `DATA_LZ4 frame announces ${rawLen} bytes; at most ${MAX_FRAME_PAYLOAD}`);
        let raw: Buffer;
        try {
          raw = uncompressSync(payload.subarray(4));
        } catch (e) {
          throw new VmsError(ErrorCode.STREAM_MALFORMED, `DATA_LZ4 frame does not decompress: ${(e as Error).message}`, { cause: e });
        }
        if (raw.length !== rawLen) throw new VmsError(ErrorCode.STREAM_MALFORMED, `DATA_LZ4 frame decompressed to ${raw.length} bytes, announced ${rawLen}`);
        return this.onFrame(FrameType.DATA, raw, offset);
      }
      case FrameType.END: {
        if (!this.parser || !this.writer) throw new VmsError(ErrorCode.CONVERGE, 'END before HELLO');
        const end = decodeEnd(payload, offset);
        this.parser.end();
        this.writer.flush();
        this.ended = true;
        void this.finish(end.streamBytes, end.xxh64).catch((e: unknown) => this.fail(e));
        return;
      }
      case FrameType.ABORT:
        this.fail(new VmsError(ErrorCode.CANCELLED, `source aborted VM ${this.stats.vm}: ${payload.toString('utf8')}`));
        return;
      default:
        throw new VmsError(ErrorCode.CONVERGE, `unexpected frame type ${type} from the source`);
    }
  }

  private expander() {
    const store = this.store;
    const stats = this.stats;
    const raw = (): void => this.writer!.raw(this.parser!.record);
    return {
      preamble: raw,
      section: raw,
      memSize: raw,
      zero: raw,
      eos: raw,
      footer: raw,
      page: (block: number, offset: number, data: Buffer, cont: boolean, storeId: number) => {
        if (storeId < 0) return raw();
        store.put(storeId, data);
        this.acks.push(storeId);
        stats.pagesStored++;
        this.writer!.page(this.parser!.ramBlocks[block]!.name, offset, data, 0, cont);
      },
      ref: (block: number, offset: number, id: number, cont: boolean) => {
        const page = store.get(id);
        // The source references only what this target acknowledged or what came earlier on
        // this connection: a miss is a protocol violation, never a reason to guess.
        if (!page) throw new VmsError(ErrorCode.CONVERGE, `VM ${stats.vm}: reference to content ${id}, which this target does not hold`);
        stats.pagesExpanded++;
        this.writer!.page(this.parser!.ramBlocks[block]!.name, offset, page, 0, cont);
      },
      deviceTail: (chunk: Buffer) => {
        // Everything before the tail must be queued first, then the tail is held until END.
        this.writer!.flush();
        this.heldTail.push(chunk);
        // Held on purpose, not for lack of room: it must not hold the source's window shut.
        this.heldBytes += chunk.length;
        this.reportConsumed(true);
      },
    };
  }

  private enqueue(chunk: Buffer): void {
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    if (this.queuedBytes > this.highWater && !this.socket.isPaused()) this.socket.pause();
    this.pump();
  }

  /** Writes queued chunks to the consumer in order, with the consumer's backpressure. */
  private pump(): void {
    if (this.pumping || !this.consumer || this.failed) return;
    this.pumping = true;
    void this.drainQueue()
      .catch((e: unknown) => this.fail(e))
      .finally(() => {
        this.pumping = false;
        // A chunk queued after the loop saw an empty queue but before this ran (a socket resume
        // delivers buffered data on nextTick) would wait for the next arrival, and under the
        // source's window there may be none: pump again.
        if (this.queue.length > 0 && !this.failed) return this.pump();
        const idle = this.pumpIdle;
        this.pumpIdle = undefined;
        idle?.();
      });
  }

  private async drainQueue(): Promise<void> {
    const out = this.consumer!.stream;
    while (this.queue.length > 0 && !this.failed) {
      const buf = this.queue.shift()!;
      this.queuedBytes -= buf.length;
      this.write(out, buf);
      if (out.writableNeedDrain) await onceDrain(out);
      if (this.queuedBytes < this.highWater >>> 1 && this.socket.isPaused() && !this.failed) this.socket.resume();
      this.reportConsumed(this.queue.length === 0);
    }
  }

  /** Tell the source how far the consumer got (CONSUMED), every 64 KiB and whenever idle. */
  private reportConsumed(force: boolean): void {
    if (this.failed || this.socket.destroyed || !this.consumer) return;
    const consumed = this.stats.streamBytes + this.heldBytes;
    if (consumed === this.reportedConsumed || (!force && consumed - this.reportedConsumed < 64 * 1024)) return;
    this.reportedConsumed = consumed;
    this.socket.write(encodeConsumedFrame(consumed));
  }

  private write(out: Writable, buf: Buffer): void {
    this.hash!.update(buf);
    this.stats.streamBytes += buf.length;
    out.write(buf);
  }

  private async finish(expectedBytes: number, expectedHash: bigint): Promise<void> {
    await this.consumerReady;
    while (this.pumping || this.queue.length > 0) {
      if (this.failed) return;
      await new Promise<void>((r) => {
        this.pumpIdle = r;
        this.pump();
      });
    }
    if (this.failed) return;
    let tailBytes = 0;
    for (const t of this.heldTail) {
      this.hash!.update(t);
      tailBytes += t.length;
    }
    const total = this.stats.streamBytes + tailBytes;
    const digest = this.hash!.digest();
    if (total !== expectedBytes || digest !== expectedHash)
      throw new VmsError(
        ErrorCode.VERIFY,
        `rebuilt stream of VM ${this.stats.vm} differs from the source's: ${total} bytes xxh64 ${digest.toString(16)}, source sent ${expectedBytes} bytes xxh64 ${expectedHash.toString(16)}; the VM is not resumed`,
      );
    const out = this.consumer!.stream;
    for (const t of this.heldTail) {
      this.stats.streamBytes += t.length;
      out.write(t);
    }
    out.end();
    const { resumedAtEpochMs } = await this.consumer!.done;
    const result: ConvergeResult & { vm: string } = { vm: this.stats.vm, ok: true, streamBytes: this.stats.streamBytes, resumedAtEpochMs };
    this.socket.write(encodeJsonFrame(FrameType.RESULT, result));
    this.socket.end();
    this.resolve(result);
  }

  private fail(e: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.ended = true;
    const err = isVmsError(e) ? e : new VmsError(ErrorCode.CONVERGE, e instanceof Error ? e.message : String(e), { cause: e });
    this.consumer?.abort(err);
    this.heldTail.length = 0;
    this.queue.length = 0;
    const idle = this.pumpIdle;
    this.pumpIdle = undefined;
    idle?.();
    if (!this.socket.destroyed) {
      const r: ConvergeResult = { ok: false, error: err.message, code: err.code, streamBytes: this.stats.streamBytes };
      this.socket.end(encodeJsonFrame(FrameType.RESULT, r));
    }
    this.reject(err);
  }
}

function onceDrain(s: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      s.off('error', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
    s.on('error', done);
  });
}
