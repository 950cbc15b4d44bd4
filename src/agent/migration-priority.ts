/**
 * Which of a job's concurrent migrations may write its pre-copy now. Plain QEMU migrations
 * started side by side share the source's CPU and link blindly; vmscatter orders them, with two
 * rules (each can be switched off):
 *
 * - Stop-and-copy first: while one VM is stopped (its downtime running), the other VMs hold, so
 *   the stopped VM's last pages, device state and the target's rebuild have the source's CPU and
 *   link to themselves.
 * - Converge in turn: a VM still in pre-copy when its pass TURN_AFTER_PASSES + 1 starts gets the
 *   job's bandwidth until it has moved; VMs found so earlier go first, all the others hold.
 *   Pre-copy converges when a VM's bandwidth outruns its dirty rate; with N VMs side by side each
 *   has 1/N of it, so a VM that would converge alone can iterate until its round limit (or
 *   forever, on QEMU), resending its working set every pass. A turn is not work-conserving (a VM
 *   alone is bounded by its own max-bandwidth, which may leave the link or cores idle), but the
 *   first pass, the bulk of every VM (and, with the scatter, mostly references), always goes side
 *   by side; the turns order only the passes over dirtied pages. Measured in one bench run each
 *   (README "Dirtying VMs with parallel migrations"), turns from the second pass against from the
 *   fourth: 8 VMs writing 82 Mbit/s each on a 250 Mbit/s link, 885 MB in 29.6 s against 1221 MB in
 *   40.3 s (plain QEMU one VM at a time: 1127 MB, 36.3 s); the default scenario on that link,
 *   497 MB in 17.0 s against 545 MB in 18.6 s; CPU-bound, 8 VMs dirtying 20,000 pages/s, 1534 MB
 *   in 9.5 s against 2219-2414 MB in 9.4-12.2 s.
 *
 * The hold is applied where each VM's stream enters its converge channel (ConvergeSource), so it
 * reaches the VM's pre-copy as ordinary backpressure: a simulated VM waits for its write, QEMU
 * finds its migration socket full. There is no dependency between VMs' channels (a content is
 * referenced only once its own target holds it), so holding one never blocks another. A held
 * write waits at most `maxHoldMs`, whatever happens to the VMs ahead of it.
 *
 * What the other VMs already have in flight still goes ahead of the VM whose turn it is, so with
 * a priority the evacuation also gives each VM only its share of a job-wide in-flight budget
 * (JOB_WINDOW_BYTES) instead of a full converge window, and the VM going ahead (ahead()) a full
 * window: it is alone on the link, and a share-sized window would leave it waiting on the target's
 * acknowledgements.
 */
/**
 * Passes a VM may take side by side with the others: the first, over every page. From its second
 * pass on (pages its guest dirtied meanwhile), a VM still in pre-copy waits for its turn. Turns
 * from the fourth pass (the first and two over dirtied pages, where pre-copy that keeps up has
 * converged) let VMs resend their working sets side by side twice more: up to 1.4x the bytes and
 * time of turns from the second (measurements above).
 */
export const TURN_AFTER_PASSES = 1;

export interface MigrationPriorityOptions {
  /** Default true. */
  stopCopyFirst?: boolean;
  /** Default true. */
  convergeInTurn?: boolean;
  /** Longest a single write is held (ms), default 2000. */
  maxHoldMs?: number;
}

/** Holds counted by their reason, for reports. */
export interface HoldStats {
  /** Writes held. */
  holds: number;
  /** Total time they were held (ms). */
  heldMs: number;
}

interface Waiter {
  vm: string;
  reason: 'stopCopyFirst' | 'convergeInTurn';
  t0: number;
  resolve: () => void;
}

export class MigrationPriority {
  readonly stopCopyFirst: boolean;
  readonly convergeInTurn: boolean;
  readonly stats: { stopCopyFirst: HoldStats; convergeInTurn: HoldStats } = {
    stopCopyFirst: { holds: 0, heldMs: 0 },
    convergeInTurn: { holds: 0, heldMs: 0 },
  };
  private readonly maxHoldMs: number;
  private readonly stopped = new Set<string>();
  /** VMs that did not converge side by side, in the order they were found: the first one's turn. */
  private readonly turns: string[] = [];
  private waiters: Waiter[] = [];
  private releaseTimer: NodeJS.Timeout | null = null;

  constructor(opts: MigrationPriorityOptions = {}) {
    this.stopCopyFirst = opts.stopCopyFirst ?? true;
    this.convergeInTurn = opts.convergeInTurn ?? true;
    this.maxHoldMs = opts.maxHoldMs ?? 2000;
  }

  /** VM `vm`'s pre-copy pass `n` has started (1: the first, over every page). */
  pass(vm: string, n: number): void {
    if (n <= TURN_AFTER_PASSES || this.turns.includes(vm)) return;
    this.turns.push(vm);
    this.wake();
  }

  /** VM `vm` has just stopped: its downtime runs until leave(vm). */
  enter(vm: string): void {
    this.stopped.add(vm);
    this.wake();
  }

  /** VM `vm`'s migration ended (resumed on its target, or failed). */
  leave(vm: string): void {
    const i = this.turns.indexOf(vm);
    if (i >= 0) this.turns.splice(i, 1);
    this.stopped.delete(vm);
    this.wake();
  }

  /**
   * A write of VM `vm`'s stream: null when it may go now, else a promise that resolves when it
   * may, or after maxHoldMs.
   */
  turn(vm: string): Promise<void> | null {
    const reason = this.holdReason(vm);
    if (!reason) return null;
    this.stats[reason].holds++;
    return new Promise<void>((resolve) => {
      this.waiters.push({ vm, reason, t0: performance.now(), resolve });
      this.releaseTimer ??= setTimeout(() => this.release(() => true), this.maxHoldMs);
    });
  }

  /** Whether `vm` goes ahead of the others now: it is stopped, or it is its turn to converge. */
  ahead(vm: string): boolean {
    if (this.stopCopyFirst && this.stopped.size > 0) return this.stopped.has(vm);
    return this.convergeInTurn && (this.turns[0] === vm || this.stopped.has(vm));
  }

  private holdReason(vm: string): Waiter['reason'] | null {
    if (this.stopCopyFirst && this.stopped.size > 0) return this.stopped.has(vm) ? null : 'stopCopyFirst';
    if (this.convergeInTurn && this.turns.length > 0 && this.turns[0] !== vm && !this.stopped.has(vm)) return 'convergeInTurn';
    return null;
  }

  /** Lets go every held write that may go now. */
  private wake(): void {
    if (this.waiters.length > 0) this.release((w) => this.holdReason(w.vm) === null);
  }

  private release(which: (w: Waiter) => boolean): void {
    const go = this.waiters.filter(which);
    this.waiters = this.waiters.filter((w) => !go.includes(w));
    if (this.waiters.length === 0 && this.releaseTimer) {
      clearTimeout(this.releaseTimer);
      this.releaseTimer = null;
    }
    const now = performance.now();
    for (const w of go) {
      this.stats[w.reason].heldMs += now - w.t0;
      w.resolve();
    }
  }
}
