/**
 * HttpService serving an app that owns its server (`HttpApp`): a real fastify 5 instance as it
 * is, and the bare shape (`{ server, ready?, close }`) that other frameworks fit.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import Fastify from 'fastify';
import {
  type HookTimeoutError,
  type HttpApp,
  HttpService,
  type HttpServiceOptions,
  type InvalidOptionError,
  isHttpApp,
  type ServiceFailedError,
} from '../src/index.js';
import { connect, readAll, sleep } from './helpers.js';

async function startApp(
  t: TestContext,
  server: HttpApp,
  options: Partial<HttpServiceOptions> = {},
) {
  const service = new HttpService({
    port: 0,
    host: '127.0.0.1',
    server,
    registry: null,
    ...options,
  });
  t.after(() => service.destroy());
  await service.start();
  return { service, port: (service.address() as AddressInfo).port };
}

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, async (res) =>
        resolve({ status: res.statusCode!, body: await readAll(res) }),
      )
      .on('error', reject);
  });
}

/** Sends one request on an open keep-alive socket and reads its response (small bodies only). */
async function rawRequest(socket: Socket, path: string): Promise<string> {
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
  const [chunk] = await once(socket, 'data');
  return chunk.toString();
}

/** A plain app: a server with a request listener, and a close() that says when it ran. */
function plainApp(close: () => Promise<unknown>): HttpApp {
  return { server: http.createServer((_req, res) => res.end('plain\n')), close };
}

test('fastify as it is: ready() before listening; close() drains, then runs its onClose hooks', async (t) => {
  const events: string[] = [];
  const app = Fastify();
  app.register(async () => {
    await sleep(50); // a plugin that takes a while to load: start() must wait for it
    events.push('plugin loaded');
  });
  app.get('/fast', async () => 'fast\n');
  app.get('/slow', async () => {
    await sleep(150);
    events.push('response sent');
    return 'slow\n';
  });
  app.addHook('onClose', async () => {
    events.push('onClose');
  });
  assert.ok(isHttpApp(app), 'a fastify instance has the HttpApp shape');
  const { service, port } = await startApp(t, app);
  assert.deepEqual(events, ['plugin loaded']);
  assert.equal(service.server, app.server, 'berth serves the server fastify made');

  // A keep-alive connection that is idle when the close begins, and a request in flight.
  const idle = await connect(t, port);
  assert.match(await rawRequest(idle, '/fast'), /^HTTP\/1\.1 200/);
  const pending = get(port, '/slow');
  await sleep(30);
  const closed = service.close({ timeout: 5_000 });
  await sleep(20);
  // fastify's own close() answers 503 on open connections (and reaps idle ones); the drain comes
  // first, so this request, written after the close began, is answered and told to leave.
  const late = await rawRequest(idle, '/fast');
  assert.match(late, /^HTTP\/1\.1 200/);
  assert.match(late, /connection: close/i);
  await closed;
  assert.deepEqual(await pending, { status: 200, body: 'slow\n' });
  assert.deepEqual(events, ['plugin loaded', 'response sent', 'onClose']);
  assert.equal(service.state, 'closed');
});

test('an app whose ready() rejects: start() rejects with ERR_BERTH_SERVICE_FAILED, nothing listens', async (t) => {
  const cause = new Error('plugin failed');
  const app = { ...plainApp(async () => {}), ready: () => Promise.reject(cause) };
  const service = new HttpService({ port: 0, host: '127.0.0.1', server: app, registry: null });
  t.after(() => service.destroy());
  await assert.rejects(service.start(), (err: ServiceFailedError) => {
    assert.equal(err.code, 'ERR_BERTH_SERVICE_FAILED');
    assert.equal(err.cause, cause);
    assert.match(err.message, /the app's ready\(\) failed: plugin failed/);
    return true;
  });
  assert.equal(app.server.listening, false);
  assert.equal(service.state, 'closed');
});

test("the app's close() is bounded by what is left of the timeout: ERR_BERTH_HOOK_TIMEOUT", async (t) => {
  const { service, port } = await startApp(
    t,
    plainApp(() => new Promise(() => {})),
  );
  assert.equal((await get(port, '/')).body, 'plain\n');
  const started = Date.now();
  await assert.rejects(
    service.close({ timeout: 300 }),
    (err: HookTimeoutError) =>
      err.code === 'ERR_BERTH_HOOK_TIMEOUT' && /the app's close\(\)/.test(err.message),
  );
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 2_000, `close took ${took} ms for a 300 ms budget`);
});

test('an app whose close() rejects makes close() reject with ERR_BERTH_SERVICE_FAILED; it is called once', async (t) => {
  let calls = 0;
  const cause = new Error('pool would not end');
  const { service } = await startApp(
    t,
    plainApp(async () => {
      calls++;
      throw cause;
    }),
  );
  await assert.rejects(service.close(), (err: ServiceFailedError) => {
    assert.equal(err.code, 'ERR_BERTH_SERVICE_FAILED');
    assert.equal(err.cause, cause);
    return true;
  });
  await service.destroy();
  assert.equal(calls, 1);
});

test('destroy() starts the app close without waiting for it', async (t) => {
  let closed = false;
  const { service } = await startApp(
    t,
    plainApp(async () => {
      closed = true;
      await new Promise(() => {});
    }),
  );
  await service.destroy();
  await sleep(0);
  assert.equal(closed, true);
  assert.equal(service.state, 'closed');
});

test('an app is given as server, not handler; its server must be a Node server', () => {
  const app = Fastify();
  assert.throws(
    () => new HttpService({ port: 0, handler: app as never, registry: null }),
    (err: InvalidOptionError) =>
      err.code === 'ERR_BERTH_INVALID_OPTION' && /goes in server/.test(err.message),
  );
  // Not the shape (no server): refused as a server like any other object.
  assert.throws(
    () => new HttpService({ port: 0, server: { close: async () => {} } as never, registry: null }),
    (err: InvalidOptionError) =>
      err.code === 'ERR_BERTH_INVALID_OPTION' && /an app that owns one/.test(err.message),
  );
  // A service is not an app, though it has a server and a close().
  const service = new HttpService({ port: 0, handler: () => {}, registry: null });
  assert.equal(isHttpApp(service), false);
});
