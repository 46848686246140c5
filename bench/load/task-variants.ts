/**
 * What costs what in a task-protocol round trip: runs the tasks suite's round-trip trial for
 * pairs of a server variant (bench/fixtures/task-variants.ts) and a client variant (the suite's
 * protocols and bench/load/task-client-variants.ts), in rotating order over several rounds, and
 * prints each pair's medians: round trips/s and the CPU each side spends per round trip. Server
 * and client CPU are read separately, so pairing each server with the cheapest client (and the
 * other way round) shows each side's cost on its own.
 *
 *   node --import tsx bench/load/task-variants.ts [--rounds 6] [--connections 1] [--inflight 64]
 *        [--duration 1500] [--build] [--syscalls] server@client ...
 *
 * e.g. `berth@berth berth@codec codec@berth codec@codec codec@codec-promise raw@raw`,
 * and `src:.bench-tmp/src-x@codec` for a patched copy of src/ in .bench-tmp/src-x.
 * `--build` first compiles berth with tsc into .bench-tmp/dist (for the `berth-dist` variants).
 * `--bulk BYTES` measures one streamed response of BYTES instead (the suite's bulk trial; units
 * are MiB, and `--window` sets berth's client window, or `berth~<bytes>` a client's own); pairs
 * are then `berth@berth`, `berth@berth~4194304` or `raw@raw`.
 * `--idle N` measures server memory per idle connection at N connections instead (the suite's
 * memory trial, a fresh server each time); clients are then `berth` or `raw`.
 * `--syscalls` counts each side's read and write system calls in the window with `perf stat`
 * (tracepoints; needs perf and perf_event_paranoid ≤ 2): round trips per write is the batch size,
 * and CPU per round trip depends on it as much as on the code.
 */

import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  BENCH_DIR,
  type Child,
  installExitHandlers,
  killAll,
  ROOT,
  spawnScript,
  startServer,
} from '../lib/child.js';
import { fmt, median } from '../lib/stats.js';
import { CommandChild, LineQueue } from '../lib/task-lines.js';
import { memoryPerConnection } from '../lib/task-memory.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '6' },
    connections: { type: 'string', default: '1' },
    inflight: { type: 'string', default: '64' },
    warmup: { type: 'string', default: '500' },
    duration: { type: 'string', default: '1500' },
    build: { type: 'boolean', default: false },
    syscalls: { type: 'boolean', default: false },
    bulk: { type: 'string' },
    idle: { type: 'string' },
    window: { type: 'string' },
  },
});

installExitHandlers();
/** The unit of work: a round trip, or a MiB of a bulk transfer. */
const U = values.bulk === undefined ? 'rt' : 'MiB';
const pairs = positionals.map((p) => {
  const [server = '', client = ''] = p.split('@');
  if (!server || !client) throw new Error(`pairs are server@client, got ${p}`);
  return { server, client, name: p };
});
if (pairs.length === 0) {
  console.error('usage: task-variants.ts [options] server@client ...');
  process.exit(2);
}

if (values.build) {
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const out = join(ROOT, '.bench-tmp', 'dist');
  const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', out], {
    cwd: ROOT,
    stdio: 'inherit',
    timeout: 120_000,
  });
  if (r.status !== 0) process.exit(1);
}

const LIFE = 30 * 60_000;
const servers = new Map<string, { child: Child; port: number; bulkPort: number; cpu: LineQueue }>();
const loads = new Map<
  string,
  {
    load: CommandChild;
    target: Child | undefined;
    counting: Promise<Record<string, number>[]> | undefined;
  }
>();

