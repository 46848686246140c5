/**
 * `TaskClient`: the task protocol's client. One connection, many calls at once: each call is a
 * task with an id the client picks, its message sent in frames, its response gathered whole
 * (`call`) or streamed with flow control (`stream`). Aborting a call sends CANCEL. The client
 * keeps the connection alive when idle, fails new calls clearly once the server says Goodbye, and
 * closes gracefully or at once.
 */

import { channel } from 'node:diagnostics_channel';
import { addAbortListener } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { Duplex, Readable } from 'node:stream';
import {
  InvalidOptionError,
  ServiceClosedError,
  TaskConnectError,
  TaskConnectionClosedError,
  TaskError,
  TaskGoodbyeError,
  TaskProtocolError,
  TaskRefusedError,
  TaskTimeoutError,
} from '../errors.js';
import {
  optional,
  rejectUnknownKeys,
  validateAbortSignal,
  validateDuration,
  validateInstance,
  validateInteger,
  validateObject,
  validateOneOf,
  validatePort,
  validateString,
} from '../options.js';
import { noop } from '../util.js';
import { CallTable } from './call-table.js';
import {
  decodeTaskList,
  encodeClientHello,
  type Frame,
  FrameDecoder,
  isRefusal,
  type ServerHello,
  ServerHelloDecoder,
  type TaskInfo,
  windowPayload,
} from './codec.js';
import {
  type ByteOrder,
  ClientFrame,
  ErrorCode,
  errorCodeName,
  FLAG_END,
  MAX_U32,
  MIN_FRAME_PAYLOAD,
  PROTOCOL_VERSION,
  ReservedTask,
  ServerFrame,
} from './codes.js';
import { Outbox, type OutStream } from './outbox.js';

/** What a call's message may be. */
export type TaskBody =
  | undefined
  | null
  | Uint8Array
  | string
  | AsyncIterable<Uint8Array | string>
  | Iterable<Uint8Array | string>;

/** Options of `TaskClient.connect()`. Defaults: `TASK_CLIENT_DEFAULTS`. */
export interface TaskClientOptions {
  /** @default '127.0.0.1' when `port` is given */
  host?: string;
  port?: number;
  /** A unix domain socket path, instead of `host` and `port`. */
  path?: string;
  /** An already-connected stream to speak over (a test's in-memory pair, a TLS socket). */
  socket?: Duplex;
  /** The byte order to ask for. @default 'le' */
  byteOrder?: ByteOrder;
  /** Aborting it destroys the client at any time (as `net.connect`'s signal does). */
  signal?: AbortSignal;
  /** How long connecting and the handshake may take (ms). @default 10000 (10 s) */
  timeout?: number;
  /** The largest frame payload this client accepts. @default 1048576 (1 MiB) */
  maxFramePayload?: number;
  /** Response bytes the server may send per task before this client grants more. @default 262144 (256 KiB) */
  window?: number;
  /** No frame for a call for this long fails it (and cancels the task). 0 for never. @default 600000 (10 min) */
  responseTimeout?: number;
  /** Nothing sent or received for this long: send a keep-alive. 0 for never. @default 180000 (3 min) */
  keepAlive?: number;
  /** A keep-alive unanswered for this long means the connection is dead. @default 20000 (20 s) */
  keepAliveTimeout?: number;
}

/** Options of one call (`call`, `stream`, `ping`). */
export interface CallOptions {
  /** Aborting it cancels the call: the server gets CANCEL, the call rejects with the reason. */
  signal?: AbortSignal;
  /** The call's deadline (ms); past it the call is cancelled and rejects with `ERR_BERTH_TASK_TIMEOUT`. */
  timeout?: number;
}

/** `invoke`'s callback: the error, or the whole response. */
export type CallCallback = (error: Error | null, response?: Buffer) => void;

export type { TaskInfo } from './codec.js';

/** A snapshot of a client's counters. */
export interface TaskClientStats {
  /** Calls sent and not yet answered (cancelled calls count until the server's answer). */
  callsInFlight: number;
  /** Calls waiting for a free slot (the server's max tasks in flight). */
  callsQueued: number;
  callsTotal: number;
  bytesIn: number;
  bytesOut: number;
}

/** The defaults of `TaskClientOptions`. */
export const TASK_CLIENT_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  byteOrder: 'le' as ByteOrder,
  timeout: 10_000, // 10 s to connect and shake hands
  maxFramePayload: 1_048_576, // 1 MiB
  window: 262_144, // 256 KiB per task
  responseTimeout: 600_000, // 10 min: the seed's wait for a response
  keepAlive: 180_000, // 3 min: the seed's keep-alive
  keepAliveTimeout: 20_000, // 20 s
});

const KNOWN_OPTIONS = [
  'host',
  'port',
  'path',
  'socket',
  'byteOrder',
  'signal',
  'timeout',
  'maxFramePayload',
  'window',
  'responseTimeout',
  'keepAlive',
  'keepAliveTimeout',
] as const;

