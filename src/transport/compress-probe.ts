/**
 * Whether the converge source tries LZ4 on a DATA frame. lz4-napi goes through 256 KiB it cannot
 * compress (random or encrypted pages) in ~0.9 ms, 285 MB/s on one of this machine's cores,
 * against ~19 us for text; but through 4 KiB of the same in 3.5 us (measured 2026-12-03). So a
 * frame is first sampled: SAMPLES slices of SAMPLE_BYTES (its start, middle and end) are
 * compressed, and the frame is tried whole only if one of them shrinks by MIN_SAVING. A stretch
 * of incompressible guest memory then costs ~10 us per frame instead of a core, and a frame with
 * compressible content anywhere in its samples is compressed; there is no state to carry from
 * frame to frame (a stateful back-off lost the next frames' savings when the content changed).
 */
import { compressSync } from 'lz4-napi';

/** A sample (or a frame) must shrink by this fraction to count as compressible. */
export const MIN_SAVING = 0.05;
export const SAMPLE_BYTES = 4096;
export const SAMPLES = 3;

/** Whether `frame` is worth an LZ4 try (frames of up to SAMPLES x SAMPLE_BYTES always are). */
export function worthCompressing(frame: Buffer): boolean {
  if (frame.length <= SAMPLES * SAMPLE_BYTES) return true;
  const last = frame.length - SAMPLE_BYTES;
  for (let i = 0; i < SAMPLES; i++) {
    const at = Math.floor((last * i) / (SAMPLES - 1));
    if (compressSync(frame.subarray(at, at + SAMPLE_BYTES)).length <= SAMPLE_BYTES * (1 - MIN_SAVING)) return true;
  }
  return false;
}
