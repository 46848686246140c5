/**
 * `IdleTracker`: the idle-shutdown clock. Services report the work they begin and end; once
 * nothing has been active for `idleTimeout` ms the tracker's `signal` aborts, and the runner
 * shuts down. Pure logic over an injectable clock: no socket, no global timer it does not own.
 *
 * What counts as activity is the services' call; berth's own report (see docs/idle-shutdown.md):
 * a TCP connection whose handler runs, an HTTP request in flight, an upgraded (WebSocket)
 * connection, a task in flight. An idle keep-alive socket, or a task client with no task, is
 * not: it would let one parked client keep an idle service alive forever.
 */

import { channel } from 'node:diagnostics_channel';
import { IdleTimeoutError } from '../errors.js';
import {
  optional,
  rejectUnknownKeys,
  validateFunction,
  validateInteger,
  validateObject,
} from '../options.js';

/** The time source an `IdleTracker` runs on. Tests pass a fake one; the default is real time. */
export interface IdleClock {
  /** Milliseconds on a monotonic scale. */
  now(): number;
  /** Calls `fn` once after `ms`; the handle goes to `clearTimer`. Must not keep a process alive. */
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

/** Real time: `performance.now()` and unref'd timers (the tracker only watches). */
export const systemClock: IdleClock = Object.freeze({
  now: () => performance.now(),
  setTimer: (fn: () => void, ms: number) => setTimeout(fn, ms).unref(),
  clearTimer: (handle: unknown) => clearTimeout(handle as NodeJS.Timeout),
});

export interface IdleTrackerOptions {
  /** How long (ms) nothing may be active before `signal` aborts. Counted from construction. */
  idleTimeout: number;
  /** @default systemClock */
  clock?: IdleClock;
}

/** One piece of work: end it once (later calls do nothing), or let `using` end it. */
export interface Activity extends Disposable {
  end(): void;
}

/** A plain snapshot. */
export interface IdleStats {
  /** Activities begun and not yet ended. */
  active: number;
  /** Activities begun since construction. */
  total: number;
  /** ms since the last activity ended (or construction); 0 while something is active. */
  idleFor: number;
  /** The signal has aborted. */
  timedOut: boolean;
}

export const IDLE_TRACKER_DEFAULTS = Object.freeze({
  clock: systemClock,
});

const KNOWN_OPTIONS = ['idleTimeout', 'clock'] as const;
/** The longest delay a Node timer honours. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const timeoutChannel = channel('berth:idle:timeout');

export class IdleTracker implements Disposable {
  readonly idleTimeout: number;
  readonly #clock: IdleClock;
  readonly #controller = new AbortController();
  #active = 0;
  #total = 0;
  /** When the tracker last became idle (construction counts). */
  #idleSince: number;
  #timer: unknown;
  #armed = false;
  #closed = false;

  constructor(options: IdleTrackerOptions) {
    validateObject(options, 'IdleTracker options');
    rejectUnknownKeys(options, 'IdleTracker', KNOWN_OPTIONS);
    this.idleTimeout = validateInteger(options.idleTimeout, 'idleTimeout', {
      min: 1,
      max: MAX_TIMER_MS,
      unit: '(ms)',
    });
    this.#clock = optional(options.clock, IDLE_TRACKER_DEFAULTS.clock, (v) => {
      const clock = validateObject<IdleClock>(v, 'clock');
      validateFunction(clock.now, 'clock.now');
      validateFunction(clock.setTimer, 'clock.setTimer');
      validateFunction(clock.clearTimer, 'clock.clearTimer');
      return clock;
    });
    // A service that never gets a connection still has a lifetime.
    this.#idleSince = this.#clock.now();
    this.#arm(this.idleTimeout);
  }

  /**
   * Aborts, with an `IdleTimeoutError` as its reason, once nothing has been active for
   * `idleTimeout` ms. It never aborts while something is active, nor after `close()`.
   */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Activities begun and not yet ended. */
  get active(): number {
    return this.#active;
  }

  get stats(): IdleStats {
    return {
      active: this.#active,
      total: this.#total,
      idleFor: this.#active > 0 ? 0 : Math.max(0, this.#clock.now() - this.#idleSince),
      timedOut: this.#controller.signal.aborted,
    };
  }

  /**
   * Reports that work began. End it with the returned activity's `end()` (idempotent), or
   * `using _ = tracker.begin()` in a handler. Work that begins after the signal aborted still
   * counts (the drain that follows serves it); the signal stays aborted.
   *
   * @example
   * handler: async (conn) => {
   *   using _ = tracker.begin();
   *   await pipeline(conn, conn);
   * }
   */
  begin(): Activity {
    this.#active++;
    this.#total++;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      this.#end();
    };
    return { end, [Symbol.dispose]: end };
  }

  /** Counts `work` as activity until it settles; returns a promise of the same outcome. */
  track<T>(work: PromiseLike<T>): Promise<T> {
    const activity = this.begin();
    return Promise.resolve(work).finally(() => activity.end());
  }

  /** Stops the clock: the signal will not abort from now on. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#disarm();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #end(): void {
    this.#active--;
    if (this.#active > 0) return;
    this.#idleSince = this.#clock.now();
    // Lazily: a timer already set (from an earlier idle spell) re-arms itself for the rest.
    if (!this.#armed) this.#arm(this.idleTimeout);
  }

  #arm(ms: number): void {
    if (this.#closed || this.#controller.signal.aborted) return;
    this.#armed = true;
    this.#timer = this.#clock.setTimer(() => this.#fire(), ms);
  }

  #disarm(): void {
    if (this.#armed) this.#clock.clearTimer(this.#timer);
    this.#armed = false;
  }

  #fire(): void {
    this.#armed = false;
    // Busy now: the end of the last activity sets the timer again.
    if (this.#active > 0 || this.#closed) return;
    const idleFor = this.#clock.now() - this.#idleSince;
    const remaining = this.idleTimeout - idleFor;
    if (remaining > 0) {
      this.#arm(Math.ceil(remaining));
      return;
    }
    this.#controller.abort(new IdleTimeoutError(this.idleTimeout));
    if (timeoutChannel.hasSubscribers) {
      timeoutChannel.publish({ idleTimeout: this.idleTimeout, idleFor, total: this.#total });
    }
  }
}
