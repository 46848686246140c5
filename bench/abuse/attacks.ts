/**
 * Hostile and broken clients, for the abuse suite and the memory tests. Each attack targets
 * 127.0.0.1, is bounded in bytes and in time, respects its own socket's backpressure (the attacker
 * must not be what runs out of memory), and reports what the server did to it. The task-protocol
 * attacks speak the wire format of docs/protocol.md with berth's own codec.
 */

import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import {
  ClientFrame,
  encodeClientHello,
  encodeFrame,
  FrameDecoder,
  isRefusal,
  ServerFrame,
  ServerHelloDecoder,
  TaskClient,
} from '../../src/index.js';

/** Resolves on the socket's next 'drain' or its close, whichever comes first. */
function drainOrClose(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.once('drain', done);
    socket.once('close', done);
  });
}

function open(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host });
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', () => {}); // a reset is a result here, not a failure
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** What the server did to a task-protocol attacker. */
export interface TaskFloodResult {
  /** Bytes the attacker's socket took (written towards the server). */
  sent: number;
  /** Tasks whose every frame was written. */
  tasksSent: number;
  /** OK payload bytes received. */
  okBytes: number;
  /** ERROR frames received, by code. */
  errors: Record<number, number>;
  /** The FATAL code, if the server sent one. */
  fatal: number | undefined;
  /** True when the server ended the connection before the attacker did. */
  cut: boolean;
  /** ms from connect until the server ended the connection (or until the attacker gave up). */
  elapsed: number;
}

export interface TaskFloodOptions {
  port: number;
  host?: string;
  /** Echo tasks to start (task code 1, the demo's echo). */
  tasks: number;
  /** Bytes in each task's message. */
  size: number;
  /** The initial window in the hello; the attacker never grants more. */
  window: number;
  /** Read (and discard) what the server sends; false: never read, so the server's writes block. */
  read: boolean;
  /** Give up after this many ms. */
  timeout: number;
  /** Payload bytes per frame. @default 1048576 (berth's max frame payload) */
  framePayload?: number;
  /** Task code. @default 1 */
  code?: number;
}

/**
 * Issue 16's task-server attack: a tiny window, many large echo tasks, never a WINDOW. On a
 * server without a bound on what it holds for a client, every response waits in memory.
 */
export async function taskFlood(options: TaskFloodOptions): Promise<TaskFloodResult> {
  const t0 = performance.now();
  const socket = await open(options.port, options.host);
  const result: TaskFloodResult = {
    sent: 0,
    tasksSent: 0,
    okBytes: 0,
    errors: {},
    fatal: undefined,
    cut: false,
    elapsed: 0,
  };
  let closed = false;
  let gaveUp = false;
  const ended = new Promise<void>((resolve) => {
    const end = () => {
      if (closed) return;
      closed = true;
      result.cut = !gaveUp;
      result.elapsed = performance.now() - t0;
      resolve();
    };
    socket.once('close', end);
    socket.once('end', end);
  });
  const helloDecoder = new ServerHelloDecoder('le');
  let decoder: FrameDecoder | undefined;
  const onFrame = (frame: { type: number; code: number; payload: Buffer }) => {
    if (frame.type === ServerFrame.OK) result.okBytes += frame.payload.length;
    else if (frame.type === ServerFrame.ERROR) {
      result.errors[frame.code] = (result.errors[frame.code] ?? 0) + 1;
    } else if (frame.type === ServerFrame.FATAL) result.fatal = frame.code;
  };
  if (options.read) {
    socket.on('data', (chunk: Buffer) => {
      if (decoder === undefined) {
        const hello = helloDecoder.push(chunk);
        if (hello === undefined) return;
        if (isRefusal(hello)) return;
        decoder = new FrameDecoder({ byteOrder: 'le', maxPayload: 0xffff_ffff, source: 'server' });
        chunk = helloDecoder.rest;
      }
      decoder.push(chunk, onFrame);
    });
  } else {
    socket.pause();
  }
  const write = async (bytes: Buffer) => {
    result.sent += bytes.length;
    if (!socket.write(bytes)) await drainOrClose(socket);
  };
  const timer = setTimeout(() => {
    gaveUp = true;
    socket.destroy();
  }, options.timeout);
  await write(
    encodeClientHello({
      version: 1,
      byteOrder: 'le',
      flags: 0,
      maxFramePayload: 1_048_576,
      initialWindow: options.window,
    }),
  );
  const piece = options.framePayload ?? 1_048_576;
  // One payload for every frame, written by reference after its header: the attacker copies
  // nothing, so its own process stays idle enough for a probe beside it to be fair.
  const payload = Buffer.alloc(Math.min(piece, options.size), 'x');
  const code = options.code ?? 1;
  for (let id = 1; id <= options.tasks && !closed; id++) {
    let left = options.size;
    let first = true;
    while (!closed) {
      const n = Math.min(left, piece);
      left -= n;
      const last = left === 0;
      const type = first ? ClientFrame.START : ClientFrame.DATA;
      const header = encodeFrame('le', type, last ? 1 : 0, first ? code : 0, id);
      header.writeUInt32LE(n, 8); // the payload's length, sent next
      socket.cork();
      socket.write(header);
      result.sent += header.length;
      const ok = socket.write(n === payload.length ? payload : payload.subarray(0, n));
      result.sent += n;
      socket.uncork();
      if (!ok) await drainOrClose(socket);
      first = false;
      if (last) break;
    }
    if (!closed) result.tasksSent++;
  }
  await ended;
  clearTimeout(timer);
  socket.destroy();
  return result;
}

