/**
 * The CLI's flags: one table of them, parsed with node:util's parseArgs, checked into a typed
 * object, or a `UsageError` naming the flag. Nothing here starts anything.
 */

import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { UsageError } from '../errors.js';

/** `5s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) {
    throw new UsageError(
      `${flag} must be a duration such as 5s, 500ms or 2m, got ${JSON.stringify(text)}`,
    );
  }
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[match[2] ?? 'ms']!;
  const ms = Math.round(Number(match[1]) * unit);
  if (ms > 2 ** 31 - 1) throw new UsageError(`${flag} is too long: ${text}`);
  return ms;
}

export function parsePort(text: string, flag: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 65_535) {
    throw new UsageError(
      `${flag} must be a port number from 0 to 65535, got ${JSON.stringify(text)}`,
    );
  }
  return Number(text);
}

function nonEmpty(text: string | undefined, flag: string): string | undefined {
  if (text === '') throw new UsageError(`${flag} must not be empty`);
  return text;
}

function idleTimeout(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const ms = parseDuration(text, '--idle-timeout');
  if (ms === 0) throw new UsageError('--idle-timeout must be longer than 0');
  return ms;
}

export function parseWorkers(text: string): number {
  if (text === 'auto') return availableParallelism();
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 1024) {
    throw new UsageError(
      `--workers must be a number from 1 to 1024 or auto, got ${JSON.stringify(text)}`,
    );
  }
  return Number(text);
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Flags every runner command takes (`demo`, `serve`). */
export interface RunnerFlags {
  host: string | undefined;
  port: number;
  diagHost: string;
  diagPort: number;
  shutdownTimeout: number;
  drainDelay: number;
  /** The bound on each shutdown hook a served module exports. */
  hookTimeout: number;
  logLevel: LogLevel;
  versionString: string | undefined;
  /** 1: no cluster. */
  workers: number;
  readyTimeout: number;
  /** Shut down after this long with nothing active; undefined: never. */
  idleTimeout: number | undefined;
  /** The adopted fd (name or position) the HTTP service listens on. */
  listenFd: string | undefined;
  /** The connection is on fd 0/1 (inetd style). */
  inetd: boolean;
  /** Which service serves the one connection of Accept=yes or --inetd. */
  connectionService: string;
}

/** Flags only the demo takes: the ports of its other services. */
export interface DemoFlags extends RunnerFlags {
  tcpPort: number;
  taskPort: number;
}

const RUNNER_OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'diag-host': { type: 'string' },
  'diag-port': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  'drain-delay': { type: 'string' },
  'hook-timeout': { type: 'string' },
  'log-level': { type: 'string' },
  'version-string': { type: 'string' },
  workers: { type: 'string' },
  'ready-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'listen-fd': { type: 'string' },
  inetd: { type: 'boolean' },
  'connection-service': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const DEMO_OPTIONS = {
  ...RUNNER_OPTIONS,
  'tcp-port': { type: 'string' },
  'task-port': { type: 'string' },
} as const;

export const USAGE = `Usage:
  berth demo [flags]             the example system: HTTP /hello, TCP echo, tasks, diagnostics
  berth serve <module> [flags]   run a module's request listener, app or services
  berth call <host:port> <task> [--data S | --file F]   run one task (berth call --help)
  berth --version | --help

Flags (demo and serve):
  --host HOST                 interface for the services (demo: 127.0.0.1; serve: all)
  --port PORT                 HTTP port (default 8080, or env PORT)
  --diag-host HOST            diagnostics interface (default 127.0.0.1)
  --diag-port PORT            diagnostics port (default 8081)
  --shutdown-timeout DURATION budget for closing every service (default 5s)
  --drain-delay DURATION      keep serving after /ready turns 503 (default 0)
  --hook-timeout DURATION     bound on each shutdown hook the module exports (default 5s)
  --log-level LEVEL           fatal, error, warn, info, debug, trace, silent (default info)
  --version-string TEXT       version shown by /ready (default: package.json's)
  --workers N|auto            run N worker processes (auto: one per CPU; default 1, no cluster)
  --ready-timeout DURATION    a new worker must be ready within this (default 30s)
  --idle-timeout DURATION     exit 0 after this long with nothing active (default: never)
  -h, --help                  this text

systemd (socket activation):
  --listen-fd NAME|N          the HTTP service listens on the passed fd of that name or position
                              (other services take the fd named like them, automatically)
  --inetd                     the one connection to serve is on fd 0/1 (StandardInput=socket)
  --connection-service NAME   which service serves that connection, or Accept=yes's (default http)

Demo only:
  --tcp-port PORT             TCP echo port (default 8000)
  --task-port PORT            task server port (default 8082)

Durations: 5s, 500ms, 2m, 1h, or a number of milliseconds.
With --workers, SIGHUP replaces the workers one at a time without dropping a request.
Exit codes: 0 clean drain; 1 a service failed or the deadline cut live work;
2 bad usage; 128+n a second signal forced the exit.`;

