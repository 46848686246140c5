// The pure codec: every header rule with its code, and properties over random input. The
// decoder under test is the real incremental one; inputs are cut at random points, filled with
// garbage, or mutated from valid streams.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  type ByteOrder,
  ClientFrame,
  ClientHelloDecoder,
  ErrorCode,
  encodeClientHello,
  encodeFrame,
  encodeRefusal,
  encodeServerHello,
  type Frame,
  FrameDecoder,
  FrameEncoder,
  type FrameSource,
  isRefusal,
  ServerFrame,
  ServerHelloDecoder,
  TaskProtocolError,
} from '../src/index.js';
import { truncateUtf8, windowPayload } from '../src/protocol/codec.js';

const MAX = 4_096;
const HEADER = 12;

interface Outcome {
  frames: { type: number; flags: number; code: number; id: number; payload: string }[];
  error?: { code: number; message: string };
  /** The most the decoder held at any point. */
  maxBuffered: number;
}

/** Decodes `bytes` cut at `cuts`, recording frames, the first error, and the most held. */
function decode(
  bytes: Uint8Array,
  cuts: number[],
  source: FrameSource,
  byteOrder: ByteOrder = 'le',
  max = MAX,
  split: readonly number[] = [],
): Outcome {
  const decoder = new FrameDecoder({ byteOrder, maxPayload: max, source, split });
  const out: Outcome = { frames: [], maxBuffered: 0 };
  const onFrame = (f: Frame) =>
    out.frames.push({
      type: f.type,
      flags: f.flags,
      code: f.code,
      id: f.id,
      payload: Buffer.from(f.payload).toString('hex'),
    });
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  let from = 0;
  try {
    for (const to of [...points, bytes.length]) {
      if (to < from) continue;
      decoder.push(bytes.subarray(from, to), onFrame);
      out.maxBuffered = Math.max(out.maxBuffered, decoder.buffered);
      from = to;
    }
  } catch (err) {
    assert.ok(err instanceof TaskProtocolError, `a non-protocol error escaped: ${String(err)}`);
    out.error = { code: err.errorCode, message: err.message };
    // A failed decoder stays failed, with the same error.
    assert.throws(
      () => decoder.push(Buffer.from([0]), onFrame),
      (again: unknown) => again === err,
    );
  }
  return out;
}

// --- generators -------------------------------------------------------------------------------

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const payload = (maxLength: number) => fc.uint8Array({ maxLength });

function clientFrame() {
  return fc.oneof(
    fc.record({
      type: fc.constant(ClientFrame.START),
      flags: fc.constantFrom(0, 1),
      code: fc.integer({ min: 0, max: 255 }),
      id: u32,
      payload: payload(300),
    }),
    fc.record({
      type: fc.constant(ClientFrame.DATA),
      flags: fc.constantFrom(0, 1),
      code: fc.constant(0),
      id: u32,
      payload: payload(300),
    }),
    fc.record({
      type: fc.constant(ClientFrame.CANCEL),
      flags: fc.constant(0),
      code: fc.constant(0),
      id: u32,
      payload: fc.constant(new Uint8Array(0)),
    }),
    fc.record({
      type: fc.constant(ClientFrame.WINDOW),
      flags: fc.constant(0),
      code: fc.constant(0),
      id: u32,
      payload: fc.integer({ min: 1, max: 0xffff_ffff }).map((n) => windowPayload(n, 'le')),
    }),
    fc.record({
      type: fc.constant(ClientFrame.GOODBYE),
      flags: fc.constant(0),
      code: fc.constant(0),
      id: fc.constant(0),
      payload: fc.constant(new Uint8Array(0)),
    }),
  );
}

