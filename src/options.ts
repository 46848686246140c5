/**
 * Option validation. Every public constructor checks its options with these before it touches a
 * socket, so a bad option fails at construction with an `InvalidOptionError` that names the
 * option, what was expected, and what was given:
 *
 *   shutdownTimeout must be a non-negative integer (ms), got -1
 */

import { InvalidOptionError } from './errors.js';

/** A short, safe rendering of a value for an error message. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
    case 'number':
    case 'boolean':
    case 'bigint':
      return String(value);
    case 'function':
      return `function ${value.name || '(anonymous)'}`;
    case 'symbol':
      return value.toString();
    default:
      if (Array.isArray(value)) return `an array of ${value.length}`;
      return `an object (${value.constructor?.name ?? 'null prototype'})`;
  }
}

function fail(name: string, expected: string, value: unknown): never {
  throw new InvalidOptionError(name, `${name} must be ${expected}, got ${describe(value)}`);
}

export interface IntegerRange {
  min?: number;
  max?: number;
  /** Appended to the expectation, e.g. `(ms)`. */
  unit?: string;
}

function integerExpectation({ min, max, unit }: IntegerRange): string {
  let kind = 'an integer';
  if (min === 0 && max === undefined) kind = 'a non-negative integer';
  else if (min === 1 && max === undefined) kind = 'a positive integer';
  else if (min !== undefined && max !== undefined) kind = `an integer from ${min} to ${max}`;
  else if (min !== undefined) kind = `an integer >= ${min}`;
  else if (max !== undefined) kind = `an integer <= ${max}`;
  return unit ? `${kind} ${unit}` : kind;
}

/** A finite number from `min` to `max` (a factor, a fraction), not only an integer. */
export function validateNumber(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    fail(name, `a number from ${min} to ${max}`, value);
  }
  return value;
}

export function validateInteger(value: unknown, name: string, range: IntegerRange = {}): number {
  if (
    typeof value !== 'number' ||
    !Number.isSafeInteger(value) ||
    (range.min !== undefined && value < range.min) ||
    (range.max !== undefined && value > range.max)
  ) {
    fail(name, integerExpectation(range), value);
  }
  return value;
}

/** The longest delay a Node timer honours (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A duration in milliseconds: a non-negative integer no longer than a timer can wait. */
export function validateDuration(value: unknown, name: string): number {
  validateInteger(value, name, { min: 0, unit: '(ms)' });
  if ((value as number) > MAX_TIMER_MS) fail(name, `at most ${MAX_TIMER_MS} (ms)`, value);
  return value as number;
}

export function validatePort(value: unknown, name: string): number {
  return validateInteger(value, name, { min: 0, max: 65_535 });
}

export function validateString(value: unknown, name: string, { empty = false } = {}): string {
  if (typeof value !== 'string' || (!empty && value.length === 0)) {
    fail(name, empty ? 'a string' : 'a non-empty string', value);
  }
  return value;
}

export function validateBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') fail(name, 'a boolean', value);
  return value;
}

// biome-ignore lint/complexity/noBannedTypes: validates any callable
export function validateFunction<F extends Function>(value: unknown, name: string): F {
  if (typeof value !== 'function') fail(name, 'a function', value);
  return value as F;
}

export function validateObject<T extends object>(value: unknown, name: string): T {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    fail(name, 'an object', value);
  }
  return value as T;
}

export function validateAbortSignal(value: unknown, name: string): AbortSignal {
  if (!(value instanceof AbortSignal)) fail(name, 'an AbortSignal', value);
  return value;
}

export function validateOneOf<T extends string>(
  value: unknown,
  name: string,
  allowed: readonly T[],
): T {
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    fail(name, `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`, value);
  }
  return value as T;
}

/** Throws when `value` is not an instance of `type`; the message names the expected class. */
export function validateInstance<T>(
  value: unknown,
  name: string,
  // biome-ignore lint/suspicious/noExplicitAny: any constructor
  type: abstract new (...args: any[]) => T,
  expected = `a ${type.name}`,
): T {
  if (!(value instanceof type)) fail(name, expected, value);
  return value;
}

/** Fails when an options object carries a key this component does not know (a likely typo). */
export function rejectUnknownKeys(options: object, name: string, known: readonly string[]): void {
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new InvalidOptionError(
        `${name}.${key}`,
        `${name}.${key} is not a known option (known: ${known.join(', ')})`,
      );
    }
  }
}

/**
 * Runs `check` when `value` is not undefined, else returns `fallback`. Keeps the common
 * "optional with a default" case to one line at each call site.
 */
export function optional<T>(value: unknown, fallback: T, check: (value: unknown) => T): T {
  return value === undefined ? fallback : check(value);
}
