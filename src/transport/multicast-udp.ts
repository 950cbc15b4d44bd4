/**
 * Real UDP for the multicast scatter (the in-memory network for tests is in scatter-transport.ts),
 * with a light per-datagram path, because on a small host the scatter is bound by CPU per datagram:
 *
 * - Sends: addresses are IP literals, so the socket resolves them synchronously instead of
 *   through dns.lookup, which defers every send() to the next tick.
 * - Receives on a group socket: the socket is connected to the one source it expects, so the
 *   kernel drops datagrams from anyone else (the check the receiver makes on `from` without
 *   authentication). A burst is read by polling, as a NIC driver does (NAPI): its first datagram
 *   arrives by the 'message' event; then the socket's read events are switched off and a timer
 *   reads the queue with read(2) into one reused buffer every POLL_MS, until POLL_IDLE_TICKS
 *   polls in a row found it empty, when read events come back on. Per datagram that skips the
 *   wake-up (an event-loop turn each, when datagrams come one by one as a paced sender sends
 *   them), libuv's 64 KiB allocation, a second allocation and copy, the address string and the
 *   event emission. Measured with `bench scatter`'s topology (4 receivers, MTU 9000, 2026-12-03):
 *   receiver CPU per 8 KiB datagram 15-18 -> 10-13 us. The queue waits at most a poll period
 *   (plus timer lateness) longer: the receive buffer (recvBufferBytes, 4 MiB) holds 10 ms at
 *   3 Gbit/s.
 *
 * The buffer handed to `onMessage` on the polled path is reused for the next datagram, and so is
 * the view of it while datagrams keep their length, as DATA datagrams do (no Buffer object per
 * datagram: receivers' user CPU -10 to -12% in three interleaved pairs of 512 MiB scatters,
 * 2026-12-04): a consumer must copy what it keeps (the scatter receiver does: ContentStore.put
 * copies) and not hold on to the Buffer itself.
 * Polling needs the socket's descriptor and libuv handle, which dgram keeps in its internal
 * state; when they are not found (another Node version), every datagram takes the 'message' path.
 */
