/**
 * `HttpService`: an HTTP/1.1, HTTPS or HTTP/2 server whose close loses no request a client has
 * already sent. The drain follows ../../docs/http-service.md (and the measurements behind it):
 * readiness first, then the listener closes, every response not yet sent says
 * `Connection: close`, a keep-alive socket with no request in flight is closed only after a
 * short idle grace, HTTP/2 sessions get GOAWAY and finish their streams, upgraded sockets are
 * told through a signal, and at the deadline whatever remains is destroyed.
 */

import { channel } from 'node:diagnostics_channel';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type TlsOptions, Server as TlsServer } from 'node:tls';
import type { Registry } from 'prom-client';
import {
  HookTimeoutError,
  InvalidOptionError,
  ServiceClosingError,
  ServiceDestroyedError,
  ServiceFailedError,
  ShutdownTimeoutError,
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
import {
  defaultRegistry,
  exportHistogram,
  exportStats,
  HistogramCells,
  type StatMetric,
} from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateBoolean,
  validateDuration,
  validateFunction,
  validateInstance,
  validateInteger,
  validateObject,
  validateString,
} from '../options.js';
import {
  type ActivitySink,
  type CloseOptions,
  isService,
  type Service,
  type ServiceState,
} from '../service.js';
import { isPromiseLike, noop } from '../util.js';

type AnyRequest = IncomingMessage | http2.Http2ServerRequest;
type AnyResponse = ServerResponse | http2.Http2ServerResponse;

/**
 * A Node request listener, as `http.createServer()` takes: Express, Koa's `app.callback()` and
 * framework adapters fit as they are. It may return a promise; a rejection is handled like a
 * throw (500 if nothing was sent yet, else the connection is cut).
 */
// biome-ignore lint/suspicious/noExplicitAny: request listeners are typed by their frameworks
export type RequestHandler = (req: any, res: any) => unknown;

/** What an upgrade handler learns besides the request, socket and head. */
export interface UpgradeContext {
  /** Aborted when the service begins to close: close the upgraded connection politely. */
  readonly signal: AbortSignal;
}

export type UpgradeHandler = (
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  ctx: UpgradeContext,
) => void;

/** The Node servers an `HttpService` can serve. */
export type NodeHttpServer =
  | http.Server
  | https.Server
  | http2.Http2Server
  | http2.Http2SecureServer;

/**
 * A framework app that owns its Node server and has a shutdown of its own: a fastify instance as
 * it is. berth knows the shape, not the framework (it imports none): an object whose `server` is
 * a Node server and that has `close()`, and may have `ready()`. `start()` awaits `ready()` before
 * listening; `close()` drains `server` the berth way, then awaits the app's `close()` (fastify's
 * `onClose` hooks) within what is left of the timeout. Another framework that owns a server
 * fits with three lines, e.g. NestJS:
 * `{ server: app.getHttpServer(), ready: () => app.init(), close: () => app.close() }`.
 */
export interface HttpApp {
  /** The server the app made and handles requests on; berth makes it listen unless it does. */
  readonly server: NodeHttpServer;
  /** Resolves once the app can serve (fastify: its plugins have loaded). */
  ready?(): PromiseLike<unknown>;
  /**
   * The app's own shutdown, called once its server has drained: no request is in flight, so a
   * framework that answers 503 while closing (fastify does) has nothing left to answer.
   */
  close(): PromiseLike<unknown>;
}

/** True for an app that owns its server (see `HttpApp`): fastify's instance, by its shape. */
export function isHttpApp(value: unknown): value is HttpApp {
  if (typeof value !== 'object' || value === null || isService(value)) return false;
  const app = value as Record<string, unknown>;
  return (
    app.server instanceof NetServer &&
    typeof app.close === 'function' &&
    (app.ready === undefined || typeof app.ready === 'function')
  );
}

