/**
 * The CLI under socket activation, sd_notify and idle shutdown: the demo started the way systemd
 * starts it, by the real `systemd-socket-activate` and by a pure-Node launcher (which always
 * runs), with a NOTIFY_SOCKET receiver the test owns.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import {
  type AddressInfo,
  createServer,
  connect as netConnect,
  type Server,
  type Socket,
} from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { loadNotifyAddon, TaskClient } from '../src/index.js';
import {
  activate,
  forkedPids,
  launch,
  missing,
  notifyReceiver,
} from './fixtures/systemd-harness.js';
import { type Child, exitWithin, ROOT, readAll, sleep, spawnChild, waitFor } from './helpers.js';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');
const noActivator = missing('systemd-socket-activate');
const noNotify =
  loadNotifyAddon() instanceof Error && missing('systemd-notify') !== undefined
    ? 'neither the sd_notify addon (npm run build:native) nor systemd-notify is available'
    : undefined;

async function listener(t: TestContext): Promise<Server> {
  const server = createServer();
  t.after(() => server.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

const portOf = (server: Server) => (server.address() as AddressInfo).port;

function get(port: number, path: string, agent: http.Agent | false = false): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, async (res) => resolve(await readAll(res)))
      .on('error', reject);
  });
}

/** Raw keep-alive requests one after another on one connection; returns the raw responses. */
async function keepAlive(port: number, paths: string[]): Promise<string[]> {
  const socket = netConnect(port, '127.0.0.1');
  await once(socket, 'connect');
  const replies: string[] = [];
  for (const path of paths) {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const [chunk] = await once(socket, 'data');
    replies.push(chunk.toString());
  }
  socket.end();
  await once(socket, 'close');
  return replies;
}

const logs = (child: Child, stream: 'stdout' | 'stderr' = 'stdout') =>
  child[stream]()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; pid: number });

async function started(child: Child, stream: 'stdout' | 'stderr' = 'stdout'): Promise<void> {
  await waitFor(
    () => {
      if (child.proc.exitCode !== null)
        throw new Error(`exited:\n${child.stdout()}\n${child.stderr()}`);
      return logs(child, stream).some((l) => l.msg.startsWith('started: '));
    },
    'the started line',
    30_000,
  );
}

// --- listening fds ------------------------------------------------------------------------------

test('launcher: the demo adopts fds named http and echo, tells NOTIFY_SOCKET, and drains to exit 0', {
  skip: noNotify,
}, async (t) => {
  const httpFd = await listener(t);
  const echoFd = await listener(t);
  const receiver = await notifyReceiver(t);
  const child = launch(t, 'systemd-cli', ['demo', '--diag-port', '0', '--task-port', '0'], {
    fds: [httpFd, echoFd],
    names: 'http:echo',
    env: { NOTIFY_SOCKET: receiver.address },
  });
  await started(child);
  const [httpPort, echoPort] = [portOf(httpFd), portOf(echoFd)];
  httpFd.close(); // only the service accepts from here on
  echoFd.close();
  assert.equal(await get(httpPort, '/hello'), 'Hello world.\n');
  const echo = netConnect(echoPort, '127.0.0.1');
  t.after(() => echo.destroy());
  echo.end('through fd 4');
  assert.equal(await readAll(echo), 'through fd 4');

  const pid = child.proc.pid;
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
  const got = await receiver.received(4);
  assert.deepEqual(
    got.map((d) => d.pid),
    [pid, pid, pid, pid],
    'every message comes from the main pid',
  );
  const data = got.map((d) => d.data);
  assert.equal(data[0], 'STATUS=Starting http, echo, tasks, diagnostics');
  assert.match(
    data[1]!,
    new RegExp(
      `^READY=1\\nSTATUS=Serving: http 127\\.0\\.0\\.1:${httpPort}, echo 127\\.0\\.0\\.1:${echoPort}, tasks 127\\.0\\.0\\.1:\\d+, diagnostics 127\\.0\\.0\\.1:\\d+$`,
    ),
  );
  assert.equal(data[2], 'STOPPING=1\nSTATUS=Draining (SIGTERM); shutdown timeout 5000 ms');
  assert.match(data[3]!, /^STATUS=Stopped cleanly in \d+ ms \(signal\)$/);
});

