/**
 * startup: time from spawning `berth demo` (berth's built CLI, plain JavaScript from dist/) to
 * its diagnostics server's `GET /ready` answering 200, against `node -e` opening one HTTP
 * listener and answering its first request; the figure is the difference in ms. A third side,
 * `node -e` that first loads every module `berth demo` loads (berth, prom-client, pino,
 * pino-pretty) and then opens the same one listener, splits the difference into loading code
 * and starting berth's services.
 */

import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CLI, ensureBuilt } from '../lib/build.js';
import { type Child, spawnNode } from '../lib/child.js';
import { fmt, fmtRange, median } from '../lib/stats.js';
import type { Suite, SuiteReport, Table } from '../lib/suite.js';

interface Side {
  key: string;
  label: string;
  args: string[];
  /** The stdout line that says where to ask, and the URL to ask then. */
  ready: RegExp;
  url: (line: string) => string | undefined;
}

/** Every port the demo opens, all ephemeral (the task server's since the protocol merged). */
const DEMO_PORTS = ['--port', '0', '--tcp-port', '0', '--task-port', '0', '--diag-port', '0'];

const LISTENER = `require('node:http').createServer((q, s) => s.end('ok')).listen(0, '127.0.0.1', function () { console.log('ready ' + this.address().port); });`;

/**
 * The modules dist/cli/main.js imports (berth's library, the CLI's logger with pino and
 * pino-pretty, its flags, demo services, ...), read from main.js itself so the list follows the
 * CLI; main.js is left out, since importing it runs the command.
 */
function cliModules(): string[] {
  const main = readFileSync(CLI, 'utf8');
  const relative = [...main.matchAll(/^import [^;]*? from '(\.{1,2}\/[^']+)';$/gm)].map(
    (m) => m[1]!,
  );
  if (relative.length === 0) throw new Error(`startup: no imports found in ${CLI}`);
  return relative.map((m) => pathToFileURL(join(dirname(CLI), m)).href);
}

const sides = (): readonly Side[] => [
  {
    key: 'berth',
    label: '`berth demo` → `/ready` 200',
    args: [CLI, 'demo', ...DEMO_PORTS],
    // The runner's `started: http ..., echo ..., diagnostics 127.0.0.1:PORT` pino line.
    ready: /"msg":"started: .*diagnostics 127\.0\.0\.1:\d+/,
    url: (line) => {
      const port = /diagnostics 127\.0\.0\.1:(\d+)/.exec(line)?.[1];
      return port && `http://127.0.0.1:${port}/ready`;
    },
  },
  {
    key: 'node',
    label: '`node -e`: one `http` listener → 200',
    args: ['-e', LISTENER],
    ready: /^ready \d+$/,
    url: (line) => `http://127.0.0.1:${line.split(' ')[1]}/`,
  },
  {
    key: 'import',
    label: '`node -e`: load every module `berth demo` loads, then one listener → 200',
    args: [
      '-e',
      `Promise.all(${JSON.stringify(cliModules())}.map((m) => import(m))).then(() => { ${LISTENER} });`,
    ],
    ready: /^ready \d+$/,
    url: (line) => `http://127.0.0.1:${line.split(' ')[1]}/`,
  },
];

interface Start {
  /** Spawn to the stdout line naming the port. */
  lineMs: number;
  /** Spawn to the first 200 answer. */
  readyMs: number;
  /** SIGTERM to exit. */
  exitMs: number;
  exitCode: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One GET on a fresh connection: its status, or undefined if it failed (not listening yet). */
function get(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode));
      res.once('error', () => resolve(undefined));
    });
    req.setTimeout(1_000, () => req.destroy());
    req.once('error', () => resolve(undefined));
    req.end();
  });
}

async function startOnce(side: Side): Promise<Start> {
  const t0 = performance.now();
  const child: Child = spawnNode(side.key, side.args, { timeout: 60_000 });
  try {
    const line = await child.line(side.ready, 30_000);
    const lineMs = performance.now() - t0;
    const url = side.url(line);
    if (!url) throw new Error(`${side.key}: no address in ${line}`);
    // Poll as tightly as a probe reasonably could: at once, then every millisecond.
    const deadline = t0 + 30_000;
    let status = await get(url);
    while (status !== 200) {
      if (performance.now() > deadline || !child.running) {
        throw new Error(
          `${side.key}: ${url} never answered 200 (last ${status})\n${child.stderr()}`,
        );
      }
      await sleep(1);
      status = await get(url);
    }
    const readyMs = performance.now() - t0;
    const t1 = performance.now();
    const exitCode = await child.stop('SIGTERM', 10_000);
    return { lineMs, readyMs, exitMs: performance.now() - t1, exitCode };
  } finally {
    await child.stop();
  }
}

