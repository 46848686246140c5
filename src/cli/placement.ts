/**
 * Where each of the CLI's services listens, when a service manager handed sockets over:
 * systemd's listening fds (LISTEN_FDS, matched to services by name, or `--listen-fd` for the HTTP
 * service), or one already-accepted connection (Accept=yes, or `--inetd`) served by one service.
 * Without either, every service listens where its flags say.
 */

import type { Socket } from 'node:net';
import { UsageError } from '../errors.js';
import { acceptedConnection, isConnectionFd } from '../systemd/accepted-connection.js';
import { type ListenFd, listenFds, selectListenFd } from '../systemd/listen-fds.js';
import type { RunnerFlags } from './flags.js';

/** The environment variable a cluster primary uses to hand its adopted fds to its workers. */
export const INHERITED_FDS_ENV = 'BERTH_LISTEN_FDS';

/** The service `--listen-fd` applies to: the HTTP service of `demo` and of `serve`. */
export const MAIN_SERVICE = 'http';

export interface Placement {
  /** The listening fds the service manager passed (empty when none). */
  fds: readonly ListenFd[];
  /** The fd `--listen-fd` chose for the main service, once resolved. */
  main: ListenFd | undefined;
  /** The one connection to serve, and the service that serves it, in Accept=yes/inetd mode. */
  oneConnection: { socket: Socket; service: string } | undefined;
  /**
   * Listen options for service `name`: its adopted fd, or the accepted connection, else
   * `fallback` (its flags' port and host).
   */
  listen<T extends object>(name: string, fallback: T): T | { fd: number } | { connection: Socket };
  /** Fds no service took, for a warning. */
  unused(): ListenFd[];
}

/**
 * `3:http,*4:web` ↔ ListenFd[]: how a primary passes adopted fds on to its workers. `*` marks the
 * fd `--listen-fd` chose: the primary resolves it, since positions in the list it passes on are
 * not the service manager's (it keeps the diagnostics fd).
 */
export function encodeFds(fds: readonly ListenFd[], main?: ListenFd): string {
  return fds.map((f) => `${f.fd === main?.fd ? '*' : ''}${f.fd}:${f.name}`).join(',');
}

export function decodeFds(text: string): { fds: ListenFd[]; main: ListenFd | undefined } {
  let main: ListenFd | undefined;
  const fds = text
    .split(',')
    .filter(Boolean)
    .map((part) => {
      const marked = part.startsWith('*');
      const at = part.indexOf(':');
      const fd = { fd: Number(part.slice(marked ? 1 : 0, at)), name: part.slice(at + 1) };
      if (marked) main = fd;
      return fd;
    });
  return { fds, main };
}

function selector(value: string): string | number {
  return /^\d+$/.test(value) ? Number(value) : value;
}

/**
 * Reads what the service manager passed (and clears LISTEN_* so children do not inherit it).
 * In a cluster worker, the primary's fds come through INHERITED_FDS_ENV instead.
 */
export function placeServices(flags: RunnerFlags, env: NodeJS.ProcessEnv = process.env): Placement {
  const inherited =
    env[INHERITED_FDS_ENV] === undefined ? undefined : decodeFds(env[INHERITED_FDS_ENV]);
  const fds = inherited ? inherited.fds : listenFds({ env });
  const taken = new Set<number>();

  let oneConnection: Placement['oneConnection'];
  if (flags.inetd) {
    oneConnection = {
      socket: acceptedConnection({ inetd: true }).socket,
      service: flags.connectionService,
    };
  } else if (inherited === undefined && fds.length === 1 && isConnectionFd(fds[0]!)) {
    // Accept=yes: systemd accepted the connection and started us for it.
    oneConnection = {
      socket: acceptedConnection({ fd: fds[0]!.fd }).socket,
      service: flags.connectionService,
    };
    taken.add(fds[0]!.fd);
  }
  if (oneConnection && flags.workers > 1) {
    throw new UsageError(
      'one accepted connection (Accept=yes, --inetd) is served by one process: drop --workers',
    );
  }

  // `--listen-fd` names the HTTP service's fd; a name or position that was not passed is an error.
  // A worker is told which fd its primary chose.
  let main: ListenFd | undefined = inherited?.main;
  if (flags.listenFd !== undefined && !oneConnection && !inherited) {
    try {
      main = selectListenFd(fds, selector(flags.listenFd));
    } catch (err) {
      throw new UsageError(`--listen-fd ${flags.listenFd}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  return {
    fds,
    main,
    oneConnection,
    listen<T extends object>(name: string, fallback: T) {
      if (oneConnection)
        return name === oneConnection.service ? { connection: oneConnection.socket } : fallback;
      const fd =
        name === MAIN_SERVICE && main ? main : fds.find((f) => f.name === name && !taken.has(f.fd));
      if (!fd) return fallback;
      taken.add(fd.fd);
      return { fd: fd.fd };
    },
    unused: () => fds.filter((f) => !taken.has(f.fd)),
  };
}
