/**
 * The task protocol's codec: the hellos, an incremental frame decoder and a batching frame
 * encoder. Pure: it takes and returns bytes and touches no socket, clock or global, so it can be
 * tested with random splits and random garbage (test/protocol-codec.test.ts).
 *
 * Decoding never throws anything but a `TaskProtocolError` carrying the protocol's code, and never
 * holds more than one frame header plus the negotiated maximum payload. docs/protocol.md is the
 * specification of every byte here.
 */

import { TaskProtocolError } from '../errors.js';
import {
  BYTE_ORDER_BE,
  BYTE_ORDER_LE,
  type ByteOrder,
  CLIENT_HELLO_SIZE,
  ClientFrame,
  ErrorCode,
  FLAG_END,
  FRAME_HEADER_SIZE,
  MAGIC,
  MAX_REFUSAL_MESSAGE,
  MAX_U32,
  MIN_FRAME_PAYLOAD,
  PROTOCOL_VERSION,
  REFUSAL_HEADER_SIZE,
  SERVER_HELLO_SIZE,
  ServerFrame,
} from './codes.js';

/**
 * One decoded frame. `payload` may be a view into the bytes that were pushed. The decoder hands
 * the same `Frame` object to every `onFrame` call (it decodes at a high rate and this saves an
 * allocation per frame): copy the fields you keep. The `payload` Buffer itself is never reused.
 */
export interface Frame {
  type: number;
  flags: number;
  code: number;
  id: number;
  payload: Buffer;
}

/** What a client says in its hello. */
export interface ClientHello {
  version: number;
  byteOrder: ByteOrder;
  /** Features asked for; version 1 defines none. */
  flags: number;
  /** The largest frame payload the client accepts. */
  maxFramePayload: number;
  /** Response bytes the server may send per task before a WINDOW. */
  initialWindow: number;
}

/** What an accepting server says in its hello. */
export interface ServerHello {
  version: number;
  /** Features granted. */
  flags: number;
  maxFramePayload: number;
  maxMessageSize: number;
  maxTasksInFlight: number;
  /** ms; 0 for none. */
  waitTimeout: number;
}

/** A server's refusal of the handshake. */
export interface Refusal {
  /** The highest version the server speaks. */
  version: number;
  code: number;
  message: string;
}

const EMPTY = Buffer.alloc(0);

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

function readU32(b: Buffer, o: number, le: boolean): number {
  return le
    ? (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16)) + b[o + 3]! * 0x1000000
    : b[o]! * 0x1000000 + ((b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!);
}

function writeU32(b: Buffer, o: number, v: number, le: boolean): void {
  if (le) {
    b[o] = v;
    b[o + 1] = v >>> 8;
    b[o + 2] = v >>> 16;
    b[o + 3] = v >>> 24;
  } else {
    b[o] = v >>> 24;
    b[o + 1] = v >>> 16;
    b[o + 2] = v >>> 8;
    b[o + 3] = v;
  }
}

function readU16(b: Buffer, o: number, le: boolean): number {
  return le ? b[o]! | (b[o + 1]! << 8) : (b[o]! << 8) | b[o + 1]!;
}

