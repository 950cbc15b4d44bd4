/**
 * Helpers of the coordinator tests: child processes of the real CLI (killed by pid), free ports,
 * polling, and a server-sent-events reader over fetch.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

export const PROJECT_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const TOKEN = 'test-token-7f3a9c1e5b2d4680';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as T;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Poll a job through `get` (a GET returning a reply with json()) until it has ended; resolves with it. */
export async function waitForJobEnd(get: (url: string) => Promise<{ json(): any }>, id: string, timeoutMs = 30_000, everyMs = 100): Promise<Record<string, any>> {
  return waitFor(
    `job ${id} to end`,
    async () => {
      const j = (await get(`/v1/jobs/${id}`)).json();
      return ['succeeded', 'failed', 'cancelled', 'interrupted'].includes(j.state) ? (j as Record<string, any>) : undefined;
    },
    timeoutMs,
    everyMs,
  );
}

export interface Proc {
  child: ChildProcess;
  name: string;
  stdout: string[];
  stderr: string[];
  /** Resolves with the first stdout line matching re. */
  line(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Wrap a spawned child: collect output, wait for lines, kill by pid. */
export function track(name: string, child: ChildProcess): Proc {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: Array<{ re: RegExp; resolve: (m: RegExpMatchArray) => void }> = [];
  let outRest = '';
  child.stdout?.on('data', (d: Buffer) => {
    outRest += d.toString();
    let i: number;
    while ((i = outRest.indexOf('\n')) >= 0) {
      const l = outRest.slice(0, i);
      outRest = outRest.slice(i + 1);
      stdout.push(l);
      for (const w of [...waiters]) {
        const m = w.re.exec(l);
        if (m) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  });
  child.stderr?.on('data', (d: Buffer) => {
    stderr.push(d.toString());
    if (stderr.length > 2000) stderr.splice(0, 1000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    name,
    stdout,
    stderr,
    exited,
    line(re, timeoutMs = 30_000) {
      for (const l of stdout) {
        const m = re.exec(l);
        if (m) return Promise.resolve(m);
      }
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${name}: no stdout line matching ${re} within ${timeoutMs} ms; stderr: ${stderr.join('').slice(-2000)}`)), timeoutMs);
        const w = {
          re,
          resolve: (m: RegExpMatchArray) => {
            clearTimeout(t);
            resolve(m);
          },
        };
        waiters.push(w);
        exited.then((code) => {
          if (waiters.includes(w)) {
            clearTimeout(t);
            reject(new Error(`${name} exited (${code}) before printing ${re}; stderr: ${stderr.join('').slice(-2000)}`));
          }
        });
      });
    },
    async kill(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      const pid = child.pid;
      process.kill(pid, signal);
      const t = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** `node --import tsx src/cli/main.ts ...args` as a child of this test. */
export function cli(name: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, VMSCATTER_TOKEN: TOKEN, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return track(name, child);
}

export interface SseMessage {
  id: number;
  event: string;
  data: Record<string, unknown>;
}

/** Read a job's server-sent events with fetch until the stream ends (the job ended). */
export async function readSse(url: string, token: string, onMessage?: (m: SseMessage) => void, headers: Record<string, string> = {}): Promise<SseMessage[]> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream', ...headers } });
  if (!res.ok || !res.body) throw new Error(`SSE ${url}: HTTP ${res.status} ${await res.text()}`);
  if (!String(res.headers.get('content-type')).startsWith('text/event-stream')) throw new Error(`SSE ${url}: content-type ${res.headers.get('content-type')}`);
  return parseSseText(res.body, onMessage);
}

export async function parseSseText(body: AsyncIterable<Uint8Array> | string, onMessage?: (m: SseMessage) => void): Promise<SseMessage[]> {
  const out: SseMessage[] = [];
  let buf = '';
  const handle = (block: string): void => {
    let id = 0;
    let event = 'message';
    const data: string[] = [];
    for (const l of block.split('\n')) {
      if (l.startsWith('id:')) id = Number(l.slice(3));
      else if (l.startsWith('event:')) event = l.slice(6).trim();
      else if (l.startsWith('data:')) data.push(l.slice(5).trim());
    }
    if (!data.length) return;
    const m = { id, event, data: JSON.parse(data.join('\n')) as Record<string, unknown> };
    out.push(m);
    onMessage?.(m);
  };
  const feed = (s: string): void => {
    buf += s;
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      handle(buf.slice(0, i));
      buf = buf.slice(i + 2);
    }
  };
  if (typeof body === 'string') feed(body);
  else {
    const dec = new TextDecoder();
    for await (const chunk of body) feed(dec.decode(chunk, { stream: true }));
  }
  if (buf.trim()) handle(buf);
  return out;
}

/** fetch + bearer token + JSON. */
export async function api<T = Record<string, unknown>>(base: string, path: string, init: { method?: string; body?: unknown; token?: string } = {}): Promise<{ status: number; body: T }> {
  const res = await fetch(base + path, {
    method: init.method ?? (init.body !== undefined ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${init.token ?? TOKEN}`, ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}
