/**
 * Writes docs/protocol-vectors.json, the task protocol's conformance vectors (docs/protocol.md,
 * "Conformance vectors"): byte-exact exchanges built from the page's rules with berth's codec.
 * test/protocol-vectors.test.ts replays every vector against a real server and checks that the
 * file is what this script writes, so the two cannot drift.
 *
 *   node --import tsx scripts/protocol-vectors.ts          (rewrites the file)
 *   node --import tsx scripts/protocol-vectors.ts --check  (exit 1 if the file is stale)
 */

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeClientHello, encodeFrame, encodeServerHello } from '../src/protocol/codec.js';
import { type ByteOrder, ClientFrame, ErrorCode, ServerFrame } from '../src/protocol/codes.js';

export const VECTORS_FILE = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'docs',
  'protocol-vectors.json',
);

/** A server's settings, as `TaskServer` options (the ones a vector may change). */
export interface VectorServer {
  maxFramePayload?: number;
  maxMessageSize?: number;
  maxTasksInFlight?: number;
  maxClients?: number;
  maxOutboundBytes?: number;
  waitTimeout?: number;
  readTimeout?: number;
  writeTimeout?: number;
  processingInterval?: number;
}

/** One step of a vector. */
export type Step =
  /** The client sends these bytes. */
  | { send: string }
  /** The server's next bytes are exactly these. */
  | { expect: string }
  /**
   * The server's next frame has this header (type, flags, code, id) and a UTF-8 text payload
   * (an error message, a reason): any text passes for the protocol; `text` is berth's wording.
   */
  | { frame: { type: number; flags: number; code: number; id: number }; text: string }
  /** The server's answer to the hello is a refusal with this version and code; `text` as above. */
  | { refusal: { version: number; code: number }; text: string }
  /** The server closes the connection, sending nothing more. */
  | { end: true }
  /** The server's operator acts: `close` (a graceful shutdown) or `disconnect` (this client). */
  | { server: 'close' | 'disconnect' }
  /** Another client connects and shakes hands first (it holds a place). */
  | { occupy: true }
  /** Nothing happens for this many ms. */
  | { wait: number };

export interface Vector {
  name: string;
  about: string;
  byteOrder: ByteOrder;
  server?: VectorServer;
  steps: Step[];
}

const DEFAULTS = {
  maxFramePayload: 1_048_576,
  maxMessageSize: 4_194_304,
  maxTasksInFlight: 1_024,
  waitTimeout: 1_800_000,
};

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** The bytes a vector's client and server send, in its byte order. */
function wire(order: ByteOrder, server: VectorServer = {}) {
  const frame = (
    type: number,
    flags: number,
    code: number,
    id: number,
    payload?: string | Buffer,
  ) =>
    hex(
      encodeFrame(
        order,
        type,
        flags,
        code,
        id,
        typeof payload === 'string' ? Buffer.from(payload) : payload,
      ),
    );
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    if (order === 'le') b.writeUInt32LE(n);
    else b.writeUInt32BE(n);
    return b;
  };
  return {
    hello: (window = 262_144, extra: { version?: number; maxFramePayload?: number } = {}) =>
      hex(
        encodeClientHello({
          version: extra.version ?? 1,
          byteOrder: order,
          flags: 0,
          maxFramePayload: extra.maxFramePayload ?? 1_048_576,
          initialWindow: window,
        }),
      ),
    serverHello: () =>
      hex(
        encodeServerHello(
          {
            version: 1,
            flags: 0,
            maxFramePayload: server.maxFramePayload ?? DEFAULTS.maxFramePayload,
            maxMessageSize: server.maxMessageSize ?? DEFAULTS.maxMessageSize,
            maxTasksInFlight: server.maxTasksInFlight ?? DEFAULTS.maxTasksInFlight,
            waitTimeout: server.waitTimeout ?? DEFAULTS.waitTimeout,
          },
          order,
        ),
      ),
    start: (code: number, id: number, message = '', end = true) =>
      frame(ClientFrame.START, end ? 1 : 0, code, id, message),
    data: (id: number, bytes: string, end = false) =>
      frame(ClientFrame.DATA, end ? 1 : 0, 0, id, bytes),
    cancel: (id: number) => frame(ClientFrame.CANCEL, 0, 0, id),
    window: (id: number, n: number) => frame(ClientFrame.WINDOW, 0, 0, id, u32(n)),
    goodbye: () => frame(ClientFrame.GOODBYE, 0, 0, 0),
    ok: (id: number, payload = '', end = true) =>
      frame(ServerFrame.OK, end ? 1 : 0, 0, id, payload),
    processing: (id: number) => frame(ServerFrame.PROCESSING, 0, 0, id),
    raw: frame,
  };
}

