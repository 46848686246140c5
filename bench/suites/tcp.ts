/**
 * tcp: `TcpService` (metrics on) against raw `net.createServer`, both echoing with the same
 * handler. Connection rate (connect, 64-byte echo, close) and bulk echo throughput. Besides the
 * load-side rate, the server's own CPU time per connection (or per MiB) is read from the server
 * process, because on a 2-core machine the load generator can be the bottleneck and hide a
 * server's overhead in the rate; CPU per unit of work cannot hide it.
 */

import { join } from 'node:path';
import { BENCH_DIR, type Child, resultOf, spawnScript, startServer } from '../lib/child.js';
import { fmt, fmtRange, median, pairedRatio } from '../lib/stats.js';
import { ratioVerdict, type Suite, type SuiteReport, type Table } from '../lib/suite.js';

const IMPLS = {
  berth: { label: 'TcpService', script: join(BENCH_DIR, 'fixtures', 'tcp-berth.ts') },
  net: { label: 'net.createServer', script: join(BENCH_DIR, 'fixtures', 'tcp-net.ts') },
} as const;
type Impl = keyof typeof IMPLS;

interface LoadResult {
  seconds: number;
  ops: number;
  opsPerSec: number;
  bytes: number;
  mibPerSec: number;
  errors: number;
  errorCodes: Record<string, number>;
}

export interface Workload {
  name: string;
  mode: 'connrate' | 'bulk';
  concurrency: number;
  unit: string;
  cpuUnit: string;
  value: (r: LoadResult) => number;
  /** Units of work in the window, for CPU per unit. */
  work: (r: LoadResult) => number;
}

export const WORKLOADS: readonly Workload[] = [
  {
    name: 'connection rate',
    mode: 'connrate',
    concurrency: 32,
    unit: 'conn/s',
    cpuUnit: 'µs/conn',
    value: (r) => r.opsPerSec,
    work: (r) => r.ops,
  },
  {
    name: 'bulk echo',
    mode: 'bulk',
    concurrency: 4,
    unit: 'MiB/s',
    cpuUnit: 'µs/MiB',
    value: (r) => r.mibPerSec,
    work: (r) => r.bytes / 2 ** 20,
  },
];

export interface Trial {
  value: number;
  /** Server CPU µs per unit of work. */
  cpuPerUnit: number;
  /** Server CPU use in the window, 0..1 of one core. */
  serverBusy: number;
  errors: number;
}

/** A server fixture to measure: a script and its arguments. */
export interface Target {
  label: string;
  script: string;
  args?: string[];
}

/**
 * One trial: a fresh server from `target`, a fresh load process; the load's rate and the
 * server's CPU over the measured window.
 */
