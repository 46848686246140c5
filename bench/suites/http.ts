/**
 * http: `HttpService` (its defaults, metrics on) against raw `http.createServer`, both serving the
 * same small answer to 50 keep-alive connections from autocannon in its own process.
 * Requests/s and p99 latency as the load sees them, and, as in the tcp suite, the server's own
 * CPU time per request: on a 2-core machine the load generator saturates first and can hide a
 * server's overhead in the rate, while CPU per request cannot hide it.
 */

import { join } from 'node:path';
import { BENCH_DIR, type Child, resultOf, spawnScript, startServer } from '../lib/child.js';
import { fmt, fmtRange, median } from '../lib/stats.js';
import { ratioVerdict, type Suite, type SuiteReport, type Table } from '../lib/suite.js';

/** A server fixture to measure: a script and its arguments. */
export interface Target {
  label: string;
  script: string;
  args?: string[];
}

const IMPLS = {
  berth: { label: 'HttpService', script: join(BENCH_DIR, 'fixtures', 'http-berth.ts') },
  node: { label: 'http.createServer', script: join(BENCH_DIR, 'fixtures', 'http-node.ts') },
} as const satisfies Record<string, Target>;
type Impl = keyof typeof IMPLS;

export const CONNECTIONS = 50;

interface LoadResult {
  seconds: number;
  requests: number;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  timeouts: number;
  non2xx: number;
}

export interface Trial {
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Server CPU µs per request answered in the window. */
  cpuPerRequest: number;
  /** Server CPU use in the window, 0..1 of one core. */
  serverBusy: number;
  errors: number;
}

/**
 * One trial: a fresh server from `target`, a fresh autocannon process; the load's rate and
 * latency and the server's CPU over the measured window.
 */