function serverFrame() {
  return fc.oneof(
    fc.record({
      type: fc.constant(ServerFrame.OK),
      flags: fc.constantFrom(0, 1),
      code: fc.constant(0),
      id: u32,
      payload: payload(300),
    }),
    fc.record({
      type: fc.constantFrom(ServerFrame.ERROR, ServerFrame.FATAL),
      flags: fc.constant(0),
      code: fc.integer({ min: 0, max: 255 }),
      id: u32,
      payload: payload(100),
    }),
    fc.record({
      type: fc.constant(ServerFrame.GOODBYE),
      flags: fc.constant(0),
      code: fc.integer({ min: 0, max: 255 }),
      id: fc.constant(0),
      payload: payload(100),
    }),
    fc.record({
      type: fc.constant(ServerFrame.PROCESSING),
      flags: fc.constant(0),
      code: fc.constant(0),
      id: u32,
      payload: fc.constant(new Uint8Array(0)),
    }),
  );
}

type GenFrame = { type: number; flags: number; code: number; id: number; payload: Uint8Array };

/** Encodes frames with the real encoder, some whole, some as a header plus pieces. */
function encodeAll(frames: GenFrame[], byteOrder: ByteOrder, pieces: boolean[]): Buffer {
  const encoder = new FrameEncoder(byteOrder);
  const out: Buffer[] = [];
  frames.forEach((f, i) => {
    if (pieces[i % pieces.length] && f.payload.length > 1) {
      encoder.header(f.type, f.flags, f.code, f.id, f.payload.length);
      const half = f.payload.length >> 1;
      encoder.append(f.payload.subarray(0, half));
      encoder.append(f.payload.subarray(half));
    } else {
      encoder.frame(f.type, f.flags, f.code, f.id, f.payload);
    }
    if (i % 3 === 2) out.push(...encoder.take()); // takes in between must not disturb anything
  });
  out.push(...encoder.take());
  return Buffer.concat(out);
}

function expected(frames: GenFrame[]): Outcome['frames'] {
  return frames.map((f) => ({
    type: f.type,
    flags: f.flags,
    code: f.code,
    id: f.id,
    payload: Buffer.from(f.payload).toString('hex'),
  }));
}

const cuts = fc.array(fc.nat(), { maxLength: 40 });

/**
 * Garbage that looks like frames: headers with a real type, random flags, code and reserved
 * byte, lengths around the limit, and payloads shorter or longer than announced, mixed with
 * random bytes. Uniform noise alone rarely reaches the checks after the type.
 */
function structuredGarbage(byteOrder: ByteOrder) {
  const piece = fc.oneof(
    fc.uint8Array({ maxLength: 30 }),
    fc
      .record({
        type: fc.constantFrom(0, 1, 2, 3, 4, 0x10, 0x11, 0x12, 0x13, 0x14),
        flags: fc.constantFrom(0, 0, 1, 2),
        code: fc.constantFrom(0, 0, 1, 200),
        reserved: fc.constantFrom(0, 0, 0, 1),
        id: u32,
        length: fc.integer({ min: 0, max: 2 * MAX }),
        sent: fc.integer({ min: 0, max: 2 * MAX }),
      })
      .map((h) => {
        const b = Buffer.alloc(HEADER + Math.min(h.length, h.sent));
        b[0] = h.type;
        b[1] = h.flags;
        b[2] = h.code;
        b[3] = h.reserved;
        if (byteOrder === 'le') {
          b.writeUInt32LE(h.id, 4);
          b.writeUInt32LE(h.length, 8);
        } else {
          b.writeUInt32BE(h.id, 4);
          b.writeUInt32BE(h.length, 8);
        }
        return new Uint8Array(b);
      }),
  );
  return fc.array(piece, { maxLength: 12 }).map((pieces) => new Uint8Array(Buffer.concat(pieces)));
}

/**
 * Frames as an append-only reader sees them: a frame of a `split` type with flags 0 followed by
 * one of the same type and id is joined with it (pieces, or frames that carry one answer on).
 */
function appended(frames: Outcome['frames'], split: readonly number[]): Outcome['frames'] {
  const out: Outcome['frames'] = [];
  for (const f of frames) {
    const last = out.at(-1);
    if (
      last &&
      split.includes(f.type) &&
      last.type === f.type &&
      last.id === f.id &&
      last.flags === 0
    ) {
      out[out.length - 1] = { ...f, payload: last.payload + f.payload };
    } else out.push({ ...f });
  }
  return out;
}

// --- properties ---------------------------------------------------------------------------------

