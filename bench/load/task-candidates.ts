/**
 * Candidate changes to berth's task protocol code, measured without touching src/: each one is a
 * copy of src/ in .bench-tmp/src-<name> with a few exact edits, which bench/load/task-variants.ts
 * runs as `src:.bench-tmp/src-<name>` (server) or as a client variant of the same name. The edits
 * are the smallest that show the saving; they are evidence for bench/notes/tasks.md, not patches
 * ready to merge (the memory ones drop behaviour a real change must keep another way, as noted).
 *
 *   node --import tsx bench/load/task-candidates.ts [name ...]     (default: all)
 *
 * An edit whose text is no longer in src/ fails loudly: the candidate needs redoing.
 */

import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../lib/child.js';

interface Edit {
  file: string;
  from: string;
  to: string;
}

const SERVER = 'protocol/task-server.ts';
const CONNECTION = 'protocol/task-connection.ts';
const CLIENT = 'protocol/task-client.ts';
const CODEC = 'protocol/codec.ts';

/** The task duration histogram reads the clock once per turn of the event loop, not per task. */
const clock: Edit[] = [
  {
    file: SERVER,
    from: 'this.#counters.observe(code, (performance.now() - startedAt) / 1_000);',
    to: 'this.#counters.observe(code, (turnClock() - startedAt) / 1_000);',
  },
  {
    file: SERVER,
    from: '/** Options of `new TaskServer()`.',
    to: `// candidate: one clock read per turn of the event loop for every task that ends in it
let turnNow = -1;
const resetTurn = () => {
  turnNow = -1;
};
function turnClock(): number {
  if (turnNow < 0) {
    turnNow = performance.now();
    queueMicrotask(resetTurn);
  }
  return turnNow;
}

/** Options of \`new TaskServer()\`.`,
  },
];

/** A message that came whole in its START frame is kept as is, not in a one-element array. */
const parts: Edit[] = [
  {
    file: CONNECTION,
    from: 'if (payload.length > 0) task.parts = [payload];\n      this.#messageComplete(task);',
    to: 'if (payload.length > 0) task.single = payload;\n      this.#messageComplete(task);',
  },
  {
    file: CONNECTION,
    from: '  takeMessage(): Buffer {\n    const parts = this.parts;',
    to: `  takeMessage(): Buffer {
    const single = this.single;
    if (single !== undefined) {
      this.single = undefined;
      return single;
    }
    const parts = this.parts;`,
  },
  {
    file: CONNECTION,
    from: '  parts: Buffer[] | undefined;\n  size = 0;',
    to: '  parts: Buffer[] | undefined;\n  single: Buffer | undefined = undefined;\n  size = 0;',
  },
];

/** The client: no closure per call (one shared executor), no queue/close checks per answer. */
const client: Edit[] = [
  {
    file: CLIENT,
    from: `    return new Promise<Buffer>((resolve, reject) => {
      const call = new Call(task, CALL_BUFFER, body, true);
      call.resolve = resolve;
      call.reject = reject;
      this.#begin(call, options);
    });`,
    to: `    const promise = new Promise<Buffer>(takeResolvers);
    const call = new Call(task, CALL_BUFFER, body, true);
    call.resolve = takenResolve;
    call.reject = takenReject;
    this.#begin(call, options);
    return promise;`,
  },
  {
    file: CLIENT,
    from: 'const CALL_BUFFER = 0;',
    to: `let takenResolve: ((value: Buffer) => void) | undefined;
let takenReject: ((error: Error) => void) | undefined;
function takeResolvers(resolve: (value: Buffer) => void, reject: (error: Error) => void): void {
  takenResolve = resolve;
  takenReject = reject;
}

const CALL_BUFFER = 0;`,
  },
  {
    file: CLIENT,
    from: `    if (call === this.#keepAlivePending) this.#keepAlivePending = undefined;
    this.#next();
    this.#maybeEndSocket();`,
    to: `    if (call === this.#keepAlivePending) this.#keepAlivePending = undefined;
    if (this.#queue.length > 0) this.#next();
    if (this.#goodbye || this.#closing) this.#maybeEndSocket();`,
  },
];

/**
 * Memory: no per-connection abort listener on the TcpService connection signal (which makes an
 * AbortController, its signal with a listener map and a shape of its own, a listener, a disposer
 * and a `finally` promise for every connection). A real change has `close()`/`destroy()` walk
 * `#connections`, which the server keeps anyway; this edit only drops the listener.
 */
const signal: Edit[] = [
  {
    file: SERVER,
    from: `    const listener = addAbortListener(signal, () => {
      if (signal.reason instanceof ServiceClosingError) {
        conn.drain(this.#closeTimeout, ErrorCode.SHUTTING_DOWN, 'server shutting down', (n) => {
          this.#cut += n;
        });
      } else {
        conn.destroy(signal.reason as Error);
      }
    });
    return conn.done.finally(() => listener[Symbol.dispose]());`,
    to: `    void ServiceClosingError;
    return conn.done;`,
  },
  {
    file: SERVER,
    from: '    const signal = ctx.signal;\n    if (signal.aborted) {',
    to: "    const signal = { aborted: this.state !== 'ready' && this.state !== 'starting' };\n    if (signal.aborted) {",
  },
];

/** Memory: no `setInterval` per connection (a real change: one server-wide timer walks them). */
const timer: Edit[] = [
  {
    file: CONNECTION,
    from: `    if (core.tick > 0) {
      this.#watchdog = setInterval(() => this.#check(), core.tick);
      this.#watchdog.unref();
    }`,
    to: '    void this.#check;',
  },
];

/** Memory: the frame decoder's 12-byte header buffer as a slice of Node's pool, not its own ArrayBuffer. */
const head: Edit[] = [
  {
    file: CODEC,
    from: '  readonly #head = Buffer.alloc(FRAME_HEADER_SIZE);',
    to: '  readonly #head = Buffer.allocUnsafe(FRAME_HEADER_SIZE);',
  },
];

export const CANDIDATES: Record<string, Edit[]> = {
  clock,
  parts,
  'clock-parts': [...clock, ...parts],
  client,
  signal,
  timer,
  head,
  'signal-timer-head': [...signal, ...timer, ...head],
};

function make(name: string, edits: Edit[]): string {
  const dir = join(ROOT, '.bench-tmp', `src-${name}`);
  rmSync(dir, { recursive: true, force: true });
  cpSync(join(ROOT, 'src'), dir, { recursive: true });
  for (const edit of edits) {
    const path = join(dir, edit.file);
    const text = readFileSync(path, 'utf8');
    if (!text.includes(edit.from)) {
      throw new Error(`candidate ${name}: ${edit.file} no longer contains the text to edit`);
    }
    writeFileSync(
      path,
      text.replace(edit.from, () => edit.to),
    );
  }
  return dir;
}

const names = process.argv.slice(2);
for (const name of names.length > 0 ? names : Object.keys(CANDIDATES)) {
  const edits = CANDIDATES[name];
  if (!edits)
    throw new Error(`no candidate ${name}; there are ${Object.keys(CANDIDATES).join(', ')}`);
  console.log(`${name}: ${make(name, edits)}`);
}
