/**
 * `DiagnosticsServer`: the endpoints probes and scrapers use. `/live` (the process runs),
 * `/ready` (every service ready, with the version), `/metrics` (Prometheus text from
 * prom-client), `/debug/vars` (JSON stats, like Go's expvar). It is an `HttpService`, bound to
 * 127.0.0.1 by default since what it shows is for the operator, not the internet.
 */

import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import type { Registry } from 'prom-client';
import { HttpService } from '../http/http-service.js';
import type { FdTarget, PathTarget, PortTarget } from '../listen.js';
import {
  collectProcessMetrics,
  defaultRegistry,
  exportStats,
  type StatMetric,
} from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateBoolean,
  validateFunction,
  validateInteger,
  validateObject,
  validateString,
} from '../options.js';
import type { CloseOptions, Service, ServiceState } from '../service.js';
import { DescriptorWatch } from './descriptor-watch.js';

/** What `/ready` reports: `ready` answers 200, anything else 503. */
export type Readiness = 'starting' | 'ready' | 'draining' | 'stopped';

export interface DiagnosticsServerOptions extends Partial<PortTarget & PathTarget & FdTarget> {
  /** @default 'diagnostics' */
  name?: string;
  /** Shown by `/ready` and `/debug/vars`. @default the version in the application's package.json */
  version?: string;
  /** Where `/ready` looks. Under a `ServiceGroup`, the group supplies it. @default always ready */
  readiness?: () => Readiness;
  /** What `/debug/vars` lists under `services`. Under a `ServiceGroup`, the group supplies it. */
  stats?: () => Record<string, object> | Promise<Record<string, object>>;
  /** What `/metrics` serves. @default prom-client's global registry */
  registry?: Registry;
  /**
   * Produces the `/metrics` text instead of `registry.metrics()`: e.g. the cluster primary's
   * aggregate of every worker. `registry` still gives the content type and the process metrics.
   */
  metrics?: () => Promise<string>;
  /** Add prom-client's process metrics (CPU, memory, event loop lag, ...) to the registry once. @default true */
  processMetrics?: boolean;
  /** Default for `close()`'s `timeout`. @default 1000 (1 s): nothing here is slow */
  shutdownTimeout?: number;
  /**
   * How often to check that the process has a file descriptor free, ms, or `false` for never.
   * Out of them, the OS layer closes new connections unseen (docs/diagnostics.md, "Out of file
   * descriptors"). @default 1000
   */
  watchDescriptors?: number | false;
}

export const DIAGNOSTICS_DEFAULTS = Object.freeze({
  name: 'diagnostics',
  port: 8081,
  host: '127.0.0.1', // operator-only by default
  processMetrics: true,
  shutdownTimeout: 1_000, // 1 s
  watchDescriptors: 1_000, // 1 s: two system calls a second
});

const DESCRIPTOR_METRICS: readonly StatMetric<DescriptorWatch['counts']>[] = [
  {
    name: 'berth_descriptors_exhausted',
    help: '1 while the process has no file descriptor free (new connections are being dropped unseen)',
    type: 'gauge',
    read: (s) => (s.exhausted ? 1 : 0),
  },
  {
    name: 'berth_descriptor_exhaustions_total',
    help: 'Times the process was found out of file descriptors',
    type: 'counter',
    read: (s) => s.exhaustions,
  },
];

const KNOWN_OPTIONS = [
  'name',
  'version',
  'readiness',
  'stats',
  'registry',
  'metrics',
  'processMetrics',
  'shutdownTimeout',
  'watchDescriptors',
  'port',
  'host',
  'backlog',
  'ipv6Only',
  'path',
  'fd',
] as const;

const withProcessMetrics = new WeakSet<Registry>();

/**
 * The version of the application: the nearest package.json with a `version`, looking up from
 * `from`. Returns 'unknown' when there is none.
 */
export function findPackageVersion(from: string): string {
  let dir = from;
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        version?: unknown;
      };
      if (typeof pkg.version === 'string') return pkg.version;
    } catch {
      // no package.json here, or not JSON: keep looking up
    }
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.statusCode = status;
  res.setHeader('content-type', type);
  res.setHeader('cache-control', 'no-store');
  res.end(body);
}

export class DiagnosticsServer implements Service {
  readonly name: string;
  readonly version: string;
  readonly #http: HttpService;
  readonly #registry: Registry;
  readonly #readiness: () => Readiness;
  readonly #stats: () => Record<string, object> | Promise<Record<string, object>>;
  readonly #metrics: () => Promise<string>;
  readonly #descriptors: DescriptorWatch | undefined;

