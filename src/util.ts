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
