/**
 * `TcpService`: a TCP (or unix socket) listener that runs a handler per connection, counts its
 * connections, and closes without abandoning its handlers. The Go seed is
 * `listener.Run(ctx, address, handler, wg, metrics)`.
 */

import { channel } from 'node:diagnostics_channel';
import { createServer, Server, type Socket } from 'node:net';
import { type Duplex, Writable } from 'node:stream';
import { Server as TlsServer } from 'node:tls';
import type { Registry } from 'prom-client';
import {
  ServiceClosingError,
  ServiceDestroyedError,
  ShutdownTimeoutError,
  WriteBufferFullError,
} from '../errors.js';
import { Lifecycle } from '../lifecycle.js';
import {
  type FdTarget,
  LISTEN_KEYS,
  type ListenTarget,
  type PathTarget,
  type PortTarget,
  parseConnection,
  parseListenTarget,
  requirePlace,
} from '../listen.js';
import { Listener } from '../listener.js';
import { defaultRegistry, exportStats, type StatMetric } from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateDuration,
  validateFunction,
  validateInstance,
  validateInteger,
  validateObject,
  validateString,
} from '../options.js';
import type { ActivitySink, CloseOptions, Service, ServiceState } from '../service.js';
import { isPromiseLike, noop } from '../util.js';

/** What a handler learns about its connection besides the stream itself. */
export interface ConnectionContext {
  /** Increasing from 1 within this service. */
  readonly id: number;
  /**
   * Aborted when the service begins to close (reason: `ServiceClosingError`) or is destroyed.
   * A handler that watches it can finish politely before the deadline.
   */
  readonly signal: AbortSignal;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  /** The service's name. */
  readonly service: string;
}

/**
 * Runs once per connection. An async handler (one that returns a promise) owns the connection
 * until its promise settles; then berth ends the connection, flushing what was written. A
 * handler that returns nothing owns it until the connection closes, which suits the
 * event-style `conn.pipe(conn)`. A handler that throws or rejects is counted under `error` and
 * its connection destroyed; the service goes on. (One that rejects with its connection's own
 * error, a reset or a broken pipe, is counted under `peerErrors` instead: the peer left.)
 *
 * Respect backpressure: when `conn.write()` returns false, wait for 'drain' before writing more,
 * or use `stream.pipeline`. A connection whose unsent bytes pass `maxWriteBuffer` is destroyed.
 */
export type ConnectionHandler = (conn: Duplex, ctx: ConnectionContext) => void | Promise<void>;

export interface TcpServiceOptions extends Partial<PortTarget & PathTarget & FdTarget> {
  /** Runs once per accepted connection. */
  handler: ConnectionHandler;
  /** Unique within a runner; the `service` label of every metric. @default 'tcp' */
  name?: string;
  /**
   * Serve the connections of this server instead of creating one. If it is not listening yet,
   * give `port`, `path` or `fd` as well and `start()` makes it listen there.
   */
  server?: Server;
  /** Connections beyond this many open ones are closed at once and counted under `dropped`. */
  maxConnections?: number;
  /**
   * Bytes a connection may have waiting to be sent (`conn.writableLength`): a handler that
   * writes more while its peer reads nothing has its connection destroyed, counted under
   * `overflows`, so one peer cannot make the process hold without bound what a careless
   * handler writes. `Infinity` for no limit.
   * @default 16777216 (16 MiB)
   */
  maxWriteBuffer?: number;
  /** Default for `close()`'s `timeout`. @default 5000 (5 s, the seed's) */
  shutdownTimeout?: number;
  /** When it aborts, the service closes (like the seed's context). */
  signal?: AbortSignal;
  /**
   * Serve this one already-accepted connection instead of listening (systemd Accept=yes, inetd:
   * see `acceptedConnection()`); the service closes itself once it has ended.
   */
  connection?: Socket;
  /** Where metrics go; `null` for none. @default prom-client's global registry */
  registry?: Registry | null;
}

/** A plain snapshot, the seed's expvar map plus what Node adds. */
export interface TcpStats {
  /** Handlers running now. */
  busy: number;
  /** Connections accepted since the service was made. */
  count: number;
  /** Handlers that threw or rejected. */
  error: number;
  /** 1 while listening, else 0. */
  listening: 0 | 1;
  /** `host:port`, `[v6]:port` or the socket path; '' when not listening. */
  address: string;
  /** Connections open now (a handler may have returned while its connection flushes). */
  open: number;
  /** Connections closed at once because `maxConnections` were open. */
  dropped: number;
  /** Errors accepting connections (EMFILE, ENFILE, ...): counted, not fatal. */
  acceptErrors: number;
  /** Connections destroyed because their unsent bytes passed `maxWriteBuffer`. */
  overflows: number;
  /** Handlers that ended with their connection's own error (a reset, a broken pipe). */
  peerErrors: number;
}

