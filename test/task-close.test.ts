// How a task server and its clients end: Goodbye, the close deadline, destroy, disconnect, a
// client's own Goodbye, and connections that break the protocol. The rule under test: every task
// a client sent gets OK, Error, or (after a Goodbye) the connection ends without it having run.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ClientFrame,
  ErrorCode,
  encodeFrame,
  ServerFrame,
  ServiceClosedError,
  ServiceDestroyedError,
  ShutdownTimeoutError,
  TaskCancelledError,
  TaskConnectError,
  TaskConnectionClosedError,
  TaskError,
  TaskGoodbyeError,
  TaskServer,
} from '../src/index.js';
import {
  accepted,
  connectClient,
  gate,
  RawPeer,
  startTaskServer,
  within,
} from './fixtures/task-helpers.js';
import { waitFor } from './helpers.js';

test('Goodbye during load loses no task: each call is answered, or the server never ran it', async (t) => {
  const ran = new Set<string>();
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (m) => {
      ran.add(m.toString());
      await sleep(Math.floor(Math.random() * 30));
      return m;
    }),
  );
  const clients = await Promise.all([1, 2, 3, 4].map(() => connectClient(t, port)));
  type Result = { message: string; outcome: string; error?: unknown };
  const results: Result[] = [];
  let n = 0;
  const loops = clients.flatMap((client, c) =>
    Array.from({ length: 16 }, async () => {
      while (!client.goodbye) {
        const message = `c${c}-${n++}`;
        try {
          const reply = await client.call(1, message);
          assert.equal(reply.toString(), message);
          results.push({ message, outcome: 'ok' });
        } catch (error) {
          if (error instanceof TaskError && error.errorCode === ErrorCode.SHUTTING_DOWN) {
            results.push({ message, outcome: 'refused', error });
          } else if (error instanceof TaskGoodbyeError) {
            results.push({ message, outcome: 'never ran', error });
          } else {
            results.push({ message, outcome: 'lost', error });
          }
        }
      }
    }),
  );
  await sleep(300);
  const closing = server.close({ timeout: 10_000 });
  await within(Promise.all(loops), 15_000, 'every call to settle');
  await within(closing, 15_000, 'the close');
  const lost = results.filter((r) => r.outcome === 'lost');
  assert.deepEqual(lost, [], 'calls ended some other way');
  for (const r of results) {
    if (r.outcome === 'ok') assert.ok(ran.has(r.message), `${r.message} answered but not run`);
    else assert.ok(!ran.has(r.message), `${r.message} ran but was reported ${r.outcome}`);
  }
  const ok = results.filter((r) => r.outcome === 'ok').length;
  assert.ok(ok > 100, `only ${ok} calls before the close`);
  assert.equal(ran.size, ok, 'every task that ran was answered OK');
  assert.equal(server.stats.outcomes.abandoned, 0);
  assert.equal(
    server.stats.outcomes.shutdown,
    results.filter((r) => r.outcome === 'refused').length,
  );
  assert.equal(server.state, 'closed');
});

test('close: Goodbye, new tasks refused with 204, a running task finishes, then the connection closes', async (t) => {
  const release = gate();
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, async () => {
      await release.promise;
      return 'finished';
    });
    s.register(2, (m) => m);
  });
  const client = await connectClient(t, port);
  const running = client.call(1);
  await waitFor(() => server.stats.tasksInFlight === 1, 'the task to run');
  const closing = server.close({ timeout: 10_000 });
  assert.equal(server.state, 'draining');
  await waitFor(() => client.goodbye, 'the goodbye');
  await assert.rejects(client.call(2, 'new'), (err: unknown) => {
    assert.ok(err instanceof TaskGoodbyeError);
    assert.equal(err.code, 'ERR_BERTH_TASK_GOODBYE');
    assert.equal(err.errorCode, ErrorCode.SHUTTING_DOWN);
    assert.match(err.message, /server shutting down/);
    return true;
  });
  release.open();
  assert.equal((await running).toString(), 'finished');
  await within(closing, 5_000, 'the close');
  await within(client.closed, 5_000, 'the client to see the end');
  await server.closed;
  assert.equal(server.stats.listening, 0);
  await assert.rejects(server.start(), ServiceClosedError);
  assert.equal(await server.close(), undefined, 'a second close joins the first');
});

