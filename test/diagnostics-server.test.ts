import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { Registry } from 'prom-client';
import {
  DiagnosticsServer,
  type DiagnosticsServerOptions,
  findPackageVersion,
  HttpService,
  type Readiness,
  TaskClient,
  TaskServer,
  TcpService,
} from '../src/index.js';
import { MISNAMED_DEFAULT_METRICS } from '../src/metrics.js';
import { findPromtool, promtoolCheck, ROOT, readAll } from './helpers.js';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(port: number, path: string, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    http
      .request({ host: '127.0.0.1', port, path, method, agent: false }, async (res) =>
        resolve({ status: res.statusCode!, headers: res.headers, body: await readAll(res) }),
      )
      .on('error', reject)
      .end();
  });
}

async function startDiagnostics(t: TestContext, options: DiagnosticsServerOptions = {}) {
  const registry = options.registry ?? new Registry();
  const diag = new DiagnosticsServer({ port: 0, registry, version: '9.9.9', ...options });
  t.after(() => diag.destroy());
  await diag.start();
  return { diag, registry, port: (diag.address() as AddressInfo).port };
}

test('binds 127.0.0.1 by default; /live answers 200 while the process runs', async (t) => {
  const { diag, port } = await startDiagnostics(t);
  assert.match((diag.stats as { address: string }).address, /^127\.0\.0\.1:/);
  const live = await request(port, '/live');
  assert.equal(live.status, 200);
  assert.equal(live.headers['cache-control'], 'no-store');
});

test('/ready answers 200 only when ready, 503 otherwise, with the version in the body', async (t) => {
  let readiness: Readiness = 'starting';
  const { port } = await startDiagnostics(t, { readiness: () => readiness });
  assert.deepEqual(
    { status: (await request(port, '/ready')).status, body: (await request(port, '/ready')).body },
    { status: 503, body: 'Version: 9.9.9\nStatus: starting\n' },
  );
  readiness = 'ready';
  const ready = await request(port, '/ready');
  assert.equal(ready.status, 200);
  assert.equal(ready.body, 'Version: 9.9.9\n');
  readiness = 'draining';
  assert.equal((await request(port, '/ready')).status, 503);
});

