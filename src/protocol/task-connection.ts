/**
 * `TaskConnection`: one client of a `TaskServer`, from the server's side. It owns the
 * connection's handshake, reads frames, keeps the client's tasks (the per-task state machine of
 * docs/protocol.md), runs parse steps one at a time and run steps concurrently, sends responses,
 * and ends the connection: gracefully after a Goodbye, at once on a protocol error or a timeout.
 *
 * It is also the seed's per-client view: `tasks()`, `cancel(id)`, `runData(id)`,
 * `disconnect(ms)`, addresses and `toString()`.
 */

import { channel } from 'node:diagnostics_channel';
import type { Duplex } from 'node:stream';
import {
  TaskCancelledError,
  TaskConnectionClosedError,
  TaskProtocolError,
  TaskTimeoutError,
} from '../errors.js';
import { formatAddress } from '../listen.js';
import type { ActivitySink } from '../service.js';
import { isPromiseLike, noop, turnNow } from '../util.js';
import {
  ClientHelloDecoder,
  encodeRefusal,
  encodeServerHello,
  type Frame,
  FrameDecoder,
  MAX_WINDOW,
  readWindowIncrement,
  truncateUtf8,
} from './codec.js';
import {
  type ByteOrder,
  ClientFrame,
  ErrorCode,
  FLAG_END,
  MAX_APPLICATION_ERROR_CODE,
  MAX_ERROR_MESSAGE,
  PROTOCOL_VERSION,
  ServerFrame,
} from './codes.js';
import { Outbox, type OutStream } from './outbox.js';
import type { TaskContext, TaskEntry } from './task-definition.js';
import { Outcome, type TaskCounters } from './task-metrics.js';

/** The limits and timeouts a server applies to each client (ms for durations; 0 = none). */
export interface TaskLimits {
  maxFramePayload: number;
  maxMessageSize: number;
  maxBufferedBytes: number;
  maxOutboundBytes: number;
  maxTasksInFlight: number;
  waitTimeout: number;
  readTimeout: number;
  writeTimeout: number;
  processingInterval: number;
}

/** What a connection needs from its server. */
export interface ServerCore {
  readonly service: string;
  readonly limits: TaskLimits;
  /** By task code; 250 and 251 are the built-in reserved tasks. */
  readonly tasks: readonly (TaskEntry | undefined)[];
  readonly counters: TaskCounters;
  /** How often (ms) each connection checks its timeouts; 0 when none is set. */
  readonly tick: number;
  /** A task that started at `startedAt` (performance.now()) has ended. */
  observe(code: number, startedAt: number): void;
  /** Handshake accepted. */
  opened(conn: TaskConnection): void;
  /** The connection is gone. */
  closed(conn: TaskConnection): void;
  /** Where each task in flight is reported as activity (the runner's idle tracker), if anywhere. */
  activity: ActivitySink | undefined;
}

/** What `metadata(id)` returns: the seed's task metadata. */
export interface TaskMetadata {
  id: number;
  code: number;
  /** When the task's START arrived. */
  timestamp: Date;
}

/** A snapshot of one client's counters. */
export interface TaskConnectionStats {
  tasksInFlight: number;
  tasksTotal: number;
  bytesIn: number;
  bytesOut: number;
  /** Message bytes held now for tasks still receiving or waiting for their turn. */
  bufferedBytes: number;
  /** Response bytes held now: waiting for the client's window, or in the socket's buffer. */
  outboundBytes: number;
}

/**
 * The slowest a started frame or message may arrive on average (bytes/s) beyond its first
 * `readTimeout`: a byte every few seconds, which resets a plain idle timer, does not hold a
 * connection for ever.
 */
export const MIN_READ_RATE = 16 * 1_024;

/** After the last frame, how long a closing connection keeps reading so its last words arrive. */
export const LINGER_MS = 500;

const clientChannel = channel('berth:task:client');
const disconnectChannel = channel('berth:task:disconnect');
const errorChannel = channel('berth:task:error');
const protocolErrorChannel = channel('berth:task:protocol-error');
const timeoutChannel = channel('berth:task:timeout');

// Connection states.
const HANDSHAKE = 0;
const OPEN = 1;
/** Takes no new tasks (either side said goodbye); ends once the last task is answered. */
const GOODBYE = 2;
/** The last frame is written; waiting for the socket to close. */
const CLOSING = 3;
const CLOSED = 4;

// Task states (docs/protocol.md, "A task's life on the server").
const RECEIVING = 0;
const QUEUED = 1;
const PARSING = 2;
const RUNNING = 3;
const RESPONDING = 4;
const DONE = 5;

// Why reading is paused (bits).
const PAUSE_BLOCKED = 1;
const PAUSE_BUDGET = 2;

const EMPTY = Buffer.alloc(0);

/** The application code an error carries (0 to 199), or undefined. */
function applicationCode(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { errorCode?: unknown }).errorCode;
  return typeof code === 'number' && Number.isInteger(code) && code >= 0
    ? code <= MAX_APPLICATION_ERROR_CODE
      ? code
      : undefined
    : undefined;
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && 'message' in err) return String(err.message);
  return String(err);
}

function toChunk(value: unknown): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (value instanceof Uint8Array) {
    return Buffer.isBuffer(value)
      ? value
      : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError(
    `a streamed response chunk must be a Uint8Array or a string, got ${typeof value}`,
  );
}

/** One task on the server: its state, and the context its phases see. */
class ServerTask implements TaskContext {
  readonly id: number;
  readonly code: number;
  readonly entry: TaskEntry;
  readonly client: TaskConnection;
  /** Increasing per connection: start order. */
  readonly seq: number;
  /** performance.now() at START. */
  readonly startedAt: number;
  state = RECEIVING;
  /** The idle tracker's record of this task, when one watches. */
  activity: { end(): void } | undefined = undefined;
  /** The message's pieces while it arrives. */
  parts: Buffer[] | undefined;
  size = 0;
  /** Bytes of this message counted in the connection's buffered total. */
  held = 0;
  lastDataAt: number;
  lastSentAt: number;
  runData: unknown;
  /** Response bytes the client lets us send (its window), until `out` takes over. */
  credit: number;
  out: OutStream | undefined;
  iterator: AsyncIterator<unknown> | Iterator<unknown> | undefined;
  cancelReason: Error | undefined;
  cancelMessage = 'cancelled';
  #controller: AbortController | undefined;

