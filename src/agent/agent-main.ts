/**
 * An agent process: a source host (owning simulated VMs, or migrating running QEMU guests it is
 * given) or a target host (converge server + content store; simulated VMs or a target QEMU per
 * incoming guest), its HTTP control API, and its link to the coordinator: register at start,
 * heartbeat, register again when the coordinator forgot it (restart).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { CONTROL_DEFAULTS, parseHostPort, type EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError, isVmsError } from '../errors.js';
import { buildAgentServer } from './agent-server.js';
import { simFleetFromConfig, type SimSourceVm } from './sim-agents.js';
import { SourceHost, hostedSimVm, type HostedVm } from './source-host.js';
import { adoptGuests, readGuestsFile, type AdoptOptions, type AdoptedGuest } from './qemu-guests.js';
import { TargetHost } from './target-host.js';
import { controlCall, sleep } from '../coordinator/http-client.js';
import { requireToken, type TypedApp } from '../coordinator/http-server.js';
import type { AgentRegistration, GuestsReload, RegisterReply } from '../coordinator/schemas.js';
import { VERSION } from '../coordinator/version.js';

const MiB = 1024 * 1024;

export interface AgentHandle {
  name: string;
  role: 'source' | 'target';
  /** Control API base URL, as registered. */
  url: string;
  data?: { host: string; port: number };
  source?: SourceHost;
  target?: TargetHost;
  app: TypedApp;
  logger: Logger;
  /** Source agent of QEMU guests: read the guests file again (POST /v1/guests/reload, SIGHUP). */
  reloadGuests?: () => Promise<GuestsReload>;
  close(): Promise<void>;
}

export interface StartAgentOptions {
  logger?: Logger;
}

const WILDCARD = new Set(['0.0.0.0', '::', '[::]']);

/** The host name others reach this agent at: --advertise, else the listen host, else (wildcard) the hostname. */
function advertised(cfg: EvacuationConfig, listenHost: string): string {
  if (cfg.agent.advertise) return cfg.agent.advertise;
  return WILDCARD.has(listenHost) ? hostname() : listenHost;
}

export function agentName(cfg: EvacuationConfig): string {
  if (cfg.agent.name) return cfg.agent.name;
  const h = hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 63);
  if (!h) throw new VmsError(ErrorCode.CONFIG, 'cannot derive an agent name from the hostname; give --name');
  return h;
}

/** The simulated VMs of a source agent: the fleet section, names prefixed with the host name. */
export function simFleet(cfg: EvacuationConfig, host: string): SimSourceVm[] {
  return simFleetFromConfig(cfg, `${host}-`);
}

/**
 * The scatter's interface must be an IPv4 address of this host: multicast leaves and arrives by
 * the interface that has it. Otherwise every job's scatter would fail to bind and converge carry
 * every page, with only a warning in this agent's log.
 */
function requireLocalAddress(address: string, role: string): void {
  const mine = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a?.family === 'IPv4')
    .map((a) => a!.address);
  if (!mine.includes(address)) {
    throw new VmsError(
      ErrorCode.CONFIG,
      `--scatter-interface ${address} (scatter.interface) is not an address of this host (its IPv4 addresses: ${mine.join(', ') || 'none'}): give the address of its interface on the multicast network${role === 'source' ? ', or --no-scatter' : ''}`,
    );
  }
}

