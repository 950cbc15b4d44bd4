/**
 * The scatter's UDP sockets on loopback (no root): a group socket connected to its source takes
 * only that source's datagrams, and the drained path (read(2) into one reused buffer) hands over
 * every queued datagram intact and in order.
 */
import { describe, expect, it } from 'vitest';
import { multicastUdpNetwork } from '../../src/transport/multicast-udp.js';
import type { Peer } from '../../src/transport/scatter-transport.js';

const IFACE = '127.0.0.1';

function datagram(i: number): Buffer {
  const b = Buffer.alloc(100 + ((i * 977) % 8000));
  b.writeUInt32BE(i, 0);
  for (let k = 4; k < b.length; k++) b[k] = (i + k) & 0xff;
  return b;
}

describe('multicast UDP sockets', () => {
  it('a group socket takes only its source, and drains bursts intact and in order', async () => {
    const group = `239.193.${Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
    const port = 20000 + Math.floor(Math.random() * 20000);
    const send = await multicastUdpNetwork().open({ bindAddress: IFACE, port: 0, iface: IFACE, onMessage: () => {} });
    const other = await multicastUdpNetwork().open({ bindAddress: IFACE, port: 0, iface: IFACE, onMessage: () => {} });
    const got: number[] = [];
    const froms: Peer[] = [];
    let bad = 0;
    const rx = await multicastUdpNetwork({ source: send.local }).open({
      bindAddress: group,
      port,
      iface: IFACE,
      reuseAddr: true,
      join: group,
      onMessage: (msg, from) => {
        const i = msg.readUInt32BE(0);
        if (!datagram(i).equals(msg)) bad++;
        got.push(i);
        froms.push(from);
      },
    });
    try {
      const n = 2000;
      // Bursts much faster than one 'message' event per datagram: most are read by the drain.
      for (let i = 0; i < n; i += 100) {
        for (let k = i; k < i + 100; k++) send.send([datagram(k)], port, group);
        other.send([datagram(1_000_000 + i)], port, group);
        await new Promise((r) => setTimeout(r, 2));
      }
      const until = Date.now() + 5000;
      while (got.length < n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      expect(bad).toBe(0);
      expect(got).toEqual(Array.from({ length: n }, (_, i) => i));
      for (const f of froms) expect(f).toEqual(send.local);
    } finally {
      rx.close();
      send.close();
      other.close();
    }
  });

  it('drains at most maxDrain datagrams per event-loop turn, so timers and other sockets get theirs', async () => {
    const group = `239.193.${Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
    const port = 20000 + Math.floor(Math.random() * 20000);
    const send = await multicastUdpNetwork().open({ bindAddress: IFACE, port: 0, iface: IFACE, onMessage: () => {} });
    const maxDrain = 8;
    let got = 0;
    let atNextTurn = -1;
    const rx = await multicastUdpNetwork({ source: send.local, maxDrain }).open({
      bindAddress: group,
      port,
      iface: IFACE,
      reuseAddr: true,
      join: group,
      onMessage: () => {
        if (got++ === 0) setImmediate(() => (atNextTurn = got));
      },
    });
    try {
      const n = 400;
      for (let i = 0; i < n; i++) send.send([datagram(i)], port, group); // all queued before the receiver's turn
      const until = Date.now() + 5000;
      while (got < n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      expect(got).toBe(n);
      // One turn: libuv delivers at most 32 'message' events per poll, plus one drain budget.
      // (With a budget per event instead, one turn took 32 x (1 + 8) = 288 here.)
      expect(atNextTurn).toBeGreaterThan(0);
      expect(atNextTurn).toBeLessThanOrEqual(32 + maxDrain);
    } finally {
      rx.close();
      send.close();
    }
  });
});
