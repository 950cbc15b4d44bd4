/**
 * The scatter's UDP sockets on loopback (no root): a group socket connected to its source takes
 * only that source's datagrams, and the polled path (read(2) into one reused buffer while a burst
 * lasts, read events again once the queue stays empty) hands over every datagram intact and in
 * order, bounds what one event-loop turn reads, and stops at close. Segmented sends (UDP GSO)
 * reach a coalescing socket (UDP GRO) as one read and another as datagrams, and a failed one
 * turns segmentation off.
 */
import { describe, expect, it } from 'vitest';
import { multicastUdpNetwork } from '../../src/transport/multicast-udp.js';
import type { Peer, ScatterSocket } from '../../src/transport/scatter-transport.js';
import { offloadUnavailableReason } from '../../src/transport/udp-offload.js';

const IFACE = '127.0.0.1';
const offloadReason = offloadUnavailableReason();
if (offloadReason && process.env.CI !== 'true') console.warn(`UDP offload tests skipped: ${offloadReason}`);

/** Datagram i: runs of ten of one length (the polled path reuses its view of them), then another. */
function datagram(i: number): Buffer {
  const b = Buffer.alloc(100 + ((Math.floor(i / 10) * 977) % 8000));
  b.writeUInt32BE(i, 0);
  for (let k = 4; k < b.length; k++) b[k] = (i + k) & 0xff;
  return b;
}

