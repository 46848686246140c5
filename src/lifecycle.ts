/**
 * The lifecycle every berth service shares: its readiness state, `close()` and `destroy()` that
 * are idempotent and join each other, the `closed` promise, and the caller's `AbortSignal`.
 * Services supply only what differs: how to drain, how to destroy, and when they are idle.
 */

import { addAbortListener } from 'node:events';
import type { ServiceState } from './service.js';

interface Deferred {
  promise: Promise<void>;
  settle(error: Error | undefined): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Observed or not, an outcome must never surface as an unhandled rejection.
  promise.catch(() => {});
  return { promise, settle: (error) => (error ? reject(error) : resolve()) };
}

export class Lifecycle {
  #state: ServiceState = 'starting';
  readonly #isIdle: () => boolean;
  /** Decided once: undefined until close or destroy has an outcome. */
  #decided: { error: Error | undefined } | undefined;
  /** Settles when the outcome is decided (bounded by the close deadline). */
  readonly #outcome = deferred();
  /** Settles when the outcome is decided and the service is idle (every handler returned). */
  readonly #closed = deferred();
  #closedSettled = false;
  #closing: Promise<void> | undefined;
  readonly #waiters = new Set<() => void>();
  #signalListener: Disposable | undefined;

  /**
   * @param isIdle true when no work is live (no handler running, no connection open).
   * @param signal the caller's signal; when it aborts, `onAbort` runs (normally `close()`).
   */
  constructor(isIdle: () => boolean, signal?: AbortSignal, onAbort?: () => unknown) {
    this.#isIdle = isIdle;
    if (signal?.aborted) {
      this.#decide(undefined);
    } else if (signal && onAbort) {
      this.#signalListener = addAbortListener(signal, () => void onAbort());
    }
  }

  get state(): ServiceState {
    return this.#state;
  }

  get closed(): Promise<void> {
    return this.#closed.promise;
  }

  /** `start()` finished: the service takes traffic. */
  ready(): void {
    if (this.#state === 'starting') this.#state = 'ready';
  }

  /** `start()` failed: the service is closed with that error. */
  fail(error: Error): void {
    this.#decide(error);
  }

  /**
   * The graceful close. `drain` runs once; it returns the error to settle with (a timeout),
   * or undefined when everything finished. Later calls join the first; after a destroy they
   * settle with the destroy's outcome.
   */
  close(drain: () => Promise<Error | undefined>): Promise<void> {
    if (this.#closing) return this.#closing;
    if (!this.#decided) {
      this.#state = 'draining';
      drain().then(
        (error) => this.#decide(error),
        (error: Error) => this.#decide(error),
      );
    }
    this.#closing = this.#outcome.promise;
    return this.#closing;
  }

  /**
   * The abrupt stop. `run` destroys what is live and returns the error to settle with. A destroy
   * after the outcome is decided does nothing.
   */
  destroy(run: () => Error | undefined): Promise<void> {
    if (!this.#decided) {
      this.#state = 'closed';
      this.#decide(run());
    }
    return Promise.resolve();
  }

  /**
   * Resolves true once `isIdle()` holds, or false after `timeout` ms. Re-checked on each
   * `poke()`; a decided outcome (a destroy meanwhile) ends the wait too.
   */
  waitUntilIdle(timeout: number): Promise<boolean> {
    if (this.#isIdle()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = () => {
        if (this.#isIdle()) finish(true);
        else if (this.#decided) finish(false);
      };
      const finish = (idle: boolean) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(idle);
      };
      const timer = setTimeout(() => finish(false), timeout);
      this.#waiters.add(check);
    });
  }

  /** Something that `isIdle()` reads has changed. */
  poke(): void {
    for (const check of this.#waiters) check();
    this.#settleClosedIfIdle();
  }

  #decide(error: Error | undefined): void {
    if (this.#decided) return;
    this.#decided = { error };
    this.#state = 'closed';
    this.#signalListener?.[Symbol.dispose]();
    this.#outcome.settle(error);
    for (const check of this.#waiters) check();
    this.#settleClosedIfIdle();
  }

  #settleClosedIfIdle(): void {
    if (this.#decided && !this.#closedSettled && this.#isIdle()) {
      this.#closedSettled = true;
      this.#closed.settle(this.#decided.error);
    }
  }
}
