// docs/protocol.md is the specification; its hex dumps are replayed here, byte for byte, against a
// real demo task server over a raw socket. If the page and the code disagree, this fails.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { createDemoTaskServer, type TaskServer } from '../src/index.js';
import { connect, ROOT, waitFor } from './helpers.js';

interface Line {
  from: 'C' | 'S';
  bytes: Buffer;
  text: string;
}

interface Dump {
  title: string;
  lines: Line[];
  /** The dump ends with the server closing the connection. */
  closes: boolean;
}

/** Every fenced block under "## Hex dumps", with its `### ` title. */
function dumps(): Dump[] {
  const page = readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8');
  const section = page.slice(page.indexOf('## Hex dumps'), page.indexOf('## Demo tasks'));
  const found: Dump[] = [];
  for (const part of section.split(/^### /m).slice(1)) {
    const title = part.slice(0, part.indexOf('\n')).trim();
    const block = /```\n([\s\S]*?)```/.exec(part)?.[1];
    if (!block) continue;
    const lines: Line[] = [];
    for (const raw of block.split('\n')) {
      const m = /^([CS]): (.*)$/.exec(raw);
      if (!m) continue;
      // Hex bytes come first, separated by single spaces; two spaces start the description.
      const hex = m[2]!.split(/ {2,}/)[0]!;
      const bytes: number[] = [];
      for (const token of hex.split(' ')) {
        if (token === '|') continue;
        if (token === '…') break;
        assert.match(token, /^[0-9a-f]{2}$/, `a bad byte "${token}" in "${raw}"`);
        bytes.push(Number.parseInt(token, 16));
      }
      lines.push({ from: m[1] as 'C' | 'S', bytes: Buffer.from(bytes), text: raw });
    }
    found.push({ title, lines, closes: block.includes('(the server closes the connection)') });
  }
  return found;
}

/** Reads exactly `n` bytes (or fewer if the socket ends), within `timeout` ms. */
function readExactly(socket: Socket, n: number, timeout = 5_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const finish = (error?: Error) => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      if (error) reject(error);
      else resolve(Buffer.concat(chunks));
    };
    const onReadable = () => {
      for (;;) {
        const want = n - have;
        if (want === 0) return finish();
        const chunk: Buffer | null = socket.read(
          Math.min(want, socket.readableLength) || undefined,
        );
        if (chunk === null) return;
        const take = chunk.subarray(0, want);
        if (chunk.length > want) socket.unshift(chunk.subarray(want));
        chunks.push(take);
        have += take.length;
      }
    };
    const onEnd = () => finish();
    const timer = setTimeout(
      () => finish(new Error(`wanted ${n} bytes, got ${have} within ${timeout} ms`)),
      timeout,
    );
    socket.on('readable', onReadable);
    socket.on('end', onEnd);
    onReadable();
  });
}

const HELLO_LE = Buffer.from('4252544801' + '4c' + '0000' + '00001000' + '00000400', 'hex');

async function demoServer(t: TestContext): Promise<{ server: TaskServer; port: number }> {
  const server = createDemoTaskServer({ port: 0, host: '127.0.0.1', registry: null });
  t.after(() => server.destroy());
  await server.start();
  return { server, port: (server.address() as AddressInfo).port };
}

const all = dumps();

test('the page has the dumps it promises', () => {
  assert.deepEqual(
    all.map((d) => d.title),
    [
      'A complete exchange',
      'A message in pieces, and a response in pieces',
      'Big-endian',
      'Goodbye from the server',
      'A refusal',
      'A protocol error',
    ],
  );
});

for (const dump of all) {
  test(`hex dump "${dump.title}" is what a real server does`, async (t) => {
    const { server, port } = await demoServer(t);
    const socket = await connect(t, port);
    socket.pause();
    const lines = [...dump.lines];
    // Dumps that start after the handshake get the first exchange's hellos first.
    if (!lines[0]!.bytes.subarray(0, 4).equals(Buffer.from('BRTH'))) {
      socket.write(HELLO_LE);
      const hello = await readExactly(socket, 24);
      assert.equal(hello.subarray(0, 6).toString('hex'), '425254480100');
    }
    let closing: Promise<void> | undefined;
    for (const [i, line] of lines.entries()) {
      if (line.from === 'C') {
        socket.write(line.bytes);
        if (dump.title === 'Goodbye from the server' && i === 0) {
          // The sleep task is running: now the server begins to close.
          await waitFor(() => server.stats.tasksInFlight === 1, 'the sleep task to run');
          closing = server.close({ timeout: 10_000 });
        }
        continue;
      }
      const got = await readExactly(socket, line.bytes.length);
      assert.equal(got.toString('hex'), line.bytes.toString('hex'), `line ${i + 1}: ${line.text}`);
    }
    if (dump.closes) {
      const rest = await readExactly(socket, 1, 5_000);
      assert.equal(rest.length, 0, 'the server sent more than the dump shows');
      await once(socket, 'close');
    }
    await closing;
  });
}
