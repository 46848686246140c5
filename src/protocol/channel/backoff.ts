/**
 * Reconnect backoff: exponential, capped, with jitter, as gRPC's connection backoff. Pure: the
 * random source is given, so a test can pin it.
 */

/** How long to wait between attempts to connect. Durations in ms. */
export interface BackoffOptions {
  /** The first wait. @default 100 */
  initial?: number;
  /** The longest wait. @default 10000 (10 s) */
  max?: number;
  /** Each wait is the previous one times this (before jitter). @default 1.6 */
  multiplier?: number;
  /** Each wait is moved by up to this fraction of itself, either way, at random. @default 0.2 */
  jitter?: number;
}

export const BACKOFF_DEFAULTS = Object.freeze({
  initial: 100, // ms
  max: 10_000, // 10 s
  multiplier: 1.6, // gRPC's
  jitter: 0.2, // ±20 %, gRPC's
});

/** The waits between one connection's attempts; `reset()` after a success. */
export class Backoff {
  readonly #options: Required<BackoffOptions>;
  readonly #random: () => number;
  #current: number;

  constructor(options: Required<BackoffOptions>, random: () => number = Math.random) {
    this.#options = options;
    this.#random = random;
    this.#current = options.initial;
  }

  /** The wait before the next attempt (ms); the one after it is longer, up to `max`. */
  next(): number {
    const { max, multiplier, jitter } = this.#options;
    const base = this.#current;
    this.#current = Math.min(max, base * multiplier);
    const spread = 1 + jitter * (2 * this.#random() - 1);
    return Math.max(0, Math.round(Math.min(max, base) * spread));
  }

  /** Back to the first wait (the connection was made). */
  reset(): void {
    this.#current = this.#options.initial;
  }
}
