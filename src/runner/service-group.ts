/**
 * `ServiceGroup`: runs several services as one unit. It starts them all (closing the started
 * ones if one fails), runs until a signal, a service failure, the caller's `AbortSignal`, a
 * service that ends on its own, or `stop()`, then shuts down in stages under one deadline:
 * readiness goes to draining, `beforeShutdown` and `drainDelay` run, every service closes
 * concurrently under `shutdownTimeout`, the diagnostics server closes last, `afterClose` runs.
 *
 * This module is the edge: it is the one place in the library that listens to process signals,
 * and, on a second signal, exits the process (unless told not to).
 */

import { channel } from 'node:diagnostics_channel';
import { addAbortListener, EventEmitter } from 'node:events';
import { constants } from 'node:os';
import {
  DiagnosticsServer,
  type DiagnosticsServerOptions,
} from '../diagnostics/diagnostics-server.js';
import {
  HookTimeoutError,
  InvalidOptionError,
  ShutdownTimeoutError,
  StartFailedError,
} from '../errors.js';
import { IdleTracker } from '../idle/idle-tracker.js';
import {
  describe,
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateBoolean,
  validateDuration,
  validateFunction,
  validateInteger,
  validateObject,
} from '../options.js';
import { isService, type Service, type ServiceState } from '../service.js';
import { Notifier } from '../systemd/notify.js';

/** Why a group stopped. */
export type StopReason =
  /** A process signal (SIGINT, SIGTERM, SIGQUIT by default). */
  | 'signal'
  /** The caller's `AbortSignal` aborted. */
  | 'abort'
  /** `stop()` was called (the idle tracker calls it with `'idle'`). */
  | 'requested'
  | 'idle'
  /** A service stopped on its own with an error. */
  | 'failure'
  /** A service stopped on its own, cleanly (e.g. a single accepted connection ended). */
  | 'ended'
  /** A service failed to start; the others were closed. */
  | 'start-failed'
  /** A second signal forced the exit. */
  | 'forced';

export interface ServiceOutcome {
  name: string;
  /** Why its close was not clean: a timeout, a failure, a destroy. */
  error?: Error;
  stats: object;
}

export interface RunResult {
  reason: StopReason;
  /** The signal, when `reason` is `signal` or `forced`. */
  signal?: NodeJS.Signals;
  /** The failure that stopped the group, or the first service that did not close cleanly. */
  error?: Error;
  /** True when every service closed in time with nothing destroyed, and nothing failed. */
  clean: boolean;
  /** 0 clean; 1 a service failed or the deadline destroyed live work; 128 + n when forced. */
  exitCode: number;
  /** Milliseconds from the stop trigger to the end of shutdown. */
  duration: number;
  services: ServiceOutcome[];
  /** Hooks that threw or ran out of time; they do not change the exit code. */
  hookErrors: Error[];
}

export interface ShutdownInfo {
  reason: StopReason;
  signal?: NodeJS.Signals;
  error?: Error;
}

