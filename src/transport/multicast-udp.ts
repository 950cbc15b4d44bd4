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
 * Offloads (udp-offload.ts), where OpenOptions asks for them: segmented sends (UDP GSO) on the
 * sender's socket, turned off for good if a send fails with them on; coalesced reads (UDP GRO) on
 * group sockets, split by the receiver.
 * Polling needs the socket's descriptor and libuv handle, which dgram keeps in its internal
 * state; when they are not found (another Node version), every datagram takes the 'message' path.
 */
import dgram from 'node:dgram';
import { readSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { lookup as dnsLookup, type LookupOneOptions } from 'node:dns';
import { ErrorCode, VmsError } from '../errors.js';
import { DEFAULT_RECV_BUFFER, type OpenOptions, type Peer, type ScatterNetwork, type ScatterSocket } from './scatter-transport.js';
import { enableCoalescing, maxSegmentsOf, setSegmentation } from './udp-offload.js';

export interface MulticastUdpOptions {
  /**
   * The only source of datagrams on group sockets (the scatter sender's control socket).
   * Group sockets are connected to it; without it, no filter and no polling.
   */
  source?: Peer;
  /**
   * Bytes read per poll at most (at least one read), so timers and other sockets get their turn:
   * default 2 MiB, 256 datagrams of 8 KiB, whether they come one per read or coalesced 7 per read
   * (counted in reads, a poll of coalesced reads ran 160-250 ms on the scatter bench's topology).
   */
  maxDrainBytes?: number;
}

/** Largest UDP payload. */
const MAX_DATAGRAM = 65536;

/** IP literals resolve at once (dgram then sends synchronously); names go to dns.lookup. */
function literalLookup(hostname: string, _options: LookupOneOptions, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  if (isIPv4(hostname)) callback(null, hostname, 4);
  else dnsLookup(hostname, { family: 4 }, callback);
}

const NO_DESCRIPTOR = "dgram's socket descriptor was not found (another Node version?)";

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
  const maxDrainBytes = opts.maxDrainBytes ?? 2 * 1024 * 1024;
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
        let recvBufferBytes = 0;
        // Segmentation (UDP GSO, udp-offload.ts), set once bound.
        let segmentBytes = 0;
        let offloadNote: string | null = null;
        // One shared callback (no closure per datagram): sends complete in order.
        const onSent = (err: Error | null): void => {
          completed++;
          if (!err) return;
          sendErrors++;
          // With UDP_SEGMENT set the kernel refuses every send, segmented or not, where it cannot
          // segment (EIO: a device without checksum offload; EINVAL: a path MTU below the
          // segment). Sends that failed are lost like datagrams on the wire; later ones go one
          // datagram per send.
          if (segmentBytes > 0) {
            segmentBytes = 0;
            const h = socketHandle(sock);
            if (h) setSegmentation(h.fd, 0);
            offloadNote = `a send failed with segmentation on (${err.message}): one datagram per send since`;
          }
        };
        // Polling (see the top of the file): `handle` is set once the group socket is connected.
        let handle: UdpHandle | null = null;
        let fd = -1;
        let polling = false;
        let emptyPolls = 0;
        let polledReads = 0;
        let pollTimer: NodeJS.Timeout | null = null;
        let pollNow: NodeJS.Immediate | null = null;
        /** Read queued datagrams until `maxBytes` or `maxReads` are read, handing them over; the bytes read. */
        const readQueue = (maxBytes: number, maxReads = Infinity): number => {
          const buf = scratch!;
          let bytes = 0;
          let reads = 0;
          for (; bytes < maxBytes && reads < maxReads && !closed; reads++) {
            let n: number;
            try {
              n = readSync(fd, buf, 0, MAX_DATAGRAM, null);
            } catch {
              break; // EAGAIN: the queue is empty (any other error: libuv reports it once events are back on)
            }
            polledReads++;
            bytes += Math.max(1, n);
            if (view === null || view.length !== n) view = buf.subarray(0, n);
            o.onMessage(view, source!);
          }
          return bytes;
        };
        const poll = (): void => {
          pollTimer = null;
          pollNow = null;
          const got = readQueue(maxDrainBytes);
          if (closed) return;
          if (got > 0) emptyPolls = 0;
          else if (++emptyPolls >= POLL_IDLE_TICKS) {
            polling = false;
            handle!.recvStart();
            return;
          }
          // A full budget: more is queued, read it after this turn's other events.
          if (got >= maxDrainBytes) pollNow = setImmediate(poll);
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
            get segmentBytes() {
              return segmentBytes;
            },
            get maxSegments() {
              return maxSegmentsOf(segmentBytes);
            },
            get offloadNote() {
              return offloadNote;
            },
            recvBufferBytes,
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
              if (!handle || closed) return 0;
              const before = polledReads;
              readQueue(Infinity, READ_QUEUED_MAX);
              return polledReads - before;
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
            recvBufferBytes = sock.getRecvBufferSize();
            if (o.join) sock.addMembership(o.join, o.iface);
          } catch (err) {
            sock.close();
            reject(new VmsError(ErrorCode.SCATTER, `cannot set up multicast on ${o.iface}${o.join ? ` for group ${o.join}` : ''}: ${(err as Error).message}`, { cause: err }));
            return;
          }
          if (o.segmentBytes) {
            const h = socketHandle(sock);
            offloadNote = h ? setSegmentation(h.fd, o.segmentBytes) : NO_DESCRIPTOR;
            if (offloadNote === null) segmentBytes = o.segmentBytes;
          }
          if (o.coalesce) {
            const h = socketHandle(sock);
            offloadNote = h ? enableCoalescing(h.fd) : NO_DESCRIPTOR;
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
