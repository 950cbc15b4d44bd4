/**
 * Which agents exist and whether they are alive. Agents register (POST /v1/agents) and
 * heartbeat; agents listed in the coordinator's config are polled instead (GET /v1/agent), and a
 * successful poll counts as a heartbeat. An agent silent for `lostAfterMs` is marked lost and the
 * `onLost` callback runs (the job manager fails what depended on it); a lost agent that reports
 * again is ready again.
 */
import type { Logger } from 'pino';
import { ErrorCode } from '../errors.js';
import { controlCall } from './http-client.js';
import { ApiError } from './http-server.js';
import type { AgentRegistration, AgentRole, AgentView, Heartbeat } from './schemas.js';

export interface AgentRecord extends AgentRegistration {
  state: 'ready' | 'lost';
  static: boolean;
  registeredAt: number;
  lastSeenAt: number;
}

export interface RegistryOptions {
  lostAfterMs: number;
  /** Poll interval of statically listed agents. */
  pollIntervalMs: number;
  staticAgents: readonly string[];
  token: string;
  logger: Logger;
  onLost: (a: AgentRecord) => void;
  onBack?: (a: AgentRecord) => void;
  /** After every registration, heartbeat or successful poll. */
  onSeen?: (a: AgentRecord) => void;
  now?: () => number;
}

export class AgentRegistry {
  private readonly agents = new Map<string, AgentRecord>();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  private readonly now: () => number;
  readonly startedAt: number;

  constructor(private readonly o: RegistryOptions) {
    this.now = o.now ?? Date.now;
    this.startedAt = this.now();
  }

  start(): void {
    const tick = Math.max(50, Math.min(this.o.pollIntervalMs, Math.floor(this.o.lostAfterMs / 4)));
    this.timer = setInterval(() => {
      this.checkLiveness();
      void this.pollStatic();
    }, tick);
    this.timer.unref();
    void this.pollStatic();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  register(reg: AgentRegistration, isStatic = false): AgentRecord {
    const old = this.agents.get(reg.name);
    if (old && old.role !== reg.role)
      throw new ApiError(409, ErrorCode.CONFLICT, `an agent named ${reg.name} is already registered as a ${old.role} agent (at ${old.controlUrl}); agent names must be unique across roles`);
    const now = this.now();
    // Two live agents under one name (two hosts with one hostname, the default name) would take
    // turns: one's address, the other's heartbeats and usage. The first keeps it until it is lost.
    if (old && old.state === 'ready' && old.controlUrl !== reg.controlUrl)
      throw new ApiError(
        409,
        ErrorCode.CONFLICT,
        `an agent named ${reg.name} is already registered at ${old.controlUrl} (last seen ${((now - old.lastSeenAt) / 1000).toFixed(1)} s ago); agent names must be unique: start the one at ${reg.controlUrl} with another --name (the name is taken over once the other has been silent for ${Math.round(this.o.lostAfterMs / 1000)} s)`,
      );
    const rec: AgentRecord = { ...reg, state: 'ready', static: isStatic || (old?.static ?? false), registeredAt: old?.registeredAt ?? now, lastSeenAt: now };
    this.agents.set(reg.name, rec);
    if (!old) this.o.logger.info({ agent: reg.name, agentRole: reg.role, controlUrl: reg.controlUrl }, 'agent registered');
    else if (old.state === 'lost') this.back(rec);
    this.o.onSeen?.(rec);
    return rec;
  }

  /** Undefined: no such agent (it must register); 'other': the name is registered from another address. */
  heartbeat(name: string, hb: Heartbeat): AgentRecord | 'other' | undefined {
    const rec = this.agents.get(name);
    if (!rec) return undefined;
    if (hb.controlUrl !== undefined && hb.controlUrl !== rec.controlUrl) return 'other';
    rec.lastSeenAt = this.now();
    if (hb.vms) rec.vms = hb.vms;
    if (hb.stores) rec.stores = hb.stores;
    if (hb.usedBytes !== undefined) rec.usedBytes = hb.usedBytes;
    if (hb.vmCount !== undefined) rec.vmCount = hb.vmCount;
    if (rec.state === 'lost') this.back(rec);
    this.o.onSeen?.(rec);
    return rec;
  }

  get(name: string): AgentRecord | undefined {
    return this.agents.get(name);
  }

  list(): AgentRecord[] {
    return [...this.agents.values()].sort((a, b) => (a.role === b.role ? (a.name < b.name ? -1 : 1) : a.role === 'source' ? -1 : 1));
  }

  /** The agent `name` with role `role`, ready; else a 422 that says what is wrong. */
  require(name: string, role: AgentRole): AgentRecord {
    const a = this.agents.get(name);
    if (!a) {
      const known = this.list().filter((x) => x.role === role).map((x) => x.name);
      throw new ApiError(422, ErrorCode.AGENT, `no ${role} agent named ${name} is registered; ${known.length ? `${role} agents: ${known.join(', ')}` : `no ${role} agent has registered yet`} (GET /v1/agents)`);
    }
    if (a.role !== role) throw new ApiError(422, ErrorCode.AGENT, `${name} is a ${a.role} agent, not a ${role} agent`);
    if (a.state === 'lost') throw new ApiError(422, ErrorCode.AGENT, `${role} agent ${name} is lost: no heartbeat for ${Math.round((this.now() - a.lastSeenAt) / 1000)} s`);
    return a;
  }

  /** Lost, or never heard of since this coordinator started longer ago than lostAfterMs. */
  isGone(name: string): boolean {
    const a = this.agents.get(name);
    if (a) return a.state === 'lost';
    return this.now() - this.startedAt > this.o.lostAfterMs;
  }

  view(a: AgentRecord, slots: { outgoing: number; incoming: number }): AgentView {
    const { state, static: st, registeredAt, lastSeenAt, ...reg } = a;
    return { ...reg, state, static: st, registeredAt: new Date(registeredAt).toISOString(), lastSeenAt: new Date(lastSeenAt).toISOString(), slots };
  }

  checkLiveness(): void {
    const now = this.now();
    for (const a of this.agents.values()) {
      if (a.state === 'ready' && now - a.lastSeenAt > this.o.lostAfterMs) {
        a.state = 'lost';
        this.o.logger.warn({ agent: a.name, agentRole: a.role, silentMs: now - a.lastSeenAt }, 'agent lost');
        try {
          this.o.onLost(a);
        } catch (e) {
          this.o.logger.error({ err: e, agent: a.name }, 'handling a lost agent failed');
        }
      }
    }
  }

  private back(rec: AgentRecord): void {
    rec.state = 'ready';
    this.o.logger.info({ agent: rec.name }, 'lost agent is back');
    this.o.onBack?.(rec);
  }

  private async pollStatic(): Promise<void> {
    if (this.polling || this.o.staticAgents.length === 0) return;
    this.polling = true;
    try {
      await Promise.all(
        this.o.staticAgents.map(async (url) => {
          try {
            const info = await controlCall<AgentRegistration>(url, '/v1/agent', { token: this.o.token, peer: 'agent', timeoutMs: Math.max(1000, this.o.lostAfterMs / 2) });
            this.register({ ...info, controlUrl: info.controlUrl || url }, true);
          } catch (e) {
            if (e instanceof ApiError) this.o.logger.warn({ url, err: e.message }, 'static agent refused');
            else this.o.logger.debug({ url, err: (e as Error).message }, 'static agent poll failed');
          }
        }),
      );
    } finally {
      this.polling = false;
    }
  }
}