test('launcher: a unit without names works by position with --listen-fd', async (t) => {
  const fd = await listener(t);
  const child = launch(
    t,
    'systemd-cli',
    ['demo', '--listen-fd', '0', '--tcp-port', '0', '--task-port', '0', '--diag-port', '0'],
    {
      fds: [fd],
    },
  );
  await started(child);
  const port = portOf(fd);
  fd.close();
  assert.equal(await get(port, '/hello'), 'Hello world.\n');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
});

test('launcher: an fd that matches no service is reported; --listen-fd naming a missing fd exits 2', async (t) => {
  const fd = await listener(t);
  const child = launch(
    t,
    'systemd-cli',
    ['demo', '--port', '0', '--tcp-port', '0', '--task-port', '0', '--diag-port', '0'],
    {
      fds: [fd],
      names: 'web',
    },
  );
  await started(child);
  assert.ok(
    logs(child).some(
      (l) => l.msg === 'fd 3 (web) was passed, but no service is named web; use --listen-fd',
    ),
  );
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);

  const wrong = launch(t, 'systemd-cli', ['demo', '--listen-fd', 'api'], {
    fds: [fd],
    names: 'web',
  });
  assert.equal(await exitWithin(wrong, 15_000), 2);
  assert.match(wrong.stderr(), /--listen-fd api: .*web/);
});

