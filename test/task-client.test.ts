// TaskClient: streaming with per-task backpressure, cancellation from the reader, close and
// destroy, keep-alive, bodies in pieces, options, and an idle client not holding its process.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ErrorCode,
  InvalidOptionError,
  ServiceClosedError,
  TaskCancelledError,
  TaskClient,
  type TaskClientOptions,
  TaskConnectionClosedError,
  TaskError,
} from '../src/index.js';
import { connectClient, gate, startTaskServer, within } from './fixtures/task-helpers.js';
import { exitWithin, spawnFixture, waitFor } from './helpers.js';

const MiB = 1_048_576;

test('a slow reader slows only its own task: the server stops at the window, others go on', async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, (m) => m);
    s.register(2, async function* () {
      const piece = Buffer.alloc(64 * 1_024, 's');
      for (let i = 0; i < 256; i++) yield piece; // 16 MiB
    });
  });
  const client = await connectClient(t, port, { window: 128 * 1_024 });
  const stream = client.stream(2); // not read yet
  await sleep(200);
  const sentWhilePaused = server.stats.bytesOut;
  assert.ok(
    sentWhilePaused < 400 * 1_024,
    `the server sent ${sentWhilePaused} bytes to a reader that read nothing`,
  );
  for (let i = 0; i < 20; i++) assert.equal((await client.call(1, `q${i}`)).toString(), `q${i}`);
  let total = 0;
  for await (const chunk of stream) {
    total += (chunk as Buffer).length;
    if (total < 2 * MiB) await sleep(1); // a slow reader for a while
  }
  assert.equal(total, 16 * MiB);
});

test('destroying a response stream before its end cancels the task', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(2, async function* (_m, { signal }) {
      try {
        for (;;) {
          yield Buffer.alloc(16_384);
          await sleep(1);
        }
      } finally {
        reason = signal.reason;
      }
    }),
  );
  const client = await connectClient(t, port);
  let seen = 0;
  for await (const chunk of client.stream(2)) {
    seen += (chunk as Buffer).length;
    if (seen > 100_000) break; // destroys the stream
  }
  await waitFor(() => reason !== undefined, 'the task to be cancelled');
  assert.ok(reason instanceof TaskCancelledError);
  await waitFor(() => server.stats.outcomes.cancelled === 1, 'the cancel to be counted');
  await waitFor(() => client.stats.callsInFlight === 0, 'the id to be freed');
});

test('a streamed response that fails midway errors the stream with the task error', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(3, async function* () {
      yield 'part';
      throw new TaskError(9, 'gave up');
    }),
  );
  const client = await connectClient(t, port);
  const got: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const chunk of client.stream(3)) got.push(String(chunk));
    })(),
    (err: unknown) => err instanceof TaskError && err.errorCode === 9 && err.message === 'gave up',
  );
  // The partial response may or may not have been read before the error: it is to be discarded.
  assert.ok(got.join('') === '' || got.join('') === 'part', `got ${JSON.stringify(got)}`);
  // by name too
  await assert.rejects(
    (async () => {
      for await (const _ of client.stream('no-such-task')) {
      }
    })(),
    (err: unknown) => err instanceof TaskError && err.errorCode === ErrorCode.UNKNOWN_TASK,
  );
});

test('a message given as a stream that fails midway cancels the call with that error', async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const client = await connectClient(t, port);
  const body = Readable.from(
    (async function* () {
      yield Buffer.alloc(100_000);
      await sleep(20);
      throw new Error('the source broke');
    })(),
  );
  await assert.rejects(client.call(1, body), /the source broke/);
  await waitFor(() => server.stats.outcomes.cancelled === 1, 'the server to drop the task');
  assert.equal((await client.call(1, 'after')).toString(), 'after');
});

test('close waits for the calls in flight and refuses new ones; destroy fails them at once', async (t) => {
  const release = gate();
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (m) => {
      await release.promise;
      return m;
    }),
  );
  const a = await connectClient(t, port);
  const inFlight = a.call(1, 'kept');
  await sleep(20);
  const closing = a.close();
  assert.equal(a.close(), closing, 'a second close joins the first');
  await assert.rejects(a.call(1, 'new'), ServiceClosedError);
  release.open();
  assert.equal((await inFlight).toString(), 'kept');
  await within(closing, 5_000, 'the close');
  await a.closed;

  const hold = gate();
  const { port: port2 } = await startTaskServer(t, {}, (s) =>
    s.register(1, async () => {
      await hold.promise;
    }),
  );
  const b = await connectClient(t, port2);
  const cut = b.call(1);
  cut.catch(() => {}); // asserted below
  await sleep(20);
  await b.destroy();
  await assert.rejects(
    cut,
    (err: unknown) => err instanceof TaskConnectionClosedError && /destroyed/.test(err.message),
  );
  await assert.rejects(b.call(1), TaskConnectionClosedError);
  hold.open();
});