export interface ServiceGroupOptions {
  services: Service[];
  /**
   * The diagnostics server: options to make one (`{ port: 8081 }`), which then reports this
   * group's readiness and stats, or a service of your own. It stays up until every other
   * service has closed, so `/ready` reports the drain, and closes last.
   */
  diagnostics?: DiagnosticsServerOptions | Service;
  /** Signals that start the shutdown; a second one forces it. `false`: none. @default ['SIGINT', 'SIGTERM', 'SIGQUIT'] */
  signals?: NodeJS.Signals[] | false;
  /** The budget for closing every service, shared by all of them. @default 5000 (5 s, the seed's) */
  shutdownTimeout?: number;
  /**
   * After readiness flips to draining, keep serving this long before closing, so a load
   * balancer (Kubernetes endpoint removal) stops sending first. Applies to shutdowns from a
   * signal or the caller's AbortSignal. @default 0
   */
  drainDelay?: number;
  /** Runs after readiness flips, alongside `drainDelay`, bounded by `hookTimeout`. */
  beforeShutdown?: (info: ShutdownInfo) => unknown;
  /** Runs after every service has closed, bounded by `hookTimeout`. */
  afterClose?: (result: RunResult) => unknown;
  /** The bound on each hook. @default 5000 (5 s) */
  hookTimeout?: number;
  /** When it aborts, the group shuts down (reason `abort`). */
  signal?: AbortSignal;
  /**
   * On a second signal, after destroying every service: `false` resolves `run()` with reason
   * `forced` (the library never exits the process on its own); `true` exits at once with 128 + the
   * signal's number, as the `berth` CLI does, for a process that may be stuck past helping.
   * @default false
   */
  exitOnForce?: boolean;
  /**
   * Shut down (cleanly, reason `idle`) once no service has had anything active for this long
   * (ms), counted from `run()`. Services report activity through `trackActivity()`; see
   * docs/idle-shutdown.md for what counts. @default undefined (never)
   */
  idleTimeout?: number;
  /**
   * Tell the service manager through `NOTIFY_SOCKET` (sd_notify): `READY=1` once every service
   * is ready, `STOPPING=1` when the drain starts, `STATUS=` lines, the watchdog. A `Notifier` of
   * your own, or `false` for none. Without `NOTIFY_SOCKET` it costs nothing. @default true
   */
  notify?: boolean | Notifier;
}

export const SERVICE_GROUP_DEFAULTS = Object.freeze({
  signals: Object.freeze(['SIGINT', 'SIGTERM', 'SIGQUIT'] as NodeJS.Signals[]),
  shutdownTimeout: 5_000, // 5 s, the seed's
  drainDelay: 0, // ms
  hookTimeout: 5_000, // 5 s
  exitOnForce: false,
});

const KNOWN_OPTIONS = [
  'services',
  'diagnostics',
  'signals',
  'shutdownTimeout',
  'drainDelay',
  'beforeShutdown',
  'afterClose',
  'hookTimeout',
  'signal',
  'exitOnForce',
  'idleTimeout',
  'notify',
] as const;

const channels = {
  started: channel('berth:runner:started'),
  stopping: channel('berth:runner:stopping'),
  serviceClosed: channel('berth:runner:service-closed'),
  stopped: channel('berth:runner:stopped'),
  forced: channel('berth:runner:forced'),
};

/** Events a group emits (also published on `berth:runner:<event>`). */
export interface ServiceGroupEvents {
  started: [{ services: { name: string; address?: string }[] }];
  /** The stop trigger arrived: readiness is now draining. */
  stopping: [ShutdownInfo];
  'service-closed': [ServiceOutcome];
  stopped: [RunResult];
  forced: [{ signal: NodeJS.Signals }];
  'hook-error': [Error];
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A service's `close({ timeout })` settles at its deadline on its own (berth's do); one that has
 * not this long after it is destroyed by the runner, which goes on.
 */
const CLOSE_BACKSTOP_MS = 500;

/** Settles with `run()`'s outcome, or rejects with `expired()` after `ms`. */
async function bounded(ms: number, run: () => unknown, expired: () => Error): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(run),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(expired()), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function addressOf(service: Service): string | undefined {
  const address = (service.stats as { address?: unknown }).address;
  return typeof address === 'string' && address !== '' ? address : undefined;
}

export class ServiceGroup extends EventEmitter<ServiceGroupEvents> {
  readonly services: readonly Service[];
  readonly diagnostics: Service | undefined;
  readonly #signals: readonly NodeJS.Signals[];
  #shutdownTimeout: number;
  readonly #drainDelay: number;
  readonly #hookTimeout: number;
  readonly #beforeShutdown: ServiceGroupOptions['beforeShutdown'];
  readonly #afterClose: ServiceGroupOptions['afterClose'];
  readonly #abortSignal: AbortSignal | undefined;
  readonly #exitOnForce: boolean;
  readonly #idleTimeout: number | undefined;
  /** sd_notify; undefined when told not to. */
  readonly notifier: Notifier | undefined;
  /** Readiness the runner derives for services that do not report their own. */
  readonly #derived = new Map<Service, ServiceState>();