export async function startAgent(cfg: EvacuationConfig, o: StartAgentOptions = {}): Promise<AgentHandle> {
  const token = requireToken(cfg.auth.token, CONTROL_DEFAULTS.minTokenLength, 'the agent');
  const name = agentName(cfg);
  const role = cfg.agent.role;
  const logger = o.logger ?? pino({ level: cfg.log.level, base: { agent: name, role } }, pino.destination(2));
  const listen = parseHostPort(cfg.agent.listen, 'agent.listen');
  if (cfg.scatter.enabled) requireLocalAddress(cfg.scatter.interface, role);

  let source: SourceHost | undefined;
  let reloadGuests: (() => Promise<GuestsReload>) | undefined;
  let target: TargetHost | undefined;
  let simVms: SimSourceVm[] = [];
  let adopted: AdoptedGuest[] = [];
  let adoptOpts: AdoptOptions | undefined;
  let reloading: Promise<unknown> = Promise.resolve();
  let closed = false;
  let runDir: string | undefined;
  /** Let go of what this agent holds: simulated VMs stop, QEMU guests run on without us. */
  const release = async (): Promise<void> => {
    for (const v of simVms) v.vm.stop();
    for (const a of adopted) a.close();
    if (runDir !== undefined) await rm(runDir, { recursive: true, force: true });
  };
  /** A listen failed: let go of what was started, and say which address. */
  const cannotListen = async (what: string, e: unknown): Promise<never> => {
    await target?.close().catch(() => {});
    await release();
    throw new VmsError(ErrorCode.CONFIG, `agent cannot listen ${what}: ${(e as Error).message}`, { cause: e });
  };
  let data: { host: string; port: number } | undefined;
  if (role === 'source') {
    let hosted: HostedVm[];
    if (cfg.agent.fleet === 'qemu') {
      if (!cfg.agent.guests) {
        throw new VmsError(ErrorCode.CONFIG, 'a source agent with agent.fleet "qemu" needs the JSON file of its QEMU guests: --fleet qemu:GUESTS.json (agent.guests); see docs/operations.md');
      }
      const specs = readGuestsFile(cfg.agent.guests);
      runDir = await mkdtemp(join(tmpdir(), 'vmscatter-agent-'));
      adoptOpts = {
        workDir: runDir,
        params: { maxBandwidth: cfg.migration.maxBandwidthMiBps * MiB, downtimeLimitMs: cfg.migration.downtimeLimitMs },
        quitMigrated: cfg.agent.quitMigrated,
        logger,
      };
      try {
        adopted = await adoptGuests(specs, adoptOpts);
      } catch (e) {
        await release();
        throw e;
      }
      hosted = adopted.map((a) => a.hosted);
    } else {
      simVms = simFleet(cfg, name);
      hosted = simVms.map(hostedSimVm);
    }
    source = new SourceHost({
      name,
      vms: hosted,
      token,
      logger,
      coordinatorGraceMs: CONTROL_DEFAULTS.coordinatorGraceMs,
      ...(cfg.migration.compress === 'lz4' ? { compress: 'lz4' as const } : {}),
      stopCopyFirst: cfg.migration.stopCopyFirst,
      convergeInTurn: cfg.migration.convergeInTurn,
      scatter: cfg.scatter,
    });
    if (adoptOpts) {
      const host = source;
      const file = cfg.agent.guests;
      const opts = adoptOpts;
      // One reload at a time; close() waits for the one running.
      reloadGuests = () => {
        if (closed) return Promise.reject(new VmsError(ErrorCode.CONFLICT, `agent ${name} is shutting down`));
        const next = reloading.then(() => reloadGuestsFile(file, host, adopted, opts));
        reloading = next.catch(() => undefined);
        return next;
      };
    }
  } else {
    const dl = parseHostPort(cfg.agent.dataListen, 'agent.dataListen');
    const qemu = cfg.agent.fleet === 'qemu';
    target = new TargetHost({
      name,
      host: dl.host,
      port: dl.port,
      logger,
      scatterInterface: cfg.scatter.interface,
      scatterUdpOffload: cfg.scatter.udpOffload,
      qemu,
      ...(qemu && cfg.agent.stateDir ? { stateDir: join(cfg.agent.stateDir, name) } : {}),
    });
    await target.restore();
    const a = await target.listen().catch((e: unknown) => cannotListen(`for converge connections on ${cfg.agent.dataListen} (--data-listen)`, e));
    data = { host: advertised(cfg, dl.host), port: a.port };
  }

  let controlUrl = '';
  const info = (): AgentRegistration => ({
    name,
    role,
    controlUrl,
    version: VERSION,
    fleet: cfg.agent.fleet,
    ...(data ? { data } : {}),
    ...(target ? { capacityBytes: cfg.agent.capacityMiB * MiB, ...target.usage(), ...(cfg.agent.maxVms > 0 ? { maxVms: cfg.agent.maxVms } : {}), stores: target.storeJobs() } : {}),
    vms: source?.listVms() ?? target?.listVms() ?? [],
  });
  const app = await buildAgentServer({ token, logger, info, ...(source ? { source } : {}), ...(target ? { target } : {}), ...(reloadGuests ? { reloadGuests } : {}) });
  try {
    await app.listen({ host: listen.host, port: listen.port });
  } catch (e) {
    await cannotListen(`on ${cfg.agent.listen}`, e);
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : listen.port;
  controlUrl = `http://${bracket(advertised(cfg, listen.host))}:${port}`;

  const link = cfg.agent.register ? new CoordinatorLink(cfg.coordinator.url, token, info, logger) : undefined;
  link?.start();
  logger.info({ controlUrl, ...(data ? { data } : {}), fleet: cfg.agent.fleet, vms: source?.listVms().length, coordinator: cfg.coordinator.url }, `${role} agent ${name} ready`);

  return {
    name,
    role,
    url: controlUrl,
    ...(data ? { data } : {}),
    ...(source ? { source } : {}),
    ...(target ? { target } : {}),
    app,
    logger,
    ...(reloadGuests ? { reloadGuests } : {}),
    async close() {
      if (closed) return;
      closed = true;
      link?.stop();
      await source?.close();
      await app.close();
      await target?.close();
      await reloading;
      await release();
    },
  };
}

/**
 * Read a source agent's guests file again and bring what it hosts in line: take on listed guests
 * it does not have yet (if running), let go of guests no longer listed, and take on again guests
 * listed with another description. Guests in a job or migrated are left as they are. An
 * unreadable or invalid file changes nothing (the error says why). `adopted` is updated in place.
 */
async function reloadGuestsFile(file: string, host: SourceHost, adopted: AdoptedGuest[], opts: AdoptOptions): Promise<GuestsReload> {
  const specs = readGuestsFile(file);
  const r: GuestsReload = { added: [], removed: [], readopted: [], unchanged: [], notRunning: [], busy: [], failed: [] };
  const listed = new Map(specs.map((g) => [g.name, g]));
  const letGo = (a: AdoptedGuest): boolean => {
    const gone = host.removeVm(a.spec.name);
    if (gone === 'busy') return false;
    a.close();
    adopted.splice(adopted.indexOf(a), 1);
    return true;
  };
  const again = new Set<string>();
  for (const a of [...adopted]) {
    const spec = listed.get(a.spec.name);
    if (spec && JSON.stringify(spec) === JSON.stringify(a.spec)) r.unchanged.push(a.spec.name);
    else if (!letGo(a)) r.busy.push(a.spec.name);
    else if (spec) again.add(spec.name);
    else r.removed.push(a.spec.name);
  }
  for (const spec of specs) {
    // Still hosted: unchanged, or busy (in a job, or migrated: its source QEMU may be a paused copy).
    if (host.vm(spec.name) !== undefined) continue;
    try {
      const [a] = await adoptGuests([spec], opts);
      if (!a) {
        r.notRunning.push(spec.name);
        continue;
      }
      host.addVms([a.hosted]);
      adopted.push(a);
      (again.has(spec.name) ? r.readopted : r.added).push(spec.name);
    } catch (e) {
      r.failed.push({ name: spec.name, error: (e as Error).message });
    }
  }
  opts.logger?.info(r, `guests file ${file} reloaded`);
  return r;
}

function bracket(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** Registration and heartbeats; survives coordinator restarts (404 on heartbeat: register again). */
class CoordinatorLink {
  private readonly ac = new AbortController();
  private intervalMs: number = CONTROL_DEFAULTS.heartbeatIntervalMs;

  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly info: () => AgentRegistration,
    private readonly log: Logger,
  ) {}

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.ac.abort();
  }

  private async loop(): Promise<void> {
    const signal = this.ac.signal;
    let registered = false;
    let lastComplaint = 0;
    while (!signal.aborted) {
      try {
        if (!registered) {
          const r = await controlCall<RegisterReply>(this.url, '/v1/agents', { body: this.info(), token: this.token, peer: 'the coordinator', signal, timeoutMs: 10_000 });
          this.intervalMs = r.heartbeatIntervalMs;
          registered = true;
          this.log.info({ coordinator: this.url, heartbeatIntervalMs: r.heartbeatIntervalMs }, 'registered with the coordinator');
        } else {
          const i = this.info();
          await controlCall(this.url, `/v1/agents/${encodeURIComponent(i.name)}/heartbeat`, {
            method: 'PUT',
            body: { controlUrl: i.controlUrl, ...(i.vms ? { vms: i.vms } : {}), ...(i.stores ? { stores: i.stores } : {}), ...(i.usedBytes !== undefined ? { usedBytes: i.usedBytes } : {}), ...(i.vmCount !== undefined ? { vmCount: i.vmCount } : {}) },
            token: this.token,
            peer: 'the coordinator',
            signal,
            timeoutMs: Math.max(2000, this.intervalMs * 2),
          });
        }
      } catch (e) {
        if (signal.aborted) return;
        if (isVmsError(e) && e.code === ErrorCode.NOT_FOUND) {
          registered = false; // the coordinator restarted without us
          continue;
        }
        // Our name was taken over meanwhile (we were lost): register again, which says by whom.
        if (registered && isVmsError(e) && e.code === ErrorCode.CONFLICT) {
          registered = false;
          continue;
        }
        const now = Date.now();
        if (now - lastComplaint > 30_000) {
          lastComplaint = now;
          const code = isVmsError(e) ? e.code : undefined;
          const why = code === ErrorCode.UNAUTHORIZED ? 'the coordinator refuses our token' : code === ErrorCode.CONFLICT ? 'the coordinator refuses our registration; retrying' : 'coordinator unreachable; retrying';
          this.log.warn({ err: (e as Error).message }, why);
        }
      }
      await sleep(this.intervalMs, signal);
    }
  }
}