/** After our last call is answered in a close, how long we wait for the server to close. */
const CLOSE_LINGER = 1_000; // ms

const goodbyeChannel = channel('berth:task:goodbye');

function toBuffer(value: Uint8Array | string): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError(`a message chunk must be a Uint8Array or a string, got ${typeof value}`);
}

/** Calls an `invoke` callback; what it throws surfaces on the next tick, not in the client. */
function callBack(done: CallCallback, error: Error | undefined, value: Buffer | undefined): void {
  try {
    if (error) done(error);
    else done(null, value);
  } catch (err) {
    process.nextTick(() => {
      throw err;
    });
  }
}

const CALL_BUFFER = 0;
const CALL_STREAM = 1;

/** One call: its task on the wire and how its answer reaches the caller. */
class Call {
  id = -1;
  /** The task code (for a stream called by name, set once the name is looked up). */
  code: number;
  readonly mode: number;
  /** The message, until it is handed to the outbox. */
  body: TaskBody;
  /** A user's call (not a keep-alive): keeps the socket ref'd. */
  readonly user: boolean;
  /** The response so far (buffered calls): the first piece, then the rest. */
  first: Buffer | undefined;
  chunks: Buffer[] | undefined;
  size = 0;
  /** Bytes granted to the server (the window so far) and bytes received. */
  granted = 0;
  received = 0;
  lastFrameAt = 0;
  /** Any frame came for it: the server started it. */
  heard = false;
  /** The final frame arrived (or the connection ended). */
  answered = false;
  /** The caller has its outcome. */
  settled = false;
  /** Counted among the user's calls (so settling it uncounts it). */
  counted = false;
  out: OutStream | undefined;
  resolve: ((value: Buffer) => void) | undefined;
  reject: ((error: Error) => void) | undefined;
  /** `invoke`'s callback, instead of `resolve`/`reject`. */
  done: CallCallback | undefined;
  /** Still inside `invoke`: an outcome known now is called back on the next tick. */
  inline = false;
  readable: ResponseStream | undefined;
  timer: NodeJS.Timeout | undefined;
  signalListener: Disposable | undefined;

  constructor(code: number, mode: number, body: TaskBody, user: boolean) {
    this.code = code;
    this.mode = mode;
    this.body = body;
    this.user = user;
  }
}

/** The `Readable` a streamed call gives: reading it grants the server more window. */
class ResponseStream extends Readable {
  readonly #onRead: () => void;
  readonly #onDestroy: (error: Error | null) => void;

  constructor(onRead: () => void, onDestroy: (error: Error | null) => void) {
    super();
    this.#onRead = onRead;
    this.#onDestroy = onDestroy;
  }

  override _read(): void {
    this.#onRead();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#onDestroy(error);
    callback(error);
  }
}

interface ResolvedOptions {
  byteOrder: ByteOrder;
  maxFramePayload: number;
  window: number;
  responseTimeout: number;
  keepAlive: number;
  keepAliveTimeout: number;
  address: string;
}

/** The frame types a client's decoder hands over in pieces. */
const SPLIT_OK: readonly number[] = [ServerFrame.OK];

/**
 * A task-protocol client: one connection, many calls at once. Make one with
 * `TaskClient.connect()`; see docs/task-client.md.
 */
export class TaskClient {
  readonly #socket: Duplex;
  readonly #options: ResolvedOptions;
  readonly #byteOrder: ByteOrder;
  #server: ServerHello | undefined;
  #decoder: FrameDecoder | undefined;
  #outbox: Outbox | undefined;
  readonly #calls = new CallTable<Call>();
  readonly #queue: Call[] = [];
  #userCalls = 0;
  #callsTotal = 0;
  #bytesIn = 0;
  /** The hello's bytes; the outbox counts the rest. */
  #helloBytes = 0;
  #lastActivity = performance.now();
  /** A call was sent since the watchdog last looked (counts as activity for the keep-alive). */
  #sentSinceCheck = false;
  #watchdog: NodeJS.Timeout | undefined;
  #keepAlivePending: Call | undefined;
  #keepAliveInterval = 0;
  #goodbye: { code: number; reason: string } | undefined;
  #fatal: { code: number; message: string } | undefined;
  #error: Error | undefined;
  #closing: Promise<void> | undefined;
  #closeRequested = false;
  #connectionClosed = false;
  #taskNames: Promise<Map<string, number>> | undefined;
  #resolveClosed!: () => void;
  #rejectClosed!: (error: Error) => void;
  readonly #closed: Promise<void>;
  #signalListener: Disposable | undefined;

  private constructor(socket: Duplex, options: ResolvedOptions) {
    this.#socket = socket;
    this.#options = options;
    this.#byteOrder = options.byteOrder;
    this.#closed = new Promise((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    this.#closed.catch(noop);
  }