test('property: valid frames survive encoding and any split, in both directions and byte orders', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<FrameSource>('client', 'server'),
      fc.constantFrom<ByteOrder>('le', 'be'),
      fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }),
      cuts,
      fc.array(fc.oneof(clientFrame(), serverFrame()), { maxLength: 25 }),
      (source, byteOrder, pieces, cutsA, mixed) => {
        // Keep only frames of the chosen direction; WINDOW payloads are re-encoded in the order.
        const frames = mixed
          .filter((f) =>
            source === 'client'
              ? f.type >= ClientFrame.START && f.type <= ClientFrame.GOODBYE
              : f.type <= ServerFrame.FATAL,
          )
          .map((f) =>
            source === 'client' && f.type === ClientFrame.WINDOW
              ? {
                  ...f,
                  payload: windowPayload(Buffer.from(f.payload).readUInt32LE(0), byteOrder),
                }
              : f,
          );
        const bytes = encodeAll(frames, byteOrder, pieces);
        const whole = decode(bytes, [], source, byteOrder);
        const split = decode(bytes, cutsA, source, byteOrder);
        assert.equal(whole.error, undefined);
        assert.deepEqual(whole.frames, expected(frames));
        assert.deepEqual(split, { ...whole, maxBuffered: split.maxBuffered });
        assert.ok(split.maxBuffered <= MAX + HEADER);
        // Handed over in pieces (as the client takes OK frames): the same bytes, flags on the
        // last piece, nothing held for them, and every other frame whole.
        const types: readonly number[] =
          source === 'server' ? [ServerFrame.OK] : [ClientFrame.DATA];
        const pieces2 = decode(bytes, cutsA, source, byteOrder, MAX, types);
        assert.equal(pieces2.error, undefined);
        assert.deepEqual(appended(pieces2.frames, types), appended(whole.frames, types));
        assert.deepEqual(
          pieces2.frames.filter((f) => !types.includes(f.type)),
          whole.frames.filter((f) => !types.includes(f.type)),
        );
        assert.ok(pieces2.maxBuffered <= HEADER + 300, `held ${pieces2.maxBuffered}`); // the largest whole frame here
      },
    ),
    { numRuns: 300 },
  );
});

test('property: garbage gives the same frames and the same coded error under any split, never more than max + header held', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<FrameSource>('client', 'server'),
      fc
        .constantFrom<ByteOrder>('le', 'be')
        .chain((byteOrder) =>
          fc.tuple(
            fc.constant(byteOrder),
            fc.oneof(fc.uint8Array({ maxLength: 2_000 }), structuredGarbage(byteOrder)),
          ),
        ),
      cuts,
      cuts,
      (source, [byteOrder, bytes], cutsA, cutsB) => {
        const a = decode(bytes, cutsA, source, byteOrder);
        const b = decode(bytes, cutsB, source, byteOrder);
        assert.deepEqual(a.frames, b.frames);
        assert.deepEqual(a.error, b.error);
        assert.ok(a.maxBuffered <= MAX + HEADER && b.maxBuffered <= MAX + HEADER);
      },
    ),
    { numRuns: 500 },
  );
});

test('property: mutated valid streams decode to frames then at most a coded error, split-independent', () => {
  const mutation = fc.oneof(
    fc.record({
      kind: fc.constant('flip' as const),
      at: fc.nat(),
      bits: fc.integer({ min: 1, max: 255 }),
    }),
    fc.record({
      kind: fc.constant('insert' as const),
      at: fc.nat(),
      byte: fc.integer({ min: 0, max: 255 }),
    }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  );
  fc.assert(
    fc.property(
      fc.array(clientFrame(), { minLength: 1, maxLength: 15 }),
      fc.array(mutation, { minLength: 1, maxLength: 4 }),
      cuts,
      (frames, mutations, cutsA) => {
        let bytes = encodeAll(frames, 'le', [false]);
        for (const m of mutations) {
          const at = bytes.length === 0 ? 0 : m.at % bytes.length;
          if (m.kind === 'flip' && bytes.length > 0) {
            bytes = Buffer.from(bytes);
            bytes[at] = bytes[at]! ^ m.bits;
          } else if (m.kind === 'insert') {
            bytes = Buffer.concat([
              bytes.subarray(0, at),
              Buffer.from([m.byte]),
              bytes.subarray(at),
            ]);
          } else if (m.kind === 'delete') {
            bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1)]);
          } else {
            bytes = bytes.subarray(0, at);
          }
        }
        const whole = decode(bytes, [], 'client');
        const split = decode(bytes, cutsA, 'client');
        assert.deepEqual(split.frames, whole.frames);
        assert.deepEqual(split.error, whole.error);
        assert.ok(split.maxBuffered <= MAX + HEADER);
        // Whatever the decoder accepted is a frame a valid sender could have written.
        for (const f of whole.frames) {
          assert.ok(f.type >= ClientFrame.START && f.type <= ClientFrame.GOODBYE);
          assert.ok(f.payload.length / 2 <= MAX);
        }
      },
    ),
    { numRuns: 400 },
  );
});

