/**
 * The scatter across a network-namespace topology (root): a sender and 4 receivers on a bridge
 * with IGMP snooping, each in its own namespace and process; MTU 9000 and 1500; loss,
 * reordering and duplication on the receivers' links (tc; see test/netns/topology.sh).
 * Every target must end with exactly the contents it needs, checked by digest.
 *
 * Skips with the reason when namespaces are not usable here; under CI=true that is a failure.
 */
import { describe, expect, it } from 'vitest';
import { pageDigest, syntheticDigest, syntheticPage } from '../../src/transport/scatter-child.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { datagramLayout, FRAME_OVERHEAD } from '../../src/wire/datagram.js';
import { createTopology, netnsUnavailableReason, type Impairment } from '../netns/topology.js';
import { runNetnsScatter } from '../netns/scatter-run.js';
import { offloadUnavailableReason } from '../../src/transport/udp-offload.js';
import { makeFleet } from './fleet.js';

const reason = await netnsUnavailableReason();
if (reason && process.env.CI !== 'true') console.warn(`scatter netns tests skipped: ${reason}`);
// Without the offloads the scatter runs one datagram per send, and these tests check that instead.
const offloadReason = offloadUnavailableReason();
if (!reason && offloadReason && process.env.CI !== 'true') console.warn(`scatter netns tests run without UDP offloads: ${offloadReason}`);

const SEED = 4099;

interface Case {
  name: string;
  mtu: number;
  impair?: Impairment;
  contents: number;
  skipEvery?: number;
  digests?: boolean;
}

const cases: Case[] = [
  { name: 'MTU 9000, clean link, IGMP joins seen by the network', mtu: 9000, contents: 3000, digests: true },
  { name: 'MTU 1500, clean link', mtu: 1500, contents: 1500 },
  // 6,000 contents: in segmented sends of up to 7 datagrams, 3,000 made few enough packets that
  // 1% loss now and then struck only control messages, and nothing needed repair.
  { name: 'MTU 9000, 1% loss, some contents left to converge', mtu: 9000, contents: 6000, impair: { loss: 0.01 }, skipEvery: 9 },
  { name: 'MTU 9000, 5% loss', mtu: 9000, contents: 3000, impair: { loss: 0.05 } },
  { name: 'MTU 9000, 5% reordering and 5% duplication', mtu: 9000, contents: 3000, impair: { reorder: 0.05, duplicate: 0.05 } },
  { name: 'MTU 1500, 5% loss, 2% reordering, 2% duplication', mtu: 1500, contents: 1200, impair: { loss: 0.05, reorder: 0.02, duplicate: 0.02 } },
];

