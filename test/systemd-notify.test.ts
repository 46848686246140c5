import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import {
  formatNotifyMessage,
  loadNotifyAddon,
  Notifier,
  NotifyError,
  NotifyUnavailableError,
  notifySocketAddress,
  parseNotifyEnv,
  ServiceClosedError,
  statusText,
  watchdogPingInterval,
} from '../src/index.js';
import { missing, notifyReceiver } from './fixtures/systemd-harness.js';
import { exitWithin, FIXTURES, ROOT, sleep, spawnChild } from './helpers.js';

const addonMissing =
  loadNotifyAddon() instanceof Error
    ? 'the sd_notify addon is not built (npm run build:native; CI builds it on npm ci)'
    : undefined;
const commandMissing = missing('systemd-notify');

test('parseNotifyEnv: socket, and the watchdog only when it is on for this pid', () => {
  assert.deepEqual(parseNotifyEnv({}, 10), { socket: undefined, watchdogUsec: undefined });
  assert.deepEqual(parseNotifyEnv({ NOTIFY_SOCKET: '' }, 10).socket, undefined);
  assert.deepEqual(parseNotifyEnv({ NOTIFY_SOCKET: '/run/n', WATCHDOG_USEC: '3000000' }, 10), {
    socket: '/run/n',
    watchdogUsec: 3_000_000,
  });
  const on = { NOTIFY_SOCKET: '@n', WATCHDOG_USEC: '3000000', WATCHDOG_PID: '10' };
  assert.equal(parseNotifyEnv(on, 10).watchdogUsec, 3_000_000);
  assert.equal(parseNotifyEnv({ ...on, WATCHDOG_PID: '11' }, 10).watchdogUsec, undefined);
  assert.equal(parseNotifyEnv({ ...on, WATCHDOG_PID: 'x' }, 10).watchdogUsec, undefined);
  assert.equal(parseNotifyEnv({ ...on, WATCHDOG_USEC: '0' }, 10).watchdogUsec, undefined);
  assert.equal(parseNotifyEnv({ ...on, WATCHDOG_USEC: '-5' }, 10).watchdogUsec, undefined);
  assert.equal(parseNotifyEnv({ ...on, WATCHDOG_USEC: '1e6' }, 10).watchdogUsec, undefined);
});

test('notifySocketAddress: paths get their bytes, @names a leading NUL, the rest nothing', () => {
  assert.deepEqual(notifySocketAddress('/run/systemd/notify'), Buffer.from('/run/systemd/notify'));
  assert.deepEqual(notifySocketAddress('@abc'), Buffer.from('\0abc'));
  assert.equal(notifySocketAddress('@'), undefined);
  assert.equal(notifySocketAddress('relative/path'), undefined);
  assert.equal(notifySocketAddress('vsock:2:1234'), undefined);
  assert.equal(notifySocketAddress(`/${'x'.repeat(107)}`), undefined, 'no room for the NUL');
  assert.ok(notifySocketAddress(`/${'x'.repeat(106)}`));
  assert.ok(notifySocketAddress(`@${'x'.repeat(107)}`));
  assert.equal(notifySocketAddress(`@${'x'.repeat(108)}`), undefined);
});

test('formatNotifyMessage: assignments in order; no newline smuggling', () => {
  assert.equal(
    formatNotifyMessage({ READY: 1, STATUS: 'Serving on :8080' }),
    'READY=1\nSTATUS=Serving on :8080',
  );
  assert.equal(
    formatNotifyMessage({ EXTEND_TIMEOUT_USEC: 5_000_000n }),
    'EXTEND_TIMEOUT_USEC=5000000',
  );
  assert.throws(() => formatNotifyMessage({ STATUS: 'a\nREADY=1' }), {
    code: 'ERR_BERTH_INVALID_OPTION',
  });
  assert.throws(() => formatNotifyMessage({ status: 'x' }), /upper-case/);
  assert.throws(() => formatNotifyMessage({}), /at least one field/);
  assert.equal(statusText(' two\nlines\r\n'), 'two lines');
  assert.equal(watchdogPingInterval(3_000_000), 1_500);
  assert.equal(watchdogPingInterval(1), 1);
});

test('without NOTIFY_SOCKET a Notifier does nothing, at no cost', async () => {
  const notifier = new Notifier({ env: { WATCHDOG_USEC: '1000' } });
  assert.equal(notifier.enabled, false);
  assert.equal(notifier.transport, 'none');
  assert.equal(notifier.watchdogTimeout, undefined);
  const a = notifier.ready('x');
  const b = notifier.stopping();
  assert.equal(a, b, 'one shared settled promise, nothing allocated per call');
  await Promise.all([a, notifier.status('s'), notifier.watchdog(), notifier.reloading()]);
  assert.deepEqual(notifier.stats, {
    enabled: false,
    transport: 'none',
    sent: 0,
    failed: 0,
    watchdogInterval: 0,
  });
  notifier.close();
});

