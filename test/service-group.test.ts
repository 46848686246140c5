import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { type TestContext, test } from 'node:test';
import { Registry } from 'prom-client';
import {
  type DiagnosticsServer,
  HttpService,
  InvalidOptionError,
  type Service,
  ServiceGroup,
  type ServiceGroupOptions,
  ShutdownTimeoutError,
  StartFailedError,
  TcpService,
} from '../src/index.js';
import { connect, readAll, sleep, waitFor } from './helpers.js';

function httpService(name: string, handler?: http.RequestListener) {
  return new HttpService({
    name,
    port: 0,
    host: '127.0.0.1',
    registry: null,
    handler: handler ?? ((_req, res) => res.end(name)),
  });
}

function group(t: TestContext, options: Partial<ServiceGroupOptions> & { services: Service[] }) {
  const controller = new AbortController();
  const g = new ServiceGroup({
    signals: false,
    exitOnForce: false,
    signal: controller.signal,
    diagnostics: { port: 0, registry: new Registry(), processMetrics: false, version: '1.2.3' },
    ...options,
  });
  t.after(() => {
    controller.abort();
    for (const s of [...g.services, g.diagnostics]) void s?.destroy();
  });
  return { group: g, stop: () => controller.abort() };
}

function portOf(service: { address(): unknown }): number {
  return (service.address() as AddressInfo).port;
}

async function status(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, async (res) =>
        resolve({ status: res.statusCode!, body: await readAll(res) }),
      )
      .on('error', reject);
  });
}

test('starts every service, reports ready, and a stop drains them in stages', async (t) => {
  const app = httpService('app');
  const events: string[] = [];
  const { group: g, stop } = group(t, {
    services: [app],
    beforeShutdown: ({ reason }) => {
      events.push(`beforeShutdown:${reason}:ready=${g.ready}`);
    },
    afterClose: ({ clean }) => {
      events.push(`afterClose:clean=${clean}`);
    },
  });
  g.on('service-closed', ({ name }) => events.push(`closed:${name}`));
  const running = g.run();
  await once(g, 'started');
  const diag = portOf(g.diagnostics as DiagnosticsServer);
  assert.equal(g.ready, true);
  assert.deepEqual(await status(diag, '/ready'), { status: 200, body: 'Version: 1.2.3\n' });
  assert.equal((await status(portOf(app), '/')).body, 'app');

  stop();
  const result = await running;
  assert.equal(result.reason, 'abort');
  assert.equal(result.clean, true);
  assert.equal(result.exitCode, 0);
  assert.deepEqual(events, [
    'beforeShutdown:abort:ready=false',
    'closed:app',
    'closed:diagnostics',
    'afterClose:clean=true',
  ]);
  assert.deepEqual(
    result.services.map((s) => s.name),
    ['app', 'diagnostics'],
  );
});

test('readiness goes to 503 before the app stops serving, and drainDelay keeps it serving', async (t) => {
  const app = httpService('app');
  const { group: g, stop } = group(t, { services: [app], drainDelay: 400 });
  const running = g.run();
  await once(g, 'started');
  const diag = portOf(g.diagnostics as DiagnosticsServer);
  const appPort = portOf(app);
  stop();
  await once(g, 'stopping');
  const ready = await status(diag, '/ready');
  assert.equal(ready.status, 503);
  assert.match(ready.body, /^Version: 1\.2\.3\nStatus: draining\n$/);
  // Still inside drainDelay: the app serves new connections as usual.
  assert.equal((await status(appPort, '/')).status, 200);
  const result = await running;
  assert.ok(result.duration >= 380, `shutdown took ${result.duration} ms, less than drainDelay`);
  await assert.rejects(status(appPort, '/'), { code: 'ECONNREFUSED' });
});

test('a service that fails to start stops the others and reports it', async (t) => {
  const blocker = createServer().listen(0, '127.0.0.1');
  t.after(() => blocker.close());
  await once(blocker, 'listening');
  const good = httpService('good');
  const bad = new TcpService({
    name: 'bad',
    port: portOf(blocker),
    host: '127.0.0.1',
    handler: () => {},
    registry: null,
  });
  const { group: g } = group(t, { services: [good, bad] });
  const result = await g.run();
  assert.equal(result.reason, 'start-failed');
  assert.equal(result.exitCode, 1);
  assert.ok(result.error instanceof StartFailedError);
  assert.equal(result.error.service, 'bad');
  assert.equal((result.error.cause as { code?: string }).code, 'ERR_BERTH_ADDRESS_IN_USE');
  assert.equal(good.state, 'closed');
  assert.equal(g.diagnostics?.state, 'closed');
});