describe.skipIf(reason !== null && process.env.CI !== 'true')('scatter across network namespaces', () => {
  it.runIf(reason !== null || (offloadReason !== null && process.env.CI === 'true'))('has its prerequisites (CI)', () => {
    throw new Error(`network-namespace tests cannot run under CI: ${reason ?? offloadReason}`);
  });

  for (const c of cases) {
    it.skipIf(reason !== null)(c.name, { timeout: 90_000 }, async () => {
      const fleet = makeFleet(c.contents, 4, 2, cases.indexOf(c) + 1);
      const topo = await createTopology({ receivers: 4, mtu: c.mtu, ...(c.impair ? { impair: c.impair } : {}) });
      try {
        const before = await topo.linkCounters();
        const r = await runNetnsScatter(topo, {
          plan: fleet.plan,
          seed: SEED,
          mtu: c.mtu,
          rateBytesPerSec: 80e6,
          digests: c.digests ?? false,
          ...(c.skipEvery ? { skipEvery: c.skipEvery } : {}),
          timeoutMs: 60_000,
        });
        const skipped = (id: number): boolean => c.skipEvery !== undefined && id % c.skipEvery === c.skipEvery - 1;
        const page = Buffer.alloc(PAGE_SIZE);
        for (const out of r.receivers) {
          const want = Array.from(fleet.needs[out.target]!).filter((id) => !skipped(id));
          expect(out.ended).toBe('bye');
          // On failure, say which of its groups ended without it and how (CI logs are all there is).
          const why = r.sender.sender.groups
            .filter((g) => g.incomplete.includes(out.target))
            .map((g) => `group ${g.id} (${g.datagrams} datagrams sent, ${g.repairs} repairs, ${g.pollRounds} polls${g.stalled.includes(out.target) ? ', given up as stalled' : ''})`);
          expect(out.held, `target ${out.target} lacks data of ${why.join('; ') || 'no group'}`).toEqual(want);
          expect(out.setDigest).toBe(syntheticDigest(SEED, want));
          if (out.digests) {
            out.digests.forEach((d, i) => {
              syntheticPage(SEED, out.held[i]!, page);
              expect(d).toBe(pageDigest(page));
            });
          }
          // What the source believes each target holds comes from its report and is exact.
          const rep = r.sender.targets[out.target]!;
          expect(rep.reported).toBe(true);
          expect(rep.complete).toBe(true);
          expect(rep.held).toEqual(want);
        }
        const s = r.sender.sender;
        if (offloadReason) expect(s.sends).toBe(s.datagrams);
        else {
          // First passes went several datagrams per send (UDP GSO), through the bridge and netem
          // to the receivers' sockets.
          expect(s.segmentation).toEqual({ segmentBytes: datagramLayout(c.mtu, true).maxDatagramBytes });
          // Repairs and control messages go one per send, and so does the first pass while the
          // pacing has backed off under loss (tokens for a datagram or two at a time).
          const batched = c.impair?.loss ? 1 : c.mtu === 9000 ? 0.3 : 0.6;
          expect(s.sends - s.repairs).toBeLessThan((s.datagrams - s.repairs) * batched);
        }
        // What the sender's interface counted: its payload, with headers (FRAME_OVERHEAD) once
        // per send, as a segmented send crosses the veth as one packet, plus about 40 small
        // frames of ARP, IGMP and IPv6 (~4 KB here).
        const framed = s.bytesSent + s.sends * FRAME_OVERHEAD;
        const txBytes = (await topo.linkCounters()).sender.txBytes - before.sender.txBytes;
        expect(txBytes - framed).toBeGreaterThanOrEqual(0);
        expect(txBytes - framed).toBeLessThan(8192);
        const memberships = fleet.plan.groups.reduce((a, g) => a + g.targets.length, 0);
        expect(s.joinsConfirmed).toBe(memberships);
        // Root has CAP_NET_RAW: the network itself confirms the joins, and a group starts only
        // once the network has seen its members join (the bridge snoops IGMP). IGMP reports are
        // lost like any packet on a lossy link, so there only most of them are seen, and a
        // member whose report was lost may start unseen and leave before a retransmitted report
        // (then the network saw it only leave: counted as such, never as a join).
        expect(s.igmp.checked).toBe(true);
        for (const g of s.groups) expect(g.igmpJoined!.filter((t) => g.igmpLeftOnly!.includes(t))).toEqual([]);
        if (c.impair?.loss) {
          expect(s.igmpSeen! + s.igmpLeftOnly!).toBeGreaterThanOrEqual(Math.floor(memberships * 0.8));
        } else {
          expect(s.igmpSeen).toBe(memberships);
          expect(s.igmpLeftOnly).toBe(0);
          expect(s.igmpUnseenAtStart).toBe(0);
        }
        if (c.impair?.loss) {
          const drops = await topo.impairmentDrops();
          // netem drops a segmented send whole: at 1%, a link sees a few hundred packets and may
          // lose none of them, so the drops are counted over all links.
          expect(drops.reduce((a, d) => a + d, 0)).toBeGreaterThan(0);
          expect(s.repairs).toBeGreaterThan(0);
        }
        if (c.impair?.duplicate) expect(r.receivers.reduce((a, x) => a + x.counters.duplicates, 0)).toBeGreaterThan(0);
        if (c.skipEvery) expect(s.groups.reduce((a, g) => a + g.skipped, 0)).toBeGreaterThan(0);
      } finally {
        await topo.destroy();
      }
    });
  }
});
