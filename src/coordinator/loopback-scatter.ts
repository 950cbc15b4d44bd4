/**
 * The scatter of an embedded evacuation: sender and every target's receiver in this process,
 * multicast on the configured interface (loopback by default), each receiver filling its target
 * agent's content store. What the targets hold afterwards comes only from their reports.
 */
import type { TargetAgent } from '../agent/target-agent.js';
import type { EvacuationConfig } from '../config.js';
import { ErrorCode, VmsError } from '../errors.js';
import { runScatter } from '../transport/scatter.js';
import type { Plan } from '../plan/types.js';
import type { ReceiverResult } from '../transport/multicast-receiver.js';
import type { ScatterResult } from '../transport/multicast-sender.js';
import type { ScatterOutcome, ScatterRunner } from './evacuation.js';

export function createLoopbackScatter(cfg: EvacuationConfig['scatter'], agents: TargetAgent[], job: string): ScatterRunner {
  return async (plan, index, ctx) => {
    const stores = plan.targets.map((name) => {
      const agent = agents.find((a) => a.name === name);
      if (!agent) throw new VmsError(ErrorCode.PLAN, `the plan names target ${name}, which has no agent here`);
      return agent.store;
    });
    const r = await runScatter({
      plan,
      contentBytes: (id) => index.contentBytes(id),
      stores,
      iface: cfg.interface,
      session: { job: jobNumber(job), key: 'random', mtu: cfg.mtu, addressPool: cfg.groupPool },
      sender: { rateBytesPerSec: cfg.rateMBps * 1e6, udpOffload: cfg.udpOffload },
      receiver: { udpOffload: cfg.udpOffload },
      onProgress: (p) => ctx.onProgress(p.bytesSent, p.bytesTotal),
    });
    return scatterOutcome(plan, r, r.receivers);
  };
}

/**
 * What the evacuation keeps of a scatter: holdings from the targets' reports, bytes, notes.
 * `receivers`: their own results, where they ran in this process.
 */
export function scatterOutcome(plan: Pick<Plan, 'targets'>, r: ScatterResult, receivers: readonly ReceiverResult[] = []): ScatterOutcome {
  const notes: string[] = [];
  if (!r.sender.igmp.checked) notes.push(`network-level join check skipped: ${r.sender.igmp.reason ?? 'no CAP_NET_RAW'}`);
  else if (r.sender.igmpUnseenAtStart) {
    notes.push(
      `${r.sender.igmpUnseenAtStart} group memberships started before the network showed their IGMP join (a switch with IGMP snooping may not have forwarded those groups; repair and converge carried what was missed)`,
    );
  }
  // Asked for and not had, or turned off after a failed send: the scatter went one datagram per
  // send, and per read on the targets named (one line when both have the same reason).
  const sendOff = r.sender.segmentation.note;
  const uncoalesced = receivers.filter((x) => x.coalescingOff);
  const readOff = uncoalesced[0]?.coalescingOff;
  const names = uncoalesced.map((x) => plan.targets[x.target] ?? `target ${x.target}`).join(', ');
  if (sendOff && sendOff === readOff) notes.push(`UDP offloads off on the source and on ${names} (one datagram per send and per read): ${sendOff}`);
  else {
    if (sendOff) notes.push(`UDP segmentation offload off: ${sendOff}`);
    if (readOff) notes.push(`UDP receive offload off on ${names} (one datagram per read): ${readOff}`);
  }
  const incomplete = r.targets.filter((t) => !t.complete).map((t) => t.name);
  if (incomplete.length) notes.push(`incomplete after repair: ${incomplete.join(', ')} (converge carries the rest)`);
  const stalled = [...new Set(r.sender.groups.flatMap((g) => g.stalled))].map((t) => r.targets.find((x) => x.target === t)?.name ?? `target ${t}`);
  if (stalled.length) {
    notes.push(
      `repairs stopped for ${stalled.join(', ')}: repaired datagrams did not arrive (a path that drops the scatter's data but not its control messages: check its MTU against the scatter's)`,
    );
  }
  return {
    held: plan.targets.map((_, t) => r.targets.find((x) => x.target === t)?.held ?? new Uint32Array(0)),
    bytesSent: r.sender.bytesSent,
    bytesReceived: r.targets.reduce((s, t) => s + t.bytes, 0),
    datagrams: r.sender.datagrams,
    repairs: r.sender.repairs,
    notes,
  };
}

/** The datagram header carries a 32-bit job number: derive it from the job name. */
function jobNumber(job: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < job.length; i++) h = Math.imul(h ^ job.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