const idle = values.idle === undefined ? undefined : Number(values.idle);
for (const name of idle === undefined ? new Set(pairs.map((p) => p.server)) : []) {
  const { child, port } = await startServer(
    `server ${name}`,
    join(BENCH_DIR, 'fixtures', 'task-variants.ts'),
    ['--variant', name],
    { timeout: LIFE },
  );
  const bulkPort =
    name === 'raw' ? Number((await child.line(/^bulk \d+$/, 5_000)).split(' ')[1]) : 0;
  servers.set(name, { child, port, bulkPort, cpu: new LineQueue(child, /^cpu \d+$/) });
}
for (const name of new Set(pairs.map((p) => p.client))) {
  const child = spawnScript(
    `client ${name}`,
    join(BENCH_DIR, 'load', 'task-load.ts'),
    ['--impl', name.split('~')[0]!],
    { timeout: LIFE, fds: 4_096 },
  );
  const entry = {
    load: new CommandChild(child),
    target: undefined as Child | undefined,
    counting: undefined as Promise<Record<string, number>[]> | undefined,
  };
  child.onLine(/^window-(start|end)$/, (line) => {
    entry.target?.send('cpu');
    if (values.syscalls && line === 'window-start' && entry.target?.proc.pid && child.proc.pid) {
      // Counted over most of the window: perf takes a moment to attach.
      const ms = Number(values.duration) - 200;
      entry.counting = Promise.all([
        perfCount(entry.target.proc.pid, ms),
        perfCount(child.proc.pid, ms),
      ]);
    }
  });
  await child.line(/^ready /, 15_000);
  loads.set(name, entry);
}

interface Trial {
  rate: number;
  server: number;
  client: number;
  /** Round trips per write and per read, each side (with --syscalls). */
  batch?: { serverWrite: number; serverRead: number; clientWrite: number; clientRead: number };
}

const EVENTS = ['write', 'writev', 'read'].map((s) => `syscalls:sys_enter_${s}`);

/** Counts `pid`'s write, writev and read calls for `ms` with perf; by event name. */
function perfCount(pid: number, ms: number): Promise<Record<string, number>> {
  return new Promise((resolve) => {
    const perf = spawn(
      'perf',
      [
        'stat',
        '-x',
        ',',
        '-e',
        EVENTS.join(','),
        '-p',
        String(pid),
        '--',
        'sleep',
        String(ms / 1000),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    perf.stderr.setEncoding('utf8');
    perf.stderr.on('data', (chunk: string) => {
      err += chunk;
    });
    const killer = setTimeout(() => perf.pid && process.kill(perf.pid, 'SIGKILL'), ms + 5_000);
    perf.on('close', () => {
      clearTimeout(killer);
      const counts: Record<string, number> = {};
      for (const line of err.split('\n')) {
        const [value, , event] = line.split(',');
        if (event?.startsWith('syscalls:'))
          counts[event.slice('syscalls:sys_enter_'.length)] = Number(value);
      }
      resolve(counts);
    });
  });
}
const results = new Map<string, Trial[]>(pairs.map((p) => [p.name, []]));
const rounds = Number(values.rounds);
const w = {
  connections: Number(values.connections),
  inflight: Number(values.inflight),
  warmup: Number(values.warmup),
  duration: Number(values.duration),
};

async function trial(pair: (typeof pairs)[number]): Promise<Trial> {
  const server = servers.get(pair.server)!;
  const client = loads.get(pair.client)!;
  client.target = server.child;
  server.cpu.clear();
  const bulk = values.bulk === undefined ? undefined : Number(values.bulk);
  const command =
    bulk === undefined
      ? { op: 'rt', port: server.port, ...w }
      : {
          op: 'bulk',
          port: server.port,
          bulkPort: server.bulkPort,
          bytes: bulk,
          warmupBytes: Math.ceil(bulk / 8),
          window: pair.client.includes('~')
            ? Number(pair.client.split('~')[1])
            : values.window === undefined
              ? undefined
              : Number(values.window),
        };
  const answer = await client.load.request<{
    ops?: number;
    bytes?: number;
    seconds: number;
    loadCpuUs: number;
  }>(command, w.warmup + w.duration + 60_000);
  // In bulk mode a unit of work is a MiB.
  const r = { ...answer, ops: answer.ops ?? (answer.bytes ?? 0) / 2 ** 20 };
  const a = Number((await server.cpu.next(3_000)).slice(4));
  const b = Number((await server.cpu.next(3_000)).slice(4));
  const ops = Math.max(1, r.ops);
  const rate = r.ops / r.seconds;
  const t: Trial = { rate, server: (b - a) / ops, client: r.loadCpuUs / ops };
  const counting = client.counting;
  client.counting = undefined;
  if (counting) {
    const [sc, cc] = await counting;
    const seconds = (Number(values.duration) - 200) / 1000;
    const per = (calls: number) => (rate * seconds) / Math.max(1, calls);
    t.batch = {
      serverWrite: per((sc!.write ?? 0) + (sc!.writev ?? 0)),
      serverRead: per(sc!.read ?? 0),
      clientWrite: per((cc!.write ?? 0) + (cc!.writev ?? 0)),
      clientRead: per(cc!.read ?? 0),
    };
  }
  return t;
}

if (idle !== undefined) {
  try {
    const per = new Map<string, { rss: number; heap: number }[]>(pairs.map((p) => [p.name, []]));
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < pairs.length; i++) {
        const pair = pairs[(i + round) % pairs.length]!;
        const m = await memoryPerConnection(
          `server ${pair.server}`,
          join(BENCH_DIR, 'fixtures', 'task-variants.ts'),
          ['--variant', pair.server],
          loads.get(pair.client)!.load,
          idle,
        );
        per.get(pair.name)!.push(m);
        console.log(
          `round ${round + 1}/${rounds} ${pair.name}: ${fmt(m.rss)} B RSS, ${fmt(m.heap)} B heap + external per connection`,
        );
      }
    }
    console.log(`\nper idle connection at ${fmt(idle)} connections, medians of ${rounds} rounds\n`);
    console.log('| server@client | RSS bytes | JS heap + external bytes |');
    console.log('|---|---|---|');
    for (const pair of pairs) {
      const ms = per.get(pair.name)!;
      console.log(
        `| ${pair.name} | ${fmt(median(ms.map((m) => m.rss)))} | ${fmt(median(ms.map((m) => m.heap)))} |`,
      );
    }
  } finally {
    for (const { load } of loads.values()) await load.child.close(3_000);
    killAll();
  }
  process.exit(0);
}

