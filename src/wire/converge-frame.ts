/**
 * Converge channel framing: one TCP connection per VM, source agent -> target agent.
 *
 *   u8 type | be32 payload length | payload
 *
 * HELLO (source -> target, first): JSON { job, vm, version } naming the VM being rebuilt.
 * DATA: bytes of the VM's migration stream, with page payloads the target holds replaced by
 *       converge records (VmsRamFlag.REF / STORE in src/wire/qemu-stream.ts).
 * END:  be64 length and be64 xxh64 of the ORIGINAL stream: the target checks that what it
 *       rebuilt is exactly what the source QEMU sent before it releases the last bytes.
 * ABORT (either way): UTF-8 reason; the VM is not migrated.
 * STORED (target -> source): be32 content ids the target has just stored from STORE records.
 *       The source learns that a target holds a content only from these acknowledgements (or
 *       from scatter reports), so a reference never reaches a target before its content does.
 * RESULT (target -> source, last): JSON ConvergeResult.
 * DATA_LZ4: be32 decompressed length, then an LZ4 block of what a DATA frame would carry; sent
 *       instead of DATA when compression is on and the block shrinks.
 * CONSUMED (target -> source): be64 bytes of the rebuilt stream the target's consumer has taken
 *       (device state held back until END counts as taken). A source that has seen one keeps at
 *       most a window of stream bytes beyond it in flight: backpressure from the target QEMU then
 *       reaches the source QEMU through a short pipe, not through megabytes of socket buffers.
 *
 * The decoder is a small state machine that returns early until a whole frame has arrived.
 */
import { ErrorCode, StreamError } from '../errors.js';

export const FrameType = {
  HELLO: 1,
  DATA: 2,
  END: 3,
  ABORT: 4,
  RESULT: 5,
  STORED: 6,
  DATA_LZ4: 7,
  CONSUMED: 8,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_HEADER = 5;
/** DATA frames are cut at this size by the sender; the decoder rejects anything larger. */
export const MAX_FRAME_PAYLOAD = 4 * 1024 * 1024;
export const CONVERGE_PROTOCOL_VERSION = 1;

export interface HelloFrame {
  job: string;
  vm: string;
  version: number;
}

export interface ConvergeResult {
  ok: boolean;
  /** Error text and code when !ok. */
  error?: string;
  code?: string;
  /** Bytes of the standard stream written to the target's consumer. */
  streamBytes: number;
  /** performance.timeOrigin-relative ms when the target VM resumed (for downtime). */
  resumedAt?: number;
  /** Wall-clock epoch ms when the target VM resumed, for processes on different clocks. */
  resumedAtEpochMs?: number;
}

export function encodeFrameHeader(type: FrameType, length: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER);
  h[0] = type;
  h.writeUInt32BE(length, 1);
  return h;
}

export function encodeFrame(type: FrameType, payload: Buffer): Buffer {
  const f = Buffer.allocUnsafe(FRAME_HEADER + payload.length);
  f[0] = type;
  f.writeUInt32BE(payload.length, 1);
  payload.copy(f, FRAME_HEADER);
  return f;
}

export function encodeJsonFrame(type: FrameType, value: unknown): Buffer {
  return encodeFrame(type, Buffer.from(JSON.stringify(value), 'utf8'));
}

export function encodeEndFrame(streamBytes: number, xxh64: bigint): Buffer {
  const f = Buffer.allocUnsafe(FRAME_HEADER + 16);
  f[0] = FrameType.END;
  f.writeUInt32BE(16, 1);
  f.writeBigUInt64BE(BigInt(streamBytes), FRAME_HEADER);
  f.writeBigUInt64BE(xxh64, FRAME_HEADER + 8);
  return f;
}

export function encodeStoredFrame(ids: readonly number[]): Buffer {
  const f = Buffer.allocUnsafe(FRAME_HEADER + 4 * ids.length);
  f[0] = FrameType.STORED;
  f.writeUInt32BE(4 * ids.length, 1);
  for (let i = 0; i < ids.length; i++) f.writeUInt32BE(ids[i]!, FRAME_HEADER + 4 * i);
  return f;
}

export function encodeConsumedFrame(bytes: number): Buffer {
  const f = Buffer.allocUnsafe(FRAME_HEADER + 8);
  f[0] = FrameType.CONSUMED;
  f.writeUInt32BE(8, 1);
  f.writeBigUInt64BE(BigInt(bytes), FRAME_HEADER);
  return f;
}

