/**
 * What does HttpService's request path cost, piece by piece? Runs the http suite's trial (50
 * keep-alive connections from autocannon) against variants of the raw `http.createServer`
 * fixture (bench/fixtures/http-variants.ts), each adding one piece of HttpService's per-request
 * work, plus HttpService itself; rounds rotate the order. Prints server CPU µs per request,
 * median, and its ratio to plain `http`.
 *
 *   node --import tsx bench/tools/http-request-variants.ts [--rounds 8] [variant...]
 *
 * Variants: node, listener, close, close-on, close-shared, close-record, bytes-read, set, now,
 * histogram, array-hist, book, book-arrays, book-counter, book-lean, book-shared, book-channels,
 * book-lean-noidle, berth-nometrics, berth (default: all). About 5.5 s per variant per round.
 */

import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, installExitHandlers } from '../lib/child.js';
import { fmt, median } from '../lib/stats.js';
import { type Target, trial } from '../suites/http.js';

const ALL = [
  'node',
  'listener',
  'close',
  'close-on',
  'close-shared',
  'close-record',
  'bytes-read',
  'set',
  'now',
  'histogram',
  'array-hist',
  'book',
  'book-arrays',
  'book-counter',
  'book-lean',
  'book-shared',
  'book-channels',
  'book-lean-noidle',
  'berth-nometrics',
  'berth',
];
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '8' },
    duration: { type: 'string', default: '3000' },
  },
});
const variants = positionals.length > 0 ? positionals : ALL;
const rounds = Number(values.rounds);
installExitHandlers();

const target = (variant: string): Target =>
  variant === 'berth'
    ? { label: 'berth', script: join(BENCH_DIR, 'fixtures', 'http-berth.ts') }
    : {
        label: variant,
        script: join(BENCH_DIR, 'fixtures', 'http-variants.ts'),
        args: ['--variant', variant],
      };

const cpu = new Map<string, number[]>(variants.map((v) => [v, []]));
const rate = new Map<string, number[]>(variants.map((v) => [v, []]));
for (let round = 0; round < rounds; round++) {
  const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
  for (const variant of order) {
    const t = await trial(target(variant), { warmup: 1_000, duration: Number(values.duration) });
    cpu.get(variant)!.push(t.cpuPerRequest);
    rate.get(variant)!.push(t.requestsPerSec);
    console.log(
      `round ${round + 1}/${rounds} ${variant}: ${fmt(t.cpuPerRequest, 2)} µs/req, ${fmt(t.requestsPerSec)} req/s, server busy ${fmt(t.serverBusy * 100)}%`,
    );
  }
}
// Per-round ratios to `node` (same round, so the machine's drift cancels), then their median.
const base = cpu.get('node');
console.log(
  '\nvariant           µs/req (median)  × node (median of rounds)  req/s (median)  CPU per round',
);
for (const [variant, values] of cpu) {
  const ratio = base ? median(values.map((v, i) => v / base[i]!)) : Number.NaN;
  console.log(
    `${variant.padEnd(17)} ${fmt(median(values), 2).padStart(15)}  ${fmt(ratio, 3).padStart(25)}  ${fmt(median(rate.get(variant)!)).padStart(14)}  ${values.map((v) => fmt(v, 2)).join(' ')}`,
  );
}
process.exit(0);
