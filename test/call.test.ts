// `berth call` end to end: the real CLI in its own process against the demo task server in
// another, asserting on stdout, stderr and the exit code.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { parseAddress } from '../src/cli/call.js';
import { type Child, exitWithin, ROOT, spawnChild, spawnFixture } from './helpers.js';

const MAIN = join(ROOT, 'src', 'cli', 'main.ts');

/** Starts the demo task server in a child process; returns its address. */
async function demo(t: TestContext): Promise<{ server: Child; address: string }> {
  const server = spawnFixture(t, 'task-demo');
  const line = await server.line(/^listening /);
  t.after(async () => {
    server.proc.kill('SIGTERM');
    await exitWithin(server, 10_000);
  });
  return { server, address: line.slice('listening '.length) };
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `berth call ...args`; `input` (when given) is piped to its stdin. */
async function call(t: TestContext, args: string[], input?: string): Promise<Result> {
  const child = spawnChild(t, process.execPath, ['--import', 'tsx', MAIN, 'call', ...args], {
    cwd: ROOT,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (input !== undefined) child.proc.stdin!.end(input);
  const code = await exitWithin(child, 20_000);
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}

test('berth call: echo, sum from stdin, a file, a streamed count, by name or code, both byte orders', async (t) => {
  const { address } = await demo(t);
  assert.deepEqual(await call(t, [address, 'echo', '--data', 'hello']), {
    code: 0,
    stdout: 'hello',
    stderr: '',
  });
  assert.deepEqual(await call(t, [address, '4', '--byte-order', 'be'], '1 2 3.5'), {
    code: 0,
    stdout: '6.5',
    stderr: '',
  });
  const dir = mkdtempSync(join(tmpdir(), 'berth-call-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'message.txt');
  writeFileSync(file, 'from a file');
  assert.equal((await call(t, [address, 'echo', '--file', file])).stdout, 'from a file');
  const counted = await call(t, [address, 'bytes', '--data', '200000']);
  assert.equal(counted.code, 0);
  assert.equal(counted.stdout.length, 200_000);
  assert.equal(counted.stdout.slice(0, 30), 'abcdefghijklmnopqrstuvwxyzabcd');
  assert.equal((await call(t, [address, 'echo'])).stdout, '', 'no message: empty');
});

test('berth call: an Error response prints its code and message to stderr and exits 1', async (t) => {
  const { address } = await demo(t);
  assert.deepEqual(await call(t, [address, 'fail']), {
    code: 1,
    stdout: '',
    stderr: 'berth call: error 42: this task always fails\n',
  });
  const unknown = await call(t, [address, '77']);
  assert.equal(unknown.code, 1);
  assert.equal(unknown.stderr, 'berth call: error 201 (unknown task): no task has code 77\n');
  const named = await call(t, [address, 'nope']);
  assert.equal(named.code, 1);
  assert.match(
    named.stderr,
    /no task named "nope" \(it has: echo, sleep, bytes, sum, fail, internal\)/,
  );
});

test('berth call: --list, --timeout (exit 124), usage errors (exit 2), nothing listening (exit 3)', async (t) => {
  const { address } = await demo(t);
  assert.deepEqual(await call(t, [address, '--list']), {
    code: 0,
    stdout: '1 echo\n2 sleep\n3 bytes\n4 sum\n5 fail\n6 internal\n',
    stderr: '',
  });
  const slow = await call(t, [address, 'sleep', '--data', '10000', '--timeout', '200']);
  assert.equal(slow.code, 124);
  assert.equal(
    slow.stderr,
    'berth call: timed out after 200 ms (--timeout); the task was cancelled\n',
  );
  for (const args of [
    [],
    [address],
    [address, 'echo', '--data', 'a', '--file', '/x'],
    [address, 'echo', '--frobnicate'],
    ['nowhere:port', 'echo'],
    [address, 'echo', '--byte-order', 'middle'],
    [address, '300'],
  ]) {
    const usage = await call(t, args);
    assert.equal(usage.code, 2, `${args.join(' ')}: ${usage.stderr}`);
    assert.match(usage.stderr, /^berth call: .+\nRun 'berth call --help' for usage\.\n$/);
  }
  const help = await call(t, ['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /exit codes: 0 OK; 1 the task answered Error/);
  // A port that was just freed: nothing listens there.
  const free = createServer();
  await new Promise<void>((resolve) => free.listen(0, '127.0.0.1', resolve));
  const port = (free.address() as AddressInfo).port;
  await new Promise((resolve) => free.close(resolve));
  const closed = await call(t, [`127.0.0.1:${port}`, 'echo']);
  assert.equal(closed.code, 3);
  assert.match(closed.stderr, /^berth call: cannot connect to 127\.0\.0\.1:\d+: ECONNREFUSED\n$/);
});

test('berth call with several addresses: the call goes to one that answers', async (t) => {
  const { address } = await demo(t);
  const free = createServer();
  await new Promise<void>((resolve) => free.listen(0, '127.0.0.1', resolve));
  const dead = `127.0.0.1:${(free.address() as AddressInfo).port}`;
  await new Promise((resolve) => free.close(resolve));
  for (const list of [`${dead},${address}`, `${address},${dead}`]) {
    assert.deepEqual(await call(t, [list, 'sum', '--data', '1 2 3.5']), {
      code: 0,
      stdout: '6.5',
      stderr: '',
    });
  }
  const none = await call(t, [`${dead},${dead.replace(/\d+$/, '1')}`, 'sum']);
  assert.equal(none.code, 3);
  assert.match(
    none.stderr,
    /^berth call: cannot connect to 127\.0\.0\.1:\d+, 127\.0\.0\.1:1: every connection failed/,
  );
});

test('addresses: host:port, [v6]:port, a port alone, unix paths', () => {
  assert.deepEqual(parseAddress('127.0.0.1:8082'), { host: '127.0.0.1', port: 8082 });
  assert.deepEqual(parseAddress('localhost:1'), { host: 'localhost', port: 1 });
  assert.deepEqual(parseAddress('[::1]:8082'), { host: '::1', port: 8082 });
  assert.deepEqual(parseAddress('8082'), { host: '127.0.0.1', port: 8082 });
  assert.deepEqual(parseAddress('unix:/run/x.sock'), { path: '/run/x.sock' });
  assert.deepEqual(parseAddress('/run/x.sock'), { path: '/run/x.sock' });
  for (const bad of ['host:', 'host:0', 'host:65536', 'host:x', '']) {
    assert.throws(() => parseAddress(bad), /bad address/);
  }
});
