/**
 * The coordinator's HTTP API (fastify). Every route declares TypeBox schemas that validate its
 * input and document it: the OpenAPI document is served at /documentation/json, its UI at
 * /documentation. Everything but /healthz needs the bearer token.
 *
 *   GET    /healthz                      liveness (no token)
 *   GET    /metrics                      Prometheus metrics
 *   GET    /v1/agents                    agents, their state and migration slots in use
 *   POST   /v1/agents                    an agent registers (agents call this)
 *   PUT    /v1/agents/:name/heartbeat    an agent is alive (agents call this)
 *   POST   /v1/evacuations               source host -> target pool, placed by the planner
 *   POST   /v1/migrations                VM -> target pairs, or VMs -> a pool
 *   POST   /v1/plans                     dry run: placement, predicted bytes and traffic
 *   GET    /v1/jobs                      jobs, newest first
 *   GET    /v1/jobs/:id                  one job with its report
 *   GET    /v1/jobs/:id/events           server-sent events: phase, progress, per-VM state, job state
 *   DELETE /v1/jobs/:id                  cancel: every VM not switched over keeps running on its source
 *   POST   /v1/internal/jobs/:id/plan    a source agent asks for its run's plan
 *   POST   /v1/internal/jobs/:id/slots   a source agent asks for a migration slot (held up to 20 s)
 */
import type { Logger } from 'pino';
import { pino } from 'pino';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { Type } from 'typebox';
import { CONTROL_DEFAULTS, type EvacuationConfig } from '../config.js';
import { ErrorCode } from '../errors.js';
import { AgentRegistry } from './agents-registry.js';
import type { Planner } from './evacuation.js';
import { ApiError, createHttpApp, installBearerAuth, installErrorHandling, requireToken, sendError, type TypedApp } from './http-server.js';
import { JobManager, type JobRequest, type StoredEvent } from './jobs.js';
import { createMetrics, type CoordinatorMetrics } from './metrics.js';
import { MigrationSlots } from './migration-slots.js';
import type { PlanStrategy } from './planner.js';
import {
  AgentList,
  AgentRegistration,
  EvacuationRequest,
  EventsQuery,
  FleetUpload,
  Health,
  Heartbeat,
  HostName,
  JobList,
  JobListQuery,
  JobParams,
  JobView,
  MigrationRequest,
  PlanReply,
  RegisterReply,
  SlotReply,
  SlotRequest,
  errorReplies,
} from './schemas.js';
import { createStateStore } from './state-store.js';
import { VERSION } from './version.js';

export interface CoordinatorOptions {
  config: EvacuationConfig;
  logger?: Logger;
  /** Planner per strategy (default: createPlanner). */
  planner?: (strategy: PlanStrategy) => Planner;
  /** How long a slot request is held before the agent asks again (default 20 s). */
  slotWaitMs?: number;
}

export interface CoordinatorParts {
  jobs: JobManager;
  registry: AgentRegistry;
  slots: MigrationSlots;
  metrics: CoordinatorMetrics;
  config: EvacuationConfig;
}

export type CoordinatorApp = TypedApp & { coordinator: CoordinatorParts };

const SSE_PING_MS = 15_000;

