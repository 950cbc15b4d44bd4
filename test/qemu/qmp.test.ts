/**
 * QMP client against a peer speaking QMP JSON lines on a real unix socket (no QEMU needed).
 * The peer answers by id and can reorder, delay, withhold replies and push events.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { spawn, spawnSync } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCode, VmsError } from '../../src/errors.js';
import { QmpClient, QmpCommandError, QmpLineDecoder, type QmpEvent } from '../../src/qemu/qmp.js';

const hasPython3 = spawnSync('python3', ['--version']).status === 0;
if (!hasPython3) console.warn('QMP test of a full listen queue skipped: python3 is not installed (it holds a socket without accepting)');

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'test' }, capabilities: ['oob'] } };

interface Cmd {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: number;
}

type Handler = (cmd: Cmd, sock: Socket) => void;

/** A QMP peer: greeting, then each command line goes to `handler`. */
class QmpPeer {
  server: Server;
  sockets: Socket[] = [];
  received: Cmd[] = [];
  constructor(
    public path: string,
    public handler: Handler,
    greeting: unknown = GREETING,
  ) {
    this.server = createServer((sock) => {
      this.sockets.push(sock);
      sock.on('error', () => {});
      sock.write(`${JSON.stringify(greeting)}\r\n`);
      let buf = '';
      sock.on('data', (c: Buffer) => {
        buf += c.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const cmd = JSON.parse(line) as Cmd;
          this.received.push(cmd);
          this.handler(cmd, sock);
        }
      });
    });
  }
  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, () => resolve()));
  }
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function reply(sock: Socket, cmd: Cmd, ret: unknown): void {
  sock.write(`${JSON.stringify({ return: ret, id: cmd.id })}\r\n`);
}

function event(sock: Socket, name: string, data: Record<string, unknown>, seconds: number, microseconds: number): void {
  sock.write(`${JSON.stringify({ timestamp: { seconds, microseconds }, event: name, data })}\r\n`);
}

