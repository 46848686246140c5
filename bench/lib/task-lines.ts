/**
 * Talking to long-lived benchmark children (the tasks suite keeps one server and one load
 * process per protocol for the whole run): lines taken in order, one per `next()`, and
 * request/answer over a load process's stdin and `result`/`error` lines. Every wait is bounded
 * and fails at once, with the child's stderr, if the child exits.
 */

import type { Child } from './child.js';

/** The lines matching `pattern` a child prints from now on, each taken once, in order. */
export class LineQueue {
  readonly #child: Child;
  readonly #lines: string[] = [];
  #waiter: ((line: string) => void) | undefined;

  constructor(child: Child, pattern: RegExp) {
    this.#child = child;
    child.onLine(pattern, (line) => {
      const waiter = this.#waiter;
      if (waiter) {
        this.#waiter = undefined;
        waiter(line);
      } else {
        this.#lines.push(line);
      }
    });
  }

  /** Drops the lines not taken yet. */
  clear(): void {
    this.#lines.length = 0;
  }

  /** The next line, bounded by `timeout` ms and by the child's life. */
  next(timeout: number): Promise<string> {
    const queued = this.#lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    const child = this.#child;
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        reject(new Error(`${child.label}: no answer within ${timeout} ms\n${child.stderr()}`));
      }, timeout);
      this.#waiter = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
      void child.exited.then((code) => {
        if (this.#waiter === undefined) return;
        this.#waiter = undefined;
        clearTimeout(timer);
        reject(new Error(`${child.label} exited (${code})\nstderr:\n${child.stderr()}`));
      });
    });
  }
}

/** A load process that takes one JSON command a line and answers `result <json>` or `error …`. */
export class CommandChild {
  readonly child: Child;
  readonly #answers: LineQueue;

  constructor(child: Child) {
    this.child = child;
    this.#answers = new LineQueue(child, /^(result|error) /);
  }

  /** Sends `command`; resolves with its parsed result, rejects with its error, both bounded. */
  async request<T>(command: object, timeout: number): Promise<T> {
    this.child.send(JSON.stringify(command));
    const line = await this.#answers.next(timeout);
    if (line.startsWith('error ')) {
      throw new Error(`${this.child.label}: ${line.slice('error '.length)}`);
    }
    return JSON.parse(line.slice('result '.length)) as T;
  }
}
