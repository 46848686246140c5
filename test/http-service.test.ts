import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { Registry } from 'prom-client';
import {
  AddressInUseError,
  HttpService,
  type HttpServiceOptions,
  InvalidOptionError,
  ShutdownTimeoutError,
} from '../src/index.js';
import { connect, FIXTURES, readAll, sleep, waitFor } from './helpers.js';

const tls = {
  key: readFileSync(join(FIXTURES, 'tls', 'key.pem')),
  cert: readFileSync(join(FIXTURES, 'tls', 'cert.pem')),
};

const hello = (_req: http.IncomingMessage, res: http.ServerResponse) => res.end('Hello world.');

async function startHttp(t: TestContext, options: Partial<HttpServiceOptions> = {}) {
  const service = new HttpService({
    port: 0,
    host: '127.0.0.1',
    handler: hello,
    registry: null,
    ...options,
  });
  t.after(() => service.destroy());
  await service.start();
  return { service, port: (service.address() as AddressInfo).port };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function get(port: number, path = '/', agent?: http.Agent): Promise<Reply> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, async (res) => {
        resolve({ status: res.statusCode!, headers: res.headers, body: await readAll(res) });
      })
      .on('error', reject);
  });
}

/** Sends raw request bytes on an open socket and reads one response (small bodies only). */
async function rawRequest(socket: Socket, path: string): Promise<string> {
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
  const [chunk] = await once(socket, 'data');
  return chunk.toString();
}

test('serves requests and counts them by status class, with a duration histogram', async (t) => {
  const registry = new Registry();
  const { service, port } = await startHttp(t, {
    name: 'web',
    registry,
    handler: (req: http.IncomingMessage, res: http.ServerResponse) => {
      res.statusCode = req.url === '/missing' ? 404 : 200;
      res.end('x');
    },
  });
  assert.equal(service.state, 'ready');
  assert.equal((await get(port)).status, 200);
  assert.equal((await get(port, '/missing')).status, 404);
  assert.equal((await get(port)).status, 200);
  await waitFor(() => service.stats.responses['2xx'] === 2, 'responses to be counted');
  const stats = service.stats;
  assert.equal(stats.requests, 3);
  assert.equal(stats.responses['4xx'], 1);
  assert.equal(stats.busy, 0);
  assert.equal(stats.listening, 1);
  assert.equal(stats.address, `127.0.0.1:${port}`);
  const text = await registry.metrics();
  assert.match(text, /berth_http_responses_total\{service="web",class="2xx"\} 2/);
  assert.match(text, /berth_http_responses_total\{service="web",class="4xx"\} 1/);
  assert.match(text, /berth_http_requests_total\{service="web"\} 3/);
  assert.match(text, /berth_http_request_duration_seconds_count\{service="web",class="2xx"\} 2/);
});

test('a handler that throws or rejects answers 500, is counted, and the service goes on', async (t) => {
  const { service, port } = await startHttp(t, {
    handler: async (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (req.url === '/throw') throw new Error('sync-looking throw in an async handler');
      if (req.url === '/reject') return Promise.reject(new Error('rejected'));
      res.end('fine');
    },
  });
  assert.equal((await get(port, '/throw')).status, 500);
  assert.equal((await get(port, '/reject')).status, 500);
  assert.equal((await get(port, '/')).body, 'fine');
  assert.equal(service.stats.error, 2);

  const sync = await startHttp(t, {
    handler: () => {
      throw new Error('sync throw');
    },
  });
  assert.equal((await get(sync.port)).status, 500);
  assert.equal(sync.service.stats.error, 1);
});

test('wraps a connect/Express-style listener and an existing http.Server as they are', async (t) => {
  // A (req, res, next) listener, as Express apps are.
  const app = (req: http.IncomingMessage, res: http.ServerResponse, next?: () => void) => {
    if (next) throw new Error('called with next');
    res.setHeader('x-app', 'express-style');
    res.end(req.url);
  };
  const { port } = await startHttp(t, { handler: app });
  const reply = await get(port, '/path');
  assert.equal(reply.headers['x-app'], 'express-style');
  assert.equal(reply.body, '/path');

  const server = http.createServer((_req, res) => res.end('own listener'));
  const existing = await startHttp(t, { handler: undefined, server });
  assert.equal((await get(existing.port)).body, 'own listener');
  assert.equal(existing.service.stats.requests, 1);
});