/** A sender socket and a group socket connected to it (polled reads), on a random group and port. */
async function groupPair(
  onMessage: (msg: Buffer, from: Peer) => void,
  opts: { maxDrainBytes?: number; segmentBytes?: number; coalesce?: boolean } = {},
): Promise<{ send: ScatterSocket; rx: ScatterSocket; group: string; port: number }> {
  const group = `239.193.${Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const port = 20000 + Math.floor(Math.random() * 20000);
  const { maxDrainBytes, segmentBytes, coalesce } = opts;
  const send = await multicastUdpNetwork().open({ bindAddress: IFACE, port: 0, iface: IFACE, ...(segmentBytes ? { segmentBytes } : {}), onMessage: () => {} });
  const rx = await multicastUdpNetwork({ source: send.local, ...(maxDrainBytes ? { maxDrainBytes } : {}) }).open({
    bindAddress: group,
    port,
    iface: IFACE,
    reuseAddr: true,
    join: group,
    ...(coalesce ? { coalesce } : {}),
    onMessage,
  });
  return { send, rx, group, port };
}

describe('multicast UDP sockets', () => {
  it('a group socket takes only its source, and polls bursts intact and in order, then goes back to read events', async () => {
    const got: number[] = [];
    const froms: Peer[] = [];
    let bad = 0;
    const { send, rx, group, port } = await groupPair((msg, from) => {
      const i = msg.readUInt32BE(0);
      if (!datagram(i).equals(msg)) bad++;
      got.push(i);
      froms.push(from);
    });
    const other = await multicastUdpNetwork().open({ bindAddress: IFACE, port: 0, iface: IFACE, onMessage: () => {} });
    try {
      const n = 2000;
      // Bursts much faster than one 'message' event per datagram: most are read by polling, and
      // the pauses between them (2 and 20 ms) let the socket go back to read events or not.
      for (let i = 0; i < n; i += 100) {
        for (let k = i; k < i + 100; k++) send.send([datagram(k)], port, group);
        other.send([datagram(1_000_000 + i)], port, group);
        await new Promise((r) => setTimeout(r, i % 500 === 0 ? 20 : 2));
      }
      const until = Date.now() + 5000;
      while (got.length < n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      expect(rx.polledReads).toBeGreaterThan(n / 2);
      // Long after the last burst: polling has stopped, and a lone datagram comes by its read event.
      await new Promise((r) => setTimeout(r, 50));
      const polled = rx.polledReads;
      send.send([datagram(n)], port, group);
      const until2 = Date.now() + 5000;
      while (got.length <= n && Date.now() < until2) await new Promise((r) => setTimeout(r, 5));
      expect(rx.polledReads).toBe(polled);
      expect(bad).toBe(0);
      expect(got).toEqual(Array.from({ length: n + 1 }, (_, i) => i));
      for (const f of froms) expect(f).toEqual(send.local);
    } finally {
      rx.close();
      send.close();
      other.close();
    }
  });

  it('polls at most maxDrainBytes per event-loop turn, so timers and other sockets get theirs', async () => {
    const maxDrainBytes = 8000;
    let got = 0;
    let bytes = 0;
    let atNextTurn = -1;
    const { send, rx, group, port } = await groupPair(
      (msg) => {
        bytes += msg.length;
        if (got++ === 0) setImmediate(() => (atNextTurn = bytes));
      },
      { maxDrainBytes },
    );
    try {
      const n = 400; // 1.6 MB in datagrams of 100 to 8,100 bytes
      for (let i = 0; i < n; i++) send.send([datagram(i)], port, group); // all queued before the receiver's turn
      const until = Date.now() + 5000;
      while (got < n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      expect(got).toBe(n);
      // One turn: the 'message' event that starts polling (datagram 0, 100 bytes), then one
      // poll's budget, which the last read of it may pass by less than a datagram.
      expect(atNextTurn).toBeGreaterThan(100 + maxDrainBytes / 2);
      expect(atNextTurn).toBeLessThan(100 + maxDrainBytes + 8100);
    } finally {
      rx.close();
      send.close();
    }
  });

  it('stops reading at close, also in the middle of a polled burst', async () => {
    let got = 0;
    let afterClose = 0;
    let closed = false;
    const { send, rx, group, port } = await groupPair(() => {
      if (closed) afterClose++;
      if (++got === 50) {
        rx.close();
        closed = true;
      }
    });
    try {
      for (let i = 0; i < 300; i++) send.send([datagram(i)], port, group);
      await new Promise((r) => setTimeout(r, 100));
      expect(got).toBe(50);
      expect(afterClose).toBe(0);
      expect(rx.polledReads).toBeGreaterThan(0);
    } finally {
      rx.close();
      send.close();
    }
  });

  it('readQueued hands over at once what the host received and the socket has not read', async () => {
    const got: number[] = [];
    const { send, rx, group, port } = await groupPair((msg) => got.push(msg.readUInt32BE(0)));
    try {
      for (let i = 0; i < 100; i++) send.send([datagram(i)], port, group);
      // Let the kernel queue them without giving the event loop a turn (no read event, no poll).
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
      expect(got).toEqual([]);
      expect(rx.readQueued!()).toBe(100);
      expect(got).toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(rx.readQueued!()).toBe(0);
      await new Promise((r) => setTimeout(r, 20));
      expect(got.length).toBe(100);
    } finally {
      rx.close();
      send.close();
    }
    expect(rx.readQueued!()).toBe(0);
  });
});

describe.skipIf(offloadReason !== null && process.env.CI !== 'true')('multicast UDP sockets with UDP offloads', () => {
  it.runIf(offloadReason !== null)('has its prerequisites (CI)', () => {
    throw new Error(`UDP offload tests cannot run under CI: ${offloadReason}`);
  });

  it.skipIf(offloadReason !== null)('segments a send into datagrams of the segment size; a coalescing socket reads them at once, another one by one', async () => {
    const SEG = 8248;
    // 6 full segments and a shorter last one, as the sender batches a group's tail.
    const batch = Array.from({ length: 7 }, (_, i) => {
      const b = Buffer.alloc(i < 6 ? SEG : 4000, i + 1);
      b.writeUInt32BE(i, 0);
      return b;
    });
    for (const coalesce of [true, false]) {
      const reads: Buffer[] = [];
      const { send, rx, group, port } = await groupPair((msg) => reads.push(Buffer.from(msg)), { segmentBytes: SEG, coalesce });
      try {
        expect(send.segmentBytes).toBe(SEG);
        expect(send.maxSegments).toBe(7);
        expect(send.offloadNote).toBeNull();
        expect(rx.offloadNote).toBeNull();
        send.send(batch, port, group);
        // A datagram no longer than the segment goes as it is.
        send.send([batch[6]!], port, group);
        const until = Date.now() + 5000;
        const want = Buffer.concat([...batch, batch[6]!]);
        while (Buffer.concat(reads).length < want.length && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
        expect(Buffer.concat(reads)).toEqual(want);
        expect(reads.map((r) => r.length)).toEqual(coalesce ? [want.length - 4000, 4000] : [...batch.map((b) => b.length), 4000]);
        expect(send.sendErrors).toBe(0);
      } finally {
        rx.close();
        send.close();
      }
    }
  });

  it.skipIf(offloadReason !== null)('turns segmentation off for good after a send fails with it on, and says so', async () => {
    const reads: number[] = [];
    const { send, rx, group, port } = await groupPair((msg) => reads.push(msg.length), { segmentBytes: 1000 });
    try {
      expect(send.segmentBytes).toBe(1000);
      // 70 segments: more than the kernel takes in one send (EINVAL), and more than 64 KiB.
      send.send([Buffer.alloc(70_000)], port, group);
      const until = Date.now() + 5000;
      while (send.completed < send.issued && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(send.sendErrors).toBe(1);
      expect(send.segmentBytes).toBe(0);
      expect(send.maxSegments).toBe(1);
      expect(send.offloadNote).toMatch(/^a send failed with segmentation on \(.+\): one datagram per send since$/);
      // From then on a send is one datagram, however long.
      send.send([Buffer.alloc(3000)], port, group);
      while (reads.length < 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(reads).toEqual([3000]);
    } finally {
      rx.close();
      send.close();
    }
  });
});