function writeU16(b: Buffer, o: number, v: number, le: boolean): void {
  if (le) {
    b[o] = v;
    b[o + 1] = v >>> 8;
  } else {
    b[o] = v >>> 8;
    b[o + 1] = v;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

/** Cuts UTF-8 text to at most `max` bytes without splitting a character. */
export function truncateUtf8(text: string, max: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= max) return bytes;
  let end = max;
  // Back off continuation bytes (10xxxxxx) so the cut falls between characters.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

// --- hellos -----------------------------------------------------------------------------------

function writeMagic(b: Buffer): void {
  b[0] = MAGIC[0];
  b[1] = MAGIC[1];
  b[2] = MAGIC[2];
  b[3] = MAGIC[3];
}

/** The client hello's 16 bytes. */
export function encodeClientHello(hello: ClientHello): Buffer {
  const b = Buffer.alloc(CLIENT_HELLO_SIZE);
  const le = hello.byteOrder === 'le';
  writeMagic(b);
  b[4] = hello.version;
  b[5] = le ? BYTE_ORDER_LE : BYTE_ORDER_BE;
  writeU16(b, 6, hello.flags, le);
  writeU32(b, 8, hello.maxFramePayload, le);
  writeU32(b, 12, hello.initialWindow, le);
  return b;
}

/** An accepting server hello's 24 bytes, in the client's byte order. */
export function encodeServerHello(hello: ServerHello, byteOrder: ByteOrder): Buffer {
  const b = Buffer.alloc(SERVER_HELLO_SIZE);
  const le = byteOrder === 'le';
  writeMagic(b);
  b[4] = hello.version;
  b[5] = 0;
  writeU16(b, 6, hello.flags, le);
  writeU32(b, 8, hello.maxFramePayload, le);
  writeU32(b, 12, hello.maxMessageSize, le);
  writeU32(b, 16, hello.maxTasksInFlight, le);
  writeU32(b, 20, hello.waitTimeout, le);
  return b;
}

/** A refusal: the six common bytes, the code, and a message of at most 255 bytes. */
export function encodeRefusal(refusal: Refusal): Buffer {
  const message = truncateUtf8(refusal.message, MAX_REFUSAL_MESSAGE);
  const b = Buffer.alloc(REFUSAL_HEADER_SIZE + message.length);
  writeMagic(b);
  b[4] = refusal.version;
  b[5] = 1;
  b[6] = refusal.code;
  b[7] = message.length;
  message.copy(b, REFUSAL_HEADER_SIZE);
  return b;
}

function checkMagic(b: Buffer, from: number, to: number, who: string): void {
  for (let i = from; i < to && i < 4; i++) {
    if (b[i] !== MAGIC[i]) {
      throw new TaskProtocolError(
        ErrorCode.BAD_HANDSHAKE,
        `bad handshake: byte ${i} of the ${who} hello is ${hex(b[i]!)}, expected ${hex(MAGIC[i]!)} (magic "BRTH")`,
      );
    }
  }
}

/** Collects up to `size` bytes of a hello; the bytes after it are kept in `rest`. */
abstract class HelloDecoder<T> {
  protected buf: Buffer;
  protected filled = 0;
  #done = false;
  #failed: TaskProtocolError | undefined;
  /** Bytes that followed the hello in the last push (frames sent straight after it). */
  rest: Buffer = EMPTY;

  constructor(capacity: number) {
    this.buf = Buffer.alloc(capacity);
  }

  /** Bytes held so far. */
  get buffered(): number {
    return this.#done ? 0 : this.filled;
  }

  /**
   * Feeds bytes. Returns the hello once it is whole (and sets `rest`), undefined while more bytes
   * are needed. Throws `TaskProtocolError` at the first byte that cannot be part of a hello.
   */
  push(chunk: Uint8Array): T | undefined {
    if (this.#failed) throw this.#failed;
    if (this.#done) throw new Error('the hello was already decoded');
    const bytes = toBuffer(chunk);
    let off = 0;
    while (off < bytes.length) {
      const want = this.needed() - this.filled;
      const take = Math.min(want, bytes.length - off);
      bytes.copy(this.buf, this.filled, off, off + take);
      const before = this.filled;
      this.filled += take;
      off += take;
      let result: T | undefined;
      try {
        result = this.check(before);
      } catch (err) {
        this.#failed = err as TaskProtocolError;
        throw err;
      }
      if (result !== undefined) {
        this.#done = true;
        this.rest = bytes.subarray(off);
        return result;
      }
    }
    return undefined;
  }

  /** The input ended; throws when a hello was partly received. */
  end(): void {
    if (!this.#done && this.filled > 0 && !this.#failed) {
      throw new TaskProtocolError(
        ErrorCode.TRUNCATED,
        `connection ended in the middle of the hello (${this.filled} bytes)`,
      );
    }
  }

  /** Bytes needed for the hello, as far as the bytes so far tell. */
  protected abstract needed(): number;
  /** Validates bytes [before, filled); returns the hello once complete. */
  protected abstract check(before: number): T | undefined;
}

/** Reads a client hello (what a server does first). */
export class ClientHelloDecoder extends HelloDecoder<ClientHello> {
  constructor() {
    super(CLIENT_HELLO_SIZE);
  }

  protected needed(): number {
    return CLIENT_HELLO_SIZE;
  }

  protected check(before: number): ClientHello | undefined {
    const b = this.buf;
    checkMagic(b, before, this.filled, 'client');
    if (before <= 4 && this.filled > 4 && b[4] !== PROTOCOL_VERSION) {
      throw new TaskProtocolError(
        ErrorCode.UNSUPPORTED_VERSION,
        `unsupported version ${b[4]}; this server speaks ${PROTOCOL_VERSION}`,
      );
    }
    if (before <= 5 && this.filled > 5 && b[5] !== BYTE_ORDER_LE && b[5] !== BYTE_ORDER_BE) {
      throw new TaskProtocolError(
        ErrorCode.BAD_HANDSHAKE,
        `bad handshake: byte order ${hex(b[5]!)}; expected 0x4c (L) or 0x42 (B)`,
      );
    }
    if (this.filled < CLIENT_HELLO_SIZE) return undefined;
    const le = b[5] === BYTE_ORDER_LE;
    const hello: ClientHello = {
      version: b[4]!,
      byteOrder: le ? 'le' : 'be',
      flags: readU16(b, 6, le),
      maxFramePayload: readU32(b, 8, le),
      initialWindow: readU32(b, 12, le),
    };
    if (hello.maxFramePayload < MIN_FRAME_PAYLOAD) {
      throw new TaskProtocolError(
        ErrorCode.BAD_HANDSHAKE,
        `bad handshake: max frame payload ${hello.maxFramePayload} is under ${MIN_FRAME_PAYLOAD}`,
      );
    }
    if (hello.initialWindow < 1) {
      throw new TaskProtocolError(ErrorCode.BAD_HANDSHAKE, 'bad handshake: initial window is 0');
    }
    return hello;
  }
}

/** Reads a server hello (what a client does after sending its own). */
export class ServerHelloDecoder extends HelloDecoder<ServerHello | Refusal> {
  readonly #le: boolean;

  constructor(byteOrder: ByteOrder) {
    super(REFUSAL_HEADER_SIZE + MAX_REFUSAL_MESSAGE);
    this.#le = byteOrder === 'le';
  }

  protected needed(): number {
    if (this.filled < 6) return 6;
    if (this.buf[5] === 0) return SERVER_HELLO_SIZE;
    if (this.filled < REFUSAL_HEADER_SIZE) return REFUSAL_HEADER_SIZE;
    return REFUSAL_HEADER_SIZE + this.buf[7]!;
  }

  protected check(before: number): ServerHello | Refusal | undefined {
    const b = this.buf;
    checkMagic(b, before, this.filled, 'server');
    if (this.filled < 6) return undefined;
    const status = b[5]!;
    if (status === 0) {
      if (b[4] !== PROTOCOL_VERSION) {
        throw new TaskProtocolError(
          ErrorCode.UNSUPPORTED_VERSION,
          `the server accepted with version ${b[4]}, but this client speaks ${PROTOCOL_VERSION}`,
        );
      }
      if (this.filled < SERVER_HELLO_SIZE) return undefined;
      const le = this.#le;
      const hello: ServerHello = {
        version: b[4]!,
        flags: readU16(b, 6, le),
        maxFramePayload: readU32(b, 8, le),
        maxMessageSize: readU32(b, 12, le),
        maxTasksInFlight: readU32(b, 16, le),
        waitTimeout: readU32(b, 20, le),
      };
      if (hello.maxFramePayload < MIN_FRAME_PAYLOAD) {
        throw new TaskProtocolError(
          ErrorCode.BAD_HANDSHAKE,
          `bad handshake: the server's max frame payload ${hello.maxFramePayload} is under ${MIN_FRAME_PAYLOAD}`,
        );
      }
      return hello;
    }
    if (status !== 1) {
      throw new TaskProtocolError(
        ErrorCode.BAD_HANDSHAKE,
        `bad handshake: server hello status ${hex(status)}; expected 0x00 or 0x01`,
      );
    }
    if (this.filled < REFUSAL_HEADER_SIZE || this.filled < REFUSAL_HEADER_SIZE + b[7]!) {
      return undefined;
    }
    return {
      version: b[4]!,
      code: b[6]!,
      message: b.toString('utf8', REFUSAL_HEADER_SIZE, REFUSAL_HEADER_SIZE + b[7]!),
    };
  }
}

/** True when a decoded server hello is a refusal. */
export function isRefusal(hello: ServerHello | Refusal): hello is Refusal {
  return 'code' in hello;
}

// --- frames -----------------------------------------------------------------------------------

/** Which side sent the frames a decoder reads. */
export type FrameSource = 'client' | 'server';

/** Per-type rules: the flags allowed, and fixed values that the header must hold. */
interface FrameRule {
  name: string;
  flags: number;
  codeZero: boolean;
  idZero: boolean;
  /** -1: any length. */
  length: number;
}

function rules(entries: [number, FrameRule][]): (FrameRule | undefined)[] {
  const table: (FrameRule | undefined)[] = new Array(256).fill(undefined);
  for (const [type, rule] of entries) table[type] = rule;
  return table;
}

const CLIENT_RULES = rules([
  [
    ClientFrame.START,
    { name: 'START', flags: FLAG_END, codeZero: false, idZero: false, length: -1 },
  ],
  [ClientFrame.DATA, { name: 'DATA', flags: FLAG_END, codeZero: true, idZero: false, length: -1 }],
  [ClientFrame.CANCEL, { name: 'CANCEL', flags: 0, codeZero: true, idZero: false, length: 0 }],
  [ClientFrame.WINDOW, { name: 'WINDOW', flags: 0, codeZero: true, idZero: false, length: 4 }],
  [ClientFrame.GOODBYE, { name: 'GOODBYE', flags: 0, codeZero: true, idZero: true, length: 0 }],
]);

const SERVER_RULES = rules([
  [ServerFrame.OK, { name: 'OK', flags: FLAG_END, codeZero: true, idZero: false, length: -1 }],
  [ServerFrame.ERROR, { name: 'ERROR', flags: 0, codeZero: false, idZero: false, length: -1 }],
  [ServerFrame.GOODBYE, { name: 'GOODBYE', flags: 0, codeZero: false, idZero: true, length: -1 }],
  [
    ServerFrame.PROCESSING,
    { name: 'PROCESSING', flags: 0, codeZero: true, idZero: false, length: 0 },
  ],
  [ServerFrame.FATAL, { name: 'FATAL', flags: 0, codeZero: false, idZero: false, length: -1 }],
]);

/** The name of a frame type as the spec writes it (`START`, `OK`), or its hex value. */
export function frameTypeName(type: number, source: FrameSource): string {
  return (source === 'client' ? CLIENT_RULES : SERVER_RULES)[type]?.name ?? hex(type);
}

/** How a `FrameDecoder` reads: the connection's byte order, its limit, and whose frames. */
export interface FrameDecoderOptions {
  byteOrder: ByteOrder;
  /** The largest payload this side advertised; a longer frame is an error (224). */
  maxPayload: number;
  /** Whose frames these are: the server reads `client` frames, the client `server` frames. */
  source: FrameSource;
  /**
   * Frame types whose payload is handed over in pieces as it arrives, rather than joined once
   * whole: each piece comes as a frame of that type and id with flags 0, and the last piece
   * carries the frame's flags. For a reader that only appends payloads (the client's OK frames),
   * this saves copying every frame that spans two socket reads, as every 64 KiB frame of a
   * stream does (its 12-byte header pushes it past a 64 KiB read). @default none
   */
  split?: readonly number[];
}

/**
 * Turns bytes into frames, whatever the split: push chunks as they arrive and `onFrame` is called
 * once per whole frame, in order. A payload that arrived whole in one chunk is a view into it
 * (no copy); one that spanned chunks is joined once complete.
 */
export class FrameDecoder {
  readonly #le: boolean;
  readonly #max: number;
  readonly #rules: (FrameRule | undefined)[];
  readonly #source: FrameSource;
  /** A partial header, kept across pushes; from Node's pool, not an ArrayBuffer of its own. */
  readonly #head = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  #headLength = 0;
  /** The frame whose payload is arriving in pieces. */
  #frame: Frame | undefined;
  /** The one object every frame is decoded into. */
  readonly #current: Frame = { type: 0, flags: 0, code: 0, id: 0, payload: EMPTY };
  #need = 0;
  #parts: Buffer[] = [];
  #filled = 0;
  #failed: TaskProtocolError | undefined;
  /** By frame type: handed over in pieces (`split`). */
  readonly #split: boolean[] = [];
  /** The frame arriving is being handed over in pieces; `#flags` are its own, for the last. */
  #splitting = false;
  #flags = 0;

  constructor(options: FrameDecoderOptions) {
    this.#le = options.byteOrder === 'le';
    this.#max = options.maxPayload;
    this.#source = options.source;
    this.#rules = options.source === 'client' ? CLIENT_RULES : SERVER_RULES;
    for (const type of options.split ?? []) this.#split[type] = true;
  }

  /** The payload length of the frame partly received, once its header is in; else 0. */
  get expecting(): number {
    return this.#frame ? this.#need : 0;
  }

  /** Bytes held for a frame not yet whole: never more than a header plus `maxPayload`. */
  get buffered(): number {
    return (
      this.#headLength +
      (this.#splitting ? 0 : this.#filled) +
      (this.#frame ? FRAME_HEADER_SIZE : 0)
    );
  }

  /**
   * Feeds a chunk. Calls `onFrame` for each frame completed by it (with the same object each
   * time: copy what you keep). Throws `TaskProtocolError` at the first header that breaks the
   * rules (and again on every later push).
   */
  push(chunk: Uint8Array, onFrame: (frame: Frame) => void): void {
    if (this.#failed) throw this.#failed;
    const buf = toBuffer(chunk);
    const length = buf.length;
    let off = 0;

    if (this.#headLength > 0) {
      const take = Math.min(FRAME_HEADER_SIZE - this.#headLength, length);
      buf.copy(this.#head, this.#headLength, 0, take);
      this.#headLength += take;
      off = take;
      if (this.#headLength < FRAME_HEADER_SIZE) return;
      this.#headLength = 0;
      const frame = this.#header(this.#head, 0);
      if (this.#need === 0) this.#emit(frame, EMPTY, onFrame);
      else this.#begin(frame);
    }

    if (this.#frame) {
      const take = Math.min(this.#need - this.#filled, length - off);
      if (this.#splitting) {
        if (take === 0) return;
        this.#filled += take;
        off += take;
        if (!this.#piece(buf.subarray(off - take, off), onFrame)) return;
      } else if (take > 0) {
        this.#parts.push(buf.subarray(off, off + take));
        this.#filled += take;
        off += take;
      }
      if (this.#frame) {
        if (this.#filled < this.#need) return;
        const frame = this.#frame;
        const parts = this.#parts;
        const payload = parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.#filled);
        this.#frame = undefined;
        this.#parts = [];
        this.#filled = 0;
        this.#emit(frame, payload, onFrame);
      }
    }

    while (length - off >= FRAME_HEADER_SIZE) {
      const frame = this.#header(buf, off);
      off += FRAME_HEADER_SIZE;
      const need = this.#need;
      if (length - off >= need) {
        this.#emit(frame, need === 0 ? EMPTY : buf.subarray(off, off + need), onFrame);
        off += need;
      } else {
        this.#begin(frame);
        if (off < length) {
          this.#filled = length - off;
          if (this.#splitting) this.#piece(buf.subarray(off), onFrame);
          else this.#parts.push(buf.subarray(off));
        }
        return;
      }
    }
    if (off < length) {
      buf.copy(this.#head, 0, off, length);
      this.#headLength = length - off;
    }
  }

  /** A frame whose payload is still to come: kept whole, or handed over in pieces. */
  #begin(frame: Frame): void {
    this.#frame = frame;
    this.#splitting = this.#split[frame.type] === true;
    this.#flags = frame.flags;
  }

  /**
   * Hands over a piece of the frame arriving (`#filled` already counts it). True when it was the
   * last: then it carries the frame's flags and the frame is done.
   */
  #piece(piece: Buffer, onFrame: (frame: Frame) => void): boolean {
    const frame = this.#frame!;
    const last = this.#filled === this.#need;
    frame.flags = last ? this.#flags : 0;
    if (last) {
      this.#frame = undefined;
      this.#filled = 0;
      this.#splitting = false;
    }
    this.#emit(frame, piece, onFrame);
    return last;
  }

  /** The input ended: throws `TaskProtocolError` (227) when a frame was partly received. */
  end(): void {
    if (this.#failed) return;
    const held = this.#headLength + this.#filled + (this.#frame ? FRAME_HEADER_SIZE : 0);
    if (held > 0) {
      this.#fail(
        ErrorCode.TRUNCATED,
        `connection ended in the middle of a frame (${held} bytes of it received)`,
      );
    }
  }

  #fail(code: number, message: string, taskId?: number): never {
    this.#failed = new TaskProtocolError(code, message, { taskId });
    throw this.#failed;
  }

  #header(b: Buffer, o: number): Frame {
    const type = b[o]!;
    const flags = b[o + 1]!;
    const code = b[o + 2]!;
    const reserved = b[o + 3]!;
    const le = this.#le;
    const id = readU32(b, o + 4, le);
    const length = readU32(b, o + 8, le);
    const rule = this.#rules[type];
    if (rule === undefined) {
      this.#fail(
        ErrorCode.UNKNOWN_FRAME_TYPE,
        `unknown frame type ${hex(type)}${this.#source === 'client' ? '' : ' from the server'}`,
      );
    }
    // A frame that names a task (not GOODBYE, which must carry 0) has its FATAL name it too.
    const task = rule.idZero ? undefined : id;
    if (length > this.#max) {
      this.#fail(
        ErrorCode.FRAME_TOO_LARGE,
        `${rule.name} frame payload of ${length} bytes is over the maximum of ${this.#max}`,
        task,
      );
    }
    if (reserved !== 0) {
      this.#fail(
        ErrorCode.BAD_FRAME,
        `${rule.name} frame has reserved byte ${hex(reserved)}`,
        task,
      );
    }
    if ((flags & ~rule.flags) !== 0) {
      this.#fail(ErrorCode.BAD_FRAME, `${rule.name} frame has flags ${hex(flags)}`, task);
    }
    if (rule.codeZero && code !== 0) {
      this.#fail(ErrorCode.BAD_FRAME, `${rule.name} frame has code ${code}; it must be 0`, task);
    }
    if (rule.idZero && id !== 0) {
      this.#fail(ErrorCode.BAD_FRAME, `${rule.name} frame has task id ${id}; it must be 0`);
    }
    if (rule.length >= 0 && length !== rule.length) {
      this.#fail(
        ErrorCode.BAD_FRAME,
        `${rule.name} frame has a payload of ${length} bytes; it must have ${rule.length}`,
        task,
      );
    }
    this.#need = length;
    const frame = this.#current;
    frame.type = type;
    frame.flags = flags;
    frame.code = code;
    frame.id = id;
    frame.payload = EMPTY;
    return frame;
  }

  #emit(frame: Frame, payload: Buffer, onFrame: (frame: Frame) => void): void {
    frame.payload = payload;
    if (
      this.#source === 'client' &&
      frame.type === ClientFrame.WINDOW &&
      readU32(payload, 0, this.#le) === 0
    ) {
      this.#fail(
        ErrorCode.BAD_FRAME,
        `WINDOW frame for task ${frame.id} has an increment of 0`,
        frame.id,
      );
    }
    onFrame(frame);
  }
}

/** Reads the increment of a WINDOW frame's payload. */
export function readWindowIncrement(payload: Buffer, byteOrder: ByteOrder): number {
  return readU32(payload, 0, byteOrder === 'le');
}

/** Payloads up to this size are copied into the encoder's buffer; larger ones are referenced. */
const COPY_LIMIT = 2_048;
/** The size of the buffers the encoders write small frames into. */
const SLAB_SIZE = 64 * 1_024;

/**
 * The slab every encoder in the process writes into, as Node's own `Buffer` pool: an encoder
 * owning a 64 KiB slab would keep it for as long as its connection lives, which made a server's
 * memory per connection that had answered one task 64 KiB (the tasks benchmark's idle clients).
 * Each encoder reserves its space here; bytes are never written twice, so the pieces handed out
 * stay valid while sockets hold them, and a slab is freed once nothing references it.
 */
let shared: Buffer = Buffer.alloc(0);
/** The first byte of `shared` no encoder has reserved. */
let sharedFree = 0;

/**
 * Encodes frames into as few buffers as it can: small frames are written back to back into one
 * buffer, large payloads are passed by reference. `take()` hands over what was encoded, ready for
 * one `write` (or a corked `writev`). A region handed over is never written again, so it is safe
 * to pass to a socket that still holds it.
 */
export class FrameEncoder {
  readonly #le: boolean;
  #slab: Buffer = EMPTY;
  #start = 0;
  #pos = 0;
  /** The end of the space reserved in `#slab`. */
  #limit = 0;
  #out: Buffer[] = [];
  #pending = 0;
  /** Payload bytes still to come for the frame begun with `header()`. */
  #open = 0;

  constructor(byteOrder: ByteOrder) {
    this.#le = byteOrder === 'le';
  }

  /** Bytes encoded and not yet taken. */
  get pending(): number {
    return this.#pending;
  }

  /** Encodes one whole frame. */
  frame(type: number, flags: number, code: number, id: number, payload?: Uint8Array): void {
    const n = payload === undefined ? 0 : payload.length;
    this.header(type, flags, code, id, n);
    if (n > 0) this.append(payload!);
  }

  /**
   * Begins a frame whose payload of `length` bytes follows in one or more `append()` calls (a
   * piece of a response gathered from several chunks).
   */
  header(type: number, flags: number, code: number, id: number, length: number): void {
    if (this.#open !== 0) throw new Error('the previous frame is not complete');
    this.#reserve(FRAME_HEADER_SIZE + (length <= COPY_LIMIT ? length : 0));
    const b = this.#slab;
    const o = this.#pos;
    b[o] = type;
    b[o + 1] = flags;
    b[o + 2] = code;
    b[o + 3] = 0;
    writeU32(b, o + 4, id, this.#le);
    writeU32(b, o + 8, length, this.#le);
    this.#pos = o + FRAME_HEADER_SIZE;
    this.#pending += FRAME_HEADER_SIZE;
    this.#open = length;
  }

  /** Adds payload bytes to the frame begun with `header()`. */
  append(part: Uint8Array): void {
    const n = part.length;
    if (n > this.#open) throw new Error('more payload than the frame header announced');
    this.#open -= n;
    this.#pending += n;
    if (n <= COPY_LIMIT) {
      this.#reserve(n);
      this.#slab.set(part, this.#pos);
      this.#pos += n;
    } else {
      this.#cut();
      this.#out.push(toBuffer(part));
    }
  }

  /** Hands over everything encoded since the last call, in order. */
  take(): Buffer[] {
    if (this.#open !== 0) throw new Error('a frame is not complete');
    this.#cut();
    const out = this.#out;
    this.#out = [];
    this.#pending = 0;
    return out;
  }

  #cut(): void {
    if (this.#pos > this.#start) {
      this.#out.push(this.#slab.subarray(this.#start, this.#pos));
      this.#start = this.#pos;
    }
  }

  #reserve(n: number): void {
    if (this.#limit - this.#pos >= n) return;
    const end = this.#pos + n;
    if (this.#slab === shared && this.#limit === sharedFree && end <= shared.length) {
      // Nobody has reserved after us: grow our region in place, and the next write joins it.
      this.#limit = sharedFree = end;
      return;
    }
    this.#cut();
    if (shared.length - sharedFree < n) {
      shared = Buffer.allocUnsafe(Math.max(SLAB_SIZE, n));
      sharedFree = 0;
    }
    this.#slab = shared;
    this.#start = this.#pos = sharedFree;
    this.#limit = sharedFree += n;
  }
}

/** One frame as a single buffer: for tests, tools and docs rather than the hot path. */
export function encodeFrame(
  byteOrder: ByteOrder,
  type: number,
  flags: number,
  code: number,
  id: number,
  payload?: Uint8Array,
): Buffer {
  const encoder = new FrameEncoder(byteOrder);
  encoder.frame(type, flags, code, id, payload);
  const out = encoder.take();
  return out.length === 1 ? out[0]! : Buffer.concat(out);
}

/** A task the server has registered, as the list task (251) reports them. */
export interface TaskInfo {
  code: number;
  /** '' when the task was registered without a name. */
  name: string;
}

/** The list task's response: for each task, its code, its name's length, and the name (UTF-8). */
export function decodeTaskList(payload: Buffer): TaskInfo[] {
  const tasks: TaskInfo[] = [];
  let off = 0;
  while (off + 2 <= payload.length) {
    const code = payload[off]!;
    const n = payload[off + 1]!;
    if (off + 2 + n > payload.length) break;
    tasks.push({ code, name: payload.toString('utf8', off + 2, off + 2 + n) });
    off += 2 + n;
  }
  return tasks;
}

/** A WINDOW frame's 4-byte payload. */
export function windowPayload(increment: number, byteOrder: ByteOrder): Buffer {
  const b = Buffer.allocUnsafe(4);
  writeU32(b, 0, increment, byteOrder === 'le');
  return b;
}

/** The bounds a window may take; exported for the peers that keep one. */
export const MAX_WINDOW = MAX_U32;