test('property: a truncated stream is reported as truncated at its end, never as a frame', () => {
  fc.assert(
    fc.property(fc.array(clientFrame(), { minLength: 1, maxLength: 8 }), fc.nat(), (frames, at) => {
      const bytes = encodeAll(frames, 'le', [false]);
      const cut = bytes.subarray(0, at % bytes.length);
      const decoder = new FrameDecoder({ byteOrder: 'le', maxPayload: MAX, source: 'client' });
      let count = 0;
      decoder.push(cut, () => count++);
      if (decoder.buffered === 0) {
        decoder.end(); // a clean frame boundary
      } else {
        assert.throws(
          () => decoder.end(),
          (err: unknown) =>
            err instanceof TaskProtocolError && err.errorCode === ErrorCode.TRUNCATED,
        );
      }
      assert.ok(count < frames.length);
    }),
    { numRuns: 300 },
  );
});

test('property: client hellos round-trip, and any bytes give the same hello or coded error under any split', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<ByteOrder>('le', 'be'),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 1_024, max: 0xffff_ffff }),
      fc.integer({ min: 1, max: 0xffff_ffff }),
      fc.uint8Array({ maxLength: 40 }),
      cuts,
      (byteOrder, flags, maxFramePayload, initialWindow, trailer, cutsA) => {
        const hello = { version: 1, byteOrder, flags, maxFramePayload, initialWindow };
        const bytes = Buffer.concat([encodeClientHello(hello), trailer]);
        const decoder = new ClientHelloDecoder();
        let got: ReturnType<ClientHelloDecoder['push']>;
        let from = 0;
        const points = [...new Set(cutsA.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        let rest = Buffer.alloc(0);
        for (const to of [...points, bytes.length]) {
          if (to < from || got !== undefined) continue;
          got = decoder.push(bytes.subarray(from, to));
          if (got) rest = Buffer.concat([decoder.rest, bytes.subarray(to)]);
          from = to;
        }
        assert.deepEqual(got, { ...hello });
        assert.deepEqual(rest, Buffer.from(trailer));
      },
    ),
    { numRuns: 200 },
  );
  const helloOutcome = (bytes: Uint8Array, cutsA: number[]) => {
    const decoder = new ClientHelloDecoder();
    const points = [...new Set(cutsA.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
    let from = 0;
    try {
      for (const to of [...points, bytes.length]) {
        if (to < from) continue;
        const hello = decoder.push(bytes.subarray(from, to));
        from = to;
        if (hello) return { hello };
      }
      return { incomplete: decoder.buffered };
    } catch (err) {
      assert.ok(err instanceof TaskProtocolError, `a non-protocol error escaped: ${String(err)}`);
      return { code: err.errorCode, message: err.message };
    }
  };
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 30 }),
        // Mostly valid prefixes, so the later checks are reached too.
        fc
          .tuple(fc.uint8Array({ maxLength: 12 }), fc.constantFrom(1, 2))
          .map(([tail, version]) =>
            Buffer.concat([Buffer.from([0x42, 0x52, 0x54, 0x48, version, 0x4c]), tail]),
          ),
      ),
      cuts,
      cuts,
      (bytes, cutsA, cutsB) => {
        const a = helloOutcome(bytes, cutsA);
        const b = helloOutcome(bytes, cutsB);
        assert.deepEqual(a, b);
        if ('incomplete' in a) assert.ok((a.incomplete ?? 0) <= 16);
      },
    ),
    { numRuns: 500 },
  );
});

