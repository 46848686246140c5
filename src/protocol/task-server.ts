/**
 * `TaskServer`: the task protocol's server (the Go seed's `asyncserver`) as a berth `Service`.
 * Listening, connection counting and the two-level close are `TcpService`'s; each connection is a
 * `TaskConnection`. This module owns the task registry, the limits, the close that says Goodbye
 * to every client, and the server-wide counters and metrics.
 */

import { channel } from 'node:diagnostics_channel';
import { addAbortListener } from 'node:events';
import { createServer, Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Registry } from 'prom-client';
import { InvalidOptionError, ServiceDestroyedError, ShutdownTimeoutError } from '../errors.js';
import {
  type FdTarget,
  LISTEN_KEYS,
  type PathTarget,
  type PortTarget,
  parseConnection,
  parseListenTarget,
  requirePlace,
} from '../listen.js';
import { defaultRegistry } from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateDuration,
  validateInstance,
  validateInteger,
  validateObject,
  validateString,
} from '../options.js';
import type { ActivitySink, CloseOptions, Service, ServiceState } from '../service.js';
import { type ConnectionContext, TcpService } from '../tcp/tcp-service.js';
import { noop, turnNow } from '../util.js';
import {
  ErrorCode,
  FIRST_RESERVED_TASK_CODE,
  MAX_U32,
  MIN_FRAME_PAYLOAD,
  ReservedTask,
} from './codes.js';
import { LINGER_MS, type ServerCore, TaskConnection, type TaskLimits } from './task-connection.js';
import { normalizeTask, type Task, type TaskEntry, type TaskHandler } from './task-definition.js';
import { exportTaskMetrics, TaskCounters, type TaskServerStats } from './task-metrics.js';

/** Options of `new TaskServer()`. Defaults: `TASK_SERVER_DEFAULTS`. */
export interface TaskServerOptions extends Partial<PortTarget & PathTarget & FdTarget> {
  /** Unique within a runner; the `service` label of every metric. @default 'task' */
  name?: string;
  /**
   * Serve the connections of this server (a `net.Server` or `tls.Server`) instead of creating
   * one. If it is not listening yet, give `port`, `path` or `fd` as well.
   */
  server?: Server;
  /**
   * Serve this one already-accepted connection instead of listening (systemd Accept=yes, inetd:
   * see `acceptedConnection()`); the server closes itself once it has ended.
   */
  connection?: Socket;
  /** The largest frame payload accepted from a client (bytes). @default 1048576 (1 MiB) */
  maxFramePayload?: number;
  /** The largest task message accepted (bytes); over it, Error 203. @default 4194304 (4 MiB) */
  maxMessageSize?: number;
  /**
   * Message bytes held per client for tasks still receiving or waiting for their parse turn. Over
   * it, reading pauses while a parse is pending, else the task gets Error 203.
   * @default 16777216 (16 MiB)
   */
  maxBufferedBytes?: number;
  /**
   * Response bytes held per client: waiting for the client's window, or in the socket's buffer.
   * At it, the client's new tasks wait (and past `maxBufferedBytes` of waiting messages get Error
   * 203) and streamed responses pause, until the client takes some. A task whose response waits
   * for a window longer than `writeTimeout` ends with Error 232; a client held over this limit
   * for `writeTimeout` gets FATAL 232.
   * @default 16777216 (16 MiB)
   */
  maxOutboundBytes?: number;
  /** Tasks one client may have active; over it, Error 202 for that task. @default 1024 */
  maxTasksInFlight?: number;
  /** Connections beyond this many are refused in the handshake (222). @default no limit */
  maxClients?: number;
  /** No task for this long: Goodbye 230 and close. 0 for never. @default 1800000 (30 min, the seed's) */
  waitTimeout?: number;
  /** A started hello, frame or message stalls this long: FATAL 231 and close. @default 5000 (5 s) */
  readTimeout?: number;
  /**
   * The client reads nothing of what is waiting for this long: the connection is dropped. Also
   * how long a task's response may wait for the client's window (then Error 232), and a client
   * may be held over `maxOutboundBytes` (then FATAL 232). @default 5000 (5 s)
   */
  writeTimeout?: number;
  /** A running task quiet for this long gets a PROCESSING frame. 0 for never. @default 60000 (1 min) */
  processingInterval?: number;
  /** Default for `close()`'s `timeout`. @default 5000 (5 s) */
  shutdownTimeout?: number;
  /** When it aborts, the server closes. */
  signal?: AbortSignal;
  /** Where metrics go; `null` for none. @default prom-client's global registry */
  registry?: Registry | null;
}