  /**
   * Connects, shakes hands and resolves with a client ready for calls. Rejects with
   * `ERR_BERTH_TASK_CONNECT_FAILED` (nothing listening, unreachable), `ERR_BERTH_TASK_REFUSED`
   * (the server refused the handshake), `ERR_BERTH_TASK_TIMEOUT` (`timeout` passed), or the
   * signal's reason.
   *
   * @example
   * await using client = await TaskClient.connect({ port: 8082 });
   * const reply = await client.call(1, 'hello');
   */
  static async connect(options: TaskClientOptions): Promise<TaskClient> {
    validateObject(options, 'TaskClient options');
    rejectUnknownKeys(options, 'TaskClient', KNOWN_OPTIONS);
    const D = TASK_CLIENT_DEFAULTS;
    const byteOrder = optional(options.byteOrder, D.byteOrder, (v) =>
      validateOneOf(v, 'byteOrder', ['le', 'be'] as const),
    );
    const timeout = optional(options.timeout, D.timeout, (v) => validateDuration(v, 'timeout'));
    const signal = optional(options.signal, undefined, (v) => validateAbortSignal(v, 'signal'));
    const resolved: ResolvedOptions = {
      byteOrder,
      maxFramePayload: optional(options.maxFramePayload, D.maxFramePayload, (v) =>
        validateInteger(v, 'maxFramePayload', { min: MIN_FRAME_PAYLOAD, max: MAX_U32 }),
      ),
      window: optional(options.window, D.window, (v) =>
        validateInteger(v, 'window', { min: 1, max: MAX_U32 }),
      ),
      responseTimeout: optional(options.responseTimeout, D.responseTimeout, (v) =>
        validateDuration(v, 'responseTimeout'),
      ),
      keepAlive: optional(options.keepAlive, D.keepAlive, (v) => validateDuration(v, 'keepAlive')),
      keepAliveTimeout: optional(options.keepAliveTimeout, D.keepAliveTimeout, (v) =>
        validateDuration(v, 'keepAliveTimeout'),
      ),
      address: '',
    };
    const given = (['port', 'path', 'socket'] as const).filter((k) => options[k] !== undefined);
    if (given.length !== 1) {
      throw new InvalidOptionError(
        given[1] ? `TaskClient.${given[1]}` : 'TaskClient.port',
        given.length === 0
          ? 'TaskClient: give one of port, path or socket'
          : `TaskClient: give only one of port, path or socket, got ${given.join(' and ')}`,
      );
    }
    if (signal?.aborted) throw signal.reason;
    let socket: Duplex;
    if (options.socket !== undefined) {
      socket = validateInstance(options.socket, 'socket', Duplex, 'a Duplex stream');
      resolved.address = 'the given socket';
    } else if (options.path !== undefined) {
      const path = validateString(options.path, 'path');
      if (options.host !== undefined) {
        throw new InvalidOptionError('TaskClient.host', 'TaskClient.host needs TaskClient.port');
      }
      resolved.address = `unix:${path}`;
      socket = netConnect({ path });
    } else {
      const port = validatePort(options.port, 'port');
      const host = optional(options.host, D.host, (v) => validateString(v, 'host'));
      resolved.address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
      socket = netConnect({ port, host, noDelay: true });
    }
    const client = new TaskClient(socket, resolved);
    await client.#handshake(timeout, signal);
    return client;
  }

  #handshake(timeout: number, signal: AbortSignal | undefined): Promise<void> {
    const socket = this.#socket;
    const options = this.#options;
    socket.on('error', noop);
    return new Promise<void>((resolve, reject) => {
      const decoder = new ServerHelloDecoder(this.#byteOrder);
      let done = false;
      const finish = (error?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        abortListener?.[Symbol.dispose]();
        socket.off('data', onData);
        socket.off('error', onError);
        socket.off('close', onClose);
        if (error) {
          socket.destroy();
          reject(error);
        } else {
          resolve();
        }
      };
      const onData = (chunk: Buffer) => {
        this.#bytesIn += chunk.length;
        let hello: ReturnType<ServerHelloDecoder['push']>;
        try {
          hello = decoder.push(chunk);
        } catch (err) {
          finish(err as TaskProtocolError);
          return;
        }
        if (hello === undefined) return;
        if (isRefusal(hello)) {
          const name = errorCodeName(hello.code);
          finish(
            new TaskRefusedError(
              hello.code,
              hello.version,
              `${options.address} refused the connection: ${hello.message} (code ${hello.code}${name ? `, ${name}` : ''})`,
            ),
          );
          return;
        }
        finish();
        this.#open(hello, decoder.rest, signal);
      };
      const onError = (err: NodeJS.ErrnoException) => {
        finish(new TaskConnectError(options.address, err.code ?? err.message, { cause: err }));
      };
      const onClose = () => {
        finish(
          new TaskConnectError(options.address, 'the connection closed before the server hello'),
        );
      };
      const timer = setTimeout(
        () =>
          finish(
            new TaskTimeoutError(
              'connect',
              `no server hello from ${options.address} within ${timeout} ms`,
            ),
          ),
        timeout,
      );
      const abortListener = signal
        ? addAbortListener(signal, () => finish(signal.reason as Error))
        : undefined;
      socket.on('data', onData);
      socket.on('error', onError);
      socket.on('close', onClose);
      const hello = encodeClientHello({
        version: PROTOCOL_VERSION,
        byteOrder: this.#byteOrder,
        flags: 0,
        maxFramePayload: options.maxFramePayload,
        initialWindow: options.window,
      });
      this.#helloBytes = hello.length;
      socket.write(hello);
    });
  }

