/**
 * The client side of each protocol the tasks suite compares, behind one interface, for
 * bench/load/task-load.ts. Each driver uses its library the way its documentation shows:
 *   berth  — `TaskClient.connect`, `client.call(1, payload)` (echo by code), `client.stream`;
 *   invoke — the same clients, `client.invoke(1, payload, done)`: a callback per call;
 *   grpc   — one `@grpc/grpc-js` `Client` (channel) per connection, unary `makeUnaryRequest`;
 *            each channel has its own subchannel pool, or grpc-js would share one HTTP/2
 *            connection between them;
 *   undici — one `Pool` (pipelining 1), `pool.request` + `body.arrayBuffer()`;
 *   raw    — `net` sockets speaking 4-byte-length + payload, N requests kept outstanding per
 *            socket and answers matched by order, written in one `write` per read: the floor.
 */

import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { finished } from 'node:stream/promises';
import { credentials, Client as GrpcClient } from '@grpc/grpc-js';
import { Pool } from 'undici';
import { TaskClient } from '../../src/index.js';
import { HANG, SIGNALLED } from '../fixtures/task-common.js';
import { BENCH_SERVICE } from '../fixtures/task-grpc-service.js';

export const HOST = '127.0.0.1';
export const PAYLOAD = Buffer.alloc(64, 'x');
/** The demo server's task codes (docs/protocol.md, "Demo tasks"). */
const ECHO = 1;
const BYTES = 3;
/** undici opens at most this many connections; requests beyond them wait in its queue. */
export const UNDICI_MAX_CONNECTIONS = 1_024;

/** `invoke`: berth's client and server, calls made with `invoke` (a callback each), not `call`. */
export type Impl = 'berth' | 'invoke' | 'grpc' | 'undici' | 'raw';

/** Round trips on some connections, with a number of calls kept outstanding on each. */
export interface RtSession {
  /** Keeps `inflight` calls outstanding per connection; `onOps(n)` as n calls complete. */
  start(onOps: (n: number) => void, onError: (error: Error) => void): void;
  /** Sends no new calls; resolves once the outstanding ones are answered (or after `bound` ms). */
  stop(bound: number): Promise<void>;
  close(): Promise<void>;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function noop(): void {}

/** Bounded wait: resolves with `fallback` after `ms`. */
export function within<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/**
 * Promise-style load: `inflight` loops per connection, each awaiting one call after another.
 * A failed call is counted and ends its loop (a broken connection must not spin).
 */
export function promiseLoops(
  calls: (() => Promise<unknown>)[],
  inflight: number,
  close: () => Promise<void>,
): RtSession {
  let running = false;
  const loops: Promise<void>[] = [];
  return {
    start(onOps, onError) {
      running = true;
      for (const call of calls) {
        for (let i = 0; i < inflight; i++) {
          loops.push(
            (async () => {
              while (running) {
                try {
                  await call();
                } catch (error) {
                  onError(error as Error);
                  return;
                }
                onOps(1);
              }
            })(),
          );
        }
      }
    },
    async stop(bound) {
      running = false;
      await within(Promise.all(loops).then(noop), bound, undefined);
    },
    close,
  };
}

/**
 * Callback-style load: `inflight` chains per connection, each call issued from the callback of
 * the one before (berth's `invoke`). A failed call is counted and ends its chain.
 */
export function callbackLoops(
  invokers: ((done: (error: Error | null) => void) => void)[],
  inflight: number,
  close: () => Promise<void>,
): RtSession {
  let running = false;
  let outstanding = 0;
  let drained: (() => void) | undefined;
  return {
    start(onOps, onError) {
      running = true;
      for (const invoke of invokers) {
        const done = (error: Error | null) => {
          if (error) {
            outstanding--;
            onError(error);
          } else {
            onOps(1);
            if (running) return invoke(done);
            outstanding--;
          }
          if (outstanding === 0) drained?.();
        };
        for (let i = 0; i < inflight; i++) {
          outstanding++;
          invoke(done);
        }
      }
    },
    async stop(bound) {
      running = false;
      if (outstanding === 0) return;
      await within(
        new Promise<void>((resolve) => {
          drained = resolve;
        }),
        bound,
        undefined,
      );
    },
    close,
  };
}

// --- berth ------------------------------------------------------------------------------------

export async function berthClients(
  port: number,
  n: number,
  window?: number,
): Promise<TaskClient[]> {
  return Promise.all(
    Array.from({ length: n }, () =>
      TaskClient.connect(
        window === undefined ? { host: HOST, port } : { host: HOST, port, window },
      ),
    ),
  );
}

export async function destroyAll(clients: TaskClient[]): Promise<void> {
  await within(Promise.all(clients.map((c) => c.destroy())).then(noop), 2_000, undefined);
}

// --- grpc -------------------------------------------------------------------------------------

const identity = (b: Buffer): Buffer => b;

export async function grpcClients(port: number, n: number): Promise<GrpcClient[]> {
  const clients = Array.from(
    { length: n },
    () =>
      new GrpcClient(`${HOST}:${port}`, credentials.createInsecure(), {
        'grpc.use_local_subchannel_pool': 1,
      }),
  );
  await Promise.all(
    clients.map(
      (c) =>
        new Promise<void>((resolve, reject) =>
          c.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())),
        ),
    ),
  );
  return clients;
}