test('the close deadline: tasks still running are cancelled and answered with 204; close rejects', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (_m, { signal }) => {
      signal.addEventListener('abort', () => {
        reason = signal.reason;
      });
      await sleep(3_000); // ignores its signal
      return 'too late';
    }),
  );
  const client = await connectClient(t, port);
  const calls = [client.call(1), client.call(1)];
  for (const call of calls) call.catch(() => {}); // asserted below, after the close
  await waitFor(() => server.stats.tasksInFlight === 2, 'two tasks');
  const started = Date.now();
  await assert.rejects(server.close({ timeout: 200 }), (err: unknown) => {
    assert.ok(err instanceof ShutdownTimeoutError);
    assert.equal(err.remaining, 2);
    assert.match(
      err.message,
      /close timed out after 200 ms; 2 task\(s\) still running were cancelled/,
    );
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took >= 190 && took < 2_500, `close took ${took} ms`);
  for (const call of calls) {
    await assert.rejects(call, (err: unknown) => {
      assert.ok(err instanceof TaskError);
      assert.equal(err.errorCode, ErrorCode.SHUTTING_DOWN);
      assert.match(err.message, /server shutting down before the task finished/);
      return true;
    });
  }
  assert.ok(reason instanceof TaskCancelledError);
  assert.equal(server.stats.outcomes.shutdown, 2);
  await assert.rejects(server.closed, ShutdownTimeoutError);
});

test('destroy: every connection cut now, run signals aborted with the reason, calls fail', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (_m, { signal }) => {
      await sleep(5_000, undefined, { signal }).catch(() => {
        reason = signal.reason;
      });
    }),
  );
  const client = await connectClient(t, port);
  const call = client.call(1);
  await waitFor(() => server.stats.tasksInFlight === 1, 'the task to run');
  await server.destroy();
  await assert.rejects(call, TaskConnectionClosedError);
  assert.ok(reason instanceof ServiceDestroyedError);
  await assert.rejects(server.closed, ServiceDestroyedError);
  assert.equal(server.stats.outcomes.abandoned, 1);
  await assert.rejects(TaskServer.prototype.start.call(server), ServiceClosedError);
});

test('a signal given at construction closes the server; await using closes it too', async (t) => {
  const controller = new AbortController();
  const { server } = await startTaskServer(t, { signal: controller.signal });
  controller.abort();
  await within(server.closed, 5_000, 'the close');
  assert.equal(server.state, 'closed');
  let disposed: TaskServer | undefined;
  {
    await using s = new TaskServer({ port: 0, host: '127.0.0.1', registry: null });
    await s.start();
    disposed = s;
  }
  assert.equal(disposed.state, 'closed');
});

test('disconnect(ms): Goodbye 233 to one client, its tasks finish, a second call keeps the shorter deadline', async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, async (m) => {
      await sleep(Number(m.toString()));
      return 'done';
    });
  });
  const peer = await RawPeer.connect(t, port);
  const other = await connectClient(t, port);
  await waitFor(() => server.numClients === 2, 'two clients');
  peer.start(1, 1, '100');
  peer.start(1, 2, '5000');
  await waitFor(() => server.stats.tasksInFlight === 2, 'two tasks');
  const [conn] = server.clients();
  conn!.disconnect(10_000);
  conn!.disconnect(300); // the shorter wins
  conn!.disconnect(20_000);
  const goodbye = await peer.frame({ type: ServerFrame.GOODBYE });
  assert.equal(goodbye.code, ErrorCode.DISCONNECTED);
  peer.start(1, 3, '1');
  assert.equal((await peer.frame({ id: 3 })).code, ErrorCode.SHUTTING_DOWN);
  assert.equal((await peer.frame({ id: 1 })).payload.toString(), 'done');
  const cut = await peer.frame({ id: 2 });
  assert.equal(cut.type, ServerFrame.ERROR);
  assert.equal(cut.code, ErrorCode.SHUTTING_DOWN);
  await peer.closed();
  assert.equal((await other.call(1, '1')).toString(), 'done', 'the other client is untouched');
  // The server-wide form.
  server.disconnect(1_000);
  await within(other.closed, 5_000, 'the other client to be disconnected');
  assert.equal(other.goodbye, true);
  assert.equal(server.state, 'ready', 'the server keeps listening');
  await server.wait();
});

test("a client's GOODBYE: its tasks are answered, then the server closes; even after a half-close", async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (m) => {
      await sleep(100);
      return m;
    }),
  );
  const peer = await RawPeer.connect(t, port);
  peer.start(1, 1, 'kept');
  peer.send(ClientFrame.GOODBYE, 0, 0, 0);
  peer.socket.end(); // half-close: no more from us, answers still welcome
  assert.equal((await peer.frame({ id: 1 })).payload.toString(), 'kept');
  await peer.closed();
  assert.equal(server.stats.outcomes.ok, 1);
  assert.equal(server.stats.outcomes.abandoned, 0);
});

