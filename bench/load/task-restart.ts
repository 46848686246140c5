/**
 * Load through a server restart, for the channel suite (bench/suites/channel.ts), run by
 * bench/load/task-load.ts's `restart-start` / `restart-stop` commands. Unlike the round-trip
 * loops, a failed call does not end its loop: the loop counts it, waits 10 ms (so a client that
 * fails every call at once does not spin) and calls again, as an application would go on
 * serving its own users. What each client is:
 *   channel — one `TaskChannel` over the server's address, a connection slot per connection;
 *   berth   — plain `TaskClient`s, one per connection, as a user without a channel has them;
 *   grpc    — a `@grpc/grpc-js` `Client` per connection with its default channel options.
 * Every answer is checked: an echo that comes back different counts as failed.
 */

import type { Client as GrpcClient } from '@grpc/grpc-js';
import { TaskChannel, type TaskClient } from '../../src/index.js';
import { BENCH_SERVICE } from '../fixtures/task-grpc-service.js';
import {
  berthClients,
  destroyAll,
  grpcClients,
  grpcUnary,
  HOST,
  PAYLOAD,
  within,
} from './task-drivers.js';

const ECHO = 1;
/** Timeline buckets (ms). */
const BUCKET = 100;

export interface RestartResult {
  ok: number;
  failed: number;
  firstError: string | undefined;
  /** Epoch ms of the first bucket; then [ok, failed] per BUCKET ms. */
  startedAt: number;
  bucket: number;
  timeline: [number, number][];
}

export interface RestartLoad {
  readonly startedAt: number;
  stop(): Promise<RestartResult>;
}

export async function startRestartLoad(
  impl: string,
  port: number,
  connections: number,
  inflight: number,
): Promise<RestartLoad> {
  let calls: (() => Promise<Buffer>)[];
  let close: () => Promise<void>;
  if (impl === 'channel') {
    const channel = new TaskChannel({
      endpoints: `${HOST}:${port}`,
      connectionsPerEndpoint: connections,
    });
    await channel.waitForReady();
    calls = Array.from({ length: connections }, () => () => channel.call(ECHO, PAYLOAD));
    close = () => within(channel.destroy(), 2_000, undefined);
  } else if (impl === 'berth') {
    const clients: TaskClient[] = await berthClients(port, connections);
    calls = clients.map((c) => () => c.call(ECHO, PAYLOAD));
    close = () => destroyAll(clients);
  } else if (impl === 'grpc') {
    const clients: GrpcClient[] = await grpcClients(port, connections);
    const path = BENCH_SERVICE.Echo.path;
    calls = clients.map((c) => () => grpcUnary(c, path, PAYLOAD));
    close = async () => {
      for (const c of clients) c.close();
    };
  } else {
    throw new Error(`restart load: unknown client ${impl}`);
  }
  const startedAt = Date.now();
  const timeline: [number, number][] = [];
  const slot = () => {
    const i = Math.floor((Date.now() - startedAt) / BUCKET);
    while (timeline.length <= i) timeline.push([0, 0]);
    return timeline[i]!;
  };
  let ok = 0;
  let failed = 0;
  let firstError: string | undefined;
  let running = true;
  const loops = calls.flatMap((call) =>
    Array.from({ length: inflight }, async () => {
      while (running) {
        try {
          const answer = await call();
          if (!answer.equals(PAYLOAD)) throw new Error(`a wrong answer of ${answer.length} bytes`);
          ok++;
          slot()[0]++;
        } catch (error) {
          if (!running) return;
          failed++;
          slot()[1]++;
          firstError ??= `${(error as { code?: unknown }).code ?? ''} ${(error as Error).message}`;
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      }
    }),
  );
  return {
    startedAt,
    async stop() {
      running = false;
      await within(Promise.all(loops), 3_000, undefined);
      await close();
      return { ok, failed, firstError, startedAt, bucket: BUCKET, timeline };
    },
  };
}