export const TCP_SERVICE_DEFAULTS = Object.freeze({
  name: 'tcp',
  shutdownTimeout: 5_000, // 5 s: the seed's shutdown budget
  maxConnections: Number.POSITIVE_INFINITY, // no limit
  maxWriteBuffer: 16_777_216, // 16 MiB per connection
});

const KNOWN_OPTIONS = [
  'handler',
  'name',
  'server',
  'maxConnections',
  'maxWriteBuffer',
  'shutdownTimeout',
  'signal',
  'registry',
  'connection',
  ...LISTEN_KEYS,
] as const;

const connectionChannel = channel('berth:tcp:connection');
const errorChannel = channel('berth:tcp:error');
const peerErrorChannel = channel('berth:tcp:peer-error');
const overflowChannel = channel('berth:tcp:overflow');
const closeChannel = channel('berth:tcp:close');

const TCP_METRICS: readonly StatMetric<TcpStats>[] = [
  {
    name: 'berth_tcp_busy',
    help: 'Connection handlers running now.',
    type: 'gauge',
    read: (s) => s.busy,
  },
  {
    name: 'berth_tcp_connections_total',
    help: 'Connections accepted.',
    type: 'counter',
    read: (s) => s.count,
  },
  {
    name: 'berth_tcp_handler_errors_total',
    help: 'Handlers that threw or rejected.',
    type: 'counter',
    read: (s) => s.error,
  },
  {
    name: 'berth_tcp_listening',
    help: '1 while the listener is open.',
    type: 'gauge',
    read: (s) => s.listening,
  },
  {
    name: 'berth_tcp_open_connections',
    help: 'Connections open now.',
    type: 'gauge',
    read: (s) => s.open,
  },
  {
    name: 'berth_tcp_dropped_total',
    help: 'Connections closed at once over maxConnections.',
    type: 'counter',
    read: (s) => s.dropped,
  },
  {
    name: 'berth_tcp_accept_errors_total',
    help: 'Errors accepting connections.',
    type: 'counter',
    read: (s) => s.acceptErrors,
  },
  {
    name: 'berth_tcp_write_overflows_total',
    help: 'Connections destroyed because their unsent bytes passed maxWriteBuffer.',
    type: 'counter',
    read: (s) => s.overflows,
  },
  {
    name: 'berth_tcp_peer_errors_total',
    help: 'Handlers that ended with their connection reset or broken by the peer.',
    type: 'counter',
    read: (s) => s.peerErrors,
  },
];

/** A service's `maxWriteBuffer`, and what to do with a connection over it. */
interface WriteGuard {
  readonly limit: number;
  overflow(conn: Connection): void;
}

/** Where a guarded socket finds its connection (see `guardWrites`). */
const kConnection = Symbol('berth.tcp.connection');
const writableWrite = Writable.prototype.write;

type GuardedSocket = Socket & { [kConnection]: Connection };

/**
 * `write` for a socket with a ceiling: the stream's own write, then a look at what waits unsent.
 * Only a write that returns false (the buffer is past its high-water mark) can be over the
 * limit, so a well-behaved handler pays one comparison per write. One function for every
 * socket; the socket finds its connection through a symbol, so nothing is made per connection.
 */
function guardedWrite(this: GuardedSocket, ...args: unknown[]): boolean {
  const ok = Reflect.apply(writableWrite, this, args) as boolean;
  if (!ok) this[kConnection].checkWriteBuffer();
  return ok;
}

/** One accepted connection: its context for the handler, and berth's bookkeeping. */
class Connection implements ConnectionContext {
  readonly id: number;
  readonly socket: Socket;
  readonly service: string;
  /** Made on first use of `signal`, so handlers that never look pay nothing. */
  controller: AbortController | undefined;
  /** The idle tracker's record of this connection's handler, when one is watching. */
  activity: { end(): void } | undefined;
  /** An event-style (sync) handler's run lasts until the socket closes. */
  runsUntilClose = false;
  /** Destroyed for passing `maxWriteBuffer`: what the handler does next is not its fault. */
  overflowed = false;
  /** The service's write ceiling, for a guarded socket (one object per service, not per socket). */
  guard: WriteGuard | undefined;
  /** Neighbours in the service's list of open connections. */
  prev: Connection | undefined;
  next: Connection | undefined;
  #closing: AbortSignal;

