/**
 * Every error berth throws or rejects with. The `code` is the API: it is stable, documented in
 * docs/errors.md, and never reused once retired. Messages may change.
 *
 * Each subclass declares its code once, as a static, so that the code can be read without an
 * instance (the docs test walks the exports) and every instance carries it.
 */

export interface BerthErrorOptions {
  cause?: unknown;
}

/** Base class of every berth error. Test `err instanceof BerthError` or `err.code`. */
export class BerthError extends Error {
  static readonly code: string = 'ERR_BERTH';
  readonly code: string;

  constructor(message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.code = (new.target as typeof BerthError).code;
    this.name = new.target.name;
  }
}

// --- options and lifecycle ------------------------------------------------------------------

/** An option had the wrong type or value. Thrown at construction, before anything starts. */
export class InvalidOptionError extends BerthError {
  static override readonly code = 'ERR_BERTH_INVALID_OPTION';
  /** The option's name, as the user wrote it (`shutdownTimeout`, `--port`). */
  readonly option: string;

  constructor(option: string, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.option = option;
  }
}

/** The address (host:port or socket path) is already taken by another listener. */
export class AddressInUseError extends BerthError {
  static override readonly code = 'ERR_BERTH_ADDRESS_IN_USE';
  readonly address: string;

  constructor(address: string, options?: BerthErrorOptions) {
    super(`address already in use: ${address}`, options);
    this.address = address;
  }
}

/** Listening failed for a reason other than the address being taken (EACCES, a bad fd, ...). */
export class ListenError extends BerthError {
  static override readonly code = 'ERR_BERTH_LISTEN_FAILED';
  readonly address: string;

  constructor(address: string, reason: string, options?: BerthErrorOptions) {
    super(`cannot listen on ${address}: ${reason}`, options);
    this.address = address;
  }
}

/** Work was offered to a service (or client) that is closing or closed. */
export class ServiceClosedError extends BerthError {
  static override readonly code = 'ERR_BERTH_SERVICE_CLOSED';
}

/**
 * The reason a connection's `AbortSignal` carries when its service begins a graceful close:
 * finish what you are doing and return.
 */
export class ServiceClosingError extends BerthError {
  static override readonly code = 'ERR_BERTH_SERVICE_CLOSING';
}

/** The service was destroyed (`destroy()` without an error of its own) while work was live. */
export class ServiceDestroyedError extends BerthError {
  static override readonly code = 'ERR_BERTH_SERVICE_DESTROYED';
}

/**
 * A connection's unsent bytes passed its service's `maxWriteBuffer` (its handler kept writing
 * while the peer read nothing); the connection was destroyed. The reason on its `AbortSignal`.
 */
export class WriteBufferFullError extends BerthError {
  static override readonly code = 'ERR_BERTH_WRITE_BUFFER_FULL';
  readonly service: string;
  /** Bytes waiting unsent when it was destroyed. */
  readonly bytes: number;
  readonly limit: number;

  constructor(service: string, bytes: number, limit: number, options?: BerthErrorOptions) {
    super(
      `${service}: a connection had ${bytes} bytes waiting to be sent, over maxWriteBuffer (${limit}); it was destroyed`,
      options,
    );
    this.service = service;
    this.bytes = bytes;
    this.limit = limit;
  }
}

/** A graceful close ran out of time; what was still live was destroyed. */
export class ShutdownTimeoutError extends BerthError {
  static override readonly code = 'ERR_BERTH_SHUTDOWN_TIMEOUT';
  /**
   * How many connections (or streams, tasks) were still live and were destroyed; undefined when
   * the runner destroyed a service whose own `close()` did not settle by its deadline.
   */
  readonly remaining: number | undefined;

  constructor(
    service: string,
    timeout: number,
    remaining: number | undefined,
    options?: BerthErrorOptions,
  ) {
    super(
      remaining === undefined
        ? `${service}: close() had not settled by its ${timeout} ms deadline; destroyed it`
        : `${service}: close timed out after ${timeout} ms; destroyed ${remaining} live connection(s)`,
      options,
    );
    this.remaining = remaining;
  }
}

/** A service stopped on its own while it was meant to be running (its listener failed, ...). */
export class ServiceFailedError extends BerthError {
  static override readonly code = 'ERR_BERTH_SERVICE_FAILED';
  readonly service: string;

  constructor(service: string, message: string, options?: BerthErrorOptions) {
    super(`${service}: ${message}`, options);
    this.service = service;
  }
}

