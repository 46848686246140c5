// Every timeout of the task protocol: the server's wait, read and write timeouts (each ends that
// client with a clear reason and is counted), PROCESSING, and the client's call, response,
// connect and keep-alive timeouts. Short timeouts keep the tests quick; bounds stay generous.
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ClientFrame,
  ClientHelloDecoder,
  ErrorCode,
  encodeClientHello,
  encodeFrame,
  encodeServerHello,
  FrameDecoder,
  isRefusal,
  ServerFrame,
  TaskClient,
  TaskGoodbyeError,
  TaskTimeoutError,
} from '../src/index.js';
import { connectClient, RawPeer, startTaskServer, within } from './fixtures/task-helpers.js';
import { connect, waitFor } from './helpers.js';

function collect(t: import('node:test').TestContext, name: string, service: string): unknown[] {
  const seen: unknown[] = [];
  const listener = (m: unknown) => {
    if ((m as { service: string }).service === service) seen.push(m);
  };
  subscribe(name, listener);
  t.after(() => unsubscribe(name, listener));
  return seen;
}

test('wait timeout: a client with no task is told goodbye (230) and the connection closed', async (t) => {
  const timeouts = collect(t, 'berth:task:timeout', 'wait');
  const { server, port } = await startTaskServer(t, { name: 'wait', waitTimeout: 200 }, (s) =>
    s.register(1, (m) => m),
  );
  const peer = await RawPeer.connect(t, port);
  const started = Date.now();
  peer.start(1, 1, 'one task resets the clock');
  await peer.frame({ id: 1 });
  const goodbye = await peer.frame({ type: ServerFrame.GOODBYE }, 5_000);
  const took = Date.now() - started;
  assert.ok(took >= 190 && took < 3_000, `goodbye after ${took} ms`);
  assert.equal(goodbye.code, ErrorCode.WAIT_TIMEOUT);
  assert.equal(goodbye.payload.toString(), 'timeout whilst waiting for task');
  await peer.closed();
  assert.equal(server.stats.timeouts.wait, 1);
  assert.equal(timeouts.length, 1);

  // TaskClient: the goodbye fails new calls clearly, and `closed` fulfils.
  const client = await TaskClient.connect({ port, keepAlive: 0 });
  t.after(() => client.destroy());
  await within(client.closed, 5_000, 'the client to close after the goodbye');
  assert.equal(client.goodbye, true);
  await assert.rejects(client.call(1, 'x'), (err: unknown) => {
    assert.ok(err instanceof TaskGoodbyeError);
    assert.equal(err.errorCode, ErrorCode.WAIT_TIMEOUT);
    return true;
  });
});

test('the client keeps an idle connection alive within the advertised wait timeout', async (t) => {
  const { server, port } = await startTaskServer(t, { waitTimeout: 300 });
  const client = await connectClient(t, port); // keepAlive: 3 min, but half the wait is sooner
  await sleep(1_000);
  assert.equal(client.goodbye, false);
  assert.equal(server.stats.timeouts.wait, 0);
  assert.ok(server.stats.outcomes.ok >= 3, `only ${server.stats.outcomes.ok} keep-alives`);
  assert.equal(server.numClients, 1);
});

