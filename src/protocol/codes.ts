/**
 * The task protocol's numbers: frame types, flags, error and reason codes, reserved task codes and
 * the fixed sizes of the handshake and frame header. docs/protocol.md is their specification;
 * nothing here may change without a new protocol version.
 */

/** The protocol version this module speaks. */
export const PROTOCOL_VERSION = 1;

/** `BRTH`: the first four bytes of every hello. */
export const MAGIC = Object.freeze([0x42, 0x52, 0x54, 0x48] as const);

/** The client hello's byte-order byte for little-endian: ASCII `L`. */
export const BYTE_ORDER_LE = 0x4c;
/** The client hello's byte-order byte for big-endian: ASCII `B`. */
export const BYTE_ORDER_BE = 0x42;

/** The byte order a connection uses for every multi-byte integer after the hello. */
export type ByteOrder = 'le' | 'be';

/** Bytes in the client hello (version 1). */
export const CLIENT_HELLO_SIZE = 16;
/** Bytes in an accepting server hello (version 1). */
export const SERVER_HELLO_SIZE = 24;
/** Bytes before a refusal's message. */
export const REFUSAL_HEADER_SIZE = 8;
/** Bytes in every frame header. */
export const FRAME_HEADER_SIZE = 12;

/** The smallest max frame payload a peer may advertise. */
export const MIN_FRAME_PAYLOAD = 1_024;
/** The largest value a u32 field (window, length) can hold. */
export const MAX_U32 = 0xffff_ffff;
/** Longest error message or goodbye reason a sender puts in a frame (bytes of UTF-8). */
export const MAX_ERROR_MESSAGE = 512;
/** Longest refusal message (bytes of UTF-8): its length is one byte. */
export const MAX_REFUSAL_MESSAGE = 255;

/** Frame flag: the last frame of a message (START, DATA) or of a response (OK). */
export const FLAG_END = 0x01;

/** Frame types, client to server. */
export const ClientFrame = Object.freeze({
  START: 0x10,
  DATA: 0x11,
  CANCEL: 0x12,
  WINDOW: 0x13,
  GOODBYE: 0x14,
} as const);

/** Frame types, server to client: the seed's response codes, plus FATAL. */
export const ServerFrame = Object.freeze({
  OK: 0x00,
  ERROR: 0x01,
  GOODBYE: 0x02,
  PROCESSING: 0x03,
  FATAL: 0x04,
} as const);

/** Highest error code that belongs to the application; 200 and up are the protocol's. */
export const MAX_APPLICATION_ERROR_CODE = 199;

/** The protocol's error and reason codes (200 to 255). */
export const ErrorCode = Object.freeze({
  CANCELLED: 200,
  UNKNOWN_TASK: 201,
  TOO_MANY_TASKS: 202,
  MESSAGE_TOO_LARGE: 203,
  SHUTTING_DOWN: 204,
  INTERNAL: 205,
  BAD_HANDSHAKE: 220,
  UNSUPPORTED_VERSION: 221,
  TOO_MANY_CLIENTS: 222,
  UNKNOWN_FRAME_TYPE: 223,
  FRAME_TOO_LARGE: 224,
  BAD_FRAME: 225,
  DUPLICATE_TASK_ID: 226,
  TRUNCATED: 227,
  WAIT_TIMEOUT: 230,
  READ_TIMEOUT: 231,
  WRITE_TIMEOUT: 232,
  DISCONNECTED: 233,
} as const);

const ERROR_NAMES: Readonly<Record<number, string>> = Object.freeze({
  200: 'cancelled',
  201: 'unknown task',
  202: 'too many tasks',
  203: 'message too large',
  204: 'shutting down',
  205: 'internal',
  220: 'bad handshake',
  221: 'unsupported version',
  222: 'too many clients',
  223: 'unknown frame type',
  224: 'frame too large',
  225: 'bad frame',
  226: 'duplicate task id',
  227: 'truncated',
  230: 'wait timeout',
  231: 'read timeout',
  232: 'write timeout',
  233: 'disconnected',
});

/** The protocol's name for a code (`cancelled`), or undefined for an application code. */
export function errorCodeName(code: number): string | undefined {
  return ERROR_NAMES[code];
}

/** Task codes 250 to 255 belong to the protocol. */
export const FIRST_RESERVED_TASK_CODE = 250;
/** Reserved task codes with a meaning. */
export const ReservedTask = Object.freeze({
  KEEP_ALIVE: 250,
  LIST_TASKS: 251,
} as const);