export function grpcUnary(client: GrpcClient, path: string, request: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(path, identity, identity, request, (error, value) => {
      if (error) reject(error);
      else resolve(value!);
    });
  });
}

// --- raw --------------------------------------------------------------------------------------

const RAW_FRAME = 4 + PAYLOAD.length;
/** 1,024 request frames back to back: k new requests are one write of its first k frames. */
const RAW_REQUESTS = (() => {
  const frame = Buffer.alloc(RAW_FRAME);
  frame.writeUInt32LE(PAYLOAD.length, 0);
  PAYLOAD.copy(frame, 4);
  return Buffer.concat(Array.from({ length: 1_024 }, () => frame));
})();

async function rawSockets(port: number, n: number): Promise<Socket[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const socket = netConnect({ port, host: HOST, noDelay: true });
      socket.on('error', noop);
      await once(socket, 'connect');
      return socket;
    }),
  );
}

/** Counts the complete frames in `buf` from its start; returns the count and where they end. */
function scanFrames(buf: Buffer): { frames: number; end: number } {
  let off = 0;
  let frames = 0;
  while (buf.length - off >= 4) {
    const n = buf.readUInt32LE(off);
    if (buf.length - off - 4 < n) break;
    off += 4 + n;
    frames++;
  }
  return { frames, end: off };
}

function rawSession(sockets: Socket[], inflight: number): RtSession {
  let running = false;
  let outstanding = 0;
  let drained: (() => void) | undefined;
  return {
    start(onOps, onError) {
      running = true;
      for (const socket of sockets) {
        let pending: Buffer | undefined;
        socket.on('error', onError);
        socket.on('data', (chunk: Buffer) => {
          const buf = pending === undefined ? chunk : Buffer.concat([pending, chunk]);
          const { frames, end } = scanFrames(buf);
          pending = end < buf.length ? buf.subarray(end) : undefined;
          if (frames === 0) return;
          onOps(frames);
          if (running) {
            socket.write(RAW_REQUESTS.subarray(0, frames * RAW_FRAME));
          } else {
            outstanding -= frames;
            if (outstanding === 0) drained?.();
          }
        });
        socket.write(RAW_REQUESTS.subarray(0, inflight * RAW_FRAME));
      }
    },
    async stop(bound) {
      running = false;
      outstanding = sockets.length * inflight;
      await within(
        new Promise<void>((resolve) => {
          drained = resolve;
        }),
        bound,
        undefined,
      );
    },
    async close() {
      for (const s of sockets) s.destroy();
    },
  };
}

// --- round trips ------------------------------------------------------------------------------

/** How many connections undici's pool gets for this many calls in flight in all. */
export function undiciConnections(total: number): number {
  return Math.min(total, UNDICI_MAX_CONNECTIONS);
}

export async function openRt(
  impl: Impl,
  port: number,
  connections: number,
  inflight: number,
): Promise<RtSession> {
  switch (impl) {
    case 'berth': {
      const clients = await berthClients(port, connections);
      return promiseLoops(
        clients.map((c) => () => c.call(ECHO, PAYLOAD)),
        inflight,
        () => destroyAll(clients),
      );
    }
    case 'invoke': {
      const clients = await berthClients(port, connections);
      return callbackLoops(
        clients.map((c) => (done) => c.invoke(ECHO, PAYLOAD, done)),
        inflight,
        () => destroyAll(clients),
      );
    }
    case 'grpc': {
      const clients = await grpcClients(port, connections);
      const path = BENCH_SERVICE.Echo.path;
      return promiseLoops(
        clients.map((c) => () => grpcUnary(c, path, PAYLOAD)),
        inflight,
        async () => {
          for (const c of clients) c.close();
        },
      );
    }
    case 'undici': {
      const pool = new Pool(`http://${HOST}:${port}`, {
        connections: undiciConnections(connections * inflight),
        pipelining: 1,
      });
      const call = async () => {
        const { statusCode, body } = await pool.request({
          path: '/',
          method: 'POST',
          body: PAYLOAD,
          headers: { 'content-type': 'application/octet-stream' },
        });
        const answer = await body.arrayBuffer();
        if (statusCode !== 200 || answer.byteLength !== PAYLOAD.length) {
          throw new Error(`HTTP ${statusCode}, ${answer.byteLength} bytes`);
        }
      };
      // The pool is shared: `connections` loops of `inflight` each is the same total in flight.
      return promiseLoops(
        Array.from({ length: connections }, () => call),
        inflight,
        () => within(pool.destroy(), 2_000, undefined),
      );
    }
    case 'raw':
      return rawSession(await rawSockets(port, connections), inflight);
  }
}

// --- bulk -------------------------------------------------------------------------------------

