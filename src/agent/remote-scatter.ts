/**
 * The scatter across hosts: the source agent opens the multicast sender on its interface, hands
 * the session to every target agent (POST /v1/jobs/:job/scatter), each of which opens a receiver
 * on its own interface and its job's content store, then the sender runs. What a target holds
 * afterwards comes only from its report. The scatter only warms the targets' stores: if it fails
 * (a target cannot join, the network drops everything), the job goes on and converge carries the
 * pages, which costs bytes, not correctness.
 */
import type { Logger } from 'pino';
import type { EvacuationConfig } from '../config.js';
import { controlCall } from '../coordinator/http-client.js';
import type { ScatterOutcome, ScatterRunner } from '../coordinator/evacuation.js';
import { scatterOutcome } from '../coordinator/loopback-scatter.js';
import type { RunTarget } from '../coordinator/schemas.js';
import { ScatterSender, sessionFromPlan, sessionToJson } from '../transport/scatter.js';

/** The datagram header carries a 32-bit job number: derived from the job id (FNV-1a). */
export function scatterJobNumber(job: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < job.length; i++) h = Math.imul(h ^ job.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export function createRemoteScatter(o: { job: string; cfg: EvacuationConfig['scatter']; targets: RunTarget[]; token: string; logger: Logger }): ScatterRunner {
  return async (plan, index, ctx) => {
    const empty = (note: string): ScatterOutcome => ({ held: plan.targets.map(() => new Uint32Array(0)), bytesSent: 0, datagrams: 0, repairs: 0, notes: [note] });
    if (!plan.order.length) return empty('no multicast groups in the plan');
    const session = sessionFromPlan(plan, {
      job: scatterJobNumber(o.job),
      key: 'random',
      mtu: o.cfg.mtu,
      addressPool: o.cfg.groupPool,
      sender: { address: o.cfg.interface, port: 0 },
    });
    let sender: ScatterSender | undefined;
    const onAbort = (): void => sender?.close();
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    try {
      sender = await ScatterSender.open({
        session,
        contentBytes: (id) => index.contentBytes(id),
        iface: o.cfg.interface,
        rateBytesPerSec: o.cfg.rateMBps * 1e6,
        udpOffload: o.cfg.udpOffload,
        onProgress: (p) => ctx.onProgress(p.bytesSent, p.bytesTotal),
      });
      const wire = sessionToJson(sender.session);
      await Promise.all(
        plan.targets.map((name, t) => {
          const target = o.targets.find((x) => x.name === name);
          if (!target) throw new Error(`no control URL for target ${name}`);
          return controlCall(target.controlUrl, `/v1/jobs/${encodeURIComponent(o.job)}/scatter`, {
            body: { session: wire, target: t },
            token: o.token,
            peer: `target agent ${name}`,
            timeoutMs: 15_000,
            signal: ctx.signal,
          });
        }),
      );
      const r = await sender.run();
      return scatterOutcome(plan, r);
    } catch (e) {
      if (ctx.signal.aborted) throw e;
      o.logger.warn({ job: o.job, err: (e as Error).message }, 'scatter failed; converge carries every page');
      return empty(`scatter failed: ${(e as Error).message}; converge carried every page`);
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
      sender?.close();
    }
  };
}