const error = (code: number, id: number, text: string): Step => ({
  frame: { type: ServerFrame.ERROR, flags: 0, code, id },
  text,
});
const fatal = (code: number, id: number, text: string): Step => ({
  frame: { type: ServerFrame.FATAL, flags: 0, code, id },
  text,
});
const goodbye = (code: number, text: string): Step => ({
  frame: { type: ServerFrame.GOODBYE, flags: 0, code, id: 0 },
  text,
});
const refusal = (code: number, text: string, version = 1): Step => ({
  refusal: { version, code },
  text,
});
const END: Step = { end: true };

/** The demo tasks (docs/protocol.md, "Demo tasks"). */
const ECHO = 1;
const SLEEP = 2;
const BYTES = 3;
const SUM = 4;
const FAIL = 5;
const INTERNAL = 6;

/** A vector whose client says hello first, and gets the server's; then `steps`. */
function open(
  name: string,
  about: string,
  steps: (w: ReturnType<typeof wire>) => Step[],
  options: { byteOrder?: ByteOrder; server?: VectorServer; window?: number } = {},
): Vector {
  const order = options.byteOrder ?? 'le';
  const w = wire(order, options.server);
  return {
    name,
    about,
    byteOrder: order,
    ...(options.server ? { server: options.server } : {}),
    steps: [{ send: w.hello(options.window) }, { expect: w.serverHello() }, ...steps(w)],
  };
}

