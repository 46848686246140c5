/**
 * Where a service listens, and the one routine that makes a `net.Server` (or an `http.Server`,
 * which is one) listen there. Every service goes through `listenOn`, so every service reports a
 * taken address the same way and leaves nothing half-open when listening fails.
 */

import { type AddressInfo, type Server, Socket } from 'node:net';
import { AddressInUseError, InvalidOptionError, ListenError } from './errors.js';
import { describe, validateInteger, validatePort, validateString } from './options.js';

/** Listen on a TCP port; `host` defaults to every interface, as Node's does. */
export interface PortTarget {
  port: number;
  host?: string;
  /** Length of the kernel's accept queue. @default 511 (Node's) */
  backlog?: number;
  /** With host `::`, listen on IPv6 only. @default false */
  ipv6Only?: boolean;
}

/** Listen on a unix domain socket path (or a Linux abstract name starting with `\0`). */
export interface PathTarget {
  path: string;
  backlog?: number;
}

/** Adopt a socket that is already bound and listening, by its file descriptor. */
export interface FdTarget {
  fd: number;
}

export type ListenTarget = PortTarget | PathTarget | FdTarget;

/** The listen-target keys a service's options may carry. */
export const LISTEN_KEYS = ['port', 'host', 'backlog', 'ipv6Only', 'path', 'fd'] as const;

/**
 * Picks the listen target out of a service's options and checks it. Exactly one of `port`,
 * `path` or `fd` must be given, unless `optional` (a service that was handed a server).
 */
export function parseListenTarget(
  options: Partial<PortTarget & PathTarget & FdTarget>,
  owner: string,
): ListenTarget | undefined {
  const given = (['port', 'path', 'fd'] as const).filter((k) => options[k] !== undefined);
  if (given.length > 1) {
    throw new InvalidOptionError(
      `${owner}.${given[1]}`,
      `${owner}: give only one of port, path or fd, got ${given.join(' and ')}`,
    );
  }
  const backlog =
    options.backlog === undefined
      ? undefined
      : validateInteger(options.backlog, `${owner}.backlog`, { min: 1 });
  if (options.port !== undefined) {
    const target: PortTarget = { port: validatePort(options.port, `${owner}.port`) };
    if (options.host !== undefined) target.host = validateString(options.host, `${owner}.host`);
    if (backlog !== undefined) target.backlog = backlog;
    if (options.ipv6Only !== undefined) {
      if (typeof options.ipv6Only !== 'boolean') {
        throw new InvalidOptionError(
          `${owner}.ipv6Only`,
          `${owner}.ipv6Only must be a boolean, got ${describe(options.ipv6Only)}`,
        );
      }
      target.ipv6Only = options.ipv6Only;
    }
    return target;
  }
  if (options.host !== undefined) {
    throw new InvalidOptionError(`${owner}.host`, `${owner}.host needs ${owner}.port`);
  }
  if (options.path !== undefined) {
    const target: PathTarget = { path: validateString(options.path, `${owner}.path`) };
    if (backlog !== undefined) target.backlog = backlog;
    return target;
  }
  if (options.fd !== undefined) {
    return { fd: validateInteger(options.fd, `${owner}.fd`, { min: 0 }) };
  }
  return undefined;
}

/** A human-readable name for a target, as used in error messages and logs. */
export function describeTarget(target: ListenTarget): string {
  if ('fd' in target) return `fd ${target.fd}`;
  if ('path' in target) return `unix:${target.path}`;
  return formatHostPort(target.host ?? '::', target.port);
}

function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The address a listening server is bound to, as `host:port`, `[v6]:port` or a socket path. */
export function formatAddress(address: AddressInfo | string | null): string {
  if (address === null) return '';
  if (typeof address === 'string') return address;
  return formatHostPort(address.address, address.port);
}

/**
 * Makes `server` listen on `target`. Resolves once it listens; rejects with
 * `AddressInUseError` or `ListenError` and leaves the server not listening otherwise.
 */
export function listenOn(server: Server, target: ListenTarget): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      const where = describeTarget(target);
      // A failed listen leaves no handle behind in Node (the handle is dropped before 'error'),
      // so there is nothing to close here; asserting it keeps that promise honest.
      if (server.listening) server.close();
      if (err.code === 'EADDRINUSE') reject(new AddressInUseError(where, { cause: err }));
      else reject(new ListenError(where, err.code ?? err.message, { cause: err }));
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    try {
      if ('fd' in target) server.listen({ fd: target.fd });
      else if ('path' in target) server.listen({ path: target.path, backlog: target.backlog });
      else {
        server.listen({
          port: target.port,
          host: target.host,
          backlog: target.backlog,
          ipv6Only: target.ipv6Only,
        });
      }
    } catch (err) {
      // Synchronous failures: an fd that is not a socket, a server already listening.
      server.off('error', onError);
      server.off('listening', onListening);
      const e = err as NodeJS.ErrnoException;
      reject(new ListenError(describeTarget(target), e.code ?? e.message, { cause: err }));
    }
  });
}

/**
 * A service's `connection` option: one already-accepted connection to serve instead of
 * listening (Accept=yes, inetd). It excludes every other way of listening.
 */
export function parseConnection(
  options: { connection?: unknown; server?: unknown },
  target: ListenTarget | undefined,
  owner: string,
): Socket | undefined {
  if (options.connection === undefined) return undefined;
  if (!(options.connection instanceof Socket)) {
    throw new InvalidOptionError(
      `${owner}.connection`,
      `${owner}.connection must be a net.Socket, got ${describe(options.connection)}`,
    );
  }
  if (target || options.server !== undefined) {
    throw new InvalidOptionError(
      `${owner}.connection`,
      `${owner}: give connection alone, not with port, path, fd or server`,
    );
  }
  return options.connection;
}

/**
 * Every service must have somewhere to serve: a listen target, a server (listening already, or
 * with a target to listen on), or one accepted connection. Both checks are option errors, thrown
 * at construction like the others.
 */
export function requirePlace(
  owner: string,
  place: { target: ListenTarget | undefined; server: Server | undefined; connection: unknown },
): void {
  if (place.server && !place.server.listening && !place.target) {
    throw new InvalidOptionError(
      `${owner}.server`,
      `${owner}: the given server is not listening; give port, path or fd too`,
    );
  }
  if (!place.server && !place.target && !place.connection) {
    throw new InvalidOptionError(
      `${owner}.port`,
      `${owner}: nowhere to listen: give port, path, fd, server or connection`,
    );
  }
}