export const startupSuite: Suite = {
  name: 'startup',
  title: '`berth demo` to /ready vs a bare node listener',
  target: 'report the difference in ms (no fixed target)',
  pending: async () => undefined,
  async run(ctx): Promise<SuiteReport> {
    await ensureBuilt(ctx.log);
    const SIDES = sides();
    const rounds = ctx.rounds ?? (ctx.quick ? 3 : 11);
    const starts = new Map<string, Start[]>(SIDES.map((s) => [s.key, []]));
    // One unmeasured start of each first: the first process to load a file pays the disk cache.
    for (const side of SIDES) await startOnce(side);
    for (let round = 0; round < rounds; round++) {
      const order = SIDES.map((_, i) => SIDES[(i + round) % SIDES.length]!);
      for (const side of order) {
        const s = await startOnce(side);
        starts.get(side.key)!.push(s);
        ctx.log(
          `round ${round + 1}/${rounds} ${side.key}: line ${fmt(s.lineMs, 1)} ms, 200 at ${fmt(s.readyMs, 1)} ms, SIGTERM to exit ${fmt(s.exitMs, 1)} ms (exit ${s.exitCode})`,
        );
      }
    }
    const node = starts.get('node')!;
    const rows = SIDES.map((side) => {
      const ss = starts.get(side.key)!;
      const ready = ss.map((s) => s.readyMs);
      // Per round, so the machine's drift between rounds cancels.
      const diff = ss.map((s, i) => s.readyMs - node[i]!.readyMs);
      return [
        side.label,
        fmt(median(ready), 1),
        fmtRange(ready, 1),
        side.key === 'node' ? '–' : `+${fmt(median(diff), 1)}`,
        fmt(median(ss.map((s) => s.lineMs)), 1),
        fmt(median(ss.map((s) => s.exitMs)), 1),
        [...new Set(ss.map((s) => s.exitCode))].join(', '),
      ];
    });
    const table: Table = {
      title: `Spawn to first 200, median of ${rounds} rounds (order rotates each round)`,
      columns: [
        'process',
        'spawn → 200 (ms)',
        'range (ms)',
        'difference vs `node -e` (ms, median of rounds)',
        'spawn → port on stdout (ms)',
        'SIGTERM → exit (ms)',
        'exit code',
      ],
      rows,
    };
    const berth = starts.get('berth')!;
    const imported = starts.get('import')!;
    const importCost = median(imported.map((s, i) => s.readyMs - node[i]!.readyMs));
    const startCost = median(berth.map((s, i) => s.readyMs - imported[i]!.readyMs));
    return {
      method: `Each process is spawned by the harness with \`${process.execPath.split('/').pop()}\` (${process.version}) and timed from \`spawn()\` to the end of the first 200 answer: berth's built CLI, \`node dist/cli/main.js demo ${DEMO_PORTS.join(' ')}\` (its HTTP, TCP echo, task and diagnostics services under the runner), polled on \`/ready\` at the diagnostics port its \`started:\` log line names; against \`node -e\` opening one \`http\` listener on port 0 and printing the port, polled on \`/\`. Polling starts when the port is printed and repeats every 1 ms on a fresh connection. Both run plain JavaScript without a loader; dist/ is built with \`npm run build\` at the start of the suite, and one unmeasured start of each comes first. Then SIGTERM: berth drains and exits 0; bare node has no handler and dies of the signal (exit 143).`,
      tables: [table],
      notes: [
        `Per round, berth's start took ${fmt(median(berth.map((s, i) => s.readyMs - node[i]!.readyMs)), 1)} ms more than bare node (median). Loading the modules \`berth demo\` loads accounts for about ${fmt(importCost, 1)} ms of it (third row against second); constructing and starting the demo's services and the runner, and writing the log line, for about ${fmt(startCost, 1)} ms (first row against third). Medians of per-round differences, so they need not add up exactly.`,
      ],
    };
  },
};
