/**
 * `--workers N`: real worker processes forked by Node's cluster, real signals to the primary.
 */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  type Child,
  exitWithin,
  FIXTURES,
  findPromtool,
  promtoolCheck,
  ROOT,
  readAll,
  sleep,
  spawnChild,
  waitFor,
} from './helpers.js';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');
const APP = join(FIXTURES, 'cluster-app.mjs');

interface Cluster {
  child: Child;
  http: number;
  diag: number;
  hangFile: string;
  crashFile: string;
  slowFile: string;
}

async function startCluster(t: TestContext, extra: string[] = []): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-cluster-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const hangFile = join(dir, 'hang');
  const crashFile = join(dir, 'crash');
  const slowFile = join(dir, 'slow');
  const child = spawnChild(
    t,
    process.execPath,
    [
      '--import',
      'tsx',
      CLI,
      'serve',
      APP,
      '--workers',
      '2',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--diag-port',
      '0',
      ...extra,
    ],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: '',
        BERTH_TEST_HANG_FILE: hangFile,
        BERTH_TEST_CRASH_FILE: crashFile,
        BERTH_TEST_SLOW_FILE: slowFile,
      },
    },
  );
  const ready = JSON.parse(await child.line(/"msg":"workers ready: /, 30_000)) as {
    services: { name: string; address: string }[];
  };
  const started = JSON.parse(await child.line(/"msg":"started: workers/)) as {
    services: { name: string; address: string }[];
  };
  const portOf = (address: string) => Number(address.split(':').pop());
  return {
    child,
    http: portOf(ready.services.find((s) => s.name === 'http')!.address),
    diag: portOf(started.services.find((s) => s.name === 'diagnostics')!.address),
    hangFile,
    crashFile,
    slowFile,
  };
}

function get(
  port: number,
  path: string,
  agent: http.Agent | false = false,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, async (res) =>
        resolve({ status: res.statusCode!, body: await readAll(res) }),
      )
      .on('error', reject);
  });
}

interface WorkerVars {
  pid: number;
  state: string;
  role: string;
}

async function workers(diag: number): Promise<WorkerVars[]> {
  const vars = JSON.parse((await get(diag, '/debug/vars')).body) as {
    services: Record<string, WorkerVars>;
  };
  return Object.entries(vars.services)
    .filter(([name]) => name.startsWith('worker '))
    .map(([, w]) => w);
}

/**
 * Closed-loop keep-alive clients until told to stop; collects failures. A clean refusal of a new
 * connection ends a client's loop (the listener closed for a drain), unless `refusals` says it
 * is a failure too (a reload keeps the listener open throughout).
 */
function load(port: number, clients: number, { refusals = 'end' as 'end' | 'fail' } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  let stop = false;
  let ok = 0;
  const failed: string[] = [];
  const pids = new Set<string>();
  const loops = Array.from({ length: clients }, async () => {
    while (!stop) {
      try {
        const reply = await get(port, '/sleep?ms=10', agent);
        if (reply.status !== 200) failed.push(`status ${reply.status}`);
        pids.add(reply.body);
        ok++;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ECONNREFUSED' && refusals === 'end') return;
        failed.push(`${code}: ${(err as Error).message}`);
        return;
      }
    }
  });
  return {
    pids,
    get ok() {
      return ok;
    },
    failed,
    async finish() {
      stop = true;
      await Promise.all(loops);
      agent.destroy();
    },
    done: () => Promise.all(loops).then(() => agent.destroy()),
  };
}

test('N workers serve; /metrics sums every worker; /debug/vars lists each', async (t) => {
  const c = await startCluster(t);
  const pids = new Set<string>();
  for (let i = 0; i < 20; i++) pids.add((await get(c.http, '/pid')).body);
  assert.equal(pids.size, 2, 'new connections should reach both workers');
  const metrics = (await get(c.diag, '/metrics')).body;
  assert.match(metrics, /berth_http_requests_total\{service="http"\} 20\n/);
  assert.match(metrics, /berth_cluster_workers_ready\{service="workers"\} 2\n/);
  // The duration histogram (kept in arrays, read at scrape time) is summed across workers too.
  assert.match(
    metrics,
    /berth_http_request_duration_seconds_count\{service="http",class="2xx"\} 20\n/,
  );
  // The aggregate is one scrape too, and must lint as one (a cluster takes seconds to start, so
  // the check rides along here rather than in a test of its own).
  const promtool = findPromtool();
  if (promtool)
    assert.deepEqual(await promtoolCheck(t, promtool, metrics), { code: 0, output: '' });
  else t.diagnostic('promtool not found (set PROMTOOL or put it on PATH): aggregate not linted');
  const listed = await workers(c.diag);
  assert.deepEqual(listed.map((w) => String(w.pid)).sort(), [...pids].sort());
  assert.equal((await get(c.diag, '/ready')).status, 200);
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 15_000), 0);
});

// Seen once on a loaded machine before the stop-accepting barrier: resets of connections the
// primary had accepted but not handed over. Three runs, to catch it if it comes back.
for (let run = 1; run <= 3; run++) {
  test(`SIGTERM under load drains every worker and loses no request (run ${run} of 3)`, async (t) => {
    const c = await startCluster(t);
    const run = load(c.http, 50);
    await sleep(500);
    c.child.proc.kill('SIGTERM');
    await run.done();
    assert.deepEqual(run.failed, []);
    assert.ok(run.ok > 100, `too little load: ${run.ok}`);
    assert.equal(await exitWithin(c.child, 15_000), 0);
  });
}