export interface HttpServiceOptions extends Partial<PortTarget & PathTarget & FdTarget> {
  /** Handles each request. Optional when `server` already has its own 'request' listener. */
  handler?: RequestHandler;
  /**
   * Serve this server instead of creating one: an `http.Server`, `https.Server`, or an
   * `http2` server (secure or not); or an app that owns its server and its shutdown, such as a
   * fastify instance (`HttpApp`). If it is not listening, give `port`, `path` or `fd` too.
   */
  server?: NodeHttpServer | HttpApp;
  /** Serve HTTPS (or HTTP/2 over TLS with `http2`): key, cert, ca, ... as `tls` takes them. */
  tls?: TlsOptions;
  /** Serve HTTP/2: over TLS with `tls` (HTTP/1.1 also accepted, by ALPN), else cleartext h2c. */
  http2?: boolean;
  /** Handles `Upgrade:` requests (WebSocket); the socket is tracked and drained. */
  upgrade?: UpgradeHandler;
  /** Unique within a runner; the `service` label of every metric. @default 'http' */
  name?: string;
  /** Default for `close()`'s `timeout`. @default 5000 (5 s) */
  shutdownTimeout?: number;
  /**
   * Once a drain begins, how long a keep-alive socket with no request in flight stays open, so a
   * request already on the wire is still read and answered. @default 1000 (1 s)
   */
  idleGrace?: number;
  /** Node's `server.keepAliveTimeout`. @default 5000 (Node's) */
  keepAliveTimeout?: number;
  /** Node's `server.headersTimeout`. @default 60000 (Node's) */
  headersTimeout?: number;
  /** Node's `server.requestTimeout`. @default 300000 (Node's) */
  requestTimeout?: number;
  /** Connections beyond this many open ones are closed at once and counted under `dropped`. */
  maxConnections?: number;
  /** When it aborts, the service closes. */
  signal?: AbortSignal;
  /**
   * Serve this one already-accepted connection instead of listening (systemd Accept=yes, inetd:
   * see `acceptedConnection()`), with the usual timeouts; the service closes once it has ended.
   */
  connection?: Socket;
  /** Where metrics go; `null` for none. @default prom-client's global registry */
  registry?: Registry | null;
}

/** Response counts by status class. */
export interface StatusClasses {
  '1xx': number;
  '2xx': number;
  '3xx': number;
  '4xx': number;
  '5xx': number;
}

export interface HttpStats {
  /** Requests in flight now. */
  busy: number;
  /** Connections accepted since the service was made. */
  count: number;
  /** Handlers that threw or rejected. */
  error: number;
  /** 1 while listening, else 0. */
  listening: 0 | 1;
  address: string;
  /** Connections open now (HTTP/1 sockets, HTTP/2 sessions' sockets, upgraded sockets). */
  open: number;
  /** Requests received since the service was made. */
  requests: number;
  /** Responses completed, by status class. */
  responses: StatusClasses;
  /** Requests whose connection closed before their response completed. */
  aborted: number;
  /** Upgraded (WebSocket) connections open now. */
  upgraded: number;
  /** Connections closed at once because `maxConnections` were open. */
  dropped: number;
  /** Errors accepting connections that Node reported: counted, not fatal (docs/diagnostics.md). */
  acceptErrors: number;
}

export const HTTP_SERVICE_DEFAULTS = Object.freeze({
  name: 'http',
  shutdownTimeout: 5_000, // 5 s
  idleGrace: 1_000, // 1 s: measured to close the keep-alive race (docs/http-service.md)
});

const KNOWN_OPTIONS = [
  'handler',
  'server',
  'tls',
  'http2',
  'upgrade',
  'name',
  'shutdownTimeout',
  'idleGrace',
  'keepAliveTimeout',
  'headersTimeout',
  'requestTimeout',
  'maxConnections',
  'signal',
  'registry',
  'connection',
  ...LISTEN_KEYS,
] as const;

const errorChannel = channel('berth:http:error');
const drainChannel = channel('berth:http:drain');
const closeChannel = channel('berth:http:close');

const HTTP_METRICS: readonly StatMetric<HttpStats>[] = [
  {
    name: 'berth_http_requests_in_flight',
    help: 'HTTP requests in flight.',
    type: 'gauge',
    read: (s) => s.busy,
  },
  {
    name: 'berth_http_requests_total',
    help: 'HTTP requests received.',
    type: 'counter',
    read: (s) => s.requests,
  },
  {
    name: 'berth_http_responses_total',
    help: 'HTTP responses completed, by status class.',
    type: 'counter',
    label: 'class',
    read: (s) => s.responses as unknown as Record<string, number>,
  },
  {
    name: 'berth_http_requests_aborted_total',
    help: 'Requests whose connection closed before the response completed.',
    type: 'counter',
    read: (s) => s.aborted,
  },
  {
    name: 'berth_http_handler_errors_total',
    help: 'Request handlers that threw or rejected.',
    type: 'counter',
    read: (s) => s.error,
  },
  {
    name: 'berth_http_connections_total',
    help: 'HTTP connections accepted.',
    type: 'counter',
    read: (s) => s.count,
  },
  {
    name: 'berth_http_open_connections',
    help: 'HTTP connections open now.',
    type: 'gauge',
    read: (s) => s.open,
  },
  {
    name: 'berth_http_upgraded_connections',
    help: 'Upgraded (WebSocket) connections open now.',
    type: 'gauge',
    read: (s) => s.upgraded,
  },
  {
    name: 'berth_http_listening',
    help: '1 while the listener is open.',
    type: 'gauge',
    read: (s) => s.listening,
  },
  {
    name: 'berth_http_dropped_total',
    help: 'Connections closed at once over maxConnections.',
    type: 'counter',
    read: (s) => s.dropped,
  },
  {
    name: 'berth_http_accept_errors_total',
    help: 'Errors accepting connections (EMFILE, ENFILE, ...), counted and survived.',
    type: 'counter',
    read: (s) => s.acceptErrors,
  },
];