test('close is bounded by idleGrace, not keepAliveTimeout, and a request in the grace is served', async (t) => {
  const { service, port } = await startHttp(t, { keepAliveTimeout: 60_000, idleGrace: 300 });
  const idle = await connect(t, port);
  const busy = await connect(t, port);
  assert.match(await rawRequest(idle, '/'), /Connection: keep-alive/i);
  assert.match(await rawRequest(busy, '/'), /Connection: keep-alive/i);

  const started = Date.now();
  const closing = service.close({ timeout: 10_000 });
  assert.equal(service.state, 'draining');
  // A request written during the grace is answered, and told to be the last.
  await sleep(50);
  const late = await rawRequest(busy, '/late');
  assert.match(late, /^HTTP\/1\.1 200/);
  assert.match(late, /Connection: close/i);
  await closing;
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 3_000, `close took ${took} ms`);
  assert.equal(service.state, 'closed');
  await waitFor(() => idle.closed && busy.closed, 'both sockets to be closed');
});

test('a request still running at the deadline is destroyed, and close says so', async (t) => {
  const { service, port } = await startHttp(t, {
    handler: () => {
      /* never answers */
    },
  });
  const pending = get(port).catch((err: NodeJS.ErrnoException) => err.code);
  await waitFor(() => service.stats.busy === 1, 'the request to arrive');
  await assert.rejects(service.close({ timeout: 200 }), (err: unknown) => {
    assert.ok(err instanceof ShutdownTimeoutError);
    assert.equal(err.remaining, 1);
    return true;
  });
  assert.equal(await pending, 'ECONNRESET');
  await waitFor(() => service.stats.aborted === 1, 'the cut request to be counted as aborted');
});

test('start on a busy port rejects with ERR_BERTH_ADDRESS_IN_USE', async (t) => {
  const blocker = createNetServer().listen(0, '127.0.0.1');
  t.after(() => blocker.close());
  await once(blocker, 'listening');
  const { port } = blocker.address() as AddressInfo;
  const service = new HttpService({ port, host: '127.0.0.1', handler: hello, registry: null });
  await assert.rejects(service.start(), AddressInUseError);
  assert.equal(service.state, 'closed');
});

test('HTTPS: serves and drains over TLS', async (t) => {
  const { service, port } = await startHttp(t, {
    tls,
    handler: (_req: http.IncomingMessage, res: http.ServerResponse) =>
      setTimeout(() => res.end('secure'), 50),
  });
  const agent = new https.Agent({ keepAlive: true, ca: tls.cert });
  t.after(() => agent.destroy());
  const request = () =>
    new Promise<Reply>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port, servername: 'localhost', agent }, async (res) => {
          resolve({ status: res.statusCode!, headers: res.headers, body: await readAll(res) });
        })
        .on('error', reject);
    });
  assert.equal((await request()).body, 'secure');
  const inflight = request();
  await waitFor(() => service.stats.busy === 1, 'the request to arrive');
  const closing = service.close({ timeout: 5_000 });
  const reply = await inflight;
  assert.equal(reply.body, 'secure');
  assert.equal(reply.headers.connection, 'close');
  await closing;
});

test('HTTP/2: GOAWAY on close, open streams finish, the session then ends', async (t) => {
  const { service, port } = await startHttp(t, {
    tls,
    http2: true,
    handler: (_req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
      setTimeout(() => res.end('h2 done'), 150);
    },
  });
  const session = http2.connect(`https://localhost:${port}`, { ca: tls.cert });
  t.after(() => session.destroy());
  const goaway = once(session, 'goaway');
  const streams = [1, 2, 3].map(async () => {
    const stream = session.request({ ':path': '/' });
    const [headers] = await once(stream, 'response');
    return { status: headers[':status'], body: await readAll(stream) };
  });
  await waitFor(() => service.stats.busy === 3, 'three streams in flight');
  const closing = service.close({ timeout: 5_000 });
  await goaway;
  assert.deepEqual(await Promise.all(streams), [
    { status: 200, body: 'h2 done' },
    { status: 200, body: 'h2 done' },
    { status: 200, body: 'h2 done' },
  ]);
  await closing;
  assert.equal(service.stats.aborted, 0);
  assert.equal(service.stats.responses['2xx'], 3);
});

