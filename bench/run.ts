/**
 * `npm run bench [-- <suite>...] [--quick] [--rounds N] [--only PART] [--profile] [--no-write] [--note TEXT]`
 *
 * Runs the benchmark suites (all, or the ones named), prints their tables, and writes each
 * suite's section of BENCHMARKS.md. A quick run (`--quick`) is for development: short rounds,
 * and BENCHMARKS.md is left alone unless `--write` is given. Every child process started is
 * stopped by pid before this exits, on failure and on Ctrl-C too.
 */

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { COMPILED, ensureCompiled } from './lib/build.js';
import { installExitHandlers, killAll, ROOT, useCompiled } from './lib/child.js';
import { describeMachine, renderSection, renderText, writeBenchmarks } from './lib/report.js';
import type { Suite } from './lib/suite.js';
import { channelSuite } from './suites/channel.js';
import { drainSuite } from './suites/drain.js';
import { httpSuite } from './suites/http.js';
import { startupSuite } from './suites/startup.js';
import { tasksSuite } from './suites/tasks.js';
import { tcpSuite } from './suites/tcp.js';

const SUITES: readonly Suite[] = [
  tcpSuite,
  httpSuite,
  drainSuite,
  tasksSuite,
  channelSuite,
  startupSuite,
];

const USAGE = `usage: npm run bench [-- <suite>...] [options]

suites: ${SUITES.map((s) => s.name).join(', ')} (default: all)

options:
  --quick        short rounds for development; does not write BENCHMARKS.md
  --rounds N     rounds per comparison (default: the suite's, 7 for tcp, 5 for drain)
  --only PART    run only this part of a suite, repeatable (drain: load, idle, cluster);
                 for development: does not write BENCHMARKS.md
  --profile      write V8 CPU profiles of the server fixtures (both sides) of tcp and
                 http, and of every strategy's idle-socket stop in drain, to
                 .bench-tmp/profiles/; summarise with bench/tools/profile-summary.ts
  --write        write BENCHMARKS.md even in --quick mode
  --no-write     do not write BENCHMARKS.md
  --note TEXT    add TEXT as a note to every section written (e.g. "machine shared")
  --tsx          run the fixtures and load generators through tsx, not compiled (development;
                 does not write BENCHMARKS.md)
  --help`;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    only: { type: 'string', multiple: true },
    profile: { type: 'boolean', default: false },
    write: { type: 'boolean' },
    'no-write': { type: 'boolean', default: false },
    note: { type: 'string', multiple: true, default: [] },
    tsx: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const unknown = positionals.filter((p) => !SUITES.some((s) => s.name === p));
if (unknown.length > 0) {
  console.error(`bench: unknown suite ${unknown.join(', ')}\n\n${USAGE}`);
  process.exit(2);
}
const rounds = values.rounds === undefined ? undefined : Number(values.rounds);
if (rounds !== undefined && !(Number.isInteger(rounds) && rounds >= 1)) {
  console.error(`bench: --rounds must be a positive integer, got ${values.rounds}`);
  process.exit(2);
}
const selected =
  positionals.length === 0 ? SUITES : SUITES.filter((s) => positionals.includes(s.name));
const only = values.only?.length ? values.only : undefined;
if (only && values.write) {
  console.error('bench: --only runs part of a suite, which is never written to BENCHMARKS.md');
  process.exit(2);
}
const write = values['no-write'] || only || values.tsx ? false : (values.write ?? !values.quick);
// Quoted for a POSIX shell, so the command recorded in BENCHMARKS.md can be pasted back.
const quote = (arg: string) =>
  /^[\w./:=@%+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
const args = process.argv.slice(2).map(quote);
const command = `npm run bench${args.length > 0 ? ` -- ${args.join(' ')}` : ''}`;

installExitHandlers();
// The issue's budget is 15 minutes for everything; past 25, something is stuck: stop it all.
const watchdog = setTimeout(() => {
  killAll();
  console.error('bench: over 25 minutes, stopped every child process');
  process.exit(1);
}, 25 * 60_000);
watchdog.unref();

let profileDir: string | undefined;
if (values.profile) {
  profileDir = join(ROOT, '.bench-tmp', 'profiles');
  mkdirSync(profileDir, { recursive: true });
}

if (!values.tsx) {
  await ensureCompiled((m) => console.log(`bench: ${m}`));
  useCompiled(COMPILED);
}

const started = performance.now();
const sections = new Map<string, string>();
let failed = false;
for (const suite of selected) {
  const machine = describeMachine();
  const t0 = performance.now();
  console.log(`\n== ${suite.name}: ${suite.title}`);
  const log = (message: string) => console.log(`  ${suite.name}: ${message}`);
  const pending = await suite.pending();
  if (pending) {
    console.log(`  ${pending}`);
    sections.set(
      suite.name,
      renderSection({ suite, machine, command, seconds: 0, status: pending, notes: [] }),
    );
    continue;
  }
  try {
    const report = await suite.run({ quick: values.quick, rounds, profileDir, only, log });
    const seconds = (performance.now() - t0) / 1000;
    for (const table of report.tables) console.log(`\n${renderText(table)}`);
    for (const note of report.notes) console.log(`  note: ${note}`);
    console.log(`  (${suite.name} took ${Math.round(seconds)} s)`);
    sections.set(
      suite.name,
      renderSection({
        suite,
        machine,
        command,
        seconds,
        report,
        notes: values.note,
        compiled: !values.tsx,
      }),
    );
  } catch (error) {
    failed = true;
    killAll();
    console.error(`  ${suite.name} failed: ${(error as Error).stack ?? error}`);
  }
}

const total = (performance.now() - started) / 1000;
console.log(`\nbench: ${selected.length} suite(s) in ${Math.round(total)} s`);
if (write && sections.size > 0) {
  writeBenchmarks(
    join(ROOT, 'BENCHMARKS.md'),
    SUITES.map((s) => s.name),
    sections,
  );
  console.log('bench: wrote BENCHMARKS.md');
} else if (!write) {
  console.log('bench: BENCHMARKS.md not written (quick run, --only or --no-write)');
}
if (profileDir) console.log(`bench: CPU profiles in ${profileDir}`);
killAll();
process.exit(failed ? 1 : 0);
