/**
 * A plain migration target host as its own process (bench strategies --netns, strategies (a)
 * and (b)): accepts plain QEMU-style streams on --listen HOST:PORT, rebuilds every VM, and
 * answers resume and digest per connection (bench/plain-migration.ts). Prints
 * "listening HOST:PORT" when ready; runs until SIGTERM or SIGINT.
 */
import { servePlainTargets } from './plain-migration.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const listen = arg('--listen') ?? '127.0.0.1:0';
const m = /^(.+):(\d+)$/.exec(listen);
if (!m) {
  process.stderr.write(`plain-target-main: --listen must be HOST:PORT, got "${listen}"\n`);
  process.exit(2);
}
const server = await servePlainTargets({ host: m[1]!, port: Number(m[2]), onError: (e) => process.stderr.write(`plain target: ${e.message}\n`) });
process.stdout.write(`listening ${server.host}:${server.port}\n`);
await new Promise<void>((resolve) => {
  process.once('SIGTERM', () => resolve());
  process.once('SIGINT', () => resolve());
});
await server.close();