export async function buildCoordinator(opts: CoordinatorOptions): Promise<CoordinatorApp> {
  const cfg = opts.config;
  const token = requireToken(cfg.auth.token, CONTROL_DEFAULTS.minTokenLength, 'the coordinator');
  const logger = opts.logger ?? pino({ level: cfg.log.level, base: { role: 'coordinator' } }, pino.destination(2));
  const c = cfg.coordinator;
  const slots = new MigrationSlots({ maxOutgoingPerSource: c.maxOutgoingPerSource, maxIncomingPerTarget: c.maxIncomingPerTarget });
  let jobs!: JobManager;
  const registry = new AgentRegistry({
    lostAfterMs: c.agentLostAfterMs,
    pollIntervalMs: c.heartbeatIntervalMs,
    staticAgents: c.agents,
    token,
    logger,
    onLost: (a) => jobs.onAgentLost(a),
    onBack: (a) => jobs.onAgentBack(a),
    onSeen: (a) => jobs.releaseStores(a),
  });
  const metrics = createMetrics({ jobsByState: () => jobs.countsByState(), agents: () => registry.list(), slots: () => slots.usage() });
  const store = createStateStore(c.stateDir, logger);
  jobs = new JobManager({ cfg, token, registry, store, metrics, slots, logger, ...(opts.planner ? { planner: opts.planner } : {}), ...(opts.slotWaitMs ? { slotWaitMs: opts.slotWaitMs } : {}) });
  const started = performance.now();

  const app = createHttpApp(logger);
  const streams = new Set<() => void>();
  installErrorHandling(app);
  installBearerAuth(app, token, (p) => p === '/healthz');

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'vmscatter coordinator',
        version: VERSION,
        description:
          'One-to-many live migration of VMs: evacuate a source host to a pool of targets, with cross-VM page dedup and multicast scatter. ' +
          'Every route but /healthz needs `Authorization: Bearer <token>` (the shared VMSCATTER_TOKEN).',
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
      tags: [
        { name: 'jobs', description: 'evacuations, batch migrations, plans and their progress' },
        { name: 'agents', description: 'source and target hosts' },
        { name: 'operations', description: 'health and metrics' },
        { name: 'internal', description: 'called by source agents during a run' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/documentation' });

  app.addHook('preClose', async () => {
    for (const end of streams) end();
  });
  app.addHook('onClose', async () => {
    registry.stop();
    jobs.close();
  });

  // ------------------------------------------------------------ operations

  app.get('/healthz', { schema: { tags: ['operations'], security: [], summary: 'liveness (no token needed)', response: { 200: Health } } }, async () => ({
    ok: true,
    version: VERSION,
    uptimeSeconds: (performance.now() - started) / 1000,
    role: 'coordinator',
  }));

  app.get(
    '/metrics',
    { schema: { tags: ['operations'], summary: 'Prometheus metrics: bytes, pages, repairs, drops, phase durations, slots', produces: ['text/plain'], response: { 200: Type.String(), ...errorReplies() } } },
    async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );

  // ------------------------------------------------------------ agents

  app.get('/v1/agents', { schema: { tags: ['agents'], summary: 'registered agents', response: { 200: AgentList, ...errorReplies() } } }, async () => ({
    agents: registry.list().map((a) => registry.view(a, { outgoing: slots.outgoing(a.name), incoming: slots.incoming(a.name) })),
  }));

  app.post(
    '/v1/agents',
    { schema: { tags: ['agents'], summary: 'an agent registers (or registers again)', body: AgentRegistration, response: { 200: RegisterReply, ...errorReplies(400, 409) } } },
    async (req) => {
      registry.register(req.body);
      return { heartbeatIntervalMs: c.heartbeatIntervalMs, agentLostAfterMs: c.agentLostAfterMs };
    },
  );

  app.put(
    '/v1/agents/:name/heartbeat',
    { schema: { tags: ['agents'], summary: 'an agent is alive; 404 tells it to register again', params: Type.Object({ name: HostName }), body: Heartbeat, response: { 204: Type.Null(), ...errorReplies(400, 404) } } },
    async (req, reply) => {
      const rec = registry.heartbeat(req.params.name, req.body);
      if (!rec) return sendError(reply, 404, ErrorCode.NOT_FOUND, `no agent named ${req.params.name} is registered; register first (POST /v1/agents)`);
      if (rec === 'other') return sendError(reply, 409, ErrorCode.CONFLICT, `the agent named ${req.params.name} is registered from another address; register again (POST /v1/agents)`);
      return reply.code(204).send(null);
    },
  );

  // ------------------------------------------------------------ jobs

  const accepted = async (req: JobRequest, reply: import('fastify').FastifyReply) => {
    const job = await jobs.submit(req);
    return reply.code(202).header('location', `/v1/jobs/${job.id}`).send(jobs.view(job, false));
  };

  app.post(
    '/v1/evacuations',
    {
      schema: {
        tags: ['jobs'],
        summary: 'evacuate a source host to a target pool (placement by the planner)',
        body: EvacuationRequest,
        response: { 202: JobView, ...errorReplies(400, 409, 422, 502) },
      },
    },
    async (req, reply) => accepted({ kind: 'evacuation', ...withoutUndefined(req.body) }, reply),
  );

  app.post(
    '/v1/migrations',
    {
      schema: {
        tags: ['jobs'],
        summary: 'migrate a batch: VM -> target pairs, or VMs -> a target pool',
        body: MigrationRequest,
        response: { 202: JobView, ...errorReplies(400, 409, 422, 502) },
      },
    },
    async (req, reply) => accepted(migrationRequest(req.body, registry), reply),
  );

  app.post(
    '/v1/plans',
    {
      schema: {
        tags: ['jobs'],
        summary: 'dry run: where every VM would go and the predicted bytes and traffic; nothing moves',
        body: EvacuationRequest,
        response: { 200: PlanReply, ...errorReplies(400, 422, 502) },
      },
    },
    async (req) => jobs.dryRun({ kind: 'evacuation', ...withoutUndefined(req.body) }),
  );

  app.get('/v1/jobs', { schema: { tags: ['jobs'], summary: 'jobs, newest first', querystring: JobListQuery, response: { 200: JobList, ...errorReplies(400) } } }, async (req) => ({
    jobs: jobs.list({ ...(req.query.state ? { state: req.query.state } : {}), limit: req.query.limit ?? 100 }).map((j) => jobs.view(j, false)),
  }));

  app.get('/v1/jobs/:id', { schema: { tags: ['jobs'], summary: 'one job, with its report once it ended', params: JobParams, response: { 200: JobView, ...errorReplies(400, 404) } } }, async (req) =>
    jobs.view(jobs.require(req.params.id), true),
  );

  app.delete(
    '/v1/jobs/:id',
    { schema: { tags: ['jobs'], summary: 'cancel a job: every VM not switched over keeps running on its source', params: JobParams, response: { 202: JobView, ...errorReplies(400, 404, 409) } } },
    async (req, reply) => reply.code(202).send(jobs.view(await jobs.cancel(req.params.id), false)),
  );

  app.get(
    '/v1/jobs/:id/events',
    {
      schema: {
        tags: ['jobs'],
        summary: 'the job\'s events as server-sent events (replayed from the start, or after Last-Event-ID / ?after=); the stream ends after the final `job` event',
        description:
          'Each event has `id` (increasing), `event` (phase | progress | vm | job) and JSON `data`: ' +
          'phase {phase, state: start|end|skipped, ms?, detail?}; progress {phase, key, done, total, unit}; vm {vm, state, target?, detail?}; job {state, detail?}.',
        params: JobParams,
        querystring: EventsQuery,
        produces: ['text/event-stream'],
        response: { 200: Type.String({ description: 'text/event-stream' }), ...errorReplies(400, 404) },
      },
    },
    async (req, reply) => {
      const id = req.params.id;
      jobs.require(id); // 404 before the stream starts
      const header = req.headers['last-event-id'];
      const after = Number(Array.isArray(header) ? header[0] : header) || req.query.after || 0;
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      raw.write(`retry: 2000\n: job ${id}\n\n`);
      let ended = false;
      let unsubscribe: (() => void) | undefined;
      const ping = setInterval(() => raw.write(': ping\n\n'), SSE_PING_MS);
      const end = (): void => {
        if (ended) return;
        ended = true;
        clearInterval(ping);
        unsubscribe?.();
        streams.delete(end);
        raw.end();
      };
      streams.add(end);
      raw.on('close', end);
      unsubscribe = jobs.subscribe(id, after, (e) => !ended && raw.write(formatSse(e)), end);
      if (ended) unsubscribe();
    },
  );

  // ------------------------------------------------------------ internal (source agents)

  app.post(
    '/v1/internal/jobs/:id/plan',
    {
      schema: {
        tags: ['internal'],
        summary: 'plan a running job\'s fleet (the source agent sends per-VM content ids; the answer is the plan)',
        params: JobParams,
        body: FleetUpload,
        response: { 200: Type.Unknown({ description: 'the plan (vmscatter-plan JSON, src/plan/serialize.ts)' }), ...errorReplies(400, 404, 409, 422) },
      },
    },
    async (req) => jobs.planFor(req.params.id, req.body.fleet),
  );

  app.post(
    '/v1/internal/jobs/:id/slots',
    {
      schema: {
        tags: ['internal'],
        summary: 'ask for a migration slot for one VM; held until granted or up to 20 s ({ granted: false }: ask again)',
        params: JobParams,
        body: SlotRequest,
        response: { 200: SlotReply, ...errorReplies(400, 404, 409) },
      },
    },
    async (req) => {
      const ac = new AbortController();
      req.raw.on('close', () => ac.abort());
      return jobs.slot(req.params.id, req.body.vm, req.body.target, ac.signal);
    },
  );

  await app.ready();
  // Jobs first: an agent's first contact may list stores, released unless their job is known.
  jobs.recover();
  registry.start();
  logger.info({ store: store.where, limits: slots.limits }, 'coordinator ready');
  const parts: CoordinatorParts = { jobs, registry, slots, metrics, config: cfg };
  return Object.assign(app, { coordinator: parts });
}

function formatSse(e: StoredEvent): string {
  return `id: ${e.id}\nevent: ${e.event.type}\ndata: ${JSON.stringify({ ...e.event, at: new Date(e.at).toISOString() })}\n\n`;
}

function withoutUndefined<T extends object>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> };
}

