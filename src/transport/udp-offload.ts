/**
 * Linux UDP offloads on a dgram socket's descriptor, set with the optional package `sockopt`
 * (dgram exposes neither option). It compiles a small N-API addon at install (g++ and Node's
 * headers): the prebuilt binaries its 2.0.1 tarball ships are all macOS ones, so on Linux it
 * builds, and where it cannot the install leaves it out and the scatter runs without offloads.
 *
 * - Segmentation (UDP_SEGMENT, "UDP GSO", Linux 4.18): one send of up to 64 KiB leaves as
 *   datagrams of the segment size, all but the last exactly that long. The stack handles the
 *   batch as one packet as far as it can (through veth and a bridge, to the receiving socket),
 *   and splits it where it must (a device without the offload, a qdisc that rate-limits).
 * - Coalescing (UDP_GRO, Linux 5.0): such a batch reaches a socket that allows it as one read,
 *   instead of being split for it. The reader splits it by the datagrams' own lengths (dgram
 *   does not pass the control message that carries the segment size).
 *
 * Measured by a script on a topology like the scatter bench's (a sender and 4 receivers in
 * namespaces on a bridge, MTU 9000), 65,000 datagrams of 8,216 bytes, 2026-12-05: sender system
 * CPU 0.88 -> 0.22 s and each receiver's CPU 0.49 -> 0.16 s with both, against one datagram per
 * system call.
 */
import { createRequire } from 'node:module';

const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const UDP_GRO = 104;

/** Largest UDP payload of one send, segmented or not (65,535 less the IPv4 and UDP headers). */
export const MAX_UDP_PAYLOAD = 65_507;
/** Segments per send the kernel accepts (UDP_MAX_SEGMENTS: 64 since 4.18, more on newer kernels). */
export const MAX_SEGMENTS = 64;

type SetSockOpt = (fd: number, level: number, name: number, value: number) => void;

let loaded: SetSockOpt | string | undefined;

/** setsockopt for an integer option, or why it is not available here. */
function setsockopt(): SetSockOpt | string {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    loaded = `UDP offloads are Linux socket options (this is ${process.platform})`;
    return loaded;
  }
  try {
    const m = createRequire(import.meta.url)('sockopt') as { setsockopt(sock: { _handle: { fd: number } }, level: number, name: number, value: number): void };
    // sockopt reads nothing of the socket it is given but `_handle.fd`. dgram's own `_handle` is
    // deprecated (DEP0112, a warning on every process), so it gets the descriptor this way.
    loaded = (fd, level, name, value) => m.setsockopt({ _handle: { fd } }, level, name, value);
  } catch (err) {
    loaded = `the optional package sockopt is not there or did not build (it compiles at install, with g++ and Node's headers): ${(err as Error).message.split('\n')[0]}`;
  }
  return loaded;
}

function set(fd: number, name: number, value: number, what: string): string | null {
  const fn = setsockopt();
  if (typeof fn === 'string') return fn;
  try {
    fn(fd, SOL_UDP, name, value);
    return null;
  } catch (err) {
    return `${what} refused by the kernel (${(err as Error).message})`;
  }
}

/** Null when the offloads can be asked of the kernel here, else why not (tests skip on it). */
export function offloadUnavailableReason(): string | null {
  const fn = setsockopt();
  return typeof fn === 'string' ? fn : null;
}

/** Segment sends on `fd` into datagrams of `bytes` (0: off). Null when done, else why not. */
export function setSegmentation(fd: number, bytes: number): string | null {
  return set(fd, UDP_SEGMENT, bytes, 'UDP_SEGMENT');
}

/** Let reads on `fd` return coalesced datagrams. Null when done, else why not. */
export function enableCoalescing(fd: number): string | null {
  return set(fd, UDP_GRO, 1, 'UDP_GRO');
}

/** Segments of `segmentBytes` one segmented send may carry. */
export function maxSegmentsOf(segmentBytes: number): number {
  return segmentBytes > 0 ? Math.min(MAX_SEGMENTS, Math.floor(MAX_UDP_PAYLOAD / segmentBytes)) : 1;
}
