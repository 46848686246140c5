/**
 * What a server keeps per idle connection, object by object: starts a TaskServer (or a raw `net`
 * server) in this process, has a child process open N clients, and compares two heap snapshots,
 * taken after a full GC before and after they connect. Prints JS heap + external per connection
 * and the new objects per connection grouped by kind and constructor, largest first. The tasks
 * suite's memory rows measure the same thing without the snapshots (bench/lib/task-memory.ts).
 *
 *   node --expose-gc --import tsx bench/tools/heap-per-connection.ts [--connections 1000]
 *        [--task] [--settle 300] [--raw] [--top 30]
 *
 * `--task`: each berth client runs one 64-byte echo task before it idles. `--settle`: how long
 * the clients sit idle before the second snapshot (berth lets go of an idle client's decoder
 * and outbox after a second). `--raw`: a `net` server, and sockets that each echo one frame.
 * A first round of clients connects and leaves before the baseline, so compiled code and other
 * one-time costs are not counted per connection. Snapshots go to a temporary directory.
 */

import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeHeapSnapshot } from 'node:v8';
import { TaskServer } from '../../src/index.js';
import { openIdle } from '../load/task-drivers.js';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '1000' },
    task: { type: 'boolean', default: false },
    settle: { type: 'string', default: '300' },
    raw: { type: 'boolean', default: false },
    top: { type: 'string', default: '30' },
    client: { type: 'string' },
  },
});
const n = Number(values.connections);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// --- the child: opens the clients, holds them until told, then exits --------------------------

if (values.client !== undefined) {
  // The suite's own idle clients (bench/load/task-drivers.ts), so both measure the same thing.
  const idle = await openIdle(values.raw ? 'raw' : 'berth', Number(values.client), n, values.task);
  process.send!('open');
  process.once('message', async () => {
    await idle.close();
    process.exit(0);
  });
} else {
  await main();
}

// --- the server and the snapshots ----------------------------------------------------------------

async function main(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  let port: number;
  let stop: () => Promise<void>;
  if (values.raw) {
    const server: Server = createServer((s) => {
      s.on('error', () => {});
      s.on('data', (chunk) => s.write(chunk));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
    stop = () => new Promise((resolve) => server.close(() => resolve()));
  } else {
    const server = new TaskServer({ port: 0, host: '127.0.0.1', registry: null });
    server.register(1, (message: Buffer) => message, 'echo');
    await server.start();
    port = (server.address() as { port: number }).port;
    stop = () => server.close({ timeout: 1_000 });
  }
  const clients = async () => {
    const args = ['--client', String(port), '--connections', String(n)];
    if (values.task) args.push('--task');
    if (values.raw) args.push('--raw');
    const child = fork(new URL(import.meta.url).pathname, args, { execArgv: ['--import', 'tsx'] });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('exit', (code) => reject(new Error(`clients exited with ${code}`)));
    });
    return async () => {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.send('close');
      await exited;
    };
  };
  const dir = mkdtempSync(join(tmpdir(), 'berth-heap-'));
  try {
    await (await clients())();
    await sleep(1_500); // closed connections linger up to 500 ms
    gc();
    gc();
    const before = process.memoryUsage();
    const a = join(dir, 'before.heapsnapshot');
    writeHeapSnapshot(a);
    const release = await clients();
    await sleep(Number(values.settle));
    gc();
    gc();
    const after = process.memoryUsage();
    const b = join(dir, 'after.heapsnapshot');
    writeHeapSnapshot(b);
    await release();
    const heap = (after.heapUsed + after.external - before.heapUsed - before.external) / n;
    console.log(
      `${values.raw ? 'raw net' : 'berth TaskServer'}${values.task ? ', one task per client' : ''}: ${heap.toFixed(0)} B JS heap + external per connection at ${n} connections\n`,
    );
    console.log('| bytes/conn | objects/conn | kind: constructor |');
    console.log('|---|---|---|');
    for (const row of newObjects(a, b).slice(0, Number(values.top))) {
      console.log(`| ${row.bytes.toFixed(0)} | ${row.count.toFixed(2)} | ${row.key} |`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await stop();
  }
}

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

/** Objects in snapshot `b` that were not in `a`, per connection, by kind and constructor. */
function newObjects(a: string, b: string): { key: string; count: number; bytes: number }[] {
  const read = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const before = read(a);
  const fields = before.snapshot.meta.node_fields;
  const width = fields.length;
  const idAt = fields.indexOf('id');
  const old = new Set<number>();
  for (let i = 0; i < before.nodes.length; i += width) old.add(before.nodes[i + idAt]!);
  const after = read(b);
  const types = after.snapshot.meta.node_types[0];
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const groups = new Map<string, { count: number; bytes: number }>();
  for (let i = 0; i < after.nodes.length; i += width) {
    if (old.has(after.nodes[i + idAt]!)) continue;
    const type = types[after.nodes[i + typeAt]!]!;
    // Strings and code are grouped by kind only; their names are contents, not constructors.
    const name =
      type === 'object' || type === 'closure' || type === 'hidden' || type === 'array'
        ? after.strings[after.nodes[i + nameAt]!]!.slice(0, 50)
        : '';
    const key = `${type}: ${name}`;
    const g = groups.get(key) ?? { count: 0, bytes: 0 };
    g.count++;
    g.bytes += after.nodes[i + sizeAt]!;
    groups.set(key, g);
  }
  return [...groups]
    .map(([key, g]) => ({ key, count: g.count / n, bytes: g.bytes / n }))
    .filter((g) => g.bytes >= 4)
    .sort((x, y) => y.bytes - x.bytes);
}
