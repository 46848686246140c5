#!/usr/bin/env node
/**
 * The `berth` command: `demo`, `serve <module>`, `--version`, `--help`. It is the edge: it
 * parses flags, builds a ServiceGroup, logs its life, and exits with the group's exit code.
 */

import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findPackageVersion } from '../diagnostics/diagnostics-server.js';
import { BerthError, InvalidModuleError, UsageError } from '../errors.js';
import { ServiceGroup } from '../runner/service-group.js';
import type { Service } from '../service.js';
import { demoServices } from './demo.js';
import { parseDemoArgs, parseServeArgs, type RunnerFlags, USAGE } from './flags.js';
import { createLogger, type Logger, logGroup, logResult } from './log.js';
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

async function demo(args: string[]): Promise<number> {
  const { flags, help } = parseDemoArgs(args, process.env);
  if (help) return usage(0);
  const log = createLogger(flags.logLevel);
  return runGroup(demoServices(flags), flags, flags.versionString ?? ownVersion(), log);
}

async function serve(args: string[]): Promise<number> {
  const { flags, positionals, help } = parseServeArgs(args, process.env);
  if (help) return usage(0);
  const specifier = positionals[0]!;
  const log = createLogger(flags.logLevel);
  const servable = await toServable(specifier, await loadModule(specifier), flags);
  const version = flags.versionString ?? findPackageVersion(dirname(resolve(specifier)));
  return runGroup(servable, flags, version, log);
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