  #phase: 'idle' | 'starting' | 'running' | 'stopping' | 'stopped' = 'idle';
  #trigger: ((info: ShutdownInfo) => void) | undefined;
  #pendingStop: ShutdownInfo | undefined;
  #forced: ((signal: NodeJS.Signals) => void) | undefined;
  #runPromise: Promise<RunResult> | undefined;

  constructor(options: ServiceGroupOptions) {
    super();
    validateObject(options, 'ServiceGroup options');
    rejectUnknownKeys(options, 'ServiceGroup', KNOWN_OPTIONS);
    if (!Array.isArray(options.services)) {
      throw new InvalidOptionError(
        'services',
        `services must be an array of services, got ${describe(options.services)}`,
      );
    }
    const diagnostics =
      options.diagnostics === undefined || isService(options.diagnostics)
        ? options.diagnostics
        : new DiagnosticsServer({
            readiness: () => this.readiness,
            stats: () => this.stats,
            ...validateObject<DiagnosticsServerOptions>(options.diagnostics, 'diagnostics'),
          });
    const all = diagnostics ? [...options.services, diagnostics] : options.services;
    const names = new Set<string>();
    all.forEach((service, i) => {
      const label = service === diagnostics ? 'diagnostics' : `services[${i}]`;
      if (!isService(service)) {
        throw new InvalidOptionError(
          label,
          `${label} must be a service (name, start, close, destroy, stats), got ${describe(service)}`,
        );
      }
      if (names.has(service.name)) {
        throw new InvalidOptionError(
          label,
          `${label}: two services are named ${JSON.stringify(service.name)}; names label metrics and must be unique`,
        );
      }
      names.add(service.name);
    });
    this.services = [...options.services];
    this.diagnostics = diagnostics;
    const signals =
      options.signals === undefined ? SERVICE_GROUP_DEFAULTS.signals : options.signals;
    if (
      signals !== false &&
      (!Array.isArray(signals) || signals.some((s) => !(s in constants.signals)))
    ) {
      throw new InvalidOptionError(
        'signals',
        `signals must be an array of signal names or false, got ${describe(signals)}`,
      );
    }
    this.#signals = signals === false ? [] : [...signals];
    this.#shutdownTimeout = optional(
      options.shutdownTimeout,
      SERVICE_GROUP_DEFAULTS.shutdownTimeout,
      (v) => validateDuration(v, 'shutdownTimeout'),
    );
    this.#drainDelay = optional(options.drainDelay, SERVICE_GROUP_DEFAULTS.drainDelay, (v) =>
      validateDuration(v, 'drainDelay'),
    );
    this.#hookTimeout = optional(options.hookTimeout, SERVICE_GROUP_DEFAULTS.hookTimeout, (v) =>
      validateDuration(v, 'hookTimeout'),
    );
    this.#beforeShutdown = optional(options.beforeShutdown, undefined, (v) =>
      validateFunction<NonNullable<ServiceGroupOptions['beforeShutdown']>>(v, 'beforeShutdown'),
    );
    this.#afterClose = optional(options.afterClose, undefined, (v) =>
      validateFunction<NonNullable<ServiceGroupOptions['afterClose']>>(v, 'afterClose'),
    );
    this.#abortSignal = optional(options.signal, undefined, (v) =>
      validateAbortSignal(v, 'signal'),
    );
    this.#idleTimeout = optional(options.idleTimeout, undefined, (v) =>
      validateInteger(v, 'idleTimeout', { min: 1, max: 2 ** 31 - 1, unit: '(ms)' }),
    );
    const notify = options.notify ?? true;
    if (notify !== false && notify !== true && !(notify instanceof Notifier)) {
      throw new InvalidOptionError(
        'notify',
        `notify must be a boolean or a Notifier, got ${describe(notify)}`,
      );
    }
    this.notifier = notify === true ? new Notifier() : notify === false ? undefined : notify;
    this.#exitOnForce = optional(options.exitOnForce, SERVICE_GROUP_DEFAULTS.exitOnForce, (v) =>
      validateBoolean(v, 'exitOnForce'),
    );
  }

  /** Every service, diagnostics last. */
  get #all(): Service[] {
    return this.diagnostics ? [...this.services, this.diagnostics] : [...this.services];
  }

  /** A service's readiness: its own when it reports one, else what the runner derived. */
  stateOf(service: Service): ServiceState {
    return service.state ?? this.#derived.get(service) ?? 'starting';
  }

  /** True while every service is ready and the group is not shutting down: what /ready says. */
  get ready(): boolean {
    return this.#phase === 'running' && this.#all.every((s) => this.stateOf(s) === 'ready');
  }

  /** Why /ready says no, in a word: `starting`, `draining`, `stopped`, or `ready`. */
  get readiness(): 'starting' | 'ready' | 'draining' | 'stopped' {
    if (this.#phase === 'stopping') return 'draining';
    if (this.#phase === 'stopped') return 'stopped';
    return this.ready ? 'ready' : 'starting';
  }

  /** Every service's stats by name: what /debug/vars shows. */
  get stats(): Record<string, object> {
    const out: Record<string, object> = {};
    for (const service of this.#all)
      out[service.name] = { state: this.stateOf(service), ...service.stats };
    return out;
  }

  /**
   * Starts the shutdown from code (e.g. an idle timer); `run()` then resolves as usual.
   * `shutdownTimeout` replaces the configured one for this shutdown (a cluster worker gets its
   * budget from the primary).
   */
  stop(
    reason: 'requested' | 'idle' = 'requested',
    options: { shutdownTimeout?: number } = {},
  ): void {
    if (options.shutdownTimeout !== undefined) {
      this.#shutdownTimeout = validateDuration(options.shutdownTimeout, 'shutdownTimeout');
    }
    this.#requestStop({ reason });
  }

  /**
   * Starts every service, runs until a stop trigger, shuts down in stages, and resolves with
   * the outcome. Never rejects. Calling it again returns the same promise.
   */
  run(): Promise<RunResult> {
    this.#runPromise ??= this.#run();
    return this.#runPromise;
  }

  async #run(): Promise<RunResult> {
    const disposers: (() => void)[] = [];
    let signalsSeen = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      signalsSeen++;
      if (signalsSeen === 1) this.#requestStop({ reason: 'signal', signal });
      else this.#forced?.(signal);
    };
    for (const signal of this.#signals) {
      process.on(signal, onSignal);
      disposers.push(() => process.off(signal, onSignal));
    }
    try {
      if (this.#abortSignal) {
        const listener = addAbortListener(this.#abortSignal, () =>
          this.#requestStop({ reason: 'abort' }),
        );
        disposers.push(() => listener[Symbol.dispose]());
      }
      if (this.#idleTimeout !== undefined) {
        const idle = new IdleTracker({ idleTimeout: this.#idleTimeout });
        for (const service of this.services) service.trackActivity?.(idle);
        const listener = addAbortListener(idle.signal, () => this.#requestStop({ reason: 'idle' }));
        disposers.push(() => {
          listener[Symbol.dispose]();
          idle.close();
        });
      }
      disposers.push(() => this.notifier?.close());
      const forced = new Promise<RunResult>((resolve) => {
        this.#forced = (signal) => resolve(this.#force(signal));
      });
      return await Promise.race([this.#lifetime(), forced]);
    } finally {
      for (const dispose of disposers) dispose();
    }
  }

  async #lifetime(): Promise<RunResult> {
    const stopped = new Promise<ShutdownInfo>((resolve) => {
      this.#trigger = resolve;
    });
    const started = Date.now();
    try {
      await this.#startAll();
    } catch (err) {
      return this.#finish({
        reason: 'start-failed',
        error: err as Error,
        clean: false,
        exitCode: 1,
        duration: Date.now() - started,
        services: this.#all.map((s) => ({ name: s.name, stats: s.stats })),
        hookErrors: [],
      });
    }
    if (this.#pendingStop) this.#trigger!(this.#pendingStop);
    this.#watchServices();
    const serving = this.#all.map((s) => ({ name: s.name, address: addressOf(s) }));
    void this.notifier?.ready(
      `Serving: ${serving.map((s) => `${s.name} ${s.address ?? ''}`.trim()).join(', ')}`,
    );
    this.emit('started', { services: serving });
    if (channels.started.hasSubscribers)
      channels.started.publish({ group: this, services: this.#all.map((s) => s.name) });
    return this.#shutdown(await stopped);
  }

  #requestStop(info: ShutdownInfo): void {
    if (this.#phase === 'running' && this.#trigger) {
      this.#phase = 'stopping';
      this.#trigger(info);
    } else if (this.#phase === 'idle' || this.#phase === 'starting') {
      this.#pendingStop ??= info;
    }
  }

  /** Starts every service; if one fails, closes those that started and rejects. */
  async #startAll(): Promise<void> {
    this.#phase = 'starting';
    const all = this.#all;
    void this.notifier?.status(`Starting ${all.map((s) => s.name).join(', ')}`);
    for (const s of all) if (s.state === undefined) this.#derived.set(s, 'starting');
    const results = await Promise.allSettled(
      all.map(async (s) => {
        await s.start();
        if (this.#derived.has(s)) this.#derived.set(s, 'ready');
      }),
    );
    const failedAt = results.findIndex((r) => r.status === 'rejected');
    if (failedAt === -1) {
      this.#phase = 'running';
      return;
    }
    this.#phase = 'stopping';
    const failed = all[failedAt]!;
    const cause = (results[failedAt] as PromiseRejectedResult).reason;
    const started = all.filter((_, i) => results[i]!.status === 'fulfilled');
    await Promise.allSettled(started.map((s) => this.#closeOne(s, this.#shutdownTimeout)));
    this.#phase = 'stopped';
    throw new StartFailedError(failed.name, cause);
  }

  /** A service whose `closed` settles while the group runs has stopped on its own. */
  #watchServices(): void {
    for (const service of this.#all) {
      service.closed?.then(
        () => this.#requestStop({ reason: 'ended' }),
        (error: Error) => this.#requestStop({ reason: 'failure', error }),
      );
    }
  }

  async #shutdown(info: ShutdownInfo): Promise<RunResult> {
    this.#phase = 'stopping';
    const started = Date.now();
    const why = info.signal ?? (info.error ? `${info.reason}: ${info.error.message}` : info.reason);
    void this.notifier?.stopping(`Draining (${why}); shutdown timeout ${this.#shutdownTimeout} ms`);
    this.emit('stopping', info);
    if (channels.stopping.hasSubscribers) channels.stopping.publish({ group: this, ...info });
    const hookErrors: Error[] = [];
    const runHook = async (name: string, hook: (() => unknown) | undefined) => {
      if (!hook) return;
      try {
        await bounded(this.#hookTimeout, hook, () => new HookTimeoutError(name, this.#hookTimeout));
      } catch (err) {
        hookErrors.push(err as Error);
        this.emit('hook-error', err as Error);
      }
    };

    // Readiness is already 'draining'. Keep serving while the load balancer catches up.
    const waitForBalancer =
      info.reason === 'signal' || info.reason === 'abort' ? this.#drainDelay : 0;
    await Promise.all([
      runHook('beforeShutdown', this.#beforeShutdown && (() => this.#beforeShutdown!(info))),
      waitForBalancer > 0 ? delay(waitForBalancer) : undefined,
    ]);

    const deadline = Date.now() + this.#shutdownTimeout;
    // Every listener stops at once, before any service starts telling its clients to leave.
    for (const service of this.services) service.stopAccepting?.();
    const outcomes = await Promise.all(
      this.services.map((s) => this.#closeOne(s, this.#shutdownTimeout)),
    );
    if (this.diagnostics) {
      // The diagnostics server reported the drain; it has nothing in flight worth waiting long for.
      const left = Math.max(0, deadline - Date.now());
      outcomes.push(await this.#closeOne(this.diagnostics, Math.min(left, 1_000)));
    }
    const failure = info.reason === 'failure' ? info.error : undefined;
    const firstUnclean = outcomes.find((o) => o.error)?.error;
    const clean = !failure && !firstUnclean;
    const result: RunResult = {
      reason: info.reason,
      ...(info.signal ? { signal: info.signal } : {}),
      ...((failure ?? firstUnclean) ? { error: failure ?? firstUnclean } : {}),
      clean,
      exitCode: clean ? 0 : 1,
      duration: 0,
      services: outcomes,
      hookErrors,
    };
    await runHook('afterClose', this.#afterClose && (() => this.#afterClose!(result)));
    result.duration = Date.now() - started;
    return this.#finish(result);
  }

  async #closeOne(service: Service, timeout: number): Promise<ServiceOutcome> {
    if (this.#derived.has(service)) this.#derived.set(service, 'draining');
    let error: Error | undefined;
    const backstop = new ShutdownTimeoutError(service.name, timeout, undefined);
    try {
      await bounded(
        timeout + CLOSE_BACKSTOP_MS,
        () => service.close({ timeout }),
        () => backstop,
      );
    } catch (err) {
      error = err as Error;
    }
    if (error === backstop) {
      // Bounded too: a destroy that hangs must not hold the runner either.
      await bounded(
        CLOSE_BACKSTOP_MS,
        () => service.destroy(backstop),
        () => backstop,
      ).catch(() => {});
    }
    if (this.#derived.has(service)) this.#derived.set(service, 'closed');
    const outcome: ServiceOutcome = {
      name: service.name,
      stats: service.stats,
      ...(error ? { error } : {}),
    };
    this.emit('service-closed', outcome);
    if (channels.serviceClosed.hasSubscribers)
      channels.serviceClosed.publish({ group: this, ...outcome });
    return outcome;
  }

  #finish(result: RunResult): RunResult {
    this.#phase = 'stopped';
    void this.notifier?.status(
      result.clean
        ? `Stopped cleanly in ${result.duration} ms (${result.reason})`
        : `Stopped (${result.reason}): ${result.error?.message ?? 'not clean'}`,
    );
    this.emit('stopped', result);
    if (channels.stopped.hasSubscribers) channels.stopped.publish({ group: this, result });
    return result;
  }

  /** The second signal: destroy everything now; exit unless told not to. */
  #force(signal: NodeJS.Signals): RunResult {
    const exitCode = 128 + (constants.signals[signal] ?? 0);
    this.emit('forced', { signal });
    if (channels.forced.hasSubscribers) channels.forced.publish({ group: this, signal });
    // Called now, not later: the synchronous part of a destroy (sockets destroyed, workers
    // killed) must happen before process.exit below, which runs no further callbacks.
    for (const service of this.#all) {
      try {
        service.destroy().catch(() => {});
      } catch {
        // a user's destroy that throws must not keep the others from being destroyed
      }
    }
    const result: RunResult = {
      reason: 'forced',
      signal,
      clean: false,
      exitCode,
      duration: 0,
      services: this.#all.map((s) => ({ name: s.name, stats: s.stats })),
      hookErrors: [],
    };
    this.#finish(result);
    // Whatever is stuck (a handler in a tight loop, a hook that never returns) must not keep the
    // process: this is what the second Ctrl-C is for.
    if (this.#exitOnForce) process.exit(exitCode);
    return result;
  }
}

/** Runs `services` as one group: `new ServiceGroup(options).run()`. */
export function run(options: ServiceGroupOptions): Promise<RunResult> {
  return new ServiceGroup(options).run();
}