/** POST /v1/migrations: pairs (placement fixed) or VMs + pool; one source host per batch. */
function migrationRequest(b: import('./schemas.js').MigrationRequest, registry: AgentRegistry): JobRequest {
  if (b.pairs && (b.vms || b.targets)) throw new ApiError(400, ErrorCode.CONFIG, 'give either pairs, or vms with targets (a pool), not both');
  if (!b.pairs && !(b.vms && b.targets)) throw new ApiError(400, ErrorCode.CONFIG, 'give pairs: [{ vm, target }], or vms and targets (a pool the planner places them in)');
  const names = b.pairs ? b.pairs.map((p) => p.vm) : b.vms!;
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new ApiError(400, ErrorCode.CONFIG, `VM ${dup} appears twice in the batch`);
  let source = b.source;
  if (!source) {
    const owner = new Map<string, string>();
    for (const a of registry.list()) if (a.role === 'source') for (const v of a.vms ?? []) if (!owner.has(v.name)) owner.set(v.name, a.name);
    const missing = names.filter((n) => !owner.has(n));
    if (missing.length) throw new ApiError(422, ErrorCode.NOT_FOUND, `no registered source host reports VM ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    const hosts = [...new Set(names.map((n) => owner.get(n)!))];
    if (hosts.length > 1)
      throw new ApiError(422, ErrorCode.CONFIG, `the batch spans source hosts ${hosts.join(', ')}; a job runs on one source host, so submit one batch per source host`);
    source = hosts[0]!;
  }
  const targets = b.pairs ? [...new Set(b.pairs.map((p) => p.target))] : b.targets!;
  return {
    kind: 'migration',
    source,
    targets,
    vms: names,
    ...(b.pairs ? { pins: Object.fromEntries(b.pairs.map((p) => [p.vm, p.target])) } : {}),
    ...(b.parallel !== undefined ? { parallel: b.parallel } : {}),
    ...(b.strategy !== undefined ? { strategy: b.strategy } : {}),
    ...(b.verify !== undefined ? { verify: b.verify } : {}),
  };
}
