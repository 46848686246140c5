#!/usr/bin/env node
/**
 * The `berth` command: `demo`, `serve <module>`, `call <host:port> <task>`, `--version`, `--help`. It is the edge: it
 * parses flags, builds a ServiceGroup, logs its life, and exits with the group's exit code.
 */

import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClusterPrimary } from '../cluster/cluster.js';
import { runWorker } from '../cluster/worker.js';
import { findPackageVersion } from '../diagnostics/diagnostics-server.js';
import { BerthError, InvalidModuleError, UsageError } from '../errors.js';
import { ServiceGroup } from '../runner/service-group.js';
import type { Service } from '../service.js';
import { callCommand } from './call.js';
import { demoServices } from './demo.js';
import { parseDemoArgs, parseServeArgs, type RunnerFlags, SEE_HELP, USAGE } from './flags.js';
import { createLogger, type Logger, logGroup, logPool, logResult } from './log.js';
import { encodeFds, INHERITED_FDS_ENV, type Placement, placeServices } from './placement.js';
import { loadModule, type ServeHooks, toServable } from './serve.js';

const here = dirname(fileURLToPath(import.meta.url));
const ownVersion = (): string =>
  (JSON.parse(readFileSync(join(here, '..', '..', 'package.json'), 'utf8')) as { version: string })
    .version;

/** What a command runs: services (or a group), and the shutdown hooks a served module exports. */
interface Built {
  servable: Service[] | ServiceGroup;
  hooks?: ServeHooks;
}

/** Builds the services of a command, placed where the service manager's sockets say. */
type Build = (placement: Placement) => Promise<Built>;

/** Runs services (or a group) under the runner with the CLI's flags; resolves with the exit code. */
async function runGroup(
  { servable, hooks }: Built,
  placement: Placement,
  flags: RunnerFlags,
  version: string,
  log: Logger,
): Promise<number> {
  const one = placement.oneConnection;
  let group: ServiceGroup;
  if (servable instanceof ServiceGroup) {
    if (one)
      throw new UsageError(
        'a ServiceGroup export cannot serve one accepted connection; export services',
      );
    group = servable;
    log.info(
      'the module exports its own ServiceGroup: its settings apply, not the runner flags (--shutdown-timeout, --drain-delay, --diag-*, --idle-timeout)',
    );
  } else {
    const services = one ? servable.filter((s) => s.name === one.service) : servable;
    if (one && services.length === 0) {
      throw new UsageError(
        `--connection-service ${one.service}: no service of that name (${servable.map((s) => s.name).join(', ')})`,
      );
    }
    group = new ServiceGroup({
      services,
      // One process per connection: a diagnostics port would clash between instances.
      ...(one
        ? {}
        : {
            diagnostics: {
              ...placement.listen('diagnostics', { port: flags.diagPort, host: flags.diagHost }),
              version,
            },
          }),
      shutdownTimeout: flags.shutdownTimeout,
      drainDelay: flags.drainDelay,
      ...hooks,
      hookTimeout: flags.hookTimeout,
      exitOnForce: true,
      ...(flags.idleTimeout === undefined ? {} : { idleTimeout: flags.idleTimeout }),
    });
  }
  warnUnused(placement, log);
  logGroup(group, log, { shutdownTimeout: flags.shutdownTimeout, drainDelay: flags.drainDelay });
  const result = await group.run();
  logResult(log, result);
  return result.exitCode;
}

function warnUnused(placement: Placement, log: Logger): void {
  for (const { fd, name } of placement.unused()) {
    log.warn(
      { fd, name },
      `fd ${fd} (${name}) was passed, but no service is named ${name}; use --listen-fd`,
    );
  }
}

/**
 * With `--workers N`: in the primary, a pool of workers and the diagnostics server under the
 * runner, SIGHUP for a reload; in each worker (the same command, forked), the built services.
 */