/**
 * The most of a request body its handler left unread that is discarded to keep the connection
 * for the next request, as Go's net/http does (256 KiB). Past it, or when the length is not
 * declared, the connection closes after the response instead.
 */
export const MAX_UNREAD_BODY = 262_144;

/** How long a connection closed on an unread body stays half-open before it is destroyed. */
const LINGER_MS = 500;

/**
 * A response ended before its request's body was read whole. Node would read and throw away
 * the rest to keep the connection, however large: a client could make the server read
 * gigabytes. Up to `MAX_UNREAD_BODY` declared, Node does that; otherwise the connection ends
 * after the response (FIN), stops reading, and is destroyed `LINGER_MS` later: the client has
 * that long to read the response before unread input makes the close a reset, which could lose
 * it (Go's rule and its 500 ms wait, `closeWriteAndWait`).
 * Only HTTP/1; an HTTP/2 stream's unread body is the session's flow control's business.
 */
function leaveUnreadBody(req: IncomingMessage, socket: Socket): void {
  // Node marks a body it has started to throw away (`_dumped`, since 0.x): a handler that still
  // reads its body after answering (an upload acknowledged early) is left alone.
  if ((req as IncomingMessage & { _dumped?: boolean })._dumped !== true) return;
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) <= MAX_UNREAD_BODY) return;
  socket.end();
  socket.pause(); // what is still coming waits in the kernel: nothing more is read
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
}

/** The status class of slot `n` (a status code divided by 100); slot 0 is never used. */
const CLASSES = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** Duration buckets (seconds): prom-client's defaults, which fit request latencies. */
const DURATION_BUCKETS = Object.freeze([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]);

/** Per HTTP/1 socket: requests in flight on it, and its idle-grace timer while draining. */
interface SocketState {
  inflight: number;
  /**
   * The newest response in flight: the one a drain marks `Connection: close`. Node writes a
   * connection's responses in order, so any pipelined before it still go out first.
   */
  current: AnyResponse | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  /** `performance.now()` when the socket last had nothing in flight (accepted, or a response ended). */
  idleSince: number;
  /** `bytesRead` at `idleSince`: more bytes since means a request is arriving. */
  bytesAtIdle: number;
  /**
   * A drain gave this socket a second grace because bytes of a request were arriving; it gets no
   * third: a client that trickles a header a line at a time must not hold the drain to its end.
   */
  extended: boolean;
}

const kState = Symbol('berth.http.socket');
type TrackedSocket = Socket & { [kState]?: SocketState };

/** Node keeps an interval that checks request timeouts; only `http.Server#close` clears it. */
function clearConnectionsCheck(server: NetServer): void {
  const key = Object.getOwnPropertySymbols(server).find(
    (s) => s.description === 'http.server.connectionsCheckingInterval',
  );
  if (key) clearInterval((server as unknown as Record<symbol, NodeJS.Timeout>)[key]);
}

export class HttpService implements Service {
  readonly name: string;
  readonly #server: NodeHttpServer;
  /** The app that owns `#server`, when one was given: readied before listening, closed after. */
  readonly #app: HttpApp | undefined;
  /** The app's `ready()`, once `start()` has called it. */
  #appReady: Promise<void> | undefined;
  /** The app's `close()`, once called: at most once, by the drain or a destroy. */
  #appClosed: Promise<unknown> | undefined;
  readonly #handler: RequestHandler | undefined;
  readonly #upgrade: UpgradeHandler | undefined;
  readonly #target: ListenTarget | undefined;
  readonly #shutdownTimeout: number;
  readonly #idleGrace: number;
  readonly #lifecycle: Lifecycle;
  /** Request durations by status class (slots 1 to 5), when metrics are on. */
  readonly #durations: HistogramCells | undefined;
  /** Aborted when the drain begins; what upgrade handlers watch. */
  readonly #closing = new AbortController();