test('read timeout: a stalled frame, a stalled message and a stalled hello each end the client (231)', async (t) => {
  const timeouts = collect(t, 'berth:task:timeout', 'read');
  const { server, port } = await startTaskServer(t, { name: 'read', readTimeout: 150 }, (s) =>
    s.register(1, (m) => m),
  );
  // Half a frame header.
  const a = await RawPeer.connect(t, port);
  a.socket.write(Buffer.from([ClientFrame.START, 1, 1, 0, 1]));
  const fa = await a.frame({ type: ServerFrame.FATAL });
  assert.equal(fa.code, ErrorCode.READ_TIMEOUT);
  assert.match(fa.payload.toString(), /timeout whilst reading a frame: nothing for 150 ms/);
  await a.closed();
  // A message begun and never finished, while other tasks come and go.
  const b = await RawPeer.connect(t, port);
  const begun = Date.now();
  b.send(ClientFrame.START, 0, 1, 7, 'begun');
  for (let i = 0; i < 3; i++) {
    await sleep(30);
    b.start(1, 100 + i, 'busy'); // traffic for other tasks does not reset task 7's clock
  }
  const fb = await b.frame({ type: ServerFrame.FATAL });
  const took = Date.now() - begun;
  assert.ok(took >= 140 && took < 3_000, `FATAL after ${took} ms`);
  assert.equal(fb.code, ErrorCode.READ_TIMEOUT);
  assert.match(fb.payload.toString(), /the message of task 7/);
  await b.closed();
  // A hello that never comes.
  const c = await connect(t, port);
  const refusal: Buffer[] = [];
  c.on('data', (d: Buffer) => refusal.push(d));
  await within(once(c, 'close'), 5_000, 'the refusal and close');
  const bytes = Buffer.concat(refusal);
  assert.equal(bytes.subarray(0, 6).toString('hex'), '425254480101');
  assert.equal(bytes[6], ErrorCode.READ_TIMEOUT);
  assert.match(bytes.subarray(8).toString(), /no complete hello within 150 ms/);
  assert.equal(server.stats.timeouts.read, 3);
  assert.equal(timeouts.length, 3);
});

test('read timeout: a slow but steady message is fine (above the minimum rate)', async (t) => {
  const { server, port } = await startTaskServer(t, { readTimeout: 300 }, (s) =>
    s.register(1, (m) => String(m.length)),
  );
  const peer = await RawPeer.connect(t, port);
  const piece = Buffer.alloc(8 * 1_024, 'x');
  peer.send(ClientFrame.START, 0, 1, 1, piece);
  for (let i = 0; i < 6; i++) {
    await sleep(100); // 700 ms in all, never 300 without a byte, 80 KiB/s
    peer.send(ClientFrame.DATA, i === 5 ? 1 : 0, 0, 1, piece);
  }
  assert.equal((await peer.frame({ id: 1 })).payload.toString(), String(7 * 8 * 1_024));
  assert.equal(server.stats.timeouts.read, 0);
});

test('read timeout: what trickles in a byte at a time is cut, though no gap reaches the timeout', async (t) => {
  const { server, port } = await startTaskServer(t, { readTimeout: 300 }, (s) =>
    s.register(1, (m) => m),
  );
  const trickle = async (peer: RawPeer, bytes: Buffer) => {
    for (const byte of bytes) {
      if (peer.ended || peer.socket.destroyed) return;
      peer.socket.write(Buffer.from([byte]));
      await sleep(100);
    }
  };
  // A hello: it must be whole within the read timeout of connecting.
  const h = await RawPeer.connect(t, port, { sendHello: false });
  const t0 = performance.now();
  void trickle(
    h,
    encodeClientHello({
      version: 1,
      byteOrder: 'le',
      flags: 0,
      maxFramePayload: 1_048_576,
      initialWindow: 1_024,
    }),
  );
  await h.until(() => h.hello !== undefined, 'the refusal', 3_000);
  assert.ok(
    isRefusal(h.hello!) && h.hello.code === ErrorCode.READ_TIMEOUT,
    JSON.stringify(h.hello),
  );
  assert.match(h.hello.message, /no complete hello within 300 ms of connecting/);
  assert.ok(performance.now() - t0 < 1_500, 'refused about the read timeout after connecting');
  // A frame header: whole within the read timeout of its first byte.
  const f = await RawPeer.connect(t, port);
  void trickle(f, encodeFrame('le', ClientFrame.START, 1, 1, 5, Buffer.from('hello')));
  const fatal = await f.frame({ type: ServerFrame.FATAL }, 3_000);
  assert.equal(fatal.code, ErrorCode.READ_TIMEOUT);
  assert.match(fatal.payload.toString(), /a frame did not arrive whole within 300 ms/);
  // A message in small frames, each whole and quick, slower than the minimum rate on average.
  const m = await RawPeer.connect(t, port);
  m.send(ClientFrame.START, 0, 1, 9, 'x');
  const drip = setInterval(() => m.send(ClientFrame.DATA, 0, 0, 9, 'x'), 100);
  t.after(() => clearInterval(drip));
  const cut = await m.frame({ type: ServerFrame.FATAL }, 3_000);
  clearInterval(drip);
  assert.equal(cut.code, ErrorCode.READ_TIMEOUT);
  assert.match(cut.payload.toString(), /the message of task 9 did not arrive whole within 300 ms/);
  assert.equal(server.stats.timeouts.read, 3);
});

