/**
 * One connection that a service manager accepted for us: systemd's `Accept=yes` (the connected
 * socket is fd 3, named `connection`) and the inetd style (`StandardInput=socket`: fd 0 and 1).
 * `acceptedConnection()` wraps the descriptor as a `net.Socket`; `serveOneConnection()` hands it
 * to a server (`net.Server`, `http.Server`, ...) as if that server had accepted it, so the
 * server's own handler, timeouts and drain apply, and reports when the connection has ended.
 */

import { Server as NetServer, Socket } from 'node:net';
import { NotAConnectionError } from '../errors.js';
import {
  optional,
  rejectUnknownKeys,
  validateBoolean,
  validateInstance,
  validateInteger,
  validateObject,
} from '../options.js';
import { CONNECTION_FD_NAME, LISTEN_FDS_START, type ListenFd } from './listen-fds.js';
import { inspectSocket, type SocketKind } from './socket-kind.js';

export interface AcceptedConnectionOptions {
  /** The connected descriptor. @default 3, or 0 when `inetd` */
  fd?: number;
  /**
   * inetd style: the connection is on fd 0 (and 1), and no `LISTEN_*` variables are set. In this
   * mode stdout is the connection: write logs to stderr. @default false
   */
  inetd?: boolean;
  /** Where to read `REMOTE_ADDR`/`REMOTE_PORT` (set by systemd for Accept=yes). @default process.env */
  env?: Record<string, string | undefined>;
  /**
   * Check through /proc that the fd is a connected socket, and throw `NotAConnectionError` when it
   * plainly is not (a listener, a file, nothing). An fd /proc cannot place is trusted. @default true
   */
  check?: boolean;
}

export interface AcceptedConnection {
  /** The connection, readable and writable, ready to hand to a server. */
  readonly socket: Socket;
  readonly fd: number;
  /** The peer's address: the socket's own, else systemd's `REMOTE_ADDR` (unix sockets have none). */
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  /** What `inspectSocket()` said of the fd before it was wrapped (`unknown` when not checked). */
  readonly kind: SocketKind;
}

export const ACCEPTED_CONNECTION_DEFAULTS = Object.freeze({
  fd: LISTEN_FDS_START, // Accept=yes passes the connection as the first listen fd
  inetdFd: 0, // inetd style: standard input
  check: true,
});

const KNOWN_OPTIONS = ['fd', 'inetd', 'env', 'check'] as const;

const WHY: Partial<Record<SocketKind, string>> = {
  listening:
    'is a listening socket (the unit has Accept=no): adopt it with listenFds() and listen({ fd })',
  other: 'is a socket that is not a connected stream (a datagram or unconnected socket)',
  'not-a-socket': 'is not a socket',
  closed: 'is not open (was the process started with exec by the service manager?)',
};

/**
 * Wraps the connection a service manager accepted for this process as a `net.Socket`.
 *
 * @example
 * // Accept=yes: one process per connection, which exits when it is served.
 * const conn = acceptedConnection();
 * await serveOneConnection(httpServer, conn.socket);
 */
export function acceptedConnection(options: AcceptedConnectionOptions = {}): AcceptedConnection {
  validateObject(options, 'acceptedConnection options');
  rejectUnknownKeys(options, 'acceptedConnection', KNOWN_OPTIONS);
  const inetd = optional(options.inetd, false, (v) => validateBoolean(v, 'inetd'));
  const fd = optional(
    options.fd,
    inetd ? ACCEPTED_CONNECTION_DEFAULTS.inetdFd : ACCEPTED_CONNECTION_DEFAULTS.fd,
    (v) => validateInteger(v, 'fd', { min: 0 }),
  );
  const env = optional(options.env, process.env, (v) =>
    validateObject<Record<string, string | undefined>>(v, 'env'),
  );
  const check = optional(options.check, ACCEPTED_CONNECTION_DEFAULTS.check, (v) =>
    validateBoolean(v, 'check'),
  );

  let kind: SocketKind = 'unknown';
  if (check) {
    kind = inspectSocket(fd).kind;
    const why = WHY[kind];
    if (why) throw new NotAConnectionError(fd, `fd ${fd} ${why}`);
  }
  let socket: Socket;
  try {
    // Without readable/writable, Node wraps a passed fd as a socket that can do neither.
    socket = new Socket({ fd, readable: true, writable: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new NotAConnectionError(fd, `fd ${fd} cannot be wrapped as a socket: ${code}`, {
      cause: err,
    });
  }
  const envPort = env.REMOTE_PORT === undefined ? undefined : Number(env.REMOTE_PORT);
  return Object.freeze({
    socket,
    fd,
    remoteAddress: socket.remoteAddress ?? env.REMOTE_ADDR,
    remotePort: socket.remotePort ?? (Number.isInteger(envPort) ? (envPort as number) : undefined),
    kind,
  });
}

const trackingOn = new WeakSet<NetServer>();

/** http.Server and https.Server track their connections; a plain net.Server does not. */
function tracksConnections(server: NetServer): boolean {
  return typeof (server as { closeIdleConnections?: unknown }).closeIdleConnections === 'function';
}

/**
 * Makes `server` handle `socket` as a connection it accepted itself (its `'connection'` event),
 * and resolves once that connection has closed. The server needs no listener.
 *
 * An `http.Server` (or `https.Server`) that never listened does not track its connections, so
 * `headersTimeout`, `requestTimeout` and `closeIdleConnections()` would silently do nothing and a
 * slow client could hold the process forever. Node turns tracking on when the server emits
 * `'listening'`; this emits it first, once, for such servers (other `'listening'` listeners see
 * it too, with `server.listening` still false). The server's timeout checker then runs until
 * `server.close()`: close the server when done, as for any server.
 *
 * The returned promise never rejects: a connection that fails simply closes.
 *
 * @example
 * const server = http.createServer(app);
 * await serveOneConnection(server, acceptedConnection().socket);
 * server.close();
 */
export function serveOneConnection(server: NetServer, socket: Socket): Promise<void> {
  validateInstance(server, 'server', NetServer, 'a net.Server (or http.Server)');
  validateInstance(socket, 'socket', Socket, 'a net.Socket');
  if (socket.destroyed) return Promise.resolve();
  const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  if (!server.listening && tracksConnections(server) && !trackingOn.has(server)) {
    trackingOn.add(server);
    server.emit('listening');
  }
  server.emit('connection', socket);
  return ended;
}

/**
 * Whether a passed fd is a connection (Accept=yes) rather than a listener (Accept=no). What /proc
 * says decides; when it cannot say (`unknown`), the fd's name does: systemd names an Accept=yes
 * connection `connection`. (`systemd-socket-activate -a` sets no names, but /proc knows its fds.)
 */
export function isConnectionFd(
  listenFd: ListenFd,
  kind: SocketKind = inspectSocket(listenFd.fd).kind,
): boolean {
  if (kind === 'connected') return true;
  if (kind === 'unknown') return listenFd.name === CONNECTION_FD_NAME;
  return false;
}