try {
  // One unmeasured pass, so every process has compiled its hot paths.
  for (const pair of pairs) await trial(pair);
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < pairs.length; i++) {
      const pair = pairs[(i + round) % pairs.length]!;
      const t = await trial(pair);
      results.get(pair.name)!.push(t);
      const b = t.batch;
      console.log(
        `round ${round + 1}/${rounds} ${pair.name}: ${fmt(t.rate)} ${U}/s, server ${fmt(t.server, 3)} µs/${U}, client ${fmt(t.client, 3)} µs/${U}${b ? `, ${U} per write/read: server ${fmt(b.serverWrite, 1)}/${fmt(b.serverRead, 1)}, client ${fmt(b.clientWrite, 1)}/${fmt(b.clientRead, 1)}` : ''}`,
      );
    }
  }
  console.log(
    `\n${w.connections} connection(s) × ${w.inflight} in flight, medians of ${rounds} rounds\n`,
  );
  const batches = values.syscalls ? ` ${U} per server write | ${U} per client write |` : '';
  console.log(
    `| server@client | ${U}/s | server µs/${U} | client µs/${U} | both µs/${U} |${batches}`,
  );
  console.log(`|---|---|---|---|---|${values.syscalls ? '---|---|' : ''}`);
  for (const pair of pairs) {
    const ts = results.get(pair.name)!;
    const s = median(ts.map((t) => t.server));
    const c = median(ts.map((t) => t.client));
    console.log(
      `| ${pair.name} | ${fmt(median(ts.map((t) => t.rate)))} | ${fmt(s, 3)} | ${fmt(c, 3)} | ${fmt(median(ts.map((t) => t.server + t.client)), 3)} |${values.syscalls ? ` ${fmt(median(ts.map((t) => t.batch?.serverWrite ?? 0)), 1)} | ${fmt(median(ts.map((t) => t.batch?.clientWrite ?? 0)), 1)} |` : ''}`,
    );
  }
} finally {
  for (const { load } of loads.values()) await load.child.close(3_000);
  for (const { child } of servers.values()) await child.close(3_000);
  killAll();
}