// --- runner -----------------------------------------------------------------------------------

/** A service of a group failed to start; the services that had started were closed again. */
export class StartFailedError extends BerthError {
  static override readonly code = 'ERR_BERTH_START_FAILED';
  readonly service: string;

  constructor(service: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(`${service} failed to start: ${reason}`, { cause });
    this.service = service;
  }
}

/** A shutdown hook (`beforeShutdown`, `afterClose`) ran past its time bound. */
export class HookTimeoutError extends BerthError {
  static override readonly code = 'ERR_BERTH_HOOK_TIMEOUT';
  readonly hook: string;

  constructor(hook: string, timeout: number) {
    super(`${hook} did not finish within ${timeout} ms; shutdown went on without it`);
    this.hook = hook;
  }
}

// --- HTTP -------------------------------------------------------------------------------------

// --- CLI --------------------------------------------------------------------------------------

/** The command line was wrong: an unknown flag, a bad value, a missing argument. Exit code 2. */
export class UsageError extends BerthError {
  static override readonly code = 'ERR_BERTH_USAGE';
}

/** `berth serve` could not load the module, or it exports nothing berth can run. Exit code 2. */
export class InvalidModuleError extends BerthError {
  static override readonly code = 'ERR_BERTH_INVALID_MODULE';
  readonly module: string;

  constructor(module: string, message: string, options?: BerthErrorOptions) {
    super(`${module}: ${message}`, options);
    this.module = module;
  }
}

// --- task protocol ----------------------------------------------------------------------------

/**
 * A task-protocol peer broke the protocol: bad handshake bytes, an unknown frame type, a frame
 * over the negotiated maximum, a connection that ended mid-frame. The pure codec throws only
 * this; `errorCode` is the protocol's one-byte code (220 to 233, see docs/protocol.md).
 */
export class TaskProtocolError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_PROTOCOL';
  /** The wire code: 220 bad handshake, 223 unknown frame type, 224 frame too large, ... */
  readonly errorCode: number;

  constructor(errorCode: number, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.errorCode = errorCode;
  }
}

/** A task server refused the handshake (unsupported version, too many clients, shutting down). */
export class TaskRefusedError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_REFUSED';
  /** The refusal's code: 221 unsupported version, 222 too many clients, 204 shutting down, ... */
  readonly errorCode: number;
  /** The highest protocol version the server speaks. */
  readonly serverVersion: number;

  constructor(
    errorCode: number,
    serverVersion: number,
    message: string,
    options?: BerthErrorOptions,
  ) {
    super(message, options);
    this.errorCode = errorCode;
    this.serverVersion = serverVersion;
  }
}

/**
 * A task answered with an Error: `errorCode` is its one-byte code (0 to 199 the application's,
 * 200 to 255 the protocol's) and the message is the server's. A task's run step throws it (or any
 * error with a numeric `errorCode` property) to answer with that code.
 */
export class TaskError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_ERROR';
  /** 0 to 199: the application's; 200 to 255: the protocol's (200 cancelled, 201 unknown task, ...). */
  readonly errorCode: number;

  constructor(errorCode: number, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.errorCode = errorCode;
  }
}

/**
 * The reason on a task's `AbortSignal` when the task is cancelled: by the client's CANCEL, or by
 * the server (`client.cancel(id)`, `cancelAll()`). The task then ends with Error 200.
 */
export class TaskCancelledError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_CANCELLED';
}

/**
 * A task-protocol timeout expired: on the client, a call's `timeout`, the response timeout or the
 * connect timeout; on the server, the reason a client was ended (wait, read, write), or a task
 * whose response waited too long for the client's window (window).
 */
export class TaskTimeoutError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_TIMEOUT';
  /** Which: `call`, `response`, `connect`, `keep-alive`, `wait`, `read`, `write` or `window`. */
  readonly timeout: string;

  constructor(timeout: string, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.timeout = timeout;
  }
}

/**
 * A task-protocol connection ended while work was in flight, other than after a Goodbye: the
 * peer vanished, reset, or sent FATAL. Whether an unanswered task ran is unknown.
 */
export class TaskConnectionClosedError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_CONNECTION_CLOSED';
  /** The code from the server's FATAL frame, when it sent one. */
  readonly errorCode: number | undefined;

  constructor(message: string, errorCode?: number, options?: BerthErrorOptions) {
    super(message, options);
    this.errorCode = errorCode;
  }
}

