/**
 * Terminal progress for an evacuation: one bar per phase, and one per VM while converging.
 * Without a TTY (CI, pipes) it prints one line per finished phase instead.
 */
import cliProgress from 'cli-progress';
import type { EvacuationEvent } from '../coordinator/events.js';

export interface ProgressView {
  onEvent(e: EvacuationEvent): void;
  stop(): void;
}

export function createProgressView(stream: NodeJS.WriteStream = process.stderr): ProgressView {
  if (!stream.isTTY) return lineView(stream);
  const multi = new cliProgress.MultiBar(
    {
      stream,
      clearOnComplete: false,
      hideCursor: true,
      format: ' {label} |{bar}| {percentage}% {value}/{total} {unit} {detail}',
      barsize: 28,
      autopadding: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const label = (s: string): string => s.padEnd(18).slice(0, 18);
  return {
    onEvent(e) {
      if (e.type === 'progress') {
        const key = e.key === 'all' ? e.phase : `${e.phase}:${e.key}`;
        let bar = bars.get(key);
        const scale = e.unit === 'bytes' ? 1 / (1024 * 1024) : 1;
        const unit = e.unit === 'bytes' ? 'MiB' : e.unit;
        if (!bar) {
          bar = multi.create(Math.max(1, Math.round(e.total * scale)), 0, { label: label(e.key === 'all' ? e.phase : `${e.phase} ${e.key}`), unit, detail: '' });
          bars.set(key, bar);
        }
        bar.setTotal(Math.max(1, Math.round(e.total * scale)));
        bar.update(Math.min(Math.round(e.done * scale), Math.round(e.total * scale)));
      } else if (e.type === 'vm') {
        const bar = bars.get(`converge:${e.vm}`);
        bar?.update({ detail: e.state + (e.target ? ` -> ${e.target}` : '') });
      } else if (e.type === 'phase' && e.state !== 'start') {
        multi.log(`${e.phase}: ${e.state === 'skipped' ? 'skipped' : `done in ${(e.ms ?? 0).toFixed(0)} ms`}${e.detail ? ` (${e.detail})` : ''}\n`);
      }
    },
    stop() {
      multi.stop();
    },
  };
}

function lineView(stream: NodeJS.WriteStream): ProgressView {
  return {
    onEvent(e) {
      if (e.type === 'phase' && e.state !== 'start')
        stream.write(`${e.phase}: ${e.state === 'skipped' ? 'skipped' : `done in ${(e.ms ?? 0).toFixed(0)} ms`}${e.detail ? ` (${e.detail})` : ''}\n`);
      else if (e.type === 'vm' && (e.state === 'failed' || e.state === 'verified' || e.state === 'unverified'))
        stream.write(`  vm ${e.vm}: ${e.state}${e.target ? ` on ${e.target}` : ''}${e.detail ? ` (${e.detail})` : ''}\n`);
    },
    stop() {},
  };
}