test('write timeout: a client that stops reading is dropped, its task signal aborted', async (t) => {
  let reason: unknown;
  const { server, port } = await startTaskServer(t, { writeTimeout: 300 }, (s) =>
    s.register(1, async function* (_m, { signal }) {
      const piece = Buffer.alloc(64 * 1_024, 'z');
      try {
        for (let i = 0; i < 16_384 && !signal.aborted; i++) yield piece; // up to 1 GiB
      } finally {
        reason = signal.reason;
      }
    }),
  );
  const peer = await RawPeer.connect(t, port); // a window of 4 GiB
  peer.start(1, 1);
  await peer.frame({ id: 1 });
  peer.socket.pause(); // and never read again
  await waitFor(() => server.stats.timeouts.write === 1, 'the write timeout', 15_000);
  await waitFor(() => reason !== undefined, 'the task to stop');
  assert.ok(reason instanceof TaskTimeoutError);
  assert.equal((reason as TaskTimeoutError).timeout, 'write');
  assert.equal(server.stats.outcomes.abandoned, 1);
  await waitFor(() => server.numClients === 0, 'the client to be dropped');
  assert.ok(server.stats.bytesOut < 512 * 1_024 * 1_024, 'the server did not keep producing');
});

test("PROCESSING is sent while a task runs quietly, and keeps a client's response timeout from firing", async (t) => {
  const { port } = await startTaskServer(t, { processingInterval: 60 }, (s) =>
    s.register(1, async () => {
      await sleep(600);
      return 'done';
    }),
  );
  const peer = await RawPeer.connect(t, port);
  peer.start(1, 5);
  await peer.frame({ id: 5, type: ServerFrame.OK });
  const processing = peer.frames.filter((f) => f.type === ServerFrame.PROCESSING && f.id === 5);
  assert.ok(processing.length >= 2, `${processing.length} PROCESSING frames`);
  const client = await connectClient(t, port, { responseTimeout: 250 });
  assert.equal((await client.call(1)).toString(), 'done');
});