test('HTTP/2 over TLS still serves HTTP/1.1 clients', async (t) => {
  const { port } = await startHttp(t, { tls, http2: true });
  const body = await new Promise<string>((resolve, reject) => {
    https
      .get({ host: '127.0.0.1', port, servername: 'localhost', ca: tls.cert }, async (res) =>
        resolve(await readAll(res)),
      )
      .on('error', reject);
  });
  assert.equal(body, 'Hello world.');
});

/** Answers an upgrade with 101 and then echoes, the way a WebSocket server holds a socket. */
function upgradeRequest(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    http
      .request({ host: '127.0.0.1', port, headers: { connection: 'upgrade', upgrade: 'echo' } })
      .on('upgrade', (_res, socket) => resolve(socket))
      .on('error', reject)
      .end();
  });
}

test('upgraded connections are told through their signal and may close politely', async (t) => {
  const { service, port } = await startHttp(t, {
    upgrade: (_req, socket, _head, { signal }) => {
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n',
      );
      socket.pipe(socket);
      signal.addEventListener('abort', () => socket.end('going away'), { once: true });
    },
  });
  const socket = await upgradeRequest(port);
  t.after(() => socket.destroy());
  await waitFor(() => service.stats.upgraded === 1, 'the upgrade to be tracked');
  const said = readAll(socket);
  await service.close({ timeout: 5_000 });
  assert.equal(await said, 'going away');
  assert.equal(service.stats.upgraded, 0);
});

test('an upgraded connection that ignores its signal is destroyed at the deadline', async (t) => {
  const { service, port } = await startHttp(t, {
    upgrade: (_req, socket) => {
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n',
      );
    },
  });
  const socket = await upgradeRequest(port);
  t.after(() => socket.destroy());
  await waitFor(() => service.stats.upgraded === 1, 'the upgrade to be tracked');
  await assert.rejects(service.close({ timeout: 200 }), ShutdownTimeoutError);
  await once(socket, 'close');
});

test('an Upgrade on a keep-alive socket in its idle grace is left to its handler until the deadline', async (t) => {
  const { service, port } = await startHttp(t, {
    idleGrace: 200,
    keepAliveTimeout: 60_000,
    // A handler that finishes its work before it honours the signal: it ends the socket itself.
    upgrade: (_req, socket) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n');
      setTimeout(() => socket.end('bye'), 800);
    },
  });
  const socket = await connect(t, port);
  socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await once(socket, 'data');
  const t0 = performance.now();
  const closing = service.close({ timeout: 3_000 });
  await sleep(50); // inside the socket's idle grace
  const said = readAll(socket);
  socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n');
  const text = await said;
  const closedAfter = performance.now() - t0;
  assert.match(text, /^HTTP\/1\.1 101 /);
  assert.match(text, /bye$/, 'the handler ended the socket, not the drain');
  assert.ok(closedAfter >= 800, `closed after ${Math.round(closedAfter)} ms, before its handler`);
  await closing;
});

test('without an upgrade handler an Upgrade request is an ordinary request, as in Node', async (t) => {
  const { port } = await startHttp(t);
  const reply = await new Promise<string>((resolve, reject) => {
    http
      .request(
        { host: '127.0.0.1', port, headers: { connection: 'upgrade', upgrade: 'echo' } },
        async (res) => resolve(await readAll(res)),
      )
      .on('error', reject)
      .end();
  });
  assert.equal(reply, 'Hello world.');
});

