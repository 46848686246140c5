#!/usr/bin/env node
/**
 * The `berth` command: `demo`, `serve <module>`, `--version`, `--help`. It is the edge: it
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
import { demoServices } from './demo.js';
import { parseDemoArgs, parseServeArgs, type RunnerFlags, USAGE } from './flags.js';
import { createLogger, type Logger, logGroup, logPool, logResult } from './log.js';
import { loadModule, toServable } from './serve.js';

const here = dirname(fileURLToPath(import.meta.url));
const ownVersion = (): string =>
  (JSON.parse(readFileSync(join(here, '..', '..', 'package.json'), 'utf8')) as { version: string })
    .version;

/** Runs services (or a group) under the runner with the CLI's flags; resolves with the exit code. */
async function runGroup(
  servable: Service[] | ServiceGroup,
  flags: RunnerFlags,
  version: string,
  log: Logger,
): Promise<number> {
  const group =
    servable instanceof ServiceGroup
      ? servable
      : new ServiceGroup({
          services: servable,
          diagnostics: { port: flags.diagPort, host: flags.diagHost, version },
          shutdownTimeout: flags.shutdownTimeout,
          drainDelay: flags.drainDelay,
        });
  logGroup(group, log, { shutdownTimeout: flags.shutdownTimeout, drainDelay: flags.drainDelay });
  const result = await group.run();
  logResult(log, result);
  return result.exitCode;
}

/**
 * With `--workers N`: in the primary, a pool of workers and the diagnostics server under the
 * runner, SIGHUP for a reload; in each worker (the same command, forked), `build()`'s services.
 */
async function runClustered(
  build: () => Promise<Service[] | ServiceGroup>,
  flags: RunnerFlags,
  version: string,
  log: Logger,
): Promise<number> {
  const settings = { shutdownTimeout: flags.shutdownTimeout, drainDelay: flags.drainDelay };
  if (cluster.isWorker) {
    const servable = await build();
    if (servable instanceof ServiceGroup) {
      throw new UsageError(
        'a module that exports a ServiceGroup runs its own runner: drop --workers, or export services',
      );
    }
    const workerLog = log.child({ worker: cluster.worker?.id });
    return runWorker(servable, {
      ...settings,
      observe: (group) => {
        logGroup(group, workerLog, settings);
        group.on('stopped', (result) => logResult(workerLog, result));
      },
    });
  }
  const { group, pool } = createClusterPrimary({
    size: flags.workers,
    diagnostics: { port: flags.diagPort, host: flags.diagHost, version },
    readyTimeout: flags.readyTimeout,
    ...settings,
  });
  logGroup(group, log, settings);
  logPool(pool, group, log);
  const onHangup = () => {
    log.info({ signal: 'SIGHUP' }, 'signal received: SIGHUP');
    pool.reload().catch(() => {}); // a failed reload is logged by logPool and changes nothing
  };
  process.on('SIGHUP', onHangup);
  const result = await group.run();
  process.off('SIGHUP', onHangup);
  logResult(log, result);
  return result.exitCode;
}

function runEither(
  build: () => Promise<Service[] | ServiceGroup>,
  flags: RunnerFlags,
  version: string,
  log: Logger,
): Promise<number> {
  if (flags.workers > 1) return runClustered(build, flags, version, log);
  return build().then((servable) => runGroup(servable, flags, version, log));
}

async function demo(args: string[]): Promise<number> {
  const { flags, help } = parseDemoArgs(args, process.env);
  if (help) return usage(0);
  const log = createLogger(flags.logLevel);
  return runEither(
    async () => demoServices(flags),
    flags,
    flags.versionString ?? ownVersion(),
    log,
  );
}

async function serve(args: string[]): Promise<number> {
  const { flags, positionals, help } = parseServeArgs(args, process.env);
  if (help) return usage(0);
  const specifier = positionals[0]!;
  const log = createLogger(flags.logLevel);
  const version = flags.versionString ?? findPackageVersion(dirname(resolve(specifier)));
  // Under --workers the primary never loads the module: only workers run application code.
  return runEither(
    async () => toServable(specifier, await loadModule(specifier), flags),
    flags,
    version,
    log,
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
    if (err instanceof UsageError) process.stderr.write(`\n${USAGE}\n`);
    else if (err.cause)
      process.stderr.write(`cause: ${String((err.cause as Error).stack ?? err.cause)}\n`);
    process.exit(2);
  }
  const code = err instanceof BerthError ? ` (${err.code})` : '';
  process.stderr.write(`berth: ${(err as Error).stack ?? String(err)}${code}\n`);
  process.exit(1);
}
