/**
 * The QEMU guests a source agent migrates (agent.fleet "qemu"): listed in the file agent.guests
 * names, each a running QEMU that someone else started, reached through a QMP socket reserved for
 * vmscatter and scanned through its shared RAM file. The agent never starts, stops or kills them:
 * it migrates them (QemuSourceVm) and, when a migration fails, makes sure they run on.
 */
import { readFileSync, statSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import type { Logger } from 'pino';
import { Value } from 'typebox/value';
import { QemuGuestsFile, type QemuMachine } from '../coordinator/schemas.js';
import { ErrorCode, VmsError } from '../errors.js';
import { attachGuest, QEMU_DEFAULTS, TCG_RAM_PAD_KIB, type LaunchOptions } from '../qemu/launcher.js';
import type { QmpEvent } from '../qemu/qmp.js';
import { QemuSourceVm, type QemuMigrationParams } from './qemu-agents.js';
import type { HostedVm } from './source-host.js';

export interface QemuGuestSpec {
  readonly name: string;
  readonly qmp: string;
  readonly ramFile: string;
  readonly machine: QemuMachine;
}

/** Read and check a guests file; errors name the file and every problem. */
export function readGuestsFile(path: string): QemuGuestSpec[] {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new VmsError(ErrorCode.CONFIG, `cannot read the QEMU guests file ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!Value.Check(QemuGuestsFile, data)) {
    const problems = [...Value.Errors(QemuGuestsFile, data)].slice(0, 10).map((e) => `${e.instancePath || '/'} ${e.message}`);
    throw new VmsError(ErrorCode.CONFIG, `QEMU guests file ${path} is invalid: ${problems.join('; ')}`);
  }
  const seen = new Set<string>();
  for (const g of data.guests) {
    if (seen.has(g.name)) throw new VmsError(ErrorCode.CONFIG, `QEMU guests file ${path} lists ${g.name} twice`);
    seen.add(g.name);
  }
  return data.guests;
}

/** The launch options a target starts this machine with. */
export function machineLaunch(m: QemuMachine): LaunchOptions {
  return { ...m };
}

/** Bytes of RAM QEMU gives this machine (and so the size of its RAM file). */
export function machineRamBytes(m: QemuMachine): number {
  const accel = m.accel ?? QEMU_DEFAULTS.accel;
  return m.memoryMiB * 1024 * 1024 + (accel === 'tcg' ? TCG_RAM_PAD_KIB * 1024 : 0);
}

/** A QEMU guest as a source agent hosts it. */
export interface AdoptedGuest {
  readonly spec: QemuGuestSpec;
  readonly vm: QemuSourceVm;
  readonly hosted: HostedVm;
  /** Disconnect (the guest runs on) and close its RAM file. */
  close(): void;
}

/** Whether something listens on a unix socket: 'absent' (no file), 'refused' (a stale file), or 'listening'. */
function probeUnix(path: string): Promise<'absent' | 'refused' | 'listening'> {
  return new Promise((resolve) => {
    const s = netConnect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve('listening');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ENOENT' ? 'absent' : e.code === 'ECONNREFUSED' ? 'refused' : 'listening'));
  });
}

export interface AdoptOptions {
  /** Where migration sockets go (a directory of this agent). */
  readonly workDir: string;
  readonly params?: QemuMigrationParams;
  /**
   * Quit a guest's source QEMU once the guest runs on its target (default true): a paused copy
   * holds the guest's memory on the host being emptied, and resuming it would run the guest twice.
   */
  readonly quitMigrated?: boolean;
  readonly logger?: Logger;
}

/**
 * Attach to every guest of the file that runs. A guest whose QMP socket is absent or refuses
 * (its QEMU is not running: quit after an earlier migration, say) is skipped with a warning. A
 * running one must answer on its QMP socket and have a RAM file of exactly the size its machine
 * gives it (else the target would start a different machine). On any other failure, the guests
 * attached so far are let go and nothing else is touched.
 */
export async function adoptGuests(specs: readonly QemuGuestSpec[], o: AdoptOptions): Promise<AdoptedGuest[]> {
  const out: AdoptedGuest[] = [];
  try {
    for (const spec of specs) {
      const probe = await probeUnix(spec.qmp);
      if (probe !== 'listening') {
        o.logger?.warn({ vm: spec.name, qmp: spec.qmp }, `guest ${spec.name} is not running (QMP socket ${probe === 'absent' ? 'absent' : 'refuses connections'}): skipped`);
        continue;
      }
      out.push(await adoptGuest(spec, o));
    }
  } catch (e) {
    for (const a of out) a.close();
    throw e;
  }
  return out;
}

async function adoptGuest(spec: QemuGuestSpec, o: AdoptOptions): Promise<AdoptedGuest> {
  const want = machineRamBytes(spec.machine);
  let size: number;
  try {
    size = statSync(spec.ramFile).size;
  } catch (e) {
    throw new VmsError(ErrorCode.CONFIG, `guest ${spec.name}: cannot read its RAM file ${spec.ramFile}: ${(e as Error).message}`, { cause: e });
  }
  if (size !== want) {
    throw new VmsError(
      ErrorCode.CONFIG,
      `guest ${spec.name}: RAM file ${spec.ramFile} has ${size} bytes, but its machine (memoryMiB ${spec.machine.memoryMiB}, accel ${spec.machine.accel ?? QEMU_DEFAULTS.accel}) gives ${want}; ` +
        'the machine must describe the running guest exactly (TCG guests have 8 KiB more, see docs/operations.md)',
    );
  }
  const guest = await attachGuest({ name: spec.name, qmpPath: spec.qmp, ramPath: spec.ramFile, workDir: o.workDir, memoryMiB: spec.machine.memoryMiB });
  let state: 'running' | 'stopped' | 'unknown';
  try {
    state = (await guest.status()) === 'running' ? 'running' : 'stopped';
  } catch (e) {
    await guest.dispose();
    throw new VmsError(ErrorCode.QEMU, `guest ${spec.name}: query-status over ${spec.qmp} failed: ${(e as Error).message}`, { cause: e });
  }
  const onEvent = (ev: QmpEvent): void => {
    if (ev.event === 'RESUME') state = 'running';
    else if (ev.event === 'STOP' || ev.event === 'SHUTDOWN') state = 'stopped';
  };
  const onClose = (): void => {
    state = 'unknown';
  };
  guest.qmp.on('event', onEvent);
  guest.qmp.on('close', onClose);
  const vm = new QemuSourceVm(guest, o.params ?? {}, o.logger);
  const onMigrated = async (target: string): Promise<void> => {
    vm.close(); // the RAM file: an open descriptor would keep its memory after its owner removes it
    if (o.quitMigrated === false) return;
    // The guest runs on its target: the copy here must never run again.
    await guest.qmp.execute('quit').catch(() => {}); // QEMU may close the connection before it answers
    o.logger?.info({ vm: spec.name, target }, `source QEMU of ${spec.name} told to quit: the guest runs on ${target}`);
  };
  return {
    spec,
    vm,
    hosted: { vm, runState: () => state, machine: spec.machine, onMigrated },
    close() {
      guest.qmp.off('event', onEvent);
      guest.qmp.off('close', onClose);
      vm.close();
      void guest.dispose();
    },
  };
}