test('bad options fail at construction, naming the option', () => {
  const cases: [Partial<HttpServiceOptions>, RegExp][] = [
    [{ port: 0 }, /handler must be a function, got undefined/],
    [{ port: 0, handler: 'x' as unknown as () => void }, /handler must be a function, got "x"/],
    [{ handler: hello }, /nowhere to listen/],
    [
      { port: 70_000, handler: hello },
      /HttpService\.port must be an integer from 0 to 65535, got 70000/,
    ],
    [
      { port: 0, handler: hello, idleGrace: -5 },
      /idleGrace must be a non-negative integer \(ms\), got -5/,
    ],
    [
      { port: 0, handler: hello, keepAliveTimeout: 1.5 },
      /keepAliveTimeout must be a non-negative integer \(ms\)/,
    ],
    [{ port: 0, handler: hello, http2: 'yes' as unknown as boolean }, /http2 must be a boolean/],
    [{ handler: hello, server: http.createServer() }, /the given server is not listening/],
    [
      { port: 0, handler: hello, tls, server: http.createServer() },
      /give tls\/http2 or a server, not both/,
    ],
    [{ port: 0, server: http.createServer() }, /nothing handles requests/],
    [
      { port: 0, handler: hello, timeout: 5 } as Partial<HttpServiceOptions>,
      /HttpService\.timeout is not a known option/,
    ],
  ];
  for (const [options, message] of cases) {
    assert.throws(
      () => new HttpService({ registry: null, ...options } as HttpServiceOptions),
      (err: unknown) => {
        assert.ok(err instanceof Error && 'code' in err, `not a coded error: ${String(err)}`);
        assert.match(err.message, message);
        return true;
      },
    );
  }
  assert.throws(
    () => new HttpService({ port: 0, handler: hello, registry: null, shutdownTimeout: -1 }),
    InvalidOptionError,
  );
});

test('the idle grace counts from when a socket went idle: a long-idle socket closes at once', async (t) => {
  const { service, port } = await startHttp(t, { keepAliveTimeout: 60_000, idleGrace: 400 });
  const longIdle = await connect(t, port);
  assert.match(await rawRequest(longIdle, '/'), /^HTTP\/1\.1 200/);
  await sleep(600); // idle for longer than the grace before the drain begins
  const started = Date.now();
  await service.close({ timeout: 10_000 });
  const took = Date.now() - started;
  assert.ok(took < 300, `a socket idle for longer than idleGrace held the close for ${took} ms`);
  await waitFor(() => longIdle.closed, 'the long-idle socket to be closed');
});

test('a request written on a long-idle socket as the drain begins is read and answered', async (t) => {
  const { service, port } = await startHttp(t, { keepAliveTimeout: 60_000, idleGrace: 200 });
  const sockets = await Promise.all(Array.from({ length: 20 }, () => connect(t, port)));
  for (const socket of sockets) assert.match(await rawRequest(socket, '/'), /^HTTP\/1\.1 200/);
  await sleep(300); // every socket idle for longer than the grace
  const late = sockets[7]!;
  const reply = once(late, 'data');
  // On loopback the bytes are in the server's kernel buffer when write() returns; the server
  // has not read them yet when the drain begins, in the same tick.
  late.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n');
  const closing = service.close({ timeout: 5_000 });
  const text = String((await reply)[0]);
  assert.match(text, /^HTTP\/1\.1 200/);
  assert.match(text, /Connection: close/i);
  await closing;
  assert.equal(service.stats.open, 0);
  assert.equal(service.stats.requests, 21);
  assert.equal(service.stats.aborted, 0);
  await waitFor(() => sockets.every((s) => s.closed), 'every socket to be closed');
});

test('HTTPS: long-idle TLS sockets are closed at once by the drain', async (t) => {
  const { service, port } = await startHttp(t, { tls, keepAliveTimeout: 60_000, idleGrace: 200 });
  const agent = new https.Agent({ keepAlive: true, ca: tls.cert, maxSockets: 5 });
  t.after(() => agent.destroy());
  const request = () =>
    new Promise<Reply>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port, servername: 'localhost', agent }, async (res) => {
          resolve({ status: res.statusCode!, headers: res.headers, body: await readAll(res) });
        })
        .on('error', reject);
    });
  await Promise.all(Array.from({ length: 5 }, request));
  assert.equal(service.stats.open, 5);
  await sleep(300);
  const started = Date.now();
  await service.close({ timeout: 5_000 });
  const took = Date.now() - started;
  assert.ok(took < 150, `long-idle TLS sockets held the close for ${took} ms`);
  assert.equal(service.stats.open, 0);
});

