/**
 * Socket activation end to end: a fixture service started as a service manager starts one, both
 * by a pure-Node launcher (always) and by systemd-socket-activate (where it is installed; CI
 * installs Debian's systemd package). No systemd as init is needed for either.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import {
  type AddressInfo,
  createServer,
  connect as netConnect,
  type Server,
  type Socket,
} from 'node:net';
import { type TestContext, test } from 'node:test';
import { loadNotifyAddon } from '../src/index.js';
import {
  activate,
  fixtureCommand,
  forkedPids,
  launch,
  missing,
  notifyReceiver,
  stderrLine,
} from './fixtures/systemd-harness.js';
import { type Child, exitWithin, waitFor } from './helpers.js';

const noActivator = missing('systemd-socket-activate');
const canNotify = !(loadNotifyAddon() instanceof Error) || missing('systemd-notify') === undefined;

async function listener(t: TestContext): Promise<Server> {
  const server = createServer();
  t.after(() => server.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

function portOf(server: Server): number {
  return (server.address() as AddressInfo).port;
}

/** Sends raw HTTP/1.1 requests one after another on one connection; returns the bodies. */
async function requests(port: number, paths: string[]): Promise<string[]> {
  const socket = netConnect(port, '127.0.0.1');
  socket.setEncoding('utf8');
  await once(socket, 'connect');
  const bodies: string[] = [];
  let text = '';
  socket.on('data', (d) => {
    text += d;
  });
  try {
    for (const [i, path] of paths.entries()) {
      const last = i === paths.length - 1;
      socket.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n${last ? 'Connection: close\r\n' : ''}\r\n`);
      await waitFor(
        () => /hello [^\r\n]*$/.test(text) && text.endsWith(path),
        `the response to ${path}`,
      );
      const body = text.slice(text.lastIndexOf('hello'));
      assert.match(text, last ? /Connection: close/ : /Connection: keep-alive/);
      bodies.push(body);
      text = '';
    }
    await waitFor(() => socket.destroyed || socket.readableEnded, 'the server to close');
  } finally {
    socket.destroy();
  }
  return bodies;
}

async function echo(port: number, message: string): Promise<string> {
  const socket: Socket = netConnect(port, '127.0.0.1');
  try {
    socket.end(message);
    let text = '';
    for await (const d of socket) text += d;
    return text;
  } finally {
    socket.destroy();
  }
}

function pidFrom(child: Child): number {
  return Number(/^fds .* pid (\d+)$/m.exec(child.stderr())![1]);
}

async function stop(child: Child): Promise<void> {
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0, child.stderr());
  assert.match(child.stderr(), /^drained$/m);
}

// --- the pure-Node launcher ---------------------------------------------------------------------

test('launcher: a named fd; the service finds it, serves HTTP, tells NOTIFY_SOCKET, drains', async (t) => {
  const server = await listener(t);
  const receiver = canNotify ? await notifyReceiver(t) : undefined;
  const child = launch(t, 'systemd-activated', ['--http', 'http'], {
    fds: [server],
    names: 'http',
    env: receiver ? { NOTIFY_SOCKET: receiver.address } : {},
  });
  await stderrLine(child, /^ready$/);
  const port = portOf(server);
  server.close(); // only the service accepts from here on
  assert.match(child.stderr(), /^fds \[\{"fd":3,"name":"http"\}\] pid \d+$/m);
  assert.match(child.stderr(), /^kinds \["listening"\]$/m);
  const pid = pidFrom(child);
  assert.deepEqual(await requests(port, ['/a', '/b']), [
    `hello from http pid ${pid} /a`,
    `hello from http pid ${pid} /b`,
  ]);
  await stop(child);
  if (receiver) {
    const got = await receiver.received(2);
    assert.deepEqual(
      got.map((d) => [d.data, d.pid]),
      [
        ['READY=1\nSTATUS=Serving http on fd 3', pid],
        ['STOPPING=1\nSTATUS=Draining', pid],
      ],
    );
  }
});

test('launcher: two named fds for two services', async (t) => {
  const http = await listener(t);
  const tcp = await listener(t);
  const child = launch(t, 'systemd-activated', ['--http', 'web', '--echo', 'echo'], {
    fds: [http, tcp],
    names: 'web:echo',
  });
  await stderrLine(child, /^ready$/);
  const [httpPort, tcpPort] = [portOf(http), portOf(tcp)];
  http.close();
  tcp.close();
  assert.match(child.stderr(), /^fds \[\{"fd":3,"name":"web"\},\{"fd":4,"name":"echo"\}\]/m);
  const [body] = await requests(httpPort, ['/x']);
  assert.match(body!, /^hello from web pid \d+ \/x$/);
  assert.equal(await echo(tcpPort, 'over fd 4'), 'over fd 4');
  await stop(child);
});

test('launcher: a unit without names works by position', async (t) => {
  const a = await listener(t);
  const b = await listener(t);
  const child = launch(t, 'systemd-activated', ['--http', '1', '--echo', '0'], { fds: [a, b] });
  await stderrLine(child, /^ready$/);
  const [aPort, bPort] = [portOf(a), portOf(b)];
  a.close();
  b.close();
  assert.match(child.stderr(), /"name":"unknown"\},\{"fd":4,"name":"unknown"\}/);
  assert.equal(await echo(aPort, 'first fd'), 'first fd');
  assert.match((await requests(bPort, ['/p']))[0]!, /^hello from unknown pid \d+ \/p$/);
  await stop(child);
});

test('launcher: asking for a name that was not passed fails, listing what was', async (t) => {
  const server = await listener(t);
  const child = launch(t, 'systemd-activated', ['--http', 'tasks'], {
    fds: [server],
    names: 'http',
  });
  assert.notEqual(await exitWithin(child, 15_000), 0);
  assert.match(child.stderr(), /no listen fd named "tasks"; passed: 3 \(http\)/);
});

/** The launcher as Accept=yes: accept one connection, hand it over at fd 3 (or 0/1 inetd). */
async function acceptOne(
  t: TestContext,
  start: (connection: Socket) => Child,
): Promise<{ port: number; child: Promise<Child> }> {
  const server = createServer({ pauseOnConnect: true });
  t.after(() => server.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const child = new Promise<Child>((resolve) => {
    server.once('connection', (connection: Socket) => {
      const started = start(connection);
      connection.destroy(); // our copy only: the child's keeps the connection open
      server.close();
      resolve(started);
    });
  });
  return { port: portOf(server), child };
}

test('launcher: Accept=yes, one HTTP connection with keep-alive requests, then exit 0', async (t) => {
  const { port, child } = await acceptOne(t, (connection) =>
    launch(t, 'systemd-activated', [], { fds: [connection], names: 'connection' }),
  );
  const bodies = requests(port, ['/1', '/2', '/3']);
  const service = await child;
  assert.equal((await bodies).length, 3);
  assert.equal(await exitWithin(service, 15_000), 0, service.stderr());
  assert.match(service.stderr(), /^kinds \["connected"\]$/m);
  assert.match(service.stderr(), /^accepted connected 127\.0\.0\.1:\d+$/m);
  assert.match(service.stderr(), /^served$/m);
});

test('launcher: inetd style, a TCP echo on fd 0/1, then exit 0', async (t) => {
  const { port, child } = await acceptOne(t, (connection) =>
    launch(t, 'systemd-activated', ['--inetd', '--serve', 'echo'], { inetd: connection }),
  );
  const reply = echo(port, 'inetd echo');
  const service = await child;
  assert.equal(await reply, 'inetd echo');
  assert.equal(await exitWithin(service, 15_000), 0, service.stderr());
  assert.match(service.stderr(), /^accepted connected 127\.0\.0\.1:\d+$/m);
});

// --- systemd-socket-activate --------------------------------------------------------------------

test('systemd-socket-activate: listen mode, a named fd, READY from the exec’d pid', {
  skip: noActivator,
}, async (t) => {
  const receiver = canNotify ? await notifyReceiver(t) : undefined;
  const { child, port } = await activate(
    t,
    ['--fdname=http'],
    fixtureCommand('systemd-activated', ['--http', 'http']),
    { env: receiver ? { NOTIFY_SOCKET: receiver.address } : {} },
  );
  // It execs the service on the first connection, so LISTEN_PID is the activator's own pid.
  const bodies = requests(port, ['/first', '/second']);
  await stderrLine(child, /^ready$/);
  assert.equal(pidFrom(child), child.proc.pid);
  assert.match(child.stderr(), /^fds \[\{"fd":3,"name":"http"\}\]/m);
  assert.deepEqual(await bodies, [
    `hello from http pid ${child.proc.pid} /first`,
    `hello from http pid ${child.proc.pid} /second`,
  ]);
  await stop(child);
  if (receiver) {
    const got = await receiver.received(2);
    assert.deepEqual(
      got.map((d) => [d.data, d.pid]),
      [
        ['READY=1\nSTATUS=Serving http on fd 3', child.proc.pid],
        ['STOPPING=1\nSTATUS=Draining', child.proc.pid],
      ],
    );
  }
});

test('systemd-socket-activate: two named fds for two services', {
  skip: noActivator,
}, async (t) => {
  const { child, ports } = await activate(
    t,
    ['--fdname=http:echo'],
    fixtureCommand('systemd-activated', ['--http', 'http', '--echo', 'echo']),
    { listeners: 2 },
  );
  const reply = echo(ports[1]!, 'second socket');
  await stderrLine(child, /^ready$/);
  assert.match(child.stderr(), /^fds \[\{"fd":3,"name":"http"\},\{"fd":4,"name":"echo"\}\]/m);
  assert.equal(await reply, 'second socket');
  assert.match((await requests(ports[0]!, ['/h']))[0]!, /^hello from http pid \d+ \/h$/);
  await stop(child);
});

test('systemd-socket-activate -a: one HTTP connection, keep-alive requests, the child exits 0', {
  skip: noActivator,
}, async (t) => {
  const { child, port } = await activate(t, ['-a'], fixtureCommand('systemd-activated'));
  assert.equal((await requests(port, ['/1', '/2'])).length, 2);
  await stderrLine(child, /^Child \d+ died with code 0$/);
  const [pid] = forkedPids(child);
  assert.match(
    child.stderr(),
    new RegExp(`^fds \\[\\{"fd":3,"name":"unknown"\\}\\] pid ${pid}$`, 'm'),
  );
  assert.match(child.stderr(), /^kinds \["connected"\]$/m, '-a sets no names: /proc tells');
  assert.match(child.stderr(), /^served$/m);
  child.proc.kill('SIGTERM');
  await exitWithin(child, 10_000);
});

test('systemd-socket-activate --inetd: a TCP echo on fd 0/1, the child exits 0', {
  skip: noActivator,
}, async (t) => {
  const { child, port } = await activate(
    t,
    ['--inetd', '-a'],
    fixtureCommand('systemd-activated', ['--inetd', '--serve', 'echo']),
  );
  assert.equal(await echo(port, 'hello inetd'), 'hello inetd');
  await stderrLine(child, /^Child \d+ died with code 0$/);
  assert.match(child.stderr(), /^accepted connected 127\.0\.0\.1:\d+$/m);
  child.proc.kill('SIGTERM');
  await exitWithin(child, 10_000);
});