/** What a server did to a client that writes and never reads. */
export interface FloodResult {
  /** Bytes the attacker's socket took. */
  sent: number;
  /** True when the server ended or reset the connection before the attacker stopped. */
  cut: boolean;
  /** ms until the server cut the connection, or until the attacker stopped. */
  elapsed: number;
  /** True when the attacker stopped because its socket stayed full (the server stopped reading). */
  throttled: boolean;
  /** With `read`: the first bytes the server sent (up to 256). */
  reply?: string;
}

/** What a flood met, in words: cut, throttled, or all of it taken. */
export function describeFlood(r: FloodResult): string {
  if (r.cut) return `cut after ${Math.round(r.sent / 1e6)} MB in ${(r.elapsed / 1e3).toFixed(1)} s`;
  if (r.throttled) {
    return `throttled: the server stopped reading after ${Math.round(r.sent / 1e6)} MB`;
  }
  return `all ${Math.round(r.sent / 1e6)} MB taken in ${(r.elapsed / 1e3).toFixed(1)} s`;
}

export interface FloodOptions {
  port: number;
  host?: string;
  /** What to write, again and again. */
  chunk: Buffer;
  /** Stop after writing this many bytes. */
  total: number;
  /** Stop after this many ms. */
  timeout: number;
  /** Stop once a write has waited this long for 'drain' (the server no longer reads). @default 3000 */
  stallAfter?: number;
  /** Written once first: a request line and headers, an upgrade. */
  prefix?: Buffer;
  /** Read what the server sends (keeping the first 256 bytes) instead of never reading. */
  read?: boolean;
}

/**
 * Writes `chunk` until `total` bytes, never reading: issue 16's TCP echo attack (1 GiB into an
 * echo that writes back to a peer that reads nothing) and the pipelined-HTTP attack.
 */
export async function writeFlood(options: FloodOptions): Promise<FloodResult> {
  const t0 = performance.now();
  const socket = await open(options.port, options.host);
  const result: FloodResult = { sent: 0, cut: false, elapsed: 0, throttled: false };
  if (options.read) {
    result.reply = '';
    socket.on('data', (d: Buffer) => {
      if (result.reply!.length < 256) result.reply += d.toString('latin1', 0, 256);
    });
  } else socket.pause(); // never read
  if (options.prefix) socket.write(options.prefix);
  let closed = false;
  socket.once('close', () => {
    closed = true;
  });
  const stallAfter = options.stallAfter ?? 3_000;
  const deadline = t0 + options.timeout;
  while (!closed && result.sent < options.total && performance.now() < deadline) {
    result.sent += options.chunk.length;
    if (socket.write(options.chunk)) continue;
    let timer: NodeJS.Timeout | undefined;
    const stalled = await Promise.race([
      drainOrClose(socket).then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), stallAfter);
      }),
    ]);
    clearTimeout(timer);
    if (stalled) {
      result.throttled = true;
      break;
    }
  }
  result.cut = closed;
  result.elapsed = performance.now() - t0;
  socket.destroy();
  return result;
}

