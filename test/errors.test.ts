import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as errors from '../src/errors.js';
import { ROOT } from './helpers.js';

const { BerthError } = errors;

function errorClasses(): (typeof BerthError)[] {
  return Object.values(errors).filter(
    (value): value is typeof BerthError =>
      typeof value === 'function' && value.prototype instanceof BerthError,
  );
}

function documentedCodes(): string[] {
  const text = readFileSync(join(ROOT, 'docs', 'errors.md'), 'utf8');
  return [...text.matchAll(/^### `(ERR_BERTH_[A-Z0-9_]+)`/gm)].map((m) => m[1]!);
}

test('every error class has its own stable code', () => {
  const codes = errorClasses().map((c) => c.code);
  assert.ok(codes.length > 0);
  for (const code of codes) assert.match(code, /^ERR_BERTH_[A-Z0-9_]+$/);
  assert.equal(new Set(codes).size, codes.length, `duplicate codes: ${codes.sort().join(', ')}`);
});

test('docs/errors.md documents exactly the codes in src/errors.ts', () => {
  const inCode = errorClasses()
    .map((c) => c.code)
    .sort();
  const inDocs = documentedCodes().sort();
  assert.deepEqual(
    {
      missingFromDocs: inCode.filter((c) => !inDocs.includes(c)),
      notInCode: inDocs.filter((c) => !inCode.includes(c)),
    },
    { missingFromDocs: [], notInCode: [] },
  );
  assert.equal(new Set(inDocs).size, inDocs.length, 'a code is documented twice');
});

test('instances carry their class code, name and cause', () => {
  const cause = new Error('root');
  const err = new errors.ServiceClosedError('closed', { cause });
  assert.equal(err.code, 'ERR_BERTH_SERVICE_CLOSED');
  assert.equal(err.name, 'ServiceClosedError');
  assert.equal(err.cause, cause);
  assert.ok(err instanceof BerthError && err instanceof Error);
});
