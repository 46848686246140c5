/**
 * The descriptors a service manager passed to this process (systemd's `sd_listen_fds(3)`
 * protocol): a pure reading of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from an env object,
 * and the lookups a service needs to pick its own fd by name or by position. Nothing here touches
 * a descriptor; whether an fd listens or is connected is `inspectSocket()`'s business.
 */

import { ListenFdNotFoundError, ListenFdsError } from '../errors.js';
import {
  optional,
  rejectUnknownKeys,
  validateBoolean,
  validateInteger,
  validateObject,
} from '../options.js';

/** One descriptor passed by the service manager. */
export interface ListenFd {
  /** The descriptor number: 3 for the first, then 4, 5, ... */
  readonly fd: number;
  /**
   * Its name from `FileDescriptorName=` (or `--fdname=`), matched by position; `unknown` when the
   * manager gave none. systemd names the fd of an `Accept=yes` instance `connection`.
   */
  readonly name: string;
}

export interface ListenFdsOptions {
  /** Where to read the variables from. @default process.env */
  env?: Record<string, string | undefined>;
  /** This process's pid, compared with `LISTEN_PID`. @default process.pid */
  pid?: number;
  /**
   * Delete `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from `env` (whatever the outcome), so
   * that child processes do not take the descriptors for theirs. @default true
   */
  unsetEnv?: boolean;
}

/** The first passed descriptor: `SD_LISTEN_FDS_START`. */
export const LISTEN_FDS_START = 3;

/** The name systemd gives a passed descriptor that has none. */
export const UNKNOWN_FD_NAME = 'unknown';

/** The name systemd gives the connected socket of an `Accept=yes` instance. */
export const CONNECTION_FD_NAME = 'connection';

export const LISTEN_FDS_DEFAULTS = Object.freeze({
  unsetEnv: true, // as sd_listen_fds(1) and go-systemd's Files(true): children must not inherit
});

const KNOWN_OPTIONS = ['env', 'pid', 'unsetEnv'] as const;
const VARIABLES = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;
/** More descriptors than a Linux process can hold (`fs.nr_open` is at most 2^20 by default). */
const MAX_FDS = 2 ** 20;

/** A decimal integer as systemd writes it: digits only, no sign, no spaces. */
function parseDecimal(value: string, variable: string): number {
  const n = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n)) {
    throw new ListenFdsError(
      variable,
      `${variable} must be a non-negative whole number, got ${JSON.stringify(value)}`,
    );
  }
  return n;
}

/**
 * The descriptors passed to this process, in order, each with its name. Returns `[]` when none
 * were passed (`LISTEN_FDS` unset or `0`) or when they were passed to another process
 * (`LISTEN_PID` unset or not `pid`: a leftover from a parent, not ours). Throws `ListenFdsError`
 * when the variables are malformed.
 *
 * Pure: it reads `env` and, unless `unsetEnv` is false, deletes the three variables from it.
 *
 * @example
 * const fds = listenFds();                  // [{ fd: 3, name: 'http' }, { fd: 4, name: 'echo' }]
 * const http = selectListenFd(fds, 'http'); // { fd: 3, name: 'http' }
 * await new TcpService({ fd: http.fd, handler }).start();
 */
export function listenFds(options: ListenFdsOptions = {}): ListenFd[] {
  validateObject(options, 'listenFds options');
  rejectUnknownKeys(options, 'listenFds', KNOWN_OPTIONS);
  const env = optional(options.env, process.env, (v) =>
    validateObject<Record<string, string | undefined>>(v, 'env'),
  );
  const pid = optional(options.pid, process.pid, (v) => validateInteger(v, 'pid', { min: 1 }));
  const unsetEnv = optional(options.unsetEnv, LISTEN_FDS_DEFAULTS.unsetEnv, (v) =>
    validateBoolean(v, 'unsetEnv'),
  );
  const { LISTEN_PID: listenPid, LISTEN_FDS: count, LISTEN_FDNAMES: names } = env;
  if (unsetEnv) for (const name of VARIABLES) delete env[name];
  return parse(listenPid, count, names, pid);
}

function parse(
  listenPid: string | undefined,
  count: string | undefined,
  names: string | undefined,
  pid: number,
): ListenFd[] {
  // As sd_listen_fds(3): without LISTEN_PID the fds are not known to be ours.
  if (listenPid === undefined || count === undefined) return [];
  if (parseDecimal(listenPid, 'LISTEN_PID') !== pid) return [];
  const n = parseDecimal(count, 'LISTEN_FDS');
  if (n > MAX_FDS) {
    throw new ListenFdsError('LISTEN_FDS', `LISTEN_FDS is too large, got ${count}`);
  }
  if (n === 0) return [];
  // An empty LISTEN_FDNAMES is one empty name, which reads as no name at all.
  const given = names === undefined ? [] : names.split(':');
  if (given.length > n) {
    throw new ListenFdsError(
      'LISTEN_FDNAMES',
      `LISTEN_FDNAMES has ${given.length} names for ${n} descriptor(s): ${JSON.stringify(names)}`,
    );
  }
  const fds: ListenFd[] = [];
  for (let i = 0; i < n; i++) {
    const name = given[i] || UNKNOWN_FD_NAME;
    fds.push(Object.freeze({ fd: LISTEN_FDS_START + i, name }));
  }
  return fds;
}

/** The first passed descriptor called `name`, or undefined. */
export function findListenFd(fds: readonly ListenFd[], name: string): ListenFd | undefined {
  return fds.find((f) => f.name === name);
}

/** Every passed descriptor called `name` (systemd gives one name to all fds of one socket unit). */
export function findListenFds(fds: readonly ListenFd[], name: string): ListenFd[] {
  return fds.filter((f) => f.name === name);
}

/** The passed descriptor at `index` (0 is fd 3), or undefined. */
export function listenFdAt(fds: readonly ListenFd[], index: number): ListenFd | undefined {
  return Number.isInteger(index) && index >= 0 ? fds[index] : undefined;
}

/** `3 (http), 4 (unknown)`: what was passed, for messages. */
export function describeListenFds(fds: readonly ListenFd[]): string {
  return fds.length === 0 ? 'none' : fds.map((f) => `${f.fd} (${f.name})`).join(', ');
}

/**
 * The descriptor a service asked for: by name when `selector` is a string, by position (0 is
 * fd 3) when it is a number. Throws `ListenFdNotFoundError`, listing what was passed, when there
 * is none such.
 */
export function selectListenFd(fds: readonly ListenFd[], selector: string | number): ListenFd {
  const found =
    typeof selector === 'number' ? listenFdAt(fds, selector) : findListenFd(fds, selector);
  if (found) return found;
  const what =
    typeof selector === 'number'
      ? `no listen fd at position ${selector}`
      : `no listen fd named ${JSON.stringify(selector)}`;
  const passed =
    fds.length === 0
      ? 'none were passed (LISTEN_FDS unset, or LISTEN_PID not this process)'
      : `passed: ${describeListenFds(fds)}`;
  throw new ListenFdNotFoundError(selector, `${what}; ${passed}`);
}
