import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { test } from 'node:test';
import fc from 'fast-check';
import { type IdleClock, IdleTimeoutError, IdleTracker, systemClock } from '../src/index.js';

/** Time that moves only when the test says so; timers fire in order as it passes them. */
class FakeClock implements IdleClock {
  time = 0;
  #next = 0;
  readonly timers = new Map<number, { at: number; fn: () => void }>();
  /** How many timers were ever set. */
  set = 0;

  now(): number {
    return this.time;
  }

  setTimer(fn: () => void, ms: number): unknown {
    const id = ++this.#next;
    this.set++;
    this.timers.set(id, { at: this.time + ms, fn });
    return id;
  }

  clearTimer(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  advance(ms: number): void {
    const until = this.time + ms;
    for (;;) {
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at <= until && (!due || entry[1].at < due[1].at)) due = entry;
      }
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].fn();
    }
    this.time = until;
  }
}

function tracker(idleTimeout = 1_000) {
  const clock = new FakeClock();
  return { clock, idle: new IdleTracker({ idleTimeout, clock }) };
}

test('with nothing ever active, the signal aborts idleTimeout after construction', () => {
  const { clock, idle } = tracker(1_000);
  clock.advance(999);
  assert.equal(idle.signal.aborted, false);
  clock.advance(1);
  assert.equal(idle.signal.aborted, true);
  const reason = idle.signal.reason;
  assert.ok(reason instanceof IdleTimeoutError);
  assert.equal(reason.code, 'ERR_BERTH_IDLE_TIMEOUT');
  assert.equal(reason.idleTimeout, 1_000);
  assert.equal(idle.stats.timedOut, true);
});

test('never while something is active; then idleTimeout after the last activity ends', () => {
  const { clock, idle } = tracker(1_000);
  clock.advance(500);
  const a = idle.begin();
  clock.advance(10_000);
  assert.equal(idle.signal.aborted, false, 'a long activity holds the service up');
  assert.equal(idle.stats.idleFor, 0);
  a.end();
  clock.advance(999);
  assert.equal(idle.signal.aborted, false);
  assert.equal(idle.stats.idleFor, 999);
  clock.advance(1);
  assert.equal(idle.signal.aborted, true);
});

test('overlapping activities: idle only when the last one ends; end is idempotent', () => {
  const { clock, idle } = tracker(100);
  const a = idle.begin();
  const b = idle.begin();
  assert.equal(idle.active, 2);
  a.end();
  a.end();
  assert.equal(idle.active, 1, 'a second end() does nothing');
  clock.advance(500);
  assert.equal(idle.signal.aborted, false);
  b.end();
  clock.advance(60);
  const c = idle.begin(); // arrives before the timeout: the clock restarts after it
  clock.advance(60);
  c.end();
  clock.advance(99);
  assert.equal(idle.signal.aborted, false);
  clock.advance(1);
  assert.equal(idle.signal.aborted, true);
  assert.deepEqual(idle.stats, { active: 0, total: 3, idleFor: 100, timedOut: true });
});

test('`using` ends an activity when its scope does', () => {
  const { idle } = tracker();
  {
    using _ = idle.begin();
    assert.equal(idle.active, 1);
  }
  assert.equal(idle.active, 0);
});

test('track(promise) counts until it settles and passes the outcome on', async () => {
  const { clock, idle } = tracker(100);
  let resolve!: (v: string) => void;
  const tracked = idle.track(new Promise<string>((r) => (resolve = r)));
  assert.equal(idle.active, 1);
  clock.advance(1_000);
  assert.equal(idle.signal.aborted, false);
  resolve('done');
  assert.equal(await tracked, 'done');
  assert.equal(idle.active, 0);
  const failing = idle.track(Promise.reject(new Error('boom')));
  await assert.rejects(failing, /boom/);
  assert.equal(idle.active, 0);
  clock.advance(100);
  assert.equal(idle.signal.aborted, true);
});

test('work that begins after the timeout still counts; the signal stays aborted', () => {
  const { clock, idle } = tracker(100);
  clock.advance(100);
  assert.equal(idle.signal.aborted, true);
  const late = idle.begin();
  assert.equal(idle.active, 1);
  late.end();
  clock.advance(1_000);
  assert.equal(idle.signal.aborted, true);
  assert.equal(clock.timers.size, 0, 'no timer left behind');
});

