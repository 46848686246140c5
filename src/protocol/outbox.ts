/**
 * The write side of a task-protocol connection, shared by the server and the client.
 *
 * - Frames written in one turn of the event loop go out in one `write` (small ones are encoded
 *   back to back into one buffer; large payloads ride along by reference in a corked `writev`).
 * - Bodies larger than one frame (a streamed response, a large message) are `OutStream`s, sent a
 *   frame at a time in round-robin, so a large body never holds up a small one.
 * - A stream sends only what its credit allows (the peer's window), and the producer of a stream is
 *   told to wait while its queue is full: a slow reader slows only its own task.
 * - While the socket's buffer is full, nothing more is pulled from the streams, and the owner is
 *   told (the server stops reading that client until it drains).
 * - What the outbox holds (stream bytes not yet sent, and the socket's buffer) may be capped: at
 *   the cap every producer waits and the owner is told, until it falls below again.
 */

import type { Duplex } from 'node:stream';
import { FrameEncoder } from './codec.js';
import { type ByteOrder, FLAG_END } from './codes.js';

/** The most payload the outbox puts in one frame of a stream: the fairness quantum. */
export const STREAM_FRAME_SIZE = 64 * 1_024;
/** A producer is asked to wait while its stream holds this many bytes not yet sent. */
const STREAM_HIGH_WATER = 256 * 1_024;
/** Stop encoding stream frames for one write once this much is pending; the rest waits a turn. */
const BATCH_LIMIT = 512 * 1_024;

/** One body sent in frames: a task's response (server) or a task's message (client). */
export class OutStream {
  readonly id: number;
  /** The frame type of each piece after the first (OK, or DATA). */
  readonly type: number;
  /** The type and code of the first frame (START + task code for a message; OK + 0 otherwise). */
  firstType: number;
  firstCode: number;
  /** Bytes the peer still lets us send; `Infinity` when it keeps no window. */
  credit: number;
  /** When the last frame of this stream was encoded (performance.now()). */
  lastSentAt = 0;
  /** Called once, after the frame with END is encoded. */
  onFinished: (() => void) | undefined;
  /**
   * performance.now() since when this stream has had bytes to send and no credit to send them
   * (the peer grants no window); 0 while it is not so stalled.
   */
  stalledSince = 0;

  queue: Buffer[] = [];
  queued = 0;
  ended = false;
  started = false;
  done = false;
  inRing = false;
  /** In its outbox's list of producers waiting for the outbox to fall below its cap. */
  parked = false;
  readonly #box: Outbox;
  #waiter: (() => void) | undefined;

  constructor(
    box: Outbox,
    id: number,
    type: number,
    firstType: number,
    firstCode: number,
    credit: number,
  ) {
    this.#box = box;
    this.id = id;
    this.type = type;
    this.firstType = firstType;
    this.firstCode = firstCode;
    this.credit = credit;
  }

  /** True while the producer should wait before pushing more: its queue, or its outbox, is full. */
  get full(): boolean {
    return this.queued >= STREAM_HIGH_WATER || this.#box.over;
  }

  /** Resolves once the queue has room again (or the stream is done). */
  whenReady(): Promise<void> {
    if (!this.full || this.done) return Promise.resolve();
    return new Promise((resolve) => {
      this.#waiter = resolve;
      this.#parkIfOutboxFull();
    });
  }

  /** Wakes a waiting producer, if it may go on. */
  wake(): void {
    const waiter = this.#waiter;
    if (waiter === undefined) return;
    if (!this.full || this.done) {
      this.#waiter = undefined;
      waiter();
    } else {
      this.#parkIfOutboxFull();
    }
  }

  /** Waiting only for the outbox (not for its own queue): the outbox wakes it when under its cap. */
  #parkIfOutboxFull(): void {
    if (this.queued < STREAM_HIGH_WATER && this.#box.over) this.#box.park(this);
  }

  /** True when a frame can be sent now. */
  get sendable(): boolean {
    if (this.done) return false;
    if (this.ended && this.queued === 0) return true; // the empty END frame needs no credit
    return this.queued > 0 && this.credit > 0;
  }
}

/** What an `Outbox` needs to know about its connection. */
export interface OutboxOptions {
  byteOrder: ByteOrder;
  /** The peer's max frame payload. */
  maxFramePayload: number;
  /** Told when the socket's buffer fills (true) and drains (false). */
  onBlocked?: (blocked: boolean) => void;
  /** A counter shared with other outboxes (the server's total), told what is written too. */
  total?: { bytesOut: number };
  /**
   * The most the outbox holds (stream bytes not yet sent, plus the socket's buffer) before it is
   * *over*: every stream's producer waits and `onOver(true)` is called, until it falls one
   * frame (64 KiB, or half the cap if that is less) below.
   * @default Infinity
   */
  maxHeld?: number;
  /** Told when the outbox goes over `maxHeld` (true) and back under it (false). */
  onOver?: (over: boolean) => void;
}