export function decodeConsumed(payload: Buffer, offset: number): number {
  if (payload.length !== 8) throw new StreamError(ErrorCode.STREAM_MALFORMED, offset, `CONSUMED frame of ${payload.length} bytes; expected 8`);
  return Number(payload.readBigUInt64BE(0));
}

export function decodeStored(payload: Buffer, offset: number): Uint32Array {
  if (payload.length % 4 !== 0) throw new StreamError(ErrorCode.STREAM_MALFORMED, offset, `STORED frame of ${payload.length} bytes; expected a multiple of 4`);
  const ids = new Uint32Array(payload.length / 4);
  for (let i = 0; i < ids.length; i++) ids[i] = payload.readUInt32BE(4 * i);
  return ids;
}

export function decodeEnd(payload: Buffer, offset: number): { streamBytes: number; xxh64: bigint } {
  if (payload.length !== 16) throw new StreamError(ErrorCode.STREAM_MALFORMED, offset, `END frame of ${payload.length} bytes; expected 16`);
  return { streamBytes: Number(payload.readBigUInt64BE(0)), xxh64: payload.readBigUInt64BE(8) };
}

export function decodeJson<T>(payload: Buffer, offset: number, what: string): T {
  try {
    return JSON.parse(payload.toString('utf8')) as T;
  } catch (e) {
    throw new StreamError(ErrorCode.STREAM_MALFORMED, offset, `${what} frame is not valid JSON`, { cause: e });
  }
}

/**
 * Incremental frame decoder. `onFrame` gets a view of each payload (valid during the call).
 * Throws StreamError on an unknown type or an oversized frame; stays failed afterwards.
 */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private consumed = 0;
  private failure: StreamError | undefined;

  constructor(private readonly onFrame: (type: FrameType, payload: Buffer, offset: number) => void) {}

  /** Bytes buffered awaiting the rest of a frame. */
  get buffered(): number {
    return this.pendingBytes;
  }

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    let buf: Buffer;
    if (this.pendingBytes > 0) {
      // Join only once the whole pending frame is here: no quadratic re-copying of big frames.
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes < this.needed()) return;
      buf = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
    } else buf = chunk;
    let pos = 0;
    while (buf.length - pos >= FRAME_HEADER) {
      const type = buf[pos]!;
      const len = buf.readUInt32BE(pos + 1);
      if (type < FrameType.HELLO || type > FrameType.CONSUMED)
        this.fail(new StreamError(ErrorCode.STREAM_MALFORMED, this.consumed + pos, `unknown converge frame type ${type}`));
      if (len > MAX_FRAME_PAYLOAD)
        this.fail(new StreamError(ErrorCode.STREAM_MALFORMED, this.consumed + pos, `converge frame of ${len} bytes exceeds ${MAX_FRAME_PAYLOAD}`));
      if (buf.length - pos < FRAME_HEADER + len) break;
      const start = pos + FRAME_HEADER;
      pos = start + len;
      try {
        this.onFrame(type as FrameType, buf.subarray(start, pos), this.consumed + start);
      } catch (e) {
        this.consumed += pos;
        this.fail(e);
      }
    }
    this.consumed += pos;
    if (pos < buf.length) {
      const rest = buf.subarray(pos);
      this.pending.push(rest);
      this.pendingBytes = rest.length;
    }
  }

  /** Bytes the pending frame needs in all (header first, then header + payload). */
  private needed(): number {
    if (this.pendingBytes < FRAME_HEADER) return FRAME_HEADER;
    const first = this.pending[0]!;
    if (first.length >= FRAME_HEADER) return FRAME_HEADER + first.readUInt32BE(1);
    const head = Buffer.concat(this.pending, this.pendingBytes).subarray(0, FRAME_HEADER);
    return FRAME_HEADER + head.readUInt32BE(1);
  }

  /** The connection ended: an incomplete frame is a truncation. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.pendingBytes > 0)
      this.fail(new StreamError(ErrorCode.STREAM_TRUNCATED, this.consumed, `connection ended inside a frame (${this.pendingBytes} bytes of it arrived)`));
  }

  private fail(e: unknown): never {
    this.failure = e instanceof StreamError ? e : new StreamError(ErrorCode.STREAM_MALFORMED, this.consumed, String(e), { cause: e });
    throw this.failure;
  }
}