/** The defaults of `TaskServerOptions`. */
export const TASK_SERVER_DEFAULTS = Object.freeze({
  name: 'task',
  maxFramePayload: 1_048_576, // 1 MiB
  maxMessageSize: 4_194_304, // 4 MiB, gRPC's default receive limit
  maxBufferedBytes: 16_777_216, // 16 MiB per client
  maxOutboundBytes: 16_777_216, // 16 MiB per client
  maxTasksInFlight: 1_024, // per client
  maxClients: Number.POSITIVE_INFINITY, // no limit
  waitTimeout: 1_800_000, // 30 min: the seed's wait timeout
  readTimeout: 5_000, // 5 s: the seed's read timeout
  writeTimeout: 5_000, // 5 s: the seed's write timeout
  processingInterval: 60_000, // 1 min
  shutdownTimeout: 5_000, // 5 s
});

/** After the close deadline, how long final frames get to flush before connections are destroyed. */
const CLOSE_GRACE = LINGER_MS + 500; // ms

const MAX_NAME_BYTES = 255;

const KNOWN_OPTIONS = [
  'name',
  'server',
  'maxFramePayload',
  'maxMessageSize',
  'maxBufferedBytes',
  'maxOutboundBytes',
  'maxTasksInFlight',
  'maxClients',
  'waitTimeout',
  'readTimeout',
  'writeTimeout',
  'processingInterval',
  'shutdownTimeout',
  'signal',
  'registry',
  'connection',
  ...LISTEN_KEYS,
] as const;

const closeChannel = channel('berth:task:close');

/** A registered task as `listTasks` and the registry report it. */
export interface RegisteredTask {
  code: number;
  name: string | undefined;
}

/**
 * The task protocol's server: register tasks, `start()`, and `close()` to drain. See
 * docs/task-server.md.
 *
 * @example
 * const server = new TaskServer({ port: 8082 });
 * server.register(1, (message) => message, 'echo');
 * await server.start();
 */
export class TaskServer implements Service {
  readonly name: string;
  readonly #tcp: TcpService;
  readonly #limits: TaskLimits;
  readonly #maxClients: number;
  readonly #shutdownTimeout: number;
  readonly #entries: (TaskEntry | undefined)[] = new Array(256).fill(undefined);
  readonly #counters = new TaskCounters();
  readonly #connections = new Set<TaskConnection>();
  readonly #core: ServerCore;
  /** Durations are timed only when there is a registry to report them to. */
  readonly #timed: boolean;
  readonly #waiters = new Set<() => void>();
  readonly #closed: Promise<void>;
  #closing: Promise<void> | undefined;
  /** Checks every client's timeouts each `tick` ms while there are clients. */
  #watchdog: NodeJS.Timeout | undefined;
  #closeTimeout: number;
  /** Tasks the close deadline cut. */
  #cut = 0;