  constructor(
    client: TaskConnection,
    seq: number,
    id: number,
    code: number,
    entry: TaskEntry,
    now: number,
    credit: number,
  ) {
    this.client = client;
    this.seq = seq;
    this.id = id;
    this.code = code;
    this.entry = entry;
    this.startedAt = now;
    this.lastDataAt = now;
    this.lastSentAt = now;
    this.credit = credit;
  }

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.cancelReason) this.#controller.abort(this.cancelReason);
    }
    return this.#controller.signal;
  }

  /** Aborts the signal (if anyone made it); a later `signal` read sees the reason too. */
  abort(reason: Error): void {
    this.cancelReason ??= reason;
    this.#controller?.abort(reason);
  }

  /** The whole message, once; the pieces are let go. */
  takeMessage(): Buffer {
    const parts = this.parts;
    this.parts = undefined;
    if (parts === undefined || parts.length === 0) return EMPTY;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.size);
  }
}

/** A drain's deadline: when it cuts the tasks still active, and what it tells them. */
interface Cut {
  timer: NodeJS.Timeout;
  at: number;
  message: string;
  onCut: ((n: number) => void) | undefined;
}

/**
 * A client idle this long (no task, no partial frame) lets go of its decoder, outbox and task
 * table, checked by the server's timeout watchdog; they are made again on its next frame.
 */
const RELEASE_AFTER_MS = 1_000;

/** Ids below this are kept in an array; larger ones in a Map. */
const DENSE_IDS = 4_096;

/**
 * A client's active tasks by id. The client picks ids; most clients (TaskClient included) reuse
 * small ones, which live in an array, so the common case does no hashing and no table churn.
 * Other ids go to a Map. Iteration order is not start order: sort by `seq` where it matters.
 */
class TaskTable {
  #dense: (ServerTask | undefined)[] | undefined;
  #sparse: Map<number, ServerTask> | undefined;
  size = 0;

  get(id: number): ServerTask | undefined {
    return id < DENSE_IDS ? this.#dense?.[id] : this.#sparse?.get(id);
  }

  set(id: number, task: ServerTask): void {
    if (id < DENSE_IDS) {
      this.#dense ??= [];
      this.#dense[id] = task;
    } else {
      this.#sparse ??= new Map();
      this.#sparse.set(id, task);
    }
    this.size++;
  }

