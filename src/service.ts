/**
 * The one contract every berth server implements, and that a user's own object can implement to
 * run under the service runner. The runner knows nothing else about a service.
 */

/**
 * Where a service is in its life:
 * - `starting`: constructed or `start()` under way; not ready for traffic.
 * - `ready`: listening and serving.
 * - `draining`: a graceful close has begun; work in hand finishes, new work is refused.
 * - `closed`: stopped; nothing is listening.
 */
export type ServiceState = 'starting' | 'ready' | 'draining' | 'closed';

export interface CloseOptions {
  /**
   * How long (ms) the graceful close may take before whatever is still live is destroyed.
   * Each service documents its own default.
   */
  timeout?: number;
}

/** Where a service reports the work it begins and ends (an `IdleTracker` is one). */
export interface ActivitySink {
  /** Work began; call `end()` on the result when it ends (once; later calls do nothing). */
  begin(): { end(): void };
}

export interface Service {
  /** Unique within a runner; used as the `service` label of every metric. */
  readonly name: string;
  /**
   * Readiness. Optional for a user's own service: the runner then derives it from the calls it
   * made (`starting` until `start()` resolves, `draining` once `close()` was called).
   */
  readonly state?: ServiceState;
  /** A plain snapshot of counters, safe to `JSON.stringify`. */
  readonly stats: object;
  /**
   * Settles once the service has stopped for any reason and its work has ended: fulfils when it
   * stopped cleanly, rejects with the reason when it failed, was destroyed with live work, or ran
   * out of time closing. Optional; when present the runner watches it, so a service that stops
   * on its own while running ends the whole group.
   */
  readonly closed?: Promise<void>;
  /** Resolves once the service is listening and ready; rejects (with nothing left open) if not. */
  start(): Promise<void>;
  /**
   * Graceful: stop taking new work, let work in hand finish, destroy what remains after
   * `timeout`. Resolves when stopped cleanly; rejects (e.g. `ShutdownTimeoutError`) when live
   * work had to be destroyed. Idempotent: a second call joins the first.
   */
  close(options?: CloseOptions): Promise<void>;
  /** Abrupt: stop now, destroy everything live. Idempotent. */
  destroy(error?: Error): Promise<void>;
  /**
   * Optional: stop accepting new connections now, and nothing more; `close()` follows. The
   * runner calls it on every service just before closing them, so all listeners stop together
   * (a cluster needs every worker to stop accepting before any tells its clients to leave).
   */
  stopAccepting?(): void;
  /**
   * Optional: report each piece of work (a connection whose handler runs, a request in flight,
   * a task) to `sink` from now on. The runner calls it when `idleTimeout` is set.
   */
  trackActivity?(sink: ActivitySink): void;
}

/** True when `value` has the members the runner needs to run it. */
export function isService(value: unknown): value is Service {
  if (typeof value !== 'object' || value === null) return false;
  const s = value as Record<string, unknown>;
  return (
    typeof s.name === 'string' &&
    typeof s.start === 'function' &&
    typeof s.close === 'function' &&
    typeof s.destroy === 'function' &&
    typeof s.stats === 'object' &&
    s.stats !== null
  );
}