  constructor(options: DiagnosticsServerOptions = {}) {
    validateObject(options, 'DiagnosticsServer options');
    rejectUnknownKeys(options, 'DiagnosticsServer', KNOWN_OPTIONS);
    this.name = optional(options.name, DIAGNOSTICS_DEFAULTS.name, (v) => validateString(v, 'name'));
    this.version =
      optional(options.version, undefined, (v) => validateString(v, 'version')) ??
      findPackageVersion(process.cwd());
    this.#readiness = optional(
      options.readiness,
      () => 'ready' as Readiness,
      (v) => validateFunction<() => Readiness>(v, 'readiness'),
    );
    this.#stats = optional(
      options.stats,
      () => ({}),
      (v) =>
        validateFunction<() => Record<string, object> | Promise<Record<string, object>>>(
          v,
          'stats',
        ),
    );
    this.#registry = options.registry ?? defaultRegistry;
    const registry = this.#registry;
    this.#metrics = optional(
      options.metrics,
      () => registry.metrics(),
      (v) => validateFunction<() => Promise<string>>(v, 'metrics'),
    );
    const processMetrics = optional(
      options.processMetrics,
      DIAGNOSTICS_DEFAULTS.processMetrics,
      (v) => validateBoolean(v, 'processMetrics'),
    );
    const { port, host, backlog, ipv6Only, path, fd } = options;
    const where =
      path !== undefined || fd !== undefined
        ? { path, fd }
        : {
            port: port ?? DIAGNOSTICS_DEFAULTS.port,
            host: host ?? DIAGNOSTICS_DEFAULTS.host,
            backlog,
            ipv6Only,
          };
    this.#http = new HttpService({
      name: this.name,
      ...Object.fromEntries(Object.entries(where).filter(([, v]) => v !== undefined)),
      shutdownTimeout: options.shutdownTimeout ?? DIAGNOSTICS_DEFAULTS.shutdownTimeout,
      // Probes and scrapers open a connection per request, or should; nothing to keep alive for.
      idleGrace: 0,
      // Scrapes are not traffic: counting them into the application's metrics would mislead.
      registry: null,
      handler: (req: IncomingMessage, res: ServerResponse) => this.#route(req, res),
    });
    const every = optional(options.watchDescriptors, DIAGNOSTICS_DEFAULTS.watchDescriptors, (v) =>
      v === false ? v : validateInteger(v, 'watchDescriptors', { min: 1, unit: 'ms' }),
    );
    if (every !== false) {
      const watch = new DescriptorWatch(every);
      this.#descriptors = watch;
      exportStats(this.#registry, this.name, () => watch.counts, DESCRIPTOR_METRICS);
    }
    if (processMetrics && !withProcessMetrics.has(this.#registry)) {
      withProcessMetrics.add(this.#registry);
      collectProcessMetrics(this.#registry);
    }
  }

  get state(): ServiceState {
    return this.#http.state;
  }

  get closed(): Promise<void> {
    return this.#http.closed;
  }

  get stats(): object {
    const { listening, address, requests, busy } = this.#http.stats;
    return { listening, address, requests, busy };
  }

  address(): AddressInfo | string | null {
    return this.#http.address();
  }

  async start(): Promise<void> {
    await this.#http.start();
    this.#descriptors?.start();
  }

  close(options?: CloseOptions): Promise<void> {
    this.#descriptors?.stop();
    return this.#http.close(options);
  }

  destroy(error?: Error): Promise<void> {
    this.#descriptors?.stop();
    return this.#http.destroy(error);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0];
    const known =
      path === '/live' || path === '/ready' || path === '/metrics' || path === '/debug/vars';
    if (!known) return send(res, 404, 'text/plain; charset=utf-8', 'Not Found\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, 405, 'text/plain; charset=utf-8', 'Method Not Allowed\n');
    }
    switch (path) {
      case '/live':
        return send(res, 200, 'text/plain; charset=utf-8', 'OK\n');
      case '/ready': {
        const readiness = this.#readiness();
        const body = `Version: ${this.version}\n${readiness === 'ready' ? '' : `Status: ${readiness}\n`}`;
        return send(res, readiness === 'ready' ? 200 : 503, 'text/plain; charset=utf-8', body);
      }
      case '/metrics':
        return send(res, 200, this.#registry.contentType, await this.#metrics());
      default: {
        const vars = {
          version: this.version,
          pid: process.pid,
          cmdline: process.argv,
          uptime: process.uptime(),
          memstats: process.memoryUsage(),
          ...(this.#descriptors ? { descriptors: this.#descriptors.stats } : {}),
          services: await this.#stats(),
        };
        return send(
          res,
          200,
          'application/json; charset=utf-8',
          `${JSON.stringify(vars, null, 2)}\n`,
        );
      }
    }
  }
}