/** Latencies of an operation repeated while an attack runs. */
export interface ProbeResult {
  count: number;
  failures: number;
  p50: number;
  p99: number;
  max: number;
  /** The first failure's message, if any. */
  firstFailure?: string;
}

/**
 * Runs `op` back to back (pausing `gapMs` between runs) until `stop()`: what an honest client
 * saw during the attack.
 */
export function probe(op: () => Promise<unknown>, gapMs = 20): { stop(): Promise<ProbeResult> } {
  const times: number[] = [];
  let failures = 0;
  let firstFailure: string | undefined;
  let running = true;
  const loop = (async () => {
    while (running) {
      const t0 = performance.now();
      try {
        await op();
        times.push(performance.now() - t0);
      } catch (error) {
        failures++;
        firstFailure ??= String((error as Error).message ?? error);
      }
      await new Promise((r) => setTimeout(r, gapMs));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      const sorted = [...times].sort((a, b) => a - b);
      const at = (q: number) =>
        sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
      return {
        count: times.length,
        failures,
        p50: at(0.5),
        p99: at(0.99),
        max: sorted.at(-1) ?? 0,
        ...(firstFailure === undefined ? {} : { firstFailure }),
      };
    },
  };
}

/** `sum` on a task connection of its own, again and again. */
export async function sumProbe(port: number): Promise<{ stop(): Promise<ProbeResult> }> {
  const client = await TaskClient.connect({ port });
  const p = probe(() => client.call('sum', '1 2 3'));
  return {
    async stop() {
      const r = await p.stop();
      client.destroy();
      return r;
    },
  };
}

/** One `GET path` on a new connection: resolves with the status once the body has been read. */
export function httpGet(port: number, path = '/hello', timeout = 10_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer within ${timeout} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** `GET /hello`, each on a new connection, again and again. */
export function helloProbe(port: number): { stop(): Promise<ProbeResult> } {
  return probe(async () => {
    const status = await httpGet(port);
    if (status !== 200) throw new Error(`GET /hello: ${status}`);
  });
}

/** What a server did to many slow clients. */
export interface SlowlorisResult {
  opened: number;
  /** ms from each connection's open to the server ending it, for those it ended. */
  cut: number[];
  /** Connections still open when the attack stopped. */
  stillOpen: number;
}

export interface SlowlorisOptions {
  port: number;
  host?: string;
  connections: number;
  /** Sent at once on each connection. */
  prefix: Buffer;
  /**
   * Fed to each connection `dripSize` bytes every `everyMs` (going round when it runs out),
   * until the server ends it or the attack stops: the rest of a hello a byte at a time, or a
   * header line a tick.
   */
  drip: Buffer;
  dripSize: number;
  everyMs: number;
  /** Stop after this many ms. */
  duration: number;
}

/** A slowloris attack under way: how many of its connections are open now, and its end. */
export interface Slowloris {
  open(): number;
  stop(): Promise<SlowlorisResult>;
}

/**
 * Slowloris: many connections, each sending a start (half a hello, a header line) then a byte or
 * a line every so often, never finishing. Reports how long the server let each one live.
 */
export async function startSlowloris(
  options: Omit<SlowlorisOptions, 'duration'>,
): Promise<Slowloris> {
  const result: SlowlorisResult = { opened: 0, cut: [], stillOpen: 0 };
  const sockets: Socket[] = [];
  let stopping = false;
  for (let i = 0; i < options.connections; i++) {
    let socket: Socket;
    try {
      socket = await open(options.port, options.host);
    } catch {
      continue; // refused (a limit): counted by what is opened
    }
    result.opened++;
    const t0 = performance.now();
    socket.once('close', () => {
      if (!stopping) result.cut.push(performance.now() - t0);
    });
    socket.resume(); // read (and drop) what the server says
    socket.write(options.prefix);
    sockets.push(socket);
  }
  let offset = 0;
  const drip = setInterval(() => {
    const d = options.drip;
    const piece = Buffer.alloc(options.dripSize);
    for (let i = 0; i < piece.length; i++) piece[i] = d[(offset + i) % d.length]!;
    offset += piece.length;
    for (const s of sockets) if (!s.destroyed) s.write(piece);
  }, options.everyMs);
  return {
    open: () => sockets.filter((s) => !s.destroyed).length,
    async stop() {
      stopping = true;
      clearInterval(drip);
      for (const s of sockets) {
        if (!s.destroyed) result.stillOpen++;
        s.destroy();
      }
      return result;
    },
  };
}

/** `startSlowloris`, stopped after `duration` ms. */
export async function slowloris(options: SlowlorisOptions): Promise<SlowlorisResult> {
  const attack = await startSlowloris(options);
  await new Promise((resolve) => setTimeout(resolve, options.duration));
  return attack.stop();
}

/** What a fuzzing client saw: how many connections the server ended, and how. */
export interface FuzzResult {
  attempts: number;
  /** Connections the server closed (after a FATAL, a refusal, or at once). */
  closed: number;
  /** Connections still open when their attempt's time was up (the server waits for more). */
  waiting: number;
}

/**
 * Fuzz over a real socket: `attempts` connections, each sending random bytes, or a valid hello
 * then frames with flipped bits, huge lengths, unknown types and reused ids. A small PRNG seeded
 * with `seed` makes a run repeatable.
 */
export async function fuzzTaskPort(options: {
  port: number;
  attempts: number;
  seed: number;
  concurrency?: number;
}): Promise<FuzzResult> {
  let state = options.seed >>> 0 || 1;
  const rand = () => {
    // xorshift32
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x1_0000_0000;
  };
  const int = (n: number) => Math.floor(rand() * n);
  const result: FuzzResult = { attempts: 0, closed: 0, waiting: 0 };
  const hello = encodeClientHello({
    version: 1,
    byteOrder: 'le',
    flags: 0,
    maxFramePayload: 1_048_576,
    initialWindow: 65_536,
  });
  const payload = (): Buffer => {
    const b = Buffer.alloc(int(64));
    for (let i = 0; i < b.length; i++) b[i] = int(256);
    return b;
  };
  const message = (): Buffer => {
    const kind = int(6);
    if (kind === 0) return payload(); // random bytes, no hello
    const frames: Buffer[] = [hello];
    for (let i = 0, n = 1 + int(8); i < n; i++) {
      const type = [0x10, 0x11, 0x12, 0x13, 0x14, int(256)][int(6)]!;
      const frame = encodeFrame(
        'le',
        type & 0xff,
        int(4) === 0 ? int(256) : 1,
        int(8),
        int(4),
        payload(),
      );
      if (kind === 2) frame[int(frame.length)]! ^= 1 << int(8); // a flipped bit
      if (kind === 3) frame.writeUInt32LE(0xffff_ff00 + int(256), 8); // a huge length
      frames.push(frame);
    }
    return Buffer.concat(frames);
  };
  const one = async () => {
    const bytes = message();
    result.attempts++;
    let socket: Socket;
    try {
      socket = await open(options.port);
    } catch {
      result.closed++;
      return;
    }
    socket.resume();
    const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(true)));
    socket.write(bytes);
    const ended = await Promise.race([
      closed,
      new Promise<boolean>((r) => setTimeout(() => r(false), 200)),
    ]);
    if (ended) result.closed++;
    else result.waiting++;
    socket.destroy();
  };
  const concurrency = options.concurrency ?? 16;
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < options.attempts) await one();
    }),
  );
  return result;
}