/** What follows a usage error: where the whole usage is, rather than the usage itself. */
export const SEE_HELP = "Run 'berth --help' for the flags and commands.";

interface Parsed<T> {
  flags: T;
  positionals: string[];
  help: boolean;
}

type Values = Record<string, string | boolean | undefined>;

function parse(
  args: string[],
  options: typeof RUNNER_OPTIONS | typeof DEMO_OPTIONS,
): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Values, positionals };
  } catch (err) {
    // parseArgs says e.g. "Unknown option '--prot'"; keep its words, drop its advice.
    const message = (err as Error).message.split('. ')[0] ?? String(err);
    throw new UsageError(message, { cause: err });
  }
}

function parseRunnerFlags(
  values: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  defaultHost: string | undefined,
): RunnerFlags {
  const str = (name: string) => values[name] as string | undefined;
  const logLevel = str('log-level') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel as LogLevel)) {
    throw new UsageError(
      `--log-level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`,
    );
  }
  const port = str('port') ?? (env.PORT || undefined); // an empty PORT is no PORT
  const host = str('host');
  if (host === '') throw new UsageError('--host must not be empty');
  return {
    host: host ?? defaultHost,
    port:
      port === undefined
        ? 8080
        : parsePort(port, str('port') === undefined ? 'env PORT' : '--port'),
    diagHost: str('diag-host') ?? '127.0.0.1',
    diagPort: parsePort(str('diag-port') ?? '8081', '--diag-port'),
    shutdownTimeout: parseDuration(str('shutdown-timeout') ?? '5s', '--shutdown-timeout'),
    drainDelay: parseDuration(str('drain-delay') ?? '0', '--drain-delay'),
    hookTimeout: parseDuration(str('hook-timeout') ?? '5s', '--hook-timeout'),
    logLevel: logLevel as LogLevel,
    versionString: str('version-string'),
    workers: parseWorkers(str('workers') ?? '1'),
    readyTimeout: parseDuration(str('ready-timeout') ?? '30s', '--ready-timeout'),
    idleTimeout: idleTimeout(str('idle-timeout')),
    listenFd: nonEmpty(str('listen-fd'), '--listen-fd'),
    inetd: values.inetd === true,
    connectionService: nonEmpty(str('connection-service'), '--connection-service') ?? 'http',
  };
}

function runnerFlags(
  values: Values,
  env: NodeJS.ProcessEnv,
  defaultHost: string | undefined,
): RunnerFlags {
  const flags = parseRunnerFlags(values, env, defaultHost);
  if (flags.workers > 1 && flags.idleTimeout !== undefined) {
    throw new UsageError('--idle-timeout runs one process: it cannot be combined with --workers');
  }
  return flags;
}

export function parseDemoArgs(args: string[], env: NodeJS.ProcessEnv): Parsed<DemoFlags> {
  const { values, positionals } = parse(args, DEMO_OPTIONS);
  if (positionals.length > 0)
    throw new UsageError(`berth demo takes no arguments, got ${JSON.stringify(positionals[0])}`);
  const base = runnerFlags(values, env, '127.0.0.1');
  return {
    flags: {
      ...base,
      tcpPort: parsePort((values['tcp-port'] as string | undefined) ?? '8000', '--tcp-port'),
      taskPort: parsePort((values['task-port'] as string | undefined) ?? '8082', '--task-port'),
    },
    positionals,
    help: values.help === true,
  };
}

export function parseServeArgs(args: string[], env: NodeJS.ProcessEnv): Parsed<RunnerFlags> {
  const { values, positionals } = parse(args, RUNNER_OPTIONS);
  if (values.help !== true && positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0
        ? 'berth serve needs a module to run'
        : `berth serve takes one module, got ${positionals.length}`,
    );
  }
  return { flags: runnerFlags(values, env, undefined), positionals, help: values.help === true };
}
