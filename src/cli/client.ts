/**
 * The coordinator's API for the CLI (undici), with messages a person can act on: where the
 * coordinator was looked for and how to point elsewhere, and whether the token is missing or
 * wrong. Server-sent events are read with reconnection (Last-Event-ID) until the job ends.
 */
import { CONTROL_DEFAULTS, mergeConfig, readConfigFile, resolveConfig, envConfig } from '../config.js';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { controlCall, openStream, sleep, type ControlRequest } from '../coordinator/http-client.js';
import type { JobEvent } from '../coordinator/jobs.js';
import type { AgentView, EvacuationRequest, JobView, MigrationRequest, PlanReply } from '../coordinator/schemas.js';

export interface ClientFlags {
  coordinator?: string;
  config?: string;
}

export interface SseEvent {
  id: number;
  type: string;
  data: JobEvent & { at?: string };
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string,
  ) {}

  /** URL: --coordinator, else VMSCATTER_COORDINATOR, else the config file, else the default; token: VMSCATTER_TOKEN. */
  static fromFlags(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env): ApiClient {
    const file = flags.config ?? env.VMSCATTER_CONFIG;
    const cfg = resolveConfig(
      mergeConfig(file ? readConfigFile(file) : {}, envConfig(env), flags.coordinator ? { coordinator: { url: flags.coordinator } } : {}),
      'client settings (--coordinator, VMSCATTER_COORDINATOR, VMSCATTER_TOKEN)',
    );
    if (!cfg.auth.token)
      throw new VmsError(ErrorCode.UNAUTHORIZED, `VMSCATTER_TOKEN is not set: the coordinator at ${cfg.coordinator.url} needs its bearer token (export VMSCATTER_TOKEN=... as given to the coordinator)`);
    return new ApiClient(cfg.coordinator.url, cfg.auth.token);
  }

  private async call<T>(path: string, o: ControlRequest = {}): Promise<T> {
    try {
      return await controlCall<T>(this.baseUrl, path, { ...o, token: this.token, peer: 'the coordinator' });
    } catch (e) {
      throw explain(e, this.baseUrl);
    }
  }

  health(): Promise<{ ok: boolean; version: string }> {
    return this.call('/healthz');
  }
  evacuate(body: EvacuationRequest): Promise<JobView> {
    return this.call('/v1/evacuations', { body });
  }
  migrate(body: MigrationRequest): Promise<JobView> {
    return this.call('/v1/migrations', { body });
  }
  plan(body: EvacuationRequest): Promise<PlanReply> {
    return this.call('/v1/plans', { body, timeoutMs: 300_000 });
  }
  jobs(q: { state?: string; limit?: number } = {}): Promise<{ jobs: JobView[] }> {
    const qs = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined).map(([k, v]): [string, string] => [k, String(v)])).toString();
    return this.call(`/v1/jobs${qs ? `?${qs}` : ''}`);
  }
  job(id: string): Promise<JobView> {
    return this.call(`/v1/jobs/${encodeURIComponent(id)}`);
  }
  cancel(id: string): Promise<JobView> {
    return this.call(`/v1/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
  }
  agents(): Promise<{ agents: AgentView[] }> {
    return this.call('/v1/agents');
  }

  /**
   * Follow a job's server-sent events until its final `job` event. A dropped connection is
   * resumed after the last event seen (a coordinator restart looks like that too).
   */
  async events(
    id: string,
    onEvent: (e: SseEvent) => void,
    o: { signal?: AbortSignal; reconnectForMs?: number; /** Once per outage, when the coordinator cannot be reached. */ onUnreachable?: (err: Error, forMs: number) => void } = {},
  ): Promise<void> {
    let last = 0;
    let downSince: number | undefined;
    const reconnectForMs = o.reconnectForMs ?? 60_000;
    while (!o.signal?.aborted) {
      let ended = false;
      try {
        const s = await openStream(this.baseUrl, `/v1/jobs/${encodeURIComponent(id)}/events`, {
          token: this.token,
          peer: 'the coordinator',
          accept: 'text/event-stream',
          headers: last ? { 'last-event-id': String(last) } : {},
        });
        downSince = undefined;
        const onAbort = (): void => s.close();
        o.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          for await (const ev of parseSse(s.body)) {
            last = ev.id;
            onEvent(ev);
            if (ev.type === 'job' && TERMINAL.has((ev.data as { state: string }).state)) ended = true;
          }
        } catch (e) {
          if (o.signal?.aborted) return;
          if (!ended) throw e;
        } finally {
          o.signal?.removeEventListener('abort', onAbort);
        }
        if (ended) return;
      } catch (e) {
        if (o.signal?.aborted) return;
        const err = explain(e, this.baseUrl);
        if (err.code !== ErrorCode.UNREACHABLE) throw err;
        if (downSince === undefined) {
          downSince = Date.now();
          o.onUnreachable?.(err, reconnectForMs);
        }
        if (Date.now() - downSince > reconnectForMs) throw err;
      }
      // The stream ended without the final event (the coordinator restarted): resume after `last`.
      await sleep(1000, o.signal);
    }
  }
}

/** Parse a text/event-stream body into events (comments and retry lines skipped). */
export async function* parseSse(body: AsyncIterable<Buffer>): AsyncGenerator<SseEvent> {
  let buf = '';
  for await (const chunk of body) {
    buf += chunk.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let id = 0;
      let type = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('id:')) id = Number(line.slice(3).trim());
        else if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { id, type, data: JSON.parse(data.join('\n')) as SseEvent['data'] };
    }
  }
}

/** Add what to do to the control client's errors. */
export function explain(e: unknown, url: string): VmsError {
  if (!isVmsError(e)) return new VmsError(ErrorCode.UNREACHABLE, `talking to the coordinator at ${url} failed: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  if (e.code === ErrorCode.UNREACHABLE && !e.message.includes('VMSCATTER_COORDINATOR'))
    return new VmsError(
      ErrorCode.UNREACHABLE,
      `${e.message}. Is \`vmscatter coordinator\` running there? Point the CLI elsewhere with --coordinator URL or VMSCATTER_COORDINATOR (default ${CONTROL_DEFAULTS.coordinatorUrl})`,
      { cause: e },
    );
  return e;
}