export async function trial(
  target: Target,
  workload: Workload,
  timing: { warmup: number; duration: number },
  profileDir?: string,
): Promise<Trial> {
  const bound = timing.warmup + timing.duration + 20_000;
  // Both sides are profiled alike when asked, so their profiles can be compared.
  const profile = profileDir
    ? [
        '--cpu-prof',
        '--cpu-prof-interval',
        '100', // µs: fine enough to see per-connection costs of a few µs
        // One directory per trial: tsx's loader thread writes a profile of its own beside the
        // main thread's (file names CPU.<date>.<time>.<pid>.<thread>.<seq>; main is thread 0).
        '--cpu-prof-dir',
        join(profileDir, `tcp-${workload.mode}-${target.label}-${Date.now()}`.replace(/\W+/g, '-')),
      ]
    : [];
  const { child: server, port } = await startServer(
    target.label,
    target.script,
    target.args ?? [],
    {
      timeout: bound,
      nodeFlags: profile,
    },
  );
  let load: Child | undefined;
  try {
    const cpu: number[] = [];
    server.onLine(/^cpu \d+$/, (l) => cpu.push(Number(l.slice(4))));
    load = spawnScript(
      `tcp load (${workload.mode})`,
      join(BENCH_DIR, 'load', 'tcp-load.ts'),
      [
        '--port',
        String(port),
        '--mode',
        workload.mode,
        '--concurrency',
        String(workload.concurrency),
        '--warmup',
        String(timing.warmup),
        '--duration',
        String(timing.duration),
      ],
      { timeout: bound },
    );
    load.onLine(/^window-(start|end)$/, () => server.send('cpu'));
    const result = await resultOf<LoadResult>(load, bound);
    const deadline = Date.now() + 2_000;
    while (cpu.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    if (cpu.length < 2) throw new Error(`${target.label}: no CPU sample at window end`);
    const cpuUs = cpu[1]! - cpu[0]!;
    return {
      value: workload.value(result),
      cpuPerUnit: cpuUs / Math.max(1, workload.work(result)),
      serverBusy: cpuUs / (result.seconds * 1e6),
      errors: result.errors,
    };
  } finally {
    await load?.stop();
    // A normal exit, so a --cpu-prof profile gets written.
    await server.close();
  }
}

export const tcpSuite: Suite = {
  name: 'tcp',
  title: 'TcpService vs raw net.createServer',
  target: 'berth/baseline ratio ≥ 0.95 on connection rate and on bulk echo throughput',
  pending: async () => undefined,
  async run(ctx): Promise<SuiteReport> {
    // 7: bulk echo varies ±10% round to round on a shared 2-core machine; 5 was not enough.
    const rounds = ctx.rounds ?? (ctx.quick ? 2 : 7);
    const timing = ctx.quick
      ? { warmup: 300, duration: 1_000 }
      : { warmup: 1_000, duration: 3_000 };
    const rows: string[][] = [];
    const cpuRows: string[][] = [];
    const notes: string[] = [];
    for (const workload of WORKLOADS) {
      const trials: Record<Impl, Trial[]> = { berth: [], net: [] };
      for (let round = 0; round < rounds; round++) {
        const order: Impl[] = round % 2 === 0 ? ['berth', 'net'] : ['net', 'berth'];
        for (const impl of order) {
          const t = await trial(IMPLS[impl], workload, timing, ctx.profileDir);
          trials[impl].push(t);
          ctx.log(
            `${workload.name} round ${round + 1}/${rounds} ${IMPLS[impl].label}: ${fmt(t.value)} ${workload.unit}, server ${fmt(t.cpuPerUnit, 1)} ${workload.cpuUnit}, server busy ${fmt(t.serverBusy * 100)}%`,
          );
        }
      }
      const values = (impl: Impl) => trials[impl].map((t) => t.value);
      const cpus = (impl: Impl) => trials[impl].map((t) => t.cpuPerUnit);
      const ratio = pairedRatio(values('berth'), values('net'));
      const ratios = trials.berth.map((t, i) => t.value / trials.net[i]!.value);
      rows.push([
        `${workload.name} (${workload.unit})`,
        fmt(median(values('berth'))),
        fmt(median(values('net'))),
        fmt(ratio, 3),
        fmtRange(ratios, 2),
        ratioVerdict(ratios, 0.95),
      ]);
      // If the server were the bottleneck its rate would be 1/(CPU per unit), so net's CPU per
      // unit over berth's is the ratio a server-bound run would show.
      const serverBound = pairedRatio(cpus('net'), cpus('berth'));
      const serverBoundRatios = trials.net.map(
        (t, i) => t.cpuPerUnit / trials.berth[i]!.cpuPerUnit,
      );
      cpuRows.push([
        `${workload.name} (${workload.cpuUnit})`,
        fmt(median(cpus('berth')), 1),
        fmt(median(cpus('net')), 1),
        fmt(serverBound, 3),
        `${fmt(median(trials.berth.map((t) => t.serverBusy * 100)))}% / ${fmt(median(trials.net.map((t) => t.serverBusy * 100)))}%`,
        ratioVerdict(serverBoundRatios, 0.95),
      ]);
      const errors = [...trials.berth, ...trials.net].reduce((n, t) => n + t.errors, 0);
      if (errors > 0) notes.push(`${workload.name}: ${errors} client-side socket errors in all.`);
    }
    const throughput: Table = {
      title: `Throughput, median of ${rounds} rounds`,
      columns: ['workload', 'TcpService', 'net', 'ratio', 'ratio per round', 'target ≥ 0.95'],
      rows,
    };
    const cpu: Table = {
      title:
        'Server CPU per unit of work (lower is better), median; ratio = net/berth, the throughput ratio if the server were the bottleneck',
      columns: [
        'workload',
        'TcpService',
        'net',
        'ratio',
        'server busy (berth / net)',
        'target ≥ 0.95',
      ],
      rows: cpuRows,
    };
    return {
      method: `Connection rate: ${WORKLOADS[0]!.concurrency} concurrent loops in one load process, each connect → write 64 B → read the 64 B echo → end → close. Bulk: ${WORKLOADS[1]!.concurrency} connections each streaming 64 KiB writes with backpressure while reading the echo (MiB/s of echoed bytes). Both servers echo with \`socket.pipe(socket)\`; \`TcpService\` runs with metrics on (default prom-client registry); the \`net\` process loads berth's modules too, unused, so both hold the same code and heap (a larger heap alone changes the bulk echo's GC cost: bench/notes/tcp.md). ${fmt(timing.warmup)} ms warm-up then ${fmt(timing.duration)} ms measured per trial; a fresh server and load process per trial. Server CPU is \`process.cpuUsage()\` of the server process over the measured window.`,
      tables: [throughput, cpu],
      notes: [
        'Throughput on this 2-core machine is bounded by the load process as much as by the server (see "server busy": a server below 100% had CPU to spare), so a throughput ratio near 1 can hide server overhead; the CPU-per-unit ratio cannot, which is why both are reported and both carry the target.',
        ...notes,
      ],
    };
  },
};
