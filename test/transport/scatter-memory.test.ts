/**
 * The scatter protocol without sockets: sender and receivers over the in-memory network, with
 * scripted loss, duplication and reordering.
 */
import { describe, expect, it } from 'vitest';
import { ContentStore } from '../../src/memory/content-store.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { ScatterReceiver, type ReceiverResult, type ScatterReceiverOptions } from '../../src/transport/multicast-receiver.js';
import { ScatterSender, type ScatterProgress, type ScatterResult, type ScatterSenderOptions } from '../../src/transport/multicast-sender.js';
import { pageDigest, syntheticContentSource, syntheticPage } from '../../src/transport/scatter-child.js';
import { sessionFromPlan, type ScatterSession } from '../../src/transport/scatter-session.js';
import { MemoryNetwork, type Impairment } from '../../src/transport/scatter-transport.js';
import { ALL_GROUPS, AUTH_TRAILER_BYTES, decodeHeader, encodeControl, Flag, HEADER_BYTES, Kind, writeHeader } from '../../src/wire/datagram.js';
import { makeFleet, sharedFleet, type Fleet } from './fleet.js';
import { scatterOutcome } from '../../src/coordinator/loopback-scatter.js';

const SEED = 77;
const SENDER = '10.0.0.1';
const iface = (t: number): string => `10.0.0.${11 + t}`;

interface Run {
  result: ScatterResult;
  receivers: ReceiverResult[];
  stores: ContentStore[];
  session: ScatterSession;
  net: MemoryNetwork;
  progress: ScatterProgress[];
}

async function scatter(
  fleet: Fleet,
  o: {
    impair?: Impairment;
    mtu?: number;
    auth?: boolean;
    skip?: (id: number) => boolean;
    absent?: number[];
    window?: number;
    sender?: Partial<ScatterSenderOptions>;
    receiver?: (t: number) => Partial<ScatterReceiverOptions>;
    beforeRun?: (net: MemoryNetwork, session: ScatterSession) => Promise<void>;
  } = {},
): Promise<Run> {
  const net = new MemoryNetwork(o.impair ?? {});
  const ids = new Set<number>();
  for (const g of fleet.plan.groups) for (const id of g.contents) ids.add(id);
  const src = syntheticContentSource(SEED, ids);
  const session = sessionFromPlan(fleet.plan, {
    job: 4242,
    key: o.auth === false ? null : 'random',
    sender: { address: SENDER, port: 0 },
    mtu: o.mtu ?? 9000,
    window: o.window ?? 3,
  });
  const progress: ScatterProgress[] = [];
  const sender = await ScatterSender.open({
    session,
    contentBytes: (id) => (o.skip?.(id) ? undefined : src.contentBytes(id)),
    network: net,
    rateBytesPerSec: 400e6,
    helloTimeoutMs: 500,
    onProgress: (p) => progress.push(p),
    progressIntervalMs: 5,
    ...o.sender,
  });
  const stores = fleet.plan.targets.map(() => new ContentStore(1024));
  const receivers: ScatterReceiver[] = [];
  try {
    for (let t = 0; t < fleet.plan.targets.length; t++) {
      if (o.absent?.includes(t)) continue;
      receivers.push(await ScatterReceiver.open({ session, target: t, store: stores[t]!, iface: iface(t), network: net, idleTimeoutMs: 10_000, ...o.receiver?.(t) }));
    }
    await o.beforeRun?.(net, session);
    const result = await sender.run();
    const ends = await Promise.all(receivers.map((r) => r.done));
    return { result, receivers: ends, stores, session, net, progress };
  } finally {
    for (const r of receivers) r.close();
    sender.close();
  }
}

/** Every target holds exactly its needed contents (minus skipped), each byte-identical. */
function expectExact(fleet: Fleet, run: Run, skip: (id: number) => boolean = () => false): void {
  const page = Buffer.alloc(PAGE_SIZE);
  for (let t = 0; t < fleet.plan.targets.length; t++) {
    const want = Array.from(fleet.needs[t]!).filter((id) => !skip(id));
    const store = run.stores[t]!;
    expect(Array.from(store.heldIds())).toEqual(want);
    for (const id of want) {
      syntheticPage(SEED, id, page);
      expect(pageDigest(store.get(id)!)).toBe(pageDigest(page));
    }
    // The source's knowledge comes from the target's report, and matches the store.
    const rep = run.result.targets[t]!;
    expect(rep.reported).toBe(true);
    expect(rep.complete).toBe(true);
    expect(Array.from(rep.held)).toEqual(want);
  }
}

