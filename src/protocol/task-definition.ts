/**
 * What a task is, in TypeScript form: the seed's two phases (a parse step that reads the message,
 * one at a time per client, and a run step that runs concurrently), what each phase is given, and
 * what a run step may answer with. `TaskServer.register()` takes these.
 */

import type { Readable } from 'node:stream';
import { InvalidOptionError } from '../errors.js';
import { describe, validateFunction } from '../options.js';
import type { TaskConnection } from './task-connection.js';

/** What a task's phases learn about the task. */
export interface TaskContext {
  /** The task id the client chose; unique among the client's active tasks. */
  readonly id: number;
  /** The task code (0 to 249). */
  readonly code: number;
  /**
   * Aborted when the task is cancelled (reason: `TaskCancelledError`), when the client goes away
   * (`TaskConnectionClosedError`), or when the server's close deadline passes. Made on first use.
   */
  readonly signal: AbortSignal;
  /** The server's view of the client that sent the task. */
  readonly client: TaskConnection;
  /** What the parse step returned as run data (`client.runData(id)` reads it too). */
  readonly runData: unknown;
}

/**
 * What a run step may answer with:
 * - nothing (`undefined`/`null`): an empty response;
 * - a `Uint8Array` (`Buffer`) or a string (sent as UTF-8): the whole response, sent in frames;
 * - a `Readable` or any (async) iterable of `Uint8Array`/string chunks: streamed, with
 *   backpressure from the client's window and the socket.
 */
export type TaskResponse =
  | undefined
  | null
  // biome-ignore lint/suspicious/noConfusingVoidType: so that a run step written `() => {}` type-checks
  | void
  | Uint8Array
  | string
  | Readable
  | AsyncIterable<Uint8Array | string>
  | Iterable<Uint8Array | string>;

/** What a parse step returns: the value its run step gets, and optional run data. */
export interface RunStep<P> {
  /** Handed to `run` as its first argument. */
  value: P;
  /** Kept with the task while it runs; `client.runData(id)` and `ctx.runData` read it. */
  data?: unknown;
}

/**
 * The seed's task function: reads the whole message (a `Buffer` of at most `maxMessageSize`
 * bytes). Parse steps of one client run one at a time, in the order the messages complete, so a
 * parse step should do little: decode, validate, pick what to run. Returning `undefined` means
 * there is nothing to run: the task answers OK with an empty response.
 */
export type ParseFunction<P> = (
  message: Buffer,
  ctx: TaskContext,
) => RunStep<P> | undefined | Promise<RunStep<P> | undefined>;

/** The seed's run function: runs concurrently with the client's other tasks. */
export type RunFunction<P> = (value: P, ctx: TaskContext) => TaskResponse | Promise<TaskResponse>;

/** A task with both phases. Without `parse`, `run` gets the whole message as its value. */
export interface Task<P = Buffer> {
  parse?: ParseFunction<P>;
  run: RunFunction<P>;
}

/** The convenience form: the whole message in, the response out. */
export type TaskHandler = RunFunction<Buffer>;

/** A task as the server keeps it. */
export interface TaskEntry {
  code: number;
  name: string | undefined;
  parse: ParseFunction<unknown> | undefined;
  run: RunFunction<unknown>;
}

/** Checks a `register()` task argument and puts it in one shape. */
export function normalizeTask(task: unknown, code: number, name: string | undefined): TaskEntry {
  if (typeof task === 'function') {
    return { code, name, parse: undefined, run: task as RunFunction<unknown> };
  }
  if (typeof task !== 'object' || task === null) {
    throw new InvalidOptionError(
      'task',
      `task must be a function or an object with a run function, got ${describe(task)}`,
    );
  }
  const t = task as Partial<Task<unknown>>;
  const run = validateFunction<RunFunction<unknown>>(t.run, 'task.run');
  const parse =
    t.parse === undefined
      ? undefined
      : validateFunction<ParseFunction<unknown>>(t.parse, 'task.parse');
  return { code, name, parse, run };
}
