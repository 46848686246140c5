/**
 * channel: what `TaskChannel` buys and what it costs.
 *   - Through a restart: the task server under 64 calls in flight is stopped the way a deploy
 *     stops it (a graceful drain: berth's Goodbye, grpc-js's GOAWAY) and started again on the
 *     same port; calls answered and lost, for a TaskChannel, plain TaskClients (what a user has
 *     without the channel) and grpc-js with its default channel options.
 *   - What it costs: round trips/s at 8 connections × 64 in flight (and 1 × 64) through one
 *     channel with 8 connection slots, against 8 hand-made TaskClients, alternating round by round.
 * Server and load run in their own processes (bench/fixtures/task-berth.ts, task-grpc.ts;
 * bench/load/task-load.ts), as in the tasks suite.
 */

import { join } from 'node:path';
import { pendingUnless } from '../lib/berth-api.js';
import { BENCH_DIR, type Child, spawnScript, startServer } from '../lib/child.js';
import { fmt, fmtRange, median } from '../lib/stats.js';
import {
  mark,
  ratioVerdict,
  type Suite,
  type SuiteContext,
  type SuiteReport,
} from '../lib/suite.js';
import { CommandChild, LineQueue } from '../lib/task-lines.js';
import type { RestartResult } from '../load/task-restart.js';

const LOAD = join(BENCH_DIR, 'load', 'task-load.ts');
const LIFE = 10 * 60_000;
const CLIENTS = {
  channel: { label: 'berth TaskChannel', server: 'task-berth.ts' },
  berth: { label: 'berth TaskClient (plain, no channel)', server: 'task-berth.ts' },
  grpc: { label: 'grpc-js, default channel', server: 'task-grpc.ts' },
} as const;
type ClientKind = keyof typeof CLIENTS;
/** 64 calls in flight: 8 connections × 8. */
const RESTART_LOAD = { connections: 8, inflight: 8 };
const COST_WORKLOADS = [
  { connections: 1, inflight: 64 },
  { connections: 8, inflight: 64 },
];
const COST_TARGET = 0.95;

function startLoad(impl: string): { child: Child; load: CommandChild } {
  const child = spawnScript(`${impl} load`, LOAD, ['--impl', impl], { timeout: LIFE, fds: 4_096 });
  return { child, load: new CommandChild(child) };
}

async function server(kind: ClientKind, port = 0): Promise<{ child: Child; port: number }> {
  return startServer(
    `${kind} server`,
    join(BENCH_DIR, 'fixtures', CLIENTS[kind].server),
    ['--port', String(port)],
    { timeout: LIFE },
  );
}

interface RestartTrial {
  result: RestartResult;
  /** ms from the stop command to the new server's `ready`. */
  downMs: number;
  /** Calls answered after the new server was ready. */
  okAfter: number;
  /** ms from the stop to the first answer after it from the new server's side of the timeline. */
  seconds: number;
}

