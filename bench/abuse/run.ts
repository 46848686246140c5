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
import { request } from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { encodeClientHello, encodeFrame, TaskClient } from '../../src/index.js';
import { ensureBuilt } from '../lib/build.js';
import { ROOT } from '../lib/child.js';
import { describeMachine } from '../lib/report.js';
import {
  type FloodResult,
  fuzzTaskPort,
  type ProbeResult,
  probe,
  type SlowlorisResult,
  slowloris,
  startSlowloris,
  type TaskFloodResult,
  taskFlood,
  writeFlood,
} from './attacks.js';
import { type Demo, RssSampler, startDemo } from './demo.js';

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

const MiB = 1_048_576;
const mb = (bytes: number) => `${Math.round(bytes / 1e6)} MB`;
const ms = (n: number) => `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;

/** A berth build to attack: this checkout's, or one at a commit. */
interface Build {
  label: string;
  cli: string;
  cwd: string;
}

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

/** One attack's figures against one build. */
interface Run {
  build: string;
  rssBefore: number;
  rssPeak: number;
  rssAfter: number;
  /** What the attacker met, in words. */
  verdict: string;
  /** The honest client's latencies, when one ran. */
  honest?: ProbeResult;
  /** Bytes the server still held (task stats) after the attacker left, when it reports them. */
  heldAfter?: string;
  /** Extra figures (exit code and time of a drain). */
  extra?: string;
}

interface Attack {
  name: string;
  /** The RELIABILITY.md section it is reported under. */
  group: 'memory' | 'slow' | 'fuzz';
  title: string;
  /** What is sent, for the report. */
  sends: string;
  /** Runs against a started demo; resolves with the verdict. */
  run(demo: Demo, build: Build): Promise<Omit<Run, 'build' | 'rssBefore' | 'rssPeak' | 'rssAfter'>>;
  /** Start something other than the demo (e.g. `berth serve` of a module). */
  command?: (build: Build) => string[];
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

function describeFlood(r: FloodResult): string {
  if (r.cut) return `cut after ${mb(r.sent)} in ${(r.elapsed / 1e3).toFixed(1)} s`;
  if (r.throttled) return `throttled: the server stopped reading after ${mb(r.sent)}`;
  return `all ${mb(r.sent)} taken in ${(r.elapsed / 1e3).toFixed(1)} s`;
}

/** 1,024 echo tasks of 4 MiB with initial window `window`, reading (or not) what comes. */
async function bigTasks(demo: Demo, window: number, read: boolean) {
  const honest = await sumProbe(demo);
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

/** 500 task connections, each sending `prefix` then a byte of `drip` a second, for 15 s. */
async function slowTasks(demo: Demo, prefix: Buffer, drip: Buffer) {
  const honest = await sumProbe(demo);
  const r = await slowloris({
    port: demo.ports.tasks!,
    connections: 500,
    prefix,
    drip,
    dripSize: 1,
    everyMs: 1_000,
    duration: 15_000,
  });
  return { verdict: describeSlowloris(r, 15), honest: await honest.stop() };
}

async function sumProbe(demo: Demo): Promise<{ stop(): Promise<ProbeResult> }> {
  const client = await TaskClient.connect({ port: demo.ports.tasks! });
  const p = probe(() => client.call('sum', '1 2 3'));
  return {
    async stop() {
      const r = await p.stop();
      client.destroy();
      return r;
    },
  };
}

function helloProbe(demo: Demo): { stop(): Promise<ProbeResult> } {
  return probe(
    () =>
      new Promise<void>((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: demo.ports.http!, path: '/hello', agent: false },
          (res) => {
            res.resume();
            res.on('end', resolve);
          },
        );
        req.on('error', reject);
        req.end();
      }),
  );
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
      const honest = helloProbe(demo);
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
      const honest = await sumProbe(demo);
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
    async run(demo) {
      const honest = await sumProbe(demo);
      const r = await writeFlood({
        port: demo.ports.echo!,
        chunk: Buffer.alloc(MiB, 'e'),
        total: 1_024 * MiB,
        timeout: 30_000,
      });
      return { verdict: describeFlood(r), honest: await honest.stop() };
    },
  },
  {
    name: 'careless-echo',
    group: 'memory',
    title: 'TcpService: a handler that ignores backpressure (`berth serve`)',
    sends:
      'the same 1 GiB to `for await (const chunk of conn) conn.write(chunk)` served by `berth serve`, reading nothing',
    command: (build) => ['serve', carelessModule(build)],
    async run(demo) {
      const r = await writeFlood({
        port: demo.ports.careless!,
        chunk: Buffer.alloc(MiB, 'e'),
        total: 1_024 * MiB,
        timeout: 30_000,
      });
      const stats = (await demo.vars()).services.careless as { overflows?: number } | undefined;
      const overflows = stats?.overflows === undefined ? '' : `; overflows: ${stats.overflows}`;
      return { verdict: describeFlood(r) + overflows };
    },
  },
  {
    name: 'http-pipeline',
    group: 'memory',
    title: 'HTTP: pipelined requests, nothing read, then gone; then SIGTERM',
    sends:
      '`GET /hello` pipelined on one connection until the server stops reading, never reading a response; then the client resets and the demo gets SIGTERM',
    async run(demo) {
      const honest = helloProbe(demo);
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
      };
    },
  },
];

/** A `berth serve` module with the careless echo, importing the build under test. */
function carelessModule(build: Build): string {
  const dir = join(ROOT, '.bench-tmp', 'abuse');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `careless-${build.label.replace(/\W/g, '_')}.mjs`);
  const index = join(build.cwd, 'dist', 'index.js');
  writeFileSync(
    file,
    `import { TcpService } from ${JSON.stringify(index)};\n` +
      'export default ({ host }) => [new TcpService({ name: "careless", host, port: 0, handler: async (conn) => { for await (const chunk of conn) conn.write(chunk); } })];\n',
  );
  return file;
}

async function runOne(attack: Attack, build: Build): Promise<Run> {
  const demo = await startDemo({
    cli: build.cli,
    cwd: build.cwd,
    command: attack.command?.(build) ?? ['demo'],
    args: ['--host', '127.0.0.1'],
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
    return {
      build: build.label,
      rssBefore: rss.before,
      rssPeak: peak,
      rssAfter,
      ...result,
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
    '| build | RSS before | peak | after | what the attacker met | honest client (p50 / p99 / max, failures) | held after (buffered + outbound) |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const r of runs) {
    const honest = r.honest
      ? `${ms(r.honest.p50)} / ${ms(r.honest.p99)} / ${ms(r.honest.max)}, ${r.honest.failures} of ${r.honest.count + r.honest.failures}`
      : '—';
    lines.push(
      `| ${r.build} | ${mb(r.rssBefore)} | ${mb(r.rssPeak)} (+${mb(r.rssPeak - r.rssBefore)}) | ${r.rssAfter === 0 ? 'exited' : mb(r.rssAfter)} | ${r.verdict}${r.extra ? `; ${r.extra}` : ''} | ${honest} | ${r.heldAfter ?? '—'} |`,
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
const grouped: Record<Attack['group'], string[]> = { memory: [], slow: [], fuzz: [] };
for (const attack of chosen) {
  const runs: Run[] = [];
  for (const build of builds) {
    console.log(`${attack.name} against ${build.label} ...`);
    const run = await runOne(attack, build);
    console.log(
      `  rss ${mb(run.rssBefore)} -> ${mb(run.rssPeak)} -> ${mb(run.rssAfter)}; ${run.verdict}${run.extra ? `; ${run.extra}` : ''}`,
    );
    runs.push(run);
  }
  sections.push(render(attack, runs));
  grouped[attack.group].push(render(attack, runs));
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

Machine: ${machine.cores} cores, ${machine.cpu}, ${machine.memory}; Node ${machine.node}; ${machine.os}; load before ${machine.loadBefore}; ${machine.date}.

The limits these figures rest on, and what a client sees at each, are in docs/task-server.md
("What one client can make the server hold"), docs/tcp-service.md ("Writing: backpressure, and
its ceiling") and docs/errors.md.

## Memory and buffers

${grouped.memory.join('\n\n')}

## Slow clients

${grouped.slow.join('\n\n')}

## Fuzz

${grouped.fuzz.join('\n\n')}
`;
  writeFileSync(join(ROOT, 'RELIABILITY.md'), doc);
  console.log('wrote RELIABILITY.md');
}
process.exit(0);
