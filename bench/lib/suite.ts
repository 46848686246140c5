/**
 * What a benchmark suite is to the harness: a name, how to tell whether the parts it measures
 * exist yet, and a run that returns tables. Suites print progress through `ctx.log`; the harness
 * prints the tables and writes them into BENCHMARKS.md.
 */

export interface SuiteContext {
  /** Short rounds for development; figures from a quick run are not written to BENCHMARKS.md. */
  readonly quick: boolean;
  /** Rounds (alternating berth and baselines) to run; the suite's default unless overridden. */
  readonly rounds: number | undefined;
  /** Write a V8 CPU profile of each berth server fixture into this directory. */
  readonly profileDir: string | undefined;
  /**
   * `--only`: run just these parts of a suite (the drain suite's `load`, `idle`, `cluster`), for
   * development; undefined runs every part. Such a run is never written to BENCHMARKS.md.
   */
  readonly only?: readonly string[] | undefined;
  log(message: string): void;
}

export interface Table {
  title: string;
  columns: string[];
  rows: string[][];
}

export interface SuiteReport {
  /** One or two sentences: what was measured, how, with which load. */
  method: string;
  tables: Table[];
  /** Misses with their size and cause, caveats, anything a reader must know to trust the rows. */
  notes: string[];
}

export interface Suite {
  readonly name: string;
  readonly title: string;
  /** The issue's target for this suite, in words. */
  readonly target: string;
  /** Undefined when the suite can run; otherwise why not (e.g. a component not merged yet). */
  pending(): Promise<string | undefined>;
  run(ctx: SuiteContext): Promise<SuiteReport>;
}

import { fmt, median, percentile } from './stats.js';

/** A ✅/❌ mark for a figure against a target, saying by how much it missed. */
export function mark(ok: boolean, miss?: string): string {
  return ok ? '✅ met' : `❌ missed${miss ? ` (${miss})` : ''}`;
}

/**
 * The verdict on per-round berth/baseline ratios against a `target` ratio: met when their median
 * reaches it. A miss says by how many points, and whether the middle half of the rounds
 * (25th–75th percentile) still reaches the target, in which case this run cannot tell the miss
 * from the machine's noise.
 */
export function ratioVerdict(ratios: readonly number[], target: number): string {
  const m = median(ratios);
  if (m >= target) return mark(true);
  const q1 = percentile(ratios, 25);
  const q3 = percentile(ratios, 75);
  const iqr = `middle rounds ${fmt(q1, 2)}–${fmt(q3, 2)}`;
  const by = `by ${fmt((target - m) * 100, 1)} points`;
  return q3 >= target ? `❌ missed ${by}, within noise (${iqr})` : mark(false, `${by}; ${iqr}`);
}
