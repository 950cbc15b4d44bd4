/**
 * ContentStore: pages stored under content ids come back byte for byte, whatever mix of
 * reserved slabs (reserve(), one allocation up front) and 8 MiB growth slabs holds them.
 */
import { describe, expect, it } from 'vitest';
import { ContentStore } from '../../src/memory/content-store.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { makeRng } from '../../src/rng.js';

function page(id: number): Buffer {
  const b = Buffer.alloc(PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o += 4) b.writeUInt32LE((id * 2654435761 + o) >>> 0, o);
  return b;
}

describe('ContentStore', () => {
  it('keeps every page intact across reserved and grown slabs, in any order of ids', () => {
    const rng = makeRng(7);
    const store = new ContentStore(16); // ids beyond it grow the index
    const ids = Array.from({ length: 7000 }, (_, i) => i * 3 + 1);
    for (let i = ids.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    // 1000 in growth slabs, then a reservation of 3000 (one slab), 3000 more: growth again.
    ids.slice(0, 1000).forEach((id) => expect(store.put(id, page(id))).toBe(true));
    store.reserve(3000);
    ids.slice(1000).forEach((id) => expect(store.put(id, page(id))).toBe(true));
    expect(store.size).toBe(7000);
    for (const id of ids) expect(store.get(id)!.equals(page(id))).toBe(true);
    expect(store.get(0)).toBeUndefined();
    expect(store.put(ids[0]!, page(0))).toBe(false); // already held: unchanged
    expect(store.get(ids[0]!)!.equals(page(ids[0]!))).toBe(true);
    expect(Array.from(store.heldIds())).toEqual([...ids].sort((a, b) => a - b));
  });

  it('reserves only what it lacks, and refuses a bad count', () => {
    const store = new ContentStore();
    store.reserve(10);
    store.reserve(5); // already there
    expect(store.capacityPages).toBe(10);
    for (let id = 0; id < 12; id++) store.put(id, page(id), 0);
    for (let id = 0; id < 12; id++) expect(store.get(id)!.equals(page(id))).toBe(true);
    expect(() => store.reserve(-1)).toThrow(RangeError);
    expect(() => store.reserve(1.5)).toThrow(RangeError);
  });

  it('stores a page from an offset inside a larger buffer', () => {
    const store = new ContentStore();
    const two = Buffer.concat([page(1), page(2)]);
    store.reserve(2);
    store.put(2, two, PAGE_SIZE);
    store.put(1, two, 0);
    expect(store.get(1)!.equals(page(1))).toBe(true);
    expect(store.get(2)!.equals(page(2))).toBe(true);
  });
});
