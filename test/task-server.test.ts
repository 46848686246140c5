// TaskServer over real sockets: tasks in both byte orders, concurrency, fairness, cancellation,
// the parse phase, the per-client view, errors, registration and metrics.
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createServer as createTlsServer, connect as tlsConnect } from 'node:tls';
import { Registry } from 'prom-client';
import {
  ClientFrame,
  createDemoTaskServer,
  ErrorCode,
  InvalidOptionError,
  registerDemoTasks,
  ServerFrame,
  TaskCancelledError,
  TaskClient,
  type TaskConnection,
  type TaskContext,
  TaskError,
  TaskServer,
  type TaskServerOptions,
} from '../src/index.js';
import {
  accepted,
  connectClient,
  gate,
  RawPeer,
  startTaskServer,
} from './fixtures/task-helpers.js';
import { FIXTURES, waitFor } from './helpers.js';

function isTaskError(code: number, message?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TaskError, `not a TaskError: ${String(err)}`);
    assert.equal(err.code, 'ERR_BERTH_TASK_ERROR');
    assert.equal(err.errorCode, code, `error code ${err.errorCode}: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  };
}

for (const byteOrder of ['le', 'be'] as const) {
  test(`the demo tasks over a real socket, byte order ${byteOrder}`, async (t) => {
    const server = createDemoTaskServer({ port: 0, host: '127.0.0.1', registry: null });
    t.after(() => server.destroy());
    await server.start();
    const port = (server.address() as { port: number }).port;
    const client = await connectClient(t, port, { byteOrder });
    assert.equal(client.byteOrder, byteOrder);
    assert.equal((await client.call(1, 'hello, berth')).toString(), 'hello, berth');
    assert.equal((await client.call('sum', '1 2, 3.5\n-1')).toString(), '5.5');
    const bytes = await client.call('bytes', '100000');
    assert.equal(bytes.length, 100_000);
    assert.equal(bytes.subarray(0, 28).toString(), 'abcdefghijklmnopqrstuvwxyzab');
    assert.equal(
      bytes.subarray(99_990).toString(),
      'abcdefghijklmnopqrstuvwxyz'.repeat(4000).slice(99_990, 100_000),
    );
    assert.equal((await client.call('bytes', '0')).length, 0);
    let streamed = '';
    for await (const chunk of client.stream('bytes', '70000')) streamed += String(chunk);
    assert.equal(streamed, 'abcdefghijklmnopqrstuvwxyz'.repeat(2_700).slice(0, 70_000));
    await assert.rejects(client.call('fail'), isTaskError(42, /^this task always fails$/));
    await assert.rejects(client.call('sum', '1 two'), isTaskError(1, /not a number: "two"/));
    await assert.rejects(
      client.call(99),
      isTaskError(ErrorCode.UNKNOWN_TASK, /no task has code 99/),
    );
    await assert.rejects(client.call(252), isTaskError(ErrorCode.UNKNOWN_TASK));
    await assert.rejects(
      client.call('nope'),
      isTaskError(
        ErrorCode.UNKNOWN_TASK,
        /no task named "nope" \(it has: echo, sleep, bytes, sum, fail, internal\)/,
      ),
    );
    assert.deepEqual(await client.listTasks(), [
      { code: 1, name: 'echo' },
      { code: 2, name: 'sleep' },
      { code: 3, name: 'bytes' },
      { code: 4, name: 'sum' },
      { code: 5, name: 'fail' },
      { code: 6, name: 'internal' },
    ]);
    await assert.rejects(
      client.call('internal'),
      isTaskError(ErrorCode.INTERNAL, /^internal error$/),
    );
    // sum: signed decimals, separated by spaces, tabs, commas or newlines; nothing else.
    for (const [message, answer] of [
      ['', '0'],
      ['1,,2', '3'],
      ['+2\t-0.5 .5', '2'],
      ['0.1 0.2', '0.30000000000000004'],
    ]) {
      assert.equal((await client.call('sum', message)).toString(), answer, message);
    }
    for (const word of ['0x10', '1e3', '1.2.3', '--1']) {
      await assert.rejects(client.call('sum', word), isTaskError(1, /not a number/), word);
    }
    assert.ok((await client.ping()) >= 0);
    // A message bigger than a frame, and one given as chunks.
    const big = Buffer.alloc(300_000, 'q');
    assert.deepEqual(await client.call('echo', big), big);
    assert.equal(
      (
        await client.call('echo', Readable.from([Buffer.from('in '), 'pieces', Buffer.from('!')]))
      ).toString(),
      'in pieces!',
    );
    const [conn] = server.clients();
    assert.equal(conn!.byteOrder, byteOrder);
    assert.equal(server.stats.protocolErrors, 0);
  });
}

test('1,000 concurrent tasks on one connection all run at once and all come back right', async (t) => {
  const started = gate();
  let running = 0;
  let peak = 0;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(7, async (message, ctx) => {
      running++;
      peak = Math.max(peak, running);
      if (running === 1_000) started.open();
      await started.promise;
      running--;
      return `${ctx.id}:${message.toString()}`;
    }),
  );
  const client = await connectClient(t, port);
  const replies = await Promise.all(
    Array.from({ length: 1_000 }, (_, i) => client.call(7, `m${i}`)),
  );
  assert.equal(peak, 1_000, 'every task was running at the same time');
  const ids = new Set<string>();
  replies.forEach((reply, i) => {
    const [id, message] = reply.toString().split(':');
    assert.equal(message, `m${i}`);
    ids.add(id!);
  });
  assert.equal(ids.size, 1_000, 'each active task had its own id');
  assert.equal(server.stats.outcomes.ok, 1_000);
  assert.equal(server.stats.tasksInFlight, 0);
});

test('a large streamed response does not hold up small ones: they finish first', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => {
    s.register(1, (m) => m);
    s.register(2, async function* () {
      const piece = Buffer.alloc(64 * 1_024, 'b');
      for (let i = 0; i < 512; i++) yield piece; // 32 MiB
    });
  });
  const client = await connectClient(t, port);
  const order: string[] = [];
  const stream = client.stream(2);
  let received = 0;
  const big = (async () => {
    for await (const chunk of stream) received += (chunk as Buffer).length;
    order.push('big');
  })();
  await waitFor(() => received > 0, 'the big response to start');
  const small = Array.from({ length: 20 }, (_, i) =>
    client.call(1, `s${i}`).then((r) => {
      assert.equal(r.toString(), `s${i}`);
      order.push('small');
    }),
  );
  await Promise.all([big, ...small]);
  assert.equal(received, 32 * 1_024 * 1_024);
  assert.deepEqual(order, [...Array(20).fill('small'), 'big']);
});

test('a client CANCEL reaches the run signal and the task ends with Error 200 "cancelled"', async (t) => {
  let seen: unknown;
  const running = gate();
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(3, async (_m, { signal }) => {
      running.open();
      await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      seen = signal.reason;
      return 'finished anyway'; // a cancelled task ends with Error 200 whatever it returns
    }),
  );
  const peer = await RawPeer.connect(t, port);
  peer.start(3, 41);
  await running.promise;
  peer.send(ClientFrame.CANCEL, 0, 0, 41);
  const error = await peer.frame({ id: 41 });
  assert.equal(error.type, ServerFrame.ERROR);
  assert.equal(error.code, ErrorCode.CANCELLED);
  assert.equal(error.payload.toString(), 'cancelled');
  assert.ok(seen instanceof TaskCancelledError);
  assert.equal((seen as TaskCancelledError).code, 'ERR_BERTH_TASK_CANCELLED');
  assert.equal(peer.frames.length, 1, 'nothing after the final frame');
  // A CANCEL for an id that is not active is ignored; the connection goes on.
  peer.send(ClientFrame.CANCEL, 0, 0, 41);
  peer.send(ClientFrame.CANCEL, 0, 0, 999);
  assert.equal(server.stats.outcomes.cancelled, 1);

  // The same through TaskClient: the call rejects with the signal's reason at once.
  const client = await connectClient(t, port);
  const controller = new AbortController();
  const call = client.call(3, undefined, { signal: controller.signal });
  await waitFor(() => server.stats.tasksInFlight === 1, 'the task to run');
  controller.abort(new Error('changed my mind'));
  await assert.rejects(call, /changed my mind/);
  await waitFor(() => server.stats.outcomes.cancelled === 2, 'the server to count the cancel');
  await waitFor(() => client.stats.callsInFlight === 0, 'the final frame to free the id');
});

test('cancelling a task that is still receiving its message, or queued for its parse, answers at once', async (t) => {
  const parsing = gate();
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, (m) => m);
    s.register(2, {
      parse: async () => {
        await parsing.promise;
        return { value: 'parsed' };
      },
      run: (v) => v,
    });
  });
  const peer = await RawPeer.connect(t, port);
  peer.send(ClientFrame.START, 0, 1, 5, 'part'); // no END: still receiving
  peer.send(ClientFrame.CANCEL, 0, 0, 5);
  assert.equal((await peer.frame({ id: 5 })).code, ErrorCode.CANCELLED);
  peer.start(2, 6); // parsing (held)
  peer.start(2, 7); // queued behind it
  peer.send(ClientFrame.CANCEL, 0, 0, 7);
  assert.equal((await peer.frame({ id: 7 })).code, ErrorCode.CANCELLED);
  // DATA for the cancelled task 5 arrives late: ignored.
  peer.send(ClientFrame.DATA, 1, 0, 5, 'late');
  parsing.open();
  assert.equal((await peer.frame({ id: 6 })).payload.toString(), 'parsed');
  assert.equal(server.stats.outcomes.cancelled, 2);
  assert.equal(server.stats.protocolErrors, 0);
});

test('a server-side cancel aborts the run signal and the client gets Error 200', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(4, async (_m, { signal }) => {
      await sleep(60_000, undefined, { signal }).catch(() => {
        reason = signal.reason;
      });
    }),
  );
  const client = await connectClient(t, port);
  const call = client.call(4);
  await waitFor(() => server.stats.tasksInFlight === 1, 'the task to run');
  const [conn] = server.clients();
  const [id] = conn!.tasks();
  assert.equal(conn!.cancel(id!), true);
  assert.equal(conn!.cancel(12345), false);
  await assert.rejects(call, isTaskError(ErrorCode.CANCELLED, /^cancelled by the server$/));
  assert.ok(reason instanceof TaskCancelledError);
  // cancelAll
  const calls = [client.call(4), client.call(4), client.call(4)];
  await waitFor(() => conn!.numTasks === 3, 'three tasks');
  assert.equal(conn!.cancelAll(), 3);
  for (const c of calls) await assert.rejects(c, isTaskError(ErrorCode.CANCELLED));
});

test('the parse phase runs one task at a time per client, in order; run phases overlap', async (t) => {
  let parsing = 0;
  let maxParsing = 0;
  let running = 0;
  let maxRunning = 0;
  const parsedOrder: string[] = [];
  const allRunning = gate();
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(9, {
      parse: async (message) => {
        parsing++;
        maxParsing = Math.max(maxParsing, parsing);
        await sleep(5);
        parsedOrder.push(message.toString());
        parsing--;
        return { value: message.toString().toUpperCase(), data: { length: message.length } };
      },
      run: async (value, ctx) => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        if (running === 10) allRunning.open();
        await allRunning.promise;
        running--;
        assert.deepEqual(ctx.runData, { length: value.length });
        assert.deepEqual(ctx.client.runData(ctx.id), { length: value.length });
        return value;
      },
    }),
  );
  const client = await connectClient(t, port);
  const names = Array.from({ length: 10 }, (_, i) => `task${i}`);
  const replies = await Promise.all(names.map((n) => client.call(9, n)));
  assert.deepEqual(
    replies.map(String),
    names.map((n) => n.toUpperCase()),
  );
  assert.equal(maxParsing, 1, 'two parse steps of one client overlapped');
  assert.deepEqual(parsedOrder, names, 'parse steps ran in arrival order');
  assert.equal(maxRunning, 10, 'run steps ran concurrently');
});

test('parse steps of different clients do run at the same time', async (t) => {
  let parsing = 0;
  let maxParsing = 0;
  const both = gate();
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(9, {
      parse: async () => {
        parsing++;
        maxParsing = Math.max(maxParsing, parsing);
        if (parsing === 2) both.open();
        await Promise.race([both.promise, sleep(2_000)]);
        parsing--;
        return undefined; // nothing to run: an empty OK
      },
      run: () => 'never',
    }),
  );
  const a = await connectClient(t, port);
  const b = await connectClient(t, port);
  const [ra, rb] = await Promise.all([a.call(9), b.call(9)]);
  assert.equal(ra.length + rb.length, 0);
  assert.equal(maxParsing, 2);
});

test('what a run step may return: nothing, bytes, strings, Readables, iterables', async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, () => undefined);
    s.register(2, () => new Uint8Array([1, 2, 3]));
    s.register(3, () => 'héllo');
    s.register(4, () => Readable.from(['a', Buffer.from('b'), 'c']));
    s.register(5, () => ['x', 'y']);
    s.register(6, async function* () {
      yield 'p';
      await sleep(1);
      yield new Uint8Array([113]);
    });
    s.register(7, () => 42 as unknown as string);
    s.register(8, () => [1, 2] as unknown as string[]);
  });
  const client = await connectClient(t, port);
  assert.equal((await client.call(1)).length, 0);
  assert.deepEqual([...(await client.call(2))], [1, 2, 3]);
  assert.equal((await client.call(3)).toString(), 'héllo');
  assert.equal((await client.call(4)).toString(), 'abc');
  assert.equal((await client.call(5)).toString(), 'xy');
  assert.equal((await client.call(6)).toString(), 'pq');
  await assert.rejects(client.call(7), isTaskError(ErrorCode.INTERNAL));
  await assert.rejects(client.call(8), isTaskError(ErrorCode.INTERNAL));
  assert.equal(server.stats.outcomes.internal, 2);
});

test('errors: an application code answers with it; an uncoded error is internal, published, and the connection stays', async (t) => {
  class NotFound extends Error {
    readonly errorCode = 44;
  }
  const published: { error: unknown; id: number; code: number }[] = [];
  const onError = (message: unknown) => published.push(message as (typeof published)[number]);
  subscribe('berth:task:error', onError);
  t.after(() => unsubscribe('berth:task:error', onError));
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, () => {
      throw new NotFound('no such thing');
    });
    s.register(2, async () => {
      throw Object.assign(new Error('coded by property'), { errorCode: 0 });
    });
    s.register(3, () => {
      throw new TypeError('a bug: secret details');
    });
    s.register(4, async () => {
      throw Object.assign(new Error('not an application code'), { errorCode: 250 });
    });
    s.register(5, async function* () {
      yield 'partial';
      throw new TaskError(7, 'broke midway');
    });
    s.register(6, (m) => m);
  });
  const client = await connectClient(t, port);
  await assert.rejects(client.call(1), isTaskError(44, /^no such thing$/));
  await assert.rejects(client.call(2), isTaskError(0, /^coded by property$/));
  await assert.rejects(client.call(3), isTaskError(ErrorCode.INTERNAL, /^internal error$/));
  await assert.rejects(client.call(4), isTaskError(ErrorCode.INTERNAL));
  await assert.rejects(client.call(5), isTaskError(7, /broke midway/));
  assert.equal((await client.call(6, 'still connected')).toString(), 'still connected');
  assert.equal(published.length, 2);
  assert.match(String((published[0]!.error as Error).message), /secret details/);
  assert.equal(published[0]!.code, 3);
  assert.deepEqual(server.stats.outcomes, {
    ok: 1,
    error: 3,
    internal: 2,
    cancelled: 0,
    rejected: 0,
    shutdown: 0,
    abandoned: 0,
    timeout: 0,
  });
});

test('the per-client view: clients, tasks, codes, metadata, run data, addresses', async (t) => {
  const release = gate();
  const seen: TaskConnection[] = [];
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(10, {
      parse: (m) => ({ value: m, data: `data:${m.toString()}` }),
      run: async (_v, ctx) => {
        seen.push(ctx.client);
        await release.promise;
      },
    });
    s.register(20, async () => {
      await release.promise;
    });
  });
  assert.deepEqual(server.clients(), []);
  await server.wait(); // nobody connected: at once
  const first = await connectClient(t, port);
  const second = await connectClient(t, port);
  await waitFor(() => server.numClients === 2, 'two clients');
  const [a, b] = server.clients();
  assert.ok(a!.connectedAt.getTime() <= b!.connectedAt.getTime());
  const before = Date.now();
  const calls = [first.call(20), first.call(10, 'x'), first.call(20), first.call(10, 'y')];
  await waitFor(() => a!.numTasks === 4, 'four tasks');
  const ids = a!.tasks();
  assert.equal(ids.length, 4);
  assert.deepEqual(
    [...ids].sort((x, y) => x - y),
    ids,
    'ascending',
  );
  assert.deepEqual(a!.taskCodes(), [20, 10], 'each code once, oldest first');
  assert.equal(a!.tasksWithTaskCode(10).length, 2);
  assert.deepEqual(a!.tasksWithTaskCode(99), []);
  const [x] = a!.tasksWithTaskCode(10);
  const meta = a!.metadata(x!)!;
  assert.equal(meta.id, x);
  assert.equal(meta.code, 10);
  assert.ok(meta.timestamp instanceof Date);
  assert.ok(Math.abs(meta.timestamp.getTime() - before) < 5_000);
  assert.equal(a!.runData(x!), 'data:x');
  assert.equal(a!.metadata(999_999), undefined);
  assert.equal(a!.runData(999_999), undefined);
  assert.equal(b!.numTasks, 0);
  assert.equal(a!.remoteAddress, '127.0.0.1');
  assert.equal(a!.localPort, port);
  assert.match(a!.toString(), new RegExp(`^127\\.0\\.0\\.1:\\d+->127\\.0\\.0\\.1:${port}$`));
  release.open();
  await Promise.all(calls);
  assert.ok(seen.every((c) => c === a));
  assert.equal(a!.stats.tasksTotal, 4);
  await first.close();
  await second.close();
  await server.wait();
  assert.equal(server.numClients, 0);
});

test('register: reserved codes, bad arguments and duplicates throw, naming the argument', () => {
  const server = new TaskServer({ port: 0, registry: null });
  const run = (m: Buffer) => m;
  for (const code of [250, 251, 255]) {
    assert.throws(
      () => server.register(code, run),
      (err: unknown) =>
        err instanceof InvalidOptionError &&
        err.option === 'code' &&
        /250 to 255 are reserved/.test(err.message),
    );
  }
  const bad: [unknown, unknown, unknown, RegExp][] = [
    [-1, run, undefined, /code must be an integer from 0 to 249, got -1/],
    [256, run, undefined, /code must be an integer from 0 to 249, got 256/],
    [1.5, run, undefined, /code must be an integer from 0 to 249/],
    ['1', run, undefined, /code must be an integer/],
    [
      1,
      undefined,
      undefined,
      /task must be a function or an object with a run function, got undefined/,
    ],
    [1, { parse: () => undefined }, undefined, /task\.run must be a function/],
    [1, { run, parse: 3 }, undefined, /task\.parse must be a function/],
    [1, run, '', /name must be a non-empty string/],
    [1, run, 'x'.repeat(256), /at most 255 bytes/],
    [1, run, '42', /must not be all digits/],
  ];
  for (const [code, task, name, message] of bad) {
    assert.throws(
      () => server.register(code as number, task as typeof run, name as string),
      (err: unknown) => err instanceof InvalidOptionError && message.test(err.message),
      String(message),
    );
  }
  server.register(1, run, 'echo').register(2, { run });
  assert.throws(() => server.register(1, run), /code 1 is already registered \(echo\)/);
  assert.throws(
    () => server.register(3, run, 'echo'),
    /name "echo" is already registered \(code 1\)/,
  );
  assert.deepEqual(server.registeredTaskCodes(), [1, 2]);
  assert.deepEqual(server.registeredTasks(), [
    { code: 1, name: 'echo' },
    { code: 2, name: undefined },
  ]);
});

test('bad server options fail at construction, naming the option', () => {
  const cases: [Partial<TaskServerOptions> & Record<string, unknown>, RegExp][] = [
    [
      { maxFramePayload: 100 },
      /maxFramePayload must be an integer from 1024 to 4294967295, got 100/,
    ],
    [{ maxMessageSize: -1 }, /maxMessageSize must be an integer from 0 to 4294967295, got -1/],
    [
      { maxMessageSize: 10_000, maxBufferedBytes: 5_000 },
      /maxBufferedBytes must be at least maxMessageSize \(10000\), got 5000/,
    ],
    [{ maxTasksInFlight: 0 }, /maxTasksInFlight must be an integer from 1 to 4294967295, got 0/],
    [{ maxClients: 0 }, /maxClients must be a positive integer, got 0/],
    [{ waitTimeout: -5 }, /waitTimeout must be a non-negative integer \(ms\), got -5/],
    [
      { readTimeout: 'soon' as unknown as number },
      /readTimeout must be a non-negative integer \(ms\), got "soon"/,
    ],
    [{ writeTimeout: 1.5 }, /writeTimeout must be/],
    [{ processingInterval: -1 }, /processingInterval must be/],
    [{ shutdownTimeout: -1 }, /shutdownTimeout must be/],
    [{ port: 70_000 }, /TaskServer\.port must be an integer from 0 to 65535, got 70000/],
    [{ port: undefined, path: undefined }, /nowhere to listen/],
    [{ name: '' }, /name must be a non-empty string/],
    [{ maxFramPayload: 2_000 }, /TaskServer\.maxFramPayload is not a known option/],
    [{ server: {} as never }, /server must be a net\.Server/],
  ];
  for (const [options, message] of cases) {
    assert.throws(
      () => new TaskServer({ port: 0, registry: null, ...options } as TaskServerOptions),
      (err: unknown) => {
        assert.ok(err instanceof Error && 'code' in err, `not a coded error: ${String(err)}`);
        assert.match(err.message, message);
        return true;
      },
    );
  }
});

test('metrics: clients, tasks by code and outcome, durations, bytes, in the given registry', async (t) => {
  const registry = new Registry();
  const { server, port } = await startTaskServer(t, { registry, name: 'tasks' }, (s) => {
    s.register(1, (m) => m, 'echo');
    s.register(2, () => {
      throw new TaskError(3, 'no');
    });
    s.register(3, () => sleep(30), 'slow');
  });
  const client = await connectClient(t, port);
  await client.call(3);
  await client.call(1, 'a');
  await client.call(1, 'b');
  await assert.rejects(client.call(2));
  await assert.rejects(client.call(77));
  const text = await registry.metrics();
  const line = (pattern: RegExp) => {
    const found = text.split('\n').find((l) => pattern.test(l));
    assert.ok(found, `no line like ${pattern} in\n${text}`);
    return Number(found.split(' ').pop());
  };
  assert.equal(
    line(/^berth_task_tasks_total\{service="tasks",code="1",task="echo",outcome="ok"\}/),
    2,
  );
  assert.equal(
    line(/^berth_task_tasks_total\{service="tasks",code="2",task="2",outcome="error"\}/),
    1,
  );
  assert.equal(
    line(/^berth_task_tasks_total\{service="tasks",code="77",task="77",outcome="rejected"\}/),
    1,
  );
  assert.equal(
    line(/^berth_task_duration_seconds_count\{service="tasks",code="1",task="echo"\}/),
    2,
  );
  // The 30 ms task: never in a bucket under 30 ms, always in +Inf; the sum at least 30 ms.
  const slow = (le: string) => {
    const prefix = `berth_task_duration_seconds_bucket{service="tasks",code="3",task="slow",le="${le}"} `;
    const found = text.split('\n').find((l) => l.startsWith(prefix));
    assert.ok(found, `no ${prefix}`);
    return Number(found.slice(prefix.length));
  };
  assert.equal(slow('0.025'), 0);
  assert.equal(slow('+Inf'), 1);
  assert.ok(
    line(/^berth_task_duration_seconds_sum\{service="tasks",code="3",task="slow"\}/) >= 0.029,
  );
  assert.equal(
    line(/^berth_task_duration_seconds_count\{service="tasks",code="2",task="2"\}/),
    1,
    'tasks that failed are timed too',
  );
  assert.equal(line(/^berth_task_clients\{service="tasks"\}/), 1);
  assert.equal(line(/^berth_task_clients_total\{service="tasks"\}/), 1);
  assert.equal(line(/^berth_task_in_flight\{service="tasks"\}/), 0);
  assert.ok(line(/^berth_task_received_bytes_total\{service="tasks"\}/) > 16);
  assert.ok(line(/^berth_task_sent_bytes_total\{service="tasks"\}/) > 24);
  assert.equal(line(/^berth_task_timeouts_total\{service="tasks",timeout="read"\}/), 0);
  assert.equal(line(/^berth_tcp_connections_total\{service="tasks"\}/), 1);
  // Counters advance by what happened since the last scrape.
  await client.call(1, 'c');
  assert.equal(
    (await registry.metrics())
      .split('\n')
      .find((l) =>
        l.startsWith('berth_task_tasks_total{service="tasks",code="1",task="echo",outcome="ok"}'),
      ),
    'berth_task_tasks_total{service="tasks",code="1",task="echo",outcome="ok"} 3',
  );
  assert.equal(server.stats.tasksTotal, 6);
});

test("a scrape takes one stats snapshot for all of the server's metrics, and the next scrape a fresh one", async (t) => {
  const registry = new Registry();
  const { server, port } = await startTaskServer(t, { registry, name: 'once' }, (s) => {
    s.register(1, (m) => m, 'echo');
  });
  // stats walks every connection: count how often a scrape reads it.
  const read = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(server), 'stats')!.get!;
  let reads = 0;
  Object.defineProperty(server, 'stats', {
    get() {
      reads++;
      return read.call(server);
    },
  });
  const client = await connectClient(t, port);
  await client.call(1, 'a');
  const first = await registry.metrics();
  assert.equal(reads, 1, 'one snapshot for the whole scrape');
  assert.match(first, /^berth_task_clients\{service="once"\} 1$/m);
  await client.close();
  await waitFor(() => read.call(server).clients === 0, 'the client gone');
  const second = await registry.metrics();
  assert.equal(reads, 2);
  assert.match(second, /^berth_task_clients\{service="once"\} 0$/m, 'the next scrape is fresh');
});

test('a client connecting is published on berth:task:client, and its leaving on berth:task:disconnect', async (t) => {
  const events: string[] = [];
  type Message = { service: string; client: TaskConnection };
  const onClient = (m: unknown) => {
    if ((m as Message).service === 'events') events.push(`client ${(m as Message).client.id}`);
  };
  const onGone = (m: unknown) => {
    if ((m as Message).service === 'events') events.push(`gone ${(m as Message).client.id}`);
  };
  subscribe('berth:task:client', onClient);
  subscribe('berth:task:disconnect', onGone);
  t.after(() => {
    unsubscribe('berth:task:client', onClient);
    unsubscribe('berth:task:disconnect', onGone);
  });
  const { server, port } = await startTaskServer(t, { name: 'events' });
  const client = await connectClient(t, port);
  await waitFor(() => events.length === 1, 'the client event');
  await client.close();
  await server.wait();
  assert.deepEqual(events, ['client 1', 'gone 1']);
});

test('a raw client sees exactly the frames the spec promises for a streamed response', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async function* () {
      yield 'abc';
      yield 'def';
    }),
  );
  const peer = await RawPeer.connect(t, port, { byteOrder: 'be' });
  const hello = accepted(peer);
  assert.deepEqual(hello, {
    version: 1,
    flags: 0,
    maxFramePayload: 1_048_576,
    maxMessageSize: 4_194_304,
    maxTasksInFlight: 1_024,
    waitTimeout: 1_800_000,
  });
  peer.start(1, 0xffff_fffe);
  await peer.frame({ id: 0xffff_fffe, flags: 1 });
  const body = Buffer.concat(peer.frames.map((f) => f.payload)).toString();
  assert.equal(body, 'abcdef');
  assert.ok(peer.frames.every((f) => f.type === ServerFrame.OK && f.code === 0));
  assert.equal(peer.frames.at(-1)!.flags, 1);
});

// The task context's type is what handlers see.
export type _RunSeesContext = Parameters<
  Parameters<TaskServer['register']>[1] & ((m: Buffer, c: TaskContext) => unknown)
>[1];

test('a TaskServer serves one handed-over connection (Accept=yes, inetd) and then closes itself', async (t) => {
  // A listener the test owns accepts the connection, as systemd would, and hands the socket over.
  const acceptor = createServer();
  t.after(() => acceptor.close());
  acceptor.listen(0, '127.0.0.1');
  await once(acceptor, 'listening');
  const handedOver = once(acceptor, 'connection');
  const port = (acceptor.address() as { port: number }).port;
  const client = await Promise.all([
    TaskClient.connect({ host: '127.0.0.1', port }),
    handedOver.then(([socket]) => {
      const server = registerDemoTasks(
        new TaskServer({ connection: socket as Socket, registry: null }),
      );
      t.after(() => server.destroy());
      return server.start().then(() => server);
    }),
  ]).then(async ([c, server]) => {
    assert.equal((await c.call('echo', 'one connection')).toString(), 'one connection');
    assert.equal(server.stats.listening, 0);
    await c.close();
    await server.closed; // the connection ended, so the server did too
    assert.equal(server.state, 'closed');
    return c;
  });
  t.after(() => client.destroy());
});

test('a client idle for a second lets go of its decoder and outbox, and gets them back on its next task', async (t) => {
  const net = createServer();
  const sockets: Socket[] = [];
  net.on('connection', (s: Socket) => sockets.push(s));
  // readTimeout 200 ms makes the server check its clients every 50 ms.
  const { server, port } = await startTaskServer(t, { server: net, readTimeout: 200 }, (s) => {
    s.register(1, (m: Buffer) => m, 'echo');
    s.register(2, () => Readable.from([Buffer.alloc(300_000, 7), Buffer.alloc(300_000, 8)]));
  });
  const client = await connectClient(t, port);
  await waitFor(() => sockets.length === 1, 'the server socket');
  const socket = sockets[0]!;
  assert.equal(socket.listenerCount('drain'), 0, 'no outbox before the first answer');
  assert.equal((await client.call(1, 'one')).toString(), 'one');
  assert.equal(socket.listenerCount('drain'), 1, 'the outbox follows the socket');
  const before = server.clients()[0]!.stats.bytesOut;
  await waitFor(() => socket.listenerCount('drain') === 0, 'the outbox let go', 3_000);
  assert.equal(server.clients()[0]!.stats.bytesOut, before, 'no byte uncounted');
  // Made again on demand, and as good as new: a small answer, then a streamed one.
  assert.equal((await client.call(1, 'two')).toString(), 'two');
  const big = await client.call(2, '');
  assert.equal(big.length, 600_000);
  assert.equal(big[0], 7);
  assert.equal(big[599_999], 8);
  assert.ok(server.clients()[0]!.stats.bytesOut > before + 600_000);
  assert.equal(server.numClients, 1);
});

test('the task protocol over TLS: a TaskServer on a tls.Server, a TaskClient over a TLS socket', async (t) => {
  const key = readFileSync(join(FIXTURES, 'tls', 'key.pem'));
  const cert = readFileSync(join(FIXTURES, 'tls', 'cert.pem'));
  const { server, port } = await startTaskServer(
    t,
    { server: createTlsServer({ key, cert }) },
    (s) => registerDemoTasks(s),
  );
  const socket = tlsConnect({ port, host: '127.0.0.1', ca: cert, servername: 'localhost' });
  await once(socket, 'secureConnect');
  const client = await TaskClient.connect({ socket });
  t.after(() => client.destroy());
  assert.equal((await client.call(1, 'sealed')).toString(), 'sealed');
  assert.equal((await client.call('bytes', '300000')).length, 300_000);
  assert.equal(server.numClients, 1);
  assert.match(server.clients()[0]!.toString(), /^127\.0\.0\.1:\d+->127\.0\.0\.1:\d+$/);
  await server.close({ timeout: 2_000 });
  assert.equal(server.numClients, 0);
});