test('property: server hellos and refusals round-trip under any split', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<ByteOrder>('le', 'be'),
      fc.oneof(
        fc.record({
          version: fc.constant(1),
          flags: fc.integer({ min: 0, max: 0xffff }),
          maxFramePayload: fc.integer({ min: 1_024, max: 0xffff_ffff }),
          maxMessageSize: u32,
          maxTasksInFlight: u32,
          waitTimeout: u32,
        }),
        fc.record({
          version: fc.integer({ min: 0, max: 255 }),
          code: fc.integer({ min: 0, max: 255 }),
          message: fc.string({ maxLength: 80 }),
        }),
      ),
      cuts,
      (byteOrder, hello, cutsA) => {
        const bytes = 'code' in hello ? encodeRefusal(hello) : encodeServerHello(hello, byteOrder);
        const decoder = new ServerHelloDecoder(byteOrder);
        const points = [...new Set(cutsA.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        let got: ReturnType<ServerHelloDecoder['push']>;
        let from = 0;
        for (const to of [...points, bytes.length]) {
          if (to < from || got) continue;
          got = decoder.push(bytes.subarray(from, to));
          from = to;
        }
        assert.ok(got);
        assert.deepEqual(got, { ...hello }); // fast-check's records have a null prototype
        assert.equal(isRefusal(got), 'code' in hello);
      },
    ),
    { numRuns: 300 },
  );
});

// --- every rule, with its code ----------------------------------------------------------------

function header(
  type: number,
  flags: number,
  code: number,
  reserved: number,
  id: number,
  length: number,
): Buffer {
  const b = Buffer.alloc(HEADER);
  b[0] = type;
  b[1] = flags;
  b[2] = code;
  b[3] = reserved;
  b.writeUInt32LE(id, 4);
  b.writeUInt32LE(length, 8);
  return b;
}

function errorOf(bytes: Buffer, source: FrameSource): number | undefined {
  return decode(bytes, [], source).error?.code;
}

test('each header rule fails with its own code', () => {
  const C = ClientFrame;
  const S = ServerFrame;
  const cases: [string, Buffer, FrameSource, number][] = [
    [
      'a server type from a client',
      header(S.OK, 0, 0, 0, 1, 0),
      'client',
      ErrorCode.UNKNOWN_FRAME_TYPE,
    ],
    [
      'a client type from a server',
      header(C.START, 0, 1, 0, 1, 0),
      'server',
      ErrorCode.UNKNOWN_FRAME_TYPE,
    ],
    ['type 0x7f', header(0x7f, 0, 0, 0, 1, 0), 'client', ErrorCode.UNKNOWN_FRAME_TYPE],
    [
      'a payload over the maximum',
      header(C.START, 0, 1, 0, 1, MAX + 1),
      'client',
      ErrorCode.FRAME_TOO_LARGE,
    ],
    ['a reserved byte', header(C.START, 1, 1, 7, 1, 0), 'client', ErrorCode.BAD_FRAME],
    ['an unknown flag', header(C.START, 2, 1, 0, 1, 0), 'client', ErrorCode.BAD_FRAME],
    ['END on CANCEL', header(C.CANCEL, 1, 0, 0, 1, 0), 'client', ErrorCode.BAD_FRAME],
    ['a code on DATA', header(C.DATA, 0, 3, 0, 1, 0), 'client', ErrorCode.BAD_FRAME],
    ['a payload on CANCEL', header(C.CANCEL, 0, 0, 0, 1, 1), 'client', ErrorCode.BAD_FRAME],
    ['a WINDOW of 3 bytes', header(C.WINDOW, 0, 0, 0, 1, 3), 'client', ErrorCode.BAD_FRAME],
    [
      'a client GOODBYE with an id',
      header(C.GOODBYE, 0, 0, 0, 9, 0),
      'client',
      ErrorCode.BAD_FRAME,
    ],
    ['END on ERROR', header(S.ERROR, 1, 200, 0, 1, 0), 'server', ErrorCode.BAD_FRAME],
    ['a code on OK', header(S.OK, 1, 5, 0, 1, 0), 'server', ErrorCode.BAD_FRAME],
    ['a payload on PROCESSING', header(S.PROCESSING, 0, 0, 0, 1, 2), 'server', ErrorCode.BAD_FRAME],
    [
      'a server GOODBYE with an id',
      header(S.GOODBYE, 0, 204, 0, 1, 0),
      'server',
      ErrorCode.BAD_FRAME,
    ],
    [
      'a WINDOW of 0',
      Buffer.concat([header(C.WINDOW, 0, 0, 0, 1, 4), Buffer.alloc(4)]),
      'client',
      ErrorCode.BAD_FRAME,
    ],
  ];
  for (const [what, bytes, source, code] of cases) {
    assert.equal(errorOf(bytes, source), code, what);
  }
});