describe('scatter over the in-memory network', () => {
  it('delivers every content to exactly the targets that need it, lossless', async () => {
    const fleet = makeFleet(3000);
    expect(fleet.plan.groups.length).toBeGreaterThan(8);
    const run = await scatter(fleet);
    expectExact(fleet, run);
    const s = run.result.sender;
    expect(s.repairs).toBe(0);
    expect(s.dropped).toBe(0);
    expect(s.igmpSeen).toBeNull();
    expect(s.joinsConfirmed).toBe(fleet.plan.groups.reduce((a, g) => a + g.targets.length, 0));
    expect(s.joinsMissing).toBe(0);
    for (const r of run.receivers) {
      const groups = fleet.plan.groups.filter((g) => g.targets.includes(r.target)).length;
      expect(r.ended).toBe('bye');
      expect(r.counters.joins).toBe(groups);
      expect(r.counters.leaves).toBe(groups);
      expect(r.counters.duplicates).toBe(0);
    }
    // Each content crossed the sender once: first-pass DATA bytes ~ distinct contents.
    const distinct = fleet.plan.groups.reduce((a, g) => a + g.contents.length, 0);
    expect(s.dataBytes).toBeGreaterThanOrEqual(distinct * PAGE_SIZE);
    expect(s.dataBytes).toBeLessThan(distinct * PAGE_SIZE * 1.02);
  });

  it('repairs 5% loss with duplication and reordering; multicast when several lack a datagram, unicast when one does', async () => {
    const fleet = makeFleet(3000);
    // One datagram per send, so that loss strikes datagrams independently (a segmented send is
    // lost whole: the next test).
    const run = await scatter(fleet, { impair: { loss: 0.05, duplicate: 0.03, reorder: 0.05, reorderDelayMs: 4, seed: 3, offload: false } });
    expect(run.result.sender.sends).toBe(run.result.sender.datagrams);
    expectExact(fleet, run);
    const s = run.result.sender;
    expect(s.repairs).toBeGreaterThan(0);
    expect(s.repairsUnicast).toBeGreaterThan(0);
    expect(s.repairsMulticast).toBeGreaterThan(0);
    expect(s.nacks).toBeGreaterThan(0);
    // One repair per lost datagram, not one per NACK: far fewer repairs than NACKed sequences.
    expect(s.repairs).toBeLessThan(s.nackedSeqs);
    expect(run.receivers.some((r) => r.counters.duplicates > 0)).toBe(true);
  });

  it('sends first passes several datagrams per send; coalesced reads are split; sends lost whole are repaired', async () => {
    const fleet = makeFleet(3000);
    // Target 1 does not coalesce: the network splits the segmented sends for it.
    const run = await scatter(fleet, { impair: { loss: 0.05, duplicate: 0.03, reorder: 0.05, reorderDelayMs: 4, seed: 5 }, receiver: (t) => (t === 1 ? { udpOffload: false } : {}) });
    expectExact(fleet, run);
    const s = run.result.sender;
    expect(s.segmentation).toEqual({ segmentBytes: 8248 });
    // First passes go up to 7 datagrams per send (57,736 bytes); repairs and control one per send.
    const firstPass = s.datagrams - s.repairs;
    expect(s.sends).toBeLessThan(s.repairs + firstPass / 3);
    expect(run.net.coalesced).toBeGreaterThan(0);
    expect(s.repairs).toBeGreaterThan(0);
    for (const r of run.receivers) expect(r.counters.malformed).toBe(0);
  });

  it('sends one datagram per send where segmentation is off or unavailable', async () => {
    const fleet = makeFleet(1200);
    const off = await scatter(fleet, { sender: { udpOffload: false } });
    expectExact(fleet, off);
    expect(off.result.sender.sends).toBe(off.result.sender.datagrams);
    expect(off.result.sender.segmentation).toEqual({ segmentBytes: 0 });
    const unavailable = await scatter(fleet, { impair: { offload: false } });
    expectExact(fleet, unavailable);
    expect(unavailable.result.sender.sends).toBe(unavailable.result.sender.datagrams);
    expect(unavailable.result.sender.segmentation).toEqual({ segmentBytes: 0, note: 'offloads are off in this in-memory network' });
    // The job's notes say so; turned off on purpose, they do not.
    expect(scatterOutcome(fleet.plan, unavailable.result).notes).toContain('UDP segmentation offload off: offloads are off in this in-memory network');
    expect(scatterOutcome(fleet.plan, off.result, off.receivers).notes.filter((n) => n.startsWith('UDP'))).toEqual([]);
    // And so do the receivers' coalesced reads, for every target that could not have them.
    for (const r of unavailable.receivers) expect(r.coalescingOff).toBe('offloads are off in this in-memory network');
    expect(off.receivers.map((r) => r.coalescingOff)).toEqual(fleet.plan.targets.map(() => null));
    // With the same reason on both sides, one line.
    expect(scatterOutcome(fleet.plan, unavailable.result, unavailable.receivers).notes.filter((n) => n.startsWith('UDP'))).toEqual([
      `UDP offloads off on the source and on ${fleet.plan.targets.join(', ')} (one datagram per send and per read): offloads are off in this in-memory network`,
    ]);
    // The targets' side alone (the source's offloads turned off on purpose).
    expect(scatterOutcome(fleet.plan, off.result, unavailable.receivers).notes.filter((n) => n.startsWith('UDP'))).toEqual([
      `UDP receive offload off on ${fleet.plan.targets.join(', ')} (one datagram per read): offloads are off in this in-memory network`,
    ]);
  });

  it('fragments pages at MTU 1500 and reassembles them under loss', async () => {
    const fleet = makeFleet(1200);
    const run = await scatter(fleet, { mtu: 1500, impair: { loss: 0.03, reorder: 0.03, seed: 9 } });
    expectExact(fleet, run);
    expect(run.result.sender.datagrams).toBeGreaterThan(3 * 1200 * 0.9);
  });

  it('skips contents the source has no bytes for; reports still tell what each target holds', async () => {
    const fleet = makeFleet(1500);
    const skip = (id: number): boolean => id % 7 === 3;
    const run = await scatter(fleet, { skip });
    expectExact(fleet, run, skip);
    expect(run.result.sender.groups.reduce((a, g) => a + g.skipped, 0)).toBeGreaterThan(0);
  });

  it('joins at most `window` groups at a time, ahead of their turn', async () => {
    const fleet = makeFleet(1500);
    const run = await scatter(fleet, { window: 2 });
    expectExact(fleet, run);
    for (let t = 0; t < fleet.plan.targets.length; t++) expect(run.net.maxJoined.get(iface(t))).toBeLessThanOrEqual(2);
  });

  it('shares addresses between groups on one planner channel, and stays joined across them', async () => {
    const base = makeFleet(1500);
    // Two channels used in turn, as src/plan/schedule.ts lays them out.
    const fleet: Fleet = {
      ...base,
      plan: {
        ...base.plan,
        groups: base.plan.groups.map((g) => ({ ...g, channel: base.plan.order.indexOf(g.id) % 2 })),
        channels: [{ id: 0 }, { id: 1 }],
      },
    };
    const run = await scatter(fleet);
    expectExact(fleet, run);
    expect(new Set(run.session.groups.map((g) => g.address)).size).toBe(2);
    for (let t = 0; t < fleet.plan.targets.length; t++) {
      expect(run.net.maxJoined.get(iface(t))).toBeLessThanOrEqual(2);
      const groups = fleet.plan.groups.filter((g) => g.targets.includes(t)).length;
      // Memberships are per address: never more joins than groups, usually fewer.
      expect(run.receivers[t]!.counters.joins).toBeLessThanOrEqual(groups);
      expect(run.receivers[t]!.counters.joins).toBe(run.receivers[t]!.counters.leaves);
    }
    expect(run.receivers.reduce((a, r) => a + r.counters.joins, 0)).toBeLessThan(fleet.plan.groups.reduce((a, g) => a + g.targets.length, 0));
  });

  it('drops forged, foreign and unauthenticated datagrams and counts them', async () => {
    const fleet = makeFleet(1500);
    const run = await scatter(fleet, {
      beforeRun: async (net, session) => {
        // A rogue host on the segment sends pages of its own on every group address.
        const rogue = await net.open({ bindAddress: '10.0.0.66', port: 0, iface: '10.0.0.66', onMessage: () => undefined });
        const evil = Buffer.alloc(PAGE_SIZE, 0xee);
        for (const g of session.groups) {
          const id = g.contents[0]!;
          for (const [flags, job] of [
            [Flag.AUTH, session.job], // bad tag
            [0, session.job], // unauthenticated
            [Flag.AUTH, session.job + 1], // another job
          ] as const) {
            const hdr = Buffer.alloc(HEADER_BYTES);
            writeHeader(hdr, 0, Kind.DATA, flags, job, g.id, 0, id, 1, 0, 1);
            // One page; pad where the second page would be so the length is plausible.
            const parts = [hdr, evil];
            if (flags & Flag.AUTH) parts.push(Buffer.alloc(AUTH_TRAILER_BYTES, 1));
            hdr[5] = 1;
            rogue.send(parts, session.dataPort, g.address);
          }
          rogue.send([Buffer.from('not a vmscatter datagram')], session.dataPort, g.address);
        }
        // And a forged report to the source.
        rogue.send([Buffer.alloc(40, 0x56)], session.sender.port, session.sender.address);
        await new Promise((r) => setTimeout(r, 20));
      },
    });
    expectExact(fleet, run); // nothing of the rogue's reached a store
    const dropped = run.receivers.reduce((a, r) => a + r.counters.spoofed + r.counters.foreign + r.counters.malformed, 0);
    expect(dropped).toBeGreaterThan(0);
    expect(run.receivers.reduce((a, r) => a + r.counters.spoofed, 0)).toBeGreaterThan(0);
    expect(run.result.sender.dropped).toBeGreaterThan(0);
  });

  it('finishes without a target that never shows up, and says so', async () => {
    const fleet = makeFleet(1000);
    const run = await scatter(fleet, { absent: [2], sender: { helloTimeoutMs: 300, joinTimeoutMs: 300 } });
    const rep = run.result.targets[2]!;
    expect(rep.reported).toBe(false);
    expect(rep.held.length).toBe(0);
    for (const t of [0, 1, 3]) expect(run.result.targets[t]!.complete).toBe(true);
    expect(run.result.sender.joinsMissing).toBeGreaterThan(0);
  });

  it('waits out a receiver that stops answering for 600 ms (descheduled), and repairs it to the end', async () => {
    const fleet = makeFleet(3000);
    // Everything sent to target 2 from 20 ms after its first datagram is held for 600 ms: the
    // sender's polls go unanswered, 8 of them within a quarter of a second.
    const run = await scatter(fleet, { impair: { stallByIface: { [iface(2)]: { afterMs: 20, forMs: 600 } } } });
    expectExact(fleet, run);
    for (const g of run.result.sender.groups) expect(g.incomplete).toEqual([]);
  });

  it('holds its first pass at the window a receiver offers instead of overflowing its socket buffer (flow control)', async () => {
    // One group of 6,000 contents (3,000 datagrams, 24 MB) to 4 targets with 1 MiB socket
    // buffers (2 MiB granted); target 2 stops reading for 300 ms soon after its first datagram,
    // long enough that even a slow, loaded test host sends more than its buffer holds meanwhile.
    const fleet = sharedFleet(6000);
    const stall = (forMs: number): Impairment => ({ stallByIface: { [iface(2)]: { afterMs: 20, forMs } } });
    const small = (): Partial<ScatterReceiverOptions> => ({ recvBufferBytes: 1 << 20 });
    const run = async (o: Parameters<typeof scatter>[1]): Promise<{ s: ScatterResult['sender']; overflowed: number }> => {
      const r = await scatter(fleet, { receiver: small, ...o });
      expectExact(fleet, r);
      return { s: r.result.sender, overflowed: r.net.overflowed };
    };
    // Held for it (a long flowStallMs, so that a slow test host cannot matter): nothing lost.
    const held = await run({ impair: stall(300), sender: { flowStallMs: 10_000 } });
    expect(held.overflowed).toBe(0);
    expect(held.s.repairs).toBe(0);
    expect(held.s.flow.holds).toBeGreaterThan(0);
    expect(held.s.flow.offeredBytes).toBeGreaterThan(0);
    // What the buffer holds of these reads, by the kernel's charge, with the receiver's margin.
    expect(held.s.flow.offeredBytes).toBeLessThanOrEqual(0.8 * (2 << 20));
    // Without flow control, or with receivers that do not send PROGRESS: overflow, repaired.
    for (const o of [{ sender: { flowWindowBytes: 0 } }, { receiver: () => ({ ...small(), progressEvery: 0 }) }]) {
      const lost = await run({ impair: stall(300), ...o });
      expect(lost.overflowed).toBeGreaterThan(0);
      expect(lost.s.repairs).toBeGreaterThan(0);
      expect(lost.s.flow.holds).toBe(0);
    }
    // A receiver stalled past flowStallMs (100 ms) stops holding the others: it overflows.
    const past = await run({ impair: stall(600) });
    expect(past.overflowed).toBeGreaterThan(0);
    expect(past.s.flow.holds).toBeGreaterThan(0);
  });

  it('gives up on a receiver that is gone after a second of silence, and at once in the groups after', async () => {
    const fleet = makeFleet(3000);
    const run = await scatter(fleet, {
      impair: { stallByIface: { [iface(2)]: { afterMs: 20, forMs: 60_000 } } },
      receiver: (t) => (t === 2 ? { idleTimeoutMs: 500 } : {}),
    });
    const s = run.result.sender;
    const withT2 = s.groups.filter((g) => g.targets.includes(2));
    expect(withT2.length).toBeGreaterThan(2);
    for (const g of s.groups) expect(g.incomplete.includes(2)).toBe(g.targets.includes(2));
    for (const t of [0, 1, 3]) expect(run.result.targets[t]!.complete).toBe(true);
    // The groups polling it in its first second of silence wait that second out (the window
    // holds 3); every later one gives up after its 9 unanswered polls, not the 60-round limit.
    expect(withT2.filter((g) => g.pollRounds <= 10).length).toBeGreaterThanOrEqual(withT2.length - 3);
  });

  it('gives up on a target whose path drops the data but not the control (a smaller MTU), in every group', async () => {
    const fleet = makeFleet(3000);
    // Target 1's path carries 1500-byte frames: its polls, NACKs and reports get through, the
    // 8 KiB DATA datagrams of the session's MTU 9000 never do.
    const run = await scatter(fleet, { impair: { mtuByIface: { [iface(1)]: 1500 } } });
    const s = run.result.sender;
    const withT1 = s.groups.filter((g) => g.targets.includes(1));
    expect(withT1.length).toBeGreaterThan(1);
    for (const g of s.groups) {
      expect(g.stalled).toEqual(g.targets.includes(1) ? [1] : []);
      expect(g.incomplete).toEqual(g.targets.includes(1) ? [1] : []);
    }
    expect(run.result.targets[1]!.reported).toBe(true);
    expect(run.result.targets[1]!.held.length).toBe(0);
    for (const t of [0, 2, 3]) expect(run.result.targets[t]!.complete).toBe(true);
    // Two polls without progress after at least 32 repairs it asked for: given up in the group
    // where that happened first and, from then on, in every group (no more repairs for it), not
    // a pass per poll round of every group. So the repairs stay within about three passes of the
    // first of its groups (its NACKs may also come before a poll) and what the others lost
    // (unicast to them; none here).
    const datagrams = (g: (typeof withT1)[number]): number => Math.ceil(g.contents / 2);
    expect(s.repairs).toBeGreaterThan(0);
    expect(s.repairs).toBeLessThanOrEqual(3 * Math.max(...withT1.map(datagrams)) + 64);
    // The evacuation's notes name it and say where to look.
    expect(scatterOutcome(fleet.plan, run.result).notes).toContainEqual(expect.stringMatching(/^repairs stopped for t1: .*check its MTU/));
    expect(scatterOutcome(fleet.plan, run.result).notes).toContainEqual(expect.stringMatching(/^incomplete after repair: t1 /));
  });

  it('gives up on such a target in small groups too (fewer datagrams than the evidence it needs)', async () => {
    // 200 contents: target 1's groups have 1-30 datagrams each, fewer than the 32 repairs that
    // count as evidence; they add up over its poll rounds.
    const fleet = makeFleet(200);
    for (const g of fleet.plan.groups) if (g.targets.includes(1)) expect(Math.ceil(g.contents.length / 2)).toBeLessThan(32);
    const run = await scatter(fleet, { impair: { mtuByIface: { [iface(1)]: 1500 } } });
    const s = run.result.sender;
    for (const g of s.groups) expect(g.stalled).toEqual(g.targets.includes(1) ? [1] : []);
    for (const t of [0, 2, 3]) expect(run.result.targets[t]!.complete).toBe(true);
    // Repairs until 32 went out without one arriving (two polls at least), not 60 poll rounds.
    for (const g of s.groups) expect(g.pollRounds).toBeLessThan(40);
  });

  it('never gives up on a target that keeps receiving, however much it loses', async () => {
    // Target 1 loses 60% of the DATA datagrams that reach it, first passes and repairs alike
    // (a receiver losing data to a full socket buffer); its control messages get through. Each
    // poll finds it holding more, so it is repaired to the end: about 1.5 more passes of its
    // groups. (Charging a target for the repairs it asked for, and giving up past one more pass,
    // left it without part of every group; a CI run lost 7 contents of a 15-datagram group that
    // way, to a receiver starved of CPU.)
    const fleet = makeFleet(3000);
    const run = await scatter(fleet, { impair: { bulkLossByIface: { [iface(1)]: 0.6 } } });
    const s = run.result.sender;
    expect(run.net.dropped).toBeGreaterThan(0);
    for (const g of s.groups) {
      expect(g.stalled).toEqual([]);
      expect(g.incomplete).toEqual([]);
    }
    expectExact(fleet, run);
    expect(scatterOutcome(fleet.plan, run.result).notes.filter((n) => n.startsWith('repairs stopped'))).toEqual([]);
  });

  it('confirms its joins on every tick until the sender first answers, then only when they change', async () => {
    // Receivers start before their sender, whose first group waits for every member's
    // confirmation: a 50 ms retry held a scatter's start back by up to 50 ms.
    const fleet = makeFleet(200);
    const net = new MemoryNetwork();
    const joins: Array<{ seq: number; from: { address: string; port: number } }> = [];
    const ctl = await net.open({
      bindAddress: SENDER,
      port: 47001,
      iface: SENDER,
      onMessage: (msg, from) => {
        const h = decodeHeader(msg);
        if (h?.kind === Kind.JOIN) joins.push({ seq: h.seq, from });
      },
    });
    const session = sessionFromPlan(fleet.plan, { job: 7, key: null, sender: { address: SENDER, port: 47001 }, mtu: 9000, window: 3 });
    const r = await ScatterReceiver.open({ session, target: 0, store: new ContentStore(), iface: iface(0), network: net, nackIntervalMs: 10, joinRetryMs: 60_000 });
    try {
      await new Promise((res) => setTimeout(res, 150));
      // About one per 10 ms tick; with only joinRetryMs (60 s) it would be the first one alone.
      expect(joins.length).toBeGreaterThanOrEqual(5);
      const last = joins[joins.length - 1]!;
      ctl.send([encodeControl(Kind.JOIN_ACK, session.job, ALL_GROUPS, last.seq, 0, undefined)], last.from.port, last.from.address);
      await new Promise((res) => setTimeout(res, 50));
      const after = joins.length;
      await new Promise((res) => setTimeout(res, 150));
      expect(joins.length).toBe(after);
    } finally {
      r.close();
      ctl.close();
    }
  });

  it('reports progress up to done', async () => {
    const fleet = makeFleet(1500);
    const run = await scatter(fleet);
    const last = run.progress[run.progress.length - 1]!;
    expect(last.phase).toBe('done');
    expect(last.bytesSent).toBe(last.bytesTotal);
    expect(last.groupsDone).toBe(fleet.plan.groups.length);
    for (let i = 1; i < run.progress.length; i++) expect(run.progress[i]!.bytesSent).toBeGreaterThanOrEqual(run.progress[i - 1]!.bytesSent);
  });
});
