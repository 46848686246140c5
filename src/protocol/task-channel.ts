/**
 * `TaskChannel`: a task-protocol client that survives deploys and spreads load. It owns
 * connections and hides them, as a gRPC channel does, and is built from parts with one job each:
 * the resolver (endpoints and DNS names to addresses, channel/resolver.ts), subchannels (one
 * connection slot each: connect, back off, replace after a Goodbye, channel/subchannel.ts), the
 * picker (which ready connection takes a call, channel/picker.ts), and this module: calls, their
 * deadlines, and the rules for retrying them. `TaskClient` stays the single connection under it.
 */

import { channel as diagnosticsChannel } from 'node:diagnostics_channel';
import { addAbortListener } from 'node:events';
import { Readable } from 'node:stream';
import type { Registry } from 'prom-client';
import {
  InvalidOptionError,
  ServiceClosedError,
  TaskConnectError,
  TaskConnectionClosedError,
  TaskError,
  TaskGoodbyeError,
  TaskTimeoutError,
} from '../errors.js';
import { exportStats, type StatMetric } from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateBoolean,
  validateDuration,
  validateFunction,
  validateInteger,
  validateObject,
  validateOneOf,
  validateString,
} from '../options.js';
import { BACKOFF_DEFAULTS, Backoff, type BackoffOptions } from './channel/backoff.js';
import { type Endpoint, formatEndpoint, parseEndpoint } from './channel/endpoint.js';
import { BALANCE_POLICIES, type BalancePolicy, Picker } from './channel/picker.js';
import { defaultLookup, type Lookup, type ResolvedAddress, Resolver } from './channel/resolver.js';
import { type ConnectionOptions, Subchannel, type SubchannelHost } from './channel/subchannel.js';
import { decodeTaskList, type TaskInfo } from './codec.js';
import { ErrorCode, ReservedTask } from './codes.js';
import type { CallOptions, TaskBody } from './task-client.js';

/** Options of `new TaskChannel()`. Defaults: `TASK_CHANNEL_DEFAULTS`. */
export interface TaskChannelOptions {
  /**
   * Where the servers are: `host:port`, `[v6]:port`, `unix:/path`, `{ host, port }` or
   * `{ path }`, one or several. A host name is looked up for every address it has, again every
   * `dnsRefresh` ms and after a connection to it fails.
   */
  endpoints: string | Endpoint | readonly (string | Endpoint)[];
  /** Connections to each address (a `--workers N` server needs N or more to use every worker). @default 1 */
  connectionsPerEndpoint?: number;
  /** `least-in-flight` (the ready connection with the fewest calls) or `round-robin`. @default 'least-in-flight' */
  balance?: BalancePolicy;
  /**
   * With no connection ready, a call waits for one (up to `readyTimeout` or its own deadline).
   * false: it fails at once when every connection's latest attempt failed. @default true
   */
  waitForReady?: boolean;
  /** The longest a call waits for a ready connection (ms). @default 10000 (10 s) */
  readyTimeout?: number;
  /** Attempts per call, the first included. @default 5 */
  maxAttempts?: number;
  /**
   * Task codes or names (as you call them) safe to run twice: retried also when the connection
   * failed with the call's fate unknown. A call's own `idempotent` option overrides.
   */
  idempotent?: readonly (number | string)[];
  /** Waits between attempts to connect. */
  backoff?: BackoffOptions;
  /** Look host names up again this often (ms); 0 for only at start and after failures. @default 30000 (30 s) */
  dnsRefresh?: number;
  /** How host names are looked up. @default dns.promises.lookup with `all: true` */
  lookup?: Lookup;
  /** Options for every connection (`TaskClient.connect`'s, less where to connect). */
  connection?: ConnectionOptions;
  /** The `channel` label of its metrics and events. @default 'task-channel' */
  name?: string;
  /** Where metrics go; `null` for none. @default null (a client's metrics are opt-in) */
  registry?: Registry | null;
  /** When it aborts, the channel is destroyed. */
  signal?: AbortSignal;
}

