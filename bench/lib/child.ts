/**
 * Child processes for benchmarks: every server fixture and load generator runs in its own
 * process, started here and ended here. Each child is registered the moment it is spawned and
 * killed by pid when the harness exits for any reason (normal end, a thrown error, SIGINT,
 * SIGTERM), and every wait on a child has a time bound.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = join(BENCH_DIR, '..');

const live = new Set<ChildProcess>();

function killPid(proc: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
  try {
    process.kill(proc.pid, signal);
  } catch {
    // Already gone.
  }
}

/** Kills every child still running, by pid. Safe to call more than once. */
export function killAll(): void {
  for (const proc of live) killPid(proc);
  live.clear();
}

let installed = false;

/** Makes sure no child outlives the harness, however the harness ends. */
export function installExitHandlers(): void {
  if (installed) return;
  installed = true;
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      killAll();
      process.stderr.write(`\nbench: ${signal}, stopped every child process\n`);
      process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
}

let softFdLimit: number | undefined;

/** The soft limit on open descriptors a child inherits (`ulimit -n`). */
export function fdLimit(): number {
  if (softFdLimit === undefined) {
    const out = spawnSync('/bin/sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim();
    softFdLimit = out === 'unlimited' ? Number.POSITIVE_INFINITY : Number(out) || 1024;
  }
  return softFdLimit;
}

export interface SpawnOptions {
  /** Kill the child (SIGKILL) if it is still running after this many ms. */
  timeout: number;
  /** Descriptors the child needs; when above `ulimit -n`, it is raised in a `/bin/sh` wrapper. */
  fds?: number;
  /** Extra node flags (e.g. `--cpu-prof`), before the script. */
  nodeFlags?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface Child {
  readonly proc: ChildProcess;
  readonly label: string;
  /** Resolves with the first stdout line matching `pattern`, seen already or still to come. */
  line(pattern: RegExp, timeout: number): Promise<string>;
  /** Every stdout line matching `pattern` from now on is passed to `fn`. */
  onLine(pattern: RegExp, fn: (line: string) => void): void;
  /** Writes one line to the child's stdin (its control channel). */
  send(line: string): void;
  /** Resolves once the child has exited: its exit code, or 128+n for a signal. */
  readonly exited: Promise<number>;
  readonly running: boolean;
  stderr(): string;
  /** Sends `signal` by pid (default SIGKILL), then waits up to `timeout` ms for the exit. */
  stop(signal?: NodeJS.Signals, timeout?: number): Promise<number>;
  /**
   * Ends the child's stdin, which a fixture takes as "exit normally" (so exit-time work such as
   * writing a --cpu-prof profile happens), then kills it by pid if it is still there after
   * `timeout` ms.
   */
  close(timeout?: number): Promise<number>;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Where `spawnScript` takes compiled JavaScript from, once `useCompiled` has set it. */
let compiledRoot: string | undefined;

/**
 * From now on `spawnScript` runs a script of this checkout as the JavaScript tsc compiled it to
 * under `dir` (`bench/fixtures/x.ts` is `<dir>/bench/fixtures/x.js`), with plain `node`: no
 * loader on any side. tsx wraps every named function it loads, which costs code made of small
 * functions (berth's) more than a raw fixture's one big handler (bench/notes/channel.md).
 */
export function useCompiled(dir: string): void {
  compiledRoot = dir;
}

/**
 * Runs a script of this checkout with `args`, stdin as a control channel and stdout read line by
 * line: its compiled JavaScript after `useCompiled`, else the TypeScript under
 * `node --import tsx` (the variant tools, which point fixtures at other trees of source). Either
 * way every side of a comparison runs the same way.
 */
export function spawnScript(
  label: string,
  script: string,
  args: string[],
  options: SpawnOptions,
): Child {
  const inTree = !relative(ROOT, script).startsWith('..');
  if (compiledRoot && inTree && script.endsWith('.ts')) {
    const js = join(compiledRoot, relative(ROOT, script)).replace(/\.ts$/, '.js');
    return spawnNode(label, [js, ...args], options);
  }
  return spawnNode(label, ['--import', 'tsx', script, ...args], options);
}

/**
 * Runs `node` with `nodeArgs` as they are (plain JavaScript, e.g. berth's built CLI in dist/, or
 * `-e` code), otherwise as `spawnScript`: registered, killed by pid, stdout read line by line.
 */
export function spawnNode(label: string, args: string[], options: SpawnOptions): Child {
  const nodeArgs = [...(options.nodeFlags ?? []), ...args];
  let command = process.execPath;
  let argv = nodeArgs;
  if (options.fds !== undefined && options.fds > fdLimit()) {
    // `exec` keeps the pid: the pid we hold is node's, so killing it by pid ends the child.
    command = '/bin/sh';
    argv = ['-c', `ulimit -n ${options.fds} && exec "$@"`, 'sh', process.execPath, ...nodeArgs];
  }
  const proc = spawn(command, argv, {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...options.env },
  });
  live.add(proc);
  let buffered = '';
  let err = '';
  const lines: string[] = [];
  const listeners = new Set<(line: string) => void>();
  proc.stdout?.setEncoding('utf8');
  proc.stdout?.on('data', (chunk: string) => {
    buffered += chunk;
    let nl = buffered.indexOf('\n');
    while (nl !== -1) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      lines.push(line);
      for (const fn of listeners) fn(line);
      nl = buffered.indexOf('\n');
    }
  });
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (chunk: string) => {
    // Keep the tail only: a chatty child must not grow the harness without bound.
    err = (err + chunk).slice(-8_000);
  });
  proc.stdin?.on('error', () => {}); // a child that exited before reading its stdin
  const killer = setTimeout(() => killPid(proc), options.timeout);
  killer.unref();
  const exited = new Promise<number>((resolve) => {
    proc.once('exit', (code, signal) => {
      clearTimeout(killer);
      live.delete(proc);
      for (const fn of listeners) fn('');
      resolve(code ?? 128 + (SIGNAL_NUMBERS[signal ?? ''] ?? 0));
    });
    proc.once('error', (error) => {
      err += String(error);
      clearTimeout(killer);
      live.delete(proc);
      resolve(127);
    });
  });

  const running = () => proc.exitCode === null && proc.signalCode === null;

  const line = (pattern: RegExp, timeout: number) =>
    new Promise<string>((resolve, reject) => {
      const seen = lines.find((l) => pattern.test(l));
      if (seen !== undefined) return resolve(seen);
      const done = (fn: () => void) => {
        clearTimeout(timer);
        listeners.delete(check);
        fn();
      };
      const check = (l: string) => {
        if (pattern.test(l)) done(() => resolve(l));
        else if (!running())
          done(() =>
            reject(new Error(`${label} exited before printing ${pattern}\nstderr:\n${err}`)),
          );
      };
      const timer = setTimeout(
        () =>
          done(() =>
            reject(new Error(`${label}: no line matching ${pattern} within ${timeout} ms\n${err}`)),
          ),
        timeout,
      );
      listeners.add(check);
      if (!running()) check('');
    });

  return {
    proc,
    label,
    line,
    onLine(pattern, fn) {
      listeners.add((l) => {
        if (pattern.test(l)) fn(l);
      });
    },
    send(text) {
      if (running() && proc.stdin?.writable) proc.stdin.write(`${text}\n`);
    },
    exited,
    get running() {
      return running();
    },
    stderr: () => err,
    async stop(signal = 'SIGKILL', timeout = 5_000) {
      killPid(proc, signal);
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<number>((resolve) => {
        timer = setTimeout(() => {
          killPid(proc);
          resolve(exited);
        }, timeout);
      });
      try {
        return await Promise.race([exited, bound]);
      } finally {
        clearTimeout(timer);
      }
    },
    async close(timeout = 5_000) {
      proc.stdin?.end();
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeout);
      });
      await Promise.race([exited, bound]);
      clearTimeout(timer);
      killPid(proc);
      return exited;
    },
  };
}

/** Starts a server fixture and waits for its `ready <port>` line; returns the child and port. */
export async function startServer(
  label: string,
  script: string,
  args: string[],
  options: SpawnOptions & { readyTimeout?: number },
): Promise<{ child: Child; port: number }> {
  const child = spawnScript(label, script, args, options);
  try {
    const ready = await child.line(/^ready \d+$/, options.readyTimeout ?? 15_000);
    return { child, port: Number(ready.split(' ')[1]) };
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** Parses the `result <json>` line a load generator prints last. */
export async function resultOf<T>(child: Child, timeout: number): Promise<T> {
  const line = await child.line(/^result /, timeout);
  return JSON.parse(line.slice('result '.length)) as T;
}
