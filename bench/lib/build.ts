/**
 * berth's build (dist/), for the suites that run berth the way users do: its CLI as plain
 * JavaScript from dist/, compared with plain `node`. Built once per harness run, with the
 * project's own `npm run build` (tsc), so dist/ always matches the source being measured.
 */

import { join } from 'node:path';
import { ROOT, spawnNode } from './child.js';

export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

/** Runs tsc with `args` (bounded at 3 minutes); rejects with its output when it fails. */
async function tsc(label: string, args: string[]): Promise<void> {
  const child = spawnNode(
    label,
    [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), ...args],
    {
      timeout: 180_000,
    },
  );
  const out: string[] = [];
  child.onLine(/./, (line) => out.push(line)); // tsc reports errors on stdout
  const code = await child.exited;
  if (code !== 0)
    throw new Error(`${label} failed with ${code}\n${out.join('\n')}${child.stderr()}`);
}

let built: Promise<void> | undefined;

/** Runs `tsc -p tsconfig.build.json` once; later calls join the first. */
export function ensureBuilt(log: (message: string) => void): Promise<void> {
  built ??= (async () => {
    const t0 = performance.now();
    await tsc('npm run build (tsc)', ['-p', 'tsconfig.build.json']);
    log(`built dist/ in ${Math.round(performance.now() - t0)} ms`);
  })();
  return built;
}

/** Where `ensureCompiled` puts the whole checkout (src, bench, ...) as JavaScript. */
export const COMPILED = join(ROOT, '.bench-tmp', 'compiled');

let compiled: Promise<void> | undefined;

/**
 * Compiles the checkout (tsconfig.json: src, bench, test, scripts) into `COMPILED` once, for the
 * suites' fixtures and load generators to run as plain JavaScript (`useCompiled`). Imports keep
 * their relative paths, so a fixture's `../../src/index.js` is the compiled source beside it,
 * and packages resolve from the checkout's node_modules above.
 */
export function ensureCompiled(log: (message: string) => void): Promise<void> {
  compiled ??= (async () => {
    const t0 = performance.now();
    const off = ['--declaration', 'false', '--declarationMap', 'false', '--sourceMap', 'false'];
    await tsc(`tsc into ${COMPILED}`, ['-p', 'tsconfig.json', '--outDir', COMPILED, ...off]);
    log(
      `compiled the fixtures into .bench-tmp/compiled/ in ${Math.round(performance.now() - t0)} ms`,
    );
  })();
  return compiled;
}
