/**
 * What the abuse suite's attacks share: the build under attack, an attack's shape and its
 * figures, the report's sections, and `berth serve` modules written for one build.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../lib/child.js';
import { describeFlood, type ProbeResult, writeFlood } from './attacks.js';
import type { Demo, StartDemoOptions } from './demo.js';

export const MiB = 1_048_576;
export const mb = (bytes: number) => `${Math.round(bytes / 1e6)} MB`;
export const ms = (n: number) => `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
export const sleep = (n: number) => new Promise((resolve) => setTimeout(resolve, n));

/** A berth build to attack: this checkout's, or one at a commit. */
export interface Build {
  label: string;
  cli: string;
  cwd: string;
}

/** One attack's figures against one build. */
export interface Run {
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
  /** What must hold, each with whether it did: the attack's own, and the suite's (see `RSS_BOUND`). */
  checks?: Record<string, boolean>;
}

/** How much the server's RSS may grow under one attack: every bound it has is far below this. */
export const RSS_BOUND = 128e6;

/** The checks of a run that failed; none means the server held. */
export const broken = (run: Run) =>
  Object.entries(run.checks ?? {})
    .filter(([, ok]) => !ok)
    .map(([name]) => name);

/** RELIABILITY.md's sections, in order: an attack names the one it is reported under. */
export const GROUPS = {
  memory: 'Memory and buffers',
  slow: 'Slow clients',
  fuzz: 'Fuzz',
  descriptors: 'Out of file descriptors',
  http: 'HTTP edges',
  shutdown: 'Shutdown edges',
  exposure: 'Exposure',
  limits: 'Limits',
} as const;

export interface Attack {
  name: string;
  group: keyof typeof GROUPS;
  title: string;
  /** What is sent, for the report. */
  sends: string;
  /** Runs against a started demo; resolves with the verdict. */
  run(demo: Demo, build: Build): Promise<Omit<Run, 'build' | 'rssBefore' | 'rssPeak' | 'rssAfter'>>;
  /** Start something other than the demo (e.g. `berth serve` of a module). */
  command?: (build: Build) => string[];
  /** More for the start: flags (`--host`), the environment, a descriptor limit. */
  start?: Pick<StartDemoOptions, 'args' | 'env' | 'ulimit'>;
  /** The honest client is expected to fail meanwhile (the process is out of descriptors). */
  honestMayFail?: boolean;
}

/**
 * 1 GiB in 1 MiB writes to `port` (after `prefix`), reading nothing, while `honest` runs: the
 * server must stop reading from it, or cut it.
 */
export async function unreadFlood(
  port: number,
  honest: { stop(): Promise<ProbeResult> },
  prefix?: Buffer,
): Promise<Omit<Run, 'build' | 'rssBefore' | 'rssPeak' | 'rssAfter'>> {
  const r = await writeFlood({
    port,
    ...(prefix ? { prefix } : {}),
    chunk: Buffer.alloc(MiB, 'e'),
    total: 1_024 * MiB,
    timeout: 30_000,
  });
  return {
    verdict: describeFlood(r),
    honest: await honest.stop(),
    checks: { 'the server stops reading, or cuts it': r.throttled || r.cut },
  };
}

/**
 * A `berth serve` module for `build`: `body` is the module's code after an import of the build's
 * `dist/index.js` as `berth` (`import * as berth`). Written under .bench-tmp/abuse/.
 */
export function serveModule(build: Build, name: string, body: string): string {
  const dir = join(ROOT, '.bench-tmp', 'abuse');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${build.label.replace(/\W/g, '_')}.mjs`);
  const index = join(build.cwd, 'dist', 'index.js');
  writeFileSync(file, `import * as berth from ${JSON.stringify(index)};\n${body}\n`);
  return file;
}