/** Options of one channel call: `TaskClient`'s, and whether the task is safe to run twice. */
export interface ChannelCallOptions extends CallOptions {
  /** Retry also after a failure that leaves unknown whether the task ran. @default per `idempotent` */
  idempotent?: boolean;
}

/** A plain snapshot of a channel's counters. */
export interface TaskChannelStats {
  /** Connection slots by state now; `draining`: connections finishing calls after a Goodbye. */
  connections: { connecting: number; ready: number; backoff: number; draining: number };
  /** Addresses the endpoints resolve to now. */
  addresses: number;
  /** Handshakes done; of them, after a slot's first (reconnects); attempts that failed. */
  connects: number;
  reconnects: number;
  connectFailures: number;
  /** Goodbyes received. */
  goodbyes: number;
  /** Calls sent again: `unstarted` (the server never started them), `idempotent` (fate unknown). */
  retries: { unstarted: number; idempotent: number };
  /** Calls ended: `ok`; `error` (the task answered Error); `cancelled` (signal or timeout); `failed`. */
  calls: { ok: number; error: number; cancelled: number; failed: number };
  callsInFlight: number;
  /** Calls waiting for a ready connection. */
  callsWaiting: number;
}

/** The defaults of `TaskChannelOptions`. */
export const TASK_CHANNEL_DEFAULTS = Object.freeze({
  connectionsPerEndpoint: 1,
  balance: 'least-in-flight' as BalancePolicy,
  waitForReady: true,
  readyTimeout: 10_000, // 10 s, as TaskClient's connect timeout
  maxAttempts: 5,
  dnsRefresh: 30_000, // 30 s
  name: 'task-channel',
  backoff: BACKOFF_DEFAULTS,
});

const KNOWN_OPTIONS = [
  'endpoints',
  'connectionsPerEndpoint',
  'balance',
  'waitForReady',
  'readyTimeout',
  'maxAttempts',
  'idempotent',
  'backoff',
  'dnsRefresh',
  'lookup',
  'connection',
  'name',
  'registry',
  'signal',
] as const;

const connectChannel = diagnosticsChannel('berth:task-channel:connect');
const connectFailedChannel = diagnosticsChannel('berth:task-channel:connect-failed');
const goodbyeChannel = diagnosticsChannel('berth:task-channel:goodbye');
const retryChannel = diagnosticsChannel('berth:task-channel:retry');

const CHANNEL_METRICS: readonly StatMetric<TaskChannelStats>[] = [
  {
    name: 'berth_task_channel_connections',
    help: 'Task channel connection slots by state, and connections draining after a Goodbye.',
    type: 'gauge',
    label: 'state',
    read: (s) => s.connections,
  },
  {
    name: 'berth_task_channel_connects_total',
    help: 'Task channel handshakes done.',
    type: 'counter',
    read: (s) => s.connects,
  },
  {
    name: 'berth_task_channel_reconnects_total',
    help: 'Task channel handshakes after a slot had been connected before.',
    type: 'counter',
    read: (s) => s.reconnects,
  },
  {
    name: 'berth_task_channel_connect_failures_total',
    help: 'Task channel attempts to connect that failed.',
    type: 'counter',
    read: (s) => s.connectFailures,
  },
  {
    name: 'berth_task_channel_goodbyes_total',
    help: 'Goodbyes the task channel received.',
    type: 'counter',
    read: (s) => s.goodbyes,
  },
  {
    name: 'berth_task_channel_retries_total',
    help: 'Calls the task channel sent again, by reason.',
    type: 'counter',
    label: 'reason',
    read: (s) => s.retries,
  },
  {
    name: 'berth_task_channel_calls_total',
    help: 'Task channel calls ended, by outcome.',
    type: 'counter',
    label: 'outcome',
    read: (s) => s.calls,
  },
  {
    name: 'berth_task_channel_calls_in_flight',
    help: 'Task channel calls under way.',
    type: 'gauge',
    read: (s) => s.callsInFlight,
  },
];

/** Why a failed attempt may be sent again: never started by the server, or safe to repeat. */
type RetryReason = 'unstarted' | 'idempotent';