/** A round-robin queue of streams with frames to send. */
class Ring {
  #items: OutStream[] = [];
  #head = 0;

  get size(): number {
    return this.#items.length - this.#head;
  }

  push(s: OutStream): void {
    this.#items.push(s);
  }

  shift(): OutStream | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const s = this.#items[this.#head++]!;
    if (this.#head > 1_024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return s;
  }
}

/** The frames waiting to go out on one connection, and the streams sending in turn. */
export class Outbox {
  readonly #socket: Duplex;
  readonly #encoder: FrameEncoder;
  readonly #frameSize: number;
  readonly #onBlocked: ((blocked: boolean) => void) | undefined;
  readonly #total: { bytesOut: number } | undefined;
  readonly #ring = new Ring();
  readonly #maxHeld: number;
  /** Once over, the outbox is under again when it holds less than this. */
  readonly #lowWater: number;
  readonly #onOver: ((over: boolean) => void) | undefined;
  #scheduled = false;
  #continuing = false;
  #blocked = false;
  #closed = false;
  #over = false;
  /** Streams whose producers wait for the outbox to fall below its cap. */
  #parked: OutStream[] = [];
  /** performance.now() when the socket's buffer filled; 0 while it is not full. */
  blockedSince = 0;
  /** performance.now() since when the outbox has been over its cap; 0 while it is not. */
  overSince = 0;
  /** Bytes written to the socket so far. */
  bytesOut = 0;
  /** Bytes pushed to streams and not yet encoded into frames. */
  queued = 0;

