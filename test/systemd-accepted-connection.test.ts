import assert from 'node:assert/strict';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import {
  type AddressInfo,
  createServer,
  connect as netConnect,
  type Server,
  type Socket,
} from 'node:net';
import { type TestContext, test } from 'node:test';
import {
  acceptedConnection,
  isConnectionFd,
  NotAConnectionError,
  serveOneConnection,
} from '../src/index.js';
import { fdOf } from './fixtures/systemd-harness.js';
import { sleep, waitFor } from './helpers.js';

/**
 * A plain acceptor stands in for the service manager: every connection it accepts is handed to
 * `hand`, as if it had arrived on fd 3.
 */
async function acceptor(t: TestContext, hand: (socket: Socket) => void): Promise<number> {
  const server = createServer(hand);
  t.after(() => server.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

async function client(t: TestContext, port: number): Promise<Socket> {
  const socket = netConnect(port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.setEncoding('utf8');
  await once(socket, 'connect');
  return socket;
}

function httpServer(t: TestContext): HttpServer {
  const server = createHttpServer(
    // Short timeouts, checked often, so the test can see them work.
    { headersTimeout: 300, requestTimeout: 500, connectionsCheckingInterval: 100 },
    (req, res) => res.end(`hello ${req.url}`),
  );
  t.after(() => server.close());
  return server;
}

function responses(text: string): string[] {
  return [...text.matchAll(/hello (\/[a-z0-9]+)/g)].map((m) => m[1]!);
}

test('an http.Server serves one handed-over connection, keep-alive requests included', async (t) => {
  const server = httpServer(t);
  let served: Promise<void> | undefined;
  const port = await acceptor(t, (socket) => {
    served = serveOneConnection(server, socket);
  });
  const c = await client(t, port);
  let text = '';
  c.on('data', (d) => {
    text += d;
  });
  c.write('GET /one HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor(() => responses(text).length === 1, 'the first response');
  assert.match(text, /Connection: keep-alive/);
  c.write('GET /two HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor(() => responses(text).length === 2, 'the second response on the same connection');
  assert.equal(server.listening, false, 'no listener was ever opened');
  let ended = false;
  void served!.then(() => {
    ended = true;
  });
  await sleep(50);
  assert.equal(ended, false, 'still serving while the client keeps the connection');
  c.end();
  await served;
  assert.deepEqual(responses(text), ['/one', '/two']);
});

test("the recipe: with 'listening' emitted first, headersTimeout cuts a slow client", async (t) => {
  const server = httpServer(t);
  const port = await acceptor(t, (socket) => void serveOneConnection(server, socket));
  const c = await client(t, port);
  let text = '';
  c.on('data', (d) => {
    text += d;
  });
  const started = Date.now();
  c.write('GET / HTTP/1.1\r\nHost: x\r\n'); // and never the blank line
  await once(c, 'close');
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 5_000, `cut after ${took} ms`);
  assert.match(text, /^HTTP\/1\.1 408/);
});

test("why the recipe: without 'listening' Node never times the connection out", async (t) => {
  const server = httpServer(t);
  let handed: Socket | undefined;
  const port = await acceptor(t, (socket) => {
    handed = socket;
    server.emit('connection', socket); // what serveOneConnection does, minus 'listening'
  });
  const c = await client(t, port);
  c.write('GET / HTTP/1.1\r\nHost: x\r\n');
  await sleep(1_500); // five times headersTimeout, fifteen checking intervals
  assert.equal(c.destroyed, false, 'the slow client still holds the connection');
  server.closeIdleConnections();
  await sleep(100);
  assert.equal(c.destroyed, false, 'closeIdleConnections does not know it either');
  handed?.destroy();
});

test('closeIdleConnections ends the one connection once it is idle between requests', async (t) => {
  const server = httpServer(t);
  let served: Promise<void> | undefined;
  const port = await acceptor(t, (socket) => {
    served = serveOneConnection(server, socket);
  });
  const c = await client(t, port);
  let text = '';
  c.on('data', (d) => {
    text += d;
  });
  c.write('GET /a HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor(() => responses(text).length === 1, 'the response');
  const closed = once(c, 'close');
  server.closeIdleConnections();
  await served;
  await closed;
});

test("a net.Server gets the connection as its own; it is not told 'listening'", async (t) => {
  const server: Server = createServer((socket) => socket.pipe(socket));
  t.after(() => server.close());
  let told = 0;
  server.on('listening', () => told++);
  let served: Promise<void> | undefined;
  const port = await acceptor(t, (socket) => {
    served = serveOneConnection(server, socket);
  });
  const c = await client(t, port);
  c.end('echo me');
  let text = '';
  for await (const d of c) text += d;
  assert.equal(text, 'echo me');
  await served;
  assert.equal(told, 0);
});

test("an http.Server is told 'listening' once, however many connections it is handed", async (t) => {
  const server = httpServer(t);
  let told = 0;
  server.on('listening', () => told++);
  const port = await acceptor(t, (socket) => void serveOneConnection(server, socket));
  for (const path of ['/1', '/2']) {
    const c = await client(t, port);
    c.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    let text = '';
    for await (const d of c) text += d;
    assert.deepEqual(responses(text), [path]);
  }
  assert.equal(told, 1);
});

test('serveOneConnection resolves at once for a socket already destroyed; checks its arguments', async () => {
  const server = createServer();
  const socket = netConnect({ port: 9, host: '127.0.0.1' });
  socket.on('error', () => {});
  socket.destroy();
  await serveOneConnection(server, socket);
  assert.throws(() => serveOneConnection({} as Server, socket), /server must be a net\.Server/);
  assert.throws(() => serveOneConnection(server, {} as Socket), /socket must be a net\.Socket/);
});

test('acceptedConnection refuses what is plainly not a connection, saying why', async (t) => {
  const listener = createServer();
  t.after(() => listener.close());
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const file = openSync(process.execPath, 'r');
  t.after(() => closeSync(file));
  const cases: [number, RegExp][] = [
    [fdOf(listener), /is a listening socket \(the unit has Accept=no\)/],
    [file, /is not a socket/],
    [100_000, /is not open/],
  ];
  for (const [fd, message] of cases) {
    assert.throws(
      () => acceptedConnection({ fd }),
      (err: unknown) => {
        assert.ok(err instanceof NotAConnectionError, String(err));
        assert.equal(err.code, 'ERR_BERTH_NOT_A_CONNECTION');
        assert.equal(err.fd, fd);
        assert.match(err.message, message);
        return true;
      },
    );
  }
  // The listener was only looked at: it still accepts.
  const c = netConnect((listener.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => c.destroy());
  await once(c, 'connect');
});

test('acceptedConnection: bad options fail at construction, naming the option', () => {
  assert.throws(() => acceptedConnection({ fd: -1 }), /fd must be a non-negative integer, got -1/);
  assert.throws(
    () => acceptedConnection({ inetd: 'yes' as unknown as boolean }),
    /inetd must be a boolean/,
  );
  assert.throws(
    () => acceptedConnection({ port: 1 } as unknown as object),
    /acceptedConnection\.port is not a known option/,
  );
});

test('isConnectionFd: /proc decides; when it cannot, the name "connection" does', async (t) => {
  assert.equal(isConnectionFd({ fd: 3, name: 'http' }, 'connected'), true);
  assert.equal(isConnectionFd({ fd: 3, name: 'connection' }, 'listening'), false);
  assert.equal(isConnectionFd({ fd: 3, name: 'connection' }, 'unknown'), true);
  assert.equal(isConnectionFd({ fd: 3, name: 'unknown' }, 'unknown'), false);
  const listener = createServer();
  t.after(() => listener.close());
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  assert.equal(isConnectionFd({ fd: fdOf(listener), name: 'connection' }), false);
});
