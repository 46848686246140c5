/**
 * `berth serve <module>`: turns what a module exports into services. The default export may be:
 * - a request listener `(req, res)` (Express, Koa's `app.callback()`, ...): served by an
 *   HttpService on `--host`/`--port`;
 * - an `http.Server` (or https/http2), not listening: served the same way;
 * - an app that owns its server and its shutdown (a fastify instance, `HttpApp`): the same,
 *   readied first and closed after its server drained;
 * - a service, an array of services, or a `ServiceGroup`: run as they are;
 * - a factory `(context) => one of the above` (sync or async), called with the flags' addresses.
 * A function taking two or more parameters is a listener; one taking at most one is a factory.
 *
 * Named exports are options of what berth builds for the module: `upgrade` goes to the
 * HttpService it makes, `beforeShutdown` and `afterClose` to the runner (ServiceGroup's hooks).
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
  isHttpApp,
  type RequestHandler,
  type UpgradeHandler,
} from '../http/http-service.js';
import { ServiceGroup, type ServiceGroupOptions } from '../runner/service-group.js';
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

/** The runner's hooks a module may export, by the names ServiceGroup gives them. */
export type ServeHooks = Pick<ServiceGroupOptions, 'beforeShutdown' | 'afterClose'>;

/** What a module gives `berth serve`: its default export and the named exports it reads. */
export interface ServedModule {
  exported: unknown;
  /** `export function upgrade(req, socket, head, { signal })`: for the HttpService berth makes. */
  upgrade: UpgradeHandler | undefined;
  hooks: ServeHooks;
}

/** The named exports berth reads; any other export is the module's own business. */
const NAMED_EXPORTS = ['upgrade', 'beforeShutdown', 'afterClose'] as const;

/** Node without type stripping (before 22.18 and 23.6) cannot import a .ts file by itself. */
function importFailure(specifier: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.[mc]?ts$/.test(specifier)) {
    return `failed to import: this Node (${process.version}) does not run TypeScript by itself; use Node 22.18+ (type stripping), or run berth through tsx: node --import tsx ./node_modules/.bin/berth serve ${specifier}`;
  }
  return `failed to import: ${(err as Error).message}`;
}

export async function loadModule(specifier: string): Promise<ServedModule> {
  const path = resolve(specifier);
  if (!existsSync(path)) throw new InvalidModuleError(specifier, 'no such file');
  let module: Record<string, unknown>;
  try {
    module = await import(pathToFileURL(path).href);
  } catch (err) {
    throw new InvalidModuleError(specifier, importFailure(specifier, err), { cause: err });
  }
  if (module.default === undefined) {
    throw new InvalidModuleError(
      specifier,
      'has no default export; export a request listener, services or a factory',
    );
  }
  for (const name of NAMED_EXPORTS) {
    if (module[name] !== undefined && typeof module[name] !== 'function') {
      throw new InvalidModuleError(
        specifier,
        `its export ${name} must be a function, got ${typeof module[name]}`,
      );
    }
  }
  const hook = <K extends keyof ServeHooks>(name: K) =>
    module[name] === undefined ? {} : { [name]: module[name] as ServeHooks[K] };
  return {
    exported: module.default,
    upgrade: module.upgrade as UpgradeHandler | undefined,
    hooks: { ...hook('beforeShutdown'), ...hook('afterClose') },
  };
}

function isHttpServer(value: unknown): value is NonNullable<HttpServiceOptions['server']> {
  if (value instanceof http.Server || value instanceof https.Server) return true;
  // node:http2 does not export its server classes.
  const name = (value as object | null)?.constructor?.name;
  return name === 'Http2Server' || name === 'Http2SecureServer';
}

/**
 * Why an export is not runnable, when it looks like a framework's app that berth does not take
 * as it is: what to export instead.
 */
function hintFor(value: unknown): string {
  if (typeof value !== 'object' || value === null) return '';
  const app = value as Record<string, unknown>;
  if (typeof app.callback === 'function' && typeof app.use === 'function') {
    return ' (it looks like a Koa app: export app.callback())';
  }
  if (typeof app.getHttpServer === 'function') {
    return ' (it looks like a NestJS app: export { server: app.getHttpServer(), ready: () => app.init(), close: () => app.close() })';
  }
  if (typeof app.fetch === 'function') {
    return " (it looks like a fetch handler, as a Hono app is: export createAdaptorServer({ fetch: app.fetch }) from '@hono/node-server')";
  }
  return '';
}

/** Interprets a module's default export (and named exports) as services to run. */
export async function toServable(
  specifier: string,
  { exported, upgrade, hooks }: ServedModule,
  flags: RunnerFlags,
  placement: Placement,
): Promise<Servable> {
  let madeHttp = false;
  const httpService = (options: Pick<HttpServiceOptions, 'handler' | 'server'>) => {
    madeHttp = true;
    const server = isHttpApp(options.server) ? options.server.server : options.server;
    return new HttpService({
      name: 'http',
      ...placement.listen('http', server?.listening ? {} : { port: flags.port, host: flags.host }),
      ...options,
      ...(upgrade ? { upgrade } : {}),
    });
  };

  const interpret = (value: unknown, fromFactory: boolean): Servable | undefined => {
    if (value instanceof ServiceGroup) return value;
    if (isService(value)) return [value];
    if (Array.isArray(value) && value.length > 0 && value.every(isService)) return value;
    if (isHttpServer(value) || isHttpApp(value)) return [httpService({ server: value })];
    if (typeof value === 'function' && (value.length >= 2 || fromFactory)) {
      return [httpService({ handler: value as RequestHandler })];
    }
    return undefined;
  };

  const context: ServeContext = {
    host: flags.host,
    port: flags.port,
    fds: placement.fds,
    listen: placement.listen,
  };
  const servable = await interpretExport(specifier, exported, context, interpret);
  if (upgrade && !madeHttp) {
    throw new InvalidModuleError(
      specifier,
      'exports upgrade, but its default export brings its own services: give upgrade to your HttpService',
    );
  }
  if (servable instanceof ServiceGroup && Object.keys(hooks).length > 0) {
    throw new InvalidModuleError(
      specifier,
      `exports ${Object.keys(hooks).join(' and ')}, but its default export is a ServiceGroup with settings of its own: give the hooks to the group`,
    );
  }
  return servable;
}

async function interpretExport(
  specifier: string,
  exported: unknown,
  context: ServeContext,
  interpret: (value: unknown, fromFactory: boolean) => Servable | undefined,
): Promise<Servable> {
  const direct = interpret(exported, false);
  if (direct) return direct;
  if (typeof exported === 'function') {
    let made: unknown;
    try {
      made = await exported(context);
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
    `its default export is not a request listener (req, res), an http.Server, an app that owns one (fastify), a service, an array of services, a ServiceGroup, or a factory returning one${hintFor(exported)}`,
  );
}
