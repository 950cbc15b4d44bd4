/**
 * What the coordinator's and the agents' fastify servers share: bearer-token authentication, one
 * error shape ({ statusCode, code, error, message }) and the mapping of VmsError codes to HTTP
 * statuses.
 */
import { timingSafeEqual, createHash } from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type RawReplyDefaultExpression, type RawRequestDefaultExpression, type RawServerDefault } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Logger } from 'pino';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { ControlHttpError } from './http-client.js';

export type TypedApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

/**
 * A fastify app as the control plane uses it: our pino logger (request lines off: heartbeats
 * would drown the log; handlers log what they change), ajv that rejects unknown properties instead
 * of dropping them, and bodies up to 64 MiB (a large fleet's content lists).
 */
export function createHttpApp(logger: Logger): TypedApp {
  return Fastify({
    loggerInstance: logger as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    bodyLimit: 64 * 1024 * 1024,
    forceCloseConnections: true,
    return503OnClosing: true,
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as TypedApp;
}

/** A VmsError with the HTTP status it answers with. */
export class ApiError extends VmsError {
  readonly status: number;
  constructor(status: number, code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ApiError';
    this.status = status;
  }
}

const STATUS_OF: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.CONFIG]: 400,
  [ErrorCode.UNAUTHORIZED]: 401,
  [ErrorCode.NOT_FOUND]: 404,
  [ErrorCode.CONFLICT]: 409,
  [ErrorCode.CANCELLED]: 409,
  [ErrorCode.AGENT]: 422,
  [ErrorCode.PLAN]: 422,
  [ErrorCode.UNREACHABLE]: 502,
  [ErrorCode.TIMEOUT]: 504,
};

export function statusOf(e: unknown): number {
  if (e instanceof ApiError) return e.status;
  if (e instanceof ControlHttpError) return e.status >= 500 ? 502 : e.status;
  if (isVmsError(e)) return STATUS_OF[e.code] ?? 500;
  const s = (e as FastifyError).statusCode;
  return typeof s === 'number' && s >= 400 ? s : 500;
}

const REASON: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Entity',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

export function sendError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).type('application/json').send({ statusCode: status, code, error: REASON[status] ?? 'Error', message });
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | VmsError, req, reply) => {
    const status = statusOf(err);
    const code = isVmsError(err) ? err.code : ((err as FastifyError).code ?? 'VMS_ERR_INTERNAL');
    if (status >= 500) req.log.error({ err }, 'request failed');
    else req.log.debug({ code, reason: err.message }, "request refused");
    return sendError(reply, status, code, err.message);
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, 404, ErrorCode.NOT_FOUND, `no route ${req.method} ${req.url.split('?')[0]}; the API is described at /documentation/json`),
  );
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/**
 * Every route but the exempt ones needs `Authorization: Bearer <token>`. Tokens are compared
 * in constant time (on their digests, so lengths leak nothing either).
 */
export function installBearerAuth(app: FastifyInstance, token: string, exempt: (path: string) => boolean): void {
  const want = digest(token);
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const path = req.url.split('?')[0] ?? '';
    if (exempt(path)) return;
    const h = req.headers.authorization;
    if (!h || !/^Bearer\s+/i.test(h)) {
      reply.header('www-authenticate', 'Bearer realm="vmscatter"');
      return sendError(reply, 401, ErrorCode.UNAUTHORIZED, 'missing bearer token: send "Authorization: Bearer <token>" with the token the coordinator was started with (VMSCATTER_TOKEN)');
    }
    const got = digest(h.replace(/^Bearer\s+/i, '').trim());
    if (!timingSafeEqual(got, want)) {
      reply.header('www-authenticate', 'Bearer realm="vmscatter", error="invalid_token"');
      return sendError(reply, 401, ErrorCode.UNAUTHORIZED, 'wrong bearer token: it does not match the token the coordinator and agents share (VMSCATTER_TOKEN)');
    }
  });
}

/** Refuse to start without a token long enough to be a secret. */
export function requireToken(token: string, minLength: number, who: string): string {
  if (!token) throw new VmsError(ErrorCode.CONFIG, `${who} needs a shared bearer token: set VMSCATTER_TOKEN (e.g. export VMSCATTER_TOKEN=$(openssl rand -hex 24)) for the coordinator, every agent and the CLI`);
  if (token.length < minLength) throw new VmsError(ErrorCode.CONFIG, `the bearer token (VMSCATTER_TOKEN) must be at least ${minLength} characters, got ${token.length}`);
  return token;
}