test('keep-alive: an idle client sends the keep-alive task on its own', async (t) => {
  const { server, port } = await startTaskServer(t, { waitTimeout: 0 });
  const client = await connectClient(t, port, { keepAlive: 100 });
  await sleep(600);
  assert.ok(server.stats.outcomes.ok >= 3, `${server.stats.outcomes.ok} keep-alives`);
  assert.equal(client.stats.callsInFlight, 0);
  // No keep-alive while calls are in flight or right after traffic.
  const none = await connectClient(t, port, { keepAlive: 0 });
  const before = server.stats.outcomes.ok;
  await sleep(300);
  assert.equal(server.stats.outcomes.ok - before >= 2, true, 'only the first client keeps alive');
  assert.equal(none.stats.callsTotal, 0);
});

test('ids stay unique among active calls through cancels, timeouts and queueing', async (t) => {
  const { server, port } = await startTaskServer(t, { maxTasksInFlight: 16 }, (s) =>
    s.register(1, async (m, { signal }) => {
      // Some tasks ignore their signal for a while, so cancelled calls hold their ids.
      const ms = Number(m.toString());
      await sleep(ms);
      if (signal.aborted && ms % 2 === 0) await sleep(5);
      return m;
    }),
  );
  const client = await connectClient(t, port);
  const results = await Promise.allSettled(
    Array.from({ length: 300 }, (_, i) => {
      const controller = new AbortController();
      if (i % 3 === 0) setTimeout(() => controller.abort(), i % 7);
      return client.call(1, String(i % 13), {
        signal: controller.signal,
        ...(i % 5 === 0 ? { timeout: 3 } : {}),
      });
    }),
  );
  assert.equal(results.length, 300);
  for (const [i, r] of results.entries()) {
    if (r.status === 'fulfilled') assert.equal(r.value.toString(), String(i % 13));
  }
  await waitFor(() => client.stats.callsInFlight === 0, 'every id to be freed');
  assert.equal(
    server.stats.protocolErrors,
    0,
    'a reused active id would have been a protocol error',
  );
  assert.equal(client.stats.callsQueued, 0);
  assert.equal((await client.call(1, '1')).toString(), '1');
});

test("a connect signal destroys the client at any time, failing its calls with the signal's reason", async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => s.register(1, () => sleep(5_000)));
  const aborted = AbortSignal.abort(new Error('never mind'));
  await assert.rejects(TaskClient.connect({ port, signal: aborted }), /never mind/);
  const controller = new AbortController();
  const client = await connectClient(t, port, { signal: controller.signal });
  const call = client.call(1);
  await sleep(20);
  controller.abort(new Error('shutting the client'));
  await assert.rejects(call, /shutting the client/);
  await assert.rejects(within(client.closed, 5_000, 'the client to close'), /shutting the client/);
});

test('invoke: a callback per call, with the errors call rejects with, never before invoke returns', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => {
    s.register(1, (m) => m, 'echo');
    s.register(2, () => {
      throw new TaskError(7, 'no');
    });
  });
  const client = await connectClient(t, port);
  const outcome = (task: number | string, body?: string) =>
    new Promise<{ error: Error | null; reply?: Buffer; sync: boolean }>((resolve) => {
      let returned = false;
      client.invoke(task, body, (error, reply) => resolve({ error, reply, sync: !returned }));
      returned = true;
    });
  const ok = await outcome(1, 'hello');
  assert.equal(ok.error, null);
  assert.equal(ok.reply?.toString(), 'hello');
  assert.equal((await outcome('echo', 'by name')).reply?.toString(), 'by name');
  const failed = await outcome(2);
  assert.ok(
    failed.error instanceof TaskError && failed.error.errorCode === 7,
    String(failed.error),
  );
  // 300 at once on one connection, all answered.
  const many = await Promise.all(Array.from({ length: 300 }, (_, i) => outcome(1, `m${i}`)));
  assert.deepEqual(
    many.map((o) => o.reply?.toString()),
    many.map((_, i) => `m${i}`),
  );
  // Refused at once (a bad code, a closed client): still called back after invoke returned.
  const bad = await outcome(300);
  assert.ok(bad.error instanceof InvalidOptionError);
  assert.equal(bad.sync, false, 'a refusal is not called back inside invoke');
  assert.throws(
    () => client.invoke(1, 'x', undefined as never),
    (err: unknown) =>
      err instanceof InvalidOptionError && /done must be a function/.test(err.message),
  );
  await client.close();
  const closed = await outcome(1, 'late');
  assert.ok(closed.error instanceof ServiceClosedError);
  assert.equal(closed.sync, false);
});

