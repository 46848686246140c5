/**
 * What an inherited descriptor is: a listening socket, a connected one, something else. A
 * service manager hands over either (`Accept=no` passes listeners, `Accept=yes` and inetd a
 * connection), and `fstat` says only "socket". Probing with `listen()` is not an option: on a
 * connected socket it fails with EINVAL and Node closes the fd, resetting the client. So this
 * reads what Linux publishes instead: `/proc/self/fd/N` links to `socket:[inode]`, and the inode's
 * row in `/proc/net/{tcp,tcp6,udp,udp6,unix}` carries its state.
 *
 * The parsers below are pure (they take the files' text); `inspectSocket()` is the thin layer that
 * reads the files.
 */

import { closeSync, existsSync, openSync, readlinkSync, readSync } from 'node:fs';

/**
 * - `listening`: a stream socket in the listening state (adopt it: `server.listen({ fd })`).
 * - `connected`: a connected stream socket (wrap it: `acceptedConnection()`). TCP counts as
 *   connected from the handshake until it is fully closed, so a peer that already sent its FIN
 *   (CLOSE_WAIT) still counts: there may be a request to read and answer.
 * - `other`: a socket that is neither (a datagram socket, an unbound or unconnected one).
 * - `unknown`: a socket Linux does not list here (another protocol, or one made in another
 *   network namespace, as a `.socket` unit's is for a service with `PrivateNetwork=yes`), or no
 *   `/proc` to read. Decide by the fd's name instead (`connection` means Accept=yes).
 * - `not-a-socket`: an open file, pipe or terminal.
 * - `closed`: no such descriptor is open.
 */
export type SocketKind =
  | 'listening'
  | 'connected'
  | 'other'
  | 'unknown'
  | 'not-a-socket'
  | 'closed';

/** Where a socket was found in `/proc/net`. */
export type SocketTable = 'tcp' | 'tcp6' | 'udp' | 'udp6' | 'unix';

export interface SocketInfo {
  readonly fd: number;
  readonly kind: SocketKind;
  /** The socket's inode, when the fd is a socket. */
  readonly inode?: number;
  /** The `/proc/net` table that listed it. */
  readonly table?: SocketTable;
}

/** A row of a `/proc/net` table: the socket's inode and the fields that say its state. */
export interface SocketRow {
  inode: number;
  /** TCP/UDP: the kernel's state number (`0x0A` listen). Unix: the socket state (`3` connected). */
  state: number;
  /** Unix only: the flags word (`__SO_ACCEPTCON` = `0x10000` when listening). */
  flags?: number;
  /** Unix only: 1 stream, 2 datagram, 5 seqpacket. */
  type?: number;
}

/** `socket:[1234]` → 1234; anything else (a path, `pipe:[..]`, `anon_inode:..`) → undefined. */
export function socketInode(linkTarget: string): number | undefined {
  const match = /^socket:\[(\d+)\]$/.exec(linkTarget);
  return match ? Number(match[1]) : undefined;
}

/**
 * The lines of `text` that carry ` inode ` as a field: found with `indexOf`, since a busy host's
 * `/proc/net/tcp` runs to a hundred thousand lines (TIME_WAIT sockets included).
 */
function* candidateLines(text: string, inode: number): Generator<string[]> {
  const needle = ` ${inode} `;
  let from = 0;
  for (;;) {
    const at = text.indexOf(needle, from);
    if (at === -1) return;
    const start = text.lastIndexOf('\n', at) + 1;
    let end = text.indexOf('\n', at);
    if (end === -1) end = text.length;
    yield text.slice(start, end).trim().split(/\s+/);
    from = end;
  }
}

/**
 * Finds `inode` in the text of `/proc/net/tcp`, `tcp6`, `udp` or `udp6`
 * (`sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`).
 */
export function findInetRow(text: string, inode: number): SocketRow | undefined {
  const wanted = String(inode);
  for (const fields of candidateLines(text, inode)) {
    if (fields[9] !== wanted || !/^\d+:$/.test(fields[0] ?? '')) continue;
    return { inode, state: Number.parseInt(fields[3] ?? '', 16) };
  }
  return undefined;
}