test('a frame over the maximum is refused from its header alone, before any payload is held', () => {
  const decoder = new FrameDecoder({ byteOrder: 'be', maxPayload: 1_024, source: 'client' });
  const h = Buffer.alloc(HEADER);
  h[0] = ClientFrame.START;
  h.writeUInt32BE(0xffff_ffff, 8);
  assert.throws(
    () => decoder.push(h, () => {}),
    (err: unknown) =>
      err instanceof TaskProtocolError &&
      err.errorCode === ErrorCode.FRAME_TOO_LARGE &&
      /4294967295 bytes is over the maximum of 1024/.test(err.message),
  );
});

test('the decoder hands out views of whole frames and joins split payloads once', () => {
  const order: ByteOrder = 'le';
  const a = encodeFrame(order, ClientFrame.START, 1, 7, 1, Buffer.from('hello'));
  const b = encodeFrame(order, ClientFrame.DATA, 0, 0, 2, Buffer.from('world!'));
  const decoder = new FrameDecoder({ byteOrder: order, maxPayload: MAX, source: 'client' });
  const frames: Frame[] = [];
  const both = Buffer.concat([a, b]);
  decoder.push(both.subarray(0, a.length + 15), (f) => frames.push({ ...f }));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]!.payload.buffer, both.buffer, 'a whole frame is a view, not a copy');
  assert.equal(decoder.buffered, 15);
  decoder.push(both.subarray(a.length + 15), (f) => frames.push({ ...f }));
  assert.equal(frames[1]!.payload.toString(), 'world!');
  assert.equal(decoder.buffered, 0);
  decoder.end();
});

test('property: encoders interleaved in one process (they share a slab) each write exactly their own frames', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<ByteOrder>('le', 'be'),
      fc.array(
        fc.record({
          encoder: fc.integer({ min: 0, max: 3 }),
          frame: serverFrame(),
          pieces: fc.boolean(),
          take: fc.boolean(),
        }),
        { maxLength: 60 },
      ),
      (byteOrder, steps) => {
        const encoders = [0, 1, 2, 3].map(() => new FrameEncoder(byteOrder));
        const sent: GenFrame[][] = [[], [], [], []];
        const taken: Buffer[][] = [[], [], [], []];
        const copies: Buffer[][] = [[], [], [], []];
        for (const { encoder: i, frame: f, pieces, take } of steps) {
          const encoder = encoders[i]!;
          if (pieces && f.payload.length > 1) {
            encoder.header(f.type, f.flags, f.code, f.id, f.payload.length);
            encoder.append(f.payload.subarray(0, 1));
            encoder.append(f.payload.subarray(1));
          } else {
            encoder.frame(f.type, f.flags, f.code, f.id, f.payload);
          }
          sent[i]!.push(f);
          if (take) {
            for (const b of encoder.take()) {
              taken[i]!.push(b);
              copies[i]!.push(Buffer.from(b));
            }
          }
        }
        encoders.forEach((encoder, i) => {
          taken[i]!.push(...encoder.take());
          const decoded = decode(Buffer.concat(taken[i]!), [], 'server', byteOrder);
          assert.equal(decoded.error, undefined);
          assert.deepEqual(decoded.frames, expected(sent[i]!));
          for (const [k, copy] of copies[i]!.entries()) {
            assert.deepEqual(taken[i]![k], copy, 'bytes handed out are never written again');
          }
        });
      },
    ),
    { numRuns: 300 },
  );
});

