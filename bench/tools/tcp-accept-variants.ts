/**
 * What does TcpService's accept path cost, piece by piece? Runs the tcp suite's connection-rate
 * trial against variants of the raw `net` echo server (bench/fixtures/tcp-variants.ts), each
 * adding one piece of TcpService's per-connection work, plus TcpService itself; rounds rotate
 * the order. Prints server CPU µs per connection, median, and its ratio to plain `net`.
 *
 *   node --import tsx bench/tools/tcp-accept-variants.ts [--rounds 10] [--mode connrate|bulk] [variant...]
 *
 * Variants: net, set, list, listener, book, book-list, berth-nometrics, berth (default: all).
 * Takes about 5.5 s per variant per round.
 */

import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, installExitHandlers } from '../lib/child.js';
import { fmt, median } from '../lib/stats.js';
import { type Target, trial, WORKLOADS } from '../suites/tcp.js';

const ALL = ['net', 'set', 'list', 'listener', 'book', 'book-list', 'berth-nometrics', 'berth'];
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '10' },
    mode: { type: 'string', default: 'connrate' },
  },
});
const variants = positionals.length > 0 ? positionals : ALL;
const rounds = Number(values.rounds);
installExitHandlers();

const target = (variant: string): Target =>
  variant === 'berth'
    ? { label: 'berth', script: join(BENCH_DIR, 'fixtures', 'tcp-berth.ts') }
    : {
        label: variant,
        script: join(BENCH_DIR, 'fixtures', 'tcp-variants.ts'),
        args: ['--variant', variant],
      };

const workload = WORKLOADS.find((w) => w.mode === values.mode);
if (!workload) throw new Error(`--mode must be connrate or bulk, got ${values.mode}`);
const cpu = new Map<string, number[]>(variants.map((v) => [v, []]));
const rate = new Map<string, number[]>(variants.map((v) => [v, []]));
for (let round = 0; round < rounds; round++) {
  const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
  for (const variant of order) {
    const t = await trial(target(variant), workload, { warmup: 1_000, duration: 3_000 });
    cpu.get(variant)!.push(t.cpuPerUnit);
    rate.get(variant)!.push(t.value);
    console.log(
      `round ${round + 1}/${rounds} ${variant}: ${fmt(t.cpuPerUnit, 1)} ${workload.cpuUnit}, ${fmt(t.value)} ${workload.unit}`,
    );
  }
}
const base = median(cpu.get('net') ?? []);
const baseRate = median(rate.get('net') ?? []);
console.log(
  `\nvariant          ${workload.cpuUnit} (median)  × net   ${workload.unit} (median)  × net   CPU per round`,
);
for (const [variant, values] of cpu) {
  const m = median(values);
  const r = median(rate.get(variant)!);
  console.log(
    `${variant.padEnd(16)} ${fmt(m, 2).padStart(15)}  ${fmt(m / base, 3).padStart(5)}  ${fmt(r).padStart(15)}  ${fmt(r / baseRate, 3).padStart(5)}   ${values.map((v) => fmt(v, 1)).join(' ')}`,
  );
}
process.exit(0);
