/**
 * The CLI's logs: pino JSON lines on stdout, human-readable when stdout is a terminal. The
 * library emits events; this module is where they become one log line each.
 */

import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createRequire } from 'node:module';
import { pino } from 'pino';
import type { WorkerPool } from '../cluster/worker-pool.js';
import type { DescriptorEvent } from '../diagnostics/descriptor-watch.js';
import type { RunResult, ServiceGroup } from '../runner/service-group.js';
import type { LogLevel } from './flags.js';

export type Logger = pino.Logger;

/**
 * pino-pretty, loaded only for a terminal: it costs about 20 ms of start-up, and a service under
 * a supervisor or in a container logs to a pipe (the startup benchmark, bench/notes/startup.md).
 */
function loadPretty(): typeof import('pino-pretty') {
  return createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
}

/**
 * A logger on stdout, or on stderr (`toStderr`) when stdout is not ours: in inetd style it is
 * the client's connection.
 */
export function createLogger(level: LogLevel, { toStderr = false } = {}): Logger {
  const options: pino.LoggerOptions = { level, base: { pid: process.pid }, name: 'berth' };
  const stream = toStderr ? process.stderr : process.stdout;
  if (stream.isTTY) {
    // Synchronous, in this thread: a worker-thread transport could lose the last lines when a
    // second signal exits the process at once.
    return pino(
      options,
      loadPretty()({
        sync: true,
        colorize: true,
        singleLine: true,
        ignore: 'pid,hostname,name',
        destination: toStderr ? 2 : 1,
      }),
    );
  }
  return pino(options, pino.destination({ dest: toStderr ? 2 : 1, sync: true }));
}
function errorFields(error: Error | undefined): object {
  if (!error) return {};
  const coded = error as Error & { code?: string };
  return { err: { code: coded.code, message: error.message } };
}

/**
 * What the services publish that an operator must see or may want to: a handler or task that
 * threw (a bug in the application: error), a client that broke the task protocol or ran out a
 * timeout (counted in the metrics; debug, as any client can cause them). Subscribed while the
 * group runs.
 */
const ERROR_LINES: readonly {
  channel: string;
  level: 'error' | 'debug';
  msg: (m: { service: string; error?: unknown; code?: number; timeout?: string }) => string;
}[] = [
  { channel: 'berth:tcp:error', level: 'error', msg: (m) => `${m.service}: handler failed` },
  {
    channel: 'berth:tcp:peer-error',
    level: 'debug',
    msg: (m) => `${m.service}: the peer reset or broke the connection`,
  },
  {
    channel: 'berth:tcp:overflow',
    level: 'debug',
    msg: (m) => `${m.service}: connection destroyed: its unsent bytes passed maxWriteBuffer`,
  },
  { channel: 'berth:http:error', level: 'error', msg: (m) => `${m.service}: handler failed` },
  {
    channel: 'berth:task:error',
    level: 'error',
    msg: (m) => `${m.service}: task ${m.code} failed (answered Error 205 internal)`,
  },
  {
    channel: 'berth:task:protocol-error',
    level: 'debug',
    msg: (m) => `${m.service}: client broke the protocol`,
  },
  {
    channel: 'berth:task:timeout',
    level: 'debug',
    msg: (m) => `${m.service}: client ${m.timeout} timeout`,
  },
];

/**
 * Out of file descriptors, and free again (the diagnostics server's watch): a warning on the way
 * in and a line on the way out, for at most one episode a minute. One that follows sooner is
 * counted, and the next warning says how many went unlogged.
 */
function logDescriptors(group: ServiceGroup, log: Logger): void {
  let warnedAt = Number.NEGATIVE_INFINITY;
  let unlogged = 0;
  let logging = false;
  const listener = (message: unknown) => {
    const { exhausted, limit, duration } = message as DescriptorEvent;
    if (!exhausted) {
      if (logging)
        log.info({ durationMs: duration }, `file descriptors free again after ${duration} ms`);
      logging = false;
      return;
    }
    const now = performance.now();
    if (now - warnedAt < 60_000) {
      unlogged++;
      return;
    }
    warnedAt = now;
    logging = true;
    log.warn(
      { limit, ...(unlogged > 0 ? { unlogged } : {}) },
      `out of file descriptors (limit ${limit ?? 'unknown'}): new connections are closed as they arrive, unseen by the services; raise ulimit -n or set maxConnections`,
    );
    unlogged = 0;
  };
  subscribe('berth:process:descriptors', listener);
  group.once('stopped', () => unsubscribe('berth:process:descriptors', listener));
}

