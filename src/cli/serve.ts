/**
 * `berth serve <module>`: turns what a module exports into services. The default export may be:
 * - a request listener `(req, res)` (Express, Koa's `app.callback()`, ...): served by an
 *   HttpService on `--host`/`--port`;
 * - an `http.Server` (or https/http2), not listening: served the same way;
 * - a service, an array of services, or a `ServiceGroup`: run as they are;
 * - a factory `(context) => one of the above` (sync or async), called with the flags' addresses.
 * A function taking two or more parameters is a listener; one taking at most one is a factory.
 */

import { existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvalidModuleError } from '../errors.js';
import {
  HttpService,
  type HttpServiceOptions,
  type NodeHttpServer,
  type RequestHandler,
} from '../http/http-service.js';
import { ServiceGroup } from '../runner/service-group.js';
import { isService, type Service } from '../service.js';
import type { ListenFd } from '../systemd/listen-fds.js';
import type { RunnerFlags } from './flags.js';
import type { Placement } from './placement.js';

/** What a factory export is called with. */
export interface ServeContext {
  /** `--host`; undefined means every interface. */
  host: string | undefined;
  /** `--port` (or env `PORT`). */
  port: number;
  /** The listening fds systemd passed (LISTEN_FDS), by name; empty when none. */
  fds: readonly ListenFd[];
  /**
   * Listen options for the service `name`: the fd systemd passed under that name (or
   * `--listen-fd` for `http`), the one accepted connection if that service serves it, else
   * `fallback`. Spread it into the service's options:
   * `new TcpService({ name: 'echo', ...listen('echo', { port: 7000 }), handler })`.
   */
  listen: Placement['listen'];
}

export type Servable = Service[] | ServiceGroup;

export async function loadModule(specifier: string): Promise<unknown> {
  const path = resolve(specifier);
  if (!existsSync(path)) throw new InvalidModuleError(specifier, 'no such file');
  let module: { default?: unknown };
  try {
    module = await import(pathToFileURL(path).href);
  } catch (err) {
    throw new InvalidModuleError(specifier, `failed to import: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (module.default === undefined) {
    throw new InvalidModuleError(
      specifier,
      'has no default export; export a request listener, services or a factory',
    );
  }
  return module.default;
}

function isHttpServer(value: unknown): value is NonNullable<HttpServiceOptions['server']> {
  if (value instanceof http.Server || value instanceof https.Server) return true;
  // node:http2 does not export its server classes.
  const name = (value as object | null)?.constructor?.name;
  return name === 'Http2Server' || name === 'Http2SecureServer';
}

/** Interprets a module's default export as services to run. */
export async function toServable(
  specifier: string,
  exported: unknown,
  flags: RunnerFlags,
  placement: Placement,
): Promise<Servable> {
  const httpService = (options: Pick<HttpServiceOptions, 'handler' | 'server'>) =>
    new HttpService({
      name: 'http',
      ...placement.listen(
        'http',
        (options.server as NodeHttpServer | undefined)?.listening
          ? {}
          : { port: flags.port, host: flags.host },
      ),
      ...options,
    });

  const interpret = (value: unknown, fromFactory: boolean): Servable | undefined => {
    if (value instanceof ServiceGroup) return value;
    if (isService(value)) return [value];
    if (Array.isArray(value) && value.length > 0 && value.every(isService)) return value;
    if (isHttpServer(value)) return [httpService({ server: value })];
    if (typeof value === 'function' && (value.length >= 2 || fromFactory)) {
      return [httpService({ handler: value as RequestHandler })];
    }
    return undefined;
  };

  const direct = interpret(exported, false);
  if (direct) return direct;
  if (typeof exported === 'function') {
    let made: unknown;
    try {
      made = await exported({
        host: flags.host,
        port: flags.port,
        fds: placement.fds,
        listen: placement.listen,
      } satisfies ServeContext);
    } catch (err) {
      throw new InvalidModuleError(specifier, `its factory threw: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const fromFactory = interpret(made, true);
    if (fromFactory) return fromFactory;
  }
  throw new InvalidModuleError(
    specifier,
    'its default export is not a request listener (req, res), a service, an array of services, a ServiceGroup, an http.Server, or a factory returning one',
  );
}