/**
 * What a failed attempt says about its task: `unstarted` (the server never started it: a
 * Goodbye, or Error 204), `unknown` (the connection failed while it was out), or `final`.
 */
function fateOf(error: unknown): 'unstarted' | 'unknown' | 'final' {
  if (error instanceof TaskGoodbyeError) return 'unstarted';
  if (error instanceof TaskError)
    return error.errorCode === ErrorCode.SHUTTING_DOWN ? 'unstarted' : 'final';
  if (error instanceof TaskConnectionClosedError) return 'unknown';
  if (error instanceof TaskTimeoutError && error.timeout === 'keep-alive') return 'unknown';
  return 'final';
}

/** Bodies that can be sent again as they are (a stream or an iterable is consumed by sending). */
function replayable(body: TaskBody): boolean {
  return (
    body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array
  );
}

/** Something waiting for a ready connection: a call's next attempt, or `waitForReady()`. */
interface Waiter {
  /** A ready subchannel for it (already counted in flight when `takes`). */
  wake(sub: Subchannel): void;
  fail(error: Error): void;
  /** True when it carries a call (it takes a slot on the subchannel it is given). */
  readonly takes: boolean;
}

/** Per call: where it is in its attempts, and its deadline. */
interface CallPlan {
  readonly task: number | string;
  readonly body: TaskBody;
  readonly signal: AbortSignal | undefined;
  /** performance.now() at which the call's `timeout` passes; undefined for none. */
  readonly deadline: number | undefined;
  readonly timeout: number | undefined;
  readonly retryUnknown: boolean;
  attempts: number;
}

/**
 * A task-protocol client over one or many servers: reconnects with backoff, handles a server's
 * Goodbye as a drain (the calls under way finish there, new ones go to another connection, a call
 * the server never started is sent again), retries what is safe to retry, and balances calls over
 * its connections. See docs/task-client.md, "TaskChannel".
 *
 * @example
 * const channel = new TaskChannel({ endpoints: ['tasks-0:8082', 'tasks-1:8082'] });
 * const sum = await channel.call('sum', '1 2 3', { timeout: 2_000 });
 * await channel.close();
 */