test('a service that fails while running stops the group with exit code 1', async (t) => {
  const server = createServer();
  const tcp = new TcpService({
    name: 'tcp',
    server,
    port: 0,
    host: '127.0.0.1',
    handler: () => {},
    registry: null,
  });
  const app = httpService('app');
  const { group: g } = group(t, { services: [tcp, app] });
  const running = g.run();
  await once(g, 'started');
  server.emit(
    'error',
    Object.assign(new Error('listener broke'), { code: 'EINVAL', syscall: 'listen' }),
  );
  const result = await running;
  assert.equal(result.reason, 'failure');
  assert.equal(result.exitCode, 1);
  assert.equal((result.error as { code?: string }).code, 'ERR_BERTH_SERVICE_FAILED');
  assert.equal(app.state, 'closed');
});

test('a service that ends on its own, cleanly, ends the group with exit code 0', async (t) => {
  const tcp = new TcpService({
    name: 'tcp',
    port: 0,
    host: '127.0.0.1',
    handler: () => {},
    registry: null,
  });
  const { group: g } = group(t, { services: [tcp] });
  const running = g.run();
  await once(g, 'started');
  await tcp.close();
  const result = await running;
  assert.equal(result.reason, 'ended');
  assert.equal(result.exitCode, 0);
});

test('the shutdown deadline destroys a hung handler and exits 1', async (t) => {
  const tcp = new TcpService({
    name: 'hung',
    port: 0,
    host: '127.0.0.1',
    registry: null,
    handler: async (conn) => {
      await once(conn, 'close'); // ignores its signal
    },
  });
  const { group: g, stop } = group(t, { services: [tcp], shutdownTimeout: 300 });
  const running = g.run();
  await once(g, 'started');
  const client = await connect(t, portOf(tcp));
  await waitFor(() => tcp.stats.busy === 1, 'the handler to start');
  stop();
  const result = await running;
  assert.equal(result.exitCode, 1);
  assert.equal(result.clean, false);
  assert.ok(result.error instanceof ShutdownTimeoutError);
  assert.ok(result.services.find((s) => s.name === 'hung')?.error instanceof ShutdownTimeoutError);
  assert.ok(result.duration < 3_000);
  await once(client, 'close');
});

test("a service of the user's whose close() never settles is destroyed after the deadline", {
  timeout: 10_000, // without the runner's backstop, run() would never return
}, async (t) => {
  const calls: string[] = [];
  const stuck: Service = {
    name: 'stuck',
    stats: {},
    async start() {},
    close: () => new Promise<void>(() => calls.push('close')), // never settles
    async destroy(err) {
      calls.push(`destroy: ${err?.message}`);
    },
  };
  const { group: g, stop } = group(t, { services: [stuck], shutdownTimeout: 200 });
  const running = g.run();
  await once(g, 'started');
  const t0 = performance.now();
  stop();
  const result = await running;
  assert.ok(performance.now() - t0 < 2_000, 'run() returned, bounded');
  assert.equal(result.exitCode, 1);
  const outcome = result.services.find((s) => s.name === 'stuck');
  assert.ok(outcome?.error instanceof ShutdownTimeoutError);
  assert.equal(outcome.error.remaining, undefined);
  assert.deepEqual(calls, [
    'close',
    'destroy: stuck: close() had not settled by its 200 ms deadline; destroyed it',
  ]);
});

test('hooks are bounded: one that never returns is cut off and recorded', async (t) => {
  const { group: g, stop } = group(t, {
    services: [httpService('app')],
    hookTimeout: 100,
    beforeShutdown: () => new Promise(() => {}),
  });
  const running = g.run();
  await once(g, 'started');
  stop();
  const result = await running;
  assert.equal(result.exitCode, 0);
  assert.equal(result.hookErrors.length, 1);
  assert.equal((result.hookErrors[0] as { code?: string }).code, 'ERR_BERTH_HOOK_TIMEOUT');
});