  delete(id: number): void {
    if (id < DENSE_IDS) {
      if (this.#dense?.[id] === undefined) return;
      this.#dense[id] = undefined;
    } else if (!this.#sparse?.delete(id)) {
      return;
    }
    this.size--;
  }

  /** Lets go of the tables once empty (an idle connection keeps none). */
  compact(): void {
    if (this.size === 0) {
      this.#dense = undefined;
      this.#sparse = undefined;
    }
  }

  /** A copy, safe to iterate while tasks end. */
  values(): ServerTask[] {
    if (this.size === 0) return [];
    const out: ServerTask[] = [];
    if (this.#dense) for (const task of this.#dense) if (task !== undefined) out.push(task);
    if (this.#sparse) for (const task of this.#sparse.values()) out.push(task);
    return out;
  }
}

/** The server's view of one client connection. */
export class TaskConnection {
  /** Increasing from 1 within the server. */
  readonly id: number;
  readonly #core: ServerCore;
  readonly #limits: TaskLimits;
  readonly #socket: Duplex;
  #state = HANDSHAKE;
  /** Date.now() at connect; a number rather than a `Date` (memory per idle client). */
  readonly #connectedAt = Date.now();
  #hello: ClientHelloDecoder | undefined = new ClientHelloDecoder();
  // The decoder and the outbox are made when first needed (`#frames()`, `#out()`), not at the
  // handshake: a client that is connected but has sent no task holds neither (the tasks
  // benchmark's memory per idle connection).
  #decoder: FrameDecoder | undefined;
  #onFrame: ((frame: Frame) => void) | undefined;
  #outbox: Outbox | undefined;
  #byteOrder: ByteOrder | undefined;
  /** The client's max frame payload, from its hello. */
  #peerMaxFrame = 0;
  /** The client's initial window per task. */
  #window = 0;
  readonly #tasks = new TaskTable();
  /** Tasks whose message is complete, waiting for their parse turn (taken from `#parseHead`). */
  #parseQueue: (ServerTask | undefined)[] | undefined;
  #parseHead = 0;
  #parsing = false;
  /** Message bytes held for tasks still receiving or waiting to be parsed. */
  #buffered = 0;
  /** Tasks still receiving their message. */
  #receiving = 0;
  #pause = 0;
  #lastReadAt: number;
  #resumedAt = 0;
  /** When the frame now partly received began to arrive; 0 while no frame is partial. */
  #frameStart = 0;
  #idleSince: number;
  /** Set by `drain()`: when the tasks still active get cut. */
  #cut: Cut | undefined;
  #clientSaidGoodbye = false;
  #tasksTotal = 0;
  #bytesIn = 0;
  /** Bytes written outside the outbox (the hello, a refusal); the outbox counts its own. */
  #bytesOutDirect = 0;
  /** Made on first use of `done`: nothing waits on most connections. */
  #done: Promise<void> | undefined;
  #resolveDone: (() => void) | undefined;

  /** @internal Made by `TaskServer` for each accepted connection. */
  constructor(core: ServerCore, socket: Duplex, id: number) {
    this.#core = core;
    this.#limits = core.limits;
    this.#socket = socket;
    this.id = id;
    const now = performance.now();
    this.#lastReadAt = now;
    this.#idleSince = now;
    // TcpService has put an 'error' listener on every socket it hands over.
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => this.#onEnd());
    socket.on('close', () => this.#onClose());
    (socket as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
  }

  // --- the seed's per-client view ---------------------------------------------------------------

  /** Settles once the connection has closed (its tasks ended with it, answered or abandoned). */
  get done(): Promise<void> {
    if (this.#state === CLOSED) return Promise.resolve();
    this.#done ??= new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    return this.#done;
  }

  /** When the client connected (a new `Date` on each read). */
  get connectedAt(): Date {
    return new Date(this.#connectedAt);
  }

  /** The byte order the client chose; undefined until the handshake is done. */
  get byteOrder(): ByteOrder | undefined {
    return this.#byteOrder;
  }

  /** True once the handshake is done and until the connection closes. */
  get open(): boolean {
    return this.#state === OPEN || this.#state === GOODBYE;
  }

  /** The client's address (undefined over a stream that is not a socket). */
  get remoteAddress(): string | undefined {
    return (this.#socket as { remoteAddress?: string }).remoteAddress;
  }

  /** The client's port. */
  get remotePort(): number | undefined {
    return (this.#socket as { remotePort?: number }).remotePort;
  }

  /** The server's address on this connection. */
  get localAddress(): string | undefined {
    return (this.#socket as { localAddress?: string }).localAddress;
  }

  /** The server's port on this connection. */
  get localPort(): number | undefined {
    return (this.#socket as { localPort?: number }).localPort;
  }

  /** Tasks active now. */
  get numTasks(): number {
    return this.#tasks.size;
  }

  /** A plain snapshot of this client's counters. */
  get stats(): TaskConnectionStats {
    return {
      tasksInFlight: this.#tasks.size,
      tasksTotal: this.#tasksTotal,
      bytesIn: this.#bytesIn,
      bytesOut: this.#bytesOutDirect + (this.#outbox?.bytesOut ?? 0),
      bufferedBytes: this.#buffered,
      outboundBytes: this.outboundBytes,
    };
  }

  /** Response bytes held now for this client (see `maxOutboundBytes`). */
  get outboundBytes(): number {
    return this.#outbox?.held ?? 0;
  }

  /** Message bytes held now for this client (see `maxBufferedBytes`). */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** The ids of the active tasks, ascending. */
  tasks(): number[] {
    return this.#tasks
      .values()
      .map((t) => t.id)
      .sort((a, b) => a - b);
  }

  /** The codes of the active tasks, each once, in the order of its oldest task. */
  taskCodes(): number[] {
    const codes = new Set<number>();
    for (const task of this.#tasks.values().sort((a, b) => a.seq - b.seq)) codes.add(task.code);
    return [...codes];
  }

  /** The ids of the active tasks with this code, ascending. */
  tasksWithTaskCode(code: number): number[] {
    const ids: number[] = [];
    for (const task of this.#tasks.values()) if (task.code === code) ids.push(task.id);
    return ids.sort((a, b) => a - b);
  }

  /** The id, code and start time of an active task; undefined when no such task is active. */
  metadata(id: number): TaskMetadata | undefined {
    const task = this.#tasks.get(id);
    if (!task) return undefined;
    return {
      id,
      code: task.code,
      timestamp: new Date(performance.timeOrigin + task.startedAt),
    };
  }

  /** The run data the task's parse step returned; undefined when none or not active. */
  runData(id: number): unknown {
    return this.#tasks.get(id)?.runData;
  }

  /**
   * Cancels an active task from the server side: its signal aborts (`TaskCancelledError`) and it
   * ends with Error 200 once its run step has stopped. Returns false when no such task is active.
   */
  cancel(id: number): boolean {
    const task = this.#tasks.get(id);
    if (!task) return false;
    return this.#cancel(
      task,
      new TaskCancelledError(`task ${id} was cancelled by the server`),
      'cancelled by the server',
    );
  }

  /** Cancels every active task (as `cancel`); returns how many. */
  cancelAll(): number {
    let n = 0;
    for (const task of this.#tasks.values()) {
      if (
        this.#cancel(
          task,
          new TaskCancelledError(`task ${task.id} was cancelled by the server`),
          'cancelled by the server',
        )
      ) {
        n++;
      }
    }
    return n;
  }

  /**
   * The seed's graceful disconnect: takes no new task from now on (Goodbye 233), and closes once
   * the active tasks are answered or after `ms`, when those still active get Error 204. A second
   * call keeps the shorter deadline.
   */
  disconnect(ms: number): void {
    this.drain(ms, ErrorCode.DISCONNECTED, 'disconnected by the server');
  }

  /** `remote->local`, as the seed prints a client. */
  toString(): string {
    return `${this.#describe(this.remoteAddress, this.remotePort)}->${this.#describe(
      this.localAddress,
      this.localPort,
    )}`;
  }

  #describe(address: string | undefined, port: number | undefined): string {
    if (address === undefined) return 'unknown';
    return port === undefined ? address : formatAddress({ address, port, family: '' });
  }

  // --- used by the server -------------------------------------------------------------------------

  /**
   * Says Goodbye with `code` and takes no new task; the connection ends once the active tasks are
   * answered, or after `ms`. `onCut` learns how many tasks the deadline cut.
   */
  drain(ms: number, code: number, reason: string, onCut?: (n: number) => void): void {
    if (this.#state >= CLOSING) return;
    if (this.#state === HANDSHAKE) {
      this.#refuse(ErrorCode.SHUTTING_DOWN, reason);
      return;
    }
    const at = performance.now() + ms;
    const cut = this.#cut;
    if (cut === undefined || at < cut.at) {
      clearTimeout(cut?.timer);
      const timer = setTimeout(() => this.#cutAtDeadline(), ms).unref();
      this.#cut = {
        timer,
        at,
        message: `${reason} before the task finished`,
        onCut: onCut ?? cut?.onCut,
      };
    } else if (onCut) {
      cut.onCut ??= onCut;
    }
    if (this.#state === OPEN) {
      this.#state = GOODBYE;
      this.#out().frame(ServerFrame.GOODBYE, 0, code, 0, truncateUtf8(reason, MAX_ERROR_MESSAGE));
    }
    this.#maybeEnd();
  }

  /** Refuses a connection before its handshake (too many clients, shutting down). */
  refuse(code: number, message: string): void {
    this.#refuse(code, message);
  }

  /** Abrupt: every task is dropped without an answer, the socket destroyed. */
  destroy(reason: Error): void {
    this.#abandon(reason);
    this.#socket.destroy();
  }

  // --- input --------------------------------------------------------------------------------------

  #onData(chunk: Buffer): void {
    this.#bytesIn += chunk.length;
    this.#core.counters.bytesIn += chunk.length;
    const state = this.#state;
    if (state >= CLOSING) return; // draining the socket so our last frames are not reset
    this.#lastReadAt = performance.now();
    if (state === HANDSHAKE) {
      let hello: ReturnType<ClientHelloDecoder['push']>;
      try {
        hello = this.#hello!.push(chunk);
      } catch (err) {
        const e = err as TaskProtocolError;
        this.#refuse(e.errorCode, e.message);
        return;
      }
      if (hello === undefined) return;
      const rest = this.#hello!.rest;
      this.#hello = undefined;
      this.#accept(hello.byteOrder, hello.maxFramePayload, hello.initialWindow);
      if (rest.length === 0) return;
      chunk = rest;
    }
    try {
      if (this.#decoder === undefined) this.#frames();
      const decoder = this.#decoder!;
      decoder.push(chunk, this.#onFrame!);
      // Every frame completed resets the clock (#frame); what is left partial started now.
      if (decoder.buffered > 0 && this.#frameStart === 0) this.#frameStart = this.#lastReadAt;
    } catch (err) {
      if (!(err instanceof TaskProtocolError)) throw err;
      this.#protocolError(err);
    }
  }

  #accept(byteOrder: ByteOrder, maxFramePayload: number, window: number): void {
    const limits = this.#limits;
    this.#byteOrder = byteOrder;
    this.#window = window;
    this.#peerMaxFrame = maxFramePayload;
    const hello = encodeServerHello(
      {
        version: PROTOCOL_VERSION,
        flags: 0,
        maxFramePayload: limits.maxFramePayload,
        maxMessageSize: limits.maxMessageSize,
        maxTasksInFlight: limits.maxTasksInFlight,
        waitTimeout: limits.waitTimeout,
      },
      byteOrder,
    );
    this.#bytesOutDirect += hello.length;
    this.#core.counters.bytesOut += hello.length;
    this.#socket.write(hello);
    this.#state = OPEN;
    this.#idleSince = performance.now();
    this.#core.opened(this);
    if (clientChannel.hasSubscribers) {
      clientChannel.publish({ service: this.#core.service, client: this });
    }
  }

  /** Drops what an idle connection need not keep (see RELEASE_AFTER_MS). */
  #shed(): void {
    if (this.#decoder !== undefined && this.#decoder.buffered === 0) {
      this.#decoder = undefined;
      this.#onFrame = undefined;
    }
    const outbox = this.#outbox;
    if (outbox?.release()) {
      this.#bytesOutDirect += outbox.bytesOut;
      this.#outbox = undefined;
    }
    this.#tasks.compact();
  }

  /** Makes the frame decoder, on the first bytes after the hello. */
  #frames(): void {
    this.#decoder = new FrameDecoder({
      byteOrder: this.#byteOrder!,
      maxPayload: this.#limits.maxFramePayload,
      source: 'client',
    });
    this.#onFrame = (frame) => this.#frame(frame);
  }

  /** The outbox, made on the first frame to send. */
  #out(): Outbox {
    this.#outbox ??= new Outbox(this.#socket, {
      byteOrder: this.#byteOrder!,
      maxFramePayload: this.#peerMaxFrame,
      onBlocked: (blocked) => this.#setPause(PAUSE_BLOCKED, blocked),
      total: this.#core.counters,
      maxHeld: this.#limits.maxOutboundBytes,
      onOver: (over) => this.#onOutboundOver(over),
    });
    // Made after the end (a task answering late): closed like the one it would have been.
    if (this.#state >= CLOSING) this.#outbox.close();
    return this.#outbox;
  }

  #frame(frame: Frame): void {
    this.#frameStart = 0;
    switch (frame.type) {
      case ClientFrame.START:
        this.#onStart(frame);
        break;
      case ClientFrame.DATA:
        this.#onMessageData(frame);
        break;
      case ClientFrame.CANCEL: {
        const task = this.#tasks.get(frame.id);
        if (task) {
          this.#cancel(
            task,
            new TaskCancelledError(`task ${frame.id} was cancelled by the client`),
            'cancelled',
          );
        }
        break;
      }
      case ClientFrame.WINDOW:
        this.#onWindow(frame);
        break;
      case ClientFrame.GOODBYE:
        this.#clientSaidGoodbye = true;
        if (this.#state === OPEN) this.#state = GOODBYE;
        this.#maybeEnd();
        break;
    }
  }

  #onStart(frame: Frame): void {
    const id = frame.id;
    if (this.#tasks.get(id) !== undefined) {
      this.#fatal(ErrorCode.DUPLICATE_TASK_ID, `task id ${id} is already active`, id, 'protocol');
      return;
    }
    const counters = this.#core.counters;
    const code = frame.code;
    counters.tasksTotal++;
    this.#tasksTotal++;
    if (this.#state !== OPEN) {
      const why = this.#clientSaidGoodbye
        ? 'no new task after the client said goodbye'
        : 'server shutting down';
      this.#reject(id, code, ErrorCode.SHUTTING_DOWN, why, Outcome.SHUTDOWN);
      return;
    }
    const entry = this.#core.tasks[code];
    if (entry === undefined) {
      this.#reject(id, code, ErrorCode.UNKNOWN_TASK, `no task has code ${code}`, Outcome.REJECTED);
      return;
    }
    const limits = this.#limits;
    if (this.#tasks.size >= limits.maxTasksInFlight) {
      this.#reject(
        id,
        code,
        ErrorCode.TOO_MANY_TASKS,
        `too many tasks in flight: the limit is ${limits.maxTasksInFlight}`,
        Outcome.REJECTED,
      );
      return;
    }
    const payload = frame.payload;
    if (payload.length > limits.maxMessageSize) {
      this.#reject(
        id,
        code,
        ErrorCode.MESSAGE_TOO_LARGE,
        `message of at least ${payload.length} bytes is over the limit of ${limits.maxMessageSize}`,
        Outcome.REJECTED,
      );
      return;
    }
    const task = new ServerTask(
      this,
      this.#tasksTotal,
      id,
      code,
      entry,
      this.#lastReadAt,
      this.#window,
    );
    this.#tasks.set(id, task);
    counters.inFlight++;
    task.activity = this.#core.activity?.begin();
    if ((frame.flags & FLAG_END) !== 0) {
      task.size = payload.length;
      if (payload.length > 0) task.parts = [payload];
      this.#messageComplete(task);
      return;
    }
    this.#receiving++;
    if (payload.length > 0) this.#addData(task, payload);
  }

  #onMessageData(frame: Frame): void {
    const task = this.#tasks.get(frame.id);
    if (task === undefined) return; // a task already answered (an early ERROR): ignore its data
    if (task.state !== RECEIVING) {
      this.#fatal(
        ErrorCode.BAD_FRAME,
        `DATA for task ${frame.id} after the end of its message`,
        frame.id,
        'protocol',
      );
      return;
    }
    const payload = frame.payload;
    if (payload.length > 0 && !this.#addData(task, payload)) return;
    if ((frame.flags & FLAG_END) !== 0) {
      this.#receiving--;
      this.#messageComplete(task);
    }
  }

  /** Adds message bytes to a receiving task; false when the task was refused for them. */
  #addData(task: ServerTask, payload: Buffer): boolean {
    const limits = this.#limits;
    const n = payload.length;
    task.lastDataAt = this.#lastReadAt;
    if (task.size + n > limits.maxMessageSize) {
      this.#rejectReceiving(
        task,
        `message of at least ${task.size + n} bytes is over the limit of ${limits.maxMessageSize}`,
      );
      return false;
    }
    if (this.#buffered + n > limits.maxBufferedBytes) {
      if (this.#mayPauseForBudget()) {
        // A complete message waits for its parse turn: pausing cannot deadlock, so push back.
        this.#setPause(PAUSE_BUDGET, true);
      } else {
        this.#rejectReceiving(task, this.#overBudget(this.#buffered + n));
        return false;
      }
    }
    this.#buffered += n;
    task.held += n;
    task.size += n;
    if (task.parts === undefined) task.parts = [payload];
    else task.parts.push(payload);
    return true;
  }

  #rejectReceiving(task: ServerTask, message: string): void {
    this.#receiving--;
    this.#release(task);
    this.#finishError(task, ErrorCode.MESSAGE_TOO_LARGE, message, Outcome.REJECTED);
  }

