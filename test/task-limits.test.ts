// Each limit of the task protocol, and how going over it is reported: a coded Error for the task
// where the stream stays in sync, FATAL then a close where it cannot, a refusal for clients.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientFrame, ErrorCode, ServerFrame, TaskError, TaskRefusedError } from '../src/index.js';
import { connectClient, gate, RawPeer, startTaskServer } from './fixtures/task-helpers.js';
import { waitFor } from './helpers.js';

test('a frame over maxFramePayload: FATAL 224 from its header, then a close; other clients go on', async (t) => {
  const { server, port } = await startTaskServer(t, { maxFramePayload: 2_048 }, (s) =>
    s.register(1, (m) => m),
  );
  const bystander = await connectClient(t, port);
  const peer = await RawPeer.connect(t, port);
  peer.send(ClientFrame.START, 1, 1, 1, Buffer.alloc(2_048, 'a')); // exactly the limit: fine
  assert.equal((await peer.frame({ id: 1 })).payload.length, 2_048);
  // Only the header of an oversized frame: the server must not wait for its payload.
  const header = Buffer.alloc(12);
  header[0] = ClientFrame.START;
  header[1] = 1;
  header[2] = 1;
  header.writeUInt32LE(2, 4);
  header.writeUInt32LE(2_049, 8);
  peer.socket.write(header);
  const fatal = await peer.frame({ type: ServerFrame.FATAL });
  assert.equal(fatal.code, ErrorCode.FRAME_TOO_LARGE);
  assert.match(
    fatal.payload.toString(),
    /START frame payload of 2049 bytes is over the maximum of 2048/,
  );
  await peer.closed();
  assert.equal(server.stats.protocolErrors, 1);
  assert.equal((await bystander.call(1, 'still here')).toString(), 'still here');
});

test('a message over maxMessageSize: Error 203 for that task, its later DATA ignored, the connection kept', async (t) => {
  const { server, port } = await startTaskServer(t, { maxMessageSize: 10 }, (s) =>
    s.register(1, (m) => m),
  );
  const peer = await RawPeer.connect(t, port);
  peer.start(1, 1, '0123456789'); // at the limit
  assert.equal((await peer.frame({ id: 1 })).payload.toString(), '0123456789');
  peer.start(1, 2, '0123456789x'); // over it in one frame
  const e2 = await peer.frame({ id: 2 });
  assert.equal(e2.type, ServerFrame.ERROR);
  assert.equal(e2.code, ErrorCode.MESSAGE_TOO_LARGE);
  assert.match(e2.payload.toString(), /over the limit of 10/);
  peer.send(ClientFrame.START, 0, 1, 3, '012345'); // over it across frames
  peer.send(ClientFrame.DATA, 0, 0, 3, '6789');
  peer.send(ClientFrame.DATA, 0, 0, 3, 'xy');
  peer.send(ClientFrame.DATA, 1, 0, 3, 'more after the error'); // ignored: task 3 is over
  const e3 = await peer.frame({ id: 3 });
  assert.equal(e3.code, ErrorCode.MESSAGE_TOO_LARGE);
  peer.start(1, 3, 'reused'); // the id is free again once the client has the ERROR
  assert.equal((await peer.frame({ id: 3, type: ServerFrame.OK })).payload.toString(), 'reused');
  assert.equal(server.stats.outcomes.rejected, 2);
  assert.equal(server.stats.protocolErrors, 0);

  // TaskClient knows the limit from the hello and fails the call without sending it.
  const client = await connectClient(t, port);
  assert.equal(client.server.maxMessageSize, 10);
  const before = server.stats.bytesIn;
  await assert.rejects(client.call(1, 'far too long for ten'), (err: unknown) => {
    assert.ok(err instanceof TaskError);
    assert.equal(err.errorCode, ErrorCode.MESSAGE_TOO_LARGE);
    return true;
  });
  assert.equal(server.stats.bytesIn, before, 'nothing was sent');
});

test('over maxTasksInFlight: Error 202 for that task, the connection kept; TaskClient queues instead', async (t) => {
  const release = gate();
  let running = 0;
  let peak = 0;
  const { server, port } = await startTaskServer(t, { maxTasksInFlight: 3 }, (s) =>
    s.register(1, async (m) => {
      running++;
      peak = Math.max(peak, running);
      await release.promise;
      running--;
      return m;
    }),
  );
  const peer = await RawPeer.connect(t, port);
  for (const id of [1, 2, 3, 4]) peer.start(1, id, `t${id}`);
  const rejected = await peer.frame({ id: 4 });
  assert.equal(rejected.type, ServerFrame.ERROR);
  assert.equal(rejected.code, ErrorCode.TOO_MANY_TASKS);
  assert.match(rejected.payload.toString(), /the limit is 3/);
  release.open();
  for (const id of [1, 2, 3])
    assert.equal((await peer.frame({ id, type: ServerFrame.OK })).payload.toString(), `t${id}`);
  peer.start(1, 4, 'again');
  assert.equal((await peer.frame({ id: 4, type: ServerFrame.OK })).payload.toString(), 'again');

  // TaskClient keeps at most the advertised number in flight and queues the rest.
  const client = await connectClient(t, port);
  const slow = gate();
  server.register(2, async (m) => {
    running++;
    peak = Math.max(peak, running);
    await slow.promise;
    running--;
    return m;
  });
  peak = 0;
  const calls = Array.from({ length: 10 }, (_, i) => client.call(2, `q${i}`));
  await waitFor(() => running === 3, 'three running');
  assert.equal(client.stats.callsQueued, 7);
  slow.open();
  assert.deepEqual(
    (await Promise.all(calls)).map(String),
    Array.from({ length: 10 }, (_, i) => `q${i}`),
  );
  assert.equal(peak, 3);
  assert.equal(server.stats.outcomes.rejected, 1, 'only the raw peer went over');
});

