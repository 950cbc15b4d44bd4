/**
 * An agent's HTTP control API (fastify), driven by the coordinator with the shared bearer token.
 *
 *   both roles   GET  /healthz                        (no token)
 *                GET  /v1/agent                       who I am (what I register with)
 *                GET  /v1/vms                         my VMs and their states
 *   source       POST /v1/scan                        content ids of my VMs (dry-run plans)
 *                POST /v1/runs                        start an evacuation run (202)
 *                GET  /v1/runs/:job                   its status
 *                GET  /v1/runs/:job/events?after=N    its events, NDJSON, until the end record
 *                POST /v1/runs/:job/cancel            cancel: every VM not switched over keeps running
 *                POST /v1/runs/:job/abort-target      a target was lost: fail its VMs, sources resume
 *                POST /v1/guests/reload               (QEMU) read the guests file again: take on, let go
 *   target       GET  /v1/vms/:name/digest            RAM digest of a received VM (verification)
 *                PUT  /v1/incoming/:name              (QEMU) the machine to start for a VM about to arrive
 *                POST /v1/jobs/:job/scatter           join a job's scatter (multicast receiver into its store)
 *                DELETE /v1/jobs/:job/store           a job ended: drop its content store
 *                DELETE /v1/vms/:name                 forget a received VM (a QEMU guest runs on)
 */
import type { Logger } from 'pino';
import { Type } from 'typebox';
import { ErrorCode, isVmsError } from '../errors.js';
import { ApiError, createHttpApp, installBearerAuth, installErrorHandling, sendError, type TypedApp } from '../coordinator/http-server.js';
import {
  AbortTargetRequest,
  AgentRegistration,
  AgentVm,
  CancelRequest,
  DigestReply,
  EventsQuery,
  FleetUpload,
  GuestsReload,
  Health,
  IncomingRequest,
  RunParams,
  RunRequest,
  RunStatus,
  ScanRequest,
  VmParams,
  errorReplies,
} from '../coordinator/schemas.js';
import { VERSION } from '../coordinator/version.js';
import type { SourceHost } from './source-host.js';
import type { TargetHost } from './target-host.js';

export interface AgentServerOptions {
  token: string;
  logger: Logger;
  source?: SourceHost;
  target?: TargetHost;
  /** What GET /v1/agent answers (also what the agent registers with). */
  info: () => AgentRegistration;
  /** A source agent of QEMU guests: POST /v1/guests/reload reads its guests file again. */
  reloadGuests?: () => Promise<GuestsReload>;
}

/** NDJSON keep-alive: lets the reader tell a quiet run from a dead connection. */
export const STREAM_PING_MS = 5000;

