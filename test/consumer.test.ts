/**
 * What a user installs: `npm pack` of this checkout, installed into a new project in a temporary
 * directory with `--ignore-scripts` (npm 11 skips a dependency's install script unless the user
 * approves it, so the package must work without it), then used as the docs show: ESM imports,
 * require() from CommonJS, TypeScript under `nodenext` and `bundler`, `npx berth`, and the
 * sd_notify addon from the shipped prebuild. Runs on whichever Node runs the suite (the npm and
 * `npx berth` it starts use that Node too). Only the npm registry is needed, for berth's own
 * dependencies and TypeScript; npm's cache makes a second run quick.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { type TestContext, test } from 'node:test';
import * as source from '../src/index.js';
import { missing, notifyReceiver } from './fixtures/systemd-harness.js';
import {
  type Child,
  exitWithin,
  FIXTURES,
  findPromtool,
  promtoolCheck,
  ROOT,
  readAll,
  spawnChild,
} from './helpers.js';

const CONSUMER = join(FIXTURES, 'consumer');
const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  devDependencies: Record<string, string>;
};

/**
 * The environment a user's shell would give npm: this Node first on PATH (so `npm`, `npx` and
 * the `#!/usr/bin/env node` of berth's bin run on it), and none of the npm_* variables that
 * `npm test` set for us, which the inner npm would read as its own configuration.
 */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name)),
  );
  env.PATH = `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ''}`;
  return { ...env, ...extra };
}

/** Runs a command to its end within `timeout` ms; fails with its output unless it exits 0. */
async function run(
  t: TestContext,
  command: string,
  args: string[],
  cwd: string,
  timeout: number,
  env: NodeJS.ProcessEnv = {},
): Promise<Child> {
  const child = spawnChild(t, command, args, { cwd, env: userEnv(env) });
  const code = await exitWithin(child, timeout);
  assert.equal(
    code,
    0,
    `${command} ${args.join(' ')} exited ${code}\nstdout:\n${child.stdout()}\nstderr:\n${child.stderr()}`,
  );
  return child;
}

/** The names the docs import from 'berth' (`import { A, type B } from 'berth'`), values only. */
function documentedImports(): string[] {
  const pages = [
    join(ROOT, 'README.md'),
    ...readdirSync(join(ROOT, 'docs')).map((f) => join(ROOT, 'docs', f)),
  ];
  const names = new Set<string>();
  for (const page of pages) {
    for (const [, list] of readFileSync(page, 'utf8').matchAll(
      /import\s*\{([^}]*)\}\s*from\s*'berth'/g,
    )) {
      for (const entry of list!.split(',').map((e) => e.trim())) {
        if (entry && !entry.startsWith('type ')) names.add(entry.split(/\s+as\s+/)[0]!);
      }
    }
  }
  return [...names].sort();
}