  constructor(socket: Duplex, options: OutboxOptions) {
    this.#socket = socket;
    this.#encoder = new FrameEncoder(options.byteOrder);
    this.#frameSize = Math.min(options.maxFramePayload, STREAM_FRAME_SIZE);
    this.#onBlocked = options.onBlocked;
    this.#total = options.total;
    this.#maxHeld = options.maxHeld ?? Number.POSITIVE_INFINITY;
    this.#lowWater = this.#maxHeld - Math.min(this.#frameSize, this.#maxHeld / 2);
    this.#onOver = options.onOver;
    socket.on('drain', this.#drainListener);
  }

  readonly #drainListener = (): void => this.#onDrain();

  /**
   * Lets go of the socket when nothing is queued, being written or waiting for a drain: the owner
   * may then drop this outbox (an idle connection need not keep one) and make a new one later.
   * Returns false, and keeps everything, while anything is pending.
   */
  release(): boolean {
    if (
      this.#scheduled ||
      this.#continuing ||
      this.#blocked ||
      this.#ring.size > 0 ||
      this.#encoder.pending > 0
    ) {
      return false;
    }
    this.#socket.removeListener('drain', this.#drainListener);
    this.#closed = true;
    return true;
  }

  /** The most payload one frame may carry to this peer (and the fairness quantum). */
  get frameSize(): number {
    return this.#frameSize;
  }

  /** True while the socket's buffer is full. */
  get blocked(): boolean {
    return this.#blocked;
  }

  /** True while the outbox holds `maxHeld` bytes or more. */
  get over(): boolean {
    return this.#over;
  }

  /** Bytes held now: in streams, encoded and not yet written, and in the socket's buffer. */
  get held(): number {
    return this.queued + this.#encoder.pending + this.#socket.writableLength;
  }

  /** @internal A stream's producer waits for the outbox to fall below its cap. */
  park(s: OutStream): void {
    if (s.parked) return;
    s.parked = true;
    this.#parked.push(s);
  }

  /** Queues one frame; it goes out with the others written in this turn of the event loop. */
  frame(type: number, flags: number, code: number, id: number, payload?: Uint8Array): void {
    if (this.#closed) return;
    this.#encoder.frame(type, flags, code, id, payload);
    this.#schedule();
  }

  /** Opens a stream for a body sent in pieces. */
  stream(
    id: number,
    type: number,
    firstType: number,
    firstCode: number,
    credit: number,
  ): OutStream {
    return new OutStream(this, id, type, firstType, firstCode, credit);
  }

  /** Adds a piece to a stream's body. */
  push(s: OutStream, chunk: Buffer): void {
    if (s.done || s.ended || chunk.length === 0) return;
    s.queue.push(chunk);
    s.queued += chunk.length;
    this.queued += chunk.length;
    if (s.credit <= 0 && s.stalledSince === 0) s.stalledSince = performance.now();
    if (!this.#over && this.held >= this.#maxHeld) this.#setOver(true);
    this.#ready(s);
  }

  /** No more pieces: the stream's last frame carries END. */
  end(s: OutStream): void {
    if (s.done || s.ended) return;
    s.ended = true;
    this.#ready(s);
  }

  /** The peer granted `n` more bytes for this stream. */
  credit(s: OutStream, n: number): void {
    s.credit += n;
    if (s.credit > 0) s.stalledSince = 0;
    this.#ready(s);
  }

  /** Drops what the stream has not sent; it sends nothing more. */
  abort(s: OutStream): void {
    if (s.done) return;
    s.done = true;
    this.queued -= s.queued;
    s.queue = [];
    s.queued = 0;
    s.stalledSince = 0;
    s.wake();
    if (this.#over) this.#checkOver();
  }

  /** Writes everything queued now (before an end or a close). */
  flush(): void {
    this.#flush();
  }

  /** Flushes, then stops writing: later frames are dropped. */
  close(): void {
    this.#flush();
    this.#closed = true;
  }

  #ready(s: OutStream): void {
    if (!s.inRing && s.sendable) {
      s.inRing = true;
      this.#ring.push(s);
      this.#schedule();
    }
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    // After the current microtasks: every task that settles in this turn joins the same write.
    process.nextTick(this.#flushNow);
  }

  readonly #flushNow = (): void => this.#flush();

  #flush(): void {
    this.#scheduled = false;
    if (this.#closed) return;
    this.#pump();
    const encoder = this.#encoder;
    if (encoder.pending === 0) return;
    const buffers = encoder.take();
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) return;
    let ok: boolean;
    let bytes = 0;
    if (buffers.length === 1) {
      const b = buffers[0]!;
      bytes = b.length;
      ok = socket.write(b);
    } else {
      socket.cork();
      ok = true;
      for (const b of buffers) {
        bytes += b.length;
        ok = socket.write(b);
      }
      socket.uncork();
    }
    this.bytesOut += bytes;
    if (this.#total) this.#total.bytesOut += bytes;
    if (!ok && !this.#blocked) {
      this.#blocked = true;
      this.blockedSince = performance.now();
      this.#onBlocked?.(true);
    }
    // Only while the socket is full can what it holds approach the cap (the stream bytes are
    // checked as they are pushed), so a write the socket took at once costs no check.
    if (!ok || this.#over) this.#checkOver();
    // More stream frames are waiting: let input (CANCEL, WINDOW) in before the next batch.
    if (this.#ring.size > 0 && !this.#blocked && !this.#continuing) {
      this.#continuing = true;
      setImmediate(() => {
        this.#continuing = false;
        this.#flush();
      });
    }
  }

  #onDrain(): void {
    if (!this.#blocked) return;
    this.#blocked = false;
    this.blockedSince = 0;
    this.#onBlocked?.(false);
    if (this.#over) this.#checkOver();
    if (this.#ring.size > 0) this.#schedule();
  }

  #checkOver(): void {
    const held = this.held;
    // Back under only once a frame's worth below the cap: a client granting a byte at a time must
    // not wake every producer for each byte.
    const over = this.#over ? held >= this.#lowWater : held >= this.#maxHeld;
    if (over !== this.#over) this.#setOver(over);
  }

  #setOver(over: boolean): void {
    this.#over = over;
    this.overSince = over ? performance.now() : 0;
    if (!over && this.#parked.length > 0) {
      const parked = this.#parked;
      this.#parked = [];
      for (const s of parked) {
        s.parked = false;
        s.wake();
      }
    }
    this.#onOver?.(over);
  }

  /** Encodes stream frames in round-robin until the socket is full or the batch is big enough. */
  #pump(): void {
    const ring = this.#ring;
    if (ring.size === 0 || this.#blocked) return;
    const encoder = this.#encoder;
    const frameSize = this.#frameSize;
    const now = performance.now();
    while (encoder.pending < BATCH_LIMIT) {
      const s = ring.shift();
      if (s === undefined) break;
      s.inRing = false;
      if (!s.sendable) continue;
      const n = Math.min(s.queued, s.credit, frameSize);
      const last = s.ended && n === s.queued;
      const type = s.started ? s.type : s.firstType;
      const code = s.started ? 0 : s.firstCode;
      s.started = true;
      s.lastSentAt = now;
      encoder.header(type, last ? FLAG_END : 0, code, s.id, n);
      let rest = n;
      while (rest > 0) {
        const head = s.queue[0]!;
        if (head.length <= rest) {
          encoder.append(head);
          s.queue.shift();
          rest -= head.length;
        } else {
          encoder.append(head.subarray(0, rest));
          s.queue[0] = head.subarray(rest);
          rest = 0;
        }
      }
      s.queued -= n;
      this.queued -= n;
      s.credit -= n;
      if (s.credit <= 0 && s.queued > 0) s.stalledSince ||= now;
      if (last) {
        s.done = true;
        s.wake();
        s.onFinished?.();
        continue;
      }
      s.wake();
      if (s.sendable) {
        s.inRing = true;
        ring.push(s);
      }
    }
  }
}
