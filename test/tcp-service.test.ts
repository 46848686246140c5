import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { addAbortListener, once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { createServer as createTlsServer, connect as tlsConnect } from 'node:tls';
import { Registry } from 'prom-client';
import {
  AddressInUseError,
  type ConnectionContext,
  type ConnectionHandler,
  InvalidOptionError,
  ServiceClosedError,
  ServiceClosingError,
  ShutdownTimeoutError,
  TcpService,
  type TcpServiceOptions,
  WriteBufferFullError,
} from '../src/index.js';
import {
  connect,
  duplexPair,
  exitWithin,
  FIXTURES,
  nextData,
  readAll,
  sleep,
  spawnChild,
  spawnFixture,
  waitFor,
} from './helpers.js';

/** Echoes until the peer ends; when the service closes, flushes, ends, and stops reading. */
const echo: ConnectionHandler = async (conn, { signal }) => {
  using _ = addAbortListener(signal, () => conn.end(() => conn.destroy()));
  try {
    for await (const chunk of conn) conn.write(chunk);
  } catch (err) {
    if (!signal.aborted) throw err;
  }
};

async function startService(
  t: import('node:test').TestContext,
  options: Partial<TcpServiceOptions> = {},
): Promise<{ service: TcpService; port: number }> {
  const service = new TcpService({
    port: 0,
    host: '127.0.0.1',
    handler: echo,
    registry: null,
    ...options,
  });
  t.after(() => service.destroy());
  await service.start();
  return { service, port: (service.address() as AddressInfo).port };
}

test('echo round-trip', async (t) => {
  const { port } = await startService(t);
  const client = await connect(t, port);
  client.end('hello, berth');
  assert.equal(await readAll(client), 'hello, berth');
});

test("ctx: an id per connection, from 1, and the client's address and port", async (t) => {
  const seen: { id: number; address: string | undefined; port: number | undefined }[] = [];
  const { port } = await startService(t, {
    handler: (conn, ctx) => {
      seen.push({ id: ctx.id, address: ctx.remoteAddress, port: ctx.remotePort });
      conn.end();
    },
  });
  const ports: number[] = [];
  for (let i = 0; i < 2; i++) {
    const client = await connect(t, port);
    ports.push(client.localPort!);
    await readAll(client);
  }
  assert.deepEqual(seen, [
    { id: 1, address: '127.0.0.1', port: ports[0] },
    { id: 2, address: '127.0.0.1', port: ports[1] },
  ]);
});

test('stats: busy rises and falls, count and error accumulate', async (t) => {
  const release: (() => void)[] = [];
  const { service, port } = await startService(t, {
    handler: async (conn) => {
      const first = await nextData(conn);
      if (first === 'fail') throw new Error('asked to fail');
      await new Promise<void>((resolve) => release.push(resolve));
      conn.write('bye');
    },
  });
  assert.deepEqual(
    { busy: service.stats.busy, count: service.stats.count, listening: service.stats.listening },
    { busy: 0, count: 0, listening: 1 },
  );
  assert.equal(service.stats.address, `127.0.0.1:${port}`);

  const clients = await Promise.all([1, 2, 3].map(() => connect(t, port)));
  for (const c of clients) c.write('wait');
  await waitFor(() => release.length === 3, 'three handlers waiting');
  assert.equal(service.stats.busy, 3);
  assert.equal(service.stats.count, 3);

  const failing = await connect(t, port);
  failing.write('fail');
  await once(failing, 'close');
  assert.equal(service.stats.error, 1);
  assert.equal(service.stats.count, 4);

  for (const r of release) r();
  assert.deepEqual(await Promise.all(clients.map(readAll)), ['bye', 'bye', 'bye']);
  await waitFor(() => service.stats.busy === 0 && service.stats.open === 0, 'handlers to return');
  assert.equal(service.stats.error, 1);
});

test('a handler that throws or rejects is counted, its socket destroyed, and the service goes on', async (t) => {
  let calls = 0;
  const { service, port } = await startService(t, {
    handler: (conn) => {
      calls++;
      if (calls === 1) throw new Error('sync throw');
      if (calls === 2) return Promise.reject(new Error('async reject'));
      conn.end('still here');
    },
  });
  for (let i = 0; i < 2; i++) {
    const c = await connect(t, port);
    c.write('x');
    await once(c, 'close');
  }
  assert.equal(service.stats.error, 2);
  const c = await connect(t, port);
  assert.equal(await readAll(c), 'still here');
  assert.equal(service.state, 'ready');
});

test('a client that resets mid-handler is an ordinary event', async (t) => {
  let handlerSaw: unknown;
  const { service, port } = await startService(t, {
    handler: async (conn) => {
      try {
        for await (const chunk of conn) conn.write(chunk);
      } catch (err) {
        handlerSaw = err;
      }
    },
  });
  const client = await connect(t, port);
  client.write('go');
  await nextData(client);
  client.resetAndDestroy();
  await waitFor(() => service.stats.busy === 0 && service.stats.open === 0, 'the handler to end');
  assert.equal((handlerSaw as NodeJS.ErrnoException | undefined)?.code, 'ECONNRESET');
  assert.equal(service.stats.error, 0, 'a reset the handler handled is not a handler error');
  const again = await connect(t, port);
  again.end('ok');
  assert.equal(await readAll(again), 'ok');
});

test('a handler that rejects with its connection’s own error (a reset) counts under peerErrors, not error', async (t) => {
  const published: { id: number; error: unknown }[] = [];
  const onPeer = (m: unknown) => published.push(m as { id: number; error: unknown });
  const onError = () => assert.fail('a reset is not published as a handler failure');
  subscribe('berth:tcp:peer-error', onPeer);
  subscribe('berth:tcp:error', onError);
  t.after(() => {
    unsubscribe('berth:tcp:peer-error', onPeer);
    unsubscribe('berth:tcp:error', onError);
  });
  const { service, port } = await startService(t, {
    handler: async (conn) => {
      await pipeline(conn, conn);
    },
  });
  const client = await connect(t, port);
  client.write('go');
  await nextData(client);
  client.resetAndDestroy();
  await waitFor(() => service.stats.busy === 0 && service.stats.open === 0, 'the handler to end');
  assert.equal(service.stats.peerErrors, 1);
  assert.equal(service.stats.error, 0);
  assert.equal(published.length, 1);
  assert.equal((published[0]!.error as NodeJS.ErrnoException).code, 'ECONNRESET');
  // An error of the handler's own is still a handler error.
  const own = new TcpService({
    port: 0,
    host: '127.0.0.1',
    registry: null,
    handler: async (conn) => {
      await nextData(conn);
      throw new Error('a bug');
    },
  });
  t.after(() => own.destroy());
  unsubscribe('berth:tcp:error', onError);
  await own.start();
  const c = await connect(t, (own.address() as AddressInfo).port);
  c.write('x');
  await once(c, 'close');
  assert.deepEqual([own.stats.error, own.stats.peerErrors], [1, 0]);
});

test('maxWriteBuffer: a handler that ignores backpressure loses its connection at the limit; the service goes on', async (t) => {
  const overflows: { bytes: number; limit: number }[] = [];
  const onOverflow = (m: unknown) => overflows.push(m as { bytes: number; limit: number });
  subscribe('berth:tcp:overflow', onOverflow);
  t.after(() => unsubscribe('berth:tcp:overflow', onOverflow));
  let reason: unknown;
  const { service, port } = await startService(t, {
    maxWriteBuffer: 1_048_576,
    handler: async (conn, { signal }) => {
      signal.addEventListener('abort', () => {
        reason = signal.reason;
      });
      for await (const chunk of conn) conn.write(chunk); // ignores write()'s return value
    },
  });
  const peer = await connect(t, port);
  peer.on('error', () => {}); // the reset when the server cuts it
  peer.pause(); // reads nothing
  const chunk = Buffer.alloc(65_536, 'p');
  let sent = 0;
  while (!peer.destroyed && sent < 256 * 1_048_576) {
    sent += chunk.length;
    if (!peer.write(chunk)) {
      await Promise.race([
        once(peer, 'drain').catch(() => {}),
        once(peer, 'close').catch(() => {}),
        sleep(2_000),
      ]);
      if (peer.writableNeedDrain && !peer.destroyed) break;
    }
  }
  await waitFor(() => service.stats.overflows === 1, 'the connection destroyed');
  assert.ok(sent < 64 * 1_048_576, `the server read ${sent} bytes before it cut the peer`);
  assert.ok(reason instanceof WriteBufferFullError, `signal reason: ${String(reason)}`);
  assert.equal(reason.code, 'ERR_BERTH_WRITE_BUFFER_FULL');
  assert.equal(overflows.length, 1);
  assert.equal(overflows[0]!.limit, 1_048_576);
  assert.ok(overflows[0]!.bytes > 1_048_576);
  await waitFor(() => service.stats.busy === 0 && service.stats.open === 0, 'the handler to end');
  assert.equal(service.stats.error, 0, 'meeting its destroyed socket is not the handler’s error');
  const again = await connect(t, port);
  again.end('still echoing');
  assert.equal(await readAll(again), 'still echoing');
});

test('a handler that respects backpressure is throttled by a peer that reads nothing, never cut', async (t) => {
  const { service, port } = await startService(t, {
    maxWriteBuffer: 1_048_576,
    handler: async (conn) => {
      await pipeline(conn, conn);
    },
  });
  const peer = await connect(t, port);
  peer.pause();
  const chunk = Buffer.alloc(65_536, 'p');
  let sent = 0;
  for (;;) {
    sent += chunk.length;
    if (peer.write(chunk)) continue;
    const stalled = await Promise.race([
      once(peer, 'drain').then(() => false),
      sleep(500).then(() => true),
    ]);
    if (stalled) break;
  }
  assert.equal(service.stats.overflows, 0);
  assert.equal(service.stats.open, 1);
  assert.ok(sent < 64 * 1_048_576, `the peer got ${sent} bytes in before it stalled`);
  // And everything it echoed arrives once the peer reads.
  peer.end();
  let got = 0;
  peer.on('data', (d: Buffer) => {
    got += d.length;
  });
  peer.resume();
  await once(peer, 'end');
  assert.equal(got, sent - peer.writableLength);
});

test('close waits for a slow handler that watches its signal', async (t) => {
  let sawReason: unknown;
  const { service, port } = await startService(t, {
    handler: async (conn, { signal }) => {
      await once(signal, 'abort');
      sawReason = signal.reason;
      await sleep(100); // finishing up takes a while
      conn.end('goodbye');
    },
  });
  const client = await connect(t, port);
  await waitFor(() => service.stats.busy === 1, 'the handler to start');
  const reply = readAll(client);
  const started = Date.now();
  await service.close({ timeout: 5_000 });
  assert.ok(Date.now() - started >= 90, 'close returned before the handler finished');
  assert.equal(await reply, 'goodbye');
  assert.ok(sawReason instanceof ServiceClosingError);
  assert.equal(service.state, 'closed');
  assert.equal(service.stats.listening, 0);
  await service.closed;
});

test('close with a handler that ignores its signal destroys it at the deadline', async (t) => {
  const { service, port } = await startService(t, {
    handler: async (conn) => {
      // Ignores its signal; returns only once its connection is destroyed.
      await once(conn, 'close');
    },
  });
  const client = await connect(t, port);
  await waitFor(() => service.stats.busy === 1, 'the handler to start');
  const started = Date.now();
  await assert.rejects(service.close({ timeout: 200 }), (err: unknown) => {
    assert.ok(err instanceof ShutdownTimeoutError);
    assert.equal(err.code, 'ERR_BERTH_SHUTDOWN_TIMEOUT');
    assert.equal(err.remaining, 1);
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took >= 190 && took < 2_000, `close took ${took} ms`);
  await once(client, 'close');
  await assert.rejects(service.closed, ShutdownTimeoutError);
  assert.equal(service.stats.busy, 0);
});

test('close is idempotent: a second call joins the first; start after close rejects', async (t) => {
  const { service, port } = await startService(t, {
    handler: async (conn, { signal }) => {
      await once(signal, 'abort');
      await sleep(50);
      conn.end();
    },
  });
  await connect(t, port);
  await waitFor(() => service.stats.busy === 1, 'the handler to start');
  const first = service.close();
  const second = service.close({ timeout: 10 });
  assert.equal(first, second);
  await first;
  await service.close();
  await service.destroy();
  await assert.rejects(service.start(), ServiceClosedError);
});

test('destroy is immediate, and closed rejects when live work was cut', async (t) => {
  const { service, port } = await startService(t, {
    handler: async (conn) => {
      await once(conn, 'close');
    },
  });
  const client = await connect(t, port);
  await waitFor(() => service.stats.busy === 1, 'the handler to start');
  await service.destroy();
  await once(client, 'close');
  await assert.rejects(service.closed, { code: 'ERR_BERTH_SERVICE_DESTROYED' });
  await service.destroy();
});

test('a signal given at construction closes the service', async (t) => {
  const controller = new AbortController();
  const { service, port } = await startService(t, { signal: controller.signal });
  const client = await connect(t, port);
  await waitFor(() => service.stats.busy === 1, 'the handler to start');
  controller.abort();
  await service.closed;
  assert.equal(service.state, 'closed');
  assert.equal(await readAll(client), '');
});

test('maxConnections: connections beyond it are closed at once and counted', async (t) => {
  const { service, port } = await startService(t, {
    maxConnections: 2,
    handler: async (conn) => {
      await once(conn, 'end');
    },
  });
  const held = [await connect(t, port), await connect(t, port)];
  await waitFor(() => service.stats.busy === 2, 'two handlers');
  const extra = await connect(t, port);
  await once(extra, 'close');
  await waitFor(() => service.stats.dropped === 1, 'the drop to be counted');
  assert.equal(service.stats.count, 2, 'a dropped connection never reaches a handler');
  for (const c of held) c.end();
  await waitFor(() => service.stats.open === 0, 'the held connections to close');
  const later = await connect(t, port);
  await waitFor(() => service.stats.count === 3, 'a connection under the limit to be served');
  later.end();
});

test('start on a busy port rejects with a coded error naming the address', async (t) => {
  const blocker = createServer();
  t.after(() => blocker.close());
  blocker.listen(0, '127.0.0.1');
  await once(blocker, 'listening');
  const port = (blocker.address() as AddressInfo).port;
  const service = new TcpService({ port, host: '127.0.0.1', handler: echo, registry: null });
  await assert.rejects(service.start(), (err: unknown) => {
    assert.ok(err instanceof AddressInUseError);
    assert.equal(err.code, 'ERR_BERTH_ADDRESS_IN_USE');
    assert.equal(err.address, `127.0.0.1:${port}`);
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
    return true;
  });
  assert.equal(service.state, 'closed');
  assert.equal(service.stats.listening, 0);
  await assert.rejects(service.closed, AddressInUseError);
});

test('listens on a unix socket path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'echo.sock');
  const service = new TcpService({ path, handler: echo, registry: null });
  t.after(() => service.destroy());
  await service.start();
  assert.equal(service.stats.address, path);
  const client = netConnect(path);
  t.after(() => client.destroy());
  client.end('over unix');
  assert.equal(await readAll(client), 'over unix');
});

test('serves an existing net.Server, listening or not', async (t) => {
  const server = createServer();
  const service = new TcpService({
    server,
    port: 0,
    host: '127.0.0.1',
    handler: echo,
    registry: null,
  });
  t.after(() => service.destroy());
  await service.start();
  const client = await connect(t, (server.address() as AddressInfo).port);
  client.end('existing');
  assert.equal(await readAll(client), 'existing');

  const listening = createServer();
  listening.listen(0, '127.0.0.1');
  await once(listening, 'listening');
  const adopted = new TcpService({ server: listening, handler: echo, registry: null });
  t.after(() => adopted.destroy());
  await adopted.start();
  assert.equal(adopted.stats.listening, 1);
});

test('serves a tls.Server: handlers get the decrypted stream; a close ends handshakes not yet done', async (t) => {
  const key = readFileSync(join(FIXTURES, 'tls', 'key.pem'));
  const cert = readFileSync(join(FIXTURES, 'tls', 'cert.pem'));
  const { service, port } = await startService(t, { server: createTlsServer({ key, cert }) });
  const secure = tlsConnect({ port, host: '127.0.0.1', ca: cert, servername: 'localhost' });
  t.after(() => secure.destroy());
  await once(secure, 'secureConnect');
  secure.write('over tls');
  assert.equal(await nextData(secure), 'over tls');
  assert.equal(service.stats.count, 1);
  assert.equal(service.stats.busy, 1);
  // A client that connected but never began its handshake: it has sent nothing to lose.
  const silent = await connect(t, port);
  const silentClosed = once(silent, 'close');
  await sleep(50);
  const said = readAll(secure);
  await service.close({ timeout: 2_000 }); // would reject at the deadline were it waited for
  await silentClosed;
  assert.equal(await said, '', 'the echo handler ended its TLS stream when told to close');
  assert.equal(service.stats.count, 1, 'a connection counts once its handshake is done');
});

test('listens on an fd passed by a parent process', async (t) => {
  // The parent binds the socket; the child adopts it as fd 3, as a supervisor would hand it over.
  const parentServer = createServer();
  parentServer.listen(0, '127.0.0.1');
  await once(parentServer, 'listening');
  const port = (parentServer.address() as AddressInfo).port;
  const fd = (parentServer as unknown as { _handle: { fd: number } })._handle.fd;
  const child = spawnFixture(t, 'tcp-echo', ['--fd', '3'], {
    stdio: ['ignore', 'pipe', 'pipe', fd],
  });
  await child.line(/^listening /);
  // Only the child accepts from here on.
  parentServer.close();
  const client = await connect(t, port);
  client.end('through an inherited fd');
  assert.equal(await readAll(client), 'through an inherited fd');
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('the handler can be driven with an in-memory duplex pair', async () => {
  const [serverSide, clientSide] = duplexPair();
  const controller = new AbortController();
  const ctx: ConnectionContext = {
    id: 1,
    signal: controller.signal,
    remoteAddress: undefined,
    remotePort: undefined,
    service: 'test',
  };
  const running = echo(serverSide, ctx);
  clientSide.write('in memory');
  assert.equal(await nextData(clientSide), 'in memory');
  controller.abort();
  assert.equal(await readAll(clientSide), '');
  await running;
});

test('metrics go into the given registry, labelled with the service name', async (t) => {
  const registry = new Registry();
  const { port } = await startService(t, { name: 'echo', registry });
  const client = await connect(t, port);
  client.end('x');
  await readAll(client);
  const text = await registry.metrics();
  assert.match(text, /berth_tcp_connections_total\{service="echo"\} 1/);
  assert.match(text, /berth_tcp_listening\{service="echo"\} 1/);
  assert.match(text, /berth_tcp_handler_errors_total\{service="echo"\} 0/);
  // A second service shares the metric families under its own label.
  const other = new TcpService({
    name: 'other',
    port: 0,
    host: '127.0.0.1',
    handler: echo,
    registry,
  });
  t.after(() => other.destroy());
  await other.start();
  assert.match(await registry.metrics(), /berth_tcp_listening\{service="other"\} 1/);
});

test('lifecycle events go out on diagnostics_channel', async (t) => {
  const seen: string[] = [];
  const on = (name: string) => (message: unknown) => {
    const m = message as { service: string };
    if (m.service === 'dc') seen.push(name);
  };
  const listeners = ['listening', 'connection', 'error', 'close'].map((e) => {
    const fn = on(e);
    subscribe(`berth:tcp:${e}`, fn);
    return [`berth:tcp:${e}`, fn] as const;
  });
  t.after(() => {
    for (const [name, fn] of listeners) unsubscribe(name, fn);
  });
  const { service, port } = await startService(t, {
    name: 'dc',
    handler: () => {
      throw new Error('boom');
    },
  });
  const c = await connect(t, port);
  await once(c, 'close');
  await service.close();
  assert.deepEqual(seen, ['listening', 'connection', 'error', 'close']);
});

test('out of descriptors (EMFILE) the service survives and accepts again once they free up', async (t) => {
  // A child allowed 64 descriptors is offered 150 connections at once, then they all go away.
  // libuv sheds what it cannot accept (its reserve-fd trick) and usually does not even tell
  // Node; what matters is that the service lives and serves again.
  const child = spawnChild(t, '/bin/sh', [
    '-c',
    'ulimit -n 64 && exec "$0" "$@"',
    process.execPath,
    '--import',
    'tsx',
    join(FIXTURES, 'tcp-echo.ts'),
    '--port',
    '0',
  ]);
  const port = Number((await child.line(/^listening /)).split(':').pop());
  const flood = Array.from({ length: 150 }, () => {
    const s = netConnect({ port, host: '127.0.0.1' });
    s.on('error', () => {});
    return s;
  });
  await Promise.all(flood.map((s) => once(s, 'connect').catch(() => {})));
  await sleep(300);
  for (const s of flood) s.destroy();

  let stats: { count: number; listening: number } | undefined;
  await waitFor(async () => {
    const c = netConnect({ port, host: '127.0.0.1' });
    c.on('error', () => {});
    c.end('stats');
    try {
      stats = JSON.parse(await readAll(c));
      return true;
    } catch {
      return false; // still shedding: try again
    } finally {
      c.destroy();
    }
  }, 'the child to accept again');
  assert.ok(
    stats && stats.count < 150,
    `the child cannot have taken every connection: ${JSON.stringify(stats)}`,
  );
  assert.equal(stats.listening, 1);
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('an accept error that Node reports is counted and the listener stays open', async (t) => {
  const server = createServer();
  const { service, port } = await startService(t, { server, port: 0, host: '127.0.0.1' });
  // The shape Node gives an accept failure that libuv passes on (lib/net.js onconnection).
  const err = Object.assign(new Error('accept EMFILE'), {
    code: 'EMFILE',
    errno: -24,
    syscall: 'accept',
  });
  server.emit('error', err);
  server.emit('error', err);
  assert.equal(service.stats.acceptErrors, 2);
  assert.equal(service.state, 'ready');
  const c = await connect(t, port);
  c.end('still accepting');
  assert.equal(await readAll(c), 'still accepting');
});

test('any other listener error fails the service, and closed rejects with it', async (t) => {
  const server = createServer();
  const { service } = await startService(t, { server, port: 0, host: '127.0.0.1' });
  server.emit(
    'error',
    Object.assign(new Error('unexpected'), { code: 'EINVAL', syscall: 'listen' }),
  );
  await assert.rejects(service.closed, { code: 'ERR_BERTH_SERVICE_FAILED' });
  assert.equal(service.state, 'closed');
  assert.equal(service.stats.listening, 0);
});

test('bad options fail at construction, naming the option', () => {
  const cases: [Partial<TcpServiceOptions>, RegExp][] = [
    [{ port: 0 }, /handler must be a function, got undefined/],
    [{ port: -1, handler: echo }, /TcpService\.port must be an integer from 0 to 65535, got -1/],
    [{ port: 0, path: '/tmp/x', handler: echo }, /give only one of port, path or fd/],
    [{ handler: echo }, /nowhere to listen/],
    [
      { port: 0, handler: echo, shutdownTimeout: -1 },
      /shutdownTimeout must be a non-negative integer \(ms\), got -1/,
    ],
    [
      { port: 0, handler: echo, maxConnections: 0 },
      /maxConnections must be a positive integer, got 0/,
    ],
    [{ port: 0, handler: echo, name: '' }, /name must be a non-empty string/],
    [
      { port: 0, handler: echo, maxWriteBuffer: 0 },
      /maxWriteBuffer must be a positive integer, got 0/,
    ],
    [
      { port: 0, handler: echo, signal: 'no' as unknown as AbortSignal },
      /signal must be an AbortSignal/,
    ],
    [{ host: 'localhost', handler: echo }, /host needs TcpService\.port/],
    [
      { port: 0, handler: echo, portt: 1 } as Partial<TcpServiceOptions>,
      /TcpService\.portt is not a known option/,
    ],
  ];
  for (const [options, message] of cases) {
    assert.throws(
      () => new TcpService({ registry: null, ...options } as TcpServiceOptions),
      (err: unknown) => {
        assert.ok(err instanceof Error && 'code' in err, `not a coded error: ${String(err)}`);
        assert.match(err.message, message);
        return true;
      },
    );
  }
  assert.throws(
    () => new TcpService({ port: 0, handler: echo, registry: null, maxConnections: 1.5 }),
    InvalidOptionError,
  );
  // No limit is a choice, spelled Infinity.
  new TcpService({ port: 0, handler: echo, registry: null, maxWriteBuffer: Infinity });
});

// Keeps the Duplex import honest for readers: handlers are typed on Duplex, not Socket.
export type _HandlerTakesDuplex = Parameters<ConnectionHandler>[0] extends Duplex ? true : never;