async function restartTrial(kind: ClientKind, load: CommandChild): Promise<RestartTrial> {
  const first = await server(kind);
  let second: Child | undefined;
  try {
    await load.request({ op: 'restart-start', port: first.port, ...RESTART_LOAD }, 30_000);
    await sleep(1_000);
    const stopAt = Date.now();
    first.child.send('drain');
    await Promise.race([first.child.exited, sleep(15_000)]);
    await first.child.stop(); // bounded; a no-op once it has exited
    const again = await server(kind, first.port);
    second = again.child;
    const upAt = Date.now();
    await sleep(2_000);
    const result = await load.request<RestartResult>({ op: 'restart-stop' }, 30_000);
    const upBucket = Math.ceil((upAt - result.startedAt) / result.bucket);
    const okAfter = result.timeline.slice(upBucket).reduce((n, [ok]) => n + ok, 0);
    const seconds = (result.timeline.length * result.bucket) / 1_000;
    return { result, downMs: upAt - stopAt, okAfter, seconds };
  } finally {
    await first.child.stop();
    await second?.close(3_000);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export const channelSuite: Suite = {
  name: 'channel',
  title: 'TaskChannel through a server restart, and what it costs',
  target: `0 calls lost through a graceful restart of the task server under load; round trips/s through one channel ≥ ${COST_TARGET}× the same connections as hand-made TaskClients`,
  pending: () => pendingUnless('TaskChannel'),
  async run(ctx: SuiteContext): Promise<SuiteReport> {
    const quick = ctx.quick;
    const restartRounds = quick ? 1 : 3;
    const costRounds = ctx.rounds ?? (quick ? 2 : 7);
    const timing = quick ? { warmup: 150, duration: 400 } : { warmup: 250, duration: 800 };
    const loads = {} as Record<ClientKind, { child: Child; load: CommandChild }>;
    const notes: string[] = [];
    try {
      for (const kind of Object.keys(CLIENTS) as ClientKind[]) loads[kind] = startLoad(kind);
      for (const { child } of Object.values(loads)) await child.line(/^ready /, 15_000);

      // --- through a restart -----------------------------------------------------------------
      const restarts = new Map<ClientKind, RestartTrial[]>();
      const kinds = Object.keys(CLIENTS) as ClientKind[];
      for (let round = 0; round < restartRounds; round++) {
        for (const kind of kinds.map((_, i) => kinds[(i + round) % kinds.length]!)) {
          const trial = await restartTrial(kind, loads[kind].load);
          if (!restarts.has(kind)) restarts.set(kind, []);
          restarts.get(kind)!.push(trial);
          const r = trial.result;
          ctx.log(
            `restart round ${round + 1}/${restartRounds} ${CLIENTS[kind].label}: ${fmt(r.ok)} answered, ${fmt(r.failed)} failed, ${fmt(trial.okAfter)} after the restart; down ${fmt(trial.downMs)} ms${r.firstError ? `; first error: ${r.firstError}` : ''}`,
          );
        }
      }

      // --- what it costs ---------------------------------------------------------------------
      const side = async (impl: 'berth' | 'channel') => {
        const s = await server('berth');
        const cpu = new LineQueue(s.child, /^cpu \d+$/);
        const { child, load } = impl === 'channel' ? loads.channel : loads.berth;
        child.onLine(/^window-(start|end)$/, () => s.child.send('cpu'));
        return { impl, server: s, cpu, load };
      };
      const sides = [await side('berth'), await side('channel')];
      const cost = new Map<
        string,
        { berth: number[]; channel: number[]; cpu: { berth: number[]; channel: number[] } }
      >();
      try {
        for (const s of sides) {
          await s.load.request(
            {
              op: 'rt',
              port: s.server.port,
              connections: 8,
              inflight: 64,
              warmup: 0,
              duration: 1_000,
            },
            30_000,
          );
        }
        for (let round = 0; round < costRounds; round++) {
          for (const w of COST_WORKLOADS) {
            const key = `${w.connections} conn${w.connections > 1 ? 's' : ''} × ${w.inflight}`;
            if (!cost.has(key))
              cost.set(key, { berth: [], channel: [], cpu: { berth: [], channel: [] } });
            const entry = cost.get(key)!;
            for (const s of round % 2 === 0 ? sides : [...sides].reverse()) {
              s.cpu.clear();
              const r = await s.load.request<{
                ops: number;
                opsPerSec: number;
                loadCpuUs: number;
                errors: number;
              }>(
                { op: 'rt', port: s.server.port, ...w, ...timing },
                timing.warmup + timing.duration + 30_000,
              );
              const a = Number((await s.cpu.next(3_000)).slice(4));
              const b = Number((await s.cpu.next(3_000)).slice(4));
              entry[s.impl].push(r.opsPerSec);
              entry.cpu[s.impl].push(r.loadCpuUs / Math.max(1, r.ops));
              ctx.log(
                `cost round ${round + 1}/${costRounds} ${key} ${s.impl}: ${fmt(r.opsPerSec)} rt/s, client ${fmt(r.loadCpuUs / Math.max(1, r.ops), 2)} µs/rt, server ${fmt((b - a) / Math.max(1, r.ops), 2)} µs/rt${r.errors ? `, ${r.errors} errors` : ''}`,
              );
            }
          }
        }
      } finally {
        for (const s of sides) await s.server.child.close(3_000);
      }

      // --- tables ----------------------------------------------------------------------------
      const restartRows = kinds.map((kind) => {
        const ts = restarts.get(kind) ?? [];
        const lost = ts.map((t) => t.result.failed);
        return [
          CLIENTS[kind].label,
          fmt(median(ts.map((t) => t.result.ok))),
          `${fmt(median(lost))} (${fmtRange(lost)})`,
          fmt(median(ts.map((t) => t.okAfter))),
          fmt(median(ts.map((t) => t.result.ok / t.seconds))),
          fmt(median(ts.map((t) => t.downMs))),
          ts.find((t) => t.result.firstError)?.result.firstError ?? '',
          kind === 'channel'
            ? mark(
                lost.every((n) => n === 0),
                `${fmt(Math.max(...lost))} lost`,
              )
            : '',
        ];
      });
      const costRows = [...cost].map(([key, e]) => {
        const ratios = e.channel.map((c, i) => c / e.berth[i]!);
        return [
          key,
          fmt(median(e.berth)),
          fmt(median(e.channel)),
          `${fmt(median(e.cpu.berth), 2)} / ${fmt(median(e.cpu.channel), 2)}`,
          fmt(median(ratios), 3),
          fmtRange(ratios, 2),
          ratioVerdict(ratios, COST_TARGET),
        ];
      });
      const failedCost = [...cost.values()].some((e) => e.channel.length === 0);
      if (failedCost) notes.push('Some cost rounds did not run: see the log.');
      return {
        method: [
          `Through a restart: ${RESTART_LOAD.connections} connections × ${RESTART_LOAD.inflight} calls in flight (64 outstanding) of a 64-byte echo, each answer checked. After 1 s the server is told to stop the way a deploy stops it (berth: \`TaskServer.close()\`, Goodbye and drain; grpc-js: \`tryShutdown\`, GOAWAY and drain); once it has exited a new server starts on the same port, and the load runs 2 s more. A failed call is counted and its loop calls again after 10 ms, as an application would. *After the restart*: calls answered once the new server was ready. ${restartRounds} rounds, the clients in rotating order; each trial has its own servers.`,
          `Cost: round trips/s of the 64-byte echo through one \`TaskChannel\` with a connection slot per connection (its calls balanced least-in-flight) against the same number of hand-made \`TaskClient\`s each with its share of the calls, both on fresh connections to their own \`createDemoTaskServer()\` process; ${fmt(timing.warmup)} ms warm-up, ${fmt(timing.duration)} ms measured, ${costRounds} rounds, the order flipping every round. The ratio is the median of per-round ratios.`,
        ].join('\n\n'),
        tables: [
          {
            title: `Through a graceful restart of the server under 64 calls in flight, median of ${restartRounds} rounds`,
            columns: [
              'client',
              'calls answered',
              'calls failed (range)',
              'answered after the restart',
              'calls/s over the trial',
              'server down (ms)',
              'first error',
              'target: 0 lost',
            ],
            rows: restartRows,
          },
          {
            title: `What the channel costs: round trips/s, median of ${costRounds} rounds`,
            columns: [
              'connections × in flight',
              'TaskClients',
              'TaskChannel',
              'client CPU µs/rt (clients / channel)',
              'channel / clients',
              'per round',
              `target ≥ ${COST_TARGET}`,
            ],
            rows: costRows,
          },
        ],
        notes: [
          'A plain TaskClient fails every call after the Goodbye (it does not reconnect: that is the channel’s job), so its failures count every retry of the load’s loops, 10 ms apart.',
          ...notes,
        ],
      };
    } finally {
      for (const { child } of Object.values(loads)) await child.close(3_000);
    }
  },
};