  constructor(id: number, socket: Socket, service: string, closing: AbortSignal) {
    this.id = id;
    this.socket = socket;
    this.service = service;
    this.#closing = closing;
  }

  get signal(): AbortSignal {
    if (this.#closing.aborted) return this.#closing;
    this.controller ??= new AbortController();
    return this.controller.signal;
  }

  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }

  checkWriteBuffer(): void {
    const guard = this.guard;
    if (guard && !this.overflowed && this.socket.writableLength > guard.limit) {
      guard.overflow(this);
    }
  }

  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }
}

/**
 * The open connections, linked through the connections themselves. A `Set` costs a hash insert
 * and delete per connection, which the tcp benchmark measured at several percent of the accept
 * path; linking costs four pointer writes.
 */
class ConnectionList {
  size = 0;
  #head: Connection | undefined;

  add(conn: Connection): void {
    conn.next = this.#head;
    if (this.#head) this.#head.prev = conn;
    this.#head = conn;
    this.size++;
  }

  delete(conn: Connection): void {
    if (conn.prev) conn.prev.next = conn.next;
    else if (this.#head === conn) this.#head = conn.next;
    else return; // not in the list
    if (conn.next) conn.next.prev = conn.prev;
    conn.prev = undefined;
    conn.next = undefined;
    this.size--;
  }

  *[Symbol.iterator](): IterableIterator<Connection> {
    // Read `next` before yielding: the caller may destroy the connection, unlinking it.
    for (let conn = this.#head; conn; ) {
      const next = conn.next;
      yield conn;
      conn = next;
    }
  }
}

export class TcpService implements Service {
  readonly name: string;
  readonly #handler: ConnectionHandler;
  readonly #server: Server;
  readonly #target: ListenTarget | undefined;
  readonly #shutdownTimeout: number;
  /** Aborted once the service starts closing; what `ctx.signal` becomes after that. */
  readonly #closing = new AbortController();
  readonly #connections = new ConnectionList();
  /**
   * Under TLS: accepted sockets whose handshake has not finished. A handler runs on the TLS
   * socket ('secureConnection'); until then the connection is only this, and its client has sent
   * no data yet, so a close ends it at once, as the closed listener refuses a new one.
   */
  readonly #handshaking: Set<Socket> | undefined;
  readonly #lifecycle: Lifecycle;

  readonly #maxWriteBuffer: number;
  /** Undefined when `maxWriteBuffer` is Infinity: no socket is guarded. */
  readonly #guard: WriteGuard | undefined;
  #busy = 0;
  #count = 0;
  #errors = 0;
  #dropped = 0;
  #overflows = 0;
  #peerErrors = 0;
  readonly #listener: Listener;
  #activity: ActivitySink | undefined;

  constructor(options: TcpServiceOptions) {
    validateObject(options, 'TcpService options');
    rejectUnknownKeys(options, 'TcpService', KNOWN_OPTIONS);
    this.#handler = validateFunction<ConnectionHandler>(options.handler, 'handler');
    this.name = optional(options.name, TCP_SERVICE_DEFAULTS.name, (v) => validateString(v, 'name'));
    this.#shutdownTimeout = optional(
      options.shutdownTimeout,
      TCP_SERVICE_DEFAULTS.shutdownTimeout,
      (v) => validateDuration(v, 'shutdownTimeout'),
    );
    const maxConnections = optional(
      options.maxConnections,
      TCP_SERVICE_DEFAULTS.maxConnections,
      (v) => validateInteger(v, 'maxConnections', { min: 1 }),
    );
    this.#maxWriteBuffer = optional(
      options.maxWriteBuffer,
      TCP_SERVICE_DEFAULTS.maxWriteBuffer,
      (v) =>
        v === Number.POSITIVE_INFINITY ? v : validateInteger(v, 'maxWriteBuffer', { min: 1 }),
    );
    this.#guard =
      this.#maxWriteBuffer === Number.POSITIVE_INFINITY
        ? undefined
        : { limit: this.#maxWriteBuffer, overflow: (conn) => this.#overflow(conn) };
    this.#target = parseListenTarget(options, 'TcpService');
    const connection = parseConnection(options, this.#target, 'TcpService');
    const server =
      options.server === undefined
        ? undefined
        : validateInstance(options.server, 'server', Server, 'a net.Server');
    requirePlace('TcpService', { target: this.#target, server, connection });
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    const registry = options.registry === undefined ? defaultRegistry : options.registry;

    this.#server = server ?? createServer();
    if (Number.isFinite(maxConnections)) this.#server.maxConnections = maxConnections;
    if (this.#server instanceof TlsServer) {
      const handshaking = new Set<Socket>();
      this.#handshaking = handshaking;
      this.#server.on('connection', (raw: Socket) => {
        raw.on('error', noop);
        handshaking.add(raw);
        raw.on('close', () => {
          if (handshaking.delete(raw)) this.#lifecycle.poke();
        });
      });
      this.#server.on('secureConnection', (socket: Socket) => {
        // The accepted socket under a TLS socket is its `_parent` (Node's own name, long stable);
        // if that ever changes, the entry goes at the accepted socket's 'close' instead.
        const raw = (socket as Socket & { _parent?: Socket })._parent;
        if (raw) handshaking.delete(raw);
        this.#onConnection(socket);
      });
    } else {
      this.#server.on('connection', (socket: Socket) => this.#onConnection(socket));
    }
    this.#server.on('drop', () => this.#dropped++);
    this.#lifecycle = new Lifecycle(
      () => this.#isIdle(),
      signal,
      () => this.close(),
    );
    this.#listener = new Listener({
      name: this.name,
      component: 'tcp',
      server: this.#server,
      target: this.#target,
      lifecycle: this.#lifecycle,
      onFailure: (error) => void this.destroy(error),
      connection,
      onConnectionEnded: () => void this.close(),
    });
    if (registry) exportStats(registry, this.name, () => this.stats, TCP_METRICS);
  }

  get state(): ServiceState {
    return this.#lifecycle.state;
  }

  get closed(): Promise<void> {
    return this.#lifecycle.closed;
  }

  get stats(): TcpStats {
    return {
      busy: this.#busy,
      count: this.#count,
      error: this.#errors,
      listening: this.#listener.listening ? 1 : 0,
      address: this.#listener.address,
      open: this.#connections.size,
      dropped: this.#dropped,
      acceptErrors: this.#listener.acceptErrors,
      overflows: this.#overflows,
      peerErrors: this.#peerErrors,
    };
  }

  /** The bound address, for reading an ephemeral port after `start()` with `port: 0`. */
  address(): ReturnType<Server['address']> {
    return this.#server.address();
  }

  start(): Promise<void> {
    return this.#listener.start();
  }

  /** From now on, each connection's handler counts as activity for `sink` while it runs. */
  trackActivity(sink: ActivitySink): void {
    this.#activity = sink;
  }

  /** Stops accepting connections (the listening socket closes); `close()` does the rest. */
  stopAccepting(): void {
    this.#listener.stop();
  }

  close(options: CloseOptions = {}): Promise<void> {
    const timeout = optional(options.timeout, this.#shutdownTimeout, (v) =>
      validateDuration(v, 'timeout'),
    );
    return this.#lifecycle.close(() => this.#drain(timeout));
  }

  destroy(error?: Error): Promise<void> {
    return this.#lifecycle.destroy(() => {
      this.#listener.stop();
      const reason = error ?? new ServiceDestroyedError(`${this.name} was destroyed`);
      const live = this.#connections.size + this.#busy;
      this.#abortAll(reason);
      this.#destroyAll();
      this.#publishClose(error);
      return error ?? (live > 0 ? reason : undefined);
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** The graceful path: returns the error to settle `close()`/`closed` with, if any. */
  async #drain(timeout: number): Promise<Error | undefined> {
    // A start under way finishes first, so there is a listener to close.
    await this.#listener.started();
    this.#listener.stop();
    if (this.#handshaking) for (const raw of this.#handshaking) raw.destroy();
    this.#abortAll(new ServiceClosingError(`${this.name} is closing`));
    const finished = await this.#lifecycle.waitUntilIdle(timeout);
    let error: Error | undefined;
    if (!finished) {
      const remaining = this.#connections.size;
      error = new ShutdownTimeoutError(this.name, timeout, Math.max(remaining, this.#busy));
      this.#destroyAll();
    }
    this.#publishClose(error);
    return error;
  }

  #isIdle(): boolean {
    return this.#busy === 0 && this.#connections.size === 0 && !this.#handshaking?.size;
  }

  #destroyAll(): void {
    for (const conn of this.#connections) conn.socket.destroy();
    if (this.#handshaking) for (const raw of this.#handshaking) raw.destroy();
  }

  #abortAll(reason: Error): void {
    this.#closing.abort(reason);
    for (const conn of this.#connections) conn.controller?.abort(reason);
  }

  #publishClose(error: Error | undefined): void {
    if (closeChannel.hasSubscribers)
      closeChannel.publish({ service: this.name, error, stats: this.stats });
  }

  #onConnection(socket: Socket): void {
    // Never let a reset or a write after the peer left become an uncaught 'error'.
    socket.on('error', noop);
    const state = this.#lifecycle.state;
    if (state === 'closed') {
      socket.destroy();
      return;
    }
    const conn = new Connection(++this.#count, socket, this.name, this.#closing.signal);
    if (this.#guard) this.#guardWrites(conn, this.#guard);
    this.#connections.add(conn);
    this.#busy++;
    conn.activity = this.#activity?.begin();
    // 'close' comes once: `on`, not `once`, which would wrap the listener in three more objects;
    // and one listener for both jobs (a third listener grows the socket's listener array).
    socket.on('close', () => {
      this.#connections.delete(conn);
      if (conn.runsUntilClose) this.#handlerReturned(conn, false);
      else this.#lifecycle.poke();
    });
    if (connectionChannel.hasSubscribers) {
      connectionChannel.publish({ service: this.name, id: conn.id, socket });
    }

    let result: unknown;
    try {
      result = this.#handler(socket, conn);
    } catch (err) {
      this.#handlerFailed(conn, err);
      return;
    }
    if (isPromiseLike(result)) {
      result.then(
        () => this.#handlerReturned(conn),
        (err: unknown) => this.#handlerFailed(conn, err),
      );
    } else if (socket.destroyed) {
      this.#handlerReturned(conn);
    } else {
      // An event-style handler owns the connection until it closes (the 'close' listener above).
      conn.runsUntilClose = true;
    }
  }

  #handlerReturned(conn: Connection, endSocket = true): void {
    this.#busy--;
    conn.activity?.end();
    // Flush what the handler wrote, send FIN, and let go of the descriptor.
    if (endSocket && !conn.socket.destroyed) conn.socket.destroySoon();
    this.#lifecycle.poke();
  }

  #handlerFailed(conn: Connection, err: unknown): void {
    this.#busy--;
    conn.activity?.end();
    const socket = conn.socket;
    if (conn.overflowed) {
      // Counted and published as the overflow; the handler only met the destroyed socket.
    } else if (err !== undefined && err !== null && err === socket.errored) {
      // The connection's own error (a reset, a broken pipe) came out of the handler: the peer
      // left, which any client can do; not a bug in the handler.
      this.#peerErrors++;
      if (peerErrorChannel.hasSubscribers) {
        peerErrorChannel.publish({ service: this.name, id: conn.id, error: err });
      }
    } else {
      this.#errors++;
      if (errorChannel.hasSubscribers) {
        errorChannel.publish({ service: this.name, id: conn.id, error: err });
      }
    }
    socket.destroy();
    this.#lifecycle.poke();
  }

  /** Makes the socket's `write` check its unsent bytes against `maxWriteBuffer`. */
  #guardWrites(conn: Connection, guard: WriteGuard): void {
    const socket = conn.socket as GuardedSocket;
    conn.guard = guard;
    if (socket.write === writableWrite) {
      socket[kConnection] = conn;
      socket.write = guardedWrite as Socket['write'];
    } else {
      // A socket class with a write of its own (not Node's): wrap that one.
      const own = socket.write;
      socket.write = function (this: Socket, ...args: unknown[]): boolean {
        const ok = Reflect.apply(own, this, args) as boolean;
        if (!ok) conn.checkWriteBuffer();
        return ok;
      } as Socket['write'];
    }
  }

  #overflow(conn: Connection): void {
    conn.overflowed = true;
    this.#overflows++;
    const socket = conn.socket;
    const error = new WriteBufferFullError(this.name, socket.writableLength, this.#maxWriteBuffer);
    conn.controller?.abort(error);
    if (overflowChannel.hasSubscribers) {
      overflowChannel.publish({
        service: this.name,
        id: conn.id,
        bytes: socket.writableLength,
        limit: this.#maxWriteBuffer,
        error,
      });
    }
    socket.destroy();
  }
}
