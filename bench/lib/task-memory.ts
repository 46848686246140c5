/**
 * Server memory per idle connection, for the tasks suite and its variants runner. A fresh server
 * process (`--expose-gc`) first takes `n` connections and lets them go, so what is paid once (the
 * compiled connection path, hidden classes, heap and allocator growth) is paid before the
 * baseline; then it is measured after a full GC, `n` idle connections are opened from a load
 * process (bench/load/task-load.ts's `idle` command), and once the server counts them (its
 * `clients` control line) it is measured again. The connections are released and the server ends
 * before this returns.
 */

import { type Child, startServer } from './child.js';
import type { CommandChild } from './task-lines.js';
import { LineQueue } from './task-lines.js';

export interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

/** Bytes per connection, RSS and JS heap + external. */
export interface PerConnection {
  rss: number;
  heap: number;
  base: Memory;
  after: Memory;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function sample(server: Child, mem: LineQueue): Promise<Memory> {
  server.send('mem');
  const m = JSON.parse((await mem.next(5_000)).slice(4)) as Memory;
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external };
}

export interface MemoryOptions {
  /** berth: each client runs one echo task after its handshake. */
  task?: boolean;
  /** How long the connections sit idle before the measure (default 300 ms). */
  settle?: number;
}

export async function memoryPerConnection(
  label: string,
  script: string,
  args: string[],
  load: CommandChild,
  n: number,
  options: MemoryOptions = {},
): Promise<PerConnection> {
  const { child: server, port } = await startServer(label, script, args, {
    timeout: 120_000,
    nodeFlags: ['--expose-gc'],
    fds: n + 1_024,
  });
  try {
    const mem = new LineQueue(server, /^mem /);
    const clients = new LineQueue(server, /^clients \d+$/);
    const count = async (want: (open: number) => boolean, what: string) => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        server.send('clients');
        const open = Number((await clients.next(5_000)).split(' ')[1]);
        if (want(open)) return;
        if (Date.now() > deadline) throw new Error(`${label}: ${open} clients, expected ${what}`);
        await sleep(50);
      }
    };
    // The same work as the measured round, so its one-time costs (compiled code) are paid here.
    await load.request({ op: 'idle', port, connections: n, task: options.task }, 60_000);
    await count((open) => open >= n, `${n}`);
    await load.request({ op: 'release' }, 20_000);
    await count((open) => open === 0, 'none');
    // Closed connections linger (berth half-closes and reads for up to 500 ms): wait until a
    // full GC finds the heap steady, or the baseline would still hold the first round's sockets.
    let base = await sample(server, mem);
    for (let i = 0; i < 20; i++) {
      await sleep(250);
      const next = await sample(server, mem);
      const steady = Math.abs(next.heapUsed - base.heapUsed) < 64 * 1024;
      base = next;
      if (steady && i >= 2) break;
    }
    await load.request({ op: 'idle', port, connections: n, task: options.task }, 60_000);
    await count((open) => open >= n, `${n}`);
    await sleep(options.settle ?? 300); // let the connections' first timers and reads settle
    const after = await sample(server, mem);
    await load.request({ op: 'release' }, 20_000);
    return {
      rss: (after.rss - base.rss) / n,
      heap: (after.heapUsed + after.external - base.heapUsed - base.external) / n,
      base,
      after,
    };
  } finally {
    await server.close();
  }
}
