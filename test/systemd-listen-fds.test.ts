import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  findListenFd,
  findListenFds,
  ListenFdNotFoundError,
  ListenFdsError,
  listenFdAt,
  listenFds,
  selectListenFd,
} from '../src/index.js';

const PID = 4242;

function env(vars: Record<string, string>): Record<string, string | undefined> {
  return { PATH: '/usr/bin', ...vars };
}

test('named fds from 3, names by position', () => {
  const e = env({ LISTEN_PID: String(PID), LISTEN_FDS: '2', LISTEN_FDNAMES: 'http:echo' });
  assert.deepEqual(listenFds({ env: e, pid: PID }), [
    { fd: 3, name: 'http' },
    { fd: 4, name: 'echo' },
  ]);
});

test('a unit without names: every fd is "unknown", and positions still work', () => {
  const fds = listenFds({ env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '3' }), pid: PID });
  assert.deepEqual(
    fds.map((f) => [f.fd, f.name]),
    [
      [3, 'unknown'],
      [4, 'unknown'],
      [5, 'unknown'],
    ],
  );
  assert.deepEqual(listenFdAt(fds, 1), { fd: 4, name: 'unknown' });
  assert.equal(listenFdAt(fds, 3), undefined);
  assert.equal(listenFdAt(fds, -1), undefined);
  assert.deepEqual(selectListenFd(fds, 0), { fd: 3, name: 'unknown' });
});

test('missing and empty names read as "unknown"', () => {
  const fds = listenFds({
    env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '3', LISTEN_FDNAMES: 'a::' }),
    pid: PID,
  });
  assert.deepEqual(
    fds.map((f) => f.name),
    ['a', 'unknown', 'unknown'],
  );
  const fewer = listenFds({
    env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '2', LISTEN_FDNAMES: 'only' }),
    pid: PID,
  });
  assert.deepEqual(
    fewer.map((f) => f.name),
    ['only', 'unknown'],
  );
  const empty = listenFds({
    env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '1', LISTEN_FDNAMES: '' }),
    pid: PID,
  });
  assert.deepEqual(empty, [{ fd: 3, name: 'unknown' }]);
});

test('fds for another pid, or without LISTEN_PID, are not ours: none', () => {
  assert.deepEqual(
    listenFds({ env: env({ LISTEN_PID: '1', LISTEN_FDS: '1' }), pid: PID, unsetEnv: false }),
    [],
  );
  assert.deepEqual(listenFds({ env: env({ LISTEN_FDS: '1' }), pid: PID }), []);
  assert.deepEqual(listenFds({ env: env({ LISTEN_PID: String(PID) }), pid: PID }), []);
  assert.deepEqual(listenFds({ env: env({}), pid: PID }), []);
  assert.deepEqual(
    listenFds({ env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '0' }), pid: PID }),
    [],
  );
  // Not ours, so a malformed LISTEN_FDS is not our problem either.
  assert.deepEqual(listenFds({ env: env({ LISTEN_PID: '1', LISTEN_FDS: 'x' }), pid: PID }), []);
});

test('the variables are removed from env by default, whatever the outcome', () => {
  const vars = { LISTEN_PID: String(PID), LISTEN_FDS: '1', LISTEN_FDNAMES: 'http' };
  const e = env(vars);
  listenFds({ env: e, pid: PID });
  assert.deepEqual(e, { PATH: '/usr/bin' });

  const other = env({ ...vars, LISTEN_PID: '1' });
  listenFds({ env: other, pid: PID });
  assert.deepEqual(other, { PATH: '/usr/bin' });

  const bad = env({ ...vars, LISTEN_FDS: 'x' });
  assert.throws(() => listenFds({ env: bad, pid: PID }), ListenFdsError);
  assert.deepEqual(bad, { PATH: '/usr/bin' });

  const kept = env(vars);
  listenFds({ env: kept, pid: PID, unsetEnv: false });
  assert.deepEqual(kept, env(vars));
});

test('the defaults read process.env and process.pid', () => {
  const saved = { ...process.env };
  try {
    process.env.LISTEN_PID = String(process.pid);
    process.env.LISTEN_FDS = '1';
    process.env.LISTEN_FDNAMES = 'http';
    assert.deepEqual(listenFds(), [{ fd: 3, name: 'http' }]);
    assert.equal(process.env.LISTEN_FDS, undefined);
    assert.deepEqual(listenFds(), []);
  } finally {
    for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete process.env[k];
    Object.assign(process.env, saved);
  }
});