test('close stops the clock for good; dispose closes', () => {
  const { clock, idle } = tracker(100);
  idle.close();
  clock.advance(1_000);
  assert.equal(idle.signal.aborted, false);
  idle.begin().end();
  clock.advance(1_000);
  assert.equal(idle.signal.aborted, false);
  assert.equal(clock.timers.size, 0);
  idle.close();

  const other = tracker(100);
  {
    using _ = other.idle;
  }
  other.clock.advance(1_000);
  assert.equal(other.idle.signal.aborted, false);
});

test('a burst of activity costs no timer per activity', () => {
  const { clock, idle } = tracker(1_000);
  for (let i = 0; i < 10_000; i++) {
    const a = idle.begin();
    if (i % 50 === 0) clock.advance(1); // 200 ms of traffic in all
    a.end();
  }
  assert.equal(clock.set, 1, 'the construction timer is still the only one');
  clock.advance(5_000);
  assert.equal(idle.signal.aborted, true);
  assert.ok(clock.set <= 3, `timers set: ${clock.set}`);
});

test('the timeout goes out on diagnostics_channel', (t) => {
  const seen: unknown[] = [];
  const on = (m: unknown) => seen.push(m);
  subscribe('berth:idle:timeout', on);
  t.after(() => unsubscribe('berth:idle:timeout', on));
  const { clock, idle } = tracker(100);
  idle.begin().end();
  clock.advance(100);
  assert.deepEqual(seen, [{ idleTimeout: 100, idleFor: 100, total: 1 }]);
});

test('property: the signal aborts exactly when nothing was active for idleTimeout', () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('begin' as const) }),
    fc.record({ kind: fc.constant('end' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 250 }) }),
  );
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 200 }),
      fc.array(op, { maxLength: 60 }),
      (timeout, ops) => {
        const { clock, idle } = tracker(timeout);
        const open: { end(): void }[] = [];
        // The model: when the current idle spell began, and whether one lasted `timeout`.
        let idleSince: number | undefined = 0;
        let expired = false;
        for (const o of ops) {
          if (o.kind === 'begin') {
            open.push(idle.begin());
            if (!expired && idleSince !== undefined && clock.now() - idleSince >= timeout)
              expired = true;
            idleSince = undefined;
          } else if (o.kind === 'end') {
            if (open.length === 0) continue;
            open.splice(o.pick % open.length, 1)[0]!.end();
            if (open.length === 0) idleSince = clock.now();
          } else {
            clock.advance(o.ms);
            if (idleSince !== undefined && clock.now() - idleSince >= timeout) expired = true;
          }
          assert.equal(idle.signal.aborted, expired, `at ${clock.now()}`);
          assert.equal(idle.active, open.length);
        }
      },
    ),
  );
});

test('real time: the timers are unref’d, so the tracker never keeps a process alive', () => {
  const handle = systemClock.setTimer(() => {}, 60_000) as NodeJS.Timeout;
  assert.equal(handle.hasRef(), false);
  systemClock.clearTimer(handle);
  const idle = new IdleTracker({ idleTimeout: 60_000 });
  assert.equal(idle.signal.aborted, false);
  idle.close();
});

test('bad options fail at construction, naming the option', () => {
  assert.throws(
    () => new IdleTracker({ idleTimeout: 0 }),
    /idleTimeout must be an integer from 1 to 2147483647 \(ms\), got 0/,
  );
  assert.throws(() => new IdleTracker({} as { idleTimeout: number }), /idleTimeout must be/);
  assert.throws(() => new IdleTracker({ idleTimeout: 1.5 }), { code: 'ERR_BERTH_INVALID_OPTION' });
  assert.throws(
    () => new IdleTracker({ idleTimeout: 10, clock: { now: () => 0 } as unknown as IdleClock }),
    /clock\.setTimer must be a function/,
  );
  assert.throws(
    () => new IdleTracker({ idleTimeout: 10, timeout: 1 } as unknown as { idleTimeout: number }),
    /IdleTracker\.timeout is not a known option/,
  );
});
