/**
 * Turning suite results into text: aligned tables for the terminal, and BENCHMARKS.md, which
 * holds one section per suite between markers. Running one suite rewrites only its section, so
 * the file stays current suite by suite and each section says when, where and how it was made.
 */

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, freemem, loadavg, release, totalmem, type } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR } from './child.js';
import type { Suite, SuiteReport, Table } from './suite.js';

export interface Machine {
  cores: number;
  cpu: string;
  node: string;
  os: string;
  memory: string;
  loadBefore: string;
  date: string;
}

export function describeMachine(): Machine {
  return {
    cores: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    node: process.version,
    os: `${type()} ${release()}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB (${(freemem() / 2 ** 30).toFixed(1)} free)`,
    loadBefore: loadavg()
      .map((l) => l.toFixed(2))
      .join(' '),
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  };
}

function width(text: string): number {
  // Emoji marks take two columns in a terminal.
  return [...text].reduce((n, ch) => n + ((ch.codePointAt(0) ?? 0) > 0x2000 ? 2 : 1), 0);
}

/** A table for the terminal, columns padded. */
export function renderText(table: Table): string {
  const all = [table.columns, ...table.rows];
  const widths = table.columns.map((_, c) => Math.max(...all.map((r) => width(r[c] ?? ''))));
  const line = (cells: string[]) =>
    cells.map((cell, c) => cell + ' '.repeat(widths[c]! - width(cell))).join('  ');
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [table.title, line(table.columns), rule, ...table.rows.map(line)].join('\n');
}

export function renderMarkdown(table: Table): string {
  const esc = (cell: string) => cell.replaceAll('|', '\\|');
  return [
    `**${table.title}**`,
    '',
    `| ${table.columns.map(esc).join(' | ')} |`,
    `|${table.columns.map(() => '---').join('|')}|`,
    ...table.rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

export interface SectionInput {
  suite: Suite;
  machine: Machine;
  command: string;
  seconds: number;
  /** Set when the suite could not run: pending, or failed with an error. */
  status?: string;
  report?: SuiteReport;
  notes: string[];
  /** The fixtures ran as compiled JavaScript (`useCompiled`), not through tsx. */
  compiled?: boolean;
}

export function renderSection(input: SectionInput): string {
  const { suite, machine, report } = input;
  const out = [`## ${suite.name} — ${suite.title}`, '', `Target: ${suite.target}`, ''];
  if (input.status) {
    out.push(`**${input.status}** (checked ${machine.date}; no figures until it runs).`, '');
    return out.join('\n');
  }
  out.push(
    `- Machine: ${machine.cores} cores, ${machine.cpu}, ${machine.memory}, ${machine.os}`,
    `- Node ${machine.node}; load average before the run ${machine.loadBefore}`,
    `- Date ${machine.date}; took ${Math.round(input.seconds)} s`,
    `- Command: \`${input.command}\``,
    ...(input.compiled ? ['- Fixtures and load: compiled JavaScript under plain node'] : []),
    '',
  );
  if (report) {
    out.push(report.method, '');
    for (const table of report.tables) out.push(renderMarkdown(table), '');
    const notes = [...report.notes, ...input.notes];
    if (notes.length > 0) out.push('Notes:', '', ...notes.map((n) => `- ${n}`), '');
  }
  // Analysis written by hand (why a target is missed, what was found) survives regeneration.
  const analysis = join(NOTES_DIR, `${suite.name}.md`);
  if (existsSync(analysis)) out.push(readFileSync(analysis, 'utf8').trim(), '');
  return out.join('\n');
}

const NOTES_DIR = join(BENCH_DIR, 'notes');

const HEADER = `# Benchmarks

berth side by side with what users would pick instead, measured by \`npm run bench\`
(\`bench/run.ts\`). Every figure below can be re-run with the command its section names.

How the figures are made:
- Each suite runs berth and its baselines **in the same run, alternating** round by round (the
  order flips every round), and reports medians over the rounds. Ratios are berth/baseline,
  the median of the per-round ratios, so drift of a shared machine cancels.
- Every server runs in its own process (a fixture script under \`bench/fixtures/\`), and load
  comes from a separate process (\`bench/load/\`). Both run TypeScript through
  \`node --import tsx\`, the same loader on every side, so no side pays a different load cost.
  Where berth is run as users run it, its CLI (the startup suite, the drain suite's cluster
  rows), it runs from \`dist/\`, built by the suite with \`npm run build\`, against plain
  JavaScript baselines.
- Loopback only (127.0.0.1). Every process the harness starts it ends by pid, with a time bound,
  also when a run fails or is interrupted.
- \`npm run bench -- <suite>\` runs one suite and rewrites only its section;
  \`--quick\` runs short rounds for development and does not touch this file.
- A section's *Analysis* is written by hand in \`bench/notes/<suite>.md\` and kept across runs;
  \`bench/tools/\` holds what it cites (\`tcp-accept-variants.ts\`, \`http-request-variants.ts\`,
  \`profile-summary.ts\`).

`;

const START = (name: string) => `<!-- bench:${name}:start -->`;
const END = (name: string) => `<!-- bench:${name}:end -->`;

/**
 * Writes `sections` into `file`, replacing each suite's earlier section and keeping the others;
 * sections appear in `order`.
 */
export function writeBenchmarks(
  file: string,
  order: readonly string[],
  sections: ReadonlyMap<string, string>,
): void {
  const previous = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const parts: string[] = [HEADER];
  for (const name of order) {
    let body = sections.get(name);
    if (body === undefined) {
      const start = previous.indexOf(START(name));
      const end = previous.indexOf(END(name));
      if (start === -1 || end === -1) continue;
      body = previous.slice(start + START(name).length, end).trim();
    }
    parts.push(`${START(name)}\n${body.trim()}\n${END(name)}\n`);
  }
  writeFileSync(file, `${parts.join('\n').trimEnd()}\n`);
}

/** Where a section's hand-written analysis begins: every notes file starts with this heading. */
const ANALYSIS_HEADING = /^### Analysis/m;

/**
 * Puts the current bench/notes/<suite>.md in place of each section's analysis in `file`, the
 * figures untouched: for notes written after the run that made the figures they discuss.
 * Returns the suites whose analysis changed.
 */
export function refreshAnalysis(file: string, order: readonly string[]): string[] {
  let text = readFileSync(file, 'utf8');
  const changed: string[] = [];
  for (const name of order) {
    const notesFile = join(NOTES_DIR, `${name}.md`);
    const start = text.indexOf(START(name));
    const end = text.indexOf(END(name));
    if (!existsSync(notesFile) || start === -1 || end === -1) continue;
    const body = text.slice(start + START(name).length, end);
    const at = body.search(ANALYSIS_HEADING);
    const figures = (at === -1 ? body : body.slice(0, at)).trim();
    // A pending section has no figures to discuss: it keeps no analysis.
    if (figures.includes('no figures until it runs')) continue;
    const next = `\n${figures}\n\n${readFileSync(notesFile, 'utf8').trim()}\n`;
    if (next === body) continue;
    text = text.slice(0, start + START(name).length) + next + text.slice(end);
    changed.push(name);
  }
  writeFileSync(file, text);
  return changed;
}
