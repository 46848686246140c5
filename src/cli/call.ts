/**
 * `berth call`: runs one task on a berth task server and prints its response. For humans trying a
 * server and for scripts: the response goes to stdout as it streams in, an Error response goes to
 * stderr as its code and message, and the exit code says which.
 */

import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import {
  InvalidOptionError,
  TaskConnectError,
  TaskConnectionClosedError,
  TaskError,
  TaskGoodbyeError,
  TaskProtocolError,
  TaskRefusedError,
  TaskTimeoutError,
} from '../errors.js';
import { type Endpoint, parseEndpoint } from '../protocol/channel/endpoint.js';
import { errorCodeName } from '../protocol/codes.js';
import { TaskChannel } from '../protocol/task-channel.js';
import type { TaskBody } from '../protocol/task-client.js';

/** Exit codes of `berth call`. */
export const CALL_EXIT = Object.freeze({
  OK: 0,
  /** The task answered with Error. */
  TASK_ERROR: 1,
  USAGE: 2,
  /** Could not connect, was refused, or the connection failed. */
  CONNECTION: 3,
  /** `--timeout` passed (as `timeout(1)` exits). */
  TIMEOUT: 124,
});

const USAGE = `usage: berth call <address>[,<address>...] <task> [--data STRING | --file PATH] [--timeout MS] [--byte-order le|be]
       berth call <address>[,<address>...] --list

Runs one task on a berth task server and prints its response to stdout.

  <address>        host:port, [v6 address]:port, a port alone (127.0.0.1), or unix:/path;
                   several, comma-separated, or a host name with several addresses: the call
                   goes to one that answers (and again to another if that one is going away)
  <task>           a task code (0-249) or a task name the server registered
  --data STRING    the message
  --file PATH      the message is the file's contents (- for stdin)
                   (with neither, the message is stdin when stdin is not a terminal, else empty)
  --timeout MS     give up after MS milliseconds (connecting included); the task is cancelled
  --byte-order     le (default) or be
  --list           print the server's tasks, one "code name" a line

exit codes: 0 OK; 1 the task answered Error (its code and message on stderr); 2 bad usage;
3 could not connect or the connection failed; 124 the timeout passed`;

class UsageError extends Error {}

/** Where to connect, from `host:port`, `[v6]:port`, `port` or `unix:/path`. */
export function parseAddress(text: string): Endpoint {
  try {
    return parseEndpoint(text, '<address>');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function describeError(err: unknown, timeout: number | undefined): string {
  if (err instanceof TaskTimeoutError && timeout !== undefined) {
    return `timed out after ${timeout} ms (--timeout); the task was cancelled`;
  }
  if (err instanceof TaskError) {
    const name = errorCodeName(err.errorCode);
    return `error ${err.errorCode}${name ? ` (${name})` : ''}: ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

function exitCodeFor(err: unknown): number {
  if (String((err as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS_'))
    return CALL_EXIT.USAGE;
  if (err instanceof TaskTimeoutError) return CALL_EXIT.TIMEOUT;
  if (err instanceof TaskError) return CALL_EXIT.TASK_ERROR;
  if (err instanceof UsageError || err instanceof InvalidOptionError) return CALL_EXIT.USAGE;
  if (
    err instanceof TaskConnectError ||
    err instanceof TaskRefusedError ||
    err instanceof TaskConnectionClosedError ||
    err instanceof TaskGoodbyeError ||
    err instanceof TaskProtocolError
  ) {
    return CALL_EXIT.CONNECTION;
  }
  return CALL_EXIT.TASK_ERROR;
}

async function messageFrom(data: string | undefined, file: string | undefined): Promise<TaskBody> {
  if (data !== undefined && file !== undefined) {
    throw new UsageError('give --data or --file, not both');
  }
  if (data !== undefined) return data;
  if (file === '-' || (file === undefined && !process.stdin.isTTY)) return process.stdin;
  if (file === undefined) return undefined;
  try {
    await stat(file);
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  return createReadStream(file);
}

async function write(chunk: Buffer): Promise<void> {
  if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
}

/**
 * Runs `berth call` with the arguments after the word `call`. Prints the response to stdout, any
 * error to stderr, and returns the exit code (`CALL_EXIT`).
 */
export async function callCommand(args: string[]): Promise<number> {
  let channel: TaskChannel | undefined;
  let timeout: number | undefined;
  try {
    const { values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: {
        data: { type: 'string', short: 'd' },
        file: { type: 'string', short: 'f' },
        timeout: { type: 'string', short: 't' },
        'byte-order': { type: 'string' },
        list: { type: 'boolean', short: 'l' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return CALL_EXIT.OK;
    }
    const [address, task, ...extra] = positionals;
    if (address === undefined || (task === undefined && !values.list) || extra.length > 0) {
      throw new UsageError(
        extra.length > 0 ? `unexpected ${JSON.stringify(extra[0])}` : 'give an address and a task',
      );
    }
    const byteOrder = values['byte-order'] ?? 'le';
    if (byteOrder !== 'le' && byteOrder !== 'be') {
      throw new UsageError(`--byte-order must be le or be, got ${JSON.stringify(byteOrder)}`);
    }
    if (values.timeout !== undefined) {
      timeout = /^\d+$/.test(values.timeout) ? Number(values.timeout) : Number.NaN;
      if (!Number.isSafeInteger(timeout)) {
        throw new UsageError(
          `--timeout must be a whole number of ms, got ${JSON.stringify(values.timeout)}`,
        );
      }
    }
    let code: number | string | undefined;
    if (task !== undefined) {
      code = /^\d+$/.test(task) ? Number(task) : task;
      if (typeof code === 'number' && code > 249) {
        throw new UsageError(`task codes go from 0 to 249, got ${code}`);
      }
    }
    const body = values.list ? undefined : await messageFrom(values.data, values.file);
    const deadline = timeout === undefined ? undefined : Date.now() + timeout;
    channel = new TaskChannel({
      endpoints: address.split(',').map(parseAddress),
      // A command fails at once when nothing answers (exit 3), rather than wait for a server.
      waitForReady: false,
      ...(timeout === undefined ? {} : { readyTimeout: timeout }),
      connection: { byteOrder, keepAlive: 0, ...(timeout === undefined ? {} : { timeout }) },
    });
    const left = () =>
      deadline === undefined ? {} : { timeout: Math.max(1, deadline - Date.now()) };
    if (values.list) {
      for (const { code: c, name } of await channel.listTasks(left())) {
        await write(Buffer.from(`${c}${name ? ` ${name}` : ''}\n`));
      }
    } else {
      const response = channel.stream(code!, body, left());
      for await (const chunk of response) await write(chunk as Buffer);
    }
    await channel.close();
    return CALL_EXIT.OK;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') return CALL_EXIT.OK; // `| head` stopped reading
    const code = exitCodeFor(err);
    process.stderr.write(`berth call: ${describeError(err, timeout)}\n`);
    // One line of error and one of where to look, as `berth` itself (and git, npm) do.
    if (code === CALL_EXIT.USAGE) process.stderr.write("Run 'berth call --help' for usage.\n");
    return code;
  } finally {
    await channel?.destroy();
    if (process.stdin.readable && !process.stdin.isTTY) process.stdin.destroy();
  }
}
