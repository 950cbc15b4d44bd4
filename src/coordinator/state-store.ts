/**
 * Where the coordinator keeps job state across restarts: one JSON file per job in
 * `<stateDir>/jobs/`, written to a temporary file and renamed (a crash leaves the old version or
 * the new one, never half of one). An empty stateDir keeps everything in memory.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ErrorCode, VmsError } from '../errors.js';

export interface StateStore {
  /** Human-readable location, for logs. */
  readonly where: string;
  load(): unknown[];
  save(id: string, doc: unknown): void;
  remove(id: string): void;
}

export class MemoryStateStore implements StateStore {
  readonly where = 'memory (not persisted)';
  private readonly docs = new Map<string, string>();
  load(): unknown[] {
    return [...this.docs.values()].map((s) => JSON.parse(s) as unknown);
  }
  save(id: string, doc: unknown): void {
    this.docs.set(id, JSON.stringify(doc));
  }
  remove(id: string): void {
    this.docs.delete(id);
  }
}

const SAFE_ID = /^[A-Za-z0-9_-]{1,64}$/;

export class FileStateStore implements StateStore {
  readonly where: string;
  private readonly dir: string;

  constructor(
    stateDir: string,
    private readonly log: Logger,
  ) {
    this.dir = join(stateDir, 'jobs');
    this.where = this.dir;
    try {
      mkdirSync(this.dir, { recursive: true });
    } catch (e) {
      throw new VmsError(ErrorCode.CONFIG, `cannot create the state directory ${this.dir}: ${(e as Error).message}; set coordinator.stateDir (VMSCATTER_STATE_DIR) to a writable directory`, { cause: e });
    }
  }

  load(): unknown[] {
    const out: unknown[] = [];
    for (const f of readdirSync(this.dir)) {
      if (!f.endsWith('.json')) continue;
      try {
        out.push(JSON.parse(readFileSync(join(this.dir, f), 'utf8')));
      } catch (e) {
        this.log.warn({ file: f, err: (e as Error).message }, 'skipping an unreadable job state file');
      }
    }
    return out;
  }

  save(id: string, doc: unknown): void {
    if (!SAFE_ID.test(id)) throw new VmsError(ErrorCode.CONFIG, `job id ${JSON.stringify(id)} is not a safe file name`);
    const file = join(this.dir, `${id}.json`);
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(doc));
    renameSync(tmp, file);
  }

  remove(id: string): void {
    if (!SAFE_ID.test(id)) return;
    rmSync(join(this.dir, `${id}.json`), { force: true });
  }
}

export function createStateStore(stateDir: string, log: Logger): StateStore {
  return stateDir ? new FileStateStore(stateDir, log) : new MemoryStateStore();
}
