/**
 * Load generator for the tcp suite, in its own process. Two modes:
 *   --mode connrate: `--concurrency` loops, each repeating connect → write 64 bytes → read the
 *     64-byte echo → end → wait for close. Counts completed cycles.
 *   --mode bulk: `--concurrency` connections, each writing 64 KiB chunks as fast as the socket
 *     takes them (respecting backpressure) while reading the echo. Counts echoed bytes.
 * Runs `--warmup` ms unmeasured, then `--duration` ms measured; prints `window-start` and
 * `window-end` around the measured window (the harness samples server CPU on those lines),
 * then `result <json>`.
 */

import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { arg } from '../fixtures/control.js';

const port = Number(arg('port', '0'));
const mode = arg('mode', 'connrate');
const concurrency = Number(arg('concurrency', '16'));
const warmup = Number(arg('warmup', '1000'));
const duration = Number(arg('duration', '3000'));
const host = '127.0.0.1';

// The harness went away (even by SIGKILL): nothing is left to report to.
createInterface({ input: process.stdin }).on('close', () => process.exit(0));

let phase: 'warmup' | 'measure' | 'done' = 'warmup';
let measuredOps = 0;
let measuredBytes = 0;
let errors = 0;
const errorCodes: Record<string, number> = {};
let windowStart = 0;
let windowEnd = 0;

function countError(error: NodeJS.ErrnoException): void {
  errors++;
  const code = error.code ?? error.message;
  errorCodes[code] = (errorCodes[code] ?? 0) + 1;
}

const PAYLOAD = Buffer.alloc(64, 'x');

function connRateLoop(done: () => void): void {
  if (phase === 'done') {
    done();
    return;
  }
  const socket = connect({ port, host, noDelay: true });
  let got = 0;
  let failed = false;
  socket.on('connect', () => socket.write(PAYLOAD));
  socket.on('data', (chunk: Buffer) => {
    got += chunk.length;
    if (got >= PAYLOAD.length) socket.end();
  });
  socket.on('error', (error) => {
    failed = true;
    countError(error);
  });
  socket.on('close', () => {
    if (!failed && got >= PAYLOAD.length && phase === 'measure') measuredOps++;
    connRateLoop(done);
  });
}

const CHUNK = Buffer.alloc(64 * 1024, 'y');

function bulkConnection(sockets: Socket[], done: () => void): void {
  const socket = connect({ port, host, noDelay: true });
  sockets.push(socket);
  const pump = () => {
    while (phase !== 'done' && socket.write(CHUNK)) {}
  };
  socket.on('connect', pump);
  socket.on('drain', pump);
  socket.on('data', (chunk: Buffer) => {
    if (phase === 'measure') measuredBytes += chunk.length;
  });
  socket.on('error', countError);
  socket.on('close', done);
}

let endWindow!: () => void;
const finishedWindow = new Promise<void>((resolve) => {
  endWindow = resolve;
});

const finished = new Promise<void>((resolve) => {
  let open = concurrency;
  const oneDone = () => {
    if (--open === 0) resolve();
  };
  if (mode === 'connrate') {
    for (let i = 0; i < concurrency; i++) connRateLoop(oneDone);
  } else {
    const sockets: Socket[] = [];
    for (let i = 0; i < concurrency; i++) bulkConnection(sockets, oneDone);
    // Bulk connections never end on their own: destroy them when the window closes.
    void finishedWindow.then(() => {
      for (const s of sockets) s.destroy();
    });
  }
});

setTimeout(() => {
  phase = 'measure';
  windowStart = performance.now();
  console.log('window-start');
  setTimeout(() => {
    phase = 'done';
    windowEnd = performance.now();
    console.log('window-end');
    endWindow();
  }, duration);
}, warmup);

await finishedWindow;
// In-flight cycles finish on their own; bound the wait so a stuck socket cannot hold the run.
await Promise.race([finished, new Promise((r) => setTimeout(r, 2_000).unref())]);
const seconds = (windowEnd - windowStart) / 1000;
console.log(
  `result ${JSON.stringify({
    mode,
    seconds,
    ops: measuredOps,
    opsPerSec: measuredOps / seconds,
    bytes: measuredBytes,
    mibPerSec: measuredBytes / seconds / 1024 / 1024,
    errors,
    errorCodes,
  })}`,
);
process.exit(0);
