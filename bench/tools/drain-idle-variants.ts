/**
 * The drain suite's idle-socket stop alone, for iterating on it: 5,000 keep-alive sockets idle
 * 2 s, then SIGTERM, against the variants named, in an order that rotates each round. Prints each
 * variant's stop time (measured in the server, as in the suite), median and range, the median of
 * its per-round ratios to the first variant or to `--base` (same round, so the machine's drift
 * cancels), and the median time until the load saw its last socket closed.
 *
 *   node --import tsx bench/tools/drain-idle-variants.ts [--rounds 8] [--base V] [--profile] [variant...]
 *
 * A variant is one of the suite's strategies (berth, core, http-terminator, stoppable, terminus,
 * reference), or `berth@<git ref>`: the berth fixture with src/ as it was at that commit
 * (extracted with `git archive` into .bench-tmp/drain-refs/, run against this worktree's
 * node_modules), so a change can be measured against its parent in one run, e.g.
 * `core berth@HEAD berth`. Default: `core berth`. With --profile each server writes a CPU
 * profile to .bench-tmp/profiles/ (read with profile-summary.ts --last 300 --no-idle). About
 * 4 s per variant per round.
 */

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { installExitHandlers, killAll, ROOT } from '../lib/child.js';
import { fmt, fmtRange, median } from '../lib/stats.js';
import { idleRun, STRATEGIES, type Strategy } from '../suites/drain.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '8' },
    base: { type: 'string' },
    profile: { type: 'boolean', default: false },
  },
});
const variants = positionals.length > 0 ? positionals : ['core', 'berth'];
const rounds = Number(values.rounds);
if (!(Number.isInteger(rounds) && rounds >= 1)) {
  console.error(`--rounds must be a positive integer, got ${values.rounds}`);
  process.exit(2);
}
installExitHandlers();

/** src/ and bench/ at `ref`, extracted once per commit; returns its berth fixture. */
function fixtureAt(ref: string): string {
  const sha = execFileSync('git', ['rev-parse', '--verify', `${ref}^{commit}`], {
    cwd: ROOT,
    encoding: 'utf8',
  }).trim();
  const dir = join(ROOT, '.bench-tmp', 'drain-refs', sha.slice(0, 12));
  const script = join(dir, 'bench', 'fixtures', 'drain-berth.ts');
  if (!existsSync(script)) {
    mkdirSync(dir, { recursive: true });
    execFileSync('/bin/sh', ['-c', `git archive ${sha} src bench | tar -x -C '${dir}'`], {
      cwd: ROOT,
    });
  }
  return script;
}

function strategy(variant: string): Strategy {
  const at = variant.indexOf('@');
  if (at !== -1 && variant.slice(0, at) === 'berth') {
    return { key: variant, label: variant, berth: true, script: fixtureAt(variant.slice(at + 1)) };
  }
  const known = STRATEGIES.find((s) => s.key === variant);
  if (!known) {
    console.error(
      `unknown variant ${variant}: ${STRATEGIES.map((s) => s.key).join(', ')} or berth@<ref>`,
    );
    process.exit(2);
  }
  return known;
}

const strategies = variants.map(strategy);
let profileDir: string | undefined;
if (values.profile) {
  profileDir = join(ROOT, '.bench-tmp', 'profiles');
  mkdirSync(profileDir, { recursive: true });
}

const stops = new Map<string, number[]>(variants.map((v) => [v, []]));
const lastCloses = new Map<string, number[]>(variants.map((v) => [v, []]));
for (let round = 0; round < rounds; round++) {
  const order = strategies.map((_, i) => strategies[(i + round) % strategies.length]!);
  for (const s of order) {
    const r = await idleRun(s, profileDir);
    stops.get(s.key)!.push(r.stopMs ?? Number.NaN);
    lastCloses.get(s.key)!.push(r.lastCloseMs);
    console.log(
      `round ${round + 1}/${rounds} ${s.key}: stop ${r.stopMs === undefined ? 'never' : `${fmt(r.stopMs, 1)} ms`}, last socket closed ${fmt(r.lastCloseMs, 1)} ms (client view), ${r.closedAfterShutdown}/${r.opened} closed`,
    );
  }
}

const baseName = values.base ?? variants[0]!;
const base = stops.get(baseName);
if (!base) {
  console.error(`--base ${baseName} is not one of the variants run`);
  process.exit(2);
}
console.log(
  `\nvariant          stop ms: median (range)   × ${baseName} (median of rounds)   last close, client (median)   per round`,
);
for (const [variant, ms] of stops) {
  const ratio = median(ms.map((v, i) => v / base[i]!).filter(Number.isFinite));
  console.log(
    `${variant.padEnd(16)} ${`${fmt(median(ms), 1)} (${fmtRange(ms)})`.padEnd(25)} ${fmt(ratio, 3).padStart(24)}   ${fmt(median(lastCloses.get(variant)!), 1).padStart(27)}   ${ms.map((v) => fmt(v, 1)).join(' ')}`,
  );
}
if (profileDir) console.log(`\nCPU profiles in ${profileDir}`);
killAll();
process.exit(0);