export function buildVectors(): Vector[] {
  const le = wire('le');
  const list: Vector[] = [
    // --- handshake ---------------------------------------------------------------------------
    open(
      'handshake-le',
      'A little-endian hello is accepted; the server hello carries its limits; echo works.',
      (w) => [{ send: w.start(ECHO, 1, 'hello') }, { expect: w.ok(1, 'hello') }],
    ),
    open(
      'handshake-be',
      'The same in big-endian: every u16 and u32 after the hello is big-endian, both ways.',
      (w) => [{ send: w.start(ECHO, 258, 'hello') }, { expect: w.ok(258, 'hello') }],
      { byteOrder: 'be' },
    ),
    {
      name: 'refusal-bad-magic',
      about: 'Bad magic: refused with 220 as soon as the fourth byte is in.',
      byteOrder: 'le',
      steps: [
        { send: hex(Buffer.from('BRTX')) },
        refusal(
          ErrorCode.BAD_HANDSHAKE,
          'bad handshake: byte 3 of the client hello is 0x58, expected 0x48 (magic "BRTH")',
        ),
        END,
      ],
    },
    {
      name: 'refusal-version',
      about:
        'Version 2: refused with 221, the refusal naming version 1, the one the server speaks.',
      byteOrder: 'le',
      steps: [
        { send: le.hello(262_144, { version: 2 }) },
        refusal(ErrorCode.UNSUPPORTED_VERSION, 'unsupported version 2; this server speaks 1'),
        END,
      ],
    },
    {
      name: 'refusal-byte-order',
      about: 'A byte-order byte that is neither L nor B: 220.',
      byteOrder: 'le',
      steps: [
        { send: '425254480158' },
        refusal(
          ErrorCode.BAD_HANDSHAKE,
          'bad handshake: byte order 0x58; expected 0x4c (L) or 0x42 (B)',
        ),
        END,
      ],
    },
    {
      name: 'refusal-small-frame',
      about: 'A max frame payload under 1,024: 220.',
      byteOrder: 'le',
      steps: [
        { send: le.hello(262_144, { maxFramePayload: 512 }) },
        refusal(ErrorCode.BAD_HANDSHAKE, 'bad handshake: max frame payload 512 is under 1024'),
        END,
      ],
    },
    {
      name: 'refusal-window-0',
      about: 'An initial window of 0: 220.',
      byteOrder: 'le',
      steps: [
        { send: le.hello(0) },
        refusal(ErrorCode.BAD_HANDSHAKE, 'bad handshake: initial window is 0'),
        END,
      ],
    },
    {
      name: 'refusal-too-many-clients',
      about: 'The server takes one client (maxClients 1) and has one: 222.',
      byteOrder: 'le',
      server: { maxClients: 1 },
      steps: [
        { occupy: true },
        { send: le.hello() },
        refusal(ErrorCode.TOO_MANY_CLIENTS, 'too many clients: this server takes 1'),
        END,
      ],
    },
    {
      name: 'refusal-shutting-down',
      about: 'A connection whose hello has not arrived when the server shuts down: refusal 204.',
      byteOrder: 'le',
      steps: [
        { wait: 100 },
        { server: 'close' },
        refusal(ErrorCode.SHUTTING_DOWN, 'server shutting down'),
        END,
      ],
    },
    {
      name: 'refusal-read-timeout',
      about: 'A hello not whole within the read timeout of connecting (200 ms here): 231.',
      byteOrder: 'le',
      server: { readTimeout: 200 },
      steps: [
        { send: '42525448' },
        refusal(ErrorCode.READ_TIMEOUT, 'no complete hello within 200 ms of connecting'),
        END,
      ],
    },

    // --- tasks, responses, flow control ------------------------------------------------------
    open(
      'message-and-response-in-pieces',
      'A 5-byte message as START + DATA + DATA END; a client window of 3, so the response comes in pieces as WINDOW grants more (docs/protocol.md, "A message in pieces").',
      (w) => [
        { send: w.start(ECHO, 7, 'he', false) },
        { send: w.data(7, 'l') },
        { send: w.data(7, 'lo', true) },
        { expect: w.ok(7, 'hel', false) },
        { send: w.window(7, 10) },
        { expect: w.ok(7, 'lo', true) },
      ],
      { window: 3 },
    ),
    open(
      'streamed-response',
      'A streamed response (the demo `bytes`) within the window: one OK END.',
      (w) => [
        { send: w.start(BYTES, 1, '30') },
        { expect: w.ok(1, 'abcdefghijklmnopqrstuvwxyzabcd') },
      ],
    ),
    open('sum', 'The demo `sum`: signed decimals; the sum in shortest round-trip form.', (w) => [
      { send: w.start(SUM, 1, '0.1 0.2') },
      { expect: w.ok(1, '0.30000000000000004') },
      { send: w.start(SUM, 2, '') },
      { expect: w.ok(2, '0') },
      { send: w.start(SUM, 3, '0x10') },
      error(1, 3, 'not a number: "0x10"'),
    ]),
    open(
      'reserved-tasks',
      'Keep-alive (250) answers OK END, empty; list tasks (251) answers the registered tasks.',
      (w) => [
        { send: w.start(250, 1) },
        { expect: w.ok(1) },
        { send: w.start(251, 2) },
        {
          expect: w.ok(
            2,
            Buffer.concat(
              ['echo', 'sleep', 'bytes', 'sum', 'fail', 'internal'].map((name, i) =>
                Buffer.concat([Buffer.from([i + 1, name.length]), Buffer.from(name)]),
              ),
            ).toString('latin1'),
          ),
        },
      ],
    ),
    open(
      'processing',
      'A task quiet for the processing interval (200 ms here) gets PROCESSING, then its answer.',
      (w) => [
        { send: w.start(SLEEP, 1, '350') },
        { expect: w.processing(1) },
        { expect: w.ok(1, 'slept 350 ms') },
      ],
      { server: { processingInterval: 200 } },
    ),

    // --- errors for a task (the connection stays) --------------------------------------------
    open(
      'cancelled-200',
      'CANCEL while the task runs: ERROR 200; DATA crossing a CANCEL is ignored.',
      (w) => [
        { send: w.start(SLEEP, 1, '10000') },
        { send: w.cancel(1) },
        error(ErrorCode.CANCELLED, 1, 'cancelled'),
        { send: w.start(ECHO, 2, 'x', false) },
        { send: w.cancel(2) },
        error(ErrorCode.CANCELLED, 2, 'cancelled'),
        { send: w.data(2, 'crossed the cancel', true) },
        { send: w.start(250, 3) },
        { expect: w.ok(3) },
      ],
    ),
    open('unknown-task-201', 'A task code nothing is registered under: ERROR 201.', (w) => [
      { send: w.start(77, 1) },
      error(ErrorCode.UNKNOWN_TASK, 1, 'no task has code 77'),
    ]),
    open(
      'too-many-tasks-202',
      'Over maxTasksInFlight (1 here): ERROR 202 for that START; the first task goes on.',
      (w) => [
        { send: w.start(SLEEP, 1, '10000') },
        { send: w.start(ECHO, 2, 'x') },
        error(ErrorCode.TOO_MANY_TASKS, 2, 'too many tasks in flight: the limit is 1'),
        { send: w.cancel(1) },
        error(ErrorCode.CANCELLED, 1, 'cancelled'),
      ],
      { server: { maxTasksInFlight: 1 } },
    ),
    open(
      'message-too-large-203',
      'A message over maxMessageSize (8 here): ERROR 203; the connection stays.',
      (w) => [
        { send: w.start(ECHO, 1, '123456789') },
        error(ErrorCode.MESSAGE_TOO_LARGE, 1, 'message of at least 9 bytes is over the limit of 8'),
        { send: w.start(ECHO, 2, '12345678') },
        { expect: w.ok(2, '12345678') },
      ],
      { server: { maxMessageSize: 8 } },
    ),
    open(
      'client-goodbye-204',
      "After the client's GOODBYE: a START gets ERROR 204, the task under way finishes, the server closes; it sends no GOODBYE of its own.",
      (w) => [
        { send: w.start(SLEEP, 1, '200') },
        { send: w.goodbye() },
        { send: w.start(ECHO, 2, 'x') },
        error(ErrorCode.SHUTTING_DOWN, 2, 'no new task after the client said goodbye'),
        { expect: w.ok(1, 'slept 200 ms') },
        END,
      ],
    ),
    open(
      'internal-205',
      'A task that fails without an error code (the demo `internal`): ERROR 205, its details kept on the server.',
      (w) => [{ send: w.start(INTERNAL, 1) }, error(ErrorCode.INTERNAL, 1, 'internal error')],
    ),
    open(
      'application-error',
      'A task that fails with its own code (the demo `fail`): ERROR 42.',
      (w) => [{ send: w.start(FAIL, 1) }, error(42, 1, 'this task always fails')],
    ),
    open(
      'window-stall-232',
      'A response with bytes waiting and a window of 0 for the write timeout (300 ms here): ERROR 232 after the partial response; the connection stays.',
      (w) => [
        { send: w.start(ECHO, 1, 'hi') },
        { expect: w.ok(1, 'h', false) },
        error(
          ErrorCode.WRITE_TIMEOUT,
          1,
          'the client granted no window for task 1 for 300 ms, with 1 bytes of its response waiting',
        ),
        { send: w.start(250, 2) },
        { expect: w.ok(2) },
      ],
      { server: { writeTimeout: 300 }, window: 1 },
    ),

    // --- goodbyes ----------------------------------------------------------------------------
    open(
      'server-goodbye-204',
      'The server shuts down with a task under way: GOODBYE 204; a START after it gets ERROR 204; the task finishes; the server closes.',
      (w) => [
        { send: w.start(SLEEP, 1, '300') },
        { wait: 50 },
        { server: 'close' },
        goodbye(ErrorCode.SHUTTING_DOWN, 'server shutting down'),
        { send: w.start(ECHO, 2, 'x') },
        error(ErrorCode.SHUTTING_DOWN, 2, 'server shutting down'),
        { expect: w.ok(1, 'slept 300 ms') },
        END,
      ],
    ),
    open(
      'wait-timeout-230',
      'No task for the wait timeout (300 ms here): GOODBYE 230, then the close.',
      () => [goodbye(ErrorCode.WAIT_TIMEOUT, 'timeout whilst waiting for task'), END],
      { server: { waitTimeout: 300 } },
    ),
    open(
      'disconnected-233',
      "The server's operator disconnects the client: GOODBYE 233, then the close.",
      () => [
        { server: 'disconnect' },
        goodbye(ErrorCode.DISCONNECTED, 'disconnected by the server'),
        END,
      ],
    ),

    // --- protocol errors: FATAL, then the close ----------------------------------------------
    open(
      'unknown-frame-type-223',
      'A frame type that does not exist: FATAL 223 (task id 0: the frame names no task).',
      (w) => [
        { send: w.raw(0x7f, 0, 0, 5) },
        fatal(ErrorCode.UNKNOWN_FRAME_TYPE, 0, 'unknown frame type 0x7f'),
        END,
      ],
    ),
    open(
      'frame-too-large-224',
      'A frame over maxFramePayload (2,048 here), from its header alone: FATAL 224 naming its task.',
      (w) => [
        // The header of a START of 2,049 bytes (length 0x801, little-endian), and no payload.
        { send: `${w.raw(ClientFrame.START, 1, ECHO, 3).slice(0, 16)}01080000` },
        fatal(
          ErrorCode.FRAME_TOO_LARGE,
          3,
          'START frame payload of 2049 bytes is over the maximum of 2048',
        ),
        END,
      ],
      { server: { maxFramePayload: 2_048 } },
    ),
    open('bad-flags-225', 'START with a flag other than END: FATAL 225 naming its task.', (w) => [
      { send: w.raw(ClientFrame.START, 0x02, ECHO, 4, 'x') },
      fatal(ErrorCode.BAD_FRAME, 4, 'START frame has flags 0x02'),
      END,
    ]),
    open('window-zero-225', 'WINDOW with an increment of 0: FATAL 225.', (w) => [
      { send: w.start(SLEEP, 1, '10000') },
      { send: w.window(1, 0) },
      fatal(ErrorCode.BAD_FRAME, 1, 'WINDOW frame for task 1 has an increment of 0'),
      END,
    ]),
    open(
      'window-overflow-225',
      'WINDOW that takes the window over 2^32-1 (the initial window is already 2^32-1): FATAL 225.',
      (w) => [
        { send: w.start(SLEEP, 1, '10000') },
        { send: w.window(1, 1) },
        fatal(ErrorCode.BAD_FRAME, 1, 'WINDOW for task 1 takes its window over 2^32-1'),
        END,
      ],
      { window: 0xffff_ffff },
    ),
    open(
      'data-after-end-225',
      'DATA for an active task whose message has ended: FATAL 225.',
      (w) => [
        { send: w.start(SLEEP, 1, '10000') },
        { send: w.data(1, 'late') },
        fatal(ErrorCode.BAD_FRAME, 1, 'DATA for task 1 after the end of its message'),
        END,
      ],
    ),
    open('duplicate-id-226', 'START with an id that is active: FATAL 226.', (w) => [
      { send: w.start(SLEEP, 1, '10000') },
      { send: w.start(SLEEP, 1, '10000') },
      fatal(ErrorCode.DUPLICATE_TASK_ID, 1, 'task id 1 is already active'),
      END,
    ]),
    open(
      'read-timeout-frame-231',
      'Half a frame header, then nothing for the read timeout (200 ms here): FATAL 231.',
      (w) => [
        { send: w.start(ECHO, 1, 'x').slice(0, 12) },
        fatal(ErrorCode.READ_TIMEOUT, 0, 'timeout whilst reading a frame: nothing for 200 ms'),
        END,
      ],
      { server: { readTimeout: 200 } },
    ),
    open(
      'read-timeout-message-231',
      'A message started and not continued for the read timeout (200 ms here): FATAL 231 naming its task.',
      (w) => [
        { send: w.start(ECHO, 6, 'x', false) },
        fatal(
          ErrorCode.READ_TIMEOUT,
          6,
          'timeout whilst reading the message of task 6: nothing for 200 ms',
        ),
        END,
      ],
      { server: { readTimeout: 200 } },
    ),
  ];
  return list;
}

