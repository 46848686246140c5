/**
 * Client variants for finding what berth's task client spends per round trip (run by
 * bench/load/task-variants.ts, through bench/load/task-load.ts's `rt` command):
 *   berth-dist     `TaskClient` from a tsc build in .bench-tmp/dist, as a user runs it;
 *   berth-invoke   the same, called with `invoke` (a callback per call) instead of `call`;
 *   codec          the task protocol at its floor: berth's `FrameEncoder`/`FrameDecoder` on a
 *                  `net` socket, N STARTs kept outstanding per connection, each answer's id sent
 *                  again at once, one write per read. No promise, no call object;
 *   codec-promise  the same wire work behind a promise per call (`await call()` loops, the
 *                  encoder flushed on the next tick as `TaskClient` does): what the promise API
 *                  alone costs;
 *   src:<dir>      `TaskClient` from another copy of berth's sources (`<dir>/index.ts`, relative to
 *                  the repository), to measure a candidate change without touching src/;
 *   channel        one `TaskChannel` with a connection slot per connection, every call through it
 *                  (what the channel costs over hand-made `TaskClient`s).
 */

import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as Berth from '../../src/index.js';
import { TaskChannel } from '../../src/index.js';
import {
  encodeClientHello,
  type Frame,
  FrameDecoder,
  FrameEncoder,
  ServerHelloDecoder,
} from '../../src/protocol/codec.js';
import { ClientFrame, FLAG_END, PROTOCOL_VERSION, ServerFrame } from '../../src/protocol/codes.js';
import { DIST } from '../fixtures/task-common.js';
import { ROOT } from '../lib/child.js';
import {
  callbackLoops,
  HOST,
  PAYLOAD,
  promiseLoops,
  type RtSession,
  within,
} from './task-drivers.js';

const ECHO = 1;

function noop(): void {}

export interface CodecConnection {
  socket: Socket;
  decoder: FrameDecoder;
  encoder: FrameEncoder;
}

export async function codecConnect(port: number): Promise<CodecConnection> {
  const socket = netConnect({ port, host: HOST, noDelay: true });
  socket.on('error', noop);
  await once(socket, 'connect');
  socket.write(
    encodeClientHello({
      version: PROTOCOL_VERSION,
      byteOrder: 'le',
      flags: 0,
      maxFramePayload: 1_048_576,
      initialWindow: 262_144,
    }),
  );
  const hello = new ServerHelloDecoder('le');
  await new Promise<void>((resolve) => {
    const onData = (chunk: Buffer) => {
      if (hello.push(chunk) === undefined) return;
      socket.off('data', onData);
      resolve();
    };
    socket.on('data', onData);
  });
  return {
    socket,
    decoder: new FrameDecoder({ byteOrder: 'le', maxPayload: 1_048_576, source: 'server' }),
    encoder: new FrameEncoder('le'),
  };
}

function flush(c: CodecConnection): void {
  if (c.encoder.pending === 0) return;
  const buffers = c.encoder.take();
  if (buffers.length === 1) {
    c.socket.write(buffers[0]!);
    return;
  }
  c.socket.cork();
  for (const b of buffers) c.socket.write(b);
  c.socket.uncork();
}

function codecSession(conns: CodecConnection[], inflight: number): RtSession {
  let running = false;
  let outstanding = 0;
  let drained: (() => void) | undefined;
  return {
    start(onOps, onError) {
      running = true;
      for (const c of conns) {
        let answered = 0;
        const onFrame = (frame: Frame) => {
          if (frame.type !== ServerFrame.OK || (frame.flags & FLAG_END) === 0) return;
          answered++;
          if (running) c.encoder.frame(ClientFrame.START, FLAG_END, ECHO, frame.id, PAYLOAD);
        };
        c.socket.on('error', onError);
        c.socket.on('data', (chunk: Buffer) => {
          answered = 0;
          c.decoder.push(chunk, onFrame);
          if (answered === 0) return;
          onOps(answered);
          if (running) {
            flush(c);
          } else {
            outstanding -= answered;
            if (outstanding === 0) drained?.();
          }
        });
        for (let id = 0; id < inflight; id++) {
          c.encoder.frame(ClientFrame.START, FLAG_END, ECHO, id, PAYLOAD);
        }
        flush(c);
      }
    },
    async stop(bound) {
      running = false;
      outstanding = conns.length * inflight;
      await within(
        new Promise<void>((resolve) => {
          drained = resolve;
        }),
        bound,
        undefined,
      );
    },
    async close() {
      for (const c of conns) c.socket.destroy();
    },
  };
}