test('encoders share their slab: a connection that answered once does not keep 64 KiB of its own', () => {
  const a = new FrameEncoder('le');
  const b = new FrameEncoder('le');
  a.frame(ServerFrame.OK, 1, 0, 1, Buffer.from('a'));
  const fromA = a.take();
  b.frame(ServerFrame.OK, 1, 0, 2, Buffer.from('b'));
  const fromB = b.take();
  assert.equal(fromA[0]!.buffer, fromB[0]!.buffer);
  assert.notEqual(fromA[0]!.byteOffset, fromB[0]!.byteOffset);
});

test('the encoder batches small frames into one buffer, references large payloads, and never rewrites what it handed out', () => {
  const encoder = new FrameEncoder('le');
  for (let i = 0; i < 100; i++) encoder.frame(ServerFrame.OK, 1, 0, i, Buffer.from(`r${i}`));
  const first = encoder.take();
  assert.equal(first.length, 1, 'a hundred small frames are one buffer');
  const snapshot = Buffer.from(first[0]!);
  const big = Buffer.alloc(10_000, 7);
  encoder.frame(ServerFrame.OK, 1, 0, 1, big);
  for (let i = 0; i < 2_000; i++) encoder.frame(ServerFrame.OK, 1, 0, i, Buffer.alloc(30, i));
  const second = encoder.take();
  assert.ok(second.includes(big), 'a large payload is passed by reference');
  assert.deepEqual(first[0], snapshot, 'bytes handed out earlier are untouched');
  const decoded = decode(Buffer.concat(second), [], 'server', 'le', 16_384);
  assert.equal(decoded.frames.length, 2_001);
  assert.throws(() => {
    encoder.header(ServerFrame.OK, 0, 0, 1, 5);
    encoder.take();
  }, /not complete/);
});

test('the client hello is refused at the first byte that cannot be right', () => {
  const cases: [number[], number, RegExp][] = [
    [[0x47], ErrorCode.BAD_HANDSHAKE, /byte 0 .* is 0x47, expected 0x42/],
    [
      [0x42, 0x52, 0x54, 0x48, 2],
      ErrorCode.UNSUPPORTED_VERSION,
      /unsupported version 2; this server speaks 1/,
    ],
    [[0x42, 0x52, 0x54, 0x48, 1, 0x58], ErrorCode.BAD_HANDSHAKE, /byte order 0x58/],
  ];
  for (const [bytes, code, message] of cases) {
    const decoder = new ClientHelloDecoder();
    assert.throws(
      () => decoder.push(Buffer.from(bytes)),
      (err: unknown) =>
        err instanceof TaskProtocolError && err.errorCode === code && message.test(err.message),
    );
  }
  const small = encodeClientHello({
    version: 1,
    byteOrder: 'be',
    flags: 0,
    maxFramePayload: 512,
    initialWindow: 1,
  });
  assert.throws(() => new ClientHelloDecoder().push(small), /max frame payload 512 is under 1024/);
  const partial = new ClientHelloDecoder();
  assert.equal(partial.push(Buffer.from('BRTH')), undefined);
  assert.throws(
    () => partial.end(),
    (err: unknown) => (err as TaskProtocolError).errorCode === ErrorCode.TRUNCATED,
  );
});

test('text is cut on a UTF-8 character boundary', () => {
  assert.equal(truncateUtf8('héllo', 2).toString(), 'h');
  assert.equal(truncateUtf8('héllo', 3).toString(), 'hé');
  assert.equal(truncateUtf8('€€', 5).toString(), '€');
  assert.equal(truncateUtf8('plain', 10).toString(), 'plain');
  const refusal = encodeRefusal({ version: 1, code: 221, message: 'x'.repeat(300) });
  assert.equal(refusal.length, 8 + 255);
});