import dgram from 'node:dgram';
import { readSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { lookup as dnsLookup, type LookupOneOptions } from 'node:dns';
import { ErrorCode, VmsError } from '../errors.js';
import { DEFAULT_RECV_BUFFER, type OpenOptions, type Peer, type ScatterNetwork, type ScatterSocket } from './scatter-transport.js';

export interface MulticastUdpOptions {
  /**
   * The only source of datagrams on group sockets (the scatter sender's control socket).
   * Group sockets are connected to it; without it, no filter and no polling.
   */
  source?: Peer;
  /** Datagrams read per poll at most, so timers and other sockets get their turn (default 256). */
  maxDrain?: number;
}

/** Largest UDP payload. */
const MAX_DATAGRAM = 65536;

/** IP literals resolve at once (dgram then sends synchronously); names go to dns.lookup. */
function literalLookup(hostname: string, _options: LookupOneOptions, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  if (isIPv4(hostname)) callback(null, hostname, 4);
  else dnsLookup(hostname, { family: 4 }, callback);
}

/** Period of the reads from a group socket that is polled (ms). */
export const POLL_MS = 1;
/** Polls in a row that found the queue empty, after which the socket goes back to read events. */
export const POLL_IDLE_TICKS = 2;
/** Most datagrams readQueued() reads (a full 8 MiB receive buffer holds about 500 of 8 KiB). */
const READ_QUEUED_MAX = 4096;

interface UdpHandle {
  fd: number;
  recvStart(): number;
  recvStop(): number;
}

/** A bound dgram socket's libuv handle (descriptor, read events on and off), or null when dgram's internal state is not where expected. */
function socketHandle(sock: dgram.Socket): UdpHandle | null {
  const state = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol');
  const h = state ? (sock as unknown as Record<symbol, { handle?: Partial<UdpHandle> } | undefined>)[state]?.handle : undefined;
  if (!h || typeof h.fd !== 'number' || h.fd < 0 || typeof h.recvStart !== 'function' || typeof h.recvStop !== 'function') return null;
  return h as UdpHandle;
}

export function multicastUdpNetwork(opts: MulticastUdpOptions = {}): ScatterNetwork {
  const maxDrain = opts.maxDrain ?? 256;
  return {
    open(o: OpenOptions): Promise<ScatterSocket> {
      return new Promise((resolve, reject) => {
        const sock = dgram.createSocket({ type: 'udp4', reuseAddr: o.reuseAddr ?? false, lookup: literalLookup });
        let issued = 0;
        let completed = 0;
        let sendErrors = 0;
        let closed = false;
        let connecting = false;
        let scratch: Buffer | null = null;
        /** scratch.subarray(0, length), handed over again while datagrams keep that length. */
        let view: Buffer | null = null;
        const source = o.join !== undefined && opts.source ? { address: opts.source.address, port: opts.source.port } : null;
        // One shared callback (no closure per datagram): sends complete in order.
        const onSent = (err: Error | null): void => {
          completed++;
          if (err) sendErrors++;
        };
        // Polling (see the top of the file): `handle` is set once the group socket is connected.
        let handle: UdpHandle | null = null;
        let fd = -1;
        let polling = false;
        let emptyPolls = 0;
        let polledReads = 0;
        let pollTimer: NodeJS.Timeout | null = null;
        let pollNow: NodeJS.Immediate | null = null;
        /** Read up to `max` queued datagrams and hand them over; the number read. */
        const readQueue = (max: number): number => {
          const buf = scratch!;
          let got = 0;
          for (; got < max && !closed; got++) {
            let n: number;
            try {
              n = readSync(fd, buf, 0, MAX_DATAGRAM, null);
            } catch {
              break; // EAGAIN: the queue is empty (any other error: libuv reports it once events are back on)
            }
            polledReads++;
            if (view === null || view.length !== n) view = buf.subarray(0, n);
            o.onMessage(view, source!);
          }
          return got;
        };
        const poll = (): void => {
          pollTimer = null;
          pollNow = null;
          const got = readQueue(maxDrain);
          if (closed) return;
          if (got > 0) emptyPolls = 0;
          else if (++emptyPolls >= POLL_IDLE_TICKS) {
            polling = false;
            handle!.recvStart();
            return;
          }
          // A full budget: more is queued, read it after this turn's other events.
          if (got >= maxDrain) pollNow = setImmediate(poll);
          else pollTimer = setTimeout(poll, POLL_MS);
        };
        const onBindError = (err: Error): void => {
          sock.close();
          reject(new VmsError(ErrorCode.SCATTER, `cannot bind UDP ${o.bindAddress}:${o.port} (iface ${o.iface}): ${err.message}`, { cause: err }));
        };
        sock.once('error', onBindError);
        sock.on('message', (msg, rinfo) => {
          o.onMessage(msg, source ?? { address: rinfo.address, port: rinfo.port });
          if (handle && !polling && !closed) {
            polling = true;
            emptyPolls = 0;
            handle.recvStop();
            poll();
          }
        });
        const ready = (): void => {
          const a = sock.address();
          resolve({
            send(parts, port, address) {
              if (closed) return;
              issued++;
              try {
                sock.send(parts as Buffer[], port, address, onSent);
              } catch {
                completed++;
                sendErrors++;
              }
            },
            get issued() {
              return issued;
            },
            get completed() {
              return completed;
            },
            get sendErrors() {
              return sendErrors;
            },
            get polledReads() {
              return polledReads;
            },
            readQueued() {
              return handle && !closed ? readQueue(READ_QUEUED_MAX) : 0;
            },
            local: { address: a.address, port: a.port },
            close() {
              if (closed) return;
              closed = true;
              if (pollTimer) clearTimeout(pollTimer);
              if (pollNow) clearImmediate(pollNow);
              try {
                sock.close();
              } catch {
                /* already closed */
              }
            },
          });
        };
        sock.bind(o.port, o.bindAddress, () => {
          sock.off('error', onBindError);
          // A socket error after bind (e.g. ICMP unreachable on unicast control) must not crash the process.
          sock.on('error', (err) => {
            if (connecting) {
              connecting = false;
              sock.close();
              reject(new VmsError(ErrorCode.SCATTER, `cannot connect group socket ${o.bindAddress}:${o.port} to its source ${source?.address}:${source?.port}: ${err.message}`, { cause: err }));
              return;
            }
            sendErrors++;
          });
          try {
            sock.setMulticastInterface(o.iface);
            sock.setMulticastTTL(1);
            sock.setMulticastLoopback(true);
            sock.setRecvBufferSize(o.recvBufferBytes ?? DEFAULT_RECV_BUFFER);
            if (o.join) sock.addMembership(o.join, o.iface);
          } catch (err) {
            sock.close();
            reject(new VmsError(ErrorCode.SCATTER, `cannot set up multicast on ${o.iface}${o.join ? ` for group ${o.join}` : ''}: ${(err as Error).message}`, { cause: err }));
            return;
          }
          if (!source) {
            ready();
            return;
          }
          connecting = true;
          sock.connect(source.port, source.address, () => {
            connecting = false;
            handle = socketHandle(sock);
            if (handle) {
              fd = handle.fd;
              scratch = Buffer.allocUnsafe(MAX_DATAGRAM);
            }
            ready();
          });
        });
      });
    },
  };
}
