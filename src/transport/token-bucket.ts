/**
 * Byte token bucket pacing the scatter sender, with a rate that backs off under NACK pressure
 * and climbs back towards the configured ceiling (AIMD, evaluated per interval).
 *
 * Why pace at all: dgram's send() gives no backpressure and veth sends never block, so an
 * unpaced sender only finds out about overload when receivers' socket buffers overflow.
 */
export interface TokenBucketOptions {
  /** Ceiling, bytes per second. */
  rateBytesPerSec: number;
  /** Bucket depth in bytes (how much may leave in one burst after idling). */
  burstBytes: number;
  /** Starting rate, as a fraction of the ceiling (default 0.5); it grows 15% per clean interval until the first loss. */
  initialFraction?: number;
  /** Lowest rate backoff may reach, as a fraction of the ceiling (default 0.05). */
  floorFraction?: number;
  /**
   * Loss fraction above which the rate backs off (default 0.03): over an interval, the worst
   * receiver's newly NACKed bytes / bytes sent.
   */
  backoffLoss?: number;
  /** Loss fraction below which the rate grows again (default 0.005). */
  recoverLoss?: number;
  /** Multiplicative decrease factor (default 0.75). */
  decrease?: number;
  /** Growth per loss-free interval, as a fraction of the current rate (default 0.04, at least 0.5% of the ceiling). */
  increase?: number;
  /** Evaluation interval, ms (default 50). */
  intervalMs?: number;
}

export class TokenBucket {
  readonly ceiling: number;
  private rate: number;
  private readonly burst: number;
  private tokens: number;
  private last: number;
  private readonly floor: number;
  private readonly backoffLoss: number;
  private readonly recoverLoss: number;
  private readonly decrease: number;
  private readonly increase: number;
  private readonly intervalMs: number;
  private intervalStart: number;
  private sentInInterval = 0;
  private readonly nackedInInterval = new Map<number, number>();
  /** Times the rate was reduced. */
  backoffs = 0;
  /** When the rate was last reduced (-Infinity: never). */
  lastBackoffAt = -Infinity;
  /** No growth before this time (after a cut, let the loss reports of the old rate arrive). */
  private holdUntil = -Infinity;

  constructor(o: TokenBucketOptions, now: number = performance.now()) {
    if (!(o.rateBytesPerSec > 0)) throw new RangeError(`rate must be > 0 bytes/s, got ${o.rateBytesPerSec}`);
    if (!(o.burstBytes > 0)) throw new RangeError(`burst must be > 0 bytes, got ${o.burstBytes}`);
    this.ceiling = o.rateBytesPerSec;
    this.rate = o.rateBytesPerSec * (o.initialFraction ?? 0.5);
    this.burst = o.burstBytes;
    this.tokens = o.burstBytes;
    this.last = now;
    this.floor = o.rateBytesPerSec * (o.floorFraction ?? 0.05);
    this.backoffLoss = o.backoffLoss ?? 0.03;
    this.recoverLoss = o.recoverLoss ?? 0.005;
    this.decrease = o.decrease ?? 0.75;
    this.increase = o.increase ?? 0.04;
    this.intervalMs = o.intervalMs ?? 50;
    this.intervalStart = now;
  }

  /** Current rate, bytes per second. */
  get currentRate(): number {
    return this.rate;
  }

  /** Take `bytes` if available now. */
  take(bytes: number, now: number): boolean {
    this.refill(now);
    if (this.tokens < bytes) return false;
    this.tokens -= bytes;
    this.sentInInterval += bytes;
    return true;
  }

  /** Ms until `bytes` tokens are available (0 when they are). */
  waitMs(bytes: number, now: number): number {
    this.refill(now);
    return this.tokens >= bytes ? 0 : ((bytes - this.tokens) / this.rate) * 1000;
  }

  /** Report `bytes` of datagrams that receiver `who` NACKed for the first time (congestion signal). */
  nacked(bytes: number, now: number, who = 0): void {
    this.nackedInInterval.set(who, (this.nackedInInterval.get(who) ?? 0) + bytes);
    this.evaluate(now);
  }

  /** Run the AIMD step if an interval has passed. Called from take/nacked. */
  evaluate(now: number): void {
    if (now - this.intervalStart < this.intervalMs) return;
    const sent = this.sentInInterval;
    if (sent > 0) {
      let worst = 0;
      for (const b of this.nackedInInterval.values()) if (b > worst) worst = b;
      const loss = worst / sent;
      if (loss > this.backoffLoss) {
        this.rate = Math.max(this.floor, this.rate * this.decrease);
        this.backoffs++;
        this.lastBackoffAt = now;
        this.holdUntil = now + 2 * this.intervalMs;
      } else if (loss < this.recoverLoss && now >= this.holdUntil) {
        // Slow start until the first loss, then a gentler climb.
        const growth = this.backoffs === 0 ? 0.15 : this.increase;
        this.rate = Math.min(this.ceiling, this.rate + Math.max(this.rate * growth, this.ceiling * 0.005));
      }
    }
    this.intervalStart = now;
    this.sentInInterval = 0;
    this.nackedInInterval.clear();
  }

  private refill(now: number): void {
    const dt = now - this.last;
    if (dt > 0) {
      this.tokens = Math.min(this.burst, this.tokens + (dt / 1000) * this.rate);
      this.last = now;
    }
    if (now - this.intervalStart >= this.intervalMs) this.evaluate(now);
  }
}