function logServiceErrors(group: ServiceGroup, log: Logger): void {
  const listeners = ERROR_LINES.map(({ channel, level, msg }) => {
    const listener = (message: unknown) => {
      const m = message as Parameters<typeof msg>[0] & { client?: { toString(): string } };
      const fields = {
        service: m.service,
        ...(m.client ? { client: String(m.client) } : {}),
        ...(m.error instanceof Error ? { err: m.error } : {}),
      };
      log[level](fields, msg(m));
    };
    subscribe(channel, listener);
    return { channel, listener };
  });
  group.once('stopped', () => {
    for (const { channel, listener } of listeners) unsubscribe(channel, listener);
  });
}

/** One line for each step of the group's life: started, signal, draining, closed, complete. */
export function logGroup(
  group: ServiceGroup,
  log: Logger,
  settings: { shutdownTimeout: number; drainDelay: number },
): void {
  logServiceErrors(group, log);
  logDescriptors(group, log);
  group.on('started', ({ services }) => {
    log.info(
      { services },
      `started: ${services.map((s) => `${s.name} ${s.address ?? ''}`.trim()).join(', ')}`,
    );
  });
  group.on('stopping', ({ reason, signal, error }) => {
    if (signal) log.info({ signal }, `signal received: ${signal}`);
    else log.info({ reason, ...errorFields(error) }, `stopping: ${reason}`);
    log.info(settings, 'draining');
  });
  group.on('service-closed', ({ name, error, stats }) => {
    const line = { service: name, stats, ...errorFields(error) };
    if (error) log.warn(line, `service closed: ${name} (${error.message})`);
    else log.info(line, `service closed: ${name}`);
  });
  group.on('hook-error', (error) => log.warn(errorFields(error), 'shutdown hook failed'));
  group.on('forced', ({ signal }) => log.warn({ signal }, `forced exit: second signal ${signal}`));
}

export function logResult(log: Logger, result: RunResult): void {
  const fields = {
    reason: result.reason,
    clean: result.clean,
    exitCode: result.exitCode,
    durationMs: result.duration,
    ...errorFields(result.error),
  };
  if (result.reason === 'start-failed') log.error(fields, `start failed: ${result.error?.message}`);
  else if (result.clean) log.info(fields, `shutdown complete in ${result.duration} ms`);
  else
    log.warn(
      fields,
      `shutdown complete in ${result.duration} ms, not clean: ${result.error?.message}`,
    );
}

/** The cluster primary's own lines: workers ready, crashed, replaced; reloads. */
export function logPool(pool: WorkerPool, group: ServiceGroup, log: Logger): void {
  group.once('started', () => {
    const { workers, size } = pool.stats;
    const services = workers[0]?.services ?? [];
    log.info(
      { workers: size, pids: workers.map((w) => w.pid), services },
      `workers ready: ${size} x ${services.map((s) => `${s.name} ${s.address ?? ''}`.trim()).join(', ')}`,
    );
  });
  pool.on('worker-crashed', ({ id, pid, code, restartIn }) => {
    if (restartIn === undefined)
      log.error(
        { worker: id, pid, code },
        `worker ${id} crashed (exit ${code}): crash loop, stopping`,
      );
    else
      log.warn(
        { worker: id, pid, code, restartIn },
        `worker ${id} crashed (exit ${code}); replacing it in ${restartIn} ms`,
      );
  });
  pool.on('reload-started', ({ workers }) =>
    log.info({ workers }, `reload: replacing ${workers} workers one at a time`),
  );
  pool.on('reloaded', ({ replaced, duration }) =>
    log.info({ replaced, durationMs: duration }, `reload complete in ${duration} ms`),
  );
  pool.on('reload-failed', (error) =>
    log.error(errorFields(error), `reload stopped, old workers keep serving: ${error.message}`),
  );
}