export async function trial(
  target: Target,
  timing: { warmup: number; duration: number },
  profileDir?: string,
): Promise<Trial> {
  const bound = timing.warmup + timing.duration + 20_000;
  const profile = profileDir
    ? [
        '--cpu-prof',
        '--cpu-prof-interval',
        '100', // µs
        // One directory per trial: tsx's loader thread writes its own profile beside main's.
        '--cpu-prof-dir',
        join(profileDir, `http-${target.label}-${Date.now()}`.replace(/\W+/g, '-')),
      ]
    : [];
  const { child: server, port } = await startServer(
    target.label,
    target.script,
    target.args ?? [],
    { timeout: bound, nodeFlags: profile },
  );
  let load: Child | undefined;
  try {
    const cpu: number[] = [];
    server.onLine(/^cpu \d+$/, (l) => cpu.push(Number(l.slice(4))));
    load = spawnScript(
      'http load',
      join(BENCH_DIR, 'load', 'http-load.ts'),
      [
        '--port',
        String(port),
        '--connections',
        String(CONNECTIONS),
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
      requestsPerSec: result.requestsPerSec,
      p50Ms: result.p50Ms,
      p99Ms: result.p99Ms,
      cpuPerRequest: cpuUs / Math.max(1, result.requests),
      serverBusy: cpuUs / (result.seconds * 1e6),
      errors: result.errors + result.timeouts + result.non2xx,
    };
  } finally {
    await load?.stop();
    // A normal exit, so a --cpu-prof profile gets written.
    await server.close();
  }
}

/** Per-round ratios a/b. */
const perRound = (a: readonly number[], b: readonly number[]) => a.map((x, i) => x / b[i]!);

export const httpSuite: Suite = {
  name: 'http',
  title: 'HttpService vs raw http.createServer',
  target:
    'berth/baseline ratio ≥ 0.95 on requests/s and on p99 latency (and on server CPU per request, the rate if the server were the bottleneck)',
  pending: async () => undefined,
  async run(ctx): Promise<SuiteReport> {
    const rounds = ctx.rounds ?? (ctx.quick ? 2 : 7);
    const timing = ctx.quick
      ? { warmup: 500, duration: 1_500 }
      : { warmup: 1_000, duration: 3_000 };
    const trials: Record<Impl, Trial[]> = { berth: [], node: [] };
    for (let round = 0; round < rounds; round++) {
      const order: Impl[] = round % 2 === 0 ? ['berth', 'node'] : ['node', 'berth'];
      for (const impl of order) {
        const t = await trial(IMPLS[impl], timing, ctx.profileDir);
        trials[impl].push(t);
        ctx.log(
          `round ${round + 1}/${rounds} ${IMPLS[impl].label}: ${fmt(t.requestsPerSec)} req/s, p99 ${fmt(t.p99Ms, 2)} ms, server ${fmt(t.cpuPerRequest, 2)} µs/req, server busy ${fmt(t.serverBusy * 100)}%`,
        );
      }
    }
    const of = (impl: Impl, pick: (t: Trial) => number) => trials[impl].map(pick);
    const rps = (i: Impl) => of(i, (t) => t.requestsPerSec);
    const p99 = (i: Impl) => of(i, (t) => t.p99Ms);
    const p50 = (i: Impl) => of(i, (t) => t.p50Ms);
    const cpu = (i: Impl) => of(i, (t) => t.cpuPerRequest);
    const busy = (i: Impl) => of(i, (t) => t.serverBusy * 100);

    // Every ratio is "berth as good as raw" = 1, higher is better: for latency and CPU (lower is
    // better) it is raw/berth.
    const rpsRatios = perRound(rps('berth'), rps('node'));
    const p99Ratios = perRound(p99('node'), p99('berth'));
    const p50Ratios = perRound(p50('node'), p50('berth'));
    const cpuRatios = perRound(cpu('node'), cpu('berth'));
    const row = (
      name: string,
      b: number[],
      n: number[],
      ratios: number[],
      digits: number,
      target: boolean,
    ) => [
      name,
      fmt(median(b), digits),
      fmt(median(n), digits),
      fmt(median(ratios), 3),
      fmtRange(ratios, 2),
      target ? ratioVerdict(ratios, 0.95) : '(no target)',
    ];
    const table: Table = {
      title: `${CONNECTIONS} keep-alive connections, median of ${rounds} rounds; ratio = berth/raw for requests/s, raw/berth for latency and CPU (1 = as good as raw, higher is better)`,
      columns: ['measure', 'HttpService', 'http', 'ratio', 'ratio per round', 'target ≥ 0.95'],
      rows: [
        row('requests/s', rps('berth'), rps('node'), rpsRatios, 0, true),
        row('p99 latency (ms)', p99('berth'), p99('node'), p99Ratios, 2, true),
        row('p50 latency (ms)', p50('berth'), p50('node'), p50Ratios, 2, false),
        row('server CPU per request (µs)', cpu('berth'), cpu('node'), cpuRatios, 2, true),
        [
          'server busy (% of one core)',
          fmt(median(busy('berth'))),
          fmt(median(busy('node'))),
          '',
          '',
          '',
        ],
      ],
    };
    const notes = [
      'On this 2-core machine autocannon (one core) and the server (one core) share the CPU with each other and with the harness, so requests/s and latency follow the load process as much as the server (see "server busy": a server below 100% had CPU to spare). Server CPU per request cannot hide the server\'s own overhead, which is why it carries the target too: raw/berth is the requests/s ratio a server-bound run would show.',
    ];
    const errors = [...trials.berth, ...trials.node].reduce((n, t) => n + t.errors, 0);
    if (errors > 0) notes.push(`${errors} errors, timeouts or non-2xx answers in all.`);
    return {
      method: `Both servers answer \`GET /\` with \`Hello world.\\n\` (\`res.end()\`, 13 bytes) from the same handler; \`HttpService\` runs with its defaults and metrics on (prom-client's default registry: counters plus a request-duration histogram); the raw \`http\` process loads berth's modules too, unused, so both hold the same code and heap. Load: autocannon 9 in its own process, ${CONNECTIONS} keep-alive connections, no pipelining. Latency percentiles are computed from every response's own hrtime duration (autocannon's histogram rounds to whole ms). ${fmt(timing.warmup)} ms warm-up then ${fmt(timing.duration)} ms measured per trial; a fresh server and load process per trial; the order flips each round. Server CPU is \`process.cpuUsage()\` of the server process over the measured window.`,
      tables: [table],
      notes,
    };
  },
};
