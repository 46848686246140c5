/**
 * sd_notify: telling the service manager how the service is doing (`READY=1`, `STOPPING=1`,
 * `STATUS=...`, `WATCHDOG=1`) through the datagram socket named by `NOTIFY_SOCKET`.
 *
 * Node core cannot send unix datagrams, so the sending goes through a transport:
 * - `native`: berth's own small addon (native/notify.c), built when the package is installed.
 *   It sends from this process, so the kernel stamps the datagram with our pid, which is what
 *   systemd's default `NotifyAccess=main` requires. Paths and `@abstract` names.
 * - `command`: the `systemd-notify` command, one process per message. It claims our pid only when
 *   it runs as root (it forges the credentials); otherwise systemd sees its own pid and, under
 *   `NotifyAccess=main`, drops the message. The fallback when the addon could not be built.
 *
 * When `NOTIFY_SOCKET` is unset a `Notifier` does nothing: no addon is loaded, no timer set, and
 * every method returns an already-settled promise.
 *
 * The env parsing and message formatting are pure and exported for tests and for other senders.
 */

import { spawn } from 'node:child_process';
import { channel } from 'node:diagnostics_channel';
import { accessSync, constants as fsConstants } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import {
  InvalidOptionError,
  NotifyError,
  NotifyUnavailableError,
  ServiceClosedError,
} from '../errors.js';
import {
  optional,
  rejectUnknownKeys,
  validateBoolean,
  validateInteger,
  validateObject,
  validateOneOf,
  validateString,
} from '../options.js';

// --- pure parts -------------------------------------------------------------------------------

export interface NotifyEnv {
  /** `NOTIFY_SOCKET` as given, or undefined when notifications are off. */
  socket: string | undefined;
  /**
   * The watchdog interval in microseconds (`WATCHDOG_USEC`) when the watchdog is on for this
   * process: set, a positive number, and `WATCHDOG_PID` unset or equal to `pid`.
   */
  watchdogUsec: number | undefined;
}

