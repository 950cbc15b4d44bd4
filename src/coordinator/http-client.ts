/**
 * The control plane's HTTP client (undici), shared by the coordinator (driving agents), the agents
 * (registering, asking for plans and slots) and the CLI. Every failure becomes a VmsError whose
 * text names the peer, the URL and what to do: unreachable, token refused, or the peer's own
 * error message and code.
 */
import { request } from 'undici';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';

export interface ControlRequest {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  body?: unknown;
  token?: string;
  /** Whole-request timeout (headers and body). Default 15 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Who is called, for messages: "the coordinator", "source agent src1". */
  peer?: string;
}

/** An HTTP error answer of a peer; `code` is the peer's VMS code when it sent one. */
export class ControlHttpError extends VmsError {
  readonly status: number;
  constructor(code: ErrorCode, status: number, message: string) {
    super(code, message);
    this.name = 'ControlHttpError';
    this.status = status;
  }
}

const KNOWN_CODES = new Set<string>(Object.values(ErrorCode));

function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, '') + path;
}

/** Errors undici raises when nothing answered (as opposed to an HTTP error status). */
export function isConnectionError(e: unknown): boolean {
  const code = (e as { code?: string } | null)?.code ?? '';
  return (
    ['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ETIMEDOUT', 'EPIPE'].includes(code) ||
    code.startsWith('UND_ERR_CONNECT') ||
    code === 'UND_ERR_SOCKET' ||
    code === 'UND_ERR_CLOSED' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  );
}

export function unreachable(peer: string, url: string, e: unknown): VmsError {
  const reason = (e as Error)?.message || String(e);
  const code = (e as { code?: string } | null)?.code;
  return new VmsError(ErrorCode.UNREACHABLE, `cannot reach ${peer} at ${url}: ${reason}${code && !reason.includes(code) ? ` (${code})` : ''}`, { cause: e });
}

/** Turn an error status and body into a ControlHttpError that keeps the peer's message. */
export function httpError(peer: string, url: string, status: number, body: unknown): ControlHttpError {
  const b = (typeof body === 'object' && body !== null ? body : {}) as { message?: unknown; code?: unknown };
  const msg = typeof b.message === 'string' ? b.message : typeof body === 'string' && body ? body.slice(0, 300) : `HTTP ${status}`;
  if (status === 401)
    return new ControlHttpError(ErrorCode.UNAUTHORIZED, status, `${peer} at ${url} refused the token: ${msg.includes('VMSCATTER_TOKEN') ? msg : `${msg}; use the token the coordinator and agents were started with (VMSCATTER_TOKEN)`}`);
  const code =
    typeof b.code === 'string' && KNOWN_CODES.has(b.code)
      ? (b.code as ErrorCode)
      : status === 404
        ? ErrorCode.NOT_FOUND
        : status === 409
          ? ErrorCode.CONFLICT
          : status === 400
            ? ErrorCode.CONFIG
            : ErrorCode.AGENT;
  return new ControlHttpError(code, status, `${peer}: ${msg} (HTTP ${status} from ${url})`);
}

/** One JSON request; resolves with the parsed answer (undefined for 204). */
export async function controlCall<T>(baseUrl: string, path: string, o: ControlRequest = {}): Promise<T> {
  const url = joinUrl(baseUrl, path);
  const peer = o.peer ?? 'the peer';
  const headers: Record<string, string> = { accept: 'application/json' };
  if (o.token) headers.authorization = `Bearer ${o.token}`;
  let payload: string | undefined;
  if (o.body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(o.body);
  }
  const timeout = o.timeoutMs ?? 15_000;
  const signals = [AbortSignal.timeout(timeout), ...(o.signal ? [o.signal] : [])];
  let res: Awaited<ReturnType<typeof request>>;
  try {
    res = await request(url, {
      method: o.method ?? (o.body !== undefined ? 'POST' : 'GET'),
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
      signal: AbortSignal.any(signals),
      headersTimeout: timeout,
      bodyTimeout: timeout,
    });
  } catch (e) {
    if (o.signal?.aborted) throw new VmsError(ErrorCode.CANCELLED, `call to ${peer} at ${url} cancelled`, { cause: e });
    if ((e as Error).name === 'AbortError' || (e as Error).name === 'TimeoutError')
      throw new VmsError(ErrorCode.UNREACHABLE, `cannot reach ${peer} at ${url}: no answer within ${timeout} ms`, { cause: e });
    throw unreachable(peer, url, e);
  }
  let text: string;
  try {
    text = await res.body.text();
  } catch (e) {
    throw unreachable(peer, url, e);
  }
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (res.statusCode >= 400) throw httpError(peer, url, res.statusCode, parsed);
  return parsed as T;
}

/**
 * Retry a control call while the peer is unreachable (restarting), up to `graceMs`; HTTP errors
 * other than 502-504 are final and thrown at once.
 */
export async function callWithRetry<T>(fn: () => Promise<T>, o: { graceMs: number; signal?: AbortSignal; onRetry?: (e: VmsError, attempt: number) => void }): Promise<T> {
  const deadline = Date.now() + o.graceMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const retriable = isVmsError(e) && (e.code === ErrorCode.UNREACHABLE || (e instanceof ControlHttpError && e.status >= 502 && e.status <= 504));
      if (!retriable || Date.now() >= deadline || o.signal?.aborted) throw e;
      o.onRetry?.(e, attempt);
      const wait = Math.min(2000, 100 * 2 ** Math.min(attempt, 5));
      await sleep(Math.min(wait, Math.max(0, deadline - Date.now())), o.signal);
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Open a long-lived streaming GET (NDJSON or SSE). Resolves with the body once headers arrived;
 * `close()` aborts it.
 */
export async function openStream(
  baseUrl: string,
  path: string,
  o: { token?: string; peer?: string; accept: string; headers?: Record<string, string>; connectTimeoutMs?: number },
): Promise<{ body: AsyncIterable<Buffer>; close: () => void }> {
  const url = joinUrl(baseUrl, path);
  const peer = o.peer ?? 'the peer';
  const ac = new AbortController();
  const headers: Record<string, string> = { accept: o.accept, ...(o.headers ?? {}) };
  if (o.token) headers.authorization = `Bearer ${o.token}`;
  let res: Awaited<ReturnType<typeof request>>;
  try {
    res = await request(url, { method: 'GET', headers, signal: ac.signal, headersTimeout: o.connectTimeoutMs ?? 15_000, bodyTimeout: 0 });
  } catch (e) {
    throw unreachable(peer, url, e);
  }
  if (res.statusCode >= 400) {
    const text = await res.body.text().catch(() => '');
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* plain text */
    }
    throw httpError(peer, url, res.statusCode, parsed);
  }
  return { body: res.body as AsyncIterable<Buffer>, close: () => ac.abort() };
}

/** Split a byte stream into lines (NDJSON). */
export async function* lines(body: AsyncIterable<Buffer>): AsyncGenerator<string> {
  let rest = '';
  for await (const chunk of body) {
    rest += chunk.toString('utf8');
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, i);
      rest = rest.slice(i + 1);
      if (line.trim()) yield line;
    }
  }
  if (rest.trim()) yield rest;
}