  #onWindow(frame: Frame): void {
    const task = this.#tasks.get(frame.id);
    if (task === undefined) return;
    const increment = readWindowIncrement(frame.payload, this.#byteOrder!);
    const current = task.out ? task.out.credit : task.credit;
    if (current + increment > MAX_WINDOW) {
      this.#fatal(
        ErrorCode.BAD_FRAME,
        `WINDOW for task ${frame.id} takes its window over 2^32-1`,
        frame.id,
        'protocol',
      );
      return;
    }
    if (task.out) this.#out().credit(task.out, increment);
    else task.credit += increment;
  }

  #onEnd(): void {
    if (this.#state >= CLOSING) return;
    if (this.#state === HANDSHAKE) {
      try {
        this.#hello?.end();
      } catch (err) {
        this.#countProtocolError(err as TaskProtocolError);
      }
      this.#endConnection();
      return;
    }
    try {
      this.#decoder?.end();
    } catch (err) {
      this.#countProtocolError(err as TaskProtocolError);
    }
    if (this.#clientSaidGoodbye && this.#socket.writable) {
      this.#maybeEnd(); // a half-close after GOODBYE: answer what is active, then close
      return;
    }
    this.#abandon(new TaskConnectionClosedError('the client closed the connection'));
    this.#endConnection();
  }

  #onClose(): void {
    if (this.#state === CLOSED) return;
    const wasOpen = this.#byteOrder !== undefined;
    this.#state = CLOSED;
    this.#abandon(new TaskConnectionClosedError('the connection closed'));
    clearTimeout(this.#cut?.timer);
    this.#outbox?.close();
    this.#core.closed(this);
    if (wasOpen && disconnectChannel.hasSubscribers) {
      disconnectChannel.publish({ service: this.#core.service, client: this });
    }
    this.#resolveDone?.();
  }

  #setPause(bit: number, on: boolean): void {
    const before = this.#pause;
    this.#pause = on ? before | bit : before & ~bit;
    if (before === 0 && this.#pause !== 0) {
      this.#socket.pause();
    } else if (before !== 0 && this.#pause === 0) {
      this.#resumedAt = performance.now();
      if (this.#state < CLOSING) this.#socket.resume();
    }
  }

  // --- running tasks --------------------------------------------------------------------------------

  #messageComplete(task: ServerTask): void {
    const full = this.#outboundFull();
    if (task.entry.parse === undefined && !full) {
      if (task.held > 0) {
        this.#buffered -= task.held;
        task.held = 0;
        this.#checkBudget();
      }
      this.#run(task, task.takeMessage());
      return;
    }
    // The whole message is held while it waits for its parse turn, or (the server holding all it
    // may for this client) for the client to take what is waiting.
    const extra = task.size - task.held;
    const limit = this.#limits.maxBufferedBytes;
    if (full && extra > 0 && this.#buffered + extra > limit) {
      this.#release(task);
      const message = this.#overBudget(this.#buffered + extra);
      this.#finishError(task, ErrorCode.MESSAGE_TOO_LARGE, message, Outcome.REJECTED);
      return;
    }
    task.held = task.size;
    this.#buffered += extra;
    task.state = QUEUED;
    this.#parseQueue ??= [];
    this.#parseQueue.push(task);
    if (this.#buffered > limit) this.#setPause(PAUSE_BUDGET, true);
    if (!this.#parsing) this.#pumpParse();
  }

  /**
   * True while the server holds `maxOutboundBytes` or more for this client: it starts no task for
   * it (complete messages wait), and every streamed response waits, until the client takes some.
   */
  #outboundFull(): boolean {
    return this.#outbox?.over === true;
  }

  /**
   * The outbox went over its cap, or back under. Reading goes on while over: the WINDOW frames
   * that let it drain come on the same socket (a server that stopped reading would never see
   * them). So the budget pause is lifted, and new message bytes past the budget get Error 203.
   */
  #onOutboundOver(over: boolean): void {
    if (over) {
      this.#core.counters.outboundFull++;
      if ((this.#pause & PAUSE_BUDGET) !== 0) this.#setPause(PAUSE_BUDGET, false);
      return;
    }
    // Not from inside the outbox's call (an abort while tasks are being dropped): a turn later.
    queueMicrotask(() => {
      if (this.#state < CLOSING && !this.#outboundFull() && !this.#parsing) this.#pumpParse();
    });
  }

  /**
   * True when pausing the socket until queued messages are taken cannot deadlock: a parse is
   * pending and nothing waits on the client (while the outbox is full, the client's WINDOW frames
   * must still be read).
   */
  #mayPauseForBudget(): boolean {
    return (
      !this.#outboundFull() && (this.#parsing || this.#parseHead < (this.#parseQueue?.length ?? 0))
    );
  }

  /** Error 203 for a task whose message does not fit in what the client may have buffered. */
  #overBudget(wanted: number): string {
    return `the server holds ${this.#buffered} bytes of messages from this client and would need ${wanted}; the limit is ${this.#limits.maxBufferedBytes}`;
  }

  /** Lets go of a task's message and its share of the buffered total. */
  #release(task: ServerTask): void {
    this.#buffered -= task.held;
    task.held = 0;
    task.parts = undefined;
  }

  #pumpParse(): void {
    for (;;) {
      const queue = this.#parseQueue;
      if (this.#parsing || queue === undefined || this.#parseHead >= queue.length) break;
      if (this.#outboundFull()) break; // resumed by #onOutboundOver
      const task = queue[this.#parseHead]!;
      queue[this.#parseHead++] = undefined;
      if (this.#parseHead === queue.length) {
        this.#parseQueue = undefined;
        this.#parseHead = 0;
      }
      if (task.state === DONE) continue; // cancelled while it waited
      this.#buffered -= task.held;
      task.held = 0;
      if (task.entry.parse === undefined) {
        this.#run(task, task.takeMessage()); // it waited only for the outbox
        continue;
      }
      task.state = PARSING;
      let step: unknown;
      try {
        step = task.entry.parse!(task.takeMessage(), task);
      } catch (err) {
        this.#failed(task, err);
        continue;
      }
      if (isPromiseLike(step)) {
        this.#parsing = true;
        step.then(
          (value) => {
            this.#parsing = false;
            this.#afterParse(task, value);
            this.#pumpParse();
          },
          (err: unknown) => {
            this.#parsing = false;
            this.#failed(task, err);
            this.#pumpParse();
          },
        );
        break;
      }
      this.#afterParse(task, step);
    }
    this.#checkBudget();
  }

  #checkBudget(): void {
    if ((this.#pause & PAUSE_BUDGET) !== 0 && this.#buffered <= this.#limits.maxBufferedBytes) {
      this.#setPause(PAUSE_BUDGET, false);
    }
  }

  #afterParse(task: ServerTask, step: unknown): void {
    if (task.state === DONE) return;
    if (task.cancelReason) {
      this.#finishError(task, ErrorCode.CANCELLED, task.cancelMessage, Outcome.CANCELLED);
      return;
    }
    if (step === undefined || step === null) {
      this.#respond(task, undefined);
      return;
    }
    if (typeof step !== 'object' || !('value' in step)) {
      this.#failed(
        task,
        new TypeError(
          `the parse step of task code ${task.code} must return { value, data? } or undefined`,
        ),
      );
      return;
    }
    const { value, data } = step as { value: unknown; data?: unknown };
    task.runData = data;
    this.#run(task, value);
  }

  #run(task: ServerTask, value: unknown): void {
    task.state = RUNNING;
    let result: unknown;
    try {
      result = task.entry.run(value, task);
    } catch (err) {
      this.#failed(task, err);
      return;
    }
    if (isPromiseLike(result)) {
      result.then(
        (r) => this.#respond(task, r),
        (err: unknown) => this.#failed(task, err),
      );
    } else {
      this.#respond(task, result);
    }
  }

  #respond(task: ServerTask, result: unknown): void {
    if (task.state === DONE) return; // cut at a deadline, or the client went away
    if (task.cancelReason) {
      this.#finishError(task, ErrorCode.CANCELLED, task.cancelMessage, Outcome.CANCELLED);
      return;
    }
    if (result === undefined || result === null) {
      this.#out().frame(ServerFrame.OK, FLAG_END, 0, task.id);
      this.#finish(task, Outcome.OK);
    } else if (typeof result === 'string') {
      this.#sendBytes(task, Buffer.from(result, 'utf8'));
    } else if (result instanceof Uint8Array) {
      this.#sendBytes(task, toChunk(result));
    } else if (
      typeof result === 'object' &&
      (Symbol.asyncIterator in result || Symbol.iterator in result)
    ) {
      void this.#pipe(task, result as AsyncIterable<unknown> | Iterable<unknown>);
    } else {
      this.#failed(
        task,
        new TypeError(
          `task code ${task.code} returned ${typeof result}; a task returns nothing, bytes, a string, a Readable or an (async) iterable`,
        ),
      );
    }
  }

  #sendBytes(task: ServerTask, bytes: Buffer): void {
    const outbox = this.#out();
    const n = bytes.length;
    if (n <= task.credit && n <= outbox.frameSize) {
      task.credit -= n;
      outbox.frame(ServerFrame.OK, FLAG_END, 0, task.id, bytes);
      this.#finish(task, Outcome.OK);
      return;
    }
    task.state = RESPONDING;
    const out = this.#openStream(task);
    outbox.push(out, bytes);
    outbox.end(out);
  }

  #openStream(task: ServerTask): OutStream {
    const out = this.#out().stream(task.id, ServerFrame.OK, ServerFrame.OK, 0, task.credit);
    out.onFinished = () => this.#finish(task, Outcome.OK);
    task.out = out;
    return out;
  }

  async #pipe(task: ServerTask, source: AsyncIterable<unknown> | Iterable<unknown>): Promise<void> {
    task.state = RESPONDING;
    const outbox = this.#out();
    const out = this.#openStream(task);
    let iterator: AsyncIterator<unknown> | Iterator<unknown>;
    try {
      iterator =
        Symbol.asyncIterator in source
          ? (source as AsyncIterable<unknown>)[Symbol.asyncIterator]()
          : (source as Iterable<unknown>)[Symbol.iterator]();
    } catch (err) {
      outbox.abort(out);
      this.#failed(task, err);
      return;
    }
    task.iterator = iterator;
    try {
      for (;;) {
        if (out.full) await out.whenReady();
        if (task.state === DONE || out.done) return;
        const step = await iterator.next();
        if (task.state === DONE || out.done) return;
        if (step.done) break;
        outbox.push(out, toChunk(step.value));
      }
      task.iterator = undefined;
      outbox.end(out);
    } catch (err) {
      task.iterator = undefined;
      if (task.state === DONE) return;
      outbox.abort(out);
      this.#failed(task, err);
    }
  }

  #failed(task: ServerTask, err: unknown): void {
    if (task.state === DONE) return;
    if (task.out) this.#out().abort(task.out);
    if (task.cancelReason) {
      this.#finishError(task, ErrorCode.CANCELLED, task.cancelMessage, Outcome.CANCELLED);
      return;
    }
    const code = applicationCode(err);
    if (code !== undefined) {
      this.#finishError(task, code, messageOf(err), Outcome.ERROR);
      return;
    }
    if (errorChannel.hasSubscribers) {
      errorChannel.publish({
        service: this.#core.service,
        client: this,
        id: task.id,
        code: task.code,
        error: err,
      });
    }
    this.#finishError(task, ErrorCode.INTERNAL, 'internal error', Outcome.INTERNAL);
  }

  #cancel(task: ServerTask, reason: Error, message: string): boolean {
    if (task.state === DONE) return false;
    task.cancelMessage = message;
    task.abort(reason);
    switch (task.state) {
      case RECEIVING:
        this.#receiving--;
        this.#release(task);
        this.#finishError(task, ErrorCode.CANCELLED, message, Outcome.CANCELLED);
        this.#checkBudget();
        break;
      case QUEUED:
        this.#release(task);
        this.#finishError(task, ErrorCode.CANCELLED, message, Outcome.CANCELLED);
        this.#checkBudget();
        break;
      case RESPONDING:
        this.#stopResponse(task);
        this.#finishError(task, ErrorCode.CANCELLED, message, Outcome.CANCELLED);
        break;
      // PARSING, RUNNING: answered once the step settles (#afterParse, #respond, #failed).
    }
    return true;
  }

  #stopResponse(task: ServerTask): void {
    if (task.out) this.#outbox?.abort(task.out);
    const iterator = task.iterator;
    task.iterator = undefined;
    if (iterator?.return) {
      try {
        const r = iterator.return();
        if (isPromiseLike(r)) (r as Promise<unknown>).then(noop, noop);
      } catch {}
    }
  }

  /** Error frame and the end of the task. */
  #finishError(task: ServerTask, code: number, message: string, outcome: number): void {
    this.#out().frame(
      ServerFrame.ERROR,
      0,
      code,
      task.id,
      truncateUtf8(message, MAX_ERROR_MESSAGE),
    );
    this.#finish(task, outcome);
  }

  /** An ERROR for a START that never became a task. */
  #reject(id: number, code: number, error: number, message: string, outcome: number): void {
    this.#out().frame(ServerFrame.ERROR, 0, error, id, truncateUtf8(message, MAX_ERROR_MESSAGE));
    this.#core.counters.count(code, outcome);
  }

  #finish(task: ServerTask, outcome: number): void {
    if (task.state === DONE) return;
    task.state = DONE;
    task.activity?.end();
    this.#tasks.delete(task.id);
    const core = this.#core;
    core.counters.inFlight--;
    core.counters.count(task.code, outcome);
    if (outcome !== Outcome.REJECTED) core.observe(task.code, task.startedAt);
    if (this.#tasks.size === 0) {
      // A turn's clock: a connection whose tasks answer at once empties its table per task.
      this.#idleSince = turnNow();
      if (this.#state === GOODBYE) this.#maybeEnd();
    }
  }

  /** Drops every task without an answer (the connection is ending). */
  #abandon(reason: Error): void {
    if (this.#tasks.size === 0) return;
    for (const task of this.#tasks.values()) {
      task.abort(reason);
      this.#stopResponse(task);
      task.parts = undefined;
      this.#finish(task, Outcome.ABANDONED);
    }
    this.#parseQueue = undefined;
    this.#parseHead = 0;
    this.#buffered = 0;
    this.#receiving = 0;
  }

  #cutAtDeadline(): void {
    if (this.#state >= CLOSING) return;
    const tasks = this.#tasks.values();
    const cut = this.#cut!;
    const reason = new TaskCancelledError(cut.message);
    for (const task of tasks) {
      task.abort(reason);
      this.#stopResponse(task);
      task.parts = undefined;
      this.#finishError(task, ErrorCode.SHUTTING_DOWN, cut.message, Outcome.SHUTDOWN);
    }
    this.#parseQueue = undefined;
    this.#parseHead = 0;
    this.#buffered = 0;
    this.#receiving = 0;
    if (tasks.length > 0) cut.onCut?.(tasks.length);
    this.#endConnection();
  }

  // --- ending ---------------------------------------------------------------------------------------

  /** Ends the connection once nothing is active, when either side has said goodbye. */
  #maybeEnd(): void {
    if (this.#state === GOODBYE && this.#tasks.size === 0) this.#endConnection();
  }

  /**
   * The graceful end: flush, half-close, keep reading (and dropping) so the peer gets our last
   * frames rather than a reset, and destroy after `LINGER_MS` if the peer never closes.
   */
  #endConnection(): void {
    if (this.#state >= CLOSING) return;
    this.#state = CLOSING;
    clearTimeout(this.#cut?.timer);
    this.#outbox?.close();
    const socket = this.#socket;
    socket.end();
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  }

  #refuse(code: number, message: string): void {
    if (this.#state !== HANDSHAKE) return;
    const refusal = encodeRefusal({ version: PROTOCOL_VERSION, code, message });
    this.#core.counters.refused++;
    this.#core.counters.bytesOut += refusal.length;
    this.#bytesOutDirect += refusal.length;
    if (code === ErrorCode.BAD_HANDSHAKE || code === ErrorCode.UNSUPPORTED_VERSION) {
      this.#countProtocolError(new TaskProtocolError(code, message));
    }
    if (this.#socket.writable) this.#socket.write(refusal);
    this.#hello = undefined;
    this.#endConnection();
  }

  #countProtocolError(err: TaskProtocolError): void {
    this.#core.counters.protocolErrors++;
    if (protocolErrorChannel.hasSubscribers) {
      protocolErrorChannel.publish({ service: this.#core.service, client: this, error: err });
    }
  }

  #protocolError(err: TaskProtocolError): void {
    this.#fatal(err.errorCode, err.message, err.taskId ?? 0, 'protocol');
  }

  /** FATAL and close: the connection cannot go on. Active tasks are dropped unanswered. */
  #fatal(code: number, message: string, id: number, why: 'protocol' | 'read' | 'write'): void {
    if (this.#state >= CLOSING) return;
    let error: Error;
    if (why === 'protocol') {
      const protocolError = new TaskProtocolError(code, message);
      this.#countProtocolError(protocolError);
      error = protocolError;
    } else {
      error = new TaskTimeoutError(why, message);
    }
    this.#out().frame(ServerFrame.FATAL, 0, code, id, truncateUtf8(message, MAX_ERROR_MESSAGE));
    this.#abandon(error);
    this.#endConnection();
  }

  // --- timeouts -------------------------------------------------------------------------------------

  /**
   * Ends, with Error 232, each task whose response has had bytes waiting and no window to send
   * them for `writeTimeout` ms: its bytes are let go, and the connection goes on.
   */
  #endStalled(now: number, writeTimeout: number): void {
    for (const task of this.#tasks.values()) {
      const out = task.out;
      if (out === undefined || out.stalledSince === 0 || now - out.stalledSince < writeTimeout) {
        continue;
      }
      const message = `the client granted no window for task ${task.id} for ${writeTimeout} ms, with ${out.queued} bytes of its response waiting`;
      this.#timedOut('window', message);
      task.abort(new TaskTimeoutError('window', message));
      this.#stopResponse(task);
      this.#finishError(task, ErrorCode.WRITE_TIMEOUT, message, Outcome.TIMEOUT);
    }
  }

  #timedOut(kind: 'wait' | 'read' | 'write' | 'window', message: string): void {
    const counters = this.#core.counters;
    if (kind === 'wait') counters.waitTimeouts++;
    else if (kind === 'read') counters.readTimeouts++;
    else if (kind === 'write') counters.writeTimeouts++;
    else counters.windowTimeouts++;
    if (timeoutChannel.hasSubscribers) {
      timeoutChannel.publish({ service: this.#core.service, client: this, timeout: kind, message });
    }
  }

  /** Ends the connection if one of its timeouts has run out. The server calls it every `tick` ms. */
  check(): void {
    const state = this.#state;
    if (state >= CLOSING) return;
    const limits = this.#limits;
    const now = performance.now();
    const readTimeout = limits.readTimeout;
    if (state === HANDSHAKE) {
      // The whole hello, from the connection's start (#idleSince until the handshake).
      if (readTimeout > 0 && now - this.#idleSince >= readTimeout) {
        const message = `no complete hello within ${readTimeout} ms of connecting`;
        this.#timedOut('read', message);
        this.#refuse(ErrorCode.READ_TIMEOUT, message);
      }
      return;
    }
    const outbox = this.#outbox;
    if (
      limits.writeTimeout > 0 &&
      outbox !== undefined &&
      outbox.blockedSince > 0 &&
      now - outbox.blockedSince >= limits.writeTimeout
    ) {
      const message = `the client read nothing for ${limits.writeTimeout} ms`;
      this.#timedOut('write', message);
      this.#state = CLOSING;
      this.#abandon(new TaskTimeoutError('write', message));
      this.#socket.destroy();
      return;
    }
    if (limits.writeTimeout > 0 && outbox !== undefined && outbox.queued > 0) {
      this.#endStalled(now, limits.writeTimeout);
    }
    if (
      limits.writeTimeout > 0 &&
      outbox !== undefined &&
      outbox.overSince > 0 &&
      now - outbox.overSince >= limits.writeTimeout
    ) {
      const message = `the server has held over ${limits.maxOutboundBytes} bytes for this client for ${limits.writeTimeout} ms (${outbox.held} now)`;
      this.#timedOut('write', message);
      this.#fatal(ErrorCode.WRITE_TIMEOUT, message, 0, 'write');
      return;
    }
    if (readTimeout > 0 && this.#pause === 0) {
      const resumed = this.#resumedAt;
      const since = Math.max(this.#lastReadAt, resumed);
      let stalled: string | undefined;
      let stalledTask = 0;
      const decoder = this.#decoder;
      if (decoder !== undefined && decoder.buffered > 0) {
        // No byte for readTimeout; or, trickled, not whole within readTimeout plus its share of
        // the minimum rate (a header alone: readTimeout).
        const allowed = readTimeout + (decoder.expecting * 1_000) / MIN_READ_RATE;
        if (now - since >= readTimeout) {
          stalled = `timeout whilst reading a frame: nothing for ${readTimeout} ms`;
        } else if (now - Math.max(this.#frameStart, resumed) >= allowed) {
          stalled = `a frame did not arrive whole within ${Math.round(allowed)} ms (${decoder.buffered} bytes of it so far)`;
        }
      }
      if (stalled === undefined && this.#receiving > 0) {
        for (const task of this.#tasks.values()) {
          if (task.state !== RECEIVING) continue;
          if (now - Math.max(task.lastDataAt, resumed) >= readTimeout) {
            stalled = `timeout whilst reading the message of task ${task.id}: nothing for ${readTimeout} ms`;
            stalledTask = task.id;
            break;
          }
          const allowed = readTimeout + (task.size * 1_000) / MIN_READ_RATE;
          if (now - Math.max(task.startedAt, resumed) >= allowed) {
            stalled = `the message of task ${task.id} did not arrive whole within ${Math.round(allowed)} ms (${task.size} bytes of it so far)`;
            stalledTask = task.id;
            break;
          }
        }
      }
      if (stalled !== undefined) {
        this.#timedOut('read', stalled);
        this.#fatal(ErrorCode.READ_TIMEOUT, stalled, stalledTask, 'read');
        return;
      }
    }
    if (
      limits.waitTimeout > 0 &&
      state === OPEN &&
      this.#tasks.size === 0 &&
      (this.#decoder?.buffered ?? 0) === 0 &&
      now - this.#idleSince >= limits.waitTimeout
    ) {
      const message = 'timeout whilst waiting for task';
      this.#timedOut('wait', message);
      this.#state = GOODBYE;
      this.#out().frame(ServerFrame.GOODBYE, 0, ErrorCode.WAIT_TIMEOUT, 0, Buffer.from(message));
      this.#endConnection();
      return;
    }
    if (
      state === OPEN &&
      this.#tasks.size === 0 &&
      now - this.#idleSince >= RELEASE_AFTER_MS &&
      (this.#decoder !== undefined || this.#outbox !== undefined)
    ) {
      this.#shed();
      return;
    }
    const interval = limits.processingInterval;
    if (interval > 0 && this.#tasks.size > 0) {
      for (const task of this.#tasks.values()) {
        if (task.state < PARSING) continue;
        const last = Math.max(task.lastSentAt, task.out?.lastSentAt ?? 0);
        if (now - last >= interval) {
          task.lastSentAt = now;
          this.#out().frame(ServerFrame.PROCESSING, 0, 0, task.id);
        }
      }
    }
  }
}
