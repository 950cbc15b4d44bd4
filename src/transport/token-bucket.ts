/**
 * Byte token bucket pacing the scatter sender, with a rate that backs off under NACK pressure
 * and climbs back towards the configured ceiling (AIMD, evaluated per window of sent bytes).
 *
 * Why pace at all: dgram's send() gives no backpressure and veth sends never block, so an
 * unpaced sender only finds out about overload when receivers' socket buffers overflow.
 *
 * Loss is not always congestion: a lossy link drops a share of datagrams whatever the rate.
 * Overload drops what exceeds the bottleneck, a share that grows with the rate. So the rate
 * backs off only above 10% loss and grows below 5%, measured over windows of at least 8 MiB:
 * with 3% and 0.5% over 50 ms, 1% random loss on the receivers' links (the namespace
 * topology's random drops, 1 Gbit/s, 128 MiB to 4 receivers, 2026-12-05) drove the rate to its
 * floor (60-72 backoffs, 7.9-8.5 MB/s against 114 without loss): a 50 ms window held a few
 * dozen packets, one or two lost GSO batches (7 datagrams each) made 3% of it, by the binomial
 * odds the worst of 4 receivers crossed that in about a third of the windows, and at 1% the
 * rate never grew back.
 */
export interface TokenBucketOptions {
  /** Ceiling, bytes per second. */
  rateBytesPerSec: number;
  /** Bucket depth in bytes (how much may leave in one burst after idling). */
  burstBytes: number;
  /**
   * Starting rate, as a fraction of the ceiling (default 1); below 1 it grows 15% per clean
   * window until the first loss. It used to start at half, as receivers' capacity was unknown;
   * flow control (PROGRESS) now keeps the sender within what each receiver's buffer holds, and
   * the ceiling is the path's rate. The climb from half cost 1 Gbit/s scatters about 0.25 s
   * (256 MiB to 4 receivers in 3 interleaved pairs, 2026-12-05: 121.4-121.5 MB/s against
   * 118.4-118.6; on unlimited veths no difference: 280-318 against 295-314). A ceiling twice a
   * receiver link's rate costs more repairs at the start (9.3-9.8% against 6.0-8.0%, the same
   * 60-61 MB/s).
   */
  initialFraction?: number;
  /** Lowest rate backoff may reach, as a fraction of the ceiling (default 0.05). */
  floorFraction?: number;
  /**
   * Loss fraction above which the rate backs off (default 0.10): over a window, the worst
   * receiver's newly NACKed bytes / bytes sent.
   */
  backoffLoss?: number;
  /** Loss fraction below which the rate grows (default half of backoffLoss). */
  recoverLoss?: number;
  /** Multiplicative decrease factor (default 0.75). */
  decrease?: number;
  /** Growth per loss-free interval, as a fraction of the current rate (default 0.04, at least 0.5% of the ceiling). */
  increase?: number;
  /** A window lasts at least this long, ms (default 50)... */
  intervalMs?: number;
  /**
   * ...and until this many bytes were sent (default 8 MiB: about 1,000 datagrams of 8 KiB, or
   * 145 GSO batches), so that random loss of a few percent stays below backoffLoss...
   */
  windowBytes?: number;
  /**
   * ...or this long has passed (ms, default 1000). A window that ends this way with less than a
   * quarter of windowBytes sent (the sender was mostly idle or held) changes nothing. A window
   * without any NACK ends after intervalMs.
   */
  maxIntervalMs?: number;
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
  private readonly windowBytes: number;
  private readonly maxIntervalMs: number;
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
    this.rate = o.rateBytesPerSec * (o.initialFraction ?? 1);
    this.burst = o.burstBytes;
    this.tokens = o.burstBytes;
    this.last = now;
    this.floor = o.rateBytesPerSec * (o.floorFraction ?? 0.05);
    this.backoffLoss = o.backoffLoss ?? 0.1;
    this.recoverLoss = o.recoverLoss ?? this.backoffLoss / 2;
    this.decrease = o.decrease ?? 0.75;
    this.increase = o.increase ?? 0.04;
    this.intervalMs = o.intervalMs ?? 50;
    this.windowBytes = o.windowBytes ?? 8 * 1024 * 1024;
    this.maxIntervalMs = Math.max(this.intervalMs, o.maxIntervalMs ?? 1000);
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

  /** Run the AIMD step if a window has passed. Called from take/nacked. */
  evaluate(now: number): void {
    const elapsed = now - this.intervalStart;
    if (elapsed < this.intervalMs) return;
    const sent = this.sentInInterval;
    // A window without a single NACK needs no size to be believed: after a cut, the rate
    // climbs back at the pace of 50 ms windows.
    const clean = this.nackedInInterval.size === 0;
    if (!clean && sent < this.windowBytes && elapsed < this.maxIntervalMs) return;
    if (sent >= this.windowBytes / 4 || (clean && sent > 0)) {
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
    this.evaluate(now);
  }
}