test('launcher: --workers 2 on an adopted fd: the primary holds it, the workers serve', async (t) => {
  const fd = await listener(t);
  const child = launch(
    t,
    'systemd-cli',
    ['demo', '--workers', '2', '--tcp-port', '0', '--task-port', '0', '--diag-port', '0'],
    {
      fds: [fd],
      names: 'http',
    },
  );
  await child.line(/"msg":"workers ready: 2 x http 127\.0\.0\.1:\d+/, 30_000);
  const port = portOf(fd);
  fd.close();
  const pids = new Set<string>();
  for (let i = 0; i < 12; i++) pids.add(await get(port, '/hello'));
  assert.deepEqual([...pids], ['Hello world.\n']);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
});

test('launcher: --workers 2 with --listen-fd by position, past the diagnostics fd the primary keeps', async (t) => {
  const diag = await listener(t);
  const web = await listener(t);
  const child = launch(
    t,
    'systemd-cli',
    ['demo', '--workers', '2', '--listen-fd', '1', '--tcp-port', '0', '--task-port', '0'],
    { fds: [diag, web], names: 'diagnostics:web' },
  );
  await child.line(/"msg":"workers ready: 2 x http 127\.0\.0\.1:\d+/, 30_000);
  const [diagPort, webPort] = [portOf(diag), portOf(web)];
  diag.close();
  web.close();
  assert.equal(await get(webPort, '/hello'), 'Hello world.\n');
  assert.match(await get(diagPort, '/ready'), /^Version: /);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
});

// --- the real systemd-socket-activate -------------------------------------------------------------

test('systemd-socket-activate: listen mode, the demo on a named fd', {
  skip: noActivator,
}, async (t) => {
  const { child, port } = await activate(
    t,
    ['--fdname=http'],
    [
      process.execPath,
      '--import',
      'tsx',
      CLI,
      'demo',
      '--tcp-port',
      '0',
      '--task-port',
      '0',
      '--diag-port',
      '0',
    ],
  );
  assert.equal(await get(port, '/hello'), 'Hello world.\n');
  await started(child);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
});

test('systemd-socket-activate -a: one HTTP connection with keep-alive requests, then exit 0', {
  skip: noActivator,
}, async (t) => {
  const { child, port } = await activate(
    t,
    ['-a'],
    [process.execPath, '--import', 'tsx', CLI, 'demo'],
  );
  const replies = await keepAlive(port, ['/hello', '/hello', '/sleep?ms=10']);
  assert.equal(replies.length, 3);
  for (const r of replies) assert.match(r, /^HTTP\/1\.1 200 OK/);
  assert.match(replies[0]!, /Connection: keep-alive/i);
  await waitFor(
    () => /Child \d+ died with code 0/.test(child.stderr()),
    'the child to exit 0',
    20_000,
  );
  assert.equal(forkedPids(child).length, 1);
});

test('systemd-socket-activate --inetd: the TCP echo on fd 0/1, logs on stderr, exit 0', {
  skip: noActivator,
}, async (t) => {
  const { child, port } = await activate(
    t,
    ['--inetd', '-a'],
    [process.execPath, '--import', 'tsx', CLI, 'demo', '--inetd', '--connection-service', 'echo'],
  );
  const socket: Socket = netConnect(port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.write('inetd echo');
  const [chunk] = await once(socket, 'data');
  assert.equal(chunk.toString(), 'inetd echo', 'nothing but the echo may reach the client');
  socket.end();
  await waitFor(
    () => /Child \d+ died with code 0/.test(child.stderr()),
    'the child to exit 0',
    20_000,
  );
  assert.match(child.stderr(), /"msg":"started: echo connection from 127\.0\.0\.1:\d+"/);
});

// --- idle shutdown ------------------------------------------------------------------------------

function demo(t: TestContext, args: string[]): Child {
  return spawnChild(
    t,
    process.execPath,
    [
      '--import',
      'tsx',
      CLI,
      'demo',
      '--port',
      '0',
      '--tcp-port',
      '0',
      '--task-port',
      '0',
      '--diag-port',
      '0',
      ...args,
    ],
    {
      cwd: ROOT,
      env: { ...process.env, PORT: '' },
    },
  );
}

async function httpPort(child: Child): Promise<number> {
  await started(child);
  const line = logs(child).find((l) => l.msg.startsWith('started: ')) as unknown as {
    services: { name: string; address: string }[];
  };
  return Number(
    line.services
      .find((s) => s.name === 'http')!
      .address.split(':')
      .pop(),
  );
}

test('--idle-timeout 1s: the demo exits 0 about 1 s after its last request ends, keep-alive socket open or not', async (t) => {
  const child = demo(t, ['--idle-timeout', '1s']);
  const port = await httpPort(child);
  // A keep-alive socket stays open after the last request: an idle socket is not activity.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  for (let i = 0; i < 3; i++) {
    await sleep(400); // each request restarts the clock
    await get(port, '/hello', agent);
  }
  const last = Date.now();
  assert.equal(await exitWithin(child, 10_000), 0);
  const after = Date.now() - last;
  assert.ok(after >= 900, `exited ${after} ms after the last request`);
  assert.ok(after < 4_000, `exited ${after} ms after the last request: not about 1 s`);
  assert.ok(logs(child).some((l) => l.msg === 'stopping: idle'));
});

test('--idle-timeout: not while a slow request runs', async (t) => {
  const child = demo(t, ['--idle-timeout', '500ms']);
  const port = await httpPort(child);
  const began = Date.now();
  assert.equal(await get(port, '/sleep?ms=1500'), 'slept 1500 ms\n');
  assert.equal(child.proc.exitCode, null, 'exited during the request');
  assert.equal(await exitWithin(child, 10_000), 0);
  assert.ok(Date.now() - began >= 1_900);
});

test('--idle-timeout: not while an upgraded connection is open', async (t) => {
  const child = demo(t, ['--idle-timeout', '500ms']);
  const port = await httpPort(child);
  const socket = await new Promise<Socket>((resolve, reject) => {
    http
      .request({ host: '127.0.0.1', port, headers: { connection: 'upgrade', upgrade: 'echo' } })
      .on('upgrade', (_res, s) => resolve(s))
      .on('error', reject)
      .end();
  });
  t.after(() => socket.destroy());
  socket.write('still here');
  assert.equal((await once(socket, 'data'))[0].toString(), 'still here');
  await sleep(1_500);
  assert.equal(child.proc.exitCode, null, 'exited with an upgraded connection open');
  socket.end();
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('--idle-timeout with --workers is a usage error', async (t) => {
  const child = demo(t, ['--idle-timeout', '1s', '--workers', '2']);
  assert.equal(await exitWithin(child, 20_000), 2);
  assert.match(child.stderr(), /--idle-timeout runs one process/);
});

test('--idle-timeout: a task in flight is activity, a connected task client with none is not', async (t) => {
  const child = demo(t, ['--idle-timeout', '500ms']);
  await started(child);
  const line = logs(child).find((l) => l.msg.startsWith('started: ')) as unknown as {
    services: { name: string; address: string }[];
  };
  const port = Number(
    line.services
      .find((s) => s.name === 'tasks')!
      .address.split(':')
      .pop(),
  );
  const client = await TaskClient.connect({ host: '127.0.0.1', port });
  t.after(() => client.destroy());
  const began = Date.now();
  assert.equal((await client.call('sleep', '1200')).toString(), 'slept 1200 ms');
  assert.equal(child.proc.exitCode, null, 'exited while a task was in flight');
  // The client stays connected with nothing in flight: that must not keep the service up.
  assert.equal(await exitWithin(child, 10_000), 0);
  assert.ok(Date.now() - began >= 1_600);
});