test('native: the exact datagrams, in order, sent with our own pid', {
  skip: addonMissing,
}, async (t) => {
  const receiver = await notifyReceiver(t);
  const notifier = new Notifier({ env: { NOTIFY_SOCKET: receiver.address }, transport: 'native' });
  t.after(() => notifier.close());
  assert.equal(notifier.transport, 'native');
  // Not awaited one by one: the order must hold anyway.
  const sends = [
    notifier.status('Starting'),
    notifier.ready('Serving on 127.0.0.1:8080'),
    notifier.watchdog(),
    notifier.extendTimeout(2_500),
    notifier.notify({ STATUS: 'Draining 2 connections', ERRNO: 0 }),
    notifier.stopping(),
  ];
  await Promise.all(sends);
  const got = await receiver.received(6);
  assert.deepEqual(
    got.map((d) => d.data),
    [
      'STATUS=Starting',
      'READY=1\nSTATUS=Serving on 127.0.0.1:8080',
      'WATCHDOG=1',
      'EXTEND_TIMEOUT_USEC=2500000',
      'STATUS=Draining 2 connections\nERRNO=0',
      'STOPPING=1',
    ],
  );
  for (const d of got) assert.equal(d.pid, process.pid, 'the kernel stamped our pid');
  assert.deepEqual(notifier.stats, {
    enabled: true,
    transport: 'native',
    sent: 6,
    failed: 0,
    watchdogInterval: 0,
  });
});

test('native: an @abstract address', { skip: addonMissing }, async (t) => {
  const receiver = await notifyReceiver(t, { abstract: true });
  const notifier = new Notifier({ env: { NOTIFY_SOCKET: receiver.address } });
  assert.equal(notifier.transport, 'native', 'auto picks the addon when it is built');
  await notifier.ready();
  const reload = notifier.reloading('Reloading');
  await reload;
  const got = await receiver.received(2);
  assert.equal(got[0]!.data, 'READY=1');
  assert.match(got[1]!.data, /^RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=Reloading$/);
  const usec = BigInt(/MONOTONIC_USEC=(\d+)/.exec(got[1]!.data)![1]!);
  const now = process.hrtime.bigint() / 1_000n;
  assert.ok(usec <= now && now - usec < 10_000_000n, 'CLOCK_MONOTONIC microseconds');
  assert.equal(got[1]!.pid, process.pid);
});

test('command: the same datagrams through systemd-notify, one process each', {
  skip: commandMissing,
}, async (t) => {
  const receiver = await notifyReceiver(t);
  const notifier = new Notifier({
    env: { ...process.env, NOTIFY_SOCKET: receiver.address },
    transport: 'command',
  });
  assert.equal(notifier.transport, 'command');
  await Promise.all([notifier.ready('Up'), notifier.status('Busy'), notifier.stopping()]);
  const got = await receiver.received(3);
  assert.deepEqual(
    got.map((d) => d.data),
    ['READY=1\nSTATUS=Up', 'STATUS=Busy', 'STOPPING=1'],
  );
  assert.ok(
    got.every((d) => d.fds === 0),
    '--no-block: no barrier fd to hold',
  );
  if (process.getuid?.() === 0) {
    // As root systemd-notify forges its parent's pid, which is us. As any other user it cannot:
    // see the next test.
    for (const d of got) assert.equal(d.pid, process.pid);
  }
});

test('why the addon: as an unprivileged user only the addon sends with the main pid', {
  skip:
    process.getuid?.() !== 0
      ? 'needs root to run a child as nobody'
      : (addonMissing ?? commandMissing ?? missing('setpriv')),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-nobody-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  spawnSync('chmod', ['777', dir]);
  const receiver = await notifyReceiver(t);
  spawnSync('chmod', ['755', dirname(receiver.address)]);
  spawnSync('chmod', ['777', receiver.address]);
  for (const transport of ['native', 'command']) {
    const child = spawnChild(
      t,
      'setpriv',
      [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        process.execPath,
        '--import',
        'tsx',
        join(FIXTURES, 'systemd-notify-sender.ts'),
        transport,
      ],
      {
        cwd: ROOT,
        env: { ...process.env, NOTIFY_SOCKET: receiver.address, HOME: dir, TMPDIR: dir },
      },
    );
    const pid = Number((await child.line(/^pid \d+$/, 30_000)).split(' ')[1]);
    assert.equal(await exitWithin(child, 30_000), 0, child.stderr());
    const got = (await receiver.received(transport === 'native' ? 1 : 2)).at(-1)!;
    assert.equal(got.data, `READY=1\nSTATUS=${transport}`);
    assert.equal(got.uid, 65534);
    if (transport === 'native') assert.equal(got.pid, pid, 'the addon sends as the main pid');
    else
      assert.notEqual(got.pid, pid, 'systemd-notify sends as itself: NotifyAccess=main drops it');
  }
});

