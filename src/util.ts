/** Small helpers every module was about to write again. */

/** Does nothing: for callbacks and error listeners whose event is expected and handled elsewhere. */
export function noop(): void {}

/** True for a promise, or anything with a `then` method (what `await` would wait for). */
export function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  );
}

let turnClock: number | undefined;

function clearTurnClock(): void {
  turnClock = undefined;
}

/**
 * `performance.now()`, read once per event-loop turn and shared by everything that asks during
 * it. For durations that go into histogram buckets, a turn's precision is plenty, and on a hot
 * path (a task ending) the clock read itself was measurable (60-90 ns a call here).
 */
export function turnNow(): number {
  if (turnClock === undefined) {
    turnClock = performance.now();
    setImmediate(clearTurnClock);
  }
  return turnClock;
}