/** A promise per call over the same wire work: ids from a free list, flushed on the next tick. */
export function promiseCaller(c: CodecConnection): () => Promise<Buffer> {
  const pending: (((value: Buffer) => void) | undefined)[] = [];
  const free: number[] = [];
  let scheduled = false;
  const flushNow = () => {
    scheduled = false;
    flush(c);
  };
  c.socket.on('data', (chunk: Buffer) => {
    c.decoder.push(chunk, (frame) => {
      const resolve = pending[frame.id];
      if (resolve === undefined) return;
      pending[frame.id] = undefined;
      free.push(frame.id);
      resolve(frame.payload);
    });
  });
  return () =>
    new Promise<Buffer>((resolve) => {
      const id = free.length > 0 ? free.pop()! : pending.length;
      pending[id] = resolve;
      c.encoder.frame(ClientFrame.START, FLAG_END, ECHO, id, PAYLOAD);
      if (!scheduled) {
        scheduled = true;
        process.nextTick(flushNow);
      }
    });
}

/** A client variant's round-trip session, or undefined when `variant` is not one of these. */
export async function openVariantRt(
  variant: string,
  port: number,
  connections: number,
  inflight: number,
): Promise<RtSession | undefined> {
  const many = <T>(fn: () => Promise<T>) => Promise.all(Array.from({ length: connections }, fn));
  const dir = variant.startsWith('src:') ? variant.slice(4) : '';
  switch (dir ? 'src' : variant) {
    case 'berth-dist':
    case 'src': {
      const api = (await import(
        pathToFileURL(dir ? join(ROOT, dir, 'index.ts') : DIST).href
      )) as typeof Berth;
      const clients = await many(() => api.TaskClient.connect({ host: HOST, port }));
      return promiseLoops(
        clients.map((c) => () => c.call(ECHO, PAYLOAD)),
        inflight,
        async () => {
          await within(Promise.all(clients.map((c) => c.destroy())), 2_000, undefined);
        },
      );
    }
    case 'berth-invoke': {
      // The same clients, called through `invoke` (a callback per call, no promise).
      const api = (await import(pathToFileURL(DIST).href)) as typeof Berth;
      const clients = await many(() => api.TaskClient.connect({ host: HOST, port }));
      return callbackLoops(
        clients.map((c) => (done) => c.invoke(ECHO, PAYLOAD, done)),
        inflight,
        async () => {
          await within(Promise.all(clients.map((c) => c.destroy())), 2_000, undefined);
        },
      );
    }
    case 'channel': {
      // One TaskChannel with a connection slot per connection, every call through it.
      const channel = new TaskChannel({
        endpoints: `${HOST}:${port}`,
        connectionsPerEndpoint: connections,
      });
      const t0 = performance.now();
      while (channel.stats.connections.ready < connections && performance.now() - t0 < 10_000) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const call = () => channel.call(ECHO, PAYLOAD);
      return promiseLoops(
        Array.from({ length: connections }, () => call),
        inflight,
        () => within(channel.destroy(), 2_000, undefined),
      );
    }
    case 'codec':
      return codecSession(await many(() => codecConnect(port)), inflight);
    case 'codec-promise': {
      const conns = await many(() => codecConnect(port));
      return promiseLoops(conns.map(promiseCaller), inflight, async () => {
        for (const c of conns) c.socket.destroy();
      });
    }
    default:
      return undefined;
  }
}
