/**
 * What `berth serve` makes of a module beyond a listener or services: an app that owns its
 * server (fastify), the named exports it reads (upgrade, beforeShutdown, afterClose), and the
 * hints it gives for a framework's app it does not take as it is. In-process where the question
 * is only what the module turns into; a child process where signals and exit codes matter.
 */

import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import Fastify from 'fastify';
import { Hono } from 'hono';
import Koa from 'koa';
import { parseServeArgs } from '../src/cli/flags.js';
import { placeServices } from '../src/cli/placement.js';
import { loadModule, type ServedModule, toServable } from '../src/cli/serve.js';
import { HttpService, type InvalidModuleError, ServiceGroup, TcpService } from '../src/index.js';
import { type Child, exitWithin, FIXTURES, ROOT, readAll, spawnChild } from './helpers.js';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');

function serveModule(module: Partial<ServedModule>) {
  const { flags } = parseServeArgs(['app.mjs', '--port', '0', '--host', '127.0.0.1'], {});
  return toServable(
    'app.mjs',
    { exported: undefined, upgrade: undefined, hooks: {}, ...module },
    flags,
    placeServices(flags, {}),
  );
}

function invalid(pattern: RegExp) {
  return (err: InvalidModuleError) => {
    assert.equal(err.code, 'ERR_BERTH_INVALID_MODULE');
    assert.match(err.message, pattern);
    return true;
  };
}

test('a fastify instance as the default export is served by an HttpService on its own server', async () => {
  const app = Fastify();
  const servable = await serveModule({ exported: app });
  assert.ok(Array.isArray(servable) && servable.length === 1);
  const [service] = servable;
  assert.ok(service instanceof HttpService);
  assert.equal(service.name, 'http');
  assert.equal(service.server, app.server);
  await service.destroy();
});

test('a framework app berth does not take as it is gets a hint naming what to export', async () => {
  await assert.rejects(
    serveModule({ exported: new Koa() }),
    invalid(/Koa app: export app\.callback\(\)/),
  );
  await assert.rejects(
    serveModule({ exported: new Hono() }),
    invalid(/createAdaptorServer\(\{ fetch: app\.fetch \}\) from '@hono\/node-server'/),
  );
  const nestLike = {
    getHttpServer: () => http.createServer(),
    init: async () => {},
    close: async () => {},
  };
  await assert.rejects(
    serveModule({ exported: nestLike }),
    invalid(/NestJS app: export \{ server: app\.getHttpServer\(\)/),
  );
  await assert.rejects(serveModule({ exported: 42 }), invalid(/or a factory returning one$/));
});

test('upgrade is for the HttpService berth makes; hooks are not for a ServiceGroup of its own', async () => {
  const upgrade = () => {};
  const listener = (_req: http.IncomingMessage, res: http.ServerResponse) => res.end('x');
  const served = await serveModule({ exported: listener, upgrade });
  assert.ok(Array.isArray(served));
  await served[0]!.destroy();

  const services = () => [
    new TcpService({ name: 'raw', port: 0, handler: () => {}, registry: null }),
  ];
  await assert.rejects(
    serveModule({ exported: services, upgrade }),
    invalid(/exports upgrade, but its default export brings its own services/),
  );
  const group = new ServiceGroup({ services: [] });
  await assert.rejects(
    serveModule({ exported: group, hooks: { afterClose: () => {} } }),
    invalid(/exports afterClose, but its default export is a ServiceGroup/),
  );
});

test('a named export berth reads must be a function', async () => {
  await assert.rejects(
    loadModule(join(FIXTURES, 'serve-bad-hook.mjs')),
    invalid(/its export afterClose must be a function, got string/),
  );
});

function berth(t: TestContext, args: string[], env: NodeJS.ProcessEnv = {}): Child {
  return spawnChild(t, process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, PORT: '', ...env },
  });
}

async function httpPort(child: Child): Promise<number> {
  const line = JSON.parse(await child.line(/"msg":"started: /, 20_000)) as {
    services: { name: string; address: string }[];
  };
  return Number(
    line.services
      .find((s) => s.name === 'http')!
      .address.split(':')
      .pop(),
  );
}

/** stdout's lines, each a hook's own line or the msg of one of berth's log lines. */
function story(child: Child): string[] {
  return child
    .stdout()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (l.startsWith('{') ? (JSON.parse(l) as { msg: string }).msg : l));
}

test('SIGTERM: beforeShutdown, the drain, fastify onClose, diagnostics, afterClose, in that order; exit 0', async (t) => {
  const fixture = join(FIXTURES, 'serve-fastify-hooks.mjs');
  const child = berth(t, [
    'serve',
    fixture,
    '--port',
    '0',
    '--diag-port',
    '0',
    '--host',
    '127.0.0.1',
  ]);
  const port = await httpPort(child);
  const reply = await new Promise<string>((resolve, reject) =>
    http
      .get({ host: '127.0.0.1', port, path: '/hello' }, async (res) => resolve(await readAll(res)))
      .on('error', reject),
  );
  assert.equal(reply, 'Hello world.\n');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
  const lines = story(child).filter((l) => /^(hook: |service closed: |shutdown complete)/.test(l));
  assert.deepEqual(lines, [
    'hook: beforeShutdown signal SIGTERM',
    'hook: fastify onClose',
    'service closed: http',
    'service closed: diagnostics',
    'hook: afterClose exitCode 0',
    lines.at(-1)!,
  ]);
  assert.match(lines.at(-1)!, /^shutdown complete in \d+ ms$/);
});

test('an afterClose that outlives --hook-timeout is cut off and logged; the exit code stays 0', async (t) => {
  const fixture = join(FIXTURES, 'serve-fastify-hooks.mjs');
  const child = berth(
    t,
    [
      'serve',
      fixture,
      '--port',
      '0',
      '--diag-port',
      '0',
      '--host',
      '127.0.0.1',
      '--hook-timeout',
      '300ms',
    ],
    { HANG_AFTER_CLOSE: '1' },
  );
  await httpPort(child);
  const sent = Date.now();
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
  const took = Date.now() - sent;
  assert.ok(took >= 300 && took < 5_000, `exit ${took} ms after SIGTERM, with a 300 ms hook bound`);
  const failed = child
    .stdout()
    .split('\n')
    .filter((l) => l.includes('"msg":"shutdown hook failed"'))
    .map((l) => JSON.parse(l) as { err: { code: string; message: string } });
  assert.equal(failed.length, 1, child.stdout());
  assert.equal(failed[0]!.err.code, 'ERR_BERTH_HOOK_TIMEOUT');
  assert.match(failed[0]!.err.message, /^afterClose did not finish within 300 ms/);
});

test('--workers 2: each worker runs the module hooks and fastify onClose in its own drain; exit 0', async (t) => {
  const fixture = join(FIXTURES, 'serve-fastify-hooks.mjs');
  const child = berth(t, [
    'serve',
    fixture,
    ...['--workers', '2', '--port', '0', '--diag-port', '0', '--host', '127.0.0.1'],
  ]);
  await child.line(/"msg":"workers ready: 2 x /, 30_000);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0, child.stderr());
  const hooks = story(child).filter((l) => l.startsWith('hook: '));
  const count = (line: string) => hooks.filter((l) => l === line).length;
  // The primary tells the workers to stop: their groups stop as requested, not by a signal.
  assert.equal(count('hook: beforeShutdown requested undefined'), 2, hooks.join('\n'));
  assert.equal(count('hook: fastify onClose'), 2, hooks.join('\n'));
  assert.equal(count('hook: afterClose exitCode 0'), 2, hooks.join('\n'));
});