  /** Every accepted connection (raw TCP sockets, also under TLS), for counting and the deadline. */
  readonly #connections = new Set<Socket>();
  /** HTTP/1 sockets as the HTTP layer sees them (TLS sockets under HTTPS). */
  readonly #httpSockets = new Set<TrackedSocket>();
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  readonly #upgraded = new Set<Duplex>();
  /** Responses in flight, so the drain can mark each `Connection: close`. */
  /** Requests in flight, HTTP/1 and HTTP/2. */
  #busy = 0;

  /** A cleartext HTTP/2 server (prior knowledge): every connection is a session. */
  readonly #h2c: boolean;
  /** Under TLS an HTTP socket is a TLS socket over the accepted one: two sockets to track. */
  readonly #tls: boolean;
  /**
   * The one 'close' listener of every socket tracked, shared rather than a closure (or a `once`
   * wrapper) per socket: Node calls it with the socket as `this`.
   */
  readonly #onSocketClose: (this: TrackedSocket) => void;
  #draining = false;
  #activity: ActivitySink | undefined;
  #count = 0;
  #requests = 0;
  #errors = 0;
  #aborted = 0;
  #dropped = 0;
  readonly #classes = [0, 0, 0, 0, 0, 0];
  readonly #listener: Listener;

  constructor(options: HttpServiceOptions) {
    validateObject(options, 'HttpService options');
    rejectUnknownKeys(options, 'HttpService', KNOWN_OPTIONS);
    this.name = optional(options.name, HTTP_SERVICE_DEFAULTS.name, (v) =>
      validateString(v, 'name'),
    );
    if (isHttpApp(options.handler)) {
      throw new InvalidOptionError(
        'handler',
        'handler must be a request listener; an app that owns its server (fastify) goes in server',
      );
    }
    this.#handler = optional(options.handler, undefined, (v) =>
      validateFunction<RequestHandler>(v, 'handler'),
    );
    this.#upgrade = optional(options.upgrade, undefined, (v) =>
      validateFunction<UpgradeHandler>(v, 'upgrade'),
    );
    this.#shutdownTimeout = optional(
      options.shutdownTimeout,
      HTTP_SERVICE_DEFAULTS.shutdownTimeout,
      (v) => validateDuration(v, 'shutdownTimeout'),
    );
    this.#idleGrace = optional(options.idleGrace, HTTP_SERVICE_DEFAULTS.idleGrace, (v) =>
      validateDuration(v, 'idleGrace'),
    );
    const maxConnections = optional(options.maxConnections, undefined, (v) =>
      validateInteger(v, 'maxConnections', { min: 1 }),
    );
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    const useHttp2 = optional(options.http2, false, (v) => validateBoolean(v, 'http2'));
    const tlsOptions = optional(options.tls, undefined, (v) =>
      validateObject<TlsOptions>(v, 'tls'),
    );
    this.#target = parseListenTarget(options, 'HttpService');
    const connection = parseConnection(options, this.#target, 'HttpService');

    this.#app = isHttpApp(options.server) ? options.server : undefined;
    if (options.server !== undefined) {
      const given = validateInstance(
        this.#app ? this.#app.server : options.server,
        'server',
        NetServer,
        'an http, https or http2 server, or an app that owns one (an object with server and close, as fastify is)',
      );
      if (tlsOptions || options.http2 !== undefined) {
        throw new ServiceFailedError(
          this.name,
          'give tls/http2 or a server, not both: the server already decides',
        );
      }
      requirePlace('HttpService', { target: this.#target, server: given, connection });
      if (!this.#handler && given.listenerCount('request') === 0) {
        throw new ServiceFailedError(
          this.name,
          'nothing handles requests: give handler, or a server with a request listener',
        );
      }
      this.#server = given as NodeHttpServer;
    } else {
      requirePlace('HttpService', { target: this.#target, server: undefined, connection });
      if (!this.#handler)
        throw new ServiceFailedError(this.name, 'handler must be a function, got undefined');
      if (useHttp2) {
        this.#server = tlsOptions
          ? http2.createSecureServer({ ...tlsOptions, allowHTTP1: true })
          : http2.createServer();
      } else {
        this.#server = tlsOptions ? https.createServer(tlsOptions) : http.createServer();
      }
    }

    const server = this.#server;
    // node:http2 does not export its server classes; the cleartext one is told by its name.
    this.#h2c = server.constructor.name === 'Http2Server';
    for (const key of ['keepAliveTimeout', 'headersTimeout', 'requestTimeout'] as const) {
      const value = optional(options[key], undefined, (v) => validateDuration(v, key));
      if (value !== undefined) (server as http.Server)[key] = value;
    }
    if (maxConnections !== undefined) server.maxConnections = maxConnections;

    const closed = (socket: TrackedSocket) => this.#socketClosed(socket);
    this.#onSocketClose = function (this: TrackedSocket) {
      closed(this);
    };
    server.on('connection', (socket: Socket) => this.#onConnection(socket));
    // Under TLS the HTTP layer works on the TLS socket, which exists only after the handshake.
    this.#tls = server instanceof TlsServer;
    const httpConnectionEvent = this.#tls ? 'secureConnection' : 'connection';
    server.on(httpConnectionEvent, (socket: Socket) => this.#onHttpSocket(socket));
    server.on('session', (session: http2.ServerHttp2Session) => this.#onSession(session));
    server.on('drop', () => this.#dropped++);
    // Ours must see each request before the application's own listeners, to count and mark it;
    // with a handler, one listener does both (a second listener costs every request).
    const handler = this.#handler;
    server.prependListener(
      'request',
      handler
        ? (req: AnyRequest, res: AnyResponse) => {
            this.#onRequest(req, res);
            this.#runHandler(req, res);
          }
        : (req: AnyRequest, res: AnyResponse) => this.#onRequest(req, res),
    );
    // Track upgraded sockets, but only once something handles upgrades: with no 'upgrade'
    // listener Node treats an upgrade request as an ordinary request, and ours must not change that.
    const trackUpgrades = () => {
      server.prependListener('upgrade', (_req: IncomingMessage, socket: Duplex) =>
        this.#onUpgrade(socket),
      );
    };
    if (server.listenerCount('upgrade') > 0) trackUpgrades();
    else {
      const onNewListener = (event: string | symbol) => {
        if (event !== 'upgrade') return;
        server.off('newListener', onNewListener);
        trackUpgrades();
      };
      server.on('newListener', onNewListener);
    }
    if (this.#upgrade)
      server.on('upgrade', (req, socket, head) => this.#runUpgrade(req, socket, head));
    this.#lifecycle = new Lifecycle(
      () => this.#isIdle(),
      signal,
      () => this.close(),
    );
    this.#listener = new Listener({
      name: this.name,
      component: 'http',
      server,
      target: this.#target,
      lifecycle: this.#lifecycle,
      onFailure: (error) => void this.destroy(error),
      connection,
      onConnectionEnded: () => void this.close(),
    });
    const registry = options.registry === undefined ? defaultRegistry : options.registry;
    if (registry) {
      exportStats(registry, this.name, () => this.stats, HTTP_METRICS);
      this.#durations = new HistogramCells(DURATION_BUCKETS, 6);
      exportHistogram(
        registry,
        {
          name: 'berth_http_request_duration_seconds',
          help: 'Time from request to the end of its response, by status class.',
        },
        this.name,
        this.#durations,
        (slot) => ({ class: CLASSES[slot]! }),
      );
    }
  }

  get state(): ServiceState {
    return this.#lifecycle.state;
  }

  get closed(): Promise<void> {
    return this.#lifecycle.closed;
  }

  /**
   * The underlying Node server (an app's own, when one was given), e.g. to attach a WebSocket
   * library's upgrade handling.
   */
  get server(): NodeHttpServer {
    return this.#server;
  }

  /** Aborted when the drain begins: long-lived work (SSE, WebSockets) should wind down. */
  get signal(): AbortSignal {
    return this.#closing.signal;
  }

  get stats(): HttpStats {
    const c = this.#classes;
    return {
      busy: this.#busy,
      count: this.#count,
      error: this.#errors,
      listening: this.#listener.listening ? 1 : 0,
      address: this.#listener.address,
      open: this.#connections.size,
      requests: this.#requests,
      responses: { '1xx': c[1]!, '2xx': c[2]!, '3xx': c[3]!, '4xx': c[4]!, '5xx': c[5]! },
      aborted: this.#aborted,
      upgraded: this.#upgraded.size,
      dropped: this.#dropped,
      acceptErrors: this.#listener.acceptErrors,
    };
  }

  address(): ReturnType<NetServer['address']> {
    return this.#server.address();
  }

  /** Listens, once; with an app, after its `ready()` has resolved. */
  start(): Promise<void> {
    const app = this.#app;
    if (!app?.ready) return this.#listener.start();
    this.#appReady ??= this.#readyApp(app);
    return this.#appReady.then(() => this.#listener.start());
  }

  async #readyApp(app: HttpApp): Promise<void> {
    try {
      await app.ready!();
    } catch (err) {
      const error = new ServiceFailedError(
        this.name,
        `the app's ready() failed: ${(err as Error)?.message ?? String(err)}`,
        { cause: err },
      );
      this.#lifecycle.fail(error);
      throw error;
    }
  }

  /** From now on, each request in flight and each open upgraded connection is activity for `sink`. */
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
      this.#draining = true;
      this.#listener.stop();
      const reason = error ?? new ServiceDestroyedError(`${this.name} was destroyed`);
      const live = this.#connections.size;
      this.#closing.abort(reason);
      this.#destroyAll();
      // The app's hooks are started, not waited for: a destroy is the hard stop.
      if (this.#app) void this.#closeApp(this.#app).catch(noop);
      this.#publishClose(error);
      return error ?? (live > 0 ? reason : undefined);
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #drain(timeout: number): Promise<Error | undefined> {
    const deadline = performance.now() + timeout;
    await this.#appReady?.catch(noop);
    await this.#listener.started();
    this.#draining = true;
    // 1. Stop taking connections. net.Server's own close, not http's: http.Server#close also
    //    reaps idle keep-alive sockets at once, which is the race this drain exists to avoid.
    this.#listener.stop();
    if (drainChannel.hasSubscribers) {
      drainChannel.publish({
        service: this.name,
        inflight: this.#busy,
        connections: this.#connections.size,
      });
    }
    // 2. Every HTTP/1 connection's response not yet sent tells its client to leave after it;
    // 3. sockets with nothing in flight get the idle grace; HTTP/2 sessions get GOAWAY.
    const now = performance.now();
    const longIdle: TrackedSocket[] = [];
    for (const socket of this.#httpSockets) {
      const state = socket[kState]!;
      if (state.current) this.#markLast(state.current);
      if (state.inflight > 0) continue;
      if (now - state.idleSince >= this.#idleGrace) longIdle.push(socket);
      else this.#startIdleGrace(socket);
    }
    if (longIdle.length > 0) this.#closeLongIdle(longIdle);
    for (const session of this.#sessions) session.close();
    // 4. Upgraded connections are told, and must close themselves before the deadline.
    this.#closing.abort(new ServiceClosingError(`${this.name} is closing`));

    const finished = await this.#lifecycle.waitUntilIdle(timeout);
    let error: Error | undefined;
    if (!finished && this.#lifecycle.state !== 'closed') {
      error = new ShutdownTimeoutError(this.name, timeout, this.#connections.size);
      this.#destroyAll();
    }
    this.#finish();
    // 5. The app's own shutdown (fastify's onClose hooks), now that nothing is in flight.
    if (this.#app) error ??= await this.#awaitApp(this.#app, deadline - performance.now());
    this.#publishClose(error);
    return error;
  }

  #closeApp(app: HttpApp): Promise<unknown> {
    this.#appClosed ??= Promise.resolve().then(() => app.close());
    return this.#appClosed;
  }

  /** Awaits the app's `close()` for at most `budget` ms; the error to close with, if any. */
  async #awaitApp(app: HttpApp, budget: number): Promise<Error | undefined> {
    const ms = Math.max(0, Math.round(budget));
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<Error>((resolve) => {
      timer = setTimeout(
        () => resolve(new HookTimeoutError(`${this.name}: the app's close()`, ms)),
        ms,
      );
    });
    const closed = this.#closeApp(app).then(
      () => undefined,
      (err: unknown) =>
        new ServiceFailedError(
          this.name,
          `the app's close() failed: ${(err as Error)?.message ?? String(err)}`,
          { cause: err },
        ),
    );
    try {
      return await Promise.race([closed, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  #isIdle(): boolean {
    return this.#connections.size === 0 && this.#busy === 0;
  }

  #destroyAll(): void {
    for (const session of this.#sessions) session.destroy();
    for (const socket of this.#upgraded) socket.destroy();
    for (const socket of this.#connections) socket.destroy();
    this.#finish();
  }

  /** Releases what only a full http.Server#close would: its request-timeout interval. */
  #finish(): void {
    for (const socket of this.#httpSockets) clearTimeout(socket[kState]!.idleTimer);
    clearConnectionsCheck(this.#server);
  }

  #publishClose(error: Error | undefined): void {
    if (closeChannel.hasSubscribers)
      closeChannel.publish({ service: this.name, error, stats: this.stats });
  }

  #onConnection(socket: Socket): void {
    this.#count++;
    this.#connections.add(socket);
    socket.on('close', this.#onSocketClose);
  }

  /**
   * A tracked socket closed: its client left, Node closed it, or it was destroyed. One that the
   * drain reaped was untracked already (`#reap`), and this finds nothing to do.
   */
  #socketClosed(socket: TrackedSocket): void {
    const state = socket[kState];
    if (state) {
      if (state.idleTimer !== undefined) clearTimeout(state.idleTimer);
      this.#httpSockets.delete(socket);
    }
    if (this.#connections.delete(socket)) this.#lifecycle.poke();
  }

  /**
   * Destroys an idle HTTP/1 socket and stops tracking it there and then, not at its 'close'
   * event: libuv closes the descriptor during `destroy()` (the event only reports it, a turn
   * later), which is also when `net.Server` counts a connection gone. Returns true when that
   * ended a tracked connection: the caller pokes the lifecycle, once for a batch. Under TLS the
   * accepted socket underneath is untracked at its own 'close'.
   */
  #reap(socket: TrackedSocket): boolean {
    socket.destroy();
    this.#httpSockets.delete(socket);
    return this.#connections.delete(socket);
  }

  #onHttpSocket(socket: TrackedSocket): void {
    // HTTP/2 connections are sessions, tracked as such: h2c servers speak nothing else, and a
    // TLS server hands a socket to HTTP/2 when ALPN chose h2.
    if (this.#h2c) return;
    if ((socket as Socket & { alpnProtocol?: string | false }).alpnProtocol === 'h2') return;
    socket[kState] = {
      inflight: 0,
      current: undefined,
      idleTimer: undefined,
      idleSince: performance.now(),
      bytesAtIdle: socket.bytesRead,
      extended: false,
    };
    this.#httpSockets.add(socket);
    // Without TLS this is the accepted socket, whose listener #onConnection added already.
    if (this.#tls) socket.on('close', this.#onSocketClose);
    // A connection that raced the listener's close is served like the rest: idle grace first.
    if (this.#draining) this.#startIdleGrace(socket);
  }

  #onSession(session: http2.ServerHttp2Session): void {
    this.#sessions.add(session);
    session.once('close', () => {
      this.#sessions.delete(session);
      this.#lifecycle.poke();
    });
    if (this.#draining) session.close();
  }

  #onUpgrade(socket: Duplex): void {
    // The socket leaves the HTTP layer: it is no longer a keep-alive socket to reap, and an idle
    // grace that was running for it (an Upgrade sent during the drain) must not reap it either.
    this.#httpSockets.delete(socket as TrackedSocket);
    const state = (socket as TrackedSocket)[kState];
    if (state?.idleTimer !== undefined) {
      clearTimeout(state.idleTimer);
      state.idleTimer = undefined;
    }
    this.#upgraded.add(socket);
    // An open WebSocket is activity for as long as it stays open.
    const activity = this.#activity?.begin();
    socket.once('close', () => {
      activity?.end();
      this.#upgraded.delete(socket);
      this.#lifecycle.poke();
    });
  }

  #runUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', noop);
    try {
      this.#upgrade!(req, socket, head, { signal: this.#closing.signal });
    } catch (err) {
      this.#errors++;
      socket.destroy();
      if (errorChannel.hasSubscribers) errorChannel.publish({ service: this.name, error: err });
    }
  }

  #onRequest(req: AnyRequest, res: AnyResponse): void {
    this.#requests++;
    this.#busy++;
    const activity = this.#activity?.begin();
    const socket = req.socket as TrackedSocket;
    const state = req.httpVersionMajor === 2 ? undefined : socket[kState];
    // Pipelined behind a response still in flight on its socket: if the socket dies first, Node
    // emits 'close' on this request but never on its response (measured on Node 20), so both
    // count; the response that holds the socket always gets its own 'close'.
    const queued = state !== undefined && state.inflight > 0;
    if (state) {
      state.inflight++;
      state.current = res;
      state.extended = false;
      if (state.idleTimer) {
        clearTimeout(state.idleTimer);
        state.idleTimer = undefined;
      }
    }
    if (this.#draining) this.#markLast(res);
    const started = performance.now();
    let settled = false;
    const done = () => {
      if (settled) return;
      settled = true;
      const ended = performance.now();
      this.#busy--;
      activity?.end();
      if (res.writableFinished) {
        const cls = (res.statusCode / 100) | 0;
        if (cls >= 1 && cls <= 5) {
          this.#classes[cls]!++;
          this.#durations?.observe(cls, (ended - started) / 1e3);
        }
        if (state && !req.complete) leaveUnreadBody(req as IncomingMessage, socket);
      } else {
        this.#aborted++;
      }
      if (state && --state.inflight === 0) {
        state.current = undefined;
        state.idleSince = ended;
        state.bytesAtIdle = socket.bytesRead;
        if (this.#draining && !socket.destroyed) this.#startIdleGrace(socket);
      }
      // Only a drain waits for the count to reach zero.
      if (this.#draining) this.#lifecycle.poke();
    };
    res.on('close', done);
    if (queued) req.on('close', done);
  }

  /** Makes this response the last on its HTTP/1 connection: `Connection: close`, then close. */
  #markLast(res: AnyResponse): void {
    if (!res.headersSent && 'shouldKeepAlive' in res) res.shouldKeepAlive = false;
  }

  /**
   * Sockets idle for longer than the grace when the drain began: one pass closes them all after
   * a whole event-loop turn (two immediates: the next poll phase reads whatever the kernel holds
   * for them), leaving the grace to any that received bytes meanwhile. They are untracked in the
   * same pass and the lifecycle is poked once, so the drain ends with the pass, not 5,000
   * 'close' events later.
   */
  #closeLongIdle(sockets: TrackedSocket[]): void {
    setImmediate(() =>
      setImmediate(() => {
        let reaped = false;
        for (const socket of sockets) {
          const state = socket[kState]!;
          if (state.inflight > 0 || socket.destroyed || !this.#httpSockets.has(socket)) continue;
          const bytesRead = socket.bytesRead;
          if (bytesRead !== state.bytesAtIdle && !state.extended) {
            state.extended = true;
            state.idleSince = performance.now();
            state.bytesAtIdle = bytesRead;
            this.#startIdleGrace(socket);
          } else if (this.#reap(socket)) {
            reaped = true;
          }
        }
        if (reaped) this.#lifecycle.poke();
      }),
    );
  }

  /**
   * Closes an idle socket once it has been idle for `idleGrace`, counted from when it last
   * became idle: a socket that just finished a response (whose client may have its next request
   * on the wire) waits the whole grace; one idle for longer closes after a single event-loop
   * turn, so that bytes already in the kernel are read first.
   */
  #startIdleGrace(socket: TrackedSocket): void {
    const state = socket[kState]!;
    clearTimeout(state.idleTimer);
    const wait = Math.max(1, this.#idleGrace - (performance.now() - state.idleSince));
    state.idleTimer = setTimeout(() => {
      state.idleTimer = undefined;
      if (state.inflight > 0 || socket.destroyed || !this.#httpSockets.has(socket)) return;
      // Bytes arrived: a request is being received. Give it a whole grace from now, once; its
      // response carries Connection: close and ends the connection. A request still not whole
      // after that is a client trickling its headers: it is reaped with the idle ones.
      if (socket.bytesRead !== state.bytesAtIdle && !state.extended) {
        state.extended = true;
        state.idleSince = performance.now();
        state.bytesAtIdle = socket.bytesRead;
        this.#startIdleGrace(socket);
        return;
      }
      if (this.#reap(socket)) this.#lifecycle.poke();
    }, wait);
  }

  #runHandler(req: AnyRequest, res: AnyResponse): void {
    let result: unknown;
    try {
      result = this.#handler!(req, res);
    } catch (err) {
      this.#handlerFailed(res, err);
      return;
    }
    if (isPromiseLike(result))
      result.then(undefined, (err: unknown) => this.#handlerFailed(res, err));
  }

  #handlerFailed(res: AnyResponse, err: unknown): void {
    this.#errors++;
    if (errorChannel.hasSubscribers) errorChannel.publish({ service: this.name, error: err });
    if (!res.headersSent) {
      res.statusCode = 500;
      res.setHeader('content-type', 'text/plain; charset=utf-8');
      res.end('Internal Server Error\n');
    } else {
      // Half a response cannot be mended: cut it so the client knows.
      res.destroy();
    }
  }
}
