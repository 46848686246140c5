/**
 * Shared test helpers: real sockets on 127.0.0.1, child processes that are always ended by pid,
 * and bounded waits. Nothing here fakes a socket.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { accessSync, constants as fsConstants } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { delimiter, dirname, join } from 'node:path';
import { Duplex } from 'node:stream';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const FIXTURES = join(ROOT, 'test', 'fixtures');

/** Connects to 127.0.0.1:port; resolves once connected. The socket is destroyed after the test. */
export async function connect(t: TestContext, port: number, host = '127.0.0.1'): Promise<Socket> {
  const socket = netConnect({ port, host });
  t.after(() => socket.destroy());
  await once(socket, 'connect');
  return socket;
}

/** Everything the socket sends until it ends, as a string. */
export async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let text = '';
  for await (const chunk of stream) text += chunk.toString();
  return text;
}

/** Resolves with the next chunk (as a string) the stream emits. */
export async function nextData(stream: NodeJS.ReadableStream): Promise<string> {
  const [chunk] = await once(stream, 'data');
  return (chunk as Buffer).toString();
}

/** Polls `predicate` every 5 ms until it holds; fails after `timeout` ms with `what`. */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeout = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(5);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One end of an in-memory connection: what it writes, its peer reads; ending sends EOF. */
class PairEnd extends Duplex {
  peer: PairEnd | undefined;
  override _read(): void {}
  override _write(
    chunk: Buffer,
    _: BufferEncoding,
    callback: (error?: Error | null) => void,
  ): void {
    this.peer?.push(chunk);
    callback();
  }
  override _final(callback: (error?: Error | null) => void): void {
    this.peer?.push(null);
    callback();
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Like a socket closing: the peer reads EOF.
    if (this.peer && !this.peer.readableEnded && !this.peer.destroyed) this.peer.push(null);
    callback(error);
  }
}

/** Two connected in-memory duplex streams, as Node 22's `duplexPair()` gives. */
export function duplexPair(): [Duplex, Duplex] {
  const a = new PairEnd();
  const b = new PairEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

export interface Child {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the first stdout line matching `pattern` (already seen or still to come). */
  line: (pattern: RegExp, timeout?: number) => Promise<string>;
  /** Resolves with the exit code, or 128+signal number when a signal ended it. */
  exited: Promise<number>;
}

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGTERM: 15,
};

/**
 * Spawns a process and registers its end with the test: SIGKILL by pid if still running after the
 * test. Output is collected; `line()` waits for a line on stdout.
 */
export function spawnChild(
  t: TestContext,
  command: string,
  args: string[],
  options: Parameters<typeof spawn>[2] = {},
): Child {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let out = '';
  let err = '';
  const waiting = new Set<() => void>();
  let ended = false; // exited, and its output read
  proc.stdout?.on('data', (d) => {
    out += d;
    for (const w of waiting) w();
  });
  proc.stderr?.on('data', (d) => {
    err += d;
  });
  // 'exit' can come before the last of stdout has been read (seen on Node 24: a 200 kB response
  // cut at 196,608 bytes), so wait for the pipes to end too. A grandchild that inherited them
  // could hold them open, so that wait is bounded.
  const drained = Promise.all(
    [proc.stdout, proc.stderr].map((s) =>
      s && !s.readableEnded ? new Promise((r) => s.once('close', r)) : undefined,
    ),
  );
  const exited = new Promise<number>((resolve) => {
    proc.once('exit', async (code, signal) => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, 2_000)))]);
      clearTimeout(timer);
      ended = true;
      for (const w of waiting) w();
      resolve(code ?? 128 + (SIGNALS[signal ?? ''] ?? 0));
    });
  });
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null && proc.pid) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {}
    }
  });
  const line = (pattern: RegExp, timeout = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = out.split('\n').find((l) => pattern.test(l));
        if (found !== undefined) {
          done();
          resolve(found);
        } else if (ended) {
          done();
          reject(
            new Error(
              `process exited before printing ${pattern}\nstdout:\n${out}\nstderr:\n${err}`,
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `no line matching ${pattern} within ${timeout} ms\nstdout:\n${out}\nstderr:\n${err}`,
          ),
        );
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        waiting.delete(check);
      };
      waiting.add(check);
      check();
    });
  return { proc, stdout: () => out, stderr: () => err, line, exited };
}

/** Spawns a TypeScript fixture (test/fixtures/<name>.ts) through tsx. */
export function spawnFixture(
  t: TestContext,
  name: string,
  args: string[] = [],
  options: Parameters<typeof spawn>[2] = {},
): Child {
  return spawnChild(
    t,
    process.execPath,
    ['--import', 'tsx', join(FIXTURES, `${name}.ts`), ...args],
    {
      cwd: ROOT,
      ...options,
    },
  );
}

/** Waits for a child to exit, killing it if it takes longer than `timeout` ms. */
export async function exitWithin(child: Child, timeout: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      child.proc.kill('SIGKILL');
      reject(
        new Error(
          `process did not exit within ${timeout} ms\nstdout:\n${child.stdout()}\nstderr:\n${child.stderr()}`,
        ),
      );
    }, timeout);
  });
  try {
    return await Promise.race([child.exited, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Prometheus's `promtool`: `$PROMTOOL`, else the copy .ci/run unpacks into .cache/, else the
 * first on `PATH`. Undefined when there is none (Debian's `prometheus` package ships it).
 */
export function findPromtool(): string | undefined {
  const candidates = [
    process.env.PROMTOOL,
    join(ROOT, '.cache', 'promtool', 'usr', 'bin', 'promtool'),
    ...(process.env.PATH ?? '').split(delimiter).map((dir) => dir && join(dir, 'promtool')),
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {}
  }
  return undefined;
}

/**
 * Runs `promtool check metrics` on a scrape's text. Resolves with its exit code and what it
 * printed (its findings go to stdout or stderr depending on the version).
 */
export async function promtoolCheck(
  t: TestContext,
  promtool: string,
  text: string,
): Promise<{ code: number; output: string }> {
  const child = spawnChild(t, promtool, ['check', 'metrics'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.proc.stdin?.end(text);
  const code = await exitWithin(child, 10_000);
  return { code, output: `${child.stdout()}${child.stderr()}`.trim() };
}
