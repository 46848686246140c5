import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import { IdleTimeoutError, IdleTracker, TcpService } from '../src/index.js';
import { fdOf, fixtureCommand } from './fixtures/systemd-harness.js';
import { connect, exitWithin, nextData, ROOT, sleep, spawnChild, waitFor } from './helpers.js';

/** A TcpService echo whose handlers report to `idle`, closed by `idle.signal`. */
async function idleEcho(t: TestContext, idleTimeout: number) {
  const idle = new IdleTracker({ idleTimeout });
  t.after(() => idle.close());
  const service = new TcpService({
    port: 0,
    host: '127.0.0.1',
    registry: null,
    signal: idle.signal,
    handler: async (conn) => {
      using _ = idle.begin();
      for await (const chunk of conn) conn.write(chunk);
    },
  });
  t.after(() => service.destroy());
  await service.start();
  return { idle, service, port: (service.address() as AddressInfo).port };
}

test('a service that never gets a connection closes idleTimeout after it was made', async (t) => {
  const started = Date.now();
  const { idle, service } = await idleEcho(t, 300);
  await service.closed;
  const took = Date.now() - started;
  assert.ok(took >= 280 && took < 5_000, `closed after ${took} ms`);
  assert.ok(idle.signal.reason instanceof IdleTimeoutError);
});

test('a TcpService stays up while a connection is active, and closes idleTimeout after it ends', async (t) => {
  const { idle, service, port } = await idleEcho(t, 300);
  const client = await connect(t, port);
  client.write('hello');
  assert.equal(await nextData(client), 'hello');
  await sleep(1_000); // over three idle timeouts with a handler running
  assert.equal(service.state, 'ready');
  assert.equal(idle.active, 1);
  const ended = Date.now();
  client.end();
  await service.closed;
  const took = Date.now() - ended;
  assert.ok(took >= 280 && took < 5_000, `closed ${took} ms after the last connection ended`);
  assert.equal(idle.active, 0);
});

test('every new connection restarts the idle clock', async (t) => {
  const { service, port } = await idleEcho(t, 1_000);
  for (let i = 0; i < 4; i++) {
    await sleep(300); // under a third of the timeout, four times: 1.2 s in all
    const c = await connect(t, port);
    c.end('x');
    c.resume();
    await once(c, 'close');
  }
  assert.equal(service.state, 'ready');
  await service.closed;
});

test('under socket activation a connection arriving as the idle shutdown begins is served, not dropped', async (t) => {
  // The test plays the service manager: it binds the socket and a shell holds it (accepting
  // nothing) across two runs of the service, as systemd holds an Accept=no socket across restarts.
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const manager = spawnChild(
    t,
    '/bin/sh',
    [
      '-c',
      'for run in 1 2; do /bin/sh -c "$INNER" "$@"; echo "run $run exit $?"; done',
      'sh',
      ...fixtureCommand('idle-echo', ['--fd', '3', '--idle-timeout', '500']),
    ],
    {
      cwd: ROOT,
      env: { ...process.env, INNER: 'LISTEN_PID=$$ exec "$0" "$@"', LISTEN_FDS: '1' },
      stdio: ['ignore', 'pipe', 'pipe', fdOf(server)],
    },
  );
  // Registered after spawnChild's kill of the shell, but the services print their pids: end
  // them by pid first if the test fails half-way.
  t.after(() => {
    for (const m of manager.stdout().matchAll(/pid (\d+)/g)) {
      try {
        process.kill(Number(m[1]), 'SIGKILL');
      } catch {}
    }
  });
  server.close(); // from here only the shell and its service hold the socket

  await manager.line(/^listening .* pid \d+$/);
  const a = await connect(t, port);
  a.write('first');
  assert.equal(await nextData(a), 'first');
  await sleep(1_200);
  assert.doesNotMatch(manager.stdout(), /^idle/m, 'no idle shutdown while a connection is active');
  const released = Date.now();
  a.end();

  await manager.line(/^idle 500$/);
  const took = Date.now() - released;
  assert.ok(took >= 450 && took < 5_000, `idle shutdown ${took} ms after the last connection`);
  // Right as the shutdown begins: this one waits in the socket's queue, not refused.
  const b: Socket = await connect(t, port);
  b.write('second');
  assert.equal(await nextData(b), 'second');
  await manager.line(/^run 1 exit 0$/);
  b.end();
  await manager.line(/^run 2 exit 0$/);
  assert.equal(await exitWithin(manager, 10_000), 0);
  assert.equal(manager.stdout().match(/^listening /gm)?.length, 2);
  await waitFor(() => b.destroyed || b.readableEnded, 'the second client to be closed');
});