test('invoke: an error thrown by the callback is an uncaught exception, and the client goes on', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const child = spawnFixture(t, 'task-invoke-throw', [String(port)]);
  await child.line(/^reply second$/);
  await child.line(/^uncaught thrown by the callback$/);
  await child.line(/^reply after$/);
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('an idle client does not keep its process alive', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const child = spawnFixture(t, 'task-idle-client', [String(port)]);
  await child.line(/^reply from the child$/);
  assert.equal(await exitWithin(child, 10_000), 0);
});

test('bad client options and call arguments fail, naming what is wrong', async (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{}, /give one of port, path or socket/],
    [{ port: 1, path: '/tmp/x' }, /give only one of port, path or socket, got port and path/],
    [{ port: 1, byteOrder: 'middle' }, /byteOrder must be one of "le", "be", got "middle"/],
    [
      { port: 1, maxFramePayload: 10 },
      /maxFramePayload must be an integer from 1024 to 4294967295, got 10/,
    ],
    [{ port: 1, window: 0 }, /window must be an integer from 1 to 4294967295, got 0/],
    [{ port: 1, timeout: -1 }, /timeout must be a non-negative integer \(ms\), got -1/],
    [{ port: 1, keepAlive: 'often' }, /keepAlive must be/],
    [{ port: 1, prot: 2 }, /TaskClient\.prot is not a known option/],
    [{ port: 70_000 }, /port must be an integer from 0 to 65535, got 70000/],
    [{ path: '/tmp/x', host: 'h' }, /host needs TaskClient\.port/],
    [{ socket: 'no' }, /socket must be a Duplex stream/],
  ];
  for (const [options, message] of cases) {
    await assert.rejects(TaskClient.connect(options as TaskClientOptions), (err: unknown) => {
      assert.ok(err instanceof InvalidOptionError, `not an InvalidOptionError: ${String(err)}`);
      assert.match(err.message, message);
      return true;
    });
  }
  const { port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const client = await connectClient(t, port);
  await assert.rejects(
    client.call(300),
    /task must be a task code from 0 to 255 or a task name, got 300/,
  );
  await assert.rejects(
    client.call(1, 'x', { timeout: -5 }),
    /timeout must be a non-negative integer/,
  );
  await assert.rejects(
    client.call(1, 'x', { signal: {} as AbortSignal }),
    /signal must be an AbortSignal/,
  );
  assert.equal((await client.call(1, 'fine')).toString(), 'fine');
});

test('an in-memory duplex can carry the protocol (the narrowest type that works)', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => s.register(1, (m) => m));
  const { connect } = await import('node:net');
  const socket = connect({ port, host: '127.0.0.1' });
  t.after(() => socket.destroy());
  await once(socket, 'connect');
  const client = await TaskClient.connect({ socket, byteOrder: 'be' });
  assert.equal((await client.call(1, 'over a given stream')).toString(), 'over a given stream');
  await client.close();
});

test('task ids start at 1: id 0 names no task (a FATAL about the connection carries it)', async (t) => {
  const ids: number[] = [];
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(2, async (_m, ctx) => {
      ids.push(ctx.id);
      await sleep(10);
      return 'ok';
    }),
  );
  const client = await connectClient(t, port);
  await Promise.all([client.call(2), client.call(2), client.call(2)]);
  assert.deepEqual(ids.sort(), [1, 2, 3]);
  await client.call(2); // a freed id is taken again, never 0
  assert.ok(!ids.includes(0), `ids: ${ids}`);
});