function positiveDecimal(value: string | undefined): number | undefined {
  if (value === undefined || !/^[0-9]+$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/**
 * Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_notify(3) and
 * sd_watchdog_enabled(3) do. A malformed watchdog variable means no watchdog, as there.
 */
export function parseNotifyEnv(env: Record<string, string | undefined>, pid: number): NotifyEnv {
  const socket = env.NOTIFY_SOCKET ? env.NOTIFY_SOCKET : undefined;
  let watchdogUsec = positiveDecimal(env.WATCHDOG_USEC);
  if (watchdogUsec !== undefined && env.WATCHDOG_PID !== undefined) {
    if (positiveDecimal(env.WATCHDOG_PID) !== pid) watchdogUsec = undefined;
  }
  return { socket, watchdogUsec };
}

/** Room in `sockaddr_un.sun_path`. */
const SUN_PATH_SIZE = 108;

/**
 * The raw `sun_path` bytes for a `NOTIFY_SOCKET` value: an absolute path (NUL-terminated by the
 * addon), or `@name` for the abstract name `\0name`. Undefined for anything the addon cannot
 * address (a `vsock:` address of newer systemd, a relative path, too long a name).
 */
export function notifySocketAddress(value: string): Buffer | undefined {
  if (value.startsWith('/')) {
    const bytes = Buffer.from(value);
    return bytes.length < SUN_PATH_SIZE && !bytes.includes(0) ? bytes : undefined;
  }
  if (value.startsWith('@') && value.length > 1) {
    const bytes = Buffer.concat([Buffer.from([0]), Buffer.from(value.slice(1))]);
    return bytes.length <= SUN_PATH_SIZE ? bytes : undefined;
  }
  return undefined;
}

export type NotifyFields = Readonly<Record<string, string | number | bigint>>;

const FIELD_NAME = /^[A-Z][A-Z0-9_]*$/;

/**
 * `{ READY: 1, STATUS: 'Serving' }` → `READY=1\nSTATUS=Serving`. Names are upper-case
 * assignments; values may not contain a newline (it would start a new assignment).
 */
export function formatNotifyMessage(fields: NotifyFields): string {
  const lines: string[] = [];
  for (const [name, value] of Object.entries(fields)) {
    if (!FIELD_NAME.test(name)) {
      throw new InvalidOptionError(
        name,
        `notify field names are upper-case assignments like STATUS, got ${JSON.stringify(name)}`,
      );
    }
    const text = String(value);
    if (text.includes('\n')) {
      throw new InvalidOptionError(name, `notify field ${name} may not contain a newline`);
    }
    lines.push(`${name}=${text}`);
  }
  if (lines.length === 0) {
    throw new InvalidOptionError('fields', 'a notify message needs at least one field');
  }
  return lines.join('\n');
}

/** A status line for `systemctl status`: one line, as systemd shows only one. */
export function statusText(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').trim();
}

/** The watchdog ping interval (ms) for `WATCHDOG_USEC`: half of it, as sd_watchdog_enabled(3) advises. */
export function watchdogPingInterval(watchdogUsec: number): number {
  return Math.min(Math.max(1, Math.floor(watchdogUsec / 2_000)), 2 ** 31 - 1);
}

// --- transports -------------------------------------------------------------------------------

/** How a `Notifier` sends: `none` when disabled, or when nothing can send. */
export type NotifyTransportName = 'native' | 'command' | 'none';

interface Transport {
  readonly name: 'native' | 'command';
  send(address: string, message: string): Promise<void>;
}

interface Addon {
  send(address: Buffer, message: Buffer): number;
}

let addon: Addon | Error | undefined;

/**
 * Where the addon may be, relative to this module (src/systemd and dist/systemd are both two
 * levels below the package root): built at install, then the copy prebuilt for this platform
 * that the published package carries.
 */
const ADDON_PATHS = [
  '../../build/Release/berth_notify.node',
  `../../prebuilds/${process.platform}-${process.arch}/berth_notify.node`,
];

/** berth's sd_notify addon, loaded once, on first need; or why it could not be. */
export function loadNotifyAddon(): Addon | Error {
  if (addon === undefined) {
    const require = createRequire(import.meta.url);
    const failures: string[] = [];
    for (const path of ADDON_PATHS) {
      try {
        addon = require(path) as Addon;
        break;
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        failures.push(e.code === 'MODULE_NOT_FOUND' ? `no ${path}` : `${path}: ${e.message}`);
      }
    }
    addon ??= new Error(`berth's sd_notify addon is not available (${failures.join('; ')})`);
  }
  return addon;
}

const EAGAIN = -11;
/** Waits (ms) before resending when the receiver's queue is full; about a second in all. */
const RETRY_DELAYS = [10, 40, 100, 250, 600] as const;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function nativeTransport(native: Addon): Transport {
  return {
    name: 'native',
    async send(address, message) {
      const raw = notifySocketAddress(address);
      if (!raw)
        throw new NotifyError(`NOTIFY_SOCKET ${JSON.stringify(address)} is not a path or @name`);
      const payload = Buffer.from(message);
      for (let attempt = 0; ; attempt++) {
        const rc = native.send(raw, payload);
        if (rc === 0) return;
        const delay = RETRY_DELAYS[attempt];
        if (rc === EAGAIN && delay !== undefined) {
          await sleep(delay);
          continue;
        }
        const code = getSystemErrorName(rc);
        const cause = Object.assign(new Error(`sendto ${code}`), {
          code,
          errno: rc,
          syscall: 'sendto',
        });
        throw new NotifyError(`cannot notify ${address}: ${code}`, { cause });
      }
    },
  };
}

function commandTransport(command: string, env: Record<string, string | undefined>): Transport {
  return {
    name: 'command',
    send(address, message) {
      return new Promise((resolve, reject) => {
        // Spawned directly (no shell) so that its parent, whose pid it claims as root, is us.
        // --no-block: no barrier to wait on; order is kept by sending one message at a time.
        const child = spawn(command, ['--no-block', ...message.split('\n')], {
          env: { ...env, NOTIFY_SOCKET: address },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.on('data', (d) => {
          stderr += d;
        });
        child.once('error', (err) =>
          reject(new NotifyError(`cannot run ${command}: ${err.message}`, { cause: err })),
        );
        child.once('close', (code, signal) => {
          if (code === 0) resolve();
          else {
            const why = signal ?? `exit code ${code}`;
            reject(new NotifyError(`${command} failed (${why}): ${stderr.trim()}`));
          }
        });
      });
    },
  };
}

/** The first executable `name` on `PATH`, or undefined. */
function onPath(name: string, path: string | undefined): string | undefined {
  for (const dir of (path ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {}
  }
  return undefined;
}

// --- Notifier ---------------------------------------------------------------------------------

export interface NotifierOptions {
  /** Where to read `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` (and `PATH`). @default process.env */
  env?: Record<string, string | undefined>;
  /** This process's pid, compared with `WATCHDOG_PID`. @default process.pid */
  pid?: number;
  /**
   * `auto` uses the addon when it is built and can address the socket, else `systemd-notify`.
   * `native` or `command` insist on one (sends reject with `NotifyUnavailableError` without it).
   * @default 'auto'
   */
  transport?: 'auto' | 'native' | 'command';
  /** Send `WATCHDOG=1` on a timer at half of `WATCHDOG_USEC` when the watchdog is on. @default true */
  watchdog?: boolean;
}

/** A plain snapshot. */
export interface NotifierStats {
  /** `NOTIFY_SOCKET` was set. */
  enabled: boolean;
  transport: NotifyTransportName;
  /** Messages delivered to the socket. */
  sent: number;
  /** Messages that could not be. */
  failed: number;
  /** Watchdog ping interval (ms) when pinging automatically, else 0. */
  watchdogInterval: number;
}

export const NOTIFIER_DEFAULTS = Object.freeze({
  transport: 'auto' as const,
  watchdog: true, // ping at half of WATCHDOG_USEC when the manager asks for it
  command: 'systemd-notify',
});

const KNOWN_OPTIONS = ['env', 'pid', 'transport', 'watchdog'] as const;

const sentChannel = channel('berth:systemd:notify');
const errorChannel = channel('berth:systemd:notify-error');

const DONE: Promise<void> = Promise.resolve();

/**
 * Sends sd_notify messages for this process, in order. Each method returns a promise that
 * resolves once the message was handed to the socket and rejects with a coded error
 * (`NotifyError`, `NotifyUnavailableError`) when it could not be; the promise is pre-handled, so
 * a call that is not awaited never becomes an unhandled rejection. Failures also go out on the
 * `berth:systemd:notify-error` channel.
 *
 * @example
 * const notifier = new Notifier();          // reads NOTIFY_SOCKET; a no-op without it
 * await group.start();
 * notifier.ready('Serving on :8080');       // READY=1\nSTATUS=Serving on :8080
 * // on SIGTERM:
 * notifier.stopping('Draining 3 connections');
 */
export class Notifier {
  /** `NOTIFY_SOCKET` was set: messages are sent. */
  readonly enabled: boolean;
  /** `NOTIFY_SOCKET` as given. */
  readonly socket: string | undefined;
  /** How messages are sent; `none` when disabled or when nothing can send. */
  readonly transport: NotifyTransportName;
  /** `WATCHDOG_USEC` in ms when the watchdog is on for this process, else undefined. */
  readonly watchdogTimeout: number | undefined;
  readonly #transport: Transport | undefined;
  readonly #unavailable: string | undefined;
  #tail: Promise<void> = DONE;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #sent = 0;
  #failed = 0;
  #watchdogInterval = 0;

  constructor(options: NotifierOptions = {}) {
    validateObject(options, 'Notifier options');
    rejectUnknownKeys(options, 'Notifier', KNOWN_OPTIONS);
    const env = optional(options.env, process.env, (v) =>
      validateObject<Record<string, string | undefined>>(v, 'env'),
    );
    const pid = optional(options.pid, process.pid, (v) => validateInteger(v, 'pid', { min: 1 }));
    const wanted = optional(options.transport, NOTIFIER_DEFAULTS.transport, (v) =>
      validateOneOf(v, 'transport', ['auto', 'native', 'command'] as const),
    );
    const watchdog = optional(options.watchdog, NOTIFIER_DEFAULTS.watchdog, (v) =>
      validateBoolean(v, 'watchdog'),
    );
    const parsed = parseNotifyEnv(env, pid);
    this.socket = parsed.socket;
    this.enabled = parsed.socket !== undefined;
    this.watchdogTimeout =
      this.enabled && parsed.watchdogUsec !== undefined ? parsed.watchdogUsec / 1_000 : undefined;
    if (!this.enabled) {
      this.transport = 'none';
      return;
    }

    const reasons: string[] = [];
    let transport: Transport | undefined;
    if (wanted !== 'command') {
      const native = loadNotifyAddon();
      if (native instanceof Error) reasons.push(native.message);
      else if (!notifySocketAddress(parsed.socket!))
        reasons.push('the addon sends only to a path or @name');
      else transport = nativeTransport(native);
    }
    if (!transport && wanted !== 'native') {
      const command = onPath(NOTIFIER_DEFAULTS.command, env.PATH);
      if (command) transport = commandTransport(command, env);
      else reasons.push(`no ${NOTIFIER_DEFAULTS.command} command on PATH`);
    }
    this.#transport = transport;
    this.transport = transport?.name ?? 'none';
    this.#unavailable = transport ? undefined : reasons.join('; ');

    if (watchdog && parsed.watchdogUsec !== undefined) {
      this.#watchdogInterval = watchdogPingInterval(parsed.watchdogUsec);
      // Watch-only: the pings prove the event loop turns; they never keep the process alive.
      this.#timer = setInterval(() => void this.watchdog(), this.#watchdogInterval).unref();
    }
  }

  get stats(): NotifierStats {
    return {
      enabled: this.enabled,
      transport: this.transport,
      sent: this.#sent,
      failed: this.#failed,
      watchdogInterval: this.#timer ? this.#watchdogInterval : 0,
    };
  }

  /** `READY=1`: start-up is finished (every service listens). Optionally with a status line. */
  ready(status?: string): Promise<void> {
    if (!this.enabled) return DONE;
    return this.#send(
      status === undefined ? { READY: 1 } : { READY: 1, STATUS: statusText(status) },
    );
  }

  /**
   * `RELOADING=1` with `MONOTONIC_USEC` (which `Type=notify-reload` requires). Send `ready()`
   * again when the reload is done.
   */
  reloading(status?: string): Promise<void> {
    if (!this.enabled) return DONE;
    const fields: Record<string, string | number | bigint> = {
      RELOADING: 1,
      MONOTONIC_USEC: process.hrtime.bigint() / 1_000n, // CLOCK_MONOTONIC, as systemd's
    };
    if (status !== undefined) fields.STATUS = statusText(status);
    return this.#send(fields);
  }

  /** `STOPPING=1`: the graceful shutdown has begun. Optionally with a status line. */
  stopping(status?: string): Promise<void> {
    if (!this.enabled) return DONE;
    return this.#send(
      status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: statusText(status) },
    );
  }

  /** `STATUS=...`: one line shown by `systemctl status`; newlines become spaces. */
  status(text: string): Promise<void> {
    validateString(text, 'status', { empty: true });
    if (!this.enabled) return DONE;
    return this.#send({ STATUS: statusText(text) });
  }

  /** `WATCHDOG=1`. Sent automatically at half of `WATCHDOG_USEC` unless `watchdog: false`. */
  watchdog(): Promise<void> {
    if (!this.enabled) return DONE;
    return this.#send({ WATCHDOG: 1 });
  }

  /** `EXTEND_TIMEOUT_USEC`: ask for `ms` more before the start or stop timeout fires. */
  extendTimeout(ms: number): Promise<void> {
    validateInteger(ms, 'ms', { min: 0, unit: '(ms)' });
    if (!this.enabled) return DONE;
    return this.#send({ EXTEND_TIMEOUT_USEC: ms * 1_000 });
  }

  /** Any assignments, in order: `notify({ STATUS: 'x', ERRNO: 2 })`. */
  notify(fields: NotifyFields): Promise<void> {
    if (!this.enabled) return DONE;
    return this.#send(fields);
  }

  /** Stops the watchdog pings. Messages sent after it reject with `ServiceClosedError`. Idempotent. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #send(fields: NotifyFields): Promise<void> {
    const message = formatNotifyMessage(fields);
    if (this.#closed) return this.#fail(message, new ServiceClosedError('the Notifier is closed'));
    const transport = this.#transport;
    if (!transport) {
      return this.#fail(
        message,
        new NotifyUnavailableError(
          `NOTIFY_SOCKET is set but berth cannot send to it: ${this.#unavailable}`,
        ),
      );
    }
    const socket = this.socket!;
    // One at a time, so the manager sees the messages in the order they were made.
    const sending = this.#tail.then(() => transport.send(socket, message));
    this.#tail = sending.then(
      () => {
        this.#sent++;
        if (sentChannel.hasSubscribers) sentChannel.publish({ message, transport: transport.name });
      },
      (error: Error) => {
        this.#failed++;
        if (errorChannel.hasSubscribers) errorChannel.publish({ message, error });
      },
    );
    const outcome = this.#tail.then(() => sending);
    outcome.catch(() => {});
    return outcome;
  }

  #fail(message: string, error: Error): Promise<void> {
    this.#failed++;
    if (errorChannel.hasSubscribers) errorChannel.publish({ message, error });
    const rejected = Promise.reject(error);
    rejected.catch(() => {});
    return rejected;
  }
}