async function runClustered(
  build: Build,
  placement: Placement,
  flags: RunnerFlags,
  version: string,
  log: Logger,
): Promise<number> {
  const settings = { shutdownTimeout: flags.shutdownTimeout, drainDelay: flags.drainDelay };
  if (cluster.isWorker) {
    const { servable, hooks } = await build(placement);
    if (servable instanceof ServiceGroup) {
      throw new UsageError(
        'a module that exports a ServiceGroup runs its own runner: drop --workers, or export services',
      );
    }
    const workerLog = log.child({ worker: cluster.worker?.id });
    return runWorker(servable, {
      ...settings,
      ...hooks,
      hookTimeout: flags.hookTimeout,
      observe: (group) => {
        logGroup(group, workerLog, settings);
        group.on('stopped', (result) => logResult(workerLog, result));
      },
    });
  }
  const diagnostics = placement.listen('diagnostics', {
    port: flags.diagPort,
    host: flags.diagHost,
  });
  // The workers listen on the fds the primary adopted: Node's cluster makes the primary, which
  // holds them, accept for the workers.
  const forWorkers = placement.unused();
  if (forWorkers.length > 0) {
    process.env[INHERITED_FDS_ENV] = encodeFds(forWorkers, placement.main);
  }
  const { group, pool } = createClusterPrimary({
    size: flags.workers,
    diagnostics: { ...diagnostics, version },
    readyTimeout: flags.readyTimeout,
    exitOnForce: true,
    ...settings,
  });
  logGroup(group, log, settings);
  logPool(pool, group, log);
  const onHangup = async () => {
    log.info({ signal: 'SIGHUP' }, 'signal received: SIGHUP');
    void group.notifier?.reloading('Reloading workers');
    // A failed reload is logged by logPool and changes nothing: the old workers serve on.
    await pool.reload().catch(() => {});
    void group.notifier?.ready(`Serving: ${pool.stats.address}`);
  };
  process.on('SIGHUP', onHangup);
  const result = await group.run();
  process.off('SIGHUP', onHangup);
  logResult(log, result);
  return result.exitCode;
}

async function runCommand(build: Build, flags: RunnerFlags, version: string): Promise<number> {
  // In inetd style stdout is the client's connection: the logs go to stderr.
  const log = createLogger(flags.logLevel, { toStderr: flags.inetd });
  const placement = placeServices(flags);
  if (flags.workers > 1) return runClustered(build, placement, flags, version, log);
  return runGroup(await build(placement), placement, flags, version, log);
}

async function demo(args: string[]): Promise<number> {
  const { flags, help } = parseDemoArgs(args, process.env);
  if (help) return usage(0);
  return runCommand(
    async (placement) => ({ servable: demoServices(flags, placement) }),
    flags,
    flags.versionString ?? ownVersion(),
  );
}

async function serve(args: string[]): Promise<number> {
  const { flags, positionals, help } = parseServeArgs(args, process.env);
  if (help) return usage(0);
  const specifier = positionals[0]!;
  const version = flags.versionString ?? findPackageVersion(dirname(resolve(specifier)));
  // Under --workers the primary never loads the module: only workers run application code.
  return runCommand(
    async (placement) => {
      const module = await loadModule(specifier);
      return {
        servable: await toServable(specifier, module, flags, placement),
        hooks: module.hooks,
      };
    },
    flags,
    version,
  );
}

function usage(code: number): number {
  (code === 0 ? process.stdout : process.stderr).write(`${USAGE}\n`);
  return code;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'demo':
      return demo(rest);
    case 'serve':
      return serve(rest);
    case 'call':
      return callCommand(rest);
    case '--version':
    case '-v':
      process.stdout.write(`${ownVersion()}\n`);
      return 0;
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      return usage(command === undefined ? 2 : 0);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

try {
  const code = await main(process.argv.slice(2));
  // Exit now: a user's module may leave timers or sockets of its own behind, and the services
  // are closed. This is what the seed's main did when it returned.
  process.exit(code);
} catch (err) {
  if (err instanceof UsageError || err instanceof InvalidModuleError) {
    process.stderr.write(`berth: ${err.message}\n`);
    // One line pointing to the help, as git, npm and docker do: the error stays on screen.
    if (err instanceof UsageError) process.stderr.write(`${SEE_HELP}\n`);
    else if (err.cause)
      process.stderr.write(`cause: ${String((err.cause as Error).stack ?? err.cause)}\n`);
    process.exit(2);
  }
  const code = err instanceof BerthError ? ` (${err.code})` : '';
  process.stderr.write(`berth: ${(err as Error).stack ?? String(err)}${code}\n`);
  process.exit(1);
}
