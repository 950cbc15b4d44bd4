/**
 * The control plane across network namespaces (test/netns/topology.ts): coordinator and source
 * agent in the sender's namespace (10.200.0.1), one target agent in each receiver's namespace
 * (10.200.0.11-13), and the CLI evacuating through the API from the sender's namespace while it
 * reads the event stream. Converge traffic crosses the bridge, as between hosts. Twice: on clean
 * links, and with loss, reordering and duplication on every target's link (multicast, converge
 * streams and control traffic alike), where the job must end the same; and with t1's link at MTU
 * 1500 under the scatter's 9000, where t1 gets no multicast data (its control messages pass):
 * the source stops repairing it, converge carries its pages, and the job's notes say so.
 * Skips with the reason when namespaces are not usable here; under CI=true that is a failure.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopology, netnsUnavailableReason, receiverAddr, SENDER_ADDR, type Impairment, type Topology } from '../netns/topology.js';
import { TOKEN, track, type Proc } from './harness.js';

const reason = await netnsUnavailableReason();
if (reason && process.env.CI !== 'true') console.warn(`coordinator netns tests skipped: ${reason}`);

const TARGETS = 3;
const COORDINATOR = `http://${SENDER_ADDR}:7400`;
const MAIN = ['--import', 'tsx', 'src/cli/main.ts'];

const LINKS: Array<{ name: string; impair?: Impairment; t1Mtu?: number }> = [
  { name: 'clean links' },
  { name: "5% loss, 2% reordering and 2% duplication on every target's link", impair: { loss: 0.05, reorder: 0.02, duplicate: 0.02 } },
  { name: "t1's link at MTU 1500 under the scatter's 9000", t1Mtu: 1500 },
];

describe.skipIf(reason !== null && process.env.CI !== 'true').each(LINKS)('coordinator and agents in network namespaces, $name', ({ impair, t1Mtu }) => {
  it.runIf(reason !== null)('has its prerequisites (CI)', () => {
    throw new Error(`network-namespace tests cannot run under CI: ${reason}`);
  });
  if (reason !== null) return;

  let topo: Topology;
  const procs: Proc[] = [];
  const savedToken = process.env.VMSCATTER_TOKEN;
  const node = (name: string, ns: string, args: string[]): Proc => {
    const p = track(name, topo.spawn(ns, process.execPath, [...MAIN, ...args]));
    procs.push(p);
    return p;
  };

  beforeAll(async () => {
    // Children of `ip netns exec` inherit this environment: the shared token.
    process.env.VMSCATTER_TOKEN = TOKEN;
    topo = await createTopology({ receivers: TARGETS, mtu: 9000, ...(impair ? { impair } : {}) });
    if (t1Mtu) await topo.setReceiverMtu(0, t1Mtu);
    const c = node('coordinator', topo.senderNs, ['coordinator', '--listen', `${SENDER_ADDR}:7400`, '--state-dir', '', '--heartbeat-ms', '500', '--lost-after-ms', '5000', '--log-level', 'warn']);
    await c.line(/listening on/, 60_000);
    const agents = [
      node('src', topo.senderNs, ['agent', '--role', 'source', '--name', 'src', '--listen', `${SENDER_ADDR}:0`, '--coordinator', COORDINATOR, '--scatter-interface', SENDER_ADDR, '--fleet', 'sim:vms=3,memoryMiB=32,dirtyPagesPerSec=300,workingSetPages=512', '--max-bandwidth-mibps', '0', '--log-level', 'warn']),
      ...Array.from({ length: TARGETS }, (_, i) =>
        node(`t${i + 1}`, topo.receiverNs(i), ['agent', '--role', 'target', '--name', `t${i + 1}`, '--listen', `${receiverAddr(i)}:0`, '--data-listen', `${receiverAddr(i)}:0`, '--coordinator', COORDINATOR, '--scatter-interface', receiverAddr(i), '--capacity-mib', '40', '--log-level', 'warn']),
      ),
    ];
    await Promise.all(agents.map((a) => a.line(/listening on/, 60_000)));
  }, 180_000);

  afterAll(async () => {
    await topo?.destroy(); // kills the children (by pid) and removes this run's namespaces only
    if (savedToken === undefined) delete process.env.VMSCATTER_TOKEN;
    else process.env.VMSCATTER_TOKEN = savedToken;
  }, 60_000);

  it('evacuates the source host to three target hosts through the API, with the CLI following the event stream', async () => {
    const before = await topo.linkCounters();
    const ev = node('evacuate', topo.senderNs, ['evacuate', '--source', 'src', '--targets', 't1,t2,t3', '--coordinator', COORDINATOR, '--json']);
    const code = await ev.exited;
    expect(code, ev.stderr.join('')).toBe(0);
    const job = JSON.parse(ev.stdout.at(-1)!) as {
      state: string;
      vms: Array<{ name: string; target: string; state: string }>;
      report: { ok: boolean; bytes: { converge: number; scatter: number }; scatter?: { repairs: number; notes: string[] } };
    };
    const log = ev.stderr.join('');
    expect(job.state).toBe('succeeded');
    expect(job.report.ok).toBe(true);
    expect(job.vms.map((v) => v.state)).toEqual(['verified', 'verified', 'verified']);
    // Room for one 32 MiB VM per target: the VMs spread, and the contents they share go once by
    // multicast from the sender's namespace to the three receivers'.
    expect(new Set(job.vms.map((v) => v.target))).toEqual(new Set(['t1', 't2', 't3']));
    expect(job.report.bytes.scatter).toBeGreaterThan(0);
    expect(log).toMatch(/scatter: done .*MB multicast/);
    // The CLI drew progress from the events (no TTY: one line per phase and VM).
    expect(log).toMatch(/collect: done/);
    expect(log).toMatch(/converge: done/);
    expect(log).toMatch(/vm src-vm0: verified on t\d/);
    // The converge streams left the sender's namespace through its interface and reached the targets'.
    const after = await topo.linkCounters();
    const sent = after.sender.txBytes - before.sender.txBytes;
    const received = after.receivers.reduce((s, r, i) => s + r.rxBytes - before.receivers[i]!.rxBytes, 0);
    expect(sent).toBeGreaterThan(job.report.bytes.converge + job.report.bytes.scatter);
    expect(received).toBeGreaterThan(job.report.bytes.converge);
    if (impair) {
      // The impairment did act on this job, and the scatter repaired what it lost.
      expect((await topo.impairmentDrops()).every((d) => d > 0)).toBe(true);
      expect(job.report.scatter!.repairs).toBeGreaterThan(0);
    }
    const stopped = job.report.scatter!.notes.filter((n) => n.startsWith('repairs stopped for'));
    if (t1Mtu) {
      // t1 got none of the multicast data; the source gave up repairing it after one more pass.
      expect(stopped, `scatter: ${JSON.stringify(job.report.scatter)}`).toEqual([expect.stringMatching(/^repairs stopped for t1: .*check its MTU/)]);
      expect(job.report.scatter!.notes).toContainEqual(expect.stringMatching(/^incomplete after repair: t1 /));
    } else {
      expect(stopped).toEqual([]);
    }

    // The job list from another client in the namespace shows it succeeded.
    const jobs = node('jobs', topo.senderNs, ['jobs', '--coordinator', COORDINATOR, '--json']);
    expect(await jobs.exited).toBe(0);
    expect((JSON.parse(jobs.stdout.at(-1)!) as Array<{ state: string }>)[0]?.state).toBe('succeeded');
  }, 180_000);
});