test('SIGHUP under load replaces every worker and loses no request', async (t) => {
  const c = await startCluster(t);
  const before = (await workers(c.diag)).map((w) => w.pid);
  const run = load(c.http, 50, { refusals: 'fail' });
  await sleep(300);
  const beforeReload = run.ok;
  c.child.proc.kill('SIGHUP');
  await c.child.line(/"msg":"reload complete in \d+ ms"/, 30_000);
  await sleep(300);
  await run.finish();
  assert.deepEqual(run.failed, []);
  assert.ok(run.ok - beforeReload > 100, `answered during the reload: ${run.ok - beforeReload}`);
  const after = (await workers(c.diag)).map((w) => w.pid);
  assert.equal(after.length, 2);
  for (const pid of after) assert.ok(!before.includes(pid), `worker ${pid} survived the reload`);
  assert.equal((await get(c.diag, '/ready')).status, 200);
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 15_000), 0);
});

test('a worker that crashes is replaced', async (t) => {
  const c = await startCluster(t);
  const before = (await workers(c.diag)).map((w) => w.pid);
  await get(c.http, '/crash');
  await c.child.line(/"msg":"worker \d+ crashed \(exit 3\); replacing it in \d+ ms"/);
  await waitFor(
    async () => {
      const now = await workers(c.diag);
      return (
        now.length === 2 &&
        now.every((w) => w.state === 'ready') &&
        now.some((w) => !before.includes(w.pid))
      );
    },
    'a replacement worker to be ready',
    20_000,
  );
  assert.equal((await get(c.http, '/pid')).status, 200);
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 15_000), 0);
});

test('a worker that crashes during a reload is replaced once: the pool keeps its size', async (t) => {
  const c = await startCluster(t, ['--ready-timeout', '10s']);
  writeFileSync(c.slowFile, ''); // new workers take 1.5 s to start: the crash lands mid-reload
  c.child.proc.kill('SIGHUP');
  await c.child.line(/"msg":"reload: replacing 2 workers one at a time"/);
  await sleep(300);
  await get(c.http, '/crash'); // one of the old workers, the one being replaced or the next
  await c.child.line(/"msg":"worker \d+ crashed \(exit 3\)/);
  await c.child.line(/"msg":"reload complete in \d+ ms"/, 30_000);
  await sleep(2_500); // a second replacement, were one forked, would be ready by now
  const now = await workers(c.diag);
  assert.equal(now.length, 2, `workers: ${JSON.stringify(now)}`);
  assert.ok(now.every((w) => w.state === 'ready' && w.role === 'member'));
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 15_000), 0);
});

test('a crash loop stops the service with exit code 1', async (t) => {
  const c = await startCluster(t);
  writeFileSync(c.crashFile, ''); // every worker started from now on crashes while starting
  await get(c.http, '/crash');
  assert.equal(await exitWithin(c.child, 30_000), 1);
  assert.match(c.child.stdout(), /crash loop, stopping/);
  assert.match(c.child.stdout(), /ERR_BERTH_CRASH_LOOP/);
});

test('a new worker that never becomes ready stops the reload; the old workers keep serving', async (t) => {
  // Long enough for a first start on a loaded machine; the hung worker still fails it.
  const c = await startCluster(t, ['--ready-timeout', '5s']);
  const before = (await workers(c.diag)).map((w) => w.pid).sort();
  writeFileSync(c.hangFile, ''); // the reload's new worker never becomes ready
  c.child.proc.kill('SIGHUP');
  await c.child.line(/"msg":"reload stopped, old workers keep serving: /, 20_000);
  assert.deepEqual((await workers(c.diag)).map((w) => w.pid).sort(), before);
  assert.equal((await get(c.http, '/pid')).status, 200);
  assert.equal((await get(c.diag, '/ready')).status, 200);
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 15_000), 0);
});

test('runCluster(): the library entry point forks, serves, and drains on SIGTERM', async (t) => {
  const child = spawnChild(
    t,
    process.execPath,
    ['--import', 'tsx', join(FIXTURES, 'run-cluster.ts')],
    { cwd: ROOT },
  );
  const ready = JSON.parse(await child.line(/"ready":true/, 30_000)) as {
    http: string;
    diag: string;
    pids: number[];
  };
  assert.equal(ready.pids.length, 2);
  const port = Number(ready.http.split(':').pop());
  const seen = new Set<string>();
  for (let i = 0; i < 10; i++) seen.add((await get(port, '/')).body);
  assert.deepEqual([...seen].map(Number).sort(), [...ready.pids].sort());
  child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(child, 15_000), 0);
  assert.match(child.stdout(), /"result":\{"reason":"signal","exitCode":0\}/);
});

test('a second signal forces every worker down and exits 143 at once', async (t) => {
  const c = await startCluster(t, ['--shutdown-timeout', '30s']);
  const pids = (await workers(c.diag)).map((w) => w.pid);
  // A request that holds the drain open for a long time.
  const pending = get(c.http, '/sleep?ms=20000').catch(() => 'cut');
  await sleep(200);
  c.child.proc.kill('SIGTERM');
  await c.child.line(/"msg":"draining"/);
  const sent = Date.now();
  c.child.proc.kill('SIGTERM');
  assert.equal(await exitWithin(c.child, 10_000), 143);
  assert.ok(Date.now() - sent < 3_000, 'the forced exit was not at once');
  assert.equal(await pending, 'cut');
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  await waitFor(() => !pids.some(alive), 'every worker to be gone', 5_000);
});
