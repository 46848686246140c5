/**
 * drain: how many requests a shutdown loses and how long it takes, for berth and the shutdown
 * strategies users pick instead. Reproduces SHUTDOWN.md's measurement: 50 closed-loop
 * keep-alive clients against a 10 ms handler, SIGTERM to the server 500 ms after every client
 * has had an answer; counted are requests written to their socket that then failed. Then the
 * time to stop with 5,000 idle keep-alive sockets open.
 *
 * Each strategy is one fixture script, bench/fixtures/drain-<key>.ts, speaking the same control
 * lines (`ready <port>`, `stopped <ms>`); adding one is adding a row here.
 *
 * The suite has three parts, each with its table: `load` (requests lost under load), `idle` (the
 * 5,000-idle-socket stop) and `cluster` (berth's CLI reloading and draining two workers).
 * `npm run bench -- drain --only idle` (repeatable: `--only idle --only load`) runs only those
 * parts, for development, and never writes BENCHMARKS.md; `--rounds N` sets every part's rounds.
 * bench/tools/drain-idle-variants.ts runs the idle part against chosen strategies and against
 * berth as it was at a git commit, to measure a change against its parent in one run.
 */

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, ensureBuilt } from '../lib/build.js';
import {
  BENCH_DIR,
  type Child,
  resultOf,
  spawnNode,
  spawnScript,
  startServer,
} from '../lib/child.js';
import { fmt, fmtRange, median } from '../lib/stats.js';
import { mark, type Suite, type SuiteContext, type SuiteReport, type Table } from '../lib/suite.js';

export interface Strategy {
  key: string;
  label: string;
  berth?: boolean;
  /** The fixture script; default bench/fixtures/drain-<key>.ts. */
  script?: string;
}

export const STRATEGIES: readonly Strategy[] = [
  { key: 'berth', label: 'berth `HttpService.close()`', berth: true },
  { key: 'core', label: 'Node core: `close()` + `closeIdleConnections()`' },
  { key: 'http-terminator', label: 'http-terminator 3.2' },
  { key: 'stoppable', label: 'stoppable 1.1' },
  { key: 'terminus', label: '@godaddy/terminus 4.12' },
  { key: 'reference', label: 'reference: SHUTDOWN.md strategy by hand (not berth)' },
];

const CLIENTS = 50;
const TRIGGER_AT = 500; // ms after every client has had its first answer
const IDLE_SOCKETS = 5_000;
/**
 * How long the idle sockets sit idle before the signal: longer than berth's 1 s idle grace, so
 * they are idle sockets, not sockets that just finished a response (whose client may have its
 * next request on the wire: the under-load table's case, which a drain must wait for).
 */
const IDLE_SETTLE = 2_000;
const DEADLINE = 5_000; // what each fixture gives its strategy

const fixture = (s: Strategy) => s.script ?? join(BENCH_DIR, 'fixtures', `drain-${s.key}.ts`);

interface DrainLoad {
  okBefore: number;
  okAfter: number;
  refused: number;
  failedAfterWrite: number;
  failedBeforeWrite: number;
  failedBeforeShutdown: number;
  clientsFailed: number;
  failedCodes: Record<string, number>;
  lastOkAfterShutdownMs: number;
  clientsLeftAtLimit: boolean;
}

interface DrainRun extends DrainLoad {
  /** Signal to `stopped`, measured in the server; undefined if it never stopped. */
  stopMs: number | undefined;
  /** Signal sent to process exit, seen by the harness. */
  exitMs: number;
}