export async function buildAgentServer(o: AgentServerOptions): Promise<TypedApp> {
  const app = createHttpApp(o.logger);
  const started = performance.now();
  const streams = new Set<AbortController>();
  installErrorHandling(app);
  installBearerAuth(app, o.token, (p) => p === '/healthz');
  app.addHook('preClose', async () => {
    for (const s of streams) s.abort();
  });

  app.get('/healthz', { schema: { response: { 200: Health } } }, async () => ({
    ok: true,
    version: VERSION,
    uptimeSeconds: (performance.now() - started) / 1000,
    role: o.source ? 'source' : 'target',
  }));

  app.get('/v1/agent', { schema: { response: { 200: AgentRegistration, ...errorReplies() } } }, async () => o.info());

  app.get('/v1/vms', { schema: { response: { 200: Type.Object({ vms: Type.Array(AgentVm) }), ...errorReplies() } } }, async () => ({
    vms: o.source?.listVms() ?? o.target?.listVms() ?? [],
  }));

  const src = o.source;
  if (src) {
    app.post('/v1/guests/reload', { schema: { response: { 200: GuestsReload, ...errorReplies(409, 422) } } }, async () => {
      if (!o.reloadGuests) throw new ApiError(409, ErrorCode.CONFLICT, `source agent ${src.name} hosts simulated VMs; a guests file is read by a source agent with agent.fleet "qemu"`);
      try {
        return await o.reloadGuests();
      } catch (e) {
        // An unreadable or invalid guests file: the request was fine, the file is not.
        if (isVmsError(e) && e.code === ErrorCode.CONFIG) throw new ApiError(422, ErrorCode.CONFIG, e.message);
        throw e;
      }
    });

    const runOf = (job: string) => {
      const r = src.run(job);
      if (!r) throw new ApiError(404, ErrorCode.NOT_FOUND, `source agent ${src.name} has no run for job ${job}`);
      return r;
    };

    app.post('/v1/scan', { schema: { body: ScanRequest, response: { 200: FleetUpload, ...errorReplies(400, 409, 422) } } }, async (req) => ({
      fleet: await src.scan(req.body.vms),
    }));

    app.post('/v1/runs', { schema: { body: RunRequest, response: { 202: RunStatus, ...errorReplies(400, 409, 422) } } }, async (req, reply) => {
      const run = src.startRun(req.body);
      return reply.code(202).send(run.status());
    });

    app.get('/v1/runs/:job', { schema: { params: RunParams, response: { 200: RunStatus, ...errorReplies(404) } } }, async (req) => runOf(req.params.job).status());

    app.get('/v1/runs/:job/events', { schema: { params: RunParams, querystring: EventsQuery } }, async (req, reply) => {
      const run = runOf(req.params.job);
      const ac = new AbortController();
      streams.add(ac);
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store', connection: 'keep-alive' });
      raw.on('close', () => ac.abort());
      const ping = setInterval(() => raw.write('{"ping":true}\n'), STREAM_PING_MS);
      try {
        for await (const rec of run.records$(req.query.after ?? 0, ac.signal)) {
          if (!raw.write(JSON.stringify(rec) + '\n')) await new Promise<void>((r) => raw.once('drain', r).once('close', r));
          if (ac.signal.aborted) break;
        }
      } finally {
        clearInterval(ping);
        streams.delete(ac);
        raw.end();
      }
    });

    app.post('/v1/runs/:job/cancel', { schema: { params: RunParams, body: Type.Optional(CancelRequest), response: { 202: RunStatus, ...errorReplies(404) } } }, async (req, reply) => {
      const run = runOf(req.params.job);
      run.cancel(req.body?.reason ?? 'cancelled by the coordinator');
      return reply.code(202).send(run.status());
    });

    app.post(
      '/v1/runs/:job/abort-target',
      { schema: { params: RunParams, body: AbortTargetRequest, response: { 200: Type.Object({ vms: Type.Array(Type.String()) }), ...errorReplies(404) } } },
      async (req) => ({ vms: runOf(req.params.job).abortTarget(req.body.target, req.body.reason) }),
    );
  }

  const tgt = o.target;
  if (tgt) {
    app.get('/v1/vms/:name/digest', { schema: { params: VmParams, response: { 200: DigestReply, ...errorReplies(404) } } }, async (req, reply) => {
      const d = tgt.digest(req.params.name);
      if (!d) return sendError(reply, 404, ErrorCode.NOT_FOUND, `target agent ${tgt.name} has received no VM named ${req.params.name}`);
      return d;
    });
    app.post(
      '/v1/jobs/:job/scatter',
      {
        schema: {
          params: RunParams,
          body: Type.Object({ session: Type.Unknown({ description: 'the scatter session (src/transport/scatter-session.ts, JSON form)' }), target: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
          response: { 202: Type.Object({ groups: Type.Array(Type.Integer()) }), ...errorReplies(400) },
        },
      },
      async (req, reply) => reply.code(202).send({ groups: await tgt.openScatter(req.params.job, req.body.session, req.body.target) }),
    );
    app.delete('/v1/jobs/:job/store', { schema: { params: RunParams, response: errorReplies(404) } }, async (req, reply) => {
      if (!tgt.releaseJob(req.params.job)) return sendError(reply, 404, ErrorCode.NOT_FOUND, `target agent ${tgt.name} holds no content store of job ${req.params.job}`);
      return reply.code(204).send();
    });
    app.put(
      '/v1/incoming/:name',
      {
        schema: {
          params: VmParams,
          body: IncomingRequest,
          response: { 200: Type.Object({ vm: Type.String(), job: Type.String() }), ...errorReplies(400, 409, 422) },
        },
      },
      async (req) => {
        try {
          tgt.expect(req.params.name, req.body.job, req.body.machine);
        } catch (e) {
          if (isVmsError(e)) throw new ApiError(e.code === ErrorCode.CONFLICT ? 409 : 422, e.code, e.message);
          throw e;
        }
        return { vm: req.params.name, job: req.body.job };
      },
    );
    app.delete('/v1/vms/:name', { schema: { params: VmParams, response: errorReplies(404) } }, async (req, reply) => {
      if (!tgt.forget(req.params.name)) return sendError(reply, 404, ErrorCode.NOT_FOUND, `target agent ${tgt.name} has no VM named ${req.params.name}`);
      return reply.code(204).send();
    });
  }

  await app.ready();
  return app;
}
