// What a task server holds for one client is bounded (maxOutboundBytes): at the cap the client's
// new tasks wait and streamed responses pause; a response that waits for a window too long ends
// with Error 232; a client held over the cap too long gets FATAL 232. Reading never stops while
// the cap holds, since the WINDOW frames that drain it arrive on the same socket.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientFrame, ErrorCode, ServerFrame, type TaskServer } from '../src/index.js';
import { windowPayload } from '../src/protocol/codec.js';
import { connectClient, RawPeer, startTaskServer } from './fixtures/task-helpers.js';
import { sleep, waitFor } from './helpers.js';

const KiB = 1_024;

function grant(peer: RawPeer, id: number, n: number): void {
  peer.send(ClientFrame.WINDOW, 0, 0, id, windowPayload(n, 'le'));
}

/** A server whose task 1 echoes, 2 counts its runs and answers nothing, 3 streams `n` KiB. */
async function serverWithCounters(
  t: Parameters<typeof startTaskServer>[0],
  options: Parameters<typeof startTaskServer>[1],
) {
  const runs = { count: 0, pulled: 0 };
  const started = await startTaskServer(t, options, (s: TaskServer) => {
    s.register(1, (m) => m);
    s.register(2, () => {
      runs.count++;
    });
    s.register(3, async function* (m: Buffer) {
      const chunk = Buffer.alloc(16 * KiB, 'z');
      for (let i = 0; i < Number(m.toString()); i += 16) {
        runs.pulled += chunk.length;
        yield chunk;
      }
    });
  });
  return { ...started, runs };
}

test('at maxOutboundBytes a client’s new tasks wait, and run once it takes what is held', async (t) => {
  const { server, port, runs } = await serverWithCounters(t, {
    maxOutboundBytes: 64 * KiB,
    writeTimeout: 30_000,
  });
  const peer = await RawPeer.connect(t, port, { window: 1 });
  peer.start(1, 1, Buffer.alloc(100 * KiB, 'a')); // its response waits for a window
  await waitFor(() => server.stats.outboundFull === 1, 'the client at the cap');
  assert.ok(server.stats.outboundBytes >= 64 * KiB);
  peer.start(2, 2);
  await sleep(100);
  assert.equal(runs.count, 0, 'task 2 waits while the server holds the cap for this client');
  assert.equal(server.stats.tasksInFlight, 2);

  // Reading went on, so this WINDOW gets through: task 1 finishes, and task 2 runs.
  grant(peer, 1, 100 * KiB);
  const done = await peer.frame({ id: 2 });
  assert.equal(done.type, ServerFrame.OK);
  assert.equal(runs.count, 1);
  const body = peer.frames.filter((f) => f.id === 1 && f.type === ServerFrame.OK);
  assert.equal(
    body.reduce((n, f) => n + f.payload.length, 0),
    100 * KiB,
  );
  await waitFor(() => server.stats.outboundBytes === 0, 'nothing held');
  assert.equal(server.stats.bufferedBytes, 0);
});

test('while the cap holds, waiting messages fill maxBufferedBytes, then Error 203; the connection stays', async (t) => {
  const { server, port, runs } = await serverWithCounters(t, {
    maxOutboundBytes: 64 * KiB,
    maxMessageSize: 32 * KiB,
    maxBufferedBytes: 32 * KiB,
    writeTimeout: 30_000,
  });
  const peer = await RawPeer.connect(t, port, { window: 1 });
  peer.start(1, 1, Buffer.alloc(32 * KiB, 'a'));
  peer.start(1, 2, Buffer.alloc(32 * KiB, 'b'));
  peer.start(1, 3, Buffer.alloc(32 * KiB, 'c')); // held: over the cap now
  peer.start(2, 4, Buffer.alloc(20 * KiB)); // waits, held against maxBufferedBytes
  peer.start(2, 5, Buffer.alloc(20 * KiB)); // would pass it: refused
  const refused = await peer.frame({ id: 5 });
  assert.equal(refused.type, ServerFrame.ERROR);
  assert.equal(refused.code, ErrorCode.MESSAGE_TOO_LARGE);
  assert.match(refused.payload.toString(), /the limit is 32768/);
  assert.equal(server.stats.bufferedBytes, 20 * KiB);
  assert.equal(runs.count, 0);
  for (const id of [1, 2, 3]) grant(peer, id, 32 * KiB);
  await peer.frame({ id: 4, type: ServerFrame.OK });
  assert.equal(runs.count, 1);
  assert.equal(server.stats.outcomes.rejected, 1);
  assert.equal(server.stats.protocolErrors, 0);
  await waitFor(
    () => server.stats.outboundBytes === 0 && server.stats.bufferedBytes === 0,
    'nothing held',
  );
});

