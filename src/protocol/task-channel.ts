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
  validateNumber,
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

/** What a call needs of its channel. */
interface CallEngine {
  /** Sends its next attempt on a ready connection (`call.wake(sub)`), or makes it wait for one. */
  dispatch(call: ChannelCall): void;
  release(sub: Subchannel): void;
  /** True when the failed attempt is to be sent again (counted and published). */
  retry(call: ChannelCall, error: unknown): boolean;
  /** The call has its outcome (undefined: it succeeded). */
  ended(call: ChannelCall, error: Error | undefined): void;
}

/** The reason a streamed call counts as cancelled when its reader destroyed it without one. */
const CANCELLED_BY_READER = new Error('the response stream was destroyed by its reader');

/**
 * One call through the channel, over its attempts: it is its own `Waiter`, and the callbacks of
 * an attempt are its methods, so a call that goes straight to a ready connection allocates
 * nothing but itself, its promise and the attempt's two arrow callbacks.
 */
abstract class ChannelCall implements Waiter {
  readonly takes = true;
  readonly engine: CallEngine;
  readonly task: number | string;
  readonly body: TaskBody;
  /** A body that cannot be sent twice (a stream, an iterable) gets one attempt. */
  readonly maxAttempts: number;
  signal: AbortSignal | undefined = undefined;
  timeout: number | undefined = undefined;
  /** performance.now() at which the call's `timeout` passes; undefined for none. */
  deadline: number | undefined = undefined;
  /** Sent again also after a failure that leaves its fate unknown. */
  retryUnknown = false;
  attempts = 0;

  constructor(engine: CallEngine, task: number | string, body: TaskBody, maxAttempts: number) {
    this.engine = engine;
    this.task = task;
    this.body = body;
    this.maxAttempts = replayable(body) ? maxAttempts : 1;
  }

  /** The options of the next attempt: the signal, and what is left of the call's timeout. */
  attemptOptions(): CallOptions | undefined {
    const signal = this.signal;
    if (this.deadline === undefined) return signal === undefined ? undefined : { signal };
    const timeout = Math.max(1, Math.ceil(this.deadline - performance.now()));
    return signal === undefined ? { timeout } : { signal, timeout };
  }

  timeoutError(): TaskTimeoutError {
    return new TaskTimeoutError(
      'call',
      `task ${this.task} did not finish within ${this.timeout} ms`,
    );
  }

  /** An attempt failed: send it again, or fail the call. */
  attemptFailed(sub: Subchannel, error: Error, retryable: boolean): void {
    this.engine.release(sub);
    if (retryable && this.engine.retry(this, error)) this.engine.dispatch(this);
    else this.fail(error);
  }

  /** Runs an attempt on `sub` (counted in flight there already). */
  abstract wake(sub: Subchannel): void;
  abstract fail(error: Error): void;
}

class BufferedCall extends ChannelCall {
  readonly resolve: (value: Buffer) => void;
  readonly reject: (error: Error) => void;

  constructor(
    engine: CallEngine,
    task: number | string,
    body: TaskBody,
    maxAttempts: number,
    resolve: (value: Buffer) => void,
    reject: (error: Error) => void,
  ) {
    super(engine, task, body, maxAttempts);
    this.resolve = resolve;
    this.reject = reject;
  }

  wake(sub: Subchannel): void {
    this.attempts++;
    sub.client!.call(this.task, this.body, this.attemptOptions()).then(
      (value) => this.#answered(sub, value),
      (error: Error) => this.attemptFailed(sub, error, true),
    );
  }

  #answered(sub: Subchannel, value: Buffer): void {
    this.engine.release(sub);
    this.engine.ended(this, undefined);
    this.resolve(value);
  }

  fail(error: Error): void {
    this.engine.ended(this, error);
    this.reject(error);
  }
}

class StreamCall extends ChannelCall {
  readonly out: ChannelStream;

  constructor(
    engine: CallEngine,
    task: number | string,
    body: TaskBody,
    maxAttempts: number,
    out: ChannelStream,
  ) {
    super(engine, task, body, maxAttempts);
    this.out = out;
  }

