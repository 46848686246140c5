/**
 * Summarises V8 CPU profiles (`--cpu-prof`) side by side: self time per function, as a share of
 * the samples, for each profile given, so a berth fixture's profile can be read against its
 * baseline's. Usage:
 *   node --import tsx bench/tools/profile-summary.ts [--top N] [--filter TEXT] [--from MS | --last MS] [--no-idle] a.cpuprofile b.cpuprofile ...
 * With --filter only functions whose name or file contains TEXT are listed (e.g. `src/`).
 * With --from only samples taken MS ms or more after the profile began count (skip start-up and
 * warm-up); with --last only those of its last MS ms (a drain at the end of a fixture's life);
 * with --no-idle, `(idle)` samples are left out, so shares are of busy time.
 */

import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string', default: '30' },
    filter: { type: 'string' },
    from: { type: 'string', default: '0' },
    last: { type: 'string' },
    'no-idle': { type: 'boolean', default: false },
  },
});

function key(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const file = url
    ? `${url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${lineNumber + 1}`
    : '';
  return `${functionName || '(anonymous)'} ${file}`.trim();
}

/** Share of all samples (0..1) spent in each function itself, and the total µs. */
function selfShares(file: string): { shares: Map<string, number>; totalMs: number } {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const time = new Map<string, number>();
  let total = 0;
  let elapsed = 0;
  const length = profile.timeDeltas.reduce((sum, dt) => sum + dt, 0);
  const from =
    values.last === undefined ? Number(values.from) * 1000 : length - Number(values.last) * 1000;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    elapsed += dt;
    const node = byId.get(id);
    if (!node || elapsed < from) return;
    const k = key(node);
    if (values['no-idle'] && k === '(idle)') return;
    total += dt;
    time.set(k, (time.get(k) ?? 0) + dt);
  });
  const shares = new Map<string, number>();
  for (const [k, t] of time) shares.set(k, t / total);
  return { shares, totalMs: total / 1000 };
}

const profiles = positionals.map((f) => ({ name: basename(f), ...selfShares(f) }));
const keys = new Set(profiles.flatMap((p) => [...p.shares.keys()]));
const filter = values.filter;
const rows = [...keys]
  .filter((k) => !filter || k.includes(filter))
  .map((k) => ({ k, shares: profiles.map((p) => p.shares.get(k) ?? 0) }))
  .sort((a, b) => Math.max(...b.shares) - Math.max(...a.shares))
  .slice(0, Number(values.top));

for (const [i, p] of profiles.entries())
  console.log(`[${i}] ${p.name}: ${p.totalMs.toFixed(0)} ms sampled`);
console.log(`${profiles.map((_, i) => `  [${i}]`).join('')}  function`);
for (const row of rows) {
  console.log(
    `${row.shares.map((s) => `${(s * 100).toFixed(2).padStart(6)}%`).join('')}  ${row.k}`,
  );
}
