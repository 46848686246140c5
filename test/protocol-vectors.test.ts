// The conformance vectors (docs/protocol-vectors.json) replayed against a real TaskServer with the
// demo tasks, one connection per vector, byte for byte; and the file is what
// scripts/protocol-vectors.ts writes, so the vectors and their generator cannot drift apart.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import {
  type Step,
  VECTORS_FILE,
  type Vector,
  vectorsDocument,
} from '../scripts/protocol-vectors.js';
import { createDemoTaskServer, TaskClient } from '../src/index.js';

const doc = JSON.parse(readFileSync(VECTORS_FILE, 'utf8')) as { vectors: Vector[] };

test('docs/protocol-vectors.json is what scripts/protocol-vectors.ts writes', () => {
  assert.equal(
    readFileSync(VECTORS_FILE, 'utf8'),
    vectorsDocument(),
    'run: node --import tsx scripts/protocol-vectors.ts',
  );
});

/** The bytes a server sends on one connection, read as steps ask for them, each within a bound. */
class Reader {
  #buf = Buffer.alloc(0);
  #ended = false;
  #wake: (() => void) | undefined;

  constructor(socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, chunk]);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  async take(n: number, what: string): Promise<Buffer> {
    const deadline = Date.now() + 5_000;
    while (this.#buf.length < n) {
      if (this.#ended)
        throw new Error(`the server closed before ${what} (had ${this.#buf.toString('hex')})`);
      if (Date.now() > deadline)
        throw new Error(`no ${what} within 5 s (had ${this.#buf.toString('hex')})`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async end(): Promise<void> {
    const deadline = Date.now() + 5_000;
    while (!this.#ended) {
      if (this.#buf.length > 0)
        throw new Error(`expected the close, got ${this.#buf.toString('hex')}`);
      if (Date.now() > deadline) throw new Error('the server did not close within 5 s');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    assert.equal(this.#buf.length, 0, `bytes before the close: ${this.#buf.toString('hex')}`);
  }
}

async function replay(t: TestContext, vector: Vector): Promise<void> {
  const server = createDemoTaskServer({
    port: 0,
    host: '127.0.0.1',
    registry: null,
    ...vector.server,
  });
  t.after(() => server.destroy());
  await server.start();
  const port = (server.address() as { port: number }).port;
  const le = vector.byteOrder === 'le';
  let socket: Socket | undefined;
  let reader: Reader | undefined;
  const open = async () => {
    socket = connect({ port, host: '127.0.0.1' });
    t.after(() => socket?.destroy());
    reader = new Reader(socket);
    await new Promise((resolve) => socket!.once('connect', resolve));
  };
  const steps: Step[] = vector.steps;
  if (!steps.some((s) => 'occupy' in s)) await open();
  for (const [i, step] of steps.entries()) {
    const at = `step ${i + 1} (${JSON.stringify(step).slice(0, 80)})`;
    if ('occupy' in step) {
      const other = await TaskClient.connect({ port });
      t.after(() => other.destroy());
      await open();
    } else if ('send' in step) {
      socket!.write(Buffer.from(step.send, 'hex'));
    } else if ('wait' in step) {
      await new Promise((resolve) => setTimeout(resolve, step.wait));
    } else if ('server' in step) {
      if (step.server === 'close') void server.close().catch(() => {});
      else server.disconnect(1_000);
    } else if ('expect' in step) {
      const want = Buffer.from(step.expect, 'hex');
      assert.equal((await reader!.take(want.length, at)).toString('hex'), step.expect, at);
    } else if ('frame' in step) {
      const head = await reader!.take(12, at);
      const length = le ? head.readUInt32LE(8) : head.readUInt32BE(8);
      const got = {
        type: head[0],
        flags: head[1],
        code: head[2],
        id: le ? head.readUInt32LE(4) : head.readUInt32BE(4),
      };
      const text = (await reader!.take(length, at)).toString('utf8');
      assert.deepEqual({ ...got, text }, { ...step.frame, text: step.text }, at);
    } else if ('refusal' in step) {
      const head = await reader!.take(8, at);
      assert.equal(head.subarray(0, 4).toString(), 'BRTH', at);
      const text = (await reader!.take(head[7]!, at)).toString('utf8');
      assert.deepEqual(
        { version: head[4], status: head[5], code: head[6], text },
        { ...step.refusal, status: 1, text: step.text },
        at,
      );
    } else if ('end' in step) {
      await reader!.end();
    }
  }
}

for (const vector of doc.vectors) {
  test(`vector ${vector.name}: ${vector.about}`, (t) => replay(t, vector));
}
