// TaskChannel: a client that survives deploys. Real server processes restarted, killed and
// reloaded under load; a channel started before its server; names resolved to several addresses
// and resolved again; and the rules: what is retried, what is not, and deadlines over retries.
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  InvalidOptionError,
  ServiceClosedError,
  TaskChannel,
  type TaskChannelOptions,
  TaskConnectError,
  TaskConnectionClosedError,
  TaskServer,
  TaskTimeoutError,
} from '../src/index.js';
import { Backoff } from '../src/protocol/channel/backoff.js';
import { formatEndpoint, parseEndpoint } from '../src/protocol/channel/endpoint.js';
import { gate, startTaskServer } from './fixtures/task-helpers.js';
import {
  type Child,
  exitWithin,
  ROOT,
  sleep,
  spawnChild,
  spawnFixture,
  waitFor,
} from './helpers.js';

const FAST_BACKOFF = { initial: 20, max: 200 };

function open(t: TestContext, options: TaskChannelOptions): TaskChannel {
  const channel = new TaskChannel({ backoff: FAST_BACKOFF, ...options });
  t.after(() => channel.destroy());
  return channel;
}

interface ServerProc {
  child: Child;
  address: string;
  port: number;
}

/** test/fixtures/task-server-proc.ts in its own process; ended by pid after the test. */
async function serverProc(t: TestContext, name: string, args: string[] = []): Promise<ServerProc> {
  const child = spawnFixture(t, 'task-server-proc', ['--name', name, ...args]);
  const line = await child.line(/^listening /, 15_000);
  const address = line.slice('listening '.length);
  return { child, address, port: Number(address.split(':').pop()) };
}

/** Calls `task` with a distinct message, `concurrency` at a time, until stopped. */
function load(
  channel: TaskChannel,
  concurrency: number,
  task = 'tag',
  check: (message: string, reply: string) => string | undefined = tagged,
) {
  const state = {
    ok: 0,
    wrong: [] as string[],
    failed: [] as unknown[],
    by: new Map<string, number>(),
  };
  let running = true;
  const loops = Array.from({ length: concurrency }, async (_, w) => {
    for (let i = 0; running; i++) {
      const message = `${w}-${i}`;
      try {
        const reply = (await channel.call(task, message)).toString();
        const server = check(message, reply);
        if (server === undefined) state.wrong.push(`${message} -> ${reply}`);
        else {
          state.ok++;
          state.by.set(server, (state.by.get(server) ?? 0) + 1);
        }
      } catch (error) {
        state.failed.push(error);
        await sleep(5);
      }
    }
  });
  return {
    state,
    async stop() {
      running = false;
      await Promise.all(loops);
      return state;
    },
  };
}

/** `tag` answers `<server>:<message>`: the server's name, or undefined for a wrong answer. */
function tagged(message: string, reply: string): string | undefined {
  const i = reply.indexOf(':');
  return reply.slice(i + 1) === message ? reply.slice(0, i) : undefined;
}