test('a client that ends without GOODBYE abandons its tasks: their signals abort', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (_m, { signal }) => {
      await sleep(5_000, undefined, { signal }).catch(() => {
        reason = signal.reason;
      });
    }),
  );
  const peer = await RawPeer.connect(t, port);
  peer.start(1, 1);
  await waitFor(() => server.stats.tasksInFlight === 1, 'the task to run');
  peer.socket.end();
  await waitFor(() => reason !== undefined, 'the task to be abandoned');
  assert.ok(reason instanceof TaskConnectionClosedError);
  assert.equal(server.stats.outcomes.abandoned, 1);
  await peer.closed();
});

test('garbage from raw sockets gets a protocol error, and the server keeps serving everyone else', async (t) => {
  const { server, port } = await startTaskServer(t, {}, (s) => {
    s.register(1, (m) => m);
    s.register(2, () => sleep(2_000));
  });
  const bystander = await connectClient(t, port);
  let serving = true;
  let answered = 0;
  const busy = (async () => {
    while (serving) {
      assert.equal((await bystander.call(1, 'steady')).toString(), 'steady');
      answered++;
    }
  })();
  // An HTTP request where a hello should be: refused with 220 and closed.
  const http = netConnect({ port, host: '127.0.0.1' });
  t.after(() => http.destroy());
  const reply: Buffer[] = [];
  http.on('data', (d: Buffer) => reply.push(d));
  http.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await within(once(http, 'close'), 5_000, 'the refusal');
  const refusal = Buffer.concat(reply);
  assert.equal(refusal.subarray(0, 6).toString('hex'), '425254480101');
  assert.equal(refusal[6], ErrorCode.BAD_HANDSHAKE);
  assert.match(refusal.subarray(8).toString(), /bad handshake: byte 0 of the client hello is 0x47/);
  // Random bytes after a good hello, from many connections at once: each gets FATAL or is
  // closed, and none disturbs the bystander.
  const peers = await Promise.all(Array.from({ length: 20 }, () => RawPeer.connect(t, port)));
  for (const peer of peers)
    peer.socket.write(Buffer.concat([Buffer.from([0x7f]), randomBytes(500)]));
  for (const peer of peers) {
    const fatal = await peer.frame({ type: ServerFrame.FATAL });
    assert.equal(fatal.code, ErrorCode.UNKNOWN_FRAME_TYPE);
    await peer.closed();
  }
  // A duplicate active id, and DATA after the end of a message.
  const dup = await RawPeer.connect(t, port);
  dup.send(ClientFrame.START, 0, 1, 9, 'open');
  dup.send(ClientFrame.START, 0, 1, 9, 'again');
  assert.equal((await dup.frame({ type: ServerFrame.FATAL })).code, ErrorCode.DUPLICATE_TASK_ID);
  const late = await RawPeer.connect(t, port);
  late.send(ClientFrame.START, 0, 2, 4, 'a');
  late.send(ClientFrame.DATA, 1, 0, 4, 'b'); // task 4 is complete and running now
  late.socket.write(encodeFrame('le', ClientFrame.DATA, 0, 0, 4, Buffer.from('c')));
  const fatal = await late.frame({ type: ServerFrame.FATAL });
  assert.equal(fatal.code, ErrorCode.BAD_FRAME);
  assert.match(fatal.payload.toString(), /DATA for task 4 after the end of its message/);
  serving = false;
  await busy;
  assert.ok(answered > 0);
  assert.ok(server.stats.protocolErrors >= 23, `protocol errors: ${server.stats.protocolErrors}`);
  assert.equal(server.state, 'ready');
  accepted(await RawPeer.connect(t, port));
});

test('TaskClient.connect to nothing fails with a connect error; to a closed server too', async (t) => {
  const { server, port } = await startTaskServer(t);
  await server.close();
  await assert.rejects(connectClient(t, port), (err: unknown) => {
    assert.ok(err instanceof TaskConnectError);
    assert.equal(err.code, 'ERR_BERTH_TASK_CONNECT_FAILED');
    assert.equal(err.address, `127.0.0.1:${port}`);
    assert.match(err.message, /ECONNREFUSED/);
    return true;
  });
});
