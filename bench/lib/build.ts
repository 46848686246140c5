/**
 * berth's build (dist/), for the suites that run berth the way users do: its CLI as plain
 * JavaScript from dist/, compared with plain `node`. Built once per harness run, with the
 * project's own `npm run build` (tsc), so dist/ always matches the source being measured.
 */

import { join } from 'node:path';
import { ROOT, spawnNode } from './child.js';

export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

let built: Promise<void> | undefined;

/** Runs `tsc -p tsconfig.build.json` once (bounded at 3 minutes); later calls join the first. */
export function ensureBuilt(log: (message: string) => void): Promise<void> {
  built ??= (async () => {
    const t0 = performance.now();
    const tsc = spawnNode(
      'tsc',
      [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'],
      { timeout: 180_000 },
    );
    const out: string[] = [];
    tsc.onLine(/./, (line) => out.push(line)); // tsc reports errors on stdout
    const code = await tsc.exited;
    if (code !== 0) {
      throw new Error(`npm run build (tsc) failed with ${code}\n${out.join('\n')}${tsc.stderr()}`);
    }
    log(`built dist/ in ${Math.round(performance.now() - t0)} ms`);
  })();
  return built;
}
