import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import {
  type AddressInfo,
  createServer,
  connect as netConnect,
  type Server,
  type Socket,
} from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { classifyRow, findInetRow, findUnixRow, inspectSocket, socketInode } from '../src/index.js';
import { waitFor } from './helpers.js';

// Rows as this machine's kernel prints them.
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1060 1 00000000bd5f3a6b 100 0 0 10 0
   1: 0100007F:819A 0100007F:8BE3 01 00000000:00000000 03:00000A09 00000000     0        0 2071 3 0000000046718811
   2: 0100007F:819B 0100007F:8BE4 08 00000000:00000000 00:00000000 00000000     0        0 2072 1 0000000046718812
   3: 0100007F:819C 0100007F:8BE5 06 00000000:00000000 03:00000A09 00000000     0        0 0 3 0000000046718813
`;
const UNIX = `Num       RefCount Protocol Flags    Type St Inode Path
00000000f34a5f14: 00000003 00000000 00000000 0001 03  1057
0000000041530689: 00000002 00000000 00010000 0001 01 289388 @berthtest
0000000041530690: 00000002 00000000 00010000 0001 01 289390 /run/berth.sock
000000003375964c: 00000002 00000000 00000000 0002 01 289391 /run/systemd/notify
000000003375964d: 00000002 00000000 00000000 0001 01 289392
`;

test('socket:[inode] links give the inode; other links do not', () => {
  assert.equal(socketInode('socket:[289388]'), 289388);
  assert.equal(socketInode('pipe:[1234]'), undefined);
  assert.equal(socketInode('/dev/null'), undefined);
  assert.equal(socketInode('anon_inode:[eventpoll]'), undefined);
});

test('tcp rows: 0A is listening, established and closing states are connected', () => {
  assert.equal(classifyRow('tcp', findInetRow(TCP, 1060)!), 'listening');
  assert.equal(classifyRow('tcp', findInetRow(TCP, 2071)!), 'connected');
  assert.equal(classifyRow('tcp6', findInetRow(TCP, 2072)!), 'connected', 'CLOSE_WAIT');
  assert.equal(classifyRow('tcp', { inode: 1, state: 0x07 }), 'other', 'CLOSE');
  assert.equal(classifyRow('udp', { inode: 1, state: 0x07 }), 'other');
  // The header and TIME_WAIT rows (inode 0) never match a real inode.
  assert.equal(findInetRow(TCP, 0)?.state, 6);
  assert.equal(findInetRow(TCP, 999), undefined);
  assert.equal(findInetRow('', 1060), undefined);
});

test('unix rows: the accept flag is listening, state 03 is connected, datagrams are other', () => {
  assert.equal(classifyRow('unix', findUnixRow(UNIX, 289388)!), 'listening');
  assert.equal(classifyRow('unix', findUnixRow(UNIX, 289390)!), 'listening');
  assert.equal(classifyRow('unix', findUnixRow(UNIX, 1057)!), 'connected');
  assert.equal(classifyRow('unix', findUnixRow(UNIX, 289391)!), 'other');
  assert.equal(classifyRow('unix', findUnixRow(UNIX, 289392)!), 'other', 'unconnected stream');
  assert.equal(findUnixRow(UNIX, 4), undefined);
});

function fdOf(handle: Server | Socket): number {
  return (handle as unknown as { _handle: { fd: number } })._handle.fd;
}

async function listening(t: TestContext, target: { port: 0; host: string } | { path: string }) {
  const server = createServer();
  t.after(() => server.close());
  server.listen(target);
  await once(server, 'listening');
  return server;
}

test('real descriptors: a TCP listener, both ends of a connection, and one half-closed', async (t) => {
  const server = await listening(t, { port: 0, host: '127.0.0.1' });
  const accepted = once(server, 'connection');
  const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => client.destroy());
  await once(client, 'connect');
  const [serverSide] = (await accepted) as [Socket];
  t.after(() => serverSide.destroy());

  const info = inspectSocket(fdOf(server));
  assert.equal(info.kind, 'listening');
  assert.equal(info.table, 'tcp');
  assert.equal(inspectSocket(fdOf(client)).kind, 'connected');
  assert.equal(inspectSocket(fdOf(serverSide)).kind, 'connected');

  // The peer has sent its FIN (CLOSE_WAIT): still a connection with a request to answer.
  client.end();
  await once(serverSide, 'end');
  assert.equal(inspectSocket(fdOf(serverSide)).kind, 'connected');
});

test('real descriptors: IPv6', async (t) => {
  let server: Server;
  try {
    server = await listening(t, { port: 0, host: '::1' });
  } catch {
    // Some CI containers have no ::1 at all; the IPv4 and unix cases still cover the parser.
    t.skip('no IPv6 loopback on this machine');
    return;
  }
  const info = inspectSocket(fdOf(server));
  assert.equal(info.kind, 'listening');
  assert.equal(info.table, 'tcp6');
});

test('real descriptors: unix sockets by path and abstract name', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const byPath = await listening(t, { path: join(dir, 's.sock') });
  assert.deepEqual(
    [inspectSocket(fdOf(byPath)).kind, inspectSocket(fdOf(byPath)).table],
    ['listening', 'unix'],
  );
  const abstract = await listening(t, { path: `\0berth-kind-${process.pid}` });
  assert.equal(inspectSocket(fdOf(abstract)).kind, 'listening');

  const accepted = once(byPath, 'connection');
  const client = netConnect(join(dir, 's.sock'));
  t.after(() => client.destroy());
  await once(client, 'connect');
  const [serverSide] = (await accepted) as [Socket];
  t.after(() => serverSide.destroy());
  assert.equal(inspectSocket(fdOf(client)).kind, 'connected');
  assert.equal(inspectSocket(fdOf(serverSide)).kind, 'connected');
});

test('real descriptors: a UDP socket is other; a file is not a socket; a free number is closed', async (t) => {
  const udp = createSocket('udp4');
  t.after(() => udp.close());
  udp.bind(0, '127.0.0.1');
  await once(udp, 'listening');
  const udpFd = (udp as unknown as { _handle: { fd: number } })._handle.fd;
  assert.deepEqual([inspectSocket(udpFd).kind, inspectSocket(udpFd).table], ['other', 'udp']);

  const file = openSync(process.execPath, 'r');
  t.after(() => closeSync(file));
  assert.equal(inspectSocket(file).kind, 'not-a-socket');
  assert.equal(inspectSocket(100_000).kind, 'closed');
});

test('without procfs the answer is unknown, never a guess', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-noproc-'));
  try {
    assert.equal(inspectSocket(0, { proc: dir }).kind, 'unknown');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('inspecting never disturbs the socket: the connection still carries data', async (t) => {
  const server = await listening(t, { port: 0, host: '127.0.0.1' });
  server.on('connection', (s: Socket) => s.pipe(s));
  const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => client.destroy());
  await once(client, 'connect');
  for (let i = 0; i < 3; i++) inspectSocket(fdOf(client));
  let got = '';
  client.on('data', (d) => {
    got += d;
  });
  client.write('still here');
  await waitFor(() => got === 'still here', 'the echo');
});

test('a long table is read in runs of lines; a row across a run boundary is still found', (t) => {
  // A fake procfs: fd 7 links to socket:[424242], whose row sits past 256 KiB of TIME_WAIT rows,
  // straddling the boundary between two reads.
  const proc = mkdtempSync(join(tmpdir(), 'berth-proc-'));
  t.after(() => rmSync(proc, { recursive: true, force: true }));
  mkdirSync(join(proc, 'self', 'fd'), { recursive: true });
  mkdirSync(join(proc, 'self', 'net'));
  symlinkSync('socket:[424242]', join(proc, 'self', 'fd', '7'));
  symlinkSync('socket:[515151]', join(proc, 'self', 'fd', '8'));
  const filler = (i: number) =>
    `${String(i).padStart(6)}: 0100007F:819A 0100007F:8BE3 06 00000000:00000000 03:00000A09 00000000     0        0 0 3 0000000046718811\n`;
  let text =
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
  let i = 0;
  while (text.length < 256 * 1024 - 40) text += filler(i++);
  text += `${String(i).padStart(6)}: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000046718812\n`;
  while (text.length < 600 * 1024) text += filler(++i);
  writeFileSync(join(proc, 'self', 'net', 'tcp'), text);
  writeFileSync(join(proc, 'self', 'net', 'unix'), UNIX);
  assert.deepEqual(inspectSocket(7, { proc }), {
    fd: 7,
    kind: 'connected',
    inode: 424242,
    table: 'tcp',
  });
  assert.deepEqual(inspectSocket(8, { proc }), { fd: 8, kind: 'unknown', inode: 515151 });
  assert.equal(inspectSocket(9, { proc }).kind, 'closed');
});
