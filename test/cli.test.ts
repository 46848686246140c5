/**
 * The CLI as users run it: a child process, real ports, real signals, exit codes.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { type AddressInfo, createServer, connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { TaskClient, type TaskError } from '../src/index.js';
import {
  type Child,
  connect,
  exitWithin,
  FIXTURES,
  ROOT,
  readAll,
  sleep,
  spawnChild,
} from './helpers.js';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');
/** Ephemeral ports for every service, so tests never collide. */
const EPHEMERAL = ['--port', '0', '--diag-port', '0'];

/** `berth ...args` in a child; under `ulimit -n` of `fds` descriptors when given. */
function berth(t: TestContext, args: string[], env: NodeJS.ProcessEnv = {}, fds?: number): Child {
  const argv = ['--import', 'tsx', CLI, ...args];
  const options = { cwd: ROOT, env: { ...process.env, PORT: '', ...env } };
  if (fds === undefined) return spawnChild(t, process.execPath, argv, options);
  // Through a shell for the limit; it execs node, so the pid stays node's.
  const limited = ['-c', `ulimit -n ${fds} && exec "$0" "$@"`, process.execPath, ...argv];
  return spawnChild(t, '/bin/sh', limited, options);
}

/** Waits for the `started` log line; returns each service's port by name. */
async function started(child: Child): Promise<Record<string, number>> {
  const line = JSON.parse(await child.line(/"msg":"started: /, 20_000)) as {
    services: { name: string; address: string }[];
  };
  return Object.fromEntries(line.services.map((s) => [s.name, Number(s.address.split(':').pop())]));
}

function logLines(child: Child): { msg: string; [k: string]: unknown }[] {
  return child
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

interface Reply {
  status: number;
  body: string;
}

function get(port: number, path: string, agent: http.Agent | false = false): Promise<Reply> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, async (res) =>
        resolve({ status: res.statusCode!, body: await readAll(res) }),
      )
      .on('error', reject);
  });
}

test('berth demo: /hello, TCP echo, and every diagnostics endpoint answer; SIGINT drains to exit 0', async (t) => {
  const child = berth(t, [
    'demo',
    ...EPHEMERAL,
    '--tcp-port',
    '0',
    '--task-port',
    '0',
    '--version-string',
    'v-test',
  ]);
  const ports = await started(child);
  assert.deepEqual(await get(ports.http!, '/hello'), { status: 200, body: 'Hello world.\n' });
  const echo = await connect(t, ports.echo!);
  echo.write('ping');
  assert.equal((await once(echo, 'data'))[0].toString(), 'ping');

  // The task server: docs/protocol.md's demo tasks, through the real client.
  const tasks = await TaskClient.connect({ host: '127.0.0.1', port: ports.tasks! });
  t.after(() => tasks.destroy());
  assert.equal(
    (await tasks.call('echo', 'over the task protocol')).toString(),
    'over the task protocol',
  );
  await tasks.close();

  const diag = ports.diagnostics!;
  assert.deepEqual(await get(diag, '/live'), { status: 200, body: 'OK\n' });
  assert.deepEqual(await get(diag, '/ready'), { status: 200, body: 'Version: v-test\n' });
  const metrics = await get(diag, '/metrics');
  assert.match(metrics.body, /berth_http_requests_total\{service="http"\} 1/);
  assert.match(metrics.body, /berth_tcp_busy\{service="echo"\} 1/);
  assert.match(metrics.body, /process_resident_memory_bytes/);
  const vars = JSON.parse((await get(diag, '/debug/vars')).body);
  assert.deepEqual(Object.keys(vars.services).sort(), ['diagnostics', 'echo', 'http', 'tasks']);
  assert.equal(vars.services.echo.busy, 1);
  assert.equal(vars.services.http.state, 'ready');

  // Ctrl-C with a client connected: the echo handler ends it politely, exit 0.
  const echoEnded = readAll(echo);
  child.proc.kill('SIGINT');
  assert.equal(await exitWithin(child, 10_000), 0);
  await echoEnded;
  const msgs = logLines(child).map((l) => l.msg);
  for (const expected of [
    /^signal received: SIGINT$/,
    /^draining$/,
    /^service closed: http$/,
    /^service closed: echo$/,
    /^service closed: diagnostics$/,
    /^shutdown complete in \d+ ms$/,
  ]) {
    assert.ok(
      msgs.some((m) => expected.test(m)),
      `no log line matching ${expected}:\n${msgs.join('\n')}`,
    );
  }
});