/** Finds `inode` in the text of `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`). */
export function findUnixRow(text: string, inode: number): SocketRow | undefined {
  const wanted = String(inode);
  for (const fields of candidateLines(`${text}\n`.replaceAll('\n', ' \n'), inode)) {
    if (fields[6] !== wanted || !/^[0-9a-f]+:$/i.test(fields[0] ?? '')) continue;
    return {
      inode,
      flags: Number.parseInt(fields[3] ?? '', 16),
      type: Number.parseInt(fields[4] ?? '', 16),
      state: Number.parseInt(fields[5] ?? '', 16),
    };
  }
  return undefined;
}

const TCP_LISTEN = 0x0a;
const TCP_CLOSE = 0x07;
const UNIX_ACCEPTCON = 0x10000;
const UNIX_CONNECTED = 3;
const UNIX_DGRAM = 2;

/** The kind of a socket from its row in a `/proc/net` table. */
export function classifyRow(table: SocketTable, row: SocketRow): SocketKind {
  switch (table) {
    case 'tcp':
    case 'tcp6':
      if (row.state === TCP_LISTEN) return 'listening';
      // Every other state but CLOSE (never connected) belongs to a connection, open or closing.
      return row.state === TCP_CLOSE ? 'other' : 'connected';
    case 'udp':
    case 'udp6':
      return 'other';
    case 'unix':
      if (row.type === UNIX_DGRAM) return 'other';
      if (((row.flags ?? 0) & UNIX_ACCEPTCON) !== 0) return 'listening';
      return row.state === UNIX_CONNECTED ? 'connected' : 'other';
  }
}

/**
 * The tables searched, in order: unix first, as it is short where tcp can be long; then the
 * streams a service manager hands over; datagrams last.
 */
const TABLES: readonly SocketTable[] = ['unix', 'tcp', 'tcp6', 'udp', 'udp6'];

const CHUNK = 256 * 1024;

/**
 * Feeds a `/proc/net` table to `find` in runs of whole lines, stopping at the first match. The
 * kernel lists listening sockets first, so finding a listener rarely reads past the first run.
 */
function scanTable(
  path: string,
  find: (text: string) => SocketRow | undefined,
): SocketRow | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined; // no IPv6, say
  }
  try {
    const buffer = Buffer.allocUnsafe(CHUNK);
    let carry = '';
    for (;;) {
      const n = readSync(fd, buffer, 0, CHUNK, null);
      if (n === 0) return carry ? find(carry) : undefined;
      const text = carry + buffer.toString('latin1', 0, n);
      const cut = text.lastIndexOf('\n') + 1;
      carry = text.slice(cut);
      const row = cut > 0 ? find(text.slice(0, cut)) : undefined;
      if (row) return row;
    }
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

export interface InspectSocketOptions {
  /** Where procfs is mounted. @default '/proc' */
  proc?: string;
}

function errorCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/**
 * What descriptor `fd` of this process is. Reads `/proc/self/fd/<fd>` and, for a socket, the
 * `/proc/self/net` tables; never calls anything on the descriptor itself.
 *
 * @example
 * inspectSocket(3).kind; // 'listening' under Accept=no, 'connected' under Accept=yes
 */
export function inspectSocket(fd: number, options: InspectSocketOptions = {}): SocketInfo {
  const proc = options.proc ?? '/proc';
  let link: string;
  try {
    link = readlinkSync(`${proc}/self/fd/${fd}`);
  } catch (err) {
    if (errorCode(err) !== 'ENOENT') return { fd, kind: 'unknown' };
    // ENOENT means "no such fd" only where procfs is there to ask.
    return { fd, kind: existsSync(`${proc}/self/fd`) ? 'closed' : 'unknown' };
  }
  const inode = socketInode(link);
  if (inode === undefined) return { fd, kind: 'not-a-socket' };
  for (const table of TABLES) {
    const find = table === 'unix' ? findUnixRow : findInetRow;
    const row = scanTable(`${proc}/self/net/${table}`, (text) => find(text, inode));
    if (row) return { fd, kind: classifyRow(table, row), inode, table };
  }
  return { fd, kind: 'unknown', inode };
}
