/**
 * `npm run abuse [-- --base REF] [--only NAME]... [--no-write]`
 *
 * The abuse suite: hostile and broken clients against a running `berth demo` (this checkout's
 * dist/, built first), each bounded in bytes and time, on loopback only, every process ended by
 * pid. For each attack it records the server's resident memory (before, peak, and after the
 * attacker left), what an honest client saw meanwhile, and what the server did to the attacker;
 * with `--base REF` the same attack runs against berth as it was at that commit, side by side.
 * Writes RELIABILITY.md (unless --no-write, or --only is given).
 */

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { encodeClientHello, encodeFrame } from '../../src/index.js';
import { ensureBuilt } from '../lib/build.js';
import { ROOT } from '../lib/child.js';
import { describeMachine } from '../lib/report.js';
import {
  describeFlood,
  fuzzTaskPort,
  helloProbe,
  type SlowlorisResult,
  slowloris,
  startSlowloris,
  sumProbe,
  type TaskFloodResult,
  taskFlood,
  writeFlood,
} from './attacks.js';
import { type Demo, RssSampler, startDemo } from './demo.js';
import { EDGE_ATTACKS } from './edge-attacks.js';
import {
  type Attack,
  type Build,
  broken,
  GROUPS,
  MiB,
  mb,
  ms,
  RSS_BOUND,
  type Run,
  serveModule,
  unreadFlood,
} from './suite.js';

const usage = (names: string) => `usage: npm run abuse [-- options]

options:
  --base REF    also run every attack against berth at this git commit, side by side
  --only NAME   run only this attack (repeatable): ${names}
  --no-write    do not write RELIABILITY.md
  --help`;