test('/metrics serves the registry in Prometheus text format, with process metrics', async (t) => {
  const registry = new Registry();
  const tcp = new TcpService({
    name: 'echo',
    port: 0,
    host: '127.0.0.1',
    handler: () => {},
    registry,
  });
  t.after(() => tcp.destroy());
  await tcp.start();
  const { port } = await startDiagnostics(t, { registry });
  const metrics = await request(port, '/metrics');
  assert.equal(metrics.status, 200);
  assert.match(String(metrics.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  assert.match(metrics.body, /berth_tcp_listening\{service="echo"\} 1/);
  assert.match(metrics.body, /process_cpu_user_seconds_total/);
  assert.match(metrics.body, /nodejs_eventloop_lag_seconds/);
});

/** A registry with one of each kind of service in it, each having done some work. */
async function busyRegistry(t: TestContext): Promise<Registry> {
  const registry = new Registry();
  const where = { port: 0, host: '127.0.0.1', registry };
  const tcp = new TcpService({ ...where, name: 'echo', handler: (conn) => void conn.end() });
  t.after(() => tcp.destroy());
  const web = new HttpService({ ...where, name: 'web', handler: (_req, res) => res.end('ok') });
  t.after(() => web.destroy());
  const tasks = new TaskServer({ ...where, name: 'tasks' });
  tasks.register(1, (message) => message, 'echo');
  t.after(() => tasks.destroy());
  await Promise.all([tcp.start(), web.start(), tasks.start()]);
  const webPort = (web.address() as AddressInfo).port;
  assert.equal((await request(webPort, '/')).body, 'ok');
  const client = await TaskClient.connect({
    port: (tasks.address() as AddressInfo).port,
    host: '127.0.0.1',
  });
  t.after(() => client.destroy());
  assert.equal(String(await client.call('echo', 'hi')), 'hi');
  await client.close();
  return registry;
}

test('/metrics leaves out the defaults that are gauges named like counters', async (t) => {
  const { port } = await startDiagnostics(t, { registry: await busyRegistry(t) });
  const body = (await request(port, '/metrics')).body;
  for (const name of MISNAMED_DEFAULT_METRICS) {
    assert.doesNotMatch(body, new RegExp(`^# TYPE ${name} `, 'm'));
    // What it summed is still there, per type.
    assert.match(body, new RegExp(`^# TYPE ${name.slice(0, -'_total'.length)} gauge$`, 'm'));
  }
});

const promtool = findPromtool();
test('the whole /metrics passes promtool check metrics', {
  skip: promtool
    ? false
    : "promtool not found: set PROMTOOL or put it on PATH (.ci/run unpacks Debian's prometheus package)",
}, async (t) => {
  const { port } = await startDiagnostics(t, { registry: await busyRegistry(t) });
  const body = (await request(port, '/metrics')).body;
  assert.match(body, /berth_task_duration_seconds_bucket/, 'a histogram with samples in it');
  const lint = await promtoolCheck(t, promtool!, body);
  assert.deepEqual(lint, { code: 0, output: '' });
});

test('/debug/vars is JSON of every service plus process memory and uptime', async (t) => {
  const { port } = await startDiagnostics(t, { stats: () => ({ echo: { busy: 1, count: 7 } }) });
  const reply = await request(port, '/debug/vars');
  assert.equal(reply.status, 200);
  assert.match(String(reply.headers['content-type']), /application\/json/);
  const vars = JSON.parse(reply.body);
  assert.deepEqual(vars.services, { echo: { busy: 1, count: 7 } });
  assert.equal(vars.pid, process.pid);
  assert.equal(vars.version, '9.9.9');
  assert.equal(typeof vars.uptime, 'number');
  assert.equal(typeof vars.memstats.heapUsed, 'number');
  assert.ok(Array.isArray(vars.cmdline));
  // The descriptor watch (see the CLI test that runs the demo out of descriptors).
  assert.equal(vars.descriptors.exhausted, false);
  assert.equal(vars.descriptors.exhaustions, 0);
  assert.ok(vars.descriptors.open > 0 && vars.descriptors.open < vars.descriptors.limit);
});

test('watchDescriptors: false leaves out the watch, its vars and its metrics', async (t) => {
  const { port } = await startDiagnostics(t, { watchDescriptors: false });
  assert.equal(JSON.parse((await request(port, '/debug/vars')).body).descriptors, undefined);
  assert.doesNotMatch((await request(port, '/metrics')).body, /berth_descriptor/);
  const on = await startDiagnostics(t, { name: 'diag2' });
  assert.match(
    (await request(on.port, '/metrics')).body,
    /^berth_descriptors_exhausted\{service="diag2"\} 0$/m,
  );
});

test('HEAD works like GET without a body; other methods get 405; unknown paths 404', async (t) => {
  const { port } = await startDiagnostics(t);
  const head = await request(port, '/ready', 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
  const post = await request(port, '/ready', 'POST');
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
  assert.equal((await request(port, '/nope')).status, 404);
  assert.equal((await request(port, '/ready?verbose=1')).status, 200);
});

test('the version defaults to the nearest package.json', () => {
  const own = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version;
  assert.equal(findPackageVersion(join(ROOT, 'src', 'diagnostics')), own);
  assert.equal(findPackageVersion('/'), 'unknown');
});

test('bad options fail at construction', () => {
  assert.throws(
    () => new DiagnosticsServer({ readiness: 'yes' as unknown as () => Readiness }),
    /readiness must be a function/,
  );
  assert.throws(() => new DiagnosticsServer({ version: '' }), /version must be a non-empty string/);
  assert.throws(
    () => new DiagnosticsServer({ port: -1 }),
    /port must be an integer from 0 to 65535/,
  );
  assert.throws(
    () => new DiagnosticsServer({ watchDescriptors: 0 }),
    /watchDescriptors must be a positive integer ms, got 0/,
  );
  assert.throws(
    () => new DiagnosticsServer({ colour: 'blue' } as DiagnosticsServerOptions),
    /colour is not a known option/,
  );
});
