/**
 * Re-renders the hand-written analysis of every section of BENCHMARKS.md from bench/notes/*.md,
 * leaving the figures as the last run wrote them. For notes written after the run whose figures
 * they discuss (a full `npm run bench` takes minutes on a shared machine; re-running it to move
 * a paragraph would also move the figures).
 *
 *   node --import tsx bench/tools/refresh-notes.ts
 */

import { join } from 'node:path';
import { ROOT } from '../lib/child.js';
import { refreshAnalysis } from '../lib/report.js';

const suites = ['tcp', 'http', 'drain', 'tasks', 'channel', 'startup'];
const changed = refreshAnalysis(join(ROOT, 'BENCHMARKS.md'), suites);
console.log(
  changed.length > 0 ? `analysis refreshed: ${changed.join(', ')}` : 'analysis already current',
);
