/**
 * The scatter on real UDP sockets over loopback (no root): a sender and four receivers in this
 * process, multicast on 127.0.0.1.
 */
import { describe, expect, it } from 'vitest';
import { ContentStore } from '../../src/memory/content-store.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { runScatter } from '../../src/transport/scatter.js';
import { storeDigest, syntheticContentSource, syntheticDigest } from '../../src/transport/scatter-child.js';
import { makeFleet } from './fleet.js';

const SEED = 31;

describe('scatter on loopback', () => {
  for (const mtu of [9000, 1500]) {
    it(`MTU ${mtu}: every target ends with exactly the contents it needs (checked by digest)`, async () => {
      const fleet = makeFleet(mtu === 9000 ? 4000 : 1500, 4, 2, mtu);
      const ids = new Set<number>();
      for (const g of fleet.plan.groups) for (const id of g.contents) ids.add(id);
      const src = syntheticContentSource(SEED, ids);
      const stores = fleet.plan.targets.map(() => new ContentStore(1024));
      const r = await runScatter({
        plan: fleet.plan,
        contentBytes: src.contentBytes,
        stores,
        iface: '127.0.0.1',
        // A random port and job: test files run in parallel on this host.
        session: { mtu, dataPort: 20000 + Math.floor(Math.random() * 20000) },
        sender: { rateBytesPerSec: 60e6 },
      });
      for (let t = 0; t < stores.length; t++) {
        const need = fleet.needs[t]!;
        expect(Array.from(stores[t]!.heldIds())).toEqual(Array.from(need));
        // Reserved in one go when the receiver opened, for exactly what its groups bring.
        expect(stores[t]!.capacityPages).toBe(need.length);
        expect(storeDigest(stores[t]!, need)).toBe(syntheticDigest(SEED, need));
        expect(Array.from(r.targets[t]!.held)).toEqual(Array.from(need));
        expect(r.targets[t]!.complete).toBe(true);
        expect(r.receivers[t]!.ended).toBe('bye');
      }
      expect(r.sender.igmp.checked).toBe(false);
      expect(r.sender.igmp.reason).toMatch(/loopback/);
      expect(r.sender.dataBytes).toBeGreaterThanOrEqual(ids.size * PAGE_SIZE);
      expect(r.session.key).toBeDefined(); // authenticated by default
    });
  }
});