test('a body its handler left unread: up to 256 KiB is discarded and the connection kept; past it the connection ends after the response', async (t) => {
  const { port } = await startHttp(t, { handler: (_req, res) => res.end('ok') });
  // 64 KiB unread, then a second request on the same connection: both answered.
  const small = await connect(t, port);
  let text = '';
  small.on('data', (d: Buffer) => {
    text += d.toString('latin1');
  });
  small.write(`POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n`);
  small.write(Buffer.alloc(65_536, 'b'));
  small.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor(() => (text.match(/HTTP\/1\.1 200 OK/g) ?? []).length === 2, 'two answers');
  assert.equal(small.destroyed, false);

  // 100 MiB declared, sent as fast as the server takes it: the answer arrives whole, then the
  // connection ends; the server stops reading, so the sender is held to the kernel's buffers.
  const big = await connect(t, port);
  let reply = '';
  let ended = false;
  big.on('data', (d: Buffer) => {
    reply += d.toString('latin1');
  });
  big.on('end', () => {
    ended = true;
  });
  big.on('error', () => {}); // the reset that follows the linger is expected
  big.write(`POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${100 * 2 ** 20}\r\n\r\n`);
  const chunk = Buffer.alloc(2 ** 20, 'c');
  let sent = 0;
  while (!big.destroyed && sent < 100 * 2 ** 20) {
    sent += chunk.length;
    if (!big.write(chunk)) {
      // Not events.once: it rejects on 'error', and the EPIPE that follows the server's linger
      // is expected here.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          big.off('drain', done);
          big.off('close', done);
          resolve();
        };
        const timer = setTimeout(done, 2_000);
        big.once('drain', done);
        big.once('close', done);
      });
      if (big.writableNeedDrain) break; // held: the server reads no more
    }
  }
  await waitFor(() => ended, 'the connection to end after the answer');
  assert.match(reply, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  assert.ok(sent < 50 * 2 ** 20, `the server read on: ${sent / 2 ** 20} MiB taken`);
});

test('pipelined requests queued behind a response count as done when their socket dies: close() does not wait for them', async (t) => {
  const body = 'x'.repeat(4_096); // enough that the responses fill the socket's buffers
  const { service, port } = await startHttp(t, { handler: (_req, res) => res.end(body) });
  const socket = await connect(t, port);
  socket.pause(); // never read: Node stops parsing once responses back up, with requests queued
  const burst = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(2_000));
  for (let i = 0; i < 64; i++) socket.write(burst); // 3.5 MB, whatever the server reads of it
  await waitFor(() => service.stats.requests > 1_000, 'requests parsed');
  await sleep(200);
  assert.ok(
    service.stats.busy > 1,
    `${service.stats.busy} queued responses ${JSON.stringify(service.stats)}`,
  );
  socket.destroy();
  await waitFor(() => service.stats.open === 0, 'the socket closed');
  await waitFor(() => service.stats.busy === 0, 'no request counted in flight', 2_000);
  const s = service.stats;
  assert.equal(s.requests, s.responses['2xx'] + s.aborted, 'each request answered or aborted');
  const t0 = performance.now();
  await service.close({ timeout: 5_000 });
  assert.ok(performance.now() - t0 < 1_000, 'the close did not wait for the dead requests');
});

test('a client trickling its request headers during a drain gets one more grace, not the whole deadline', async (t) => {
  const { service, port } = await startHttp(t, { idleGrace: 200 });
  const sockets = await Promise.all(Array.from({ length: 5 }, () => connect(t, port)));
  for (const s of sockets) {
    s.on('error', () => {});
    s.write('GET / HTTP/1.1\r\nHost: x\r\n');
  }
  const drip = setInterval(() => {
    for (const s of sockets) if (!s.destroyed) s.write('X-Slow: 1\r\n');
  }, 50);
  t.after(() => clearInterval(drip));
  const t0 = performance.now();
  await service.close({ timeout: 5_000 }); // resolves: no ShutdownTimeoutError
  const took = performance.now() - t0;
  clearInterval(drip);
  assert.ok(took < 2_000, `the drain took ${Math.round(took)} ms`);
  // A request whose headers were whole before the drain is still answered: see the tests above.
});