/** A bulk transfer target: fetches `bytes` bytes streamed by the server, resolves when all in. */
export interface BulkSession {
  fetch(bytes: number): Promise<void>;
  close(): Promise<void>;
}

export async function openBulk(
  impl: Impl,
  port: number,
  bulkPort: number,
  window: number | undefined,
): Promise<BulkSession> {
  if (impl === 'berth') {
    const [client] = await berthClients(port, 1, window);
    return {
      async fetch(bytes) {
        let got = 0;
        // 'data' events, not `for await`: the fastest way Node offers to read a Readable, as
        // the raw side reads its socket.
        const stream = client!.stream(BYTES, String(bytes));
        stream.on('data', (chunk: Buffer) => {
          got += chunk.length;
        });
        await finished(stream);
        if (got !== bytes) throw new Error(`berth bulk: got ${got} of ${bytes} bytes`);
      },
      close: () => destroyAll([client!]),
    };
  }
  if (impl === 'raw') {
    return {
      async fetch(bytes) {
        const [socket] = await rawSockets(bulkPort, 1);
        let got = 0;
        await new Promise<void>((resolve, reject) => {
          socket!.on('data', (chunk: Buffer) => {
            got += chunk.length;
            if (got >= bytes) resolve();
          });
          socket!.once('error', reject);
          socket!.once('close', () => reject(new Error(`raw bulk: closed at ${got} bytes`)));
          socket!.write(`${bytes}\n`);
        });
        socket!.destroy();
      },
      async close() {},
    };
  }
  throw new Error(`no bulk transfer for ${impl}`);
}

// --- cancel -----------------------------------------------------------------------------------

/** One cancel probe: a task running on the server, cancelled here. */
export interface CancelProbe {
  /** Resolves with the abort → server-side signal latency in ms, or undefined if lost. */
  probe(token: string): Promise<number | undefined>;
}

/** Waits for the first chunk of a running probe, bounded. */
async function firstChunk(stream: NodeJS.EventEmitter): Promise<void> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error('no first chunk within 5 s')), 5_000);
  try {
    await once(stream, 'data', { signal: ac.signal });
  } finally {
    clearTimeout(timer);
  }
}

function latencyMs(at: string, abortedAt: bigint): number | undefined {
  return at === 'never' ? undefined : Number(BigInt(at) - abortedAt) / 1e6;
}

export async function openCancel(impl: Impl, port: number): Promise<CancelProbe & RtCloser> {
  if (impl === 'berth') {
    const [client] = await berthClients(port, 1);
    return {
      async probe(token) {
        const ac = new AbortController();
        const stream = client!.stream(HANG, token, { signal: ac.signal });
        stream.on('error', noop);
        await firstChunk(stream);
        const abortedAt = process.hrtime.bigint();
        ac.abort();
        const at = (await client!.call(SIGNALLED, token)).toString('latin1');
        return latencyMs(at, abortedAt);
      },
      close: () => destroyAll([client!]),
    };
  }
  if (impl === 'grpc') {
    const [client] = await grpcClients(port, 1);
    return {
      async probe(token) {
        const request = Buffer.from(token, 'latin1');
        const call = client!.makeServerStreamRequest(
          BENCH_SERVICE.Hang.path,
          identity,
          identity,
          request,
        );
        call.on('error', noop);
        await firstChunk(call);
        const abortedAt = process.hrtime.bigint();
        call.cancel();
        const at = (await grpcUnary(client!, BENCH_SERVICE.Signalled.path, request)).toString(
          'latin1',
        );
        return latencyMs(at, abortedAt);
      },
      async close() {
        client!.close();
      },
    };
  }
  throw new Error(`no cancel probe for ${impl}`);
}

export interface RtCloser {
  close(): Promise<void>;
}

// --- idle connections -------------------------------------------------------------------------

/** Opens `n` connections, `parallel` at a time, each handshaken (berth) or echoed once (raw). */
export async function openIdle(
  impl: Impl,
  port: number,
  n: number,
  task = false,
  parallel = 100,
): Promise<RtCloser> {
  const berth: TaskClient[] = [];
  const raw: Socket[] = [];
  for (let done = 0; done < n; done += parallel) {
    const batch = Math.min(parallel, n - done);
    if (impl === 'berth') {
      const clients = await berthClients(port, batch);
      if (task) await Promise.all(clients.map((c) => c.call(1, PAYLOAD)));
      berth.push(...clients);
    } else if (impl === 'raw') {
      const sockets = await rawSockets(port, batch);
      await Promise.all(
        sockets.map(
          (s) =>
            new Promise<void>((resolve) => {
              let got = 0;
              s.on('data', (chunk: Buffer) => {
                got += chunk.length;
                if (got >= RAW_FRAME) resolve();
              });
              s.write(RAW_REQUESTS.subarray(0, RAW_FRAME));
            }),
        ),
      );
      raw.push(...sockets);
    } else {
      throw new Error(`no idle connections for ${impl}`);
    }
  }
  return {
    async close() {
      await destroyAll(berth);
      for (const s of raw) s.destroy();
      await sleep(0);
    },
  };
}
