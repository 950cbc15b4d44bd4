/**
 * `vmscatter qemu-command GUESTS.json`: the QEMU command line that starts each guest of a guests
 * file as the machine it describes, with its RAM in the listed file and vmscatter's QMP socket.
 * A target agent starts the same machine (plus -incoming defer), so a guest started this way
 * is one a source agent (`--fleet qemu:GUESTS.json`) can migrate.
 */
import { dirname, join } from 'node:path';
import { readGuestsFile, machineLaunch } from '../agent/qemu-guests.js';
import { ErrorCode, VmsError } from '../errors.js';
import { qemuArgs, QEMU_DEFAULTS } from '../qemu/launcher.js';

/** POSIX shell quoting, only where needed. */
function shq(s: string): string {
  return /^[A-Za-z0-9_./:=,+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function qemuCommandLines(file: string, only?: string): string[] {
  const guests = readGuestsFile(file).filter((g) => only === undefined || g.name === only);
  if (guests.length === 0) throw new VmsError(ErrorCode.CONFIG, `guests file ${file} has no guest named ${only}`);
  return guests.map((g) => {
    const base = join(dirname(g.qmp), g.name);
    const args = qemuArgs({ ...machineLaunch(g.machine), name: g.name }, { serialPath: `${base}.serial`, qmpPath: g.qmp, pidPath: `${base}.pid`, ramPath: g.ramFile });
    return [g.machine.qemuBinary ?? QEMU_DEFAULTS.binary, ...args].map(shq).join(' ');
  });
}

export function qemuCommand(file: string, opts: { name?: string }): void {
  for (const line of qemuCommandLines(file, opts.name)) process.stdout.write(`${line}\n`);
}