/** The file's text: what it is, how to read it, and the vectors. */
export function vectorsDocument(): string {
  const doc = {
    about: [
      'Conformance vectors of the berth task protocol, version 1 (docs/protocol.md). Each vector is one connection to a server with the demo tasks (docs/protocol.md, "Demo tasks") and the default limits except where `server` says otherwise (TaskServer option names; durations in ms).',
      "Steps, in order: `send` (hex: the client writes these bytes); `expect` (hex: the server writes exactly these next); `frame` (the server writes a frame with this type, flags, code and task id whose payload is UTF-8 text: the protocol fixes the header, not the words; `text` is berth's wording); `refusal` (the server answers the hello with a refusal of this version and code; `text` as for frames); `end` (the server closes the connection and sends nothing more); `server` (the operator acts: `close` is a graceful shutdown, `disconnect` disconnects this client); `occupy` (another client connects and shakes hands first); `wait` (ms of nothing).",
      "Integers after the hello are in the vector's byteOrder. A step that waits on the server (a timeout) should be given a few seconds; berth checks its timeouts every quarter of the shortest one.",
      "Not here, because their timing does not suit a byte-exact replay (berth's tests cover them): FATAL 232 for a client that holds the server at its outbound limit, a connection dropped after the write timeout, and the minimum rate of a trickled frame or message; 227 and the dropped connection of 232 are local and send nothing.",
      'Written by scripts/protocol-vectors.ts; replayed against berth by test/protocol-vectors.test.ts.',
    ],
    version: 1,
    defaults: {
      ...DEFAULTS,
      readTimeout: 5_000,
      writeTimeout: 5_000,
      processingInterval: 60_000,
      maxOutboundBytes: 16_777_216,
    },
    vectors: buildVectors(),
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = vectorsDocument();
  if (process.argv.includes('--check')) {
    const current = readFileSync(VECTORS_FILE, 'utf8');
    if (current !== text) {
      console.error(
        'docs/protocol-vectors.json is stale: run node --import tsx scripts/protocol-vectors.ts',
      );
      process.exit(1);
    }
  } else {
    writeFileSync(VECTORS_FILE, text);
    console.log(`wrote ${VECTORS_FILE}`);
  }
}
