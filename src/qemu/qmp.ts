/**
 * QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * The framing (`QmpLineDecoder`) is pure: bytes in, parsed JSON messages out, so it is tested
 * without sockets. `QmpClient` sits on any Duplex stream; `QmpClient.connect()` opens a unix
 * socket, reads the greeting and negotiates capabilities.
 *
 * Every command carries an `id`; replies are matched by it, so commands may be pipelined.
 * Events keep QEMU's own timestamp (seconds + microseconds since the epoch, taken in QEMU),
 * which is what downtime measurements from STOP/RESUME need: not the time Node read them.
 */
import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCode, VmsError } from '../errors.js';

export interface QmpTimestamp {
  readonly seconds: number;
  readonly microseconds: number;
}

export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  readonly timestamp: QmpTimestamp;
  /** QEMU's timestamp as milliseconds since the epoch (fractional). */
  readonly timeMs: number;
}

export interface QmpGreeting {
  readonly version: {
    readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
    readonly package: string;
  };
  readonly capabilities: readonly string[];
}

/** A command QEMU answered with `{"error": {...}}`: carries QEMU's class and description. */
export class QmpCommandError extends VmsError {
  readonly command: string;
  readonly qmpClass: string;
  readonly qmpDesc: string;
  constructor(command: string, qmpClass: string, qmpDesc: string) {
    super(ErrorCode.QEMU, `QMP command '${command}' failed: ${qmpClass}: ${qmpDesc}`);
    this.name = 'QmpCommandError';
    this.command = command;
    this.qmpClass = qmpClass;
    this.qmpDesc = qmpDesc;
  }
}

export const QMP_DEFAULT_TIMEOUT_MS = 30_000;
/** Events kept in `recentEvents`. */
export const EVENT_HISTORY = 256;
/** QEMU refuses lines longer than this; its own output is far shorter. Guards against garbage. */
const MAX_LINE_BYTES = 64 * 1024 * 1024;

/**
 * Splits a QMP byte stream into JSON messages. QEMU writes one JSON object per line, ending
 * "\r\n"; chunks from the socket may hold several messages or a fraction of one.
 */
export class QmpLineDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  /** Feed bytes; returns every complete message. Throws VmsError(QEMU) on a non-JSON line. */
  push(chunk: Buffer): unknown[] {
    const out: unknown[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      let line: Buffer = chunk.subarray(start, nl);
      if (this.pendingBytes > 0) {
        this.pending.push(line);
        line = Buffer.concat(this.pending);
        this.pending = [];
        this.pendingBytes = 0;
      }
      start = nl + 1;
      const text = line.toString('utf8').trim();
      if (text.length === 0) continue;
      try {
        out.push(JSON.parse(text));
      } catch (cause) {
        throw new VmsError(
          ErrorCode.QEMU,
          `QMP peer sent a line that is not JSON: ${JSON.stringify(text.slice(0, 120))}; is this socket a QMP monitor?`,
          { cause },
        );
      }
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.pending.push(rest);
      this.pendingBytes += rest.length;
      if (this.pendingBytes > MAX_LINE_BYTES) {
        throw new VmsError(ErrorCode.QEMU, `QMP line longer than ${MAX_LINE_BYTES} bytes without a newline`);
      }
    }
    return out;
  }
}

export interface QmpExecuteOptions {
  /** Reject with VmsError(TIMEOUT) after this long. Default QMP_DEFAULT_TIMEOUT_MS. */
  readonly timeoutMs?: number;
}

export interface QmpConnectOptions {
  /** How long to keep retrying while the socket does not exist yet or refuses. Default 10 s. */
  readonly timeoutMs?: number;
}

interface PendingCommand {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [Error | undefined];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function toEvent(msg: Record<string, unknown>): QmpEvent {
  const ts = isRecord(msg['timestamp']) ? msg['timestamp'] : {};
  const seconds = typeof ts['seconds'] === 'number' ? ts['seconds'] : 0;
  const microseconds = typeof ts['microseconds'] === 'number' ? ts['microseconds'] : 0;
  return {
    event: String(msg['event']),
    data: isRecord(msg['data']) ? msg['data'] : {},
    timestamp: { seconds, microseconds },
    timeMs: seconds * 1000 + microseconds / 1000,
  };
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  readonly greeting: QmpGreeting;
  private readonly stream: Duplex;
  private readonly decoder: QmpLineDecoder;
  private readonly pending = new Map<number, PendingCommand>();
  private nextId = 1;
  private readonly history: QmpEvent[] = [];
  private closeError: Error | undefined;
  private isClosed = false;