const { values } = parseArgs({
  options: {
    base: { type: 'string' },
    only: { type: 'string', multiple: true, default: [] },
    'no-write': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

/** src/ and its build files at `ref`, compiled once into .bench-tmp/abuse-refs/<sha>/dist. */
function buildAt(ref: string): Build {
  const sha = execFileSync('git', ['rev-parse', '--verify', `${ref}^{commit}`], {
    cwd: ROOT,
    encoding: 'utf8',
  }).trim();
  const dir = join(ROOT, '.bench-tmp', 'abuse-refs', sha.slice(0, 12));
  const cli = join(dir, 'dist', 'cli', 'main.js');
  if (!existsSync(cli)) {
    mkdirSync(dir, { recursive: true });
    execFileSync(
      '/bin/sh',
      [
        '-c',
        `git archive ${sha} src package.json tsconfig.json tsconfig.build.json | tar -x -C '${dir}'`,
      ],
      { cwd: ROOT },
    );
    if (!existsSync(join(dir, 'node_modules')))
      symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    execFileSync(
      process.execPath,
      [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'],
      {
        cwd: dir,
        stdio: 'inherit',
        timeout: 180_000,
      },
    );
  }
  return { label: `berth@${sha.slice(0, 7)}`, cli, cwd: dir };
}

function describeTaskFlood(r: TaskFloodResult): string {
  const errors = Object.entries(r.errors)
    .map(([code, n]) => `${n}× ${code}`)
    .join(', ');
  const parts = [
    `${r.tasksSent} tasks sent (${mb(r.sent)})`,
    r.fatal !== undefined ? `FATAL ${r.fatal}` : undefined,
    errors ? `ERROR ${errors}` : undefined,
    r.cut
      ? `cut after ${(r.elapsed / 1e3).toFixed(1)} s`
      : `still connected when it gave up at ${(r.elapsed / 1e3).toFixed(0)} s`,
  ];
  return parts.filter(Boolean).join('; ');
}

function describeSlowloris(r: SlowlorisResult, seconds: number): string {
  const cut = [...r.cut].sort((a, b) => a - b);
  const at = (q: number) => cut[Math.min(cut.length - 1, Math.floor(q * cut.length))] ?? 0;
  const parts = [`${r.opened} opened`];
  if (cut.length > 0) {
    parts.push(
      `${cut.length} cut after ${(at(0.5) / 1e3).toFixed(1)} s (median; all within ${((cut.at(-1) ?? 0) / 1e3).toFixed(1)} s)`,
    );
  }
  if (r.stillOpen > 0) parts.push(`${r.stillOpen} still open when it stopped at ${seconds} s`);
  return parts.join('; ');
}

/** 1,024 echo tasks of 4 MiB with initial window `window`, reading (or not) what comes. */
async function bigTasks(demo: Demo, window: number, read: boolean) {
  const honest = await sumProbe(demo.ports.tasks!);
  const r = await taskFlood({
    port: demo.ports.tasks!,
    tasks: 1_024,
    size: 4 * MiB,
    window,
    read,
    timeout: 30_000,
  });
  return { verdict: describeTaskFlood(r), honest: await honest.stop() };
}

/** The slow-client check: the server cut every connection, within twice the read timeout. */
function allCut(r: SlowlorisResult): Record<string, boolean> {
  return {
    'every connection cut within 12 s (twice the 5 s read timeout, with its granularity)':
      r.stillOpen === 0 && r.cut.length === r.opened && Math.max(...r.cut) <= 12_000,
  };
}

/** 500 task connections, each sending `prefix` then a byte of `drip` a second, for 15 s. */
async function slowTasks(demo: Demo, prefix: Buffer, drip: Buffer) {
  const honest = await sumProbe(demo.ports.tasks!);
  const r = await slowloris({
    port: demo.ports.tasks!,
    connections: 500,
    prefix,
    drip,
    dripSize: 1,
    everyMs: 1_000,
    duration: 15_000,
  });
  return { verdict: describeSlowloris(r, 15), honest: await honest.stop(), checks: allCut(r) };
}

async function heldAfter(demo: Demo): Promise<string | undefined> {
  const tasks = (await demo.vars()).services.tasks as
    | { bufferedBytes?: number; outboundBytes?: number }
    | undefined;
  if (tasks?.outboundBytes === undefined) return undefined;
  return `${tasks.bufferedBytes} + ${tasks.outboundBytes} bytes`;
}

/** A good client hello (little-endian, 1 MiB frames, a 256 KiB window). */
const HELLO = encodeClientHello({
  version: 1,
  byteOrder: 'le',
  flags: 0,
  maxFramePayload: 1_048_576,
  initialWindow: 262_144,
});

const ATTACKS: readonly Attack[] = [
  {
    name: 'task-slow-hello',
    group: 'slow',
    title: 'Task server: 500 connections trickling their hello',
    sends:
      '500 connections, each sending the first 4 bytes of a hello, then the rest a byte a second (it would be whole after 12 s); for 15 s',
    run: (demo) => slowTasks(demo, HELLO.subarray(0, 4), HELLO.subarray(4)),
  },
  {
    name: 'task-slow-frame',
    group: 'slow',
    title: 'Task server: 500 connections trickling a frame header after a good hello',
    sends:
      'a whole hello, then a `sum` task a byte a second (its header whole after 12 s), on 500 connections; for 15 s',
    run: (demo) => slowTasks(demo, HELLO, encodeFrame('le', 0x10, 1, 4, 1, Buffer.from('1 2'))),
  },
  {
    name: 'http-slowloris',
    group: 'slow',
    title: 'HTTP: 500 connections trickling request headers; then SIGTERM',
    sends:
      '500 connections, each sending `GET /hello HTTP/1.1` and a header line every 500 ms, never the blank line; for 20 s; then the demo gets SIGTERM with them still trickling',
    async run(demo) {
      const honest = helloProbe(demo.ports.http!);
      const attack = await startSlowloris({
        port: demo.ports.http!,
        connections: 500,
        prefix: Buffer.from('GET /hello HTTP/1.1\r\nHost: x\r\n'),
        drip: Buffer.from('X-Slow: 1\r\n'),
        dripSize: 11,
        everyMs: 500,
      });
      await new Promise((resolve) => setTimeout(resolve, 20_000));
      const seen = await honest.stop();
      const open = attack.open();
      const t0 = performance.now();
      const code = await demo.stop('SIGTERM', 15_000);
      const took = performance.now() - t0;
      await attack.stop();
      return {
        verdict: `500 opened; ${open} still open after 20 s (Node's headersTimeout is 60 s)`,
        honest: seen,
        extra: `SIGTERM with them trickling: exit ${code} in ${ms(took)}`,
        checks: { 'SIGTERM exits 0 within the 5 s deadline': code === 0 && took < 5_000 },
      };
    },
  },
  {
    name: 'task-fuzz',
    group: 'fuzz',
    title: 'Task server: fuzz over real sockets',
    sends:
      '3,000 connections (16 at a time), each random bytes, or a good hello then 1 to 8 frames of random types, codes, ids and payloads, some with a bit flipped or a length near 2³²; seeded, so a run repeats',
    async run(demo) {
      const honest = await sumProbe(demo.ports.tasks!);
      const r = await fuzzTaskPort({ port: demo.ports.tasks!, attempts: 3_000, seed: 16 });
      const seen = await honest.stop();
      const alive = demo.proc.exitCode === null;
      const tasks = (await demo.vars()).services.tasks as {
        protocolErrors: number;
        refused: number;
      };
      return {
        verdict: `${r.attempts} attempts: ${r.closed} ended by the server, ${r.waiting} left waiting for more bytes; ${tasks.protocolErrors} protocol errors and ${tasks.refused} refusals counted; the process ${alive ? 'stayed up' : 'DIED'}`,
        honest: seen,
        checks: { 'the process stays up': alive },
      };
    },
  },
  {
    name: 'task-window',
    group: 'memory',
    title: 'Task server: large tasks, a 1-byte window, never a WINDOW',
    sends:
      'hello with an initial window of 1 byte, then 1,024 `echo` tasks of 4 MiB each (4 GiB); reads what comes, grants nothing; gives up after 30 s',
    run: (demo) => bigTasks(demo, 1, true),
  },
  {
    name: 'task-unread',
    group: 'memory',
    title: 'Task server: large tasks, a full window, never reads',
    sends:
      '1,024 `echo` tasks of 4 MiB with an initial window of 2³²−1, and never reads a byte; gives up after 30 s',
    run: (demo) => bigTasks(demo, 0xffff_ffff, false),
  },
  {
    name: 'echo-flood',
    group: 'memory',
    title: 'TCP echo: 1 GiB in, nothing read',
    sends:
      '1 GiB in 1 MiB writes to the demo echo, reading nothing; stops when its writes stall for 3 s',
    run: async (demo) => unreadFlood(demo.ports.echo!, await sumProbe(demo.ports.tasks!)),
  },
  {
    name: 'careless-echo',
    group: 'memory',
    title: 'TcpService: a handler that ignores backpressure (`berth serve`)',
    sends:
      'the same 1 GiB to `for await (const chunk of conn) conn.write(chunk)` served by `berth serve`, reading nothing',
    command: (build) => [
      'serve',
      serveModule(
        build,
        'careless',
        'export default ({ host }) => [new berth.TcpService({ name: "careless", host, port: 0, handler: async (conn) => { for await (const chunk of conn) conn.write(chunk); } })];',
      ),
    ],
    async run(demo) {
      const r = await writeFlood({
        port: demo.ports.careless!,
        chunk: Buffer.alloc(MiB, 'e'),
        total: 1_024 * MiB,
        timeout: 30_000,
      });
      const stats = (await demo.vars()).services.careless as { overflows?: number } | undefined;
      const overflows = stats?.overflows === undefined ? '' : `; overflows: ${stats.overflows}`;
      return {
        verdict: describeFlood(r) + overflows,
        checks: { 'the connection is cut at maxWriteBuffer': r.cut },
      };
    },
  },
  {
    name: 'http-pipeline',
    group: 'memory',
    title: 'HTTP: pipelined requests, nothing read, then gone; then SIGTERM',
    sends:
      '`GET /hello` pipelined on one connection until the server stops reading, never reading a response; then the client resets and the demo gets SIGTERM',
    async run(demo) {
      const honest = helloProbe(demo.ports.http!);
      const r = await writeFlood({
        port: demo.ports.http!,
        chunk: Buffer.from('GET /hello HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(2_000)),
        total: 1_024 * MiB,
        timeout: 30_000,
        stallAfter: 2_000,
      });
      const seen = await honest.stop();
      await new Promise((resolve) => setTimeout(resolve, 500));
      const http = (await demo.vars()).services.http as { busy: number };
      const t0 = performance.now();
      const code = await demo.stop('SIGTERM', 15_000);
      return {
        verdict: describeFlood(r),
        honest: seen,
        extra: `after it left: ${http.busy} requests counted in flight; SIGTERM: exit ${code} in ${ms(performance.now() - t0)}`,
        checks: {
          'nothing counted in flight once it left': http.busy === 0,
          'SIGTERM exits 0': code === 0,
        },
      };
    },
  },
  ...EDGE_ATTACKS,
];

async function runOne(attack: Attack, build: Build): Promise<Run> {
  const demo = await startDemo({
    cli: build.cli,
    cwd: build.cwd,
    command: attack.command?.(build) ?? ['demo'],
    args: attack.start?.args ?? ['--host', '127.0.0.1'],
    ...(attack.start?.env ? { env: attack.start.env } : {}),
    ...(attack.start?.ulimit ? { ulimit: attack.start.ulimit } : {}),
  });
  try {
    await new Promise((resolve) => setTimeout(resolve, 1_000)); // settle after start
    const rss = new RssSampler(demo.pid);
    const result = await attack.run(demo, build);
    const peak = rss.stop();
    let rssAfter = demo.rss();
    let held: string | undefined;
    if (demo.proc.exitCode === null) {
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      rssAfter = demo.rss();
      held = await heldAfter(demo).catch(() => undefined);
    }
    const checks: Record<string, boolean> = {
      ...result.checks,
      [`RSS grows less than ${mb(RSS_BOUND)}`]: peak - rss.before < RSS_BOUND,
    };
    if (result.honest && !attack.honestMayFail) {
      checks['the honest client never fails'] = result.honest.failures === 0;
    }
    return {
      build: build.label,
      rssBefore: rss.before,
      rssPeak: peak,
      rssAfter,
      ...result,
      checks,
      ...(held === undefined ? {} : { heldAfter: held }),
    };
  } finally {
    await demo.stop();
  }
}

function render(attack: Attack, runs: Run[]): string {
  const lines = [
    `### ${attack.title}`,
    '',
    `Sends: ${attack.sends}.`,
    '',
    `Holds when: ${Object.keys(runs[0]?.checks ?? {}).join('; ')}.`,
    '',
    `Re-run: \`npm run abuse -- --only ${attack.name}${values.base ? ` --base ${values.base}` : ''}\``,
    '',
    '| build | held? | RSS before | peak | after | what the attacker met | honest client (p50 / p99 / max, failures) | held after (buffered + outbound) |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of runs) {
    const honest = r.honest
      ? `${ms(r.honest.p50)} / ${ms(r.honest.p99)} / ${ms(r.honest.max)}, ${r.honest.failures} of ${r.honest.count + r.honest.failures}`
      : '—';
    lines.push(
      `| ${r.build} | ${broken(r).length === 0 ? '✅ held' : `❌ broke: ${broken(r).join('; ')}`} | ${mb(r.rssBefore)} | ${mb(r.rssPeak)} (+${mb(r.rssPeak - r.rssBefore)}) | ${r.rssAfter === 0 ? 'exited' : mb(r.rssAfter)} | ${r.verdict}${r.extra ? `; ${r.extra}` : ''} | ${honest} | ${r.heldAfter ?? '—'} |`,
    );
  }
  return lines.join('\n');
}

const names = ATTACKS.map((a) => a.name).join(', ');
if (values.help) {
  console.log(usage(names));
  process.exit(0);
}
for (const name of values.only) {
  if (!ATTACKS.some((a) => a.name === name)) {
    console.error(`unknown attack ${name}: ${names}`);
    process.exit(2);
  }
}
const chosen =
  values.only.length > 0 ? ATTACKS.filter((a) => values.only.includes(a.name)) : ATTACKS;
const machine = describeMachine();
await ensureBuilt((m) => console.log(m));
const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
  cwd: ROOT,
  encoding: 'utf8',
}).trim();
const builds: Build[] = [
  { label: `berth (this checkout, ${head})`, cli: join(ROOT, 'dist', 'cli', 'main.js'), cwd: ROOT },
];
if (values.base) builds.push(buildAt(values.base));
const t0 = performance.now();
const sections: string[] = [];
const grouped = new Map<Attack['group'], string[]>();
for (const attack of chosen) {
  const runs: Run[] = [];
  for (const build of builds) {
    console.log(`${attack.name} against ${build.label} ...`);
    // An attack that cannot run against a build (an older one lacks an export) says so in its
    // row rather than end the suite.
    const run = await runOne(attack, build).catch(
      (error: Error): Run => ({
        build: build.label,
        rssBefore: 0,
        rssPeak: 0,
        rssAfter: 0,
        verdict: `could not run: ${error.message.split('\n', 1)[0]}`,
        checks: { 'the attack runs': false },
      }),
    );
    console.log(
      `  rss ${mb(run.rssBefore)} -> ${mb(run.rssPeak)} -> ${mb(run.rssAfter)}; ${run.verdict}${run.extra ? `; ${run.extra}` : ''}`,
    );
    runs.push(run);
  }
  sections.push(render(attack, runs));
  grouped.set(attack.group, [...(grouped.get(attack.group) ?? []), render(attack, runs)]);
}
const took = (performance.now() - t0) / 1e3;
console.log(`\n${sections.join('\n\n')}\n\nabuse suite: ${took.toFixed(0)} s`);

if (!values['no-write'] && values.only.length === 0) {
  const doc = `# Reliability: what hostile clients did to \`berth demo\`

Regenerated by \`npm run abuse${values.base ? ` -- --base ${values.base}` : ''}\` (bench/abuse/run.ts; ${took.toFixed(0)} s). Each attack runs
against a fresh \`berth demo\` (or \`berth serve\`) in its own process on loopback, built from this
checkout's dist/${values.base ? `, and then against berth at ${values.base} (the behaviour before) in the same run` : ''}. RSS is the
server's resident memory read from /proc: before the attack, the peak sampled every 50 ms, and 2 s
after the attacker left (RSS rarely shrinks after a peak: freed memory is kept by the allocator,
so "held after" reads what the task server itself still holds from its stats). The honest
client runs beside the attacker from the harness process: \`sum\` on another task connection, or
\`GET /hello\` on another HTTP connection.

Each section says what must hold and each row whether it did: the attack's own checks, then the
suite's two, that the server's RSS grows less than ${mb(RSS_BOUND)} (every per-client bound the docs
give is far below it: 16 MiB in and 16 MiB out for a task client, 16 MiB of \`maxWriteBuffer\`) and
that the honest client never fails. A row for the commit before shows what the attack did then.

Machine: ${machine.cores} cores, ${machine.cpu}, ${machine.memory}; Node ${machine.node}; ${machine.os}; load before ${machine.loadBefore}; ${machine.date}.

The limits these figures rest on, and what a client sees at each, are in docs/task-server.md
("What one client can make the server hold"), docs/tcp-service.md ("Writing: backpressure, and
its ceiling"), docs/http-service.md ("What a client meets at each limit"), docs/diagnostics.md
("Out of file descriptors") and docs/errors.md.

${Object.entries(GROUPS)
  .filter(([key]) => grouped.has(key as Attack['group']))
  .map(([key, heading]) => `## ${heading}\n\n${grouped.get(key as Attack['group'])!.join('\n\n')}`)
  .join('\n\n')}
`;
  writeFileSync(join(ROOT, 'RELIABILITY.md'), doc);
  console.log('wrote RELIABILITY.md');
}
process.exit(0);