test('the watchdog pings at half of WATCHDOG_USEC, and only when it is on for this pid', {
  skip: addonMissing,
}, async (t) => {
  const receiver = await notifyReceiver(t);
  const env = { NOTIFY_SOCKET: receiver.address, WATCHDOG_USEC: '200000' };
  const notifier = new Notifier({ env });
  t.after(() => notifier.close());
  assert.equal(notifier.watchdogTimeout, 200);
  assert.equal(notifier.stats.watchdogInterval, 100);
  const got = await receiver.received(3);
  assert.ok(got.every((d) => d.data === 'WATCHDOG=1' && d.pid === process.pid));
  notifier.close();
  await sleep(20); // a ping whose timer had fired is still sent
  const sent = notifier.stats.sent;
  await receiver.received(sent);
  await sleep(400); // four ping intervals
  assert.equal(notifier.stats.sent, sent, 'close stops the pings');
  assert.equal(receiver.datagrams().length, sent);
  assert.equal(notifier.stats.watchdogInterval, 0);

  const other = new Notifier({ env: { ...env, WATCHDOG_PID: '1' } });
  t.after(() => other.close());
  assert.equal(other.watchdogTimeout, undefined);
  assert.equal(other.stats.watchdogInterval, 0);
  const off = new Notifier({ env, watchdog: false });
  t.after(() => off.close());
  assert.equal(off.watchdogTimeout, 200, 'the timeout is known; pinging is up to the caller');
  assert.equal(off.stats.watchdogInterval, 0);
});

test('a send that fails rejects with a coded error, and unawaited it never crashes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-nobody-home-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const errors: unknown[] = [];
  const onError = (m: unknown) => errors.push(m);
  subscribe('berth:systemd:notify-error', onError);
  t.after(() => unsubscribe('berth:systemd:notify-error', onError));

  const notifier = new Notifier({
    env: { ...process.env, NOTIFY_SOCKET: join(dir, 'nobody-listens') },
  });
  void notifier.status('unawaited');
  await assert.rejects(notifier.ready(), (err: unknown) => {
    assert.ok(err instanceof NotifyError, String(err));
    assert.equal(err.code, 'ERR_BERTH_NOTIFY_FAILED');
    return true;
  });
  assert.equal(notifier.stats.failed, 2);
  assert.equal(errors.length, 2);

  notifier.close();
  await assert.rejects(notifier.ready(), ServiceClosedError);
});

test('nothing to send with: NotifyUnavailableError, clearly, and no crash', async () => {
  const notifier = new Notifier({
    env: { NOTIFY_SOCKET: '/run/x', PATH: '/nonexistent' },
    transport: 'command',
  });
  assert.equal(notifier.transport, 'none');
  void notifier.status('unawaited');
  await assert.rejects(notifier.ready(), (err: unknown) => {
    assert.ok(err instanceof NotifyUnavailableError);
    assert.equal(err.code, 'ERR_BERTH_NOTIFY_UNAVAILABLE');
    assert.match(err.message, /no systemd-notify command on PATH/);
    return true;
  });
  // An address the addon cannot reach (newer systemd's vsock:) falls to the command, if any.
  const vsock = new Notifier({ env: { NOTIFY_SOCKET: 'vsock:2:9', PATH: '/nonexistent' } });
  assert.equal(vsock.transport, 'none');
  await assert.rejects(vsock.ready(), /no systemd-notify command on PATH/);
});

test('sent messages go out on diagnostics_channel', { skip: addonMissing }, async (t) => {
  const receiver = await notifyReceiver(t);
  const seen: unknown[] = [];
  const onSent = (m: unknown) => seen.push(m);
  subscribe('berth:systemd:notify', onSent);
  t.after(() => unsubscribe('berth:systemd:notify', onSent));
  const notifier = new Notifier({ env: { NOTIFY_SOCKET: receiver.address } });
  await notifier.ready();
  assert.deepEqual(seen, [{ message: 'READY=1', transport: 'native' }]);
});

test('bad options fail at construction', () => {
  assert.throws(() => new Notifier({ transport: 'udp' as 'native' }), /transport must be one of/);
  assert.throws(
    () => new Notifier({ watchdog: 1 as unknown as boolean }),
    /watchdog must be a boolean/,
  );
  assert.throws(
    () => new Notifier({ socket: 'x' } as unknown as object),
    /Notifier\.socket is not a known option/,
  );
  const n = new Notifier({ env: {} });
  assert.throws(() => n.extendTimeout(-1), /ms must be a non-negative integer/);
});
