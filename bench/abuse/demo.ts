/**
 * A `berth demo` in a child process for the abuse suite and the memory tests: started on
 * ephemeral ports from a given CLI (this checkout's dist/ or an older build's), its ports read
 * from the `started` log line, its resident memory read from the OS (/proc/<pid>/status), its
 * stats from its own /debug/vars, and always ended by pid.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { get } from 'node:http';

export interface Demo {
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Each service's port by name: http, echo, tasks, diagnostics. */
  readonly ports: Record<string, number>;
  /** Resident memory now, in bytes. */
  rss(): number;
  /** The demo's /debug/vars, parsed. */
  vars(): Promise<DebugVars>;
  stdout(): string;
  stderr(): string;
  /** Lines it has written to stdout so far (its log lines), counted whole. */
  lines(): number;
  /** Sends `signal` by pid (default SIGKILL) and waits up to `timeout` ms; the exit code. */
  stop(signal?: NodeJS.Signals, timeout?: number): Promise<number>;
  readonly exited: Promise<number>;
}

export interface DebugVars {
  services: Record<string, Record<string, unknown> & { state?: string }>;
  [key: string]: unknown;
}

export interface StartDemoOptions {
  /** The CLI's entry (dist/cli/main.js, or src/cli/main.ts with `nodeArgs: ['--import', 'tsx']`). */
  cli: string;
  /** The command and its module, `['demo']` or `['serve', path]`. @default ['demo'] */
  command?: string[];
  /** Flags after the command (every port is set to 0 unless given). */
  args?: string[];
  nodeArgs?: string[];
  /** Working directory (the checkout the CLI belongs to). */
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Bound on the start, ms. */
  timeout?: number;
  /** Start it under `ulimit -n` of this many descriptors. */
  ulimit?: number;
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Resident memory of a process, in bytes (VmRSS from /proc); 0 once it is gone. */
export function rssOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    return kb ? Number(kb[1]) * 1_024 : 0;
  } catch {
    return 0;
  }
}

/** Starts `berth demo` (or `berth serve`) and resolves once every service listens. */
export async function startDemo(options: StartDemoOptions): Promise<Demo> {
  const args = options.args ?? [];
  const command = options.command ?? ['demo'];
  const ports: string[] = [];
  const portFlags = ['--port', '--diag-port'];
  if (command[0] === 'demo') portFlags.push('--tcp-port', '--task-port');
  for (const flag of portFlags) {
    if (!args.includes(flag)) ports.push(flag, '0');
  }
  const argv = [...(options.nodeArgs ?? []), options.cli, ...command, ...ports, ...args];
  // Through a shell for the limit, which then execs node: the pid stays node's.
  const [file, fileArgs] =
    options.ulimit === undefined
      ? [process.execPath, argv]
      : [
          '/bin/sh',
          ['-c', `ulimit -n ${options.ulimit} && exec "$0" "$@"`, process.execPath, ...argv],
        ];
  const proc = spawn(file, fileArgs, {
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: '', ...options.env },
  });
  let out = '';
  let err = '';
  let lines = 0;
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  // Keep the tails only: an attack may make a demo log a lot.
  proc.stdout.on('data', (d: string) => {
    for (let i = d.indexOf('\n'); i !== -1; i = d.indexOf('\n', i + 1)) lines++;
    out = (out + d).slice(-200_000);
  });
  proc.stderr.on('data', (d: string) => {
    err = (err + d).slice(-20_000);
  });
  const exited = new Promise<number>((resolve) => {
    proc.once('exit', (code, signal) => resolve(code ?? 128 + (SIGNALS[signal ?? ''] ?? 0)));
  });
  const kill = (signal: NodeJS.Signals) => {
    if (proc.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(proc.pid, signal);
      } catch {}
    }
  };
  const stop = async (signal: NodeJS.Signals = 'SIGKILL', timeout = 10_000) => {
    kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        kill('SIGKILL');
        resolve();
      }, timeout);
    });
    await Promise.race([exited, bound]);
    clearTimeout(timer);
    return exited;
  };
  const deadline = Date.now() + (options.timeout ?? 20_000);
  let started: { services: { name: string; address: string }[] } | undefined;
  while (started === undefined) {
    const line = out.split('\n').find((l) => l.includes('"msg":"started: '));
    if (line) started = JSON.parse(line);
    else if (proc.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`berth demo did not start\nstdout:\n${out}\nstderr:\n${err}`);
    } else await new Promise((r) => setTimeout(r, 20));
  }
  const byName = Object.fromEntries(
    started.services.map((s) => [s.name, Number(s.address.split(':').pop())]),
  );
  return {
    proc,
    pid: proc.pid!,
    ports: byName,
    rss: () => rssOf(proc.pid!),
    vars: () => getJson(byName.diagnostics!, '/debug/vars') as Promise<DebugVars>,
    stdout: () => out,
    stderr: () => err,
    lines: () => lines,
    stop,
    exited,
  };
}

/** GET a JSON document from 127.0.0.1, within 5 s. */
export function getJson(port: number, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => {
        try {
          resolve(JSON.parse(body));
        } catch (error) {
          reject(error);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer within 5 s`)));
    req.on('error', reject);
  });
}

/** Samples a process's RSS every `everyMs` while an attack runs: before, peak and after. */
export class RssSampler {
  readonly #pid: number;
  readonly #timer: NodeJS.Timeout;
  readonly before: number;
  peak: number;

  constructor(pid: number, everyMs = 50) {
    this.#pid = pid;
    this.before = rssOf(pid);
    this.peak = this.before;
    this.#timer = setInterval(() => {
      this.peak = Math.max(this.peak, rssOf(this.#pid));
    }, everyMs);
  }

  /** Stops sampling; the peak seen, counting one last reading. */
  stop(): number {
    clearInterval(this.#timer);
    this.peak = Math.max(this.peak, rssOf(this.#pid));
    return this.peak;
  }
}