test("a user's own object that meets the contract runs under the group", async (t) => {
  const calls: string[] = [];
  const own: Service = {
    name: 'own',
    stats: { jobs: 3 },
    async start() {
      calls.push('start');
    },
    async close() {
      calls.push('close');
    },
    async destroy() {
      calls.push('destroy');
    },
  };
  const { group: g, stop } = group(t, { services: [own] });
  const running = g.run();
  await once(g, 'started');
  assert.equal(g.stateOf(own), 'ready');
  assert.deepEqual(g.stats.own, { state: 'ready', jobs: 3 });
  stop();
  assert.equal((await running).exitCode, 0);
  assert.deepEqual(calls, ['start', 'close']);
  assert.equal(g.stateOf(own), 'closed');
});

test('real signals: the first drains, a second forces; by default run() resolves, the library does not exit', async (t) => {
  let release: () => void = () => {};
  const tcp = new TcpService({
    name: 'slow',
    port: 0,
    host: '127.0.0.1',
    registry: null,
    handler: async () => {
      await new Promise<void>((resolve) => {
        release = resolve;
      });
    },
  });
  // Node 24's test runner starts test files with --report-signal=SIGUSR2, which turns on its
  // diagnostic report for that signal: a listener of its own, and a report file written into the
  // working directory each time the signal comes. Keep the reports off while this test raises it,
  // and count the runner's own listener (if any) as the baseline.
  const reportOnSignal = process.report.reportOnSignal;
  process.report.reportOnSignal = false;
  t.after(() => {
    process.report.reportOnSignal = reportOnSignal;
  });
  const before = process.listenerCount('SIGUSR2');
  const g = new ServiceGroup({
    services: [tcp],
    signals: ['SIGUSR2'],
    shutdownTimeout: 10_000, // exitOnForce left at its default: were it to exit, this test would die
  });
  t.after(() => {
    release();
    void tcp.destroy();
  });
  const running = g.run();
  await once(g, 'started');
  assert.equal(process.listenerCount('SIGUSR2'), before + 1, 'the group listens for the signal');
  await connect(t, portOf(tcp));
  await waitFor(() => tcp.stats.busy === 1, 'the handler to start');
  process.kill(process.pid, 'SIGUSR2');
  const stopping = await once(g, 'stopping');
  assert.deepEqual(stopping[0], { reason: 'signal', signal: 'SIGUSR2' });
  await sleep(50);
  process.kill(process.pid, 'SIGUSR2');
  const result = await running;
  assert.equal(result.reason, 'forced');
  assert.equal(result.exitCode, 128 + 12);
  assert.equal(process.listenerCount('SIGUSR2'), before, 'signal handlers are removed afterwards');
});

test('bad options fail at construction', () => {
  const tcp = () => new TcpService({ name: 'same', port: 0, handler: () => {}, registry: null });
  assert.throws(
    () => new ServiceGroup({ services: [tcp(), tcp()] }),
    /two services are named "same"/,
  );
  assert.throws(
    () => new ServiceGroup({ services: [{ name: 'x' } as unknown as Service] }),
    /services\[0\] must be a service \(name, start, close, destroy, stats\)/,
  );
  assert.throws(
    () => new ServiceGroup({ services: [], signals: ['SIGNOPE' as NodeJS.Signals] }),
    /signals must be an array/,
  );
  assert.throws(() => new ServiceGroup({ services: [], drainDelay: -1 }), InvalidOptionError);
  assert.throws(
    () => new ServiceGroup({ services: 'x' as unknown as Service[] }),
    /services must be an array/,
  );
});

test('idleTimeout: with nothing active the group stops with reason idle and exit code 0', async (t) => {
  const tcp = new TcpService({
    name: 'idle',
    port: 0,
    host: '127.0.0.1',
    registry: null,
    handler: async (conn) => {
      await once(conn, 'end');
    },
  });
  const { group: g } = group(t, { services: [tcp], idleTimeout: 300 });
  const running = g.run();
  await once(g, 'started');
  // An open connection whose handler runs is activity: the group stays up past the timeout.
  const client = await connect(t, portOf(tcp));
  await sleep(600);
  assert.equal(g.readiness, 'ready');
  const ended = Date.now();
  client.end();
  const result = await running;
  assert.equal(result.reason, 'idle');
  assert.equal(result.exitCode, 0);
  assert.ok(
    Date.now() - ended >= 250,
    'stopped before idleTimeout had passed since the last activity',
  );
});