export interface IdleRun {
  stopMs: number | undefined;
  lastCloseMs: number;
  opened: number;
  closedAfterShutdown: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends SIGTERM by pid and times it; resolves the server's own stop time and the exit time. */
async function shutdown(
  server: Child,
  bound: number,
): Promise<{ stopMs: number | undefined; exitMs: number }> {
  const t0 = performance.now();
  process.kill(server.proc.pid!, 'SIGTERM');
  const stopped = server.line(/^stopped /, bound).then(
    (l) => Number(l.split(' ')[1]),
    () => undefined,
  );
  await Promise.race([server.exited, sleep(bound)]);
  const exitMs = performance.now() - t0;
  return { stopMs: await stopped, exitMs };
}

async function drainRun(strategy: Strategy, after: number): Promise<DrainRun> {
  const bound = after + DEADLINE + 10_000;
  const { child: server, port } = await startServer(strategy.key, fixture(strategy), [], {
    timeout: bound + 30_000,
  });
  let load: Child | undefined;
  try {
    load = spawnScript(
      'http drain load',
      join(BENCH_DIR, 'load', 'http-drain-load.ts'),
      ['--port', String(port), '--clients', String(CLIENTS), '--after', String(after)],
      { timeout: bound + 30_000 },
    );
    await load.line(/^running$/, 15_000);
    await sleep(TRIGGER_AT);
    // The load learns of the shutdown first, so no failure it sees can predate the signal.
    load.send('shutdown');
    await load.line(/^shutdown-ack$/, 5_000);
    const { stopMs, exitMs } = await shutdown(server, bound);
    const result = await resultOf<DrainLoad>(load, bound);
    return { ...result, stopMs, exitMs };
  } finally {
    await load?.stop();
    await server.stop();
  }
}

/**
 * One idle-stop run. With `profileDir`, the server runs under `--cpu-prof` (every strategy
 * alike); its stop is the end of the profile: read it with `profile-summary.ts --last 300`.
 */
export async function idleRun(strategy: Strategy, profileDir?: string): Promise<IdleRun> {
  const bound = DEADLINE + 10_000;
  const fds = IDLE_SOCKETS + 1_000;
  const profile = profileDir
    ? [
        '--cpu-prof',
        '--cpu-prof-interval',
        '100',
        '--cpu-prof-dir',
        join(profileDir, `drain-idle-${strategy.key.replace(/\W+/g, '-')}-${Date.now()}`),
      ]
    : [];
  const { child: server, port } = await startServer(strategy.key, fixture(strategy), [], {
    timeout: 120_000,
    fds,
    nodeFlags: profile,
  });
  let load: Child | undefined;
  try {
    load = spawnScript(
      'http idle load',
      join(BENCH_DIR, 'load', 'http-idle-load.ts'),
      ['--port', String(port), '--sockets', String(IDLE_SOCKETS)],
      { timeout: 120_000, fds },
    );
    const idle = await load.line(/^idle \d+$/, 60_000);
    if (Number(idle.split(' ')[1]) < IDLE_SOCKETS) {
      throw new Error(
        `${strategy.key}: only ${idle.split(' ')[1]} of ${IDLE_SOCKETS} sockets open`,
      );
    }
    await sleep(IDLE_SETTLE);
    load.send('shutdown');
    await load.line(/^shutdown-ack$/, 5_000);
    const { stopMs } = await shutdown(server, bound);
    const result = await resultOf<{
      opened: number;
      closedAfterShutdown: number;
      lastCloseMs: number;
    }>(load, 5_000).catch(() => ({
      opened: IDLE_SOCKETS,
      closedAfterShutdown: 0,
      lastCloseMs: NaN,
    }));
    return { stopMs, ...result };
  } finally {
    await load?.stop();
    await server.stop();
  }
}

const WORKERS = 2;

/** The suite's parts, each with its table; `--only` picks some. */
const PARTS: readonly string[] = ['load', 'idle', 'cluster'];

interface ClusterRun extends DrainLoad {
  /** reload: `reload complete in N ms`; stop: the primary's `shutdown complete in N ms`. */
  durationMs: number | undefined;
  /** Workers the reload replaced (reload runs). */
  replaced: number | undefined;
  /** The primary's exit code after SIGTERM (with the load gone, for reload runs). */
  exitCode: number;
}

/** True when `pid` is still a process running berth's CLI (so a reused pid is never killed). */
function isBerthProcess(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(CLI);
  } catch {
    return false;
  }
}

/**
 * `berth serve drain-app.mjs --workers 2` under the drain load. `reload`: SIGHUP 500 ms in,
 * clients go on until the reload is complete and 500 ms more, then stop; then SIGTERM, which must
 * exit 0. `stop`: SIGTERM 500 ms in, clients go on until refused or `after` ms, as for every
 * other strategy.
 */
