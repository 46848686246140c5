/**
 * The demo's tasks (docs/protocol.md, "Demo tasks"): echo, sleep, a stream of N bytes, sum, one
 * that always fails with an application code, and one that fails without a code (Error 205). Messages and responses are ASCII so they can be
 * tried with `berth call`. `berth demo` serves them on 127.0.0.1:8082.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import { TaskError } from '../errors.js';
import type { TaskContext } from './task-definition.js';
import { TaskServer, type TaskServerOptions } from './task-server.js';

/** The demo's task codes. */
export const DemoTask = Object.freeze({
  ECHO: 1,
  SLEEP: 2,
  BYTES: 3,
  SUM: 4,
  FAIL: 5,
  INTERNAL: 6,
} as const);

/** The port `berth demo` serves the demo tasks on. */
export const DEMO_TASK_PORT = 8082;

/** Application error code for a message the task cannot read. */
export const BAD_INPUT = 1;
/** Application error code of the `fail` task. */
export const ALWAYS_FAILS = 42;

const MAX_SLEEP = 600_000; // 10 min
const MAX_BYTES = 1_073_741_824; // 1 GiB
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz';
const PIECE = 64 * 1_024;
/** What `sum` adds: an optional sign, digits, an optional fraction (no exponent, no hex). */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)$/;
/** The alphabet repeated over one piece and a bit, so any offset can be sliced from it. */
const PATTERN = Buffer.from(ALPHABET.repeat(Math.ceil(PIECE / 26) + 1));

function decimal(message: Buffer, what: string, max: number): number {
  const text = message.toString('latin1').trim();
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n > max) {
    throw new TaskError(
      BAD_INPUT,
      `${what} must be a whole number from 0 to ${max}, got ${JSON.stringify(text.slice(0, 40))}`,
    );
  }
  return n;
}

/** `N` bytes of the alphabet repeated, in pieces of 64 KiB. */
async function* alphabet(n: number): AsyncGenerator<Buffer> {
  let offset = 0;
  while (offset < n) {
    const size = Math.min(PIECE, n - offset);
    const start = offset % 26;
    yield PATTERN.subarray(start, start + size);
    offset += size;
  }
}

/** Registers the demo tasks on `server`; returns it. */
export function registerDemoTasks(server: TaskServer): TaskServer {
  server.register(DemoTask.ECHO, (message: Buffer) => message, 'echo');
  server.register(
    DemoTask.SLEEP,
    async (message: Buffer, { signal }: TaskContext) => {
      const ms = decimal(message, 'sleep takes milliseconds that', MAX_SLEEP);
      await sleep(ms, undefined, { signal });
      return `slept ${ms} ms`;
    },
    'sleep',
  );
  server.register(
    DemoTask.BYTES,
    (message: Buffer) => alphabet(decimal(message, 'bytes takes a count that', MAX_BYTES)),
    'bytes',
  );
  server.register(
    DemoTask.SUM,
    (message: Buffer) => {
      let sum = 0;
      for (const word of message.toString('utf8').split(/[ \t\r\n,]+/)) {
        if (word === '') continue; // `1,,2`, and an empty message: the sum of nothing is 0
        if (!DECIMAL.test(word)) {
          throw new TaskError(BAD_INPUT, `not a number: ${JSON.stringify(word.slice(0, 40))}`);
        }
        sum += Number(word);
      }
      // JavaScript's shortest round-trip form of the double: `0.1 0.2` → 0.30000000000000004.
      return String(sum);
    },
    'sum',
  );
  server.register(
    DemoTask.FAIL,
    () => {
      throw new TaskError(ALWAYS_FAILS, 'this task always fails');
    },
    'fail',
  );
  server.register(
    DemoTask.INTERNAL,
    () => {
      throw new Error('the demo task `internal` fails without an error code');
    },
    'internal',
  );
  return server;
}

/**
 * A task server with the demo tasks, on 127.0.0.1:8082 unless `options` says where.
 *
 * @example
 * const demo = createDemoTaskServer({ port: 0 });
 * await demo.start();
 */
export function createDemoTaskServer(options: TaskServerOptions = {}): TaskServer {
  const where =
    options.port !== undefined ||
    options.path !== undefined ||
    options.fd !== undefined ||
    options.server !== undefined ||
    options.connection !== undefined;
  return registerDemoTasks(
    new TaskServer(where ? options : { port: DEMO_TASK_PORT, host: '127.0.0.1', ...options }),
  );
}