test('window stall: a response with no window for writeTimeout ends with Error 232, its bytes let go; the client goes on', async (t) => {
  const { server, port } = await serverWithCounters(t, { writeTimeout: 300 });
  const peer = await RawPeer.connect(t, port, { window: 1 });
  peer.start(1, 1, Buffer.alloc(50 * KiB, 'a'));
  await waitFor(() => server.stats.outboundBytes > 0, 'the response held');
  const t0 = performance.now();
  const stalled = await peer.frame({ id: 1, type: ServerFrame.ERROR });
  const waited = performance.now() - t0;
  assert.equal(stalled.code, ErrorCode.WRITE_TIMEOUT);
  assert.match(stalled.payload.toString(), /granted no window for task 1 for 300 ms/);
  assert.ok(waited < 2_000, `ended after ${waited} ms`);
  assert.equal(server.stats.timeouts.window, 1);
  assert.equal(server.stats.outcomes.timeout, 1);
  assert.equal(server.stats.outboundBytes, 0);
  // A response that fits the window it has is not stalled; the connection is still open.
  peer.start(2, 2);
  assert.equal((await peer.frame({ id: 2 })).type, ServerFrame.OK);
  peer.start(1, 3, 'x');
  assert.equal((await peer.frame({ id: 3 })).payload.toString(), 'x');
  assert.equal(peer.ended, false);
});

test('a client that keeps the server over the cap for writeTimeout gets FATAL 232, and what was held is let go', async (t) => {
  const { server, port } = await serverWithCounters(t, {
    maxOutboundBytes: 64 * KiB,
    writeTimeout: 400,
  });
  const peer = await RawPeer.connect(t, port, { window: 1 });
  peer.start(1, 1, Buffer.alloc(200 * KiB, 'a'));
  await waitFor(() => server.stats.outboundFull === 1, 'the client at the cap');
  // A byte of window every 50 ms: never stalled long enough for Error 232, never below the cap.
  const drip = setInterval(() => grant(peer, 1, 1), 50);
  t.after(() => clearInterval(drip));
  const fatal = await peer.frame({ type: ServerFrame.FATAL }, 5_000);
  clearInterval(drip);
  assert.equal(fatal.code, ErrorCode.WRITE_TIMEOUT);
  assert.match(fatal.payload.toString(), /held over 65536 bytes for this client for 400 ms/);
  await peer.closed();
  assert.equal(server.stats.timeouts.write, 1);
  assert.equal(server.stats.timeouts.window, 0);
  await waitFor(() => server.stats.outboundBytes === 0, 'nothing held');
});

test('a streamed response pauses at the cap: its producer is not pulled while the client takes nothing', async (t) => {
  const { server, port, runs } = await serverWithCounters(t, {
    maxOutboundBytes: 64 * KiB,
    writeTimeout: 30_000,
  });
  const peer = await RawPeer.connect(t, port, { window: 1 });
  peer.start(3, 1, String(4_096)); // 4 MiB in 16 KiB chunks
  await waitFor(() => server.stats.outboundFull === 1, 'the stream at the cap');
  await sleep(200);
  assert.ok(runs.pulled <= 64 * KiB + 16 * KiB, `pulled ${runs.pulled} bytes`);
  assert.ok(server.stats.outboundBytes <= 64 * KiB + 16 * KiB);
  grant(peer, 1, 4 * 1_024 * KiB);
  const end = await peer.frame({ id: 1, flags: 1 }, 10_000);
  assert.equal(end.type, ServerFrame.OK);
  const body = peer.frames.filter((f) => f.id === 1 && f.type === ServerFrame.OK);
  assert.equal(
    body.reduce((n, f) => n + f.payload.length, 0),
    4 * 1_024 * KiB,
  );
  assert.equal(runs.pulled, 4 * 1_024 * KiB);
});

test('a stream faster than a slow reader is paused, not buffered, and arrives whole through TaskClient', async (t) => {
  const { server, port, runs } = await serverWithCounters(t, {});
  const client = await connectClient(t, port);
  const total = 32 * 1_024 * KiB;
  const stream = client.stream(3, String(total / KiB));
  let received = 0;
  let maxAhead = 0;
  let maxHeld = 0;
  let intact = true;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    received += chunk.length;
    if (chunk.some((b) => b !== 0x7a)) intact = false;
    maxAhead = Math.max(maxAhead, runs.pulled - received);
    maxHeld = Math.max(maxHeld, server.stats.outboundBytes);
    if (received % (1_024 * KiB) < chunk.length) await sleep(5); // a slow reader
  }
  assert.equal(received, total);
  assert.ok(intact, 'every byte as sent');
  // Ahead of the reader: the client's window (256 KiB), the server's stream queue (256 KiB), the
  // sockets' buffers and what the reader's stream holds; nothing near the 32 MiB produced.
  assert.ok(maxAhead < 4 * 1_024 * KiB, `the producer ran ${maxAhead} bytes ahead`);
  assert.ok(maxHeld < 1_024 * KiB, `the server held ${maxHeld} bytes`);
});