export class TaskChannel {
  readonly name: string;
  readonly #endpoints: readonly Endpoint[];
  readonly #perEndpoint: number;
  readonly #waitForReady: boolean;
  readonly #readyTimeout: number;
  readonly #maxAttempts: number;
  readonly #idempotent: ReadonlySet<number | string>;
  readonly #backoff: Required<BackoffOptions>;
  readonly #picker: Picker;
  readonly #resolver: Resolver;
  readonly #host: SubchannelHost;
  #subs: Subchannel[] = [];
  /** Subchannels let go of (their address went away, or the channel closed), still draining. */
  readonly #retired = new Set<Subchannel>();
  readonly #waiters = new Set<Waiter>();
  #addresses = 0;
  #closing: Promise<void> | undefined;
  #destroyed: Error | undefined;
  #lastError: Error | undefined;
  #signalListener: Disposable | undefined;
  readonly #counts = {
    connects: 0,
    reconnects: 0,
    connectFailures: 0,
    goodbyes: 0,
    unstarted: 0,
    idempotent: 0,
    ok: 0,
    error: 0,
    cancelled: 0,
    failed: 0,
    inFlight: 0,
  };

  constructor(options: TaskChannelOptions) {
    validateObject(options, 'TaskChannel options');
    rejectUnknownKeys(options, 'TaskChannel', KNOWN_OPTIONS);
    const D = TASK_CHANNEL_DEFAULTS;
    const given = options.endpoints;
    const list = Array.isArray(given) ? given : [given];
    if (list.length === 0) {
      throw new InvalidOptionError('endpoints', 'endpoints must name at least one server');
    }
    this.#endpoints = list.map((e) => parseEndpoint(e, 'endpoints'));
    this.name = optional(options.name, D.name, (v) => validateString(v, 'name'));
    this.#perEndpoint = optional(options.connectionsPerEndpoint, D.connectionsPerEndpoint, (v) =>
      validateInteger(v, 'connectionsPerEndpoint', { min: 1, max: 1_024 }),
    );
    const balance = optional(options.balance, D.balance, (v) =>
      validateOneOf(v, 'balance', BALANCE_POLICIES),
    );
    this.#waitForReady = optional(options.waitForReady, D.waitForReady, (v) =>
      validateBoolean(v, 'waitForReady'),
    );
    this.#readyTimeout = optional(options.readyTimeout, D.readyTimeout, (v) =>
      validateDuration(v, 'readyTimeout'),
    );
    this.#maxAttempts = optional(options.maxAttempts, D.maxAttempts, (v) =>
      validateInteger(v, 'maxAttempts', { min: 1, max: 100 }),
    );
    const idempotent = optional(options.idempotent, [], (v) => {
      if (!Array.isArray(v) || v.some((t) => typeof t !== 'number' && typeof t !== 'string')) {
        throw new InvalidOptionError(
          'idempotent',
          `idempotent must be an array of task codes or names, got ${JSON.stringify(v)}`,
        );
      }
      return v as readonly (number | string)[];
    });
    this.#idempotent = new Set(idempotent);
    const backoff = optional(
      options.backoff,
      {},
      (v) => validateObject(v, 'backoff') as BackoffOptions,
    );
    rejectUnknownKeys(backoff, 'TaskChannel.backoff', ['initial', 'max', 'multiplier', 'jitter']);
    this.#backoff = {
      initial: optional(backoff.initial, D.backoff.initial, (v) =>
        validateDuration(v, 'backoff.initial'),
      ),
      max: optional(backoff.max, D.backoff.max, (v) => validateDuration(v, 'backoff.max')),
      multiplier: optional(backoff.multiplier, D.backoff.multiplier, (v) =>
        validateNumber(v, 'backoff.multiplier', 1, 10),
      ),
      jitter: optional(backoff.jitter, D.backoff.jitter, (v) =>
        validateNumber(v, 'backoff.jitter', 0, 1),
      ),
    };
    const dnsRefresh = optional(options.dnsRefresh, D.dnsRefresh, (v) =>
      validateDuration(v, 'dnsRefresh'),
    );
    const lookup = optional(options.lookup, defaultLookup, (v) =>
      validateFunction<Lookup>(v, 'lookup'),
    );
    const connection = optional(options.connection, {}, (v) => {
      validateObject(v, 'connection');
      for (const key of ['host', 'port', 'path', 'socket', 'signal']) {
        if ((v as Record<string, unknown>)[key] !== undefined) {
          throw new InvalidOptionError(
            `connection.${key}`,
            `TaskChannel.connection.${key}: where to connect is the channel's endpoints`,
          );
        }
      }
      return v as ConnectionOptions;
    });
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    const registry = options.registry ?? null;
    this.#picker = new Picker(balance);
    this.#host = this.#makeHost(connection);
    this.#resolver = new Resolver(this.#endpoints, {
      lookup,
      refresh: dnsRefresh,
      onUpdate: (addresses) => this.#update(addresses),
      onError: (endpoint, error) => {
        this.#lastError = new TaskConnectError(
          formatEndpoint(endpoint),
          `lookup failed: ${error.message}`,
          {
            cause: error,
          },
        );
        this.#changed();
      },
    });
    if (registry) exportStats(registry, this.name, () => this.stats, CHANNEL_METRICS);
    if (signal?.aborted) {
      this.#destroyed = signal.reason as Error;
      this.#closing = Promise.resolve();
      return;
    }
    if (signal)
      this.#signalListener = addAbortListener(
        signal,
        () => void this.destroy(signal.reason as Error),
      );
    this.#resolver.start();
  }

  // --- calls ------------------------------------------------------------------------------------

  /**
   * Runs a task on one of the channel's connections and resolves with its whole response, as
   * `TaskClient.call`. A call the server never started (it said Goodbye, or answered 204) is sent
   * again on another connection; one whose connection failed under it is sent again only when
   * idempotent. `timeout` covers every attempt and the waits between them.
   */
  call(task: number | string, body?: TaskBody, options?: ChannelCallOptions): Promise<Buffer> {
    let plan: CallPlan;
    try {
      plan = this.#plan(task, body, options);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<Buffer>((resolve, reject) => {
      const attempt = (sub: Subchannel) => {
        plan.attempts++;
        const client = sub.client!;
        client.call(plan.task, plan.body, this.#attemptOptions(plan)).then(
          (value) => {
            this.#release(sub);
            this.#counts.ok++;
            resolve(value);
          },
          (error: unknown) => {
            this.#release(sub);
            if (this.#retry(plan, error)) this.#dispatch(plan, attempt, fail);
            else fail(error as Error);
          },
        );
      };
      const fail = (error: Error) => {
        this.#count(plan, error);
        reject(error);
      };
      this.#dispatch(plan, attempt, fail);
    });
  }

  /**
   * Runs a task and streams its response, as `TaskClient.stream`. It is sent again (as `call`
   * says) only while nothing of the response has reached the reader.
   */
  stream(task: number | string, body?: TaskBody, options?: ChannelCallOptions): Readable {
    const out = new ChannelStream();
    let plan: CallPlan;
    try {
      plan = this.#plan(task, body, options);
    } catch (error) {
      process.nextTick(() => out.destroy(error as Error));
      return out;
    }
    const fail = (error: Error) => {
      this.#count(plan, error);
      out.destroy(error);
    };
    const attempt = (sub: Subchannel) => {
      if (out.destroyed) {
        this.#release(sub);
        return;
      }
      plan.attempts++;
      const inner = sub.client!.stream(plan.task, plan.body, this.#attemptOptions(plan));
      out.attach(inner, {
        end: () => {
          this.#release(sub);
          this.#counts.ok++;
        },
        error: (error, forwarded) => {
          this.#release(sub);
          if (!forwarded && !out.destroyed && this.#retry(plan, error)) {
            this.#dispatch(plan, attempt, fail);
          } else {
            fail(error);
          }
        },
        closed: () => {
          this.#release(sub);
          this.#counts.cancelled++; // its reader destroyed it: the task was cancelled
        },
      });
    };
    this.#dispatch(plan, attempt, fail);
    return out;
  }

  /** The tasks a server of the channel has registered (reserved task 251), ascending by code. */
  async listTasks(options?: ChannelCallOptions): Promise<TaskInfo[]> {
    return decodeTaskList(
      await this.call(ReservedTask.LIST_TASKS, undefined, { idempotent: true, ...options }),
    );
  }

  /** Runs the keep-alive task (250) on one connection; resolves with the round trip in ms. */
  async ping(options?: ChannelCallOptions): Promise<number> {
    const started = performance.now();
    await this.call(ReservedTask.KEEP_ALIVE, undefined, { idempotent: true, ...options });
    return performance.now() - started;
  }

  /**
   * Resolves once a connection is ready (at once if one is). Rejects after `timeout` (default
   * `readyTimeout`) with `ERR_BERTH_TASK_CONNECT_FAILED`, or with the signal's reason.
   */
  waitForReady(options: { timeout?: number; signal?: AbortSignal } = {}): Promise<void> {
    const timeout = optional(options.timeout, this.#readyTimeout, (v) =>
      validateDuration(v, 'timeout'),
    );
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    if (this.#closing) return Promise.reject(this.#closedError());
    if (this.#subs.some((s) => s.ready)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#wait({ takes: false, wake: () => resolve(), fail: reject }, timeout, signal, () =>
        this.#noConnection(timeout),
      );
    });
  }

  // --- lifecycle --------------------------------------------------------------------------------

  /** A plain snapshot of the channel's counters. */
  get stats(): TaskChannelStats {
    const connections = { connecting: 0, ready: 0, backoff: 0, draining: 0 };
    for (const sub of this.#subs) {
      if (sub.state === 'ready') connections.ready++;
      else if (sub.state === 'connecting') connections.connecting++;
      else if (sub.state === 'backoff') connections.backoff++;
      connections.draining += sub.draining.size;
    }
    for (const sub of this.#retired)
      connections.draining += sub.draining.size + (sub.client ? 1 : 0);
    const c = this.#counts;
    let waiting = 0;
    for (const w of this.#waiters) if (w.takes) waiting++;
    return {
      connections,
      addresses: this.#addresses,
      connects: c.connects,
      reconnects: c.reconnects,
      connectFailures: c.connectFailures,
      goodbyes: c.goodbyes,
      retries: { unstarted: c.unstarted, idempotent: c.idempotent },
      calls: { ok: c.ok, error: c.error, cancelled: c.cancelled, failed: c.failed },
      callsInFlight: c.inFlight,
      callsWaiting: waiting,
    };
  }

  /**
   * The graceful close: new calls reject with `ERR_BERTH_SERVICE_CLOSED` (as do calls waiting for
   * a connection); calls under way finish; every connection closes. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#stop(new ServiceClosedError('the task channel was closed'));
    const subs = [...this.#subs, ...this.#retired];
    this.#subs = [];
    this.#closing = Promise.all(subs.map((s) => s.close())).then(() => {});
    return this.#closing;
  }

  /** The abrupt stop: every call under way or waiting fails with `error` now; connections are destroyed. */
  async destroy(error?: Error): Promise<void> {
    const reason = error ?? new TaskConnectionClosedError('the task channel was destroyed');
    this.#destroyed ??= reason;
    this.#stop(reason);
    const subs = [...this.#subs, ...this.#retired];
    this.#subs = [];
    this.#closing ??= Promise.resolve();
    await Promise.all(subs.map((s) => s.destroy(reason)));
  }

  /** `await using` closes the channel. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #stop(reason: Error): void {
    this.#resolver.stop();
    this.#signalListener?.[Symbol.dispose]();
    for (const waiter of [...this.#waiters]) waiter.fail(reason);
    this.#waiters.clear();
  }

  #closedError(): Error {
    return this.#destroyed ?? new ServiceClosedError('the task channel is closed');
  }

  // --- attempts ---------------------------------------------------------------------------------

  #plan(task: number | string, body: TaskBody, options: ChannelCallOptions | undefined): CallPlan {
    if (this.#closing) throw this.#closedError();
    let signal: AbortSignal | undefined;
    let timeout: number | undefined;
    let idempotent: boolean | undefined;
    if (options !== undefined) {
      signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
      timeout = optional(options.timeout, undefined, (v) => validateDuration(v, 'timeout'));
      idempotent = optional(options.idempotent, undefined, (v) => validateBoolean(v, 'idempotent'));
      if (signal?.aborted) throw signal.reason;
    }
    const again = replayable(body);
    return {
      task,
      body,
      signal,
      timeout,
      deadline: timeout === undefined ? undefined : performance.now() + timeout,
      retryUnknown: again && (idempotent ?? this.#idempotent.has(task)),
      attempts: again ? 0 : this.#maxAttempts - 1, // a body that cannot be sent twice: one attempt
    };
  }

  /** The options of the next attempt: the signal, and what is left of the call's timeout. */
  #attemptOptions(plan: CallPlan): CallOptions | undefined {
    if (plan.deadline === undefined)
      return plan.signal === undefined ? undefined : { signal: plan.signal };
    const left = Math.max(1, Math.ceil(plan.deadline - performance.now()));
    return plan.signal === undefined ? { timeout: left } : { signal: plan.signal, timeout: left };
  }

  /** Sends the next attempt on a ready connection now, or waits for one. */
  #dispatch(
    plan: CallPlan,
    attempt: (sub: Subchannel) => void,
    fail: (error: Error) => void,
  ): void {
    if (this.#closing) {
      fail(this.#closedError());
      return;
    }
    const sub = this.#picker.pick(this.#subs);
    if (sub !== undefined) {
      this.#take(sub);
      attempt(sub);
      return;
    }
    if (!this.#waitForReady && this.#allFailed()) {
      fail(this.#noConnection());
      return;
    }
    const left =
      plan.deadline === undefined ? Number.POSITIVE_INFINITY : plan.deadline - performance.now();
    if (left <= 0) {
      fail(this.#callTimeout(plan));
      return;
    }
    // The call's own deadline, or the channel's readyTimeout, whichever comes first.
    const byDeadline = left <= this.#readyTimeout;
    this.#wait(
      { takes: true, wake: attempt, fail },
      byDeadline ? left : this.#readyTimeout,
      plan.signal,
      () => (byDeadline ? this.#callTimeout(plan) : this.#noConnection(this.#readyTimeout)),
    );
  }

  /** Waits up to `ms` for a ready connection; `expired` makes the error it fails with then. */
  #wait(waiter: Waiter, ms: number, signal: AbortSignal | undefined, expired: () => Error): void {
    let timer: NodeJS.Timeout | undefined;
    let abort: Disposable | undefined;
    const done = () => {
      this.#waiters.delete(entry);
      clearTimeout(timer);
      abort?.[Symbol.dispose]();
    };
    const entry: Waiter = {
      takes: waiter.takes,
      wake: (sub) => {
        done();
        waiter.wake(sub);
      },
      fail: (error) => {
        done();
        waiter.fail(error);
      },
    };
    this.#waiters.add(entry);
    timer = setTimeout(() => entry.fail(expired()), Math.max(1, Math.ceil(ms)));
    if (signal) abort = addAbortListener(signal, () => entry.fail(signal.reason as Error));
  }

  #take(sub: Subchannel): void {
    sub.inFlight++;
    this.#counts.inFlight++;
  }

  #release(sub: Subchannel): void {
    sub.inFlight--;
    this.#counts.inFlight--;
  }

  /** True when this failed attempt is to be sent again (and counts and publishes the retry). */
  #retry(plan: CallPlan, error: unknown): boolean {
    if (plan.attempts >= this.#maxAttempts || this.#closing) return false;
    if (plan.signal?.aborted) return false;
    if (plan.deadline !== undefined && plan.deadline <= performance.now()) return false;
    const fate = fateOf(error);
    let reason: RetryReason;
    if (fate === 'unstarted') reason = 'unstarted';
    else if (fate === 'unknown' && plan.retryUnknown) reason = 'idempotent';
    else return false;
    this.#counts[reason]++;
    if (retryChannel.hasSubscribers) {
      retryChannel.publish({
        channel: this.name,
        task: plan.task,
        attempt: plan.attempts,
        reason,
        error,
      });
    }
    return true;
  }

  #count(plan: CallPlan, error: Error): void {
    if (error instanceof TaskError) this.#counts.error++;
    else if (
      (error instanceof TaskTimeoutError && error.timeout === 'call') ||
      (plan.signal?.aborted && error === plan.signal.reason)
    ) {
      this.#counts.cancelled++;
    } else this.#counts.failed++;
  }

  #callTimeout(plan: CallPlan): TaskTimeoutError {
    return new TaskTimeoutError(
      'call',
      `task ${plan.task} did not finish within ${plan.timeout} ms`,
    );
  }

  #describe(): string {
    return this.#endpoints.map(formatEndpoint).join(', ');
  }

  #noConnection(waited?: number): Error {
    const last = this.#lastError;
    // Failing fast with one endpoint: its own error says it all (as TaskClient.connect's would).
    if (waited === undefined && last !== undefined && this.#endpoints.length === 1) return last;
    const why = last ? `the last attempt: ${last.message}` : 'no connection is ready';
    return new TaskConnectError(
      this.#describe(),
      waited === undefined
        ? `every connection failed (${why})`
        : `no connection was ready within ${waited} ms (${why})`,
      { cause: last },
    );
  }

  /** Every slot's latest attempt failed and no lookup is pending: nothing will be ready soon. */
  #allFailed(): boolean {
    if (this.#resolver.resolving) return false;
    return (
      this.#subs.every((s) => s.state === 'backoff') &&
      (this.#subs.length > 0 || this.#addresses === 0)
    );
  }

  // --- connections ------------------------------------------------------------------------------

  #makeHost(connection: ConnectionOptions): SubchannelHost {
    return {
      connectionOptions: connection,
      changed: () => this.#changed(),
      connected: (sub, reconnect) => {
        this.#counts.connects++;
        if (reconnect) this.#counts.reconnects++;
        if (connectChannel.hasSubscribers) {
          connectChannel.publish({ channel: this.name, address: sub.address.key, reconnect });
        }
      },
      connectFailed: (sub, error) => {
        this.#counts.connectFailures++;
        this.#lastError = error;
        this.#resolver.refresh();
        if (connectFailedChannel.hasSubscribers) {
          connectFailedChannel.publish({ channel: this.name, address: sub.address.key, error });
        }
      },
      lost: (_sub, error) => {
        this.#lastError = error;
        this.#resolver.refresh();
      },
      goodbye: (sub, code, reason) => {
        this.#counts.goodbyes++;
        if (goodbyeChannel.hasSubscribers) {
          goodbyeChannel.publish({ channel: this.name, address: sub.address.key, code, reason });
        }
      },
    };
  }

  /** The resolver's answer: a slot per address and connection; slots of gone addresses drain. */
  #update(addresses: readonly ResolvedAddress[]): void {
    if (this.#closing) return;
    this.#addresses = addresses.length;
    const existing = new Map(this.#subs.map((s) => [slotKey(s.address, s.slot), s]));
    const next: Subchannel[] = [];
    const fresh: Subchannel[] = [];
    for (const address of addresses) {
      for (let i = 0; i < this.#perEndpoint; i++) {
        const key = slotKey(address, i);
        let sub = existing.get(key);
        if (sub) existing.delete(key);
        else {
          sub = new Subchannel(this.#host, address, new Backoff(this.#backoff), i);
          fresh.push(sub);
        }
        next.push(sub);
      }
    }
    this.#subs = next;
    for (const gone of existing.values()) {
      this.#retired.add(gone);
      void gone.close().then(() => this.#retired.delete(gone));
    }
    for (const sub of fresh) sub.start();
    this.#changed();
  }

  /** A subchannel changed: serve waiting calls from what is ready, or fail them fast. */
  #changed(): void {
    if (this.#waiters.size === 0) return;
    for (const waiter of [...this.#waiters]) {
      const sub = this.#picker.pick(this.#subs);
      if (sub === undefined) break;
      if (waiter.takes) this.#take(sub);
      waiter.wake(sub);
    }
    if (!this.#waitForReady && this.#waiters.size > 0 && this.#allFailed()) {
      const error = this.#noConnection();
      for (const waiter of [...this.#waiters]) if (waiter.takes) waiter.fail(error);
    }
  }
}

function slotKey(address: ResolvedAddress, slot: number): string {
  return `${address.key}#${slot}`;
}

function validateNumber(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new InvalidOptionError(
      name,
      `${name} must be a number from ${min} to ${max}, got ${String(value)}`,
    );
  }
  return value;
}

/** What a stream attempt tells the channel. */
interface AttemptEvents {
  end(): void;
  /** `forwarded`: some of the response already reached the reader (the call cannot be retried). */
  error(error: Error, forwarded: boolean): void;
  /** The attempt's stream closed without an end or an error of its own (destroyed by the reader). */
  closed(): void;
}

/**
 * The channel's side of `stream()`: a `Readable` the caller keeps while the attempts under it come
 * and go. It passes the current attempt's chunks on with backpressure (it pauses the attempt's
 * stream, whose window then stops growing), and destroying it cancels the attempt.
 */
class ChannelStream extends Readable {
  #inner: Readable | undefined;
  #forwarded = false;

  attach(inner: Readable, events: AttemptEvents): void {
    this.#inner = inner;
    let settled = false;
    inner.on('data', (chunk: Buffer) => {
      this.#forwarded = true;
      if (!this.push(chunk)) inner.pause();
    });
    inner.once('end', () => {
      settled = true;
      this.#inner = undefined;
      events.end();
      this.push(null);
    });
    inner.once('error', (error: Error) => {
      settled = true;
      this.#inner = undefined;
      events.error(error, this.#forwarded);
    });
    inner.once('close', () => {
      if (!settled) {
        settled = true;
        events.closed();
      }
    });
  }

  override _read(): void {
    this.#inner?.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const inner = this.#inner;
    this.#inner = undefined;
    inner?.destroy(error ?? undefined);
    callback(error);
  }
}