test('malformed values are coded errors naming the variable', () => {
  const cases: [Record<string, string>, string, RegExp][] = [
    [{ LISTEN_PID: 'abc', LISTEN_FDS: '1' }, 'LISTEN_PID', /LISTEN_PID must be .*"abc"/],
    [{ LISTEN_PID: '-1', LISTEN_FDS: '1' }, 'LISTEN_PID', /LISTEN_PID/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '1x' }, 'LISTEN_FDS', /LISTEN_FDS must be/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: ' 1' }, 'LISTEN_FDS', /LISTEN_FDS must be/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '-2' }, 'LISTEN_FDS', /LISTEN_FDS must be/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '' }, 'LISTEN_FDS', /LISTEN_FDS must be/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '9999999999' }, 'LISTEN_FDS', /too large/],
    [
      { LISTEN_PID: String(PID), LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:b' },
      'LISTEN_FDNAMES',
      /2 names for 1 descriptor/,
    ],
  ];
  for (const [vars, variable, message] of cases) {
    assert.throws(
      () => listenFds({ env: env(vars), pid: PID }),
      (err: unknown) => {
        assert.ok(err instanceof ListenFdsError, String(err));
        assert.equal(err.code, 'ERR_BERTH_LISTEN_FDS_INVALID');
        assert.equal(err.variable, variable);
        assert.match(err.message, message);
        return true;
      },
    );
  }
});

test('bad options fail with a coded error naming the option', () => {
  assert.throws(() => listenFds({ pid: 0 }), /pid must be a positive integer, got 0/);
  assert.throws(
    () => listenFds({ unsetEnv: 'no' as unknown as boolean }),
    /unsetEnv must be a boolean/,
  );
  assert.throws(
    () => listenFds({ envv: {} } as unknown as Parameters<typeof listenFds>[0]),
    /listenFds\.envv is not a known option/,
  );
});

test('lookups by name and position; a miss lists what was passed', () => {
  const fds = listenFds({
    env: env({ LISTEN_PID: String(PID), LISTEN_FDS: '3', LISTEN_FDNAMES: 'http:echo:http' }),
    pid: PID,
  });
  assert.deepEqual(findListenFd(fds, 'http'), { fd: 3, name: 'http' });
  assert.deepEqual(
    findListenFds(fds, 'http').map((f) => f.fd),
    [3, 5],
  );
  assert.equal(findListenFd(fds, 'tasks'), undefined);
  assert.deepEqual(selectListenFd(fds, 'echo'), { fd: 4, name: 'echo' });
  assert.throws(
    () => selectListenFd(fds, 'tasks'),
    (err: unknown) => {
      assert.ok(err instanceof ListenFdNotFoundError);
      assert.equal(err.code, 'ERR_BERTH_LISTEN_FD_NOT_FOUND');
      assert.equal(err.selector, 'tasks');
      assert.match(
        err.message,
        /no listen fd named "tasks"; passed: 3 \(http\), 4 \(echo\), 5 \(http\)/,
      );
      return true;
    },
  );
  assert.throws(() => selectListenFd(fds, 7), /no listen fd at position 7/);
  assert.throws(() => selectListenFd([], 'http'), /none were passed/);
});

test('property: any well-formed env gives LISTEN_FDS fds numbered from 3, names by position', () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9._-]{0,15}$/);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 64 }), fc.array(name, { maxLength: 64 }), (n, all) => {
      const names = all.slice(0, n);
      const e = env({ LISTEN_PID: String(PID), LISTEN_FDS: String(n) });
      if (names.length > 0) e.LISTEN_FDNAMES = names.join(':');
      const fds = listenFds({ env: e, pid: PID });
      assert.equal(fds.length, n);
      fds.forEach((f, i) => {
        assert.equal(f.fd, 3 + i);
        assert.equal(f.name, names[i] ?? 'unknown');
      });
    }),
  );
});

test('property: arbitrary strings never crash the parser; it returns fds or a coded error', () => {
  fc.assert(
    fc.property(fc.string(), fc.string(), fc.option(fc.string()), (pid, count, names) => {
      const e: Record<string, string | undefined> = { LISTEN_PID: pid, LISTEN_FDS: count };
      if (names !== null) e.LISTEN_FDNAMES = names;
      try {
        const fds = listenFds({ env: e, pid: PID });
        assert.ok(Array.isArray(fds));
      } catch (err) {
        assert.ok(err instanceof ListenFdsError, String(err));
      }
    }),
  );
});