test('response timeout: a task the server is silent about fails the call and is cancelled', async (t) => {
  let cancelled = false;
  const { server, port } = await startTaskServer(t, { processingInterval: 0 }, (s) =>
    s.register(1, async (_m, { signal }) => {
      await sleep(10_000, undefined, { signal }).catch(() => {
        cancelled = true;
      });
    }),
  );
  const client = await connectClient(t, port, { responseTimeout: 200 });
  const started = Date.now();
  await assert.rejects(client.call(1), (err: unknown) => {
    assert.ok(err instanceof TaskTimeoutError);
    assert.equal(err.code, 'ERR_BERTH_TASK_TIMEOUT');
    assert.equal(err.timeout, 'response');
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took >= 190 && took < 3_000, `failed after ${took} ms`);
  await waitFor(() => cancelled, 'the server to cancel the task');
  await waitFor(() => server.stats.outcomes.cancelled === 1, 'the cancel to be counted');
});

test('response timeout: a stream whose reader pauses is waiting on its reader, not on the server', async (t) => {
  const { port } = await startTaskServer(t, { processingInterval: 0 }, (s) =>
    s.register(1, () => Buffer.alloc(1_000_000, 'p')),
  );
  const client = await connectClient(t, port, { responseTimeout: 150, window: 65_536 });
  const stream = client.stream(1);
  await sleep(600); // the window is used up and nothing is read for four response timeouts
  let total = 0;
  for await (const chunk of stream) total += (chunk as Buffer).length;
  assert.equal(total, 1_000_000);
});

test("a call's own timeout cancels it on the server", async (t) => {
  let reason: unknown;
  const { port } = await startTaskServer(t, {}, (s) =>
    s.register(1, async (_m, { signal }) => {
      await sleep(10_000, undefined, { signal }).catch(() => {
        reason = signal.reason;
      });
    }),
  );
  const client = await connectClient(t, port);
  await assert.rejects(client.call(1, undefined, { timeout: 100 }), (err: unknown) => {
    assert.ok(err instanceof TaskTimeoutError);
    assert.equal(err.timeout, 'call');
    assert.match(err.message, /did not finish within 100 ms/);
    return true;
  });
  await waitFor(() => reason !== undefined, 'the run signal to abort');
  assert.equal((reason as Error).name, 'TaskCancelledError');
});

test('connect timeout: a server that never says hello', async (t) => {
  const silent = createServer((socket) => socket.on('error', () => {}));
  t.after(() => silent.close());
  const sockets = new Set<Socket>();
  silent.on('connection', (s) => sockets.add(s));
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const port = (silent.address() as AddressInfo).port;
  await assert.rejects(TaskClient.connect({ port, timeout: 150 }), (err: unknown) => {
    assert.ok(err instanceof TaskTimeoutError);
    assert.equal(err.timeout, 'connect');
    assert.match(
      err.message,
      new RegExp(`no server hello from 127\\.0\\.0\\.1:${port} within 150 ms`),
    );
    return true;
  });
});

test('keep-alive timeout: a server that stops answering is found dead', async (t) => {
  // Says hello, then reads frames and never answers one.
  const mute = createServer((socket) => {
    socket.on('error', () => {});
    const hello = new ClientHelloDecoder();
    let decoder: FrameDecoder | undefined;
    let keepAlives = 0;
    socket.on('data', (chunk: Buffer) => {
      if (!decoder) {
        const h = hello.push(chunk);
        if (!h) return;
        socket.write(
          encodeServerHello(
            {
              version: 1,
              flags: 0,
              maxFramePayload: 1_048_576,
              maxMessageSize: 1_048_576,
              maxTasksInFlight: 10,
              waitTimeout: 0,
            },
            h.byteOrder,
          ),
        );
        decoder = new FrameDecoder({
          byteOrder: h.byteOrder,
          maxPayload: 1_048_576,
          source: 'client',
        });
        chunk = hello.rest;
      }
      decoder.push(chunk, (f) => {
        if (f.type === ClientFrame.START && f.code === 250) keepAlives++;
        // Answer the first keep-alive only.
        if (keepAlives === 1 && f.type === ClientFrame.START) {
          socket.write(encodeFrame(h2o(), ServerFrame.OK, 1, 0, f.id));
        }
      });
      function h2o() {
        return 'le' as const;
      }
    });
  });
  const sockets = new Set<Socket>();
  mute.on('connection', (s) => sockets.add(s));
  t.after(() => {
    for (const s of sockets) s.destroy();
    mute.close();
  });
  await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve));
  const port = (mute.address() as AddressInfo).port;
  const client = await TaskClient.connect({ port, keepAlive: 50, keepAliveTimeout: 200 });
  t.after(() => client.destroy());
  await assert.rejects(within(client.closed, 5_000, 'the keep-alive timeout'), (err: unknown) => {
    assert.ok(err instanceof TaskTimeoutError);
    assert.equal(err.timeout, 'keep-alive');
    return true;
  });
  await assert.rejects(client.call(1), TaskTimeoutError);
});