  #open(hello: ServerHello, rest: Buffer, signal: AbortSignal | undefined): void {
    const socket = this.#socket;
    const options = this.#options;
    this.#server = hello;
    this.#decoder = new FrameDecoder({
      byteOrder: this.#byteOrder,
      maxPayload: options.maxFramePayload,
      source: 'server',
      // OK payloads are only appended (to a stream, or to the chunks of a buffered answer):
      // taking them in pieces saves joining each frame that spans two reads.
      split: SPLIT_OK,
    });
    this.#outbox = new Outbox(socket, {
      byteOrder: this.#byteOrder,
      maxFramePayload: hello.maxFramePayload,
    });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err: Error) => {
      this.#error ??= err;
    });
    socket.on('close', () => this.#onClose());
    if (signal) {
      this.#signalListener = addAbortListener(signal, () => {
        void this.destroy(signal.reason as Error);
      });
    }
    // Keep-alives go at least every half wait timeout, so the server never sees us idle; with
    // keepAlive 0 there are none and the server's wait timeout applies.
    let interval = options.keepAlive;
    if (interval > 0 && hello.waitTimeout > 0) {
      interval = Math.min(interval, Math.max(1, Math.floor(hello.waitTimeout / 2)));
    }
    this.#keepAliveInterval = interval;
    const enabled = [options.responseTimeout, interval, options.keepAliveTimeout].filter(
      (t) => t > 0,
    );
    if (enabled.length > 0) {
      this.#watchdog = setInterval(
        () => this.#check(),
        Math.max(5, Math.floor(Math.min(...enabled) / 4)),
      );
      this.#watchdog.unref();
    }
    this.#lastActivity = performance.now();
    this.#updateRef();
    if (rest.length > 0) this.#onData(rest);
  }

  // --- public API ---------------------------------------------------------------------------------

  /** The byte order this connection uses. */
  get byteOrder(): ByteOrder {
    return this.#byteOrder;
  }

  /** What the server advertised in its hello: its limits and wait timeout. */
  get server(): Readonly<ServerHello> {
    return this.#server!;
  }

  /** True once the server has said Goodbye: new calls fail with `ERR_BERTH_TASK_GOODBYE`. */
  get goodbye(): boolean {
    return this.#goodbye !== undefined;
  }

  /** Settles once the connection has closed: fulfils after `close()` or a server's Goodbye, else rejects with why it ended. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** A plain snapshot of the client's counters. */
  get stats(): TaskClientStats {
    return {
      callsInFlight: this.#calls.size,
      callsQueued: this.#queue.length,
      callsTotal: this.#callsTotal,
      bytesIn: this.#bytesIn,
      bytesOut: this.#helloBytes + (this.#outbox?.bytesOut ?? 0),
    };
  }

  /**
   * Runs a task and resolves with its whole response. `task` is a code (0 to 249) or a name the
   * server registered. Rejects with `ERR_BERTH_TASK_ERROR` (the server's code and message) when
   * the task answers Error, with the signal's reason or `ERR_BERTH_TASK_TIMEOUT` when cancelled
   * here, `ERR_BERTH_TASK_GOODBYE` after the server said Goodbye, `ERR_BERTH_SERVICE_CLOSED`
   * after `close()`, `ERR_BERTH_TASK_CONNECTION_CLOSED` when the connection failed.
   */
  call(task: number | string, body?: TaskBody, options?: CallOptions): Promise<Buffer> {
    if (typeof task === 'string') {
      return this.#resolveName(task).then((code) => this.call(code, body, options));
    }
    return new Promise<Buffer>((resolve, reject) => {
      const call = new Call(task, CALL_BUFFER, body, true);
      call.resolve = resolve;
      call.reject = reject;
      this.#begin(call, options);
    });
  }

  /**
   * `call` with a callback instead of a promise, for callers that keep many calls going and
   * would pay for a promise (and an `await`) per call: `done(null, response)` or `done(error)`,
   * with the errors `call` rejects with, never before `invoke` returns. An error thrown by `done`
   * is rethrown on the next tick (an uncaught exception), not into the client.
   */
  invoke(task: number | string, body: TaskBody, done: CallCallback, options?: CallOptions): void {
    if (typeof done !== 'function') {
      throw new InvalidOptionError('done', `done must be a function, got ${typeof done}`);
    }
    if (typeof task === 'string') {
      this.#resolveName(task).then(
        (code) => this.invoke(code, body, done, options),
        (err: Error) => callBack(done, err, undefined),
      );
      return;
    }
    const call = new Call(task, CALL_BUFFER, body, true);
    call.done = done;
    call.inline = true;
    this.#begin(call, options);
    call.inline = false;
  }

  /**
   * Runs a task and streams its response: a `Readable` (also an async iterable) that ends when
   * the task succeeds and errors as `call` rejects. Reading slowly slows only this task: the
   * server sends no more than the client's window ahead of what was read. Destroying the stream
   * before its end cancels the task.
   */
  stream(task: number | string, body?: TaskBody, options?: CallOptions): Readable {
    const call = new Call(typeof task === 'number' ? task : 0, CALL_STREAM, body, true);
    call.readable = new ResponseStream(
      () => this.#grant(call),
      (error) => {
        // Destroyed by its reader before the end: cancel the task.
        if (!call.settled) {
          this.#cancelCall(
            call,
            error ?? new TaskError(ErrorCode.CANCELLED, 'the response stream was destroyed'),
          );
        }
      },
    );
    if (typeof task === 'string') {
      this.#resolveName(task).then(
        (code) => {
          if (call.readable!.destroyed) return;
          call.code = code;
          this.#begin(call, options);
        },
        (err: Error) => call.readable!.destroy(err),
      );
    } else {
      this.#begin(call, options);
    }
    return call.readable;
  }

  /** The server's registered tasks (reserved task 251). */
  async listTasks(): Promise<TaskInfo[]> {
    return decodeTaskList(await this.call(ReservedTask.LIST_TASKS));
  }

  /** Runs the keep-alive task (250); resolves with the round trip in ms. */
  async ping(options?: CallOptions): Promise<number> {
    const started = performance.now();
    await this.call(ReservedTask.KEEP_ALIVE, undefined, options);
    return performance.now() - started;
  }

  /**
   * The graceful close: no new calls (`ERR_BERTH_SERVICE_CLOSED`), Goodbye to the server, the
   * calls in flight finish, then the connection closes. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    // Until the connection is gone, it keeps the process alive: someone awaits this close.
    this.#closeRequested = true;
    this.#closing = new Promise<void>((resolve) => {
      if (this.#connectionClosed) {
        resolve();
        return;
      }
      this.#socket.once('close', () => resolve());
      for (const call of this.#queue.splice(0)) {
        this.#settle(
          call,
          new ServiceClosedError('the task client was closed before the call was sent'),
        );
      }
      this.#outbox!.frame(ClientFrame.GOODBYE, 0, 0, 0);
      this.#updateRef();
      this.#maybeEndSocket();
    });
    return this.#closing;
  }

  /** The abrupt stop: every unanswered call rejects with `error` (or a connection-closed error) now. */
  destroy(error?: Error): Promise<void> {
    if (this.#connectionClosed) return Promise.resolve();
    const reason = error ?? new TaskConnectionClosedError('the task client was destroyed');
    this.#error ??= reason;
    this.#failAll(reason);
    this.#socket.destroy();
    return new Promise((resolve) => {
      if (this.#connectionClosed) resolve();
      else this.#socket.once('close', () => resolve());
    });
  }

  /** `await using` closes the client. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- calls ----------------------------------------------------------------------------------------

  #begin(call: Call, options: CallOptions | undefined): void {
    let refusal: Error | undefined;
    if (!Number.isInteger(call.code) || call.code < 0 || call.code > 255) {
      refusal = new InvalidOptionError(
        'task',
        `task must be a task code from 0 to 255 or a task name, got ${String(call.code)}`,
      );
    } else if (this.#closing) {
      refusal = new ServiceClosedError('the task client is closed');
    } else if (this.#goodbye) {
      refusal = this.#goodbyeError('new calls are refused');
    } else if (this.#connectionClosed) {
      refusal = this.#error ?? new TaskConnectionClosedError('the connection is closed');
    }
    if (refusal) {
      this.#settle(call, refusal);
      return;
    }
    if (options !== undefined) {
      const { signal, timeout } = options;
      try {
        if (signal !== undefined) validateAbortSignal(signal, 'signal');
        if (timeout !== undefined) validateDuration(timeout, 'timeout');
      } catch (err) {
        this.#settle(call, err as Error);
        return;
      }
      if (signal !== undefined) {
        if (signal.aborted) {
          this.#settle(call, signal.reason as Error);
          return;
        }
        call.signalListener = addAbortListener(signal, () =>
          this.#cancelCall(call, signal.reason as Error),
        );
      }
      if (timeout !== undefined) {
        call.timer = setTimeout(
          () =>
            this.#cancelCall(
              call,
              new TaskTimeoutError('call', `task ${call.code} did not finish within ${timeout} ms`),
            ),
          timeout,
        );
        call.timer.unref();
      }
    }
    this.#callsTotal++;
    if (call.user) {
      call.counted = true;
      if (++this.#userCalls === 1) this.#updateRef();
    }
    if (this.#calls.size >= this.#maxInFlight()) {
      this.#queue.push(call);
      return;
    }
    this.#send(call);
  }

  #send(call: Call): void {
    const calls = this.#calls;
    const id = calls.add(call);
    call.id = id;
    call.granted = this.#options.window;
    // 0: the watchdog starts the call's response clock at its next tick (no clock read here).
    call.lastFrameAt = 0;
    this.#sentSinceCheck = true;
    const outbox = this.#outbox!;
    const body = call.body;
    call.body = undefined; // the outbox (or the pump) holds what is still to be sent
    const limit = this.#server!.maxMessageSize;
    if (
      body === undefined ||
      body === null ||
      typeof body === 'string' ||
      body instanceof Uint8Array
    ) {
      const bytes = body === undefined || body === null ? undefined : toBuffer(body);
      const n = bytes === undefined ? 0 : bytes.length;
      if (n > limit) {
        calls.delete(id);
        this.#settle(
          call,
          new TaskError(
            ErrorCode.MESSAGE_TOO_LARGE,
            `message of ${n} bytes is over the server's limit of ${limit}`,
          ),
        );
        this.#next();
        return;
      }
      if (n <= outbox.frameSize) {
        outbox.frame(ClientFrame.START, FLAG_END, call.code, id, bytes);
      } else {
        const out = outbox.stream(id, ClientFrame.DATA, ClientFrame.START, call.code, Infinity);
        call.out = out;
        outbox.push(out, bytes!);
        outbox.end(out);
      }
      return;
    }
    const out = outbox.stream(id, ClientFrame.DATA, ClientFrame.START, call.code, Infinity);
    call.out = out;
    void this.#pumpBody(call, out, body);
  }

  async #pumpBody(
    call: Call,
    out: OutStream,
    body: AsyncIterable<Uint8Array | string> | Iterable<Uint8Array | string>,
  ): Promise<void> {
    const outbox = this.#outbox!;
    const limit = this.#server!.maxMessageSize;
    let size = 0;
    try {
      const iterable = body as AsyncIterable<Uint8Array | string>;
      for await (const chunk of iterable) {
        if (out.done || call.answered) return;
        const bytes = toBuffer(chunk);
        size += bytes.length;
        if (size > limit) {
          throw new TaskError(
            ErrorCode.MESSAGE_TOO_LARGE,
            `message of at least ${size} bytes is over the server's limit of ${limit}`,
          );
        }
        outbox.push(out, bytes);
        if (out.full) await out.whenReady();
      }
      if (out.done || call.answered) return;
      outbox.end(out);
    } catch (err) {
      this.#cancelCall(call, err as Error);
    }
  }

  /**
   * Tops the server's allowance for a call back up to the window once half is used. A buffered
   * call does it as bytes arrive; a stream only when its reader asks for more (`_read`), so an
   * unread stream holds at most the window plus the stream's own buffer. (Node calls `_read`
   * before it removes the chunk being read and not again until the next push, so the rule looks
   * only at what the server may still send, never at what the reader has taken.)
   */
  #grant(call: Call): void {
    if (call.answered || call.id < 0) return;
    const window = this.#options.window;
    const outstanding = call.granted - call.received;
    if (outstanding <= window / 2) {
      const increment = window - outstanding;
      call.granted += increment;
      this.#outbox!.frame(
        ClientFrame.WINDOW,
        0,
        0,
        call.id,
        windowPayload(increment, this.#byteOrder),
      );
    }
  }

  /** Cancels a call here: the caller gets `reason` now; the server gets CANCEL. */
  #cancelCall(call: Call, reason: Error): void {
    if (call.answered) return;
    this.#settle(call, reason);
    if (call.id < 0) {
      // Still queued: nothing was sent.
      const i = this.#queue.indexOf(call);
      if (i >= 0) this.#queue.splice(i, 1);
      return;
    }
    if (call.out && !call.out.started) {
      // Nothing of it went out: free the id at once.
      this.#outbox!.abort(call.out);
      this.#answered(call);
      return;
    }
    if (call.out) this.#outbox!.abort(call.out);
    if (!this.#connectionClosed) this.#outbox!.frame(ClientFrame.CANCEL, 0, 0, call.id);
  }

  /** Gives the caller its outcome (once). */
  #settle(call: Call, error: Error | undefined, value?: Buffer): void {
    if (call.timer) clearTimeout(call.timer);
    call.signalListener?.[Symbol.dispose]();
    if (call.settled) return;
    call.settled = true;
    if (call.counted && --this.#userCalls === 0) this.#updateRef();
    if (call.done) {
      if (call.inline) process.nextTick(callBack, call.done, error, value);
      else callBack(call.done, error, value);
    } else if (call.mode === CALL_BUFFER) {
      if (error) call.reject!(error);
      else call.resolve!(value!);
    } else if (error) {
      call.readable!.destroy(error);
    } else {
      call.readable!.push(null);
    }
  }

  /** The call's final frame is in (or the connection ended): its id is free. */
  #answered(call: Call): void {
    call.answered = true;
    this.#calls.delete(call.id);
    if (call === this.#keepAlivePending) this.#keepAlivePending = undefined;
    this.#next();
    this.#maybeEndSocket();
  }

  /** The server's limit (a server that says 0 still gets one call at a time, not none). */
  #maxInFlight(): number {
    return Math.max(1, this.#server!.maxTasksInFlight);
  }

  /** A slot is free: send the next queued call. */
  #next(): void {
    const limit = this.#maxInFlight();
    while (this.#queue.length > 0 && this.#calls.size < limit) {
      const call = this.#queue.shift()!;
      if (!call.settled) this.#send(call);
    }
  }

  #goodbyeError(what: string): TaskGoodbyeError {
    const g = this.#goodbye!;
    return new TaskGoodbyeError(
      g.code,
      `the server said goodbye (${g.reason || errorCodeName(g.code) || g.code}): ${what}`,
    );
  }

  // --- input ----------------------------------------------------------------------------------------

  #onData(chunk: Buffer): void {
    this.#bytesIn += chunk.length;
    this.#lastActivity = performance.now();
    try {
      this.#decoder!.push(chunk, this.#onFrame);
    } catch (err) {
      if (!(err instanceof TaskProtocolError)) throw err;
      void this.destroy(
        new TaskConnectionClosedError(`the server broke the protocol: ${err.message}`, undefined, {
          cause: err,
        }),
      );
    }
  }

  readonly #onFrame = (frame: Frame): void => {
    const type = frame.type;
    if (type === ServerFrame.GOODBYE) {
      this.#onGoodbye(frame.code, frame.payload.toString('utf8'));
      return;
    }
    if (type === ServerFrame.FATAL) {
      this.#fatal = { code: frame.code, message: frame.payload.toString('utf8') };
      return;
    }
    const call = this.#calls.get(frame.id);
    if (call === undefined) {
      throw new TaskProtocolError(
        ErrorCode.BAD_FRAME,
        `frame type ${type} for task ${frame.id}, which is not active`,
      );
    }
    call.heard = true;
    call.lastFrameAt = this.#lastActivity;
    if (type === ServerFrame.OK) {
      const payload = frame.payload;
      const n = payload.length;
      if (n > call.granted - call.received) {
        throw new TaskProtocolError(
          ErrorCode.BAD_FRAME,
          `the server sent ${n} bytes for task ${frame.id} with only ${call.granted - call.received} of window left`,
        );
      }
      call.received += n;
      if (!call.settled && n > 0) {
        if (call.mode === CALL_BUFFER) {
          if (call.first === undefined) call.first = payload;
          else if (call.chunks === undefined) call.chunks = [call.first, payload];
          else call.chunks.push(payload);
          call.size += n;
        } else {
          call.readable!.push(payload);
        }
      }
      if ((frame.flags & FLAG_END) !== 0) {
        this.#answered(call);
        if (!call.settled) {
          if (call.mode === CALL_BUFFER) {
            const value = call.chunks
              ? Buffer.concat(call.chunks, call.size)
              : (call.first ?? Buffer.alloc(0));
            call.first = undefined;
            call.chunks = undefined;
            this.#settle(call, undefined, value);
          } else {
            this.#settle(call, undefined);
          }
        }
      } else if (!call.settled && call.mode === CALL_BUFFER) {
        this.#grant(call); // a stream grants when its reader asks (_read)
      }
      return;
    }
    if (type === ServerFrame.ERROR) {
      this.#answered(call);
      if (call.out) this.#outbox!.abort(call.out);
      if (!call.settled) {
        const text = frame.payload.toString('utf8');
        this.#settle(
          call,
          new TaskError(frame.code, text || errorCodeName(frame.code) || `error ${frame.code}`),
        );
      }
    }
    // PROCESSING: `heard` and `lastFrameAt` are all it does.
  };

  #onGoodbye(code: number, reason: string): void {
    if (this.#goodbye) return;
    this.#goodbye = { code, reason };
    if (goodbyeChannel.hasSubscribers) goodbyeChannel.publish({ client: this, code, reason });
    for (const call of this.#queue.splice(0)) {
      this.#settle(call, this.#goodbyeError('the call was never sent'));
    }
    this.#maybeEndSocket();
  }

  /** Once nothing is active after a Goodbye (either side's), end our side and wait a moment. */
  #maybeEndSocket(): void {
    if ((!this.#goodbye && !this.#closing) || this.#calls.size > 0 || this.#connectionClosed) {
      return;
    }
    const socket = this.#socket;
    if (!socket.writableEnded) {
      this.#outbox?.close();
      socket.end();
      setTimeout(() => socket.destroy(), CLOSE_LINGER).unref();
    }
  }

  #onClose(): void {
    if (this.#connectionClosed) return;
    this.#connectionClosed = true;
    clearInterval(this.#watchdog);
    this.#signalListener?.[Symbol.dispose]();
    this.#outbox?.close();
    const fatal = this.#fatal;
    let error: Error | undefined;
    if (fatal) {
      const name = errorCodeName(fatal.code);
      error = new TaskConnectionClosedError(
        `the server closed the connection: ${fatal.message} (code ${fatal.code}${name ? `, ${name}` : ''})`,
        fatal.code,
      );
    } else if (this.#error) {
      error =
        this.#error instanceof TaskConnectionClosedError ||
        this.#error instanceof TaskTimeoutError ||
        this.#error.name === 'AbortError'
          ? this.#error
          : new TaskConnectionClosedError(
              `the connection failed: ${this.#error.message}`,
              undefined,
              {
                cause: this.#error,
              },
            );
    } else if (!this.#goodbye && !this.#closing) {
      error = new TaskConnectionClosedError('the server closed the connection');
    }
    this.#failAll(error);
    if (error && !this.#closing) this.#rejectClosed(error);
    else this.#resolveClosed();
  }

  /** Every unanswered call fails: after a clean Goodbye, unstarted ones as never run. */
  #failAll(error: Error | undefined): void {
    for (const call of this.#queue.splice(0)) {
      this.#settle(call, error ?? this.#goodbyeError('the call was never sent'));
    }
    for (const call of this.#calls.values()) {
      call.answered = true;
      if (call.out) call.out.done = true;
      if (!call.settled) {
        let e = error;
        if (e === undefined) {
          e =
            this.#goodbye && !call.heard
              ? this.#goodbyeError('the connection ended before the task started; it did not run')
              : new TaskConnectionClosedError('the connection ended before the task was answered');
        }
        this.#settle(call, e);
      }
    }
    this.#calls.clear();
    if (this.#goodbye === undefined && error !== undefined) this.#error ??= error;
  }

  // --- names, timers, ref ------------------------------------------------------------------------------

  #resolveName(name: string): Promise<number> {
    this.#taskNames ??= this.listTasks().then(
      (tasks) => new Map(tasks.filter((t) => t.name !== '').map((t) => [t.name, t.code])),
    );
    const names = this.#taskNames;
    names.catch(() => {
      if (this.#taskNames === names) this.#taskNames = undefined;
    });
    return names.then((map) => {
      const code = map.get(name);
      if (code === undefined) {
        throw new TaskError(
          ErrorCode.UNKNOWN_TASK,
          `the server has no task named "${name}"${map.size > 0 ? ` (it has: ${[...map.keys()].join(', ')})` : ''}`,
        );
      }
      return code;
    });
  }

  /** The socket keeps the process alive only while calls of the user's are in flight. */
  #updateRef(): void {
    const socket = this.#socket as Partial<Socket>;
    if (typeof socket.ref !== 'function' || typeof socket.unref !== 'function') return;
    if (this.#userCalls > 0 || this.#closeRequested) socket.ref();
    else socket.unref();
  }

  #check(): void {
    if (this.#connectionClosed) return;
    const now = performance.now();
    const options = this.#options;
    if (this.#sentSinceCheck) {
      this.#sentSinceCheck = false;
      this.#lastActivity = now;
    }
    if (options.responseTimeout > 0) {
      for (const call of this.#calls.values()) {
        // A call whose window is used up waits on its reader, not on the server: its
        // silence is expected, so its clock starts again.
        if (call.lastFrameAt === 0 || call.granted - call.received <= 0) {
          call.lastFrameAt = now;
          continue;
        }
        if (!call.answered && !call.settled && now - call.lastFrameAt >= options.responseTimeout) {
          this.#cancelCall(
            call,
            new TaskTimeoutError(
              'response',
              `no answer for task ${call.code} (id ${call.id}) within ${options.responseTimeout} ms`,
            ),
          );
        }
      }
    }
    const pending = this.#keepAlivePending;
    if (pending) {
      if (pending.lastFrameAt === 0) pending.lastFrameAt = now;
      if (options.keepAliveTimeout > 0 && now - pending.lastFrameAt >= options.keepAliveTimeout) {
        void this.destroy(
          new TaskTimeoutError(
            'keep-alive',
            `the server did not answer a keep-alive within ${options.keepAliveTimeout} ms`,
          ),
        );
      }
      return;
    }
    const interval = this.#keepAliveInterval;
    if (
      interval > 0 &&
      this.#calls.size === 0 &&
      !this.#goodbye &&
      !this.#closing &&
      now - this.#lastActivity >= interval
    ) {
      const call = new Call(ReservedTask.KEEP_ALIVE, CALL_BUFFER, undefined, false);
      call.resolve = noop;
      call.reject = noop;
      this.#keepAlivePending = call;
      this.#begin(call, undefined);
    }
  }
}