/** A handler close to QEMU's for the commands these tests use. */
const standard: Handler = (cmd, sock) => {
  switch (cmd.execute) {
    case 'qmp_capabilities':
      return reply(sock, cmd, {});
    case 'query-status':
      return reply(sock, cmd, { status: 'running', singlestep: false, running: true });
    case 'echo':
      return reply(sock, cmd, cmd.arguments ?? null);
    case 'stop':
      event(sock, 'STOP', {}, 1700000000, 123456);
      return reply(sock, cmd, {});
    case 'never':
      return; // no reply
    default:
      sock.write(`${JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` }, id: cmd.id })}\r\n`);
  }
};

let dir: string;
let peer: QmpPeer | undefined;
let client: QmpClient | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmsq-qmp-'));
});

afterEach(async () => {
  client?.destroy();
  client = undefined;
  await peer?.close();
  peer = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function start(handler: Handler = standard, greeting?: unknown): Promise<QmpClient> {
  peer = new QmpPeer(join(dir, 'qmp.sock'), handler, greeting);
  await peer.listen();
  client = await QmpClient.connect(peer.path, { timeoutMs: 2000 });
  return client;
}

describe('QmpLineDecoder', () => {
  it('splits lines across and within chunks, tolerating CRLF and blank lines', () => {
    const d = new QmpLineDecoder();
    const text = '{"a":1}\r\n\r\n{"b":"x\\ny"}\n{"c":[1,2]}\r\n';
    const out: unknown[] = [];
    for (const byte of Buffer.from(text)) out.push(...d.push(Buffer.from([byte])));
    expect(out).toEqual([{ a: 1 }, { b: 'x\ny' }, { c: [1, 2] }]);
    expect(new QmpLineDecoder().push(Buffer.from(text))).toEqual(out);
  });

  it('keeps a partial line until its newline arrives', () => {
    const d = new QmpLineDecoder();
    expect(d.push(Buffer.from('{"ret'))).toEqual([]);
    expect(d.push(Buffer.from('urn":{}}\r'))).toEqual([]);
    expect(d.push(Buffer.from('\n{"x":2}\n{"y"'))).toEqual([{ return: {} }, { x: 2 }]);
  });

  it('multi-byte UTF-8 split across chunks survives', () => {
    const d = new QmpLineDecoder();
    const line = Buffer.from('{"desc":"größe €"}\n');
    const out = [...d.push(line.subarray(0, 12)), ...d.push(line.subarray(12))];
    expect(out).toEqual([{ desc: 'größe €' }]);
  });

  it('rejects a line that is not JSON with a QEMU-coded error', () => {
    const d = new QmpLineDecoder();
    expect(() => d.push(Buffer.from('HTTP/1.1 400 Bad Request\r\n'))).toThrow(VmsError);
    try {
      new QmpLineDecoder().push(Buffer.from('garbage\n'));
    } catch (e) {
      expect((e as VmsError).code).toBe(ErrorCode.QEMU);
    }
  });
});

describe('QmpLineDecoder fuzz', () => {
  // Deterministic PRNG so a failure reproduces.
  let seed = 0x9e3779b9;
  const rnd = (n: number): number => {
    seed ^= seed << 13;
    seed >>>= 0;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    seed >>>= 0;
    return seed % n;
  };

  it('random bytes only ever raise VmsError(QEMU)', () => {
    for (let round = 0; round < 2000; round++) {
      const d = new QmpLineDecoder();
      const len = rnd(200);
      const buf = Buffer.alloc(len);
      for (let i = 0; i < len; i++) buf[i] = rnd(4) === 0 ? 0x0a : rnd(256);
      try {
        d.push(buf);
      } catch (e) {
        expect(e).toBeInstanceOf(VmsError);
        expect((e as VmsError).code).toBe(ErrorCode.QEMU);
      }
    }
  });

  it('any split of a valid message sequence decodes to the same messages', () => {
    const msgs = [GREETING, { return: {}, id: 1 }, { event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } }, { return: { s: 'a\nb' }, id: 2 }];
    const bytes = Buffer.from(msgs.map((m) => `${JSON.stringify(m)}\r\n`).join(''));
    for (let round = 0; round < 500; round++) {
      const d = new QmpLineDecoder();
      const out: unknown[] = [];
      let off = 0;
      while (off < bytes.length) {
        const n = 1 + rnd(40);
        out.push(...d.push(bytes.subarray(off, off + n)));
        off += n;
      }
      expect(out).toEqual(msgs);
    }
  });
});

describe('QmpClient', () => {
  it('negotiates capabilities and exposes the greeting', async () => {
    const c = await start();
    expect(c.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(peer?.received[0]?.execute).toBe('qmp_capabilities');
    expect(await c.execute('query-status')).toMatchObject({ status: 'running' });
  });

  it('passes arguments and matches pipelined replies by id, even out of order', async () => {
    const held: Array<() => void> = [];
    const c = await start((cmd, sock) => {
      if (cmd.execute === 'qmp_capabilities') return reply(sock, cmd, {});
      held.push(() => reply(sock, cmd, cmd.arguments));
      if (held.length === 3) for (const h of held.reverse()) h();
    });
    const results = await Promise.all([c.execute('echo', { n: 1 }), c.execute('echo', { n: 2 }), c.execute('echo', { n: 3 })]);
    expect(results).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
  });

  it('turns an error reply into QmpCommandError with QEMU class and description', async () => {
    const c = await start();
    const err = await c.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toBeInstanceOf(VmsError);
    const q = err as QmpCommandError;
    expect(q.code).toBe(ErrorCode.QEMU);
    expect(q.qmpClass).toBe('CommandNotFound');
    expect(q.qmpDesc).toContain('no-such-command');
    expect(q.command).toBe('no-such-command');
    // The connection stays usable.
    expect(await c.execute('echo', { ok: true })).toEqual({ ok: true });
  });

  it('times out a command without reply, drops the late reply, and carries on', async () => {
    let late: (() => void) | undefined;
    const c = await start((cmd, sock) => {
      if (cmd.execute === 'slow') {
        late = () => reply(sock, cmd, 'late');
        return;
      }
      standard(cmd, sock);
    });
    const t0 = Date.now();
    const err = await c.execute('slow', undefined, { timeoutMs: 150 }).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
    late?.();
    expect(await c.execute('echo', { after: 1 })).toEqual({ after: 1 });
  });

  it('delivers events with QEMU timestamps, before the reply that caused them', async () => {
    const c = await start();
    const seen: QmpEvent[] = [];
    c.on('event', (e) => seen.push(e));
    const stop = c.waitEvent('STOP');
    await c.execute('stop');
    const ev = await stop;
    expect(ev.event).toBe('STOP');
    expect(ev.timestamp).toEqual({ seconds: 1700000000, microseconds: 123456 });
    expect(ev.timeMs).toBeCloseTo(1700000000123.456, 3);
    expect(seen.map((e) => e.event)).toEqual(['STOP']);
  });

  it('waitEvent filters by predicate and times out with TIMEOUT', async () => {
    let sock: Socket | undefined;
    const c = await start((cmd, s) => {
      sock = s;
      standard(cmd, s);
    });
    const want = c.waitEvent('MIGRATION', (e) => e.data['status'] === 'completed', 2000);
    event(sock!, 'MIGRATION', { status: 'setup' }, 1, 0);
    event(sock!, 'RESUME', {}, 1, 1);
    event(sock!, 'MIGRATION', { status: 'active' }, 1, 2);
    event(sock!, 'MIGRATION', { status: 'completed' }, 1, 3);
    const ev = await want;
    expect(ev.data['status']).toBe('completed');
    expect(ev.timestamp.microseconds).toBe(3);

    const t0 = Date.now();
    const err = await c.waitEvent('NEVER', undefined, 100).catch((e: unknown) => e);
    expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(90);
    expect(c.listenerCount('event')).toBe(0);
  });

  it('events() iterates events in order and ends when the connection closes', async () => {
    let sock: Socket | undefined;
    const c = await start((cmd, s) => {
      sock = s;
      standard(cmd, s);
    });
    const it = c.events();
    event(sock!, 'STOP', {}, 10, 1);
    event(sock!, 'RESUME', {}, 10, 2);
    const names: string[] = [];
    for await (const ev of it) {
      names.push(ev.event);
      if (names.length === 2) sock!.destroy();
    }
    expect(names).toEqual(['STOP', 'RESUME']);
  });

  it('rejects pending commands and waiters when the peer goes away', async () => {
    let sock: Socket | undefined;
    const c = await start((cmd, s) => {
      sock = s;
      standard(cmd, s);
    });
    const pending = c.execute('never', undefined, { timeoutMs: 5000 });
    const waiting = c.waitEvent('SHUTDOWN', undefined, 5000);
    const closed = new Promise((r) => c.once('close', r));
    await sleep(20);
    sock!.destroy();
    await closed;
    expect(((await pending.catch((e: unknown) => e)) as VmsError).code).toBe(ErrorCode.QEMU);
    expect(((await waiting.catch((e: unknown) => e)) as VmsError).code).toBe(ErrorCode.QEMU);
    expect(c.closed).toBe(true);
    expect(((await c.execute('query-status').catch((e: unknown) => e)) as VmsError).code).toBe(ErrorCode.QEMU);
  });

  it('retries until the socket appears (QEMU still starting)', async () => {
    const path = join(dir, 'late.sock');
    setTimeout(() => {
      peer = new QmpPeer(path, standard);
      void peer.listen();
    }, 200);
    client = await QmpClient.connect(path, { timeoutMs: 3000 });
    expect(await client.execute('query-status')).toMatchObject({ running: true });
  });

  // A listener that accepts nobody for a while, as QEMU's monitor still busy with a connection
  // ahead (a source agent's probe of the guest): one connection waits in the queue, the next
  // connect fails with EAGAIN. Node cannot listen without accepting, so python3 holds the socket.
  it.skipIf(!hasPython3)('retries while the listen queue is full (EAGAIN), then negotiates', { timeout: 10_000 }, async () => {
    const path = join(dir, 'busy.sock');
    const script = [
      'import socket, sys, time, json',
      's = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(0)',
      "print('listening', flush=True)",
      'time.sleep(0.4)',
      'c, _ = s.accept(); c.close()',
      'c, _ = s.accept()',
      `c.sendall(${JSON.stringify(JSON.stringify(GREETING))}.encode() + b'\\r\\n')`,
      'f = c.makefile("rb")',
      'for line in f:',
      '    cmd = json.loads(line)',
      "    r = {'running': True, 'status': 'running'} if cmd['execute'] == 'query-status' else {}",
      "    c.sendall(json.dumps({'return': r, 'id': cmd.get('id')}).encode() + b'\\r\\n')",
    ].join('\n');
    const py = spawn('python3', ['-c', script, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((resolve) => py.stdout.once('data', resolve));
      // The queue's one place, taken as by a client QEMU has not accepted.
      const first = connect(path);
      first.on('error', () => {});
      await new Promise((resolve) => first.once('connect', resolve));
      const err = await new Promise<NodeJS.ErrnoException>((resolve) => connect(path).once('error', resolve));
      expect(err.code).toBe('EAGAIN'); // the condition under test, straight from the kernel
      const t0 = Date.now();
      client = await QmpClient.connect(path, { timeoutMs: 3000 });
      expect(Date.now() - t0).toBeGreaterThan(200); // it did wait for the queue to clear
      expect(await client.execute('query-status')).toMatchObject({ running: true });
      first.destroy();
    } finally {
      py.kill();
    }
  });

  it('gives up with TIMEOUT when no socket appears', async () => {
    const t0 = Date.now();
    const err = await QmpClient.connect(join(dir, 'nothing.sock'), { timeoutMs: 200 }).catch((e: unknown) => e);
    expect((err as VmsError).code).toBe(ErrorCode.TIMEOUT);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('rejects a peer that is not QMP', async () => {
    const err = await start(standard, { hello: 'world' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsError);
    expect((err as VmsError).code).toBe(ErrorCode.QEMU);
    expect((err as VmsError).message).toContain('greeting');
  });

  it('reports a refused capabilities negotiation', async () => {
    const err = await start((cmd, sock) => {
      sock.write(`${JSON.stringify({ error: { class: 'CommandNotFound', desc: 'Expecting capabilities negotiation with qmp_capabilities' }, id: cmd.id })}\n`);
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect((err as QmpCommandError).qmpDesc).toContain('qmp_capabilities');
  });

  it('events that arrive in the same chunk as the greeting are not lost', async () => {
    peer = new QmpPeer(join(dir, 'q.sock'), standard);
    // Replace the connection handler: greeting and an event in one write.
    peer.server.removeAllListeners('connection');
    peer.server.on('connection', (sock: Socket) => {
      sock.on('error', () => {});
      sock.write(`${JSON.stringify(GREETING)}\r\n${JSON.stringify({ event: 'EARLY', data: {}, timestamp: { seconds: 5, microseconds: 6 } })}\r\n`);
      sock.on('data', (c: Buffer) => {
        for (const line of c.toString().split('\n').filter(Boolean)) standard(JSON.parse(line) as Cmd, sock);
      });
    });
    await peer.listen();
    client = await QmpClient.connect(peer.path, { timeoutMs: 2000 });
    expect(client.recentEvents.map((e) => e.event)).toEqual(['EARLY']);
    expect(client.recentEvents[0]?.timestamp).toEqual({ seconds: 5, microseconds: 6 });
  });
});