  wake(sub: Subchannel): void {
    if (this.out.destroyed) {
      // Its reader gave up while it waited for a connection.
      this.engine.release(sub);
      this.engine.ended(this, CANCELLED_BY_READER);
      return;
    }
    this.attempts++;
    this.out.attach(sub.client!.stream(this.task, this.body, this.attemptOptions()), this, sub);
  }

  /** @internal The attempt's stream ended: the call succeeded. */
  succeeded(sub: Subchannel): void {
    this.engine.release(sub);
    this.engine.ended(this, undefined);
  }

  /** @internal The attempt's stream closed without an end or an error: its reader destroyed it. */
  abandoned(sub: Subchannel): void {
    this.engine.release(sub);
    this.engine.ended(this, CANCELLED_BY_READER);
  }

  fail(error: Error): void {
    this.engine.ended(this, error);
    this.out.destroy(error);
  }
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
  /** What calls need of their channel (made once: a call captures nothing of its own). */
  readonly #engine: CallEngine;
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
    this.#engine = {
      dispatch: (call) => this.#dispatch(call),
      release: (sub) => this.#release(sub),
      retry: (call, error) => this.#retry(call, error),
      ended: (call, error) => this.#ended(call, error),
    };
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
    // The common case, a ready connection: the call goes straight to it, and the channel's part
    // is the callbacks on its promise (no call object, no promise of its own).
    const sub = this.#closing ? undefined : this.#picker.pick(this.#subs);
    if (sub !== undefined) {
      if (options?.idempotent !== undefined) {
        try {
          validateBoolean(options.idempotent, 'idempotent');
        } catch (error) {
          return Promise.reject(error);
        }
      }
      const started = options?.timeout === undefined ? 0 : performance.now();
      this.#take(sub);
      return sub.client!.call(task, body, options).then(
        (value) => {
          this.#release(sub);
          this.#counts.ok++;
          return value;
        },
        (error: Error) => {
          // The first attempt failed: the call may be sent again (#callLater decides).
          this.#release(sub);
          return this.#callLater(task, body, options, started, error);
        },
      );
    }
    return this.#callLater(task, body, options, 0, undefined);
  }

  /**
   * A call that must wait for a connection, or whose first attempt (`failed`, begun at
   * `started`) failed: it becomes a `BufferedCall`, which waits, retries and keeps the deadline.
   */
  #callLater(
    task: number | string,
    body: TaskBody,
    options: ChannelCallOptions | undefined,
    started: number,
    failed: Error | undefined,
  ): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const call = new BufferedCall(this.#engine, task, body, this.#maxAttempts, resolve, reject);
      if (failed === undefined) {
        try {
          this.#configure(call, options);
        } catch (error) {
          reject(error);
          return;
        }
        this.#dispatch(call);
        return;
      }
      // The first attempt was TaskClient's, which checked the options: only keep them.
      call.attempts = 1;
      call.signal = options?.signal;
      if (options?.timeout !== undefined) {
        call.timeout = options.timeout;
        call.deadline = started + options.timeout;
      }
      call.retryUnknown = this.#isIdempotent(call, options?.idempotent);
      if (this.#retry(call, failed)) this.#dispatch(call);
      else call.fail(failed);
    });
  }

  /**
   * Runs a task and streams its response, as `TaskClient.stream`. It is sent again (as `call`
   * says) only while nothing of the response has reached the reader.
   */
  stream(task: number | string, body?: TaskBody, options?: ChannelCallOptions): Readable {
    const out = new ChannelStream();
    const call = new StreamCall(this.#engine, task, body, this.#maxAttempts, out);
    try {
      this.#configure(call, options);
    } catch (error) {
      process.nextTick(() => out.destroy(error as Error));
      return out;
    }
    this.#dispatch(call);
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

  /** Checks a call's options and sets what every attempt of it shares. Throws on a bad one. */
  #configure(call: ChannelCall, options: ChannelCallOptions | undefined): void {
    if (this.#closing) throw this.#closedError();
    let idempotent: boolean | undefined;
    if (options !== undefined) {
      const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
      const timeout = optional(options.timeout, undefined, (v) => validateDuration(v, 'timeout'));
      idempotent = optional(options.idempotent, undefined, (v) => validateBoolean(v, 'idempotent'));
      if (signal?.aborted) throw signal.reason;
      call.signal = signal;
      if (timeout !== undefined) {
        call.timeout = timeout;
        call.deadline = performance.now() + timeout;
      }
    }
    call.retryUnknown = this.#isIdempotent(call, idempotent);
  }

  /** Retried after an unknown fate: the call says so, or its task is listed; and its body can be sent again. */
  #isIdempotent(call: ChannelCall, given: boolean | undefined): boolean {
    return call.maxAttempts > 1 && (given ?? this.#idempotent.has(call.task));
  }

  /** Sends the call's next attempt on a ready connection now, or makes it wait for one. */
  #dispatch(call: ChannelCall): void {
    if (this.#closing) {
      call.fail(this.#closedError());
      return;
    }
    const sub = this.#picker.pick(this.#subs);
    if (sub !== undefined) {
      this.#take(sub);
      call.wake(sub);
      return;
    }
    if (!this.#waitForReady && this.#allFailed()) {
      call.fail(this.#noConnection());
      return;
    }
    const left =
      call.deadline === undefined ? Number.POSITIVE_INFINITY : call.deadline - performance.now();
    if (left <= 0) {
      call.fail(call.timeoutError());
      return;
    }
    // The call's own deadline, or the channel's readyTimeout, whichever comes first.
    const byDeadline = left <= this.#readyTimeout;
    this.#wait(call, byDeadline ? left : this.#readyTimeout, call.signal, () =>
      byDeadline ? call.timeoutError() : this.#noConnection(this.#readyTimeout),
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
  #retry(call: ChannelCall, error: unknown): boolean {
    if (call.attempts >= call.maxAttempts || this.#closing) return false;
    if (call.signal?.aborted) return false;
    if (call.deadline !== undefined && call.deadline <= performance.now()) return false;
    const fate = fateOf(error);
    let reason: RetryReason;
    if (fate === 'unstarted') reason = 'unstarted';
    else if (fate === 'unknown' && call.retryUnknown) reason = 'idempotent';
    else return false;
    this.#counts[reason]++;
    if (retryChannel.hasSubscribers) {
      retryChannel.publish({
        channel: this.name,
        task: call.task,
        attempt: call.attempts,
        reason,
        error,
      });
    }
    return true;
  }

  /** A call has its outcome: counted by it. */
  #ended(call: ChannelCall, error: Error | undefined): void {
    const c = this.#counts;
    if (error === undefined) c.ok++;
    else if (error instanceof TaskError) c.error++;
    else if (
      (error instanceof TaskTimeoutError && error.timeout === 'call') ||
      (call.signal?.aborted && error === call.signal.reason) ||
      error === CANCELLED_BY_READER
    ) {
      c.cancelled++;
    } else c.failed++;
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
    return this.#subs.every((s) => s.state === 'backoff'); // true too with no address at all
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

/**
 * The channel's side of `stream()`: a `Readable` the caller keeps while the attempts under it come
 * and go. It passes the current attempt's chunks on with backpressure (it pauses the attempt's
 * stream, whose window then stops growing), and destroying it cancels the attempt.
 */
class ChannelStream extends Readable {
  #inner: Readable | undefined;
  #forwarded = false;

  /**
   * Passes on `inner`, the stream of `call`'s attempt on `sub`. An error before any of it reached
   * the reader may be retried; after, it ends the stream.
   */
  attach(inner: Readable, call: StreamCall, sub: Subchannel): void {
    this.#inner = inner;
    let settled = false;
    inner.on('data', (chunk: Buffer) => {
      this.#forwarded = true;
      if (!this.push(chunk)) inner.pause();
    });
    inner.once('end', () => {
      settled = true;
      this.#inner = undefined;
      call.succeeded(sub);
      this.push(null);
    });
    inner.once('error', (error: Error) => {
      settled = true;
      this.#inner = undefined;
      call.attemptFailed(sub, error, !this.#forwarded && !this.destroyed);
    });
    inner.once('close', () => {
      if (!settled) {
        settled = true;
        call.abandoned(sub);
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