async function clusterRun(kind: 'reload' | 'stop', after: number): Promise<ClusterRun> {
  const bound = after + DEADLINE + 40_000;
  const primary = spawnNode(
    'berth cluster',
    [
      CLI,
      'serve',
      join(BENCH_DIR, 'fixtures', 'drain-app.mjs'),
      '--workers',
      String(WORKERS),
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--diag-port',
      '0',
    ],
    { timeout: bound + 30_000 },
  );
  // Workers are the primary's children, not ours: note each one's pid from its log lines, so any
  // that outlives the primary is ended by pid too.
  const workerPids = new Set<number>();
  primary.onLine(/"worker":\d+/, (line) => {
    const pid = /"pid":(\d+)/.exec(line)?.[1];
    if (pid) workerPids.add(Number(pid));
  });
  let load: Child | undefined;
  try {
    const ready = await primary.line(/"msg":"workers ready: /, 30_000);
    const port = Number(/http 127\.0\.0\.1:(\d+)/.exec(ready)?.[1]);
    if (!port) throw new Error(`berth cluster: no port in ${ready}`);
    load = spawnScript(
      'http drain load',
      join(BENCH_DIR, 'load', 'http-drain-load.ts'),
      [
        '--port',
        String(port),
        '--clients',
        String(CLIENTS),
        '--after',
        String(kind === 'reload' ? bound : after),
      ],
      { timeout: bound + 30_000 },
    );
    await load.line(/^running$/, 15_000);
    await sleep(TRIGGER_AT);
    load.send('shutdown');
    await load.line(/^shutdown-ack$/, 5_000);
    let durationMs: number | undefined;
    let replaced: number | undefined;
    let exitCode: number;
    if (kind === 'reload') {
      process.kill(primary.proc.pid!, 'SIGHUP');
      const done = await primary.line(/"msg":"reload (complete|stopped)/, 60_000);
      if (!done.includes('reload complete')) throw new Error(`berth cluster: ${done}`);
      const line = JSON.parse(done) as { durationMs: number; replaced: number };
      durationMs = line.durationMs;
      replaced = line.replaced;
      await sleep(500); // the new workers serve the load for a while
      load.send('stop');
      const result = await resultOf<DrainLoad>(load, 15_000);
      exitCode = await primary.stop('SIGTERM', DEADLINE + 5_000);
      return { ...result, durationMs, replaced, exitCode };
    }
    process.kill(primary.proc.pid!, 'SIGTERM');
    const result = await resultOf<DrainLoad>(load, bound);
    exitCode = await Promise.race([primary.exited, sleep(DEADLINE + 5_000).then(() => -1)]);
    const complete = await primary.line(/"msg":"shutdown complete in /, 1_000).catch(() => '');
    durationMs = complete ? (JSON.parse(complete) as { durationMs: number }).durationMs : undefined;
    return { ...result, durationMs, replaced, exitCode };
  } finally {
    await load?.stop();
    await primary.stop();
    for (const pid of workerPids) {
      if (isBerthProcess(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Gone meanwhile.
        }
      }
    }
  }
}

function stopCell(runs: readonly { stopMs: number | undefined }[], limitMs?: number): string {
  const stops = runs.map((r) => r.stopMs).filter((ms): ms is number => ms !== undefined);
  const never = runs.length - stops.length;
  let cell = stops.length > 0 ? `${fmt(median(stops))} (${fmtRange(stops)})` : '–';
  const late = limitMs === undefined ? 0 : stops.filter((ms) => ms >= limitMs).length;
  // ≥ limit: the server was still answering when the clients gave up (see the notes).
  if (late > 0) cell += ` ⚠ ${late}/${runs.length} only when clients left`;
  if (never > 0) cell += `; ${never} run(s) never stopped`;
  return cell;
}

function codesCell(runs: readonly DrainLoad[]): string {
  const total: Record<string, number> = {};
  for (const r of runs)
    for (const [code, n] of Object.entries(r.failedCodes)) total[code] = (total[code] ?? 0) + n;
  const entries = Object.entries(total).sort((a, b) => b[1] - a[1]);
  return entries.length === 0 ? '–' : entries.map(([c, n]) => `${c} ×${n}`).join(', ');
}

export const drainSuite: Suite = {
  name: 'drain',
  title:
    'shutdown under load: berth vs Node core, http-terminator, stoppable, terminus; cluster reload',
  target:
    'berth loses 0 written requests in every run; time to stop with 5,000 idle keep-alive sockets < 100 ms',
  pending: async () => undefined,
  async run(ctx: SuiteContext): Promise<SuiteReport> {
    const parts = new Set(ctx.only ?? PARTS);
    const unknownParts = [...parts].filter((p) => !PARTS.includes(p));
    if (unknownParts.length > 0)
      throw new Error(`unknown part ${unknownParts.join(', ')}: the parts are ${PARTS.join(', ')}`);
    const runs =
      parts.has('load') || parts.has('cluster') ? (ctx.rounds ?? (ctx.quick ? 2 : 5)) : 0;
    const idleRuns = parts.has('idle') ? (ctx.rounds ?? (ctx.quick ? 1 : 5)) : 0;
    // How long clients keep going after SIGTERM if the server keeps answering them.
    const after = ctx.quick ? 2_000 : 5_000;
    const notes: string[] = [];
    const strategies = STRATEGIES;

    const drain = new Map<string, DrainRun[]>(strategies.map((s) => [s.key, []]));
    for (let round = 0; parts.has('load') && round < runs; round++) {
      // Rotate the order each round so no strategy always runs first or last.
      const order = strategies.map((_, i) => strategies[(i + round) % strategies.length]!);
      for (const s of order) {
        const r = await drainRun(s, after);
        drain.get(s.key)!.push(r);
        ctx.log(
          `drain run ${round + 1}/${runs} ${s.key}: ${r.failedAfterWrite} failed after write (${r.clientsFailed} clients), ${r.refused} refused, stop ${r.stopMs === undefined ? 'never' : `${fmt(r.stopMs)} ms`}, exit ${fmt(r.exitMs)} ms, ok before/after ${r.okBefore}/${r.okAfter}`,
        );
      }
    }

    const idle = new Map<string, IdleRun[]>(strategies.map((s) => [s.key, []]));
    for (let round = 0; round < idleRuns; round++) {
      const order = strategies.map((_, i) => strategies[(i + round) % strategies.length]!);
      for (const s of order) {
        const r = await idleRun(s, ctx.profileDir);
        idle.get(s.key)!.push(r);
        ctx.log(
          `idle run ${round + 1}/${idleRuns} ${s.key}: stop ${r.stopMs === undefined ? 'never' : `${fmt(r.stopMs, 1)} ms`}, last socket closed ${fmt(r.lastCloseMs, 1)} ms (client view), ${r.closedAfterShutdown}/${r.opened} closed`,
        );
      }
    }

    // The cluster: berth's CLI from dist/ with two workers, under the same load.
    if (parts.has('cluster')) await ensureBuilt(ctx.log);
    const cluster: Record<'reload' | 'stop', ClusterRun[]> = { reload: [], stop: [] };
    for (let round = 0; parts.has('cluster') && round < runs; round++) {
      const kinds = round % 2 === 0 ? (['reload', 'stop'] as const) : (['stop', 'reload'] as const);
      for (const kind of kinds) {
        const r = await clusterRun(kind, after);
        cluster[kind].push(r);
        ctx.log(
          `cluster ${kind} run ${round + 1}/${runs}: ${r.failedAfterWrite} failed after write (${r.clientsFailed} clients), ${r.refused} refused, ${kind === 'reload' ? `reload ${fmt(r.durationMs ?? Number.NaN)} ms (${r.replaced} replaced)` : `shutdown ${fmt(r.durationMs ?? Number.NaN)} ms`}, exit ${r.exitCode}, ok before/after ${r.okBefore}/${r.okAfter}`,
        );
      }
    }

    const drainRows = strategies.map((s) => {
      const rs = drain.get(s.key)!;
      const failed = rs.map((r) => r.failedAfterWrite);
      const allZero = failed.every((n) => n === 0);
      return [
        s.label,
        failed.join(', '),
        fmtRange(failed),
        fmt(median(rs.map((r) => r.clientsFailed))),
        fmt(median(rs.map((r) => r.refused))),
        fmt(median(rs.map((r) => r.okAfter))),
        stopCell(rs, after),
        codesCell(rs),
        s.berth
          ? mark(
              allZero,
              `${failed.filter((n) => n > 0).length} of ${rs.length} runs lost requests`,
            )
          : '',
      ];
    });
    const idleRows = strategies.map((s) => {
      const rs = idle.get(s.key)!;
      const stops = rs.map((r) => r.stopMs ?? Number.POSITIVE_INFINITY);
      const worst = Math.max(...stops);
      return [
        s.label,
        stopCell(rs),
        fmtRange(
          rs.map((r) => r.lastCloseMs),
          1,
        ),
        s.berth ? mark(worst < 100, `worst ${fmt(worst)} ms, ${fmt(worst - 100)} ms over`) : '',
      ];
    });

    const bad = [...drain.values()].flat().reduce((n, r) => n + r.failedBeforeShutdown, 0);
    if (bad > 0)
      notes.push(`${bad} requests failed before any shutdown began: the load was not clean.`);
    const unstopped = [...drain.entries()].filter(([, rs]) =>
      rs.some((r) => r.stopMs !== undefined && r.stopMs >= after),
    );
    if (unstopped.length > 0) {
      notes.push(
        `${unstopped.map(([k]) => k).join(', ')}: the server went on answering keep-alive clients after SIGTERM (Node 20 keeps serving open keep-alive connections after \`close()\` and sends no \`Connection: close\`), so it stopped only when the clients gave up at ${fmt(after)} ms; with clients that never pause it would not stop before its deadline or a kill.`,
      );
    }

    const clusterRows = (['reload', 'stop'] as const).map((kind) => {
      const rs = cluster[kind];
      const failed = rs.map((r) => r.failedAfterWrite);
      const durations = rs.map((r) => r.durationMs ?? Number.NaN);
      const exits = rs.map((r) => r.exitCode);
      const clean = exits.every((c) => c === 0);
      const lost = failed.filter((n) => n > 0).length;
      return [
        kind === 'reload'
          ? `SIGHUP: reload both workers under load, then SIGTERM`
          : `SIGTERM: drain both workers under load`,
        failed.join(', '),
        fmt(median(rs.map((r) => r.refused))),
        fmt(median(rs.map((r) => r.okAfter))),
        `${fmt(median(durations))} (${fmtRange(durations)})`,
        exits.join(', '),
        codesCell(rs),
        mark(
          failed.every((n) => n === 0) && clean,
          [
            lost > 0 ? `${lost} of ${rs.length} runs lost requests` : '',
            clean ? '' : 'an exit code was not 0',
          ]
            .filter(Boolean)
            .join('; '),
        ),
      ];
    });
    const clusterTable: Table = {
      title: `Cluster: \`berth serve drain-app.mjs --workers ${WORKERS}\` (built CLI from dist/, berth's defaults), the same ${CLIENTS} clients and 10 ms handler, signal ${TRIGGER_AT} ms in, ${runs} runs each`,
      columns: [
        'event',
        'failed after write, per run',
        'refused cleanly (median)',
        'answered after the signal (median)',
        'duration, ms: median (range)',
        'primary exit code, per run',
        'failures seen',
        'target: 0 lost, exit 0',
      ],
      rows: clusterRows,
    };

    const drainTable: Table = {
      title: `Under load: ${CLIENTS} closed-loop keep-alive clients, 10 ms handler, SIGTERM ${TRIGGER_AT} ms in, ${runs} runs per strategy`,
      columns: [
        'strategy',
        'failed after write, per run',
        'range',
        'clients hit (median)',
        'refused cleanly (median)',
        'answered after SIGTERM (median)',
        'time to stop, ms: median (range)',
        'failures seen',
        'target: 0 every run',
      ],
      rows: drainRows,
    };
    const idleTable: Table = {
      title: `Time to stop with ${fmt(IDLE_SOCKETS)} idle keep-alive sockets open (each idle ${fmt(IDLE_SETTLE / 1000)} s or more), ${idleRuns} runs per strategy`,
      columns: [
        'strategy',
        'time to stop, ms: median (range)',
        'last socket closed, client view (ms)',
        'target < 100 ms',
      ],
      rows: idleRows,
    };
    return {
      method: `Each strategy serves the same app (\`setTimeout(() => res.end('ok'), 10)\`, keepAliveTimeout 30 s) in its own process and gets SIGTERM; a strategy that takes a deadline gets ${fmt(DEADLINE)} ms. Load: node:http clients, one keep-alive \`Agent\` with one socket each; a request counts as *failed after write* when it failed (ECONNRESET, socket hang up, EPIPE) after its bytes were written to the socket ('finish'), and as *refused* when a new connection got ECONNREFUSED (clean, retryable). After SIGTERM clients continue until refused or for at most ${fmt(after)} ms. *Time to stop* runs from the signal's arrival in the server to its listener and last connection being closed, measured in the server process. In the idle test each socket gets one answer, then all ${fmt(IDLE_SOCKETS)} sit idle ${fmt(IDLE_SETTLE)} ms before the signal, longer than berth's 1 s idle grace (the keepAliveTimeout of 30 s keeps them open for every strategy). Strategies run in rotating order. The cluster rows run berth's built CLI, \`berth serve\` of the same application as a module (bench/fixtures/drain-app.mjs) with ${WORKERS} workers and berth's defaults throughout (keepAliveTimeout too), and read its own log: the port from \`workers ready\`, the reload's duration from \`reload complete in N ms\` (SIGHUP to every new worker ready and every old one drained), the drain's from \`shutdown complete in N ms\`.`,
      tables: [
        ...(parts.has('load') ? [drainTable] : []),
        ...(parts.has('idle') ? [idleTable] : []),
        ...(parts.has('cluster') ? [clusterTable] : []),
      ],
      notes,
    };
  },
};