/** `TaskClient.connect()` could not reach the server (refused, unreachable, reset before the hello). */
export class TaskConnectError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_CONNECT_FAILED';
  /** `host:port` or the socket path. */
  readonly address: string;

  constructor(address: string, reason: string, options?: BerthErrorOptions) {
    super(`cannot connect to ${address}: ${reason}`, options);
    this.address = address;
  }
}

/**
 * The task server said Goodbye: new calls on this connection fail with this, and a call that had
 * no answer when the connection then ended was never started by the server (safe to retry).
 */
export class TaskGoodbyeError extends BerthError {
  static override readonly code = 'ERR_BERTH_TASK_GOODBYE';
  /** The Goodbye's reason code: 204 shutting down, 230 wait timeout, 233 disconnected. */
  readonly errorCode: number;

  constructor(errorCode: number, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.errorCode = errorCode;
  }
}

// --- systemd ----------------------------------------------------------------------------------

/**
 * `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` is malformed: not a number, or more names than
 * descriptors. (A `LISTEN_PID` for another process is not an error: those fds are not ours.)
 */
export class ListenFdsError extends BerthError {
  static override readonly code = 'ERR_BERTH_LISTEN_FDS_INVALID';
  /** The variable at fault, e.g. `LISTEN_FDS`. */
  readonly variable: string;

  constructor(variable: string, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.variable = variable;
  }
}

/** A listen fd was asked for by name or position, and the service manager passed none such. */
export class ListenFdNotFoundError extends BerthError {
  static override readonly code = 'ERR_BERTH_LISTEN_FD_NOT_FOUND';
  /** The name or position asked for. */
  readonly selector: string | number;

  constructor(selector: string | number, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.selector = selector;
  }
}

/** The fd handed over as one accepted connection is not a connected stream socket. */
export class NotAConnectionError extends BerthError {
  static override readonly code = 'ERR_BERTH_NOT_A_CONNECTION';
  readonly fd: number;

  constructor(fd: number, message: string, options?: BerthErrorOptions) {
    super(message, options);
    this.fd = fd;
  }
}

/** `NOTIFY_SOCKET` is set, but there is no way to send to it (no addon, no `systemd-notify`). */
export class NotifyUnavailableError extends BerthError {
  static override readonly code = 'ERR_BERTH_NOTIFY_UNAVAILABLE';
}

/** An sd_notify message could not be delivered to `NOTIFY_SOCKET`. */
export class NotifyError extends BerthError {
  static override readonly code = 'ERR_BERTH_NOTIFY_FAILED';
}

/** The reason an `IdleTracker`'s signal carries: nothing was active for `idleTimeout` ms. */
export class IdleTimeoutError extends BerthError {
  static override readonly code = 'ERR_BERTH_IDLE_TIMEOUT';
  /** The configured idle timeout (ms). */
  readonly idleTimeout: number;

  constructor(idleTimeout: number, options?: BerthErrorOptions) {
    super(`idle for ${idleTimeout} ms with nothing active`, options);
    this.idleTimeout = idleTimeout;
  }
}

// --- cluster ----------------------------------------------------------------------------------

/** A cluster worker exited, or took too long, before it reported ready. */
export class WorkerStartError extends BerthError {
  static override readonly code = 'ERR_BERTH_WORKER_START_FAILED';
  readonly worker: number;
  readonly pid: number;

  constructor(worker: number, pid: number, reason: string) {
    super(`worker ${worker} (pid ${pid}) ${reason}`);
    this.worker = worker;
    this.pid = pid;
  }
}

/** Workers crashed too often (`crashLimit` within `crashWindow`): the pool stopped for good. */
export class CrashLoopError extends BerthError {
  static override readonly code = 'ERR_BERTH_CRASH_LOOP';

  constructor(pool: string, crashes: number, window: number) {
    super(`${pool}: ${crashes} worker crashes within ${window} ms; not restarting them again`);
  }
}

/** A worker's drain was not clean: it exited non-zero, or was killed after its deadline. */
export class WorkerExitError extends BerthError {
  static override readonly code = 'ERR_BERTH_WORKER_EXIT';
  readonly worker: number;
  readonly exitCode: number;

  constructor(worker: number, pid: number, exitCode: number) {
    super(`worker ${worker} (pid ${pid}) exited with code ${exitCode} during shutdown`);
    this.worker = worker;
    this.exitCode = exitCode;
  }
}

/** A reload stopped: a new worker did not become ready, or the pool was not running. */
export class ReloadError extends BerthError {
  static override readonly code = 'ERR_BERTH_RELOAD_FAILED';
}