/** A port nothing listens on (it was free a moment ago). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));
  return port;
}

function describe(errors: unknown[]): string {
  return errors
    .slice(0, 5)
    .map((e) => `${(e as { code?: string }).code}: ${(e as Error).message}`)
    .join('\n');
}

test('two servers restarted one after the other under load (SIGTERM, start again on the port): no call fails', async (t) => {
  const a = await serverProc(t, 'A');
  const b = await serverProc(t, 'B');
  const channel = open(t, { endpoints: [a.address, b.address] });
  await channel.waitForReady();
  const run = load(channel, 64);
  await sleep(300);
  const restarted: ServerProc[] = [];
  for (const [name, s] of [
    ['A', a],
    ['B', b],
  ] as const) {
    s.child.proc.kill('SIGTERM');
    assert.equal(await exitWithin(s.child, 10_000), 0, `${name} drained cleanly`);
    restarted.push(await serverProc(t, `${name}2`, ['--port', String(s.port)]));
    await waitFor(
      () => (run.state.by.get(`${name}2`) ?? 0) > 50,
      `calls reaching ${name} again`,
      10_000,
    );
  }
  const result = await run.stop();
  assert.deepEqual(result.failed, [], describe(result.failed));
  assert.deepEqual(result.wrong, []);
  for (const name of ['A', 'B', 'A2', 'B2']) {
    assert.ok(
      (result.by.get(name) ?? 0) > 0,
      `${name} answered: ${JSON.stringify([...result.by])}`,
    );
  }
  const stats = channel.stats;
  assert.equal(stats.goodbyes, 2);
  assert.ok(stats.reconnects >= 2);
  assert.equal(stats.calls.failed, 0);
  t.diagnostic(`calls by server ${JSON.stringify([...result.by])}; ${JSON.stringify(stats)}`);
  for (const s of restarted) s.child.proc.kill('SIGTERM');
});

test('a server killed (SIGKILL) mid-load: calls of unknown fate fail with the coded error; idempotent ones are retried and succeed', async (t) => {
  const a = await serverProc(t, 'A', ['--slow-ms', '300']);
  const b = await serverProc(t, 'B', ['--slow-ms', '300']);
  const retries: { task: unknown; reason: string }[] = [];
  const onRetry = (m: unknown) => retries.push(m as { task: unknown; reason: string });
  subscribe('berth:task-channel:retry', onRetry);
  t.after(() => unsubscribe('berth:task-channel:retry', onRetry));
  // `sleep` (the demo's) is declared safe to repeat; `slowtag` is not.
  const channel = open(t, { endpoints: [a.address, b.address], idempotent: ['sleep'] });
  await channel.waitForReady();
  await waitFor(() => channel.stats.connections.ready === 2, 'both connections ready');
  const unsafe = Array.from({ length: 20 }, (_, i) =>
    channel.call('slowtag', `u${i}`).then(String, (e: unknown) => e),
  );
  const safe = Array.from({ length: 20 }, () =>
    channel.call('sleep', '300').then(String, (e: unknown) => e),
  );
  await sleep(100); // every call is running on A or on B
  a.child.proc.kill('SIGKILL');
  const unsafeResults = await Promise.all(unsafe);
  const safeResults = await Promise.all(safe);
  assert.deepEqual(
    safeResults.filter((r) => r !== 'slept 300 ms'),
    [],
    'every idempotent call succeeded',
  );
  const lost = unsafeResults.filter((r) => r instanceof TaskConnectionClosedError);
  const answered = unsafeResults.filter((r) => typeof r === 'string');
  assert.equal(
    lost.length + answered.length,
    20,
    `unexpected: ${describe(unsafeResults.filter((r) => typeof r !== 'string'))}`,
  );
  assert.ok(lost.length >= 5, `${lost.length} calls were on the killed server`);
  assert.equal((lost[0] as TaskConnectionClosedError).code, 'ERR_BERTH_TASK_CONNECTION_CLOSED');
  for (const r of answered) assert.match(r as string, /^B:u\d+$/);
  const idempotentRetries = retries.filter((r) => r.reason === 'idempotent');
  assert.ok(idempotentRetries.length >= 5, `${idempotentRetries.length} idempotent retries`);
  assert.deepEqual(
    retries.filter((r) => r.task !== 'sleep'),
    [],
    'a call not marked idempotent was never sent twice',
  );
  assert.equal(channel.stats.retries.idempotent, idempotentRetries.length);
  b.child.proc.kill('SIGTERM');
});

test('berth demo --workers 2, SIGHUP twice under 64 calls in flight: no call fails, every answer right', async (t) => {
  const cli = spawnChild(
    t,
    process.execPath,
    [
      '--import',
      'tsx',
      join(ROOT, 'src', 'cli', 'main.ts'),
      'demo',
      '--workers',
      '2',
      ...['--port', '0', '--diag-port', '0', '--tcp-port', '0', '--task-port', '0'],
    ],
    { cwd: ROOT, env: { ...process.env, PORT: '' } },
  );
  const ready = JSON.parse(await cli.line(/"msg":"workers ready: /, 30_000)) as {
    services: { name: string; address: string }[];
  };
  const address = ready.services.find((s) => s.name === 'tasks')!.address;
  // One port, two workers: a connection lands on one of them, so the channel keeps several.
  const channel = open(t, { endpoints: address, connectionsPerEndpoint: 4 });
  await channel.waitForReady();
  const run = load(channel, 64, 'echo', (m, r) => (r === m ? 'demo' : undefined));
  await sleep(300);
  for (let i = 1; i <= 2; i++) {
    const before = run.state.ok;
    cli.proc.kill('SIGHUP');
    await waitFor(
      () => (cli.stdout().match(/"msg":"reload complete in \d+ ms"/g) ?? []).length >= i,
      `reload ${i}`,
      30_000,
    );
    await waitFor(() => run.state.ok > before + 500, `calls after reload ${i}`, 10_000);
  }
  const result = await run.stop();
  assert.deepEqual(result.failed, [], describe(result.failed));
  assert.deepEqual(result.wrong, []);
  assert.ok(channel.stats.goodbyes >= 4, `goodbyes: ${channel.stats.goodbyes}`);
  t.diagnostic(`${result.ok} calls; ${JSON.stringify(channel.stats)}`);
  await channel.close();
  cli.proc.kill('SIGTERM');
  assert.equal(await exitWithin(cli, 15_000), 0);
});

test('a channel started before its server: calls made within the ready deadline succeed', async (t) => {
  const port = await freePort();
  const channel = open(t, { endpoints: `127.0.0.1:${port}` });
  const calls = Array.from({ length: 10 }, (_, i) => channel.call('tag', `early${i}`));
  await sleep(300);
  assert.ok(channel.stats.connectFailures >= 1, 'it tried, and is backing off');
  assert.equal(channel.stats.callsWaiting, 10);
  await serverProc(t, 'late', ['--port', String(port)]);
  const replies = (await Promise.all(calls)).map(String);
  assert.deepEqual(
    replies,
    Array.from({ length: 10 }, (_, i) => `late:early${i}`),
  );
});

test('with no server: a call fails after readyTimeout, or its own timeout if sooner, or at once without waitForReady', async (t) => {
  const port = await freePort();
  const waiting = open(t, { endpoints: `127.0.0.1:${port}`, readyTimeout: 300 });
  const t0 = performance.now();
  await assert.rejects(waiting.call(1, 'x'), (err: unknown) => {
    assert.ok(err instanceof TaskConnectError, String(err));
    assert.match(
      err.message,
      /no connection was ready within 300 ms \(the last attempt: cannot connect to 127\.0\.0\.1:\d+: ECONNREFUSED\)/,
    );
    return true;
  });
  assert.ok(performance.now() - t0 >= 290);
  await assert.rejects(waiting.call(1, 'x', { timeout: 100 }), (err: unknown) => {
    assert.ok(err instanceof TaskTimeoutError);
    assert.equal(err.timeout, 'call');
    return true;
  });
  const failFast = open(t, { endpoints: `127.0.0.1:${port}`, waitForReady: false });
  await waitFor(() => failFast.stats.connectFailures >= 1, 'the first attempt failed');
  const t1 = performance.now();
  await assert.rejects(failFast.call(1, 'x'), TaskConnectError);
  assert.ok(performance.now() - t1 < 100, 'failed at once');
  assert.equal(failFast.stats.calls.failed, 1);
});

test('a Goodbye is a drain: calls under way finish there, one the server never started goes to the other server', async (t) => {
  const release = gate();
  const running = new Map<string, string>();
  const setup = (name: string) => (s: TaskServer) => {
    s.register(
      1,
      async (m: Buffer) => {
        running.set(m.toString(), name);
        await release.promise;
        return `${name}:${m}`;
      },
      'wait',
    );
    s.register(
      2,
      async function* () {
        yield `${name} streams`;
      },
      'stream',
    );
  };
  // One task at a time on each: a third call waits in its connection's queue, unsent.
  const a = await startTaskServer(t, { maxTasksInFlight: 1 }, setup('A'));
  const b = await startTaskServer(t, { maxTasksInFlight: 1 }, setup('B'));
  const channel = open(t, {
    endpoints: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`],
    balance: 'round-robin',
  });
  await waitFor(() => channel.stats.connections.ready === 2, 'both ready');
  const first = channel.call('wait', 'one');
  const second = channel.call('wait', 'two');
  await waitFor(() => running.size === 2, 'one call on each server');
  const third = channel.stream('stream'); // round-robin: queued behind `one`
  const chunks: string[] = [];
  third.on('data', (c: Buffer) => chunks.push(c.toString()));
  const thirdDone = new Promise((resolve, reject) => third.on('end', resolve).on('error', reject));
  const x = running.get('one') === 'A' ? a : b;
  const y = running.get('one') === 'A' ? 'B' : 'A';
  const closing = x.server.close({ timeout: 5_000 }); // Goodbye: `third` was never sent to it
  await waitFor(() => channel.stats.retries.unstarted === 1, 'the unsent call sent elsewhere');
  release.open();
  await thirdDone;
  assert.deepEqual(chunks, [`${y} streams`]);
  assert.equal(
    (await first).toString(),
    `${running.get('one')}:one`,
    'the call under way finished on the server that said goodbye',
  );
  assert.equal((await second).toString(), `${y}:two`);
  await closing;
  assert.equal(channel.stats.goodbyes, 1);
  assert.equal(channel.stats.calls.failed, 0);
});

test('cancel reaches the server on whichever connection carries the call; a deadline covers the whole call', async (t) => {
  let aborted = 0;
  const started = gate();
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(1, (_m, { signal }) => {
      started.open();
      return new Promise<string>((_, reject) =>
        signal.addEventListener('abort', () => {
          aborted++;
          reject(signal.reason);
        }),
      );
    }),
  );
  const channel = open(t, { endpoints: [`127.0.0.1:${port}`], connectionsPerEndpoint: 3 });
  const controller = new AbortController();
  const call = channel.call(1, 'x', { signal: controller.signal });
  await started.promise;
  controller.abort(new Error('enough'));
  await assert.rejects(call, /enough/);
  await waitFor(() => aborted === 1, 'the server saw the cancel');
  await assert.rejects(channel.call(1, 'y', { timeout: 100 }), TaskTimeoutError);
  await waitFor(() => aborted === 2, 'the timeout cancelled it on the server');
  assert.equal(channel.stats.calls.cancelled, 2);
});

test('a name resolved to several addresses, and resolved again: calls follow the answer', async (t) => {
  const who = (name: string) => (s: TaskServer) => s.register(1, () => name, 'who');
  const a = await startTaskServer(t, { host: '127.0.0.1' }, who('A'));
  const b = await startTaskServer(t, { host: '127.0.0.2', port: a.port }, who('B'));
  let answer = [{ address: '127.0.0.1' }];
  const asked: string[] = [];
  const channel = open(t, {
    endpoints: `tasks.test:${a.port}`,
    dnsRefresh: 50,
    lookup: async (name) => {
      asked.push(name);
      return answer;
    },
  });
  const whoAnswers = async (n: number) =>
    new Set(await Promise.all(Array.from({ length: n }, () => channel.call('who').then(String))));
  assert.deepEqual([...(await whoAnswers(10))], ['A']);
  assert.equal(asked[0], 'tasks.test');
  answer = [{ address: '127.0.0.1' }, { address: '127.0.0.2' }];
  await waitFor(() => channel.stats.connections.ready === 2, 'a connection to the new address');
  assert.deepEqual([...(await whoAnswers(20))].sort(), ['A', 'B']);
  answer = [{ address: '127.0.0.2' }];
  await waitFor(() => channel.stats.addresses === 1, 'the old address dropped');
  assert.deepEqual([...(await whoAnswers(10))], ['B']);
  assert.equal(b.server.stats.clients, 1);
  await waitFor(() => a.server.stats.clients === 0, 'the dropped address’s connection closed');
});

test('localhost through the system resolver: every address it has, and calls go to the one that listens', async (t) => {
  const { port } = await startTaskServer(t, { host: '127.0.0.1' }, (s) => s.register(1, (m) => m));
  const channel = open(t, { endpoints: `localhost:${port}` });
  assert.equal((await channel.call(1, 'via localhost')).toString(), 'via localhost');
  assert.ok(channel.stats.addresses >= 1);
});

test('close: calls under way finish, new ones and waiting ones are refused; the closed channel is coded', async (t) => {
  const release = gate();
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (m: Buffer) => {
      await release.promise;
      return m;
    }),
  );
  const channel = open(t, { endpoints: `127.0.0.1:${port}` });
  const running = channel.call(1, 'finishes');
  await waitFor(() => channel.stats.callsInFlight === 1, 'the call out');
  const closing = channel.close();
  await assert.rejects(channel.call(1, 'late'), ServiceClosedError);
  release.open();
  assert.equal((await running).toString(), 'finishes');
  await closing;
  const idle = open(t, { endpoints: `127.0.0.1:${await freePort()}` });
  const waiting = idle.call(1, 'waits');
  await sleep(50);
  void idle.close();
  await assert.rejects(waiting, ServiceClosedError);
});

test('events and stats: connect, goodbye, and the metrics of a channel given a registry', async (t) => {
  const events: string[] = [];
  const names = ['connect', 'goodbye', 'connect-failed'];
  const listeners = names.map((n) => {
    const fn = (m: unknown) => events.push(`${n}:${(m as { channel: string }).channel}`);
    subscribe(`berth:task-channel:${n}`, fn);
    return [n, fn] as const;
  });
  t.after(() => {
    for (const [n, fn] of listeners) unsubscribe(`berth:task-channel:${n}`, fn);
  });
  const { server, port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const { Registry } = await import('prom-client');
  const registry = new Registry();
  const channel = open(t, { endpoints: `127.0.0.1:${port}`, name: 'ev', registry });
  await channel.call(1, 'x');
  server.disconnect(1_000);
  await waitFor(() => events.includes('goodbye:ev'), 'the goodbye event');
  await waitFor(() => channel.stats.reconnects === 1, 'the reconnect');
  assert.deepEqual(events.slice(0, 3), ['connect:ev', 'goodbye:ev', 'connect:ev']);
  const text = await registry.metrics();
  assert.match(text, /berth_task_channel_calls_total\{service="ev",outcome="ok"\} 1/);
  assert.match(text, /berth_task_channel_goodbyes_total\{service="ev"\} 1/);
  assert.match(text, /berth_task_channel_connections\{service="ev",state="ready"\} 1/);
});

test('bad options fail at construction, naming the option', () => {
  const cases: [unknown, RegExp][] = [
    [{}, /bad address "undefined"/],
    [{ endpoints: [] }, /endpoints must name at least one server/],
    [{ endpoints: 'host:99999' }, /bad address "host:99999"/],
    [{ endpoints: { host: 'x' } }, /an endpoint object is \{ host, port \}/],
    [{ endpoints: '1:1', balance: 'random' }, /balance must be one of/],
    [{ endpoints: '1:1', connectionsPerEndpoint: 0 }, /connectionsPerEndpoint must be/],
    [{ endpoints: '1:1', maxAttempts: 0 }, /maxAttempts must be/],
    [{ endpoints: '1:1', idempotent: 'sum' }, /idempotent must be an array/],
    [
      { endpoints: '1:1', backoff: { multiplier: 0.5 } },
      /backoff.multiplier must be a number from 1 to 10/,
    ],
    [{ endpoints: '1:1', backoff: { initail: 1 } }, /initail is not a known option/],
    [{ endpoints: '1:1', connection: { port: 1 } }, /where to connect is the channel's endpoints/],
    [{ endpoints: '1:1', endpoint: 'x' }, /TaskChannel\.endpoint is not a known option/],
  ];
  for (const [options, message] of cases) {
    assert.throws(
      () => new TaskChannel(options as TaskChannelOptions),
      (err: unknown) => {
        assert.ok(err instanceof InvalidOptionError, String(err));
        assert.match(err.message, message);
        return true;
      },
    );
  }
});

test('endpoints and backoff, the pure parts', () => {
  assert.deepEqual(parseEndpoint('10.0.0.1:8082'), { host: '10.0.0.1', port: 8082 });
  assert.deepEqual(parseEndpoint('[::1]:1'), { host: '::1', port: 1 });
  assert.deepEqual(parseEndpoint('8082'), { host: '127.0.0.1', port: 8082 });
  assert.deepEqual(parseEndpoint('unix:/run/t.sock'), { path: '/run/t.sock' });
  assert.deepEqual(parseEndpoint({ host: 'tasks', port: 2 }), { host: 'tasks', port: 2 });
  assert.equal(formatEndpoint({ host: '::1', port: 1 }), '[::1]:1');
  assert.equal(formatEndpoint({ path: '/p' }), 'unix:/p');
  // No jitter (random 0.5): 100, 160, 256, ... capped at max; reset starts again.
  const b = new Backoff({ initial: 100, max: 500, multiplier: 1.6, jitter: 0.2 }, () => 0.5);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [100, 160, 256, 410, 500]);
  b.reset();
  assert.equal(b.next(), 100);
  const low = new Backoff({ initial: 100, max: 500, multiplier: 2, jitter: 0.2 }, () => 0);
  const high = new Backoff({ initial: 100, max: 500, multiplier: 2, jitter: 0.2 }, () => 1);
  assert.deepEqual([low.next(), high.next()], [80, 120]);
});

test('a unix socket endpoint', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-channel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'tasks.sock');
  const server = new TaskServer({ path, registry: null });
  t.after(() => server.destroy());
  server.register(1, (m) => m);
  await server.start();
  const channel = open(t, { endpoints: `unix:${path}` });
  assert.equal((await channel.call(1, 'over a unix socket')).toString(), 'over a unix socket');
  assert.equal(channel.stats.addresses, 1);
});