  constructor(options: TaskServerOptions = {}) {
    validateObject(options, 'TaskServer options');
    rejectUnknownKeys(options, 'TaskServer', KNOWN_OPTIONS);
    const D = TASK_SERVER_DEFAULTS;
    this.name = optional(options.name, D.name, (v) => validateString(v, 'name'));
    const maxMessageSize = optional(options.maxMessageSize, D.maxMessageSize, (v) =>
      validateInteger(v, 'maxMessageSize', { min: 0, max: MAX_U32 }),
    );
    const maxBufferedBytes = optional(
      options.maxBufferedBytes,
      Math.max(D.maxBufferedBytes, maxMessageSize),
      (v) => validateInteger(v, 'maxBufferedBytes', { min: 0 }),
    );
    if (maxBufferedBytes < maxMessageSize) {
      throw new InvalidOptionError(
        'maxBufferedBytes',
        `maxBufferedBytes must be at least maxMessageSize (${maxMessageSize}), got ${maxBufferedBytes}`,
      );
    }
    this.#limits = Object.freeze({
      maxFramePayload: optional(options.maxFramePayload, D.maxFramePayload, (v) =>
        validateInteger(v, 'maxFramePayload', { min: MIN_FRAME_PAYLOAD, max: MAX_U32 }),
      ),
      maxMessageSize,
      maxBufferedBytes,
      maxOutboundBytes: optional(options.maxOutboundBytes, D.maxOutboundBytes, (v) =>
        validateInteger(v, 'maxOutboundBytes', { min: 1 }),
      ),
      maxTasksInFlight: optional(options.maxTasksInFlight, D.maxTasksInFlight, (v) =>
        validateInteger(v, 'maxTasksInFlight', { min: 1, max: MAX_U32 }),
      ),
      waitTimeout: optional(options.waitTimeout, D.waitTimeout, (v) =>
        validateDuration(v, 'waitTimeout'),
      ),
      readTimeout: optional(options.readTimeout, D.readTimeout, (v) =>
        validateDuration(v, 'readTimeout'),
      ),
      writeTimeout: optional(options.writeTimeout, D.writeTimeout, (v) =>
        validateDuration(v, 'writeTimeout'),
      ),
      processingInterval: optional(options.processingInterval, D.processingInterval, (v) =>
        validateDuration(v, 'processingInterval'),
      ),
    });
    this.#maxClients = optional(options.maxClients, D.maxClients, (v) =>
      validateInteger(v, 'maxClients', { min: 1 }),
    );
    this.#shutdownTimeout = optional(options.shutdownTimeout, D.shutdownTimeout, (v) =>
      validateDuration(v, 'shutdownTimeout'),
    );
    this.#closeTimeout = this.#shutdownTimeout;
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    const registry = options.registry === undefined ? defaultRegistry : options.registry;
    const target = parseListenTarget(options, 'TaskServer');
    const connection = parseConnection(options, target, 'TaskServer');
    requirePlace('TaskServer', { target, server: options.server, connection });
    // The socket berth makes for itself gets these from its server; a handed one, here.
    connection?.setNoDelay(true);
    const server =
      options.server === undefined
        ? connection
          ? undefined
          : createServer({ allowHalfOpen: true, noDelay: true })
        : validateInstance(options.server, 'server', Server, 'a net.Server');

    this.#entries[ReservedTask.KEEP_ALIVE] = {
      code: ReservedTask.KEEP_ALIVE,
      name: 'keep-alive',
      parse: undefined,
      run: () => undefined,
    };
    this.#entries[ReservedTask.LIST_TASKS] = {
      code: ReservedTask.LIST_TASKS,
      name: 'list-tasks',
      parse: undefined,
      run: () => this.#listPayload(),
    };

    const enabled = [
      this.#limits.waitTimeout,
      this.#limits.readTimeout,
      this.#limits.writeTimeout,
      this.#limits.processingInterval,
    ].filter((t) => t > 0);
    const tick = enabled.length > 0 ? Math.max(5, Math.floor(Math.min(...enabled) / 4)) : 0;

    this.#core = {
      service: this.name,
      limits: this.#limits,
      tasks: this.#entries,
      counters: this.#counters,
      tick,
      observe: (code, startedAt) => this.#observe(code, startedAt),
      opened: () => {
        this.#counters.clients++;
        this.#counters.clientsTotal++;
      },
      closed: (conn) => this.#closedConnection(conn),
      activity: undefined,
    };

    this.#tcp = new TcpService({
      ...(target ?? {}),
      name: this.name,
      ...(connection ? { connection } : { server }),
      registry,
      // The outbox bounds what it holds for each client, the socket's buffer included.
      maxWriteBuffer: Number.POSITIVE_INFINITY,
      handler: (socket, ctx) => this.#serve(socket, ctx),
    });
    this.#timed = registry !== null;
    if (registry) {
      exportTaskMetrics(
        registry,
        this.name,
        () => this.stats,
        this.#counters,
        (code) => this.#entries[code]?.name ?? String(code),
      );
    }
    this.#closed = this.#tcp.closed.then(() => this.#cutError());
    this.#closed.then(
      () => this.#publishClose(undefined),
      (error: Error) => this.#publishClose(error),
    );
    if (signal?.aborted) void this.close();
    else if (signal) addAbortListener(signal, () => void this.close());
  }

  // --- tasks --------------------------------------------------------------------------------------

  /**
   * Registers a task under `code` (0 to 249; 250 to 255 are the protocol's). `task` is either
   * the convenience form, `(message, ctx) => response`, or `{ parse?, run }`. `name` lets clients
   * find it (`berth call host:port <name>`). Throws `ERR_BERTH_INVALID_OPTION` for a bad or
   * reserved code, a code or name already registered, or a bad task. Returns the server.
   *
   * @example
   * server.register(1, (message) => message, 'echo');
   * server.register(2, {
   *   parse: (message) => ({ value: JSON.parse(message.toString()) }),
   *   run: async (request, { signal }) => JSON.stringify(await lookup(request, signal)),
   * }, 'lookup');
   */
  register<P = Buffer>(code: number, task: Task<P> | TaskHandler, name?: string): this {
    if (
      typeof code === 'number' &&
      Number.isInteger(code) &&
      code >= FIRST_RESERVED_TASK_CODE &&
      code <= 255
    ) {
      throw new InvalidOptionError(
        'code',
        `code must be an integer from 0 to 249, got ${code}: task codes 250 to 255 are reserved for the protocol`,
      );
    }
    validateInteger(code, 'code', { min: 0, max: FIRST_RESERVED_TASK_CODE - 1 });
    if (name !== undefined) {
      validateString(name, 'name');
      if (Buffer.byteLength(name) > MAX_NAME_BYTES) {
        throw new InvalidOptionError(
          'name',
          `name must be at most ${MAX_NAME_BYTES} bytes of UTF-8`,
        );
      }
      if (/^\d+$/.test(name)) {
        throw new InvalidOptionError(
          'name',
          `name must not be all digits (it would read as a code), got "${name}"`,
        );
      }
    }
    const existing = this.#entries[code];
    if (existing) {
      throw new InvalidOptionError(
        'code',
        `code ${code} is already registered${existing.name ? ` (${existing.name})` : ''}`,
      );
    }
    if (name !== undefined) {
      const clash = this.#entries.find(
        (e) => e && e.code < FIRST_RESERVED_TASK_CODE && e.name === name,
      );
      if (clash) {
        throw new InvalidOptionError(
          'name',
          `name "${name}" is already registered (code ${clash.code})`,
        );
      }
    }
    this.#entries[code] = normalizeTask(task, code, name);
    return this;
  }

  /** The registered task codes, ascending (reserved codes not included). */
  registeredTaskCodes(): number[] {
    const codes: number[] = [];
    for (let code = 0; code < FIRST_RESERVED_TASK_CODE; code++) {
      if (this.#entries[code]) codes.push(code);
    }
    return codes;
  }

  /** The registered tasks with their names, ascending by code. */
  registeredTasks(): RegisteredTask[] {
    return this.registeredTaskCodes().map((code) => ({ code, name: this.#entries[code]!.name }));
  }

  #listPayload(): Buffer {
    const parts: Buffer[] = [];
    for (const { code, name } of this.registeredTasks()) {
      const bytes = Buffer.from(name ?? '', 'utf8');
      parts.push(Buffer.from([code, bytes.length]), bytes);
    }
    return Buffer.concat(parts);
  }

  // --- clients ------------------------------------------------------------------------------------

  /** The connected clients (handshake done), oldest connection first. */
  clients(): TaskConnection[] {
    return [...this.#connections].filter((c) => c.open);
  }

  /** How many clients are connected (handshake done). */
  get numClients(): number {
    return this.#counters.clients;
  }

  /**
   * Gracefully disconnects every connected client (as `client.disconnect(ms)`): Goodbye now, no
   * new tasks, close once their tasks are answered or after `ms`. The server keeps listening.
   */
  disconnect(ms: number): void {
    validateDuration(ms, 'ms');
    for (const conn of this.#connections) conn.disconnect(ms);
  }

  /** Resolves once no client is connected (at once if none is). */
  wait(): Promise<void> {
    if (this.#connections.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.#connections.size === 0) {
          this.#waiters.delete(check);
          resolve();
        }
      };
      this.#waiters.add(check);
    });
  }

  /**
   * Returns nothing: TcpService then holds the connection until its socket closes, which is when
   * a TaskConnection ends (no promise per connection; memory per idle client).
   */
  #serve(socket: Duplex, ctx: ConnectionContext): void {
    const conn = new TaskConnection(this.#core, socket, ctx.id);
    this.#connections.add(conn);
    // One timer for every client's timeouts, rather than one each (memory per idle client).
    if (this.#core.tick > 0 && !this.#watchdog) {
      this.#watchdog = setInterval(() => {
        for (const c of this.#connections) c.check();
      }, this.#core.tick).unref();
    }
    if (this.#closing || this.#tcp.state === 'closed') {
      conn.refuse(ErrorCode.SHUTTING_DOWN, 'server shutting down');
      return;
    }
    if (this.#connections.size > this.#maxClients) {
      conn.refuse(
        ErrorCode.TOO_MANY_CLIENTS,
        `too many clients: this server takes ${this.#maxClients}`,
      );
    }
    // close() and destroy() reach each connection by walking #connections: no abort listener
    // (and no AbortController) per connection, which the tasks benchmark measured at 1.7 KB each.
  }

  #closedConnection(conn: TaskConnection): void {
    if (!this.#connections.delete(conn)) return;
    if (this.#connections.size === 0) {
      clearInterval(this.#watchdog);
      this.#watchdog = undefined;
    }
    if (conn.byteOrder !== undefined) this.#counters.clients--;
    for (const check of [...this.#waiters]) check();
  }

  #observe(code: number, startedAt: number): void {
    // turnNow() may predate a start read later in the same turn: never a negative duration.
    if (this.#timed) this.#counters.observe(code, Math.max(0, turnNow() - startedAt) / 1_000);
  }

  // --- the Service contract -------------------------------------------------------------------------

  /** `starting`, `ready`, `draining` or `closed`. */
  get state(): ServiceState {
    return this.#tcp.state;
  }

  /**
   * Settles once the server has stopped and every connection has ended: fulfils after a clean
   * stop; rejects with `ERR_BERTH_SHUTDOWN_TIMEOUT` when the close deadline cut tasks, or with what
   * destroyed or failed the server.
   */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** A plain snapshot of the server's counters (docs/task-server.md, "Stats and metrics"). */
  get stats(): TaskServerStats {
    const c = this.#counters;
    const tcp = this.#tcp.stats;
    let bufferedBytes = 0;
    let outboundBytes = 0;
    for (const conn of this.#connections) {
      bufferedBytes += conn.bufferedBytes;
      outboundBytes += conn.outboundBytes;
    }
    return {
      listening: tcp.listening,
      address: tcp.address,
      clients: c.clients,
      clientsTotal: c.clientsTotal,
      refused: c.refused,
      tasksInFlight: c.inFlight,
      tasksTotal: c.tasksTotal,
      outcomes: c.outcomes(),
      bytesIn: c.bytesIn,
      bytesOut: c.bytesOut,
      protocolErrors: c.protocolErrors,
      timeouts: {
        wait: c.waitTimeouts,
        read: c.readTimeouts,
        write: c.writeTimeouts,
        window: c.windowTimeouts,
      },
      bufferedBytes,
      outboundBytes,
      outboundFull: c.outboundFull,
    };
  }

  /** The bound address, for reading an ephemeral port after `start()` with `port: 0`. */
  address(): ReturnType<Server['address']> {
    return this.#tcp.address();
  }

  /** Resolves once listening; rejects (nothing left open) if it cannot listen. */
  start(): Promise<void> {
    return this.#tcp.start();
  }

  /** Stops accepting clients (the listening socket closes); `close()` does the rest. */
  stopAccepting(): void {
    this.#tcp.stopAccepting();
  }

  /**
   * From now on each task in flight is activity for `sink`. A connected client with no task in
   * flight is not: one parked client must not keep an idle service alive.
   */
  trackActivity(sink: ActivitySink): void {
    this.#core.activity = sink;
  }

  /**
   * The graceful close: stop listening; send every client Goodbye (204); refuse new tasks with
   * Error 204; let active tasks finish for up to `timeout` (default `shutdownTimeout`), then
   * cancel those left and answer each with Error 204; give the last frames a moment to flush
   * and close. Resolves when every task finished by itself; rejects with
   * `ERR_BERTH_SHUTDOWN_TIMEOUT` when the deadline cut tasks. Idempotent.
   */
  close(options: CloseOptions = {}): Promise<void> {
    const timeout = optional(options.timeout, this.#shutdownTimeout, (v) =>
      validateDuration(v, 'timeout'),
    );
    if (!this.#closing) {
      this.#closeTimeout = timeout;
      for (const conn of this.#connections) {
        conn.drain(timeout, ErrorCode.SHUTTING_DOWN, 'server shutting down', (n) => {
          this.#cut += n;
        });
      }
      const closing = this.#tcp
        .close({ timeout: Math.min(timeout + CLOSE_GRACE, 2 ** 31 - 1) })
        .then(() => this.#cutError());
      closing.catch(noop);
      this.#closing = closing;
    }
    return this.#closing;
  }

  /** The abrupt stop: every connection destroyed now, its tasks' signals aborted. Idempotent. */
  destroy(error?: Error): Promise<void> {
    const reason = error ?? new ServiceDestroyedError(`${this.name} was destroyed`);
    for (const conn of this.#connections) conn.destroy(reason);
    return this.#tcp.destroy(error);
  }

  /** `await using` closes the server. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #cutError(): void {
    if (this.#cut === 0) return;
    const error = new ShutdownTimeoutError(this.name, this.#closeTimeout, this.#cut);
    // The shared message counts connections; what the deadline cut here is tasks.
    error.message = `${this.name}: close timed out after ${this.#closeTimeout} ms; ${this.#cut} task(s) still running were cancelled and answered with Error 204`;
    throw error;
  }

  #publishClose(error: Error | undefined): void {
    if (closeChannel.hasSubscribers) {
      closeChannel.publish({ service: this.name, error, stats: this.stats });
    }
  }
}