test('over maxClients: the handshake is refused with 222; a place frees when a client leaves', async (t) => {
  const { server, port } = await startTaskServer(t, { maxClients: 2 });
  const a = await connectClient(t, port);
  await connectClient(t, port);
  await assert.rejects(connectClient(t, port), (err: unknown) => {
    assert.ok(err instanceof TaskRefusedError);
    assert.equal(err.code, 'ERR_BERTH_TASK_REFUSED');
    assert.equal(err.errorCode, ErrorCode.TOO_MANY_CLIENTS);
    assert.match(
      err.message,
      /too many clients: this server takes 2 \(code 222, too many clients\)/,
    );
    return true;
  });
  assert.equal(server.stats.refused, 1);
  await a.close();
  await waitFor(() => server.numClients === 1, 'the first client to leave');
  await connectClient(t, port);
  assert.equal(server.numClients, 2);
});

test('maxBufferedBytes: reading pauses while parses catch up, and nothing is refused', async (t) => {
  let parsing = 0;
  const { server, port } = await startTaskServer(
    t,
    { maxMessageSize: 4_096, maxBufferedBytes: 8_192 },
    (s) =>
      s.register(1, {
        parse: async (m) => {
          parsing++;
          await new Promise((resolve) => setTimeout(resolve, 2));
          parsing--;
          return { value: m.length };
        },
        run: (n) => String(n),
      }),
  );
  const client = await connectClient(t, port);
  // 40 messages of 4 KiB: 160 KiB, twenty times the buffer; parse takes a while for each.
  const replies = await Promise.all(
    Array.from({ length: 40 }, () => client.call(1, Buffer.alloc(4_096, 'm'))),
  );
  assert.deepEqual(replies.map(String), Array(40).fill('4096'));
  assert.equal(server.stats.outcomes.rejected, 0);
  assert.equal(parsing, 0);
});

test('maxBufferedBytes: incomplete messages over the buffer get Error 203 (pausing could deadlock)', async (t) => {
  const { server, port } = await startTaskServer(
    t,
    { maxMessageSize: 4_096, maxBufferedBytes: 8_192 },
    (s) => s.register(1, (m) => String(m.length)),
  );
  const peer = await RawPeer.connect(t, port);
  peer.send(ClientFrame.START, 0, 1, 1, Buffer.alloc(4_000)); // no END: held
  peer.send(ClientFrame.START, 0, 1, 2, Buffer.alloc(4_000)); // held: 8,000 bytes
  peer.send(ClientFrame.START, 0, 1, 3, Buffer.alloc(1_000)); // over 8,192
  const e = await peer.frame({ id: 3 });
  assert.equal(e.code, ErrorCode.MESSAGE_TOO_LARGE);
  assert.match(e.payload.toString(), /the limit is 8192/);
  peer.send(ClientFrame.DATA, 1, 0, 1, Buffer.alloc(96)); // task 1 completes
  assert.equal((await peer.frame({ id: 1, type: ServerFrame.OK })).payload.toString(), '4096');
  peer.send(ClientFrame.DATA, 1, 0, 2);
  assert.equal((await peer.frame({ id: 2, type: ServerFrame.OK })).payload.toString(), '4000');
  assert.equal(server.stats.outcomes.rejected, 1);
});

test('the response window: the server never sends past it, and waits for WINDOW', async (t) => {
  const { port } = await startTaskServer(t, {}, (s) => {
    s.register(1, () => Buffer.alloc(100_000, 'w'));
    s.register(2, async function* (_m, { signal }) {
      yield Buffer.alloc(1_000);
      await new Promise((resolve) => signal.addEventListener('abort', resolve));
    });
  });
  const peer = await RawPeer.connect(t, port, { window: 1_000 });
  peer.start(1, 1);
  await peer.frame({ id: 1 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  const sent = () => peer.frames.reduce((n, f) => n + f.payload.length, 0);
  assert.equal(sent(), 1_000, 'exactly the window, then nothing');
  const increment = Buffer.alloc(4);
  increment.writeUInt32LE(99_000);
  peer.send(ClientFrame.WINDOW, 0, 0, 1, increment);
  await peer.frame({ id: 1, flags: 1 });
  assert.equal(sent(), 100_000);
  // A window pushed over 2^32-1 is a protocol error.
  peer.start(2, 2);
  await peer.frame({ id: 2 }); // the window is used up
  const all = Buffer.alloc(4);
  all.writeUInt32LE(0xffff_ffff);
  peer.send(ClientFrame.WINDOW, 0, 0, 2, all); // exactly 2^32-1: allowed
  const one = Buffer.alloc(4);
  one.writeUInt32LE(1);
  peer.send(ClientFrame.WINDOW, 0, 0, 2, one);
  const fatal = await peer.frame({ type: ServerFrame.FATAL });
  assert.equal(fatal.code, ErrorCode.BAD_FRAME);
  assert.match(fatal.payload.toString(), /window over 2\^32-1/);
});
