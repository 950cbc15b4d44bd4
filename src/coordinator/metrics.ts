/**
 * Prometheus metrics of the coordinator (GET /metrics). One registry per coordinator instance,
 * so several can live in one process (tests). Counters are fed from jobs' events and final
 * reports; gauges are read when scraped.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EvacuationReport } from './evacuation.js';

export interface CoordinatorMetrics {
  registry: Registry;
  bytes: Counter<'kind'>;
  pages: Counter<'kind'>;
  repairs: Counter;
  datagrams: Counter;
  drops: Counter<'what'>;
  migrations: Counter<'result'>;
  jobs: Counter<'state'>;
  phaseSeconds: Histogram<'phase'>;
  downtimeSeconds: Histogram;
  /** Record a finished job's report. */
  recordReport(r: EvacuationReport): void;
}

export function createMetrics(gauges: {
  jobsByState: () => Record<string, number>;
  agents: () => Array<{ role: string; state: string }>;
  slots: () => Array<{ host: string; direction: 'outgoing' | 'incoming'; used: number }>;
}): CoordinatorMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'vmscatter_coordinator_' });
  const bytes = new Counter({
    name: 'vmscatter_bytes_total',
    help: 'Bytes sent by source hosts: converge = converge connections, scatter = multicast datagrams, plain_qemu = what plain QEMU migration of the same VMs sends (for comparison)',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const pages = new Counter({
    name: 'vmscatter_pages_total',
    help: 'Pages of converge streams by how they crossed: whole (4 KiB), stored (whole, kept by the target), ref (a reference to content the target held)',
    labelNames: ['kind'] as const,
    registers: [registry],
  });
  const repairs = new Counter({ name: 'vmscatter_scatter_repairs_total', help: 'Multicast repairs (retransmissions after NACKs)', registers: [registry] });
  const datagrams = new Counter({ name: 'vmscatter_scatter_datagrams_total', help: 'Multicast datagrams sent', registers: [registry] });
  const drops = new Counter({
    name: 'vmscatter_drops_total',
    help: 'Things dropped: vm = a VM migration dropped (failed or cancelled; the source kept running), datagram = multicast datagrams the scatter reported lost',
    labelNames: ['what'] as const,
    registers: [registry],
  });
  const migrations = new Counter({ name: 'vmscatter_vm_migrations_total', help: 'VM migrations ended, by result', labelNames: ['result'] as const, registers: [registry] });
  const jobs = new Counter({ name: 'vmscatter_jobs_ended_total', help: 'Jobs ended, by final state', labelNames: ['state'] as const, registers: [registry] });
  const phaseSeconds = new Histogram({
    name: 'vmscatter_phase_duration_seconds',
    help: 'Duration of evacuation phases (collect, plan, scatter, converge, verify)',
    labelNames: ['phase'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900],
    registers: [registry],
  });
  const downtimeSeconds = new Histogram({
    name: 'vmscatter_downtime_seconds',
    help: 'Per-VM downtime: source stop to target resume',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5],
    registers: [registry],
  });
  new Gauge({
    name: 'vmscatter_jobs',
    help: 'Jobs known to the coordinator, by state',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [s, n] of Object.entries(gauges.jobsByState())) this.set({ state: s }, n);
    },
  });
  new Gauge({
    name: 'vmscatter_agents',
    help: 'Agents by role and state (ready, lost)',
    labelNames: ['role', 'state'] as const,
    registers: [registry],
    collect() {
      this.reset();
      const counts = new Map<string, { role: string; state: string; n: number }>();
      for (const a of gauges.agents()) {
        const k = `${a.role}/${a.state}`;
        const c = counts.get(k) ?? { role: a.role, state: a.state, n: 0 };
        c.n++;
        counts.set(k, c);
      }
      for (const c of counts.values()) this.set({ role: c.role, state: c.state }, c.n);
    },
  });
  new Gauge({
    name: 'vmscatter_migration_slots_in_use',
    help: 'VM migrations in flight per host and direction (bounded by coordinator.maxOutgoingPerSource / maxIncomingPerTarget)',
    labelNames: ['host', 'direction'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const s of gauges.slots()) this.set({ host: s.host, direction: s.direction }, s.used);
    },
  });

  return {
    registry,
    bytes,
    pages,
    repairs,
    datagrams,
    drops,
    migrations,
    jobs,
    phaseSeconds,
    downtimeSeconds,
    recordReport(r) {
      bytes.inc({ kind: 'converge' }, r.bytes.converge);
      bytes.inc({ kind: 'scatter' }, r.bytes.scatter);
      bytes.inc({ kind: 'plain_qemu' }, r.bytes.plainQemu);
      for (const v of r.vms) {
        pages.inc({ kind: 'whole' }, v.pagesWhole);
        pages.inc({ kind: 'stored' }, v.pagesStored);
        pages.inc({ kind: 'ref' }, v.pagesRef);
        if (Number.isFinite(v.downtimeMs) && v.rounds > 0) downtimeSeconds.observe(v.downtimeMs / 1000);
      }
      if (r.scatter) {
        repairs.inc(r.scatter.repairs);
        datagrams.inc(r.scatter.datagrams);
        const lost = (r.scatter as { dropped?: unknown }).dropped;
        if (typeof lost === 'number' && lost > 0) drops.inc({ what: 'datagram' }, lost);
      }
    },
  };
}