// Packing compiles TypeScript and the addon, installing fetches from the registry (or npm's
// cache): minutes on a busy two-core machine, not the suite's two.
test('the packed tarball, installed as a user installs it', { timeout: 300_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'berth-consumer-'));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const packDir = join(work, 'pack');
  mkdirSync(packDir);
  // prepack builds dist/ and the prebuilt addon (in a scratch directory: build/ is left alone).
  await run(t, 'npm', ['pack', '--pack-destination', packDir], ROOT, 120_000);
  const tarball = readdirSync(packDir).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball, `npm pack left no tarball in ${packDir}`);

  const project = join(work, 'project');
  cpSync(CONSUMER, project, { recursive: true });
  writeFileSync(
    join(project, 'package.json'),
    `${JSON.stringify({ name: 'berth-consumer', private: true, type: 'module' }, null, 2)}\n`,
  );
  const dev = manifest.devDependencies;
  await run(
    t,
    'npm',
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--prefer-offline',
      '--ignore-scripts',
      join(packDir, tarball),
      // The versions this repository pins, so the check does not move under us.
      `typescript@${dev.typescript}`,
      `@types/node@${dev['@types/node']}`,
    ],
    project,
    120_000,
  );
  const installed = join(project, 'node_modules', 'berth');
  const node = (args: string[], env: NodeJS.ProcessEnv = {}, timeout = 30_000) =>
    run(t, process.execPath, args, project, timeout, env);

  await t.test(
    'no install script ran: no build/, and the prebuilt addon is in the package',
    {
      skip: process.platform === 'linux' ? false : 'berth prebuilds the addon on Linux only',
    },
    () => {
      assert.equal(existsSync(join(installed, 'build')), false, 'build/ means node-gyp ran');
      const prebuilt = join(installed, 'prebuilds', `linux-${process.arch}`, 'berth_notify.node');
      assert.ok(existsSync(prebuilt), `no ${prebuilt}`);
    },
  );

  await t.test('every export, and every name the docs import, is an ESM named import', async () => {
    const names = Object.keys(source).sort();
    const documented = documentedImports();
    assert.ok(documented.length >= 10, `too few imports found in the docs: ${documented}`);
    for (const name of documented) assert.ok(names.includes(name), `docs import ${name}`);
    // Static named imports: a name the package does not export fails at link time.
    writeFileSync(
      join(project, 'exports.mjs'),
      `import * as all from 'berth';\nimport { ${names.join(', ')} } from 'berth';\n` +
        `const named = { ${names.join(', ')} };\n` +
        'console.log(JSON.stringify({ all: Object.keys(all).sort(), ' +
        'types: Object.fromEntries(Object.entries(named).map(([k, v]) => [k, typeof v])) }));\n',
    );
    const out = JSON.parse((await node(['exports.mjs'])).stdout()) as {
      all: string[];
      types: Record<string, string>;
    };
    assert.deepEqual(out.all, names, 'the installed package exports what the source does');
    assert.deepEqual(
      out.types,
      Object.fromEntries(Object.entries(source).map(([name, value]) => [name, typeof value])),
    );
  });

  await t.test(
    'require() from CommonJS gets the same exports; without require(esm), ERR_REQUIRE_ESM',
    async () => {
      const names = Object.keys(source).sort();
      const required = JSON.parse((await node(['require.cjs'])).stdout());
      if (process.features.require_module) assert.deepEqual(required, { names });
      else assert.equal(required.code, 'ERR_REQUIRE_ESM');
      // What a user of a Node without require(esm) (before 20.19 and 22.12) is told.
      const old = JSON.parse(
        (await node(['--no-experimental-require-module', 'require.cjs'])).stdout(),
      );
      assert.equal(old.code, 'ERR_REQUIRE_ESM');
      assert.match(
        old.message,
        /^require\(\) of ES Module .*berth[/\\]dist[/\\]index\.js .* not supported\./,
      );
      assert.match(old.message, /dynamic import\(\)/);
    },
  );

  const tsc = join(project, 'node_modules', 'typescript', 'bin', 'tsc');
  await t.test(
    "TypeScript, module nodenext: the docs' code (ESM) and a CommonJS file typecheck",
    async () => {
      await node([tsc, '-p', 'tsconfig.nodenext.json'], {}, 60_000);
    },
  );
  await t.test("TypeScript, moduleResolution bundler: the docs' code typechecks", async () => {
    await node([tsc, '-p', 'tsconfig.bundler.json'], {}, 60_000);
  });

  await t.test('npx berth --help and --version', async () => {
    const help = await run(t, 'npx', ['--no', '--', 'berth', '--help'], project, 30_000);
    assert.match(help.stdout(), /berth demo/);
    assert.match(help.stdout(), /berth serve <module>/);
    const version = await run(t, 'npx', ['--no', '--', 'berth', '--version'], project, 30_000);
    assert.equal(version.stdout().trim(), manifest.version);
  });

  await t.test(
    'npx berth demo serves HTTP, echo, tasks and diagnostics; SIGTERM drains to exit 0',
    async (st) => {
      // --no: never fetch a package of that name from the registry; use the installed bin. And --
      // before it, or npx takes the flags that follow (--help, --version) as its own.
      const npx = spawnChild(
        st,
        'npx',
        [
          '--no',
          '--',
          'berth',
          'demo',
          '--port',
          '0',
          '--diag-port',
          '0',
          '--tcp-port',
          '0',
          '--task-port',
          '0',
        ],
        { cwd: project, env: userEnv() },
      );
      const startedLine = JSON.parse(await npx.line(/"msg":"started: /, 30_000)) as {
        pid: number;
        services: { name: string; address: string }[];
      };
      // npx runs berth in a child (through sh): the pid to signal is berth's own, from its log.
      const pid = startedLine.pid;
      st.after(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      });
      const port = Object.fromEntries(
        startedLine.services.map((s) => [s.name, Number(s.address.split(':').pop())]),
      );
      const hello = await fetch(`http://127.0.0.1:${port.http}/hello`);
      assert.equal(await hello.text(), 'Hello world.\n');

      const echo = netConnect(port.echo!, '127.0.0.1');
      st.after(() => echo.destroy());
      await once(echo, 'connect');
      echo.end('hello\n');
      assert.equal(await readAll(echo), 'hello\n');

      const call = await run(
        st,
        'npx',
        ['--no', '--', 'berth', 'call', `127.0.0.1:${port.tasks}`, 'sum', '--data', '1 2 3.5'],
        project,
        30_000,
      );
      assert.equal(call.stdout().trim(), '6.5');

      const ready = await fetch(`http://127.0.0.1:${port.diagnostics}/ready`);
      assert.equal(ready.status, 200);
      const metrics = await (await fetch(`http://127.0.0.1:${port.diagnostics}/metrics`)).text();
      // The demo runs on the Node that runs this test, not on whatever `node` PATH had first.
      assert.match(metrics, new RegExp(`nodejs_version_info\\{version="${process.version}"`));
      assert.match(metrics, /berth_http_requests_total\{service="http"\} 1\n/);
      const promtool = findPromtool();
      if (promtool)
        assert.deepEqual(await promtoolCheck(st, promtool, metrics), { code: 0, output: '' });
      else
        st.diagnostic('promtool not found (set PROMTOOL or put it on PATH): /metrics not linted');

      process.kill(pid, 'SIGTERM');
      assert.equal(await exitWithin(npx, 15_000), 0, npx.stdout() + npx.stderr());
      assert.match(npx.stdout(), /"msg":"signal received: SIGTERM"/);
      assert.match(npx.stdout(), /"msg":"shutdown complete in \d+ ms"/);
    },
  );

  await t.test(
    'the sd_notify addon loads from the shipped prebuild and notifies from its process',
    {
      skip:
        process.platform !== 'linux'
          ? 'berth prebuilds the addon on Linux only (elsewhere: docs/socket-activation.md)'
          : missing('python3') && 'the NOTIFY_SOCKET receiver is a python3 script',
    },
    async (st) => {
      const receiver = await notifyReceiver(st);
      const child = await node(['notify.mjs'], { NOTIFY_SOCKET: receiver.address });
      assert.deepEqual(JSON.parse(child.stdout()), { transport: 'native', sent: 1 });
      const [datagram] = await receiver.received(1);
      assert.equal(datagram!.data, 'READY=1\nSTATUS=from the installed package');
      assert.equal(
        datagram!.pid,
        child.proc.pid,
        'sent by the process itself: the addon, not a command',
      );
    },
  );
});
