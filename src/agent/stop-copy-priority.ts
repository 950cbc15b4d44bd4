/**
 * Stop-and-copy first: while one VM of a job is stopped (its downtime running), the job's other
 * VMs hold their pre-copy, so the stopped VM's last pages, device state and the target's rebuild
 * have the source's CPU and link to themselves. Plain QEMU migrations started side by side
 * cannot do this: each stream competes with the others' pre-copy during its downtime.
 *
 * The hold is applied where each VM's stream enters its converge channel (ConvergeSource), so it
 * reaches the VM's pre-copy as ordinary backpressure: a simulated VM waits for its write, QEMU
 * finds its migration socket full. There is no dependency between VMs' channels (a content is
 * referenced only once its own target holds it), so holding one never blocks another. A hold
 * lasts at most `maxHoldMs`, whatever happens to the stopped VM.
 *
 * What the other VMs already have in flight still goes ahead of the stopped VM's bytes, so with
 * the priority the evacuation also gives each VM only its share of a job-wide in-flight budget
 * (JOB_WINDOW_BYTES) instead of a full converge window.
 */
export class StopCopyPriority {
  private readonly stopped = new Set<string>();
  /** Held writes, per VM. */
  private waiters = new Map<string, Array<() => void>>();
  private releaseTimer: NodeJS.Timeout | null = null;
  /** Times a pre-copy write was held, and the total time held (ms), for reports. */
  holds = 0;
  heldMs = 0;

  constructor(private readonly maxHoldMs = 2000) {}

  /**
   * VM `vm` has stopped: its downtime runs until leave(vm). Its own writes held so far go now
   * (its round may have ended with them still queued).
   */
  enter(vm: string): void {
    this.stopped.add(vm);
    const mine = this.waiters.get(vm);
    this.waiters.delete(vm);
    if (this.waiters.size === 0 && this.releaseTimer) {
      clearTimeout(this.releaseTimer);
      this.releaseTimer = null;
    }
    for (const f of mine ?? []) f();
  }

  /** VM `vm`'s migration ended (resumed on its target, or failed). */
  leave(vm: string): void {
    if (this.stopped.delete(vm) && this.stopped.size === 0) this.release();
  }

  /**
   * A write of VM `vm`'s stream: null when it may go now (no VM is stopped, or `vm` is one of
   * them), else a promise that resolves when no VM is stopped any more, or after maxHoldMs.
   */
  turn(vm: string): Promise<void> | null {
    if (this.stopped.size === 0 || this.stopped.has(vm)) return null;
    this.holds++;
    const t0 = performance.now();
    return new Promise<void>((resolve) => {
      let list = this.waiters.get(vm);
      if (!list) this.waiters.set(vm, (list = []));
      list.push(() => {
        this.heldMs += performance.now() - t0;
        resolve();
      });
      this.releaseTimer ??= setTimeout(() => this.release(), this.maxHoldMs);
    });
  }

  private release(): void {
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.releaseTimer = null;
    const all = [...this.waiters.values()];
    this.waiters = new Map();
    for (const list of all) for (const f of list) f();
  }
}
