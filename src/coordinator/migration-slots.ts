/**
 * Per-host limits on VM migrations in flight, over all jobs: at most `maxOutgoingPerSource` out of
 * one source host and `maxIncomingPerTarget` into one target host (what Nova's
 * max_concurrent_live_migrations and KubeVirt's parallelOutboundMigrationsPerNode bound). A VM
 * holds one slot on each side from the start of its converge stream until it resumed or failed.
 * Waiters are served in arrival order; a waiter that does not fit blocks later waiters on the same
 * hosts (no starvation), while waiters on other hosts go ahead.
 */
export interface SlotLimits {
  maxOutgoingPerSource: number;
  maxIncomingPerTarget: number;
}

interface Waiter {
  key: string;
  job: string;
  source: string;
  target: string;
  resolve: (granted: boolean) => void;
}

const keyOf = (job: string, vm: string): string => `${job}\u0000${vm}`;

export class MigrationSlots {
  private readonly out = new Map<string, number>();
  private readonly in = new Map<string, number>();
  private readonly holders = new Map<string, { job: string; source: string; target: string }>();
  private waiters: Waiter[] = [];

  constructor(readonly limits: SlotLimits) {}

  /** Wait up to timeoutMs for a slot; false when the time ran out or the signal aborted. */
  acquire(job: string, vm: string, source: string, target: string, o: { timeoutMs: number; signal?: AbortSignal }): Promise<boolean> {
    const key = keyOf(job, vm);
    if (this.holders.has(key)) return Promise.resolve(true);
    if (this.fits(source, target) && !this.waiters.some((w) => w.source === source || w.target === target)) {
      this.take(key, job, source, target);
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      let settled = false;
      const finish = (granted: boolean): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(granted);
        if (!granted) this.pump(); // a departing waiter may unblock others
      };
      const waiter: Waiter = { key, job, source, target, resolve: finish };
      const onAbort = (): void => finish(false);
      const timer = setTimeout(() => finish(false), o.timeoutMs);
      o.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** Hold a slot whatever the limits say (re-attaching a job after a coordinator restart). */
  restore(job: string, vm: string, source: string, target: string): void {
    const key = keyOf(job, vm);
    if (!this.holders.has(key)) this.take(key, job, source, target);
  }

  release(job: string, vm: string): boolean {
    const key = keyOf(job, vm);
    const h = this.holders.get(key);
    if (!h) return false;
    this.holders.delete(key);
    dec(this.out, h.source);
    dec(this.in, h.target);
    this.pump();
    return true;
  }

  /** Release everything a job holds and turn its waiters away. */
  releaseJob(job: string): void {
    for (const [key, h] of [...this.holders]) {
      if (h.job !== job) continue;
      this.holders.delete(key);
      dec(this.out, h.source);
      dec(this.in, h.target);
    }
    for (const w of this.waiters.filter((x) => x.job === job)) w.resolve(false);
    this.pump();
  }

  holds(job: string, vm: string): boolean {
    return this.holders.has(keyOf(job, vm));
  }

  outgoing(host: string): number {
    return this.out.get(host) ?? 0;
  }

  incoming(host: string): number {
    return this.in.get(host) ?? 0;
  }

  waiting(): number {
    return this.waiters.length;
  }

  usage(): Array<{ host: string; direction: 'outgoing' | 'incoming'; used: number }> {
    return [
      ...[...this.out].map(([host, used]) => ({ host, direction: 'outgoing' as const, used })),
      ...[...this.in].map(([host, used]) => ({ host, direction: 'incoming' as const, used })),
    ];
  }

  /** Why a VM waits, for its event. */
  describe(source: string, target: string): string {
    const o = this.outgoing(source);
    const i = this.incoming(target);
    const parts: string[] = [];
    if (o >= this.limits.maxOutgoingPerSource) parts.push(`source ${source} has ${o}/${this.limits.maxOutgoingPerSource} outgoing migrations`);
    if (i >= this.limits.maxIncomingPerTarget) parts.push(`target ${target} has ${i}/${this.limits.maxIncomingPerTarget} incoming migrations`);
    return `waiting for a migration slot: ${parts.join(', ') || 'earlier requests on the same hosts go first'}`;
  }

  private fits(source: string, target: string): boolean {
    return this.outgoing(source) < this.limits.maxOutgoingPerSource && this.incoming(target) < this.limits.maxIncomingPerTarget;
  }

  private take(key: string, job: string, source: string, target: string): void {
    this.holders.set(key, { job, source, target });
    this.out.set(source, this.outgoing(source) + 1);
    this.in.set(target, this.incoming(target) + 1);
  }

  private pump(): void {
    const blockedSources = new Set<string>();
    const blockedTargets = new Set<string>();
    for (const w of [...this.waiters]) {
      if (blockedSources.has(w.source) || blockedTargets.has(w.target) || !this.fits(w.source, w.target)) {
        blockedSources.add(w.source);
        blockedTargets.add(w.target);
        continue;
      }
      this.waiters = this.waiters.filter((x) => x !== w);
      this.take(w.key, w.job, w.source, w.target);
      w.resolve(true);
    }
  }
}

function dec(m: Map<string, number>, k: string): void {
  const v = (m.get(k) ?? 0) - 1;
  if (v <= 0) m.delete(k);
  else m.set(k, v);
}
