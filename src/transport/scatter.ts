/**
 * The scatter phase as one call: multicast every distinct content once to the group of targets
 * that need it, repair, and return what each target reports holding.
 *
 * Across hosts the pieces run apart: the source agent opens a `ScatterSender`, the coordinator
 * hands `sender.session` to each target agent, which opens a `ScatterReceiver` on its own
 * ContentStore; `sender.run()` then returns the reports. `runScatter` does all of it in one
 * process (embedded mode, tests).
 */
import { ErrorCode, VmsError } from '../errors.js';
import type { ContentStore } from '../memory/content-store.js';
import { ScatterReceiver, type ReceiverResult, type ScatterReceiverOptions } from './multicast-receiver.js';
import { ScatterSender, type ScatterProgress, type ScatterResult, type ScatterSenderOptions } from './multicast-sender.js';
import { SCATTER_DEFAULTS, sessionFromPlan, type ScatterPlan, type ScatterSession, type SessionOptions } from './scatter-session.js';
import type { ScatterNetwork } from './scatter-transport.js';

export { ScatterSender, ScatterReceiver };
export type { ScatterProgress, ScatterResult, ReceiverResult };
export type { SenderStats, TargetReport, GroupStats } from './multicast-sender.js';
export { sessionFromPlan, sessionFromJson, sessionToJson, SCATTER_DEFAULTS } from './scatter-session.js';
export type { ScatterSession, ScatterPlan, ScatterSessionJson } from './scatter-session.js';
export { simpleGroups } from './simple-groups.js';

export interface RunScatterOptions {
  plan: ScatterPlan;
  /** Bytes of a content, or undefined to leave it to converge. */
  contentBytes: (id: number) => Buffer | undefined;
  /** One store per target, indexed like plan.targets. */
  stores: ContentStore[];
  /** Interface for sender and receivers (default 127.0.0.1). */
  iface?: string;
  /** Session settings: job, key ('random' default, null = no auth), mtu, window, ports, pool. */
  session?: Omit<SessionOptions, 'sender'> & { senderPort?: number };
  sender?: Omit<ScatterSenderOptions, 'session' | 'contentBytes' | 'network' | 'onProgress'>;
  receiver?: Omit<ScatterReceiverOptions, 'session' | 'target' | 'store' | 'network' | 'iface'>;
  network?: ScatterNetwork;
  onProgress?: (p: ScatterProgress) => void;
}

export interface RunScatterResult extends ScatterResult {
  session: ScatterSession;
  receivers: ReceiverResult[];
}

export async function runScatter(o: RunScatterOptions): Promise<RunScatterResult> {
  if (o.stores.length !== o.plan.targets.length) {
    throw new VmsError(ErrorCode.CONFIG, `runScatter needs one ContentStore per target: ${o.plan.targets.length} targets, ${o.stores.length} stores`);
  }
  const iface = o.iface ?? SCATTER_DEFAULTS.iface;
  const { senderPort, ...sessionOpts } = o.session ?? {};
  const session = sessionFromPlan(o.plan, { ...sessionOpts, sender: { address: iface, port: senderPort ?? 0 } });
  const senderOpts: ScatterSenderOptions = { ...o.sender, session, contentBytes: o.contentBytes, iface };
  if (o.network) senderOpts.network = o.network;
  if (o.onProgress) senderOpts.onProgress = o.onProgress;
  const sender = await ScatterSender.open(senderOpts);
  const receivers: ScatterReceiver[] = [];
  try {
    for (let t = 0; t < o.plan.targets.length; t++) {
      const ro: ScatterReceiverOptions = { ...o.receiver, session, target: t, store: o.stores[t]!, iface };
      if (o.network) ro.network = o.network;
      receivers.push(await ScatterReceiver.open(ro));
    }
    const result = await sender.run();
    // Receivers end on BYE; one whose BYE got lost is closed here.
    const ends = await Promise.all(
      receivers.map((r) => Promise.race([r.done, new Promise<null>((res) => setTimeout(res, 500, null).unref())])),
    );
    const finals = await Promise.all(ends.map((e, i) => (e ? e : (receivers[i]!.close(), receivers[i]!.done))));
    return { ...result, session, receivers: finals };
  } finally {
    for (const r of receivers) r.close();
    sender.close();
  }
}