  private constructor(stream: Duplex, greeting: QmpGreeting, decoder: QmpLineDecoder, early: unknown[]) {
    super();
    this.stream = stream;
    this.greeting = greeting;
    this.decoder = decoder;
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('error', (err) => this.shutdown(new VmsError(ErrorCode.QEMU, `QMP socket error: ${err.message}`, { cause: err })));
    stream.on('close', () => this.shutdown(undefined));
    for (const msg of early) this.onMessage(msg);
  }

  /** Connect to a QMP unix socket, read the greeting and leave capabilities negotiation mode. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let socket: Socket | undefined;
    let lastErr: unknown;
    while (socket === undefined) {
      try {
        socket = await openUnix(path);
      } catch (err) {
        lastErr = err;
        const code = (err as NodeJS.ErrnoException).code;
        // ENOENT, ECONNREFUSED: QEMU is not listening yet. EAGAIN: its listen queue is full, a
        // connection QEMU has not accepted yet ahead of this one (a monitor serves one client at
        // a time and QEMU keeps a short queue): seen when a source agent attached right after its
        // probe of whether the guest runs (qemu-guests.ts), while QEMU was still busy.
        const transient = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
        if (!transient || Date.now() >= deadline) {
          throw new VmsError(
            transient ? ErrorCode.TIMEOUT : ErrorCode.QEMU,
            `cannot connect to QMP socket ${path}: ${(err as Error).message}; is QEMU running with -qmp unix:${path},server=on,wait=off?`,
            { cause: lastErr },
          );
        }
        await sleep(50);
      }
    }
    try {
      return await QmpClient.negotiate(socket, Math.max(1000, deadline - Date.now()));
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Run the QMP handshake on an already connected stream (any Duplex: a socket, a test pair). */
  static async negotiate(stream: Duplex, timeoutMs = 10_000): Promise<QmpClient> {
    const decoder = new QmpLineDecoder();
    const early: unknown[] = [];
    const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new VmsError(ErrorCode.TIMEOUT, `no QMP greeting within ${timeoutMs} ms; the peer may not be a QMP monitor`)),
        timeoutMs,
      );
      const cleanup = (): void => {
        clearTimeout(timer);
        stream.off('data', onData);
        stream.off('error', onError);
        stream.off('close', onClose);
      };
      const fail = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onData = (chunk: Buffer): void => {
        let msgs: unknown[];
        try {
          msgs = decoder.push(chunk);
        } catch (err) {
          fail(err as Error);
          return;
        }
        const first = msgs.shift();
        if (first === undefined) return;
        if (!isRecord(first) || !isRecord(first['QMP'])) {
          fail(new VmsError(ErrorCode.QEMU, `expected a QMP greeting {"QMP": ...}, got ${JSON.stringify(first).slice(0, 200)}`));
          return;
        }
        cleanup();
        early.push(...msgs);
        stream.pause();
        resolve(first['QMP'] as unknown as QmpGreeting);
      };
      const onError = (err: Error): void => fail(new VmsError(ErrorCode.QEMU, `QMP socket error before greeting: ${err.message}`, { cause: err }));
      const onClose = (): void => fail(new VmsError(ErrorCode.QEMU, 'QMP socket closed before the greeting; another client may hold the monitor'));
      stream.on('data', onData);
      stream.on('error', onError);
      stream.on('close', onClose);
    });
    const client = new QmpClient(stream, greeting, decoder, early);
    stream.resume();
    try {
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
    } catch (err) {
      client.destroy();
      throw err;
    }
    return client;
  }

  /**
   * The last EVENT_HISTORY events, oldest first, including any that arrived before a listener
   * could be attached (e.g. together with the greeting).
   */
  get recentEvents(): readonly QmpEvent[] {
    return this.history;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Execute a command; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(
        new VmsError(ErrorCode.QEMU, `QMP command '${command}' not sent: connection closed`, { cause: this.closeError }),
      );
    }
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? QMP_DEFAULT_TIMEOUT_MS;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg['arguments'] = args;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VmsError(ErrorCode.TIMEOUT, `QMP command '${command}' got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.stream.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /**
   * Wait for the next event named `name` (and matching `pred`). Subscribe before triggering it:
   * `const p = qmp.waitEvent('RESUME'); await qmp.execute('cont'); await p;`
   */
  waitEvent(name: string, pred?: (ev: QmpEvent) => boolean, timeoutMs = QMP_DEFAULT_TIMEOUT_MS): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (ev: QmpEvent): void => {
        if (ev.event !== name) return;
        if (pred !== undefined && !pred(ev)) return;
        cleanup();
        resolve(ev);
      };
      const onClose = (err: Error | undefined): void => {
        cleanup();
        reject(new VmsError(ErrorCode.QEMU, `QMP connection closed while waiting for event ${name}`, { cause: err }));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new VmsError(ErrorCode.TIMEOUT, `QMP event ${name} did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      if (this.isClosed) {
        onClose(this.closeError);
        return;
      }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Events from now on, as an async iterator; it ends when the connection closes. */
  events(): AsyncIterableIterator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let waiter: ((r: IteratorResult<QmpEvent>) => void) | undefined;
    let done = this.isClosed;
    const onEvent = (ev: QmpEvent): void => {
      if (waiter !== undefined) {
        const w = waiter;
        waiter = undefined;
        w({ value: ev, done: false });
      } else queue.push(ev);
    };
    const finish = (): void => {
      done = true;
      this.off('event', onEvent);
      this.off('close', finish);
      if (waiter !== undefined) {
        const w = waiter;
        waiter = undefined;
        w({ value: undefined, done: true });
      }
    };
    if (!done) {
      this.on('event', onEvent);
      this.on('close', finish);
    }
    const it: AsyncIterableIterator<QmpEvent> = {
      next: () => {
        const ev = queue.shift();
        if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          waiter = resolve;
        });
      },
      return: () => {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  /** Close the connection gracefully; pending commands are rejected. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    await new Promise<void>((resolve) => {
      this.stream.once('close', () => resolve());
      this.stream.end();
      // A peer that does not close its side must not hold us up.
      setTimeout(() => {
        this.stream.destroy();
        resolve();
      }, 1000).unref();
    });
    this.shutdown(undefined);
  }

  /** Drop the connection at once. */
  destroy(): void {
    this.stream.destroy();
    this.shutdown(undefined);
  }

  private onData(chunk: Buffer): void {
    let msgs: unknown[];
    try {
      msgs = this.decoder.push(chunk);
    } catch (err) {
      this.stream.destroy();
      this.shutdown(err as Error);
      return;
    }
    for (const msg of msgs) this.onMessage(msg);
  }

  private onMessage(msg: unknown): void {
    if (!isRecord(msg)) return;
    if (typeof msg['event'] === 'string') {
      const ev = toEvent(msg);
      this.history.push(ev);
      if (this.history.length > EVENT_HISTORY) this.history.shift();
      this.emit('event', ev);
      return;
    }
    const isReturn = 'return' in msg;
    const isError = isRecord(msg['error']);
    if (!isReturn && !isError) return;
    let id = typeof msg['id'] === 'number' ? msg['id'] : undefined;
    // QEMU answers input it could not parse without an id; it processes in order, so the
    // oldest outstanding command is the one it refers to.
    if (id === undefined) id = this.pending.keys().next().value;
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (p === undefined) return; // reply after its timeout: dropped
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (isError) {
      const e = msg['error'] as Record<string, unknown>;
      p.reject(new QmpCommandError(p.command, String(e['class'] ?? 'GenericError'), String(e['desc'] ?? '')));
    } else {
      p.resolve(msg['return']);
    }
  }

  private shutdown(err: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new VmsError(ErrorCode.QEMU, `QMP connection closed before '${p.command}' was answered (QEMU exited?)`, { cause: err }));
    }
    this.pending.clear();
    this.emit('close', err);
  }
}

function openUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect(path);
    const onError = (err: Error): void => {
      s.destroy();
      reject(err);
    };
    s.once('error', onError);
    s.once('connect', () => {
      s.off('error', onError);
      resolve(s);
    });
  });
}
