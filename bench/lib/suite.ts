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

/** A ✅/❌ mark for a figure against a target, saying by how much it missed. */
export function mark(ok: boolean, miss?: string): string {
  return ok ? '✅ met' : `❌ missed${miss ? ` (${miss})` : ''}`;
}