test('on SIGTERM /ready turns 503 before the app listener closes', async (t) => {
  const child = berth(t, [
    'demo',
    ...EPHEMERAL,
    '--tcp-port',
    '0',
    '--task-port',
    '0',
    '--drain-delay',
    '600ms',
  ]);
  const ports = await started(child);
  child.proc.kill('SIGTERM');
  await child.line(/"msg":"draining"/);
  const ready = await get(ports.diagnostics!, '/ready');
  assert.equal(ready.status, 503);
  assert.match(ready.body, /Status: draining/);
  // The app still takes new connections during the drain delay.
  assert.equal((await get(ports.http!, '/hello')).status, 200);
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('SIGTERM under load: 50 keep-alive clients lose no request, exit 0', async (t) => {
  const child = berth(t, ['demo', ...EPHEMERAL, '--tcp-port', '0', '--task-port', '0']);
  const port = (await started(child)).http!;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
  t.after(() => agent.destroy());
  let ok = 0;
  const failed: string[] = [];
  const loop = async () => {
    for (;;) {
      try {
        const reply = await get(port, '/sleep?ms=10', agent);
        if (reply.status !== 200) failed.push(`status ${reply.status}`);
        ok++;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ECONNREFUSED') failed.push(`${code}: ${(err as Error).message}`);
        return;
      }
    }
  };
  const clients = Array.from({ length: 50 }, loop);
  await sleep(400);
  child.proc.kill('SIGTERM');
  await Promise.all(clients);
  assert.deepEqual(failed, []);
  assert.ok(ok > 100, `too little load: ${ok}`);
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('out of file descriptors: the demo warns once, counts the episode, and serves again', async (t) => {
  // Allowed 100 descriptors, the demo is offered 200 connections at once and they are held: libuv
  // sheds what it cannot accept and tells nobody, so only the descriptor watch can see it.
  const child = berth(t, ['demo', ...EPHEMERAL, '--tcp-port', '0', '--task-port', '0'], {}, 100);
  const ports = await started(child);
  const flood = Array.from({ length: 200 }, () => {
    const s = netConnect({ port: ports.http!, host: '127.0.0.1' });
    s.on('error', () => {});
    return s;
  });
  t.after(() => {
    for (const s of flood) s.destroy();
  });
  await Promise.all(flood.map((s) => once(s, 'connect').catch(() => {})));
  const warning = JSON.parse(await child.line(/out of file descriptors/, 5_000));
  assert.equal(warning.level, 40);
  assert.equal(warning.limit, 100);
  for (const s of flood) s.destroy();
  await child.line(/file descriptors free again after \d+ ms/, 5_000);

  const vars = JSON.parse((await get(ports.diagnostics!, '/debug/vars')).body);
  assert.equal(vars.descriptors.exhausted, false);
  assert.equal(vars.descriptors.limit, 100);
  assert.equal(vars.descriptors.exhaustions, 1);
  assert.ok(vars.descriptors.exhaustedMs > 0 && vars.descriptors.open < 100, JSON.stringify(vars));
  assert.equal(vars.services.http.acceptErrors, 0, 'what libuv sheds, Node never hears of');
  const metrics = (await get(ports.diagnostics!, '/metrics')).body;
  assert.match(metrics, /^berth_descriptor_exhaustions_total\{service="diagnostics"\} 1$/m);
  assert.match(metrics, /^berth_descriptors_exhausted\{service="diagnostics"\} 0$/m);
  assert.equal((await get(ports.http!, '/hello')).status, 200);
  assert.equal(logLines(child).filter((l) => /out of file descriptors/.test(l.msg)).length, 1);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('a second signal forces the exit at once: 130 for SIGINT, 143 for SIGTERM', async (t) => {
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    const child = berth(t, [
      'demo',
      ...EPHEMERAL,
      '--tcp-port',
      '0',
      '--task-port',
      '0',
      '--shutdown-timeout',
      '30s',
    ]);
    const port = (await started(child)).http!;
    // A request that holds the drain open for a long time.
    const pending = get(port, '/sleep?ms=20000').catch(() => 'cut');
    await sleep(100);
    child.proc.kill(signal);
    await child.line(/"msg":"draining"/);
    const sent = Date.now();
    child.proc.kill(signal);
    assert.equal(await exitWithin(child, 5_000), code);
    assert.ok(Date.now() - sent < 2_000, 'the forced exit was not at once');
    assert.equal(await pending, 'cut');
    assert.ok(logLines(child).some((l) => l.msg === `forced exit: second signal ${signal}`));
  }
});

test('one service failing to bind stops the others and exits 1', async (t) => {
  const blocker = createServer().listen(0, '127.0.0.1');
  t.after(() => blocker.close());
  await once(blocker, 'listening');
  const busy = (blocker.address() as AddressInfo).port;
  const child = berth(t, ['demo', ...EPHEMERAL, '--tcp-port', String(busy), '--task-port', '0']);
  assert.equal(await exitWithin(child, 20_000), 1);
  const failure = logLines(child).find((l) => String(l.msg).startsWith('start failed'));
  assert.ok(failure, child.stdout());
  assert.match(
    String(failure.msg),
    new RegExp(`echo failed to start: address already in use: 127\\.0\\.0\\.1:${busy}`),
  );
});

test('a hung request is cut at the deadline, exit 1', async (t) => {
  const child = berth(t, [
    'demo',
    ...EPHEMERAL,
    '--tcp-port',
    '0',
    '--task-port',
    '0',
    '--shutdown-timeout',
    '300ms',
  ]);
  const port = (await started(child)).http!;
  const pending = get(port, '/sleep?ms=20000').catch((err: NodeJS.ErrnoException) => err.code);
  await sleep(100);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 1);
  assert.equal(await pending, 'ECONNRESET');
  const closed = logLines(child).find(
    (l) =>
      l.msg ===
      'service closed: http (http: close timed out after 300 ms; destroyed 1 live connection(s))',
  );
  assert.ok(closed, child.stdout());
});

test('berth serve runs an Express-style request listener', async (t) => {
  const child = berth(t, ['serve', join(FIXTURES, 'serve-listener.mjs'), ...EPHEMERAL]);
  const ports = await started(child);
  assert.deepEqual(await get(ports.http!, '/x?y=1'), {
    status: 200,
    body: 'listener saw /x?y=1\n',
  });
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('berth serve runs the services a factory returns, on --port from env PORT', async (t) => {
  const child = berth(
    t,
    ['serve', join(FIXTURES, 'serve-factory.mjs'), '--diag-port', '0', '--host', '127.0.0.1'],
    {
      PORT: '0',
    },
  );
  const ports = await started(child);
  assert.deepEqual(Object.keys(ports).sort(), ['diagnostics', 'raw', 'web']);
  assert.equal((await get(ports.web!, '/')).body, 'factory web\n');
  const raw = await connect(t, ports.raw!);
  assert.equal(await readAll(raw), 'factory raw\n');
  assert.equal((await get(ports.diagnostics!, '/ready')).status, 200);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('berth serve logs what application code throws: a request handler, a task', async (t) => {
  const child = berth(t, ['serve', join(FIXTURES, 'serve-failing.mjs'), ...EPHEMERAL]);
  const ports = await started(child);
  assert.equal((await get(ports.web!, '/')).status, 500);
  const client = await TaskClient.connect({ host: '127.0.0.1', port: ports.jobs! });
  t.after(() => client.destroy());
  await assert.rejects(client.call(1, ''), (err: TaskError) => err.errorCode === 205);
  const handler = JSON.parse(await child.line(/"msg":"web: handler failed"/)) as {
    level: number;
    err: { message: string; stack: string };
  };
  assert.equal(handler.level, 50);
  assert.equal(handler.err.message, 'handler bug');
  assert.match(handler.err.stack, /serve-failing\.mjs/);
  const task = JSON.parse(await child.line(/"msg":"jobs: task 1 failed/)) as {
    err: { message: string };
    client: string;
  };
  assert.equal(task.err.message, 'task bug');
  assert.match(task.client, /127\.0\.0\.1\]?:\d+->/, 'which client: remote->local');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('berth serve with a ServiceGroup export runs it as it is, and says the runner flags do not apply', async (t) => {
  const child = berth(t, ['serve', join(FIXTURES, 'serve-group.mjs'), ...EPHEMERAL]);
  await child.line(/"msg":"the module exports its own ServiceGroup: its settings apply/);
  const ports = await started(child);
  assert.deepEqual(Object.keys(ports), ['own'], 'no diagnostics server: the group has none');
  assert.equal((await get(ports.own!, '/')).body, 'own group\n');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('berth serve with a module that exports nothing runnable exits 2 with a coded reason', async (t) => {
  const child = berth(t, ['serve', join(FIXTURES, 'serve-nothing.mjs'), ...EPHEMERAL]);
  assert.equal(await exitWithin(child, 20_000), 2);
  assert.match(child.stderr(), /serve-nothing\.mjs: its default export is not a request listener/);
  const missing = berth(t, ['serve', 'no/such/module.mjs']);
  assert.equal(await exitWithin(missing, 20_000), 2);
  assert.match(missing.stderr(), /no\/such\/module\.mjs: no such file/);
});

test('bad flags: one line naming the flag, one pointing to --help, exit 2, nothing started', async (t) => {
  const cases: [string[], RegExp][] = [
    [['demo', '--prot', '8080'], /^berth: Unknown option '--prot'/],
    [
      ['demo', '--port', '99999'],
      /^berth: --port must be a port number from 0 to 65535, got "99999"/,
    ],
    [
      ['demo', '--shutdown-timeout', '5 seconds'],
      /^berth: --shutdown-timeout must be a duration such as 5s/,
    ],
    [['demo', '--log-level', 'loud'], /^berth: --log-level must be one of/],
    [['serve'], /^berth: berth serve needs a module to run/],
    [['launch'], /^berth: unknown command "launch"/],
  ];
  for (const [args, message] of cases) {
    const child = berth(t, args);
    assert.equal(await exitWithin(child, 20_000), 2, args.join(' '));
    const lines = child.stderr().split('\n');
    assert.match(lines[0]!, message);
    // Two lines, not the whole usage: the error stays on screen.
    assert.deepEqual(lines.slice(1), ["Run 'berth --help' for the flags and commands.", '']);
    assert.equal(child.stdout(), '', 'nothing may start or log');
  }
  const env = berth(t, ['demo', '--diag-port', '0'], { PORT: 'eighty' });
  assert.equal(await exitWithin(env, 20_000), 2);
  assert.match(env.stderr(), /env PORT must be a port number/);
  // With no command at all there is no error to keep on screen: the usage, exit 2.
  const bare = berth(t, []);
  assert.equal(await exitWithin(bare, 20_000), 2);
  assert.match(bare.stderr(), /^Usage:\n {2}berth demo/);
});

test('--help prints the usage and exits 0; --version prints the version', async (t) => {
  const help = berth(t, ['demo', '--help']);
  assert.equal(await exitWithin(help, 20_000), 0);
  assert.match(help.stdout(), /--shutdown-timeout DURATION/);
  const version = berth(t, ['--version']);
  assert.equal(await exitWithin(version, 20_000), 0);
  assert.match(version.stdout(), /^\d+\.\d+\.\d+\n$/);
});
