/**
 * `vmscatter coordinator`: the HTTP API, job state and planning. Settings come from a config file
 * (--config or VMSCATTER_CONFIG), then environment variables (VMSCATTER_TOKEN, ...), then flags,
 * validated by the one config schema.
 */
import { hostname } from 'node:os';
import { pino, type Logger } from 'pino';
import { envConfig, mergeConfig, parseHostPort, readConfigFile, resolveConfig, type EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError } from '../errors.js';
import { buildCoordinator, type CoordinatorApp } from '../coordinator/server.js';

export interface CoordinatorFlags {
  config?: string;
  listen?: string;
  url?: string;
  stateDir?: string;
  maxOutgoing?: number;
  maxIncoming?: number;
  heartbeatMs?: number;
  lostAfterMs?: number;
  sourceGraceMs?: number;
  strategy?: 'graph' | 'greedy' | 'round-robin';
  agent?: string[];
  logLevel?: string;
}

export function coordinatorConfig(flags: CoordinatorFlags, env: NodeJS.ProcessEnv = process.env): { cfg: EvacuationConfig; urlGiven: boolean } {
  const file = flags.config ?? env.VMSCATTER_CONFIG;
  const fileLayer = file ? readConfigFile(file) : {};
  const fromFlags = {
    coordinator: {
      listen: flags.listen,
      url: flags.url,
      stateDir: flags.stateDir,
      maxOutgoingPerSource: flags.maxOutgoing,
      maxIncomingPerTarget: flags.maxIncoming,
      heartbeatIntervalMs: flags.heartbeatMs,
      agentLostAfterMs: flags.lostAfterMs,
      sourceLostGraceMs: flags.sourceGraceMs,
      agents: flags.agent,
    },
    plan: { strategy: flags.strategy },
    log: { level: flags.logLevel },
  };
  const envLayer = envConfig(env);
  const merged = mergeConfig(fileLayer, envLayer, fromFlags);
  const urlGiven = (merged.coordinator as { url?: unknown } | undefined)?.url !== undefined;
  return { cfg: resolveConfig(merged, file ? `config ${file} with environment and flags` : 'environment and flags'), urlGiven };
}

export interface RunningCoordinator {
  app: CoordinatorApp;
  /** Where it listens. */
  url: string;
  close(): Promise<void>;
}

/** Build, listen, and (unless coordinator.url was given) derive the URL agents call back on. */
export async function startCoordinator(cfg: EvacuationConfig, o: { urlGiven: boolean; logger?: Logger }): Promise<RunningCoordinator> {
  const logger = o.logger ?? pino({ level: cfg.log.level, base: { role: 'coordinator' } }, pino.destination(2));
  const app = await buildCoordinator({ config: cfg, logger });
  const { host, port } = parseHostPort(cfg.coordinator.listen, 'coordinator.listen');
  try {
    await app.listen({ host, port });
  } catch (e) {
    await app.close();
    throw new VmsError(ErrorCode.CONFIG, `the coordinator cannot listen on ${cfg.coordinator.listen}: ${(e as Error).message}`, { cause: e });
  }
  const addr = app.server.address();
  const actual = typeof addr === 'object' && addr ? addr.port : port;
  const shown = host === '0.0.0.0' || host === '::' ? hostname() : host;
  const url = `http://${shown.includes(':') ? `[${shown}]` : shown}:${actual}`;
  // Agents call back on coordinator.url; unless it was set, it is where we listen.
  if (!o.urlGiven) app.coordinator.config.coordinator.url = url;
  return { app, url, close: () => app.close() };
}

export async function coordinatorCommand(flags: CoordinatorFlags): Promise<void> {
  const { cfg, urlGiven } = coordinatorConfig(flags);
  const c = await startCoordinator(cfg, { urlGiven });
  process.stdout.write(`vmscatter coordinator listening on ${c.url} (agents call back on ${c.app.coordinator.config.coordinator.url}; state in ${cfg.coordinator.stateDir || 'memory'})\n`);
  await untilSignal();
  process.stderr.write('vmscatter coordinator: shutting down; running jobs continue on their agents and are re-attached at the next start\n');
  await c.close();
}

/** Resolves on the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
