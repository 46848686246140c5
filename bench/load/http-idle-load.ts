/**
 * Load generator for the drain suite's idle-stop test: opens `--sockets` HTTP/1.1 keep-alive
 * connections (`--parallel` at a time), sends one GET on each and reads its answer, then leaves
 * them all idle and prints `idle <n>`. After `shutdown` on stdin it reports when the server
 * closed the last of them: `result <json>`.
 */

import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { arg } from '../fixtures/control.js';

const port = Number(arg('port', '0'));
const total = Number(arg('sockets', '5000'));
const parallel = Number(arg('parallel', '200'));
const REQUEST = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

let openErrors = 0;
let open = 0;
let shutdownAt = 0;
let lastCloseMs = 0;
let closedAfterShutdown = 0;
let closedBeforeShutdown = 0;
const sockets: Socket[] = [];
let allClosed!: () => void;
const closedAll = new Promise<void>((resolve) => {
  allClosed = resolve;
});

const control = createInterface({ input: process.stdin });
// The harness went away (even by SIGKILL): nothing is left to report to.
control.on('close', () => process.exit(0));
control.on('line', (line) => {
  if (line.trim() !== 'shutdown' || shutdownAt) return;
  shutdownAt = performance.now();
  console.log('shutdown-ack'); // the harness sends SIGTERM only after this
  if (open === 0) allClosed();
});

/** Opens one connection and resolves once its answer has been read whole. */
function openOne(): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let text = '';
    let answered = false;
    socket.setEncoding('latin1');
    socket.on('connect', () => socket.write(REQUEST));
    socket.on('data', (chunk: string) => {
      if (answered) return;
      text += chunk;
      const head = text.indexOf('\r\n\r\n');
      if (head === -1) return;
      const length = Number(/content-length: *(\d+)/i.exec(text.slice(0, head))?.[1] ?? 0);
      if (text.length - head - 4 >= length) {
        answered = true;
        open++;
        sockets.push(socket);
        resolve();
      }
    });
    socket.on('error', () => {
      if (!answered) openErrors++;
    });
    socket.on('close', () => {
      if (!answered) return resolve();
      if (!shutdownAt) {
        closedBeforeShutdown++;
      } else {
        closedAfterShutdown++;
        lastCloseMs = performance.now() - shutdownAt;
      }
      if (--open === 0 && shutdownAt) allClosed();
    });
  });
}

let next = 0;
async function opener(): Promise<void> {
  while (next < total) {
    next++;
    await openOne();
  }
}
await Promise.all(Array.from({ length: Math.min(parallel, total) }, opener));
console.log(`idle ${open}`);

await closedAll;
console.log(
  `result ${JSON.stringify({
    opened: sockets.length,
    openErrors,
    closedBeforeShutdown,
    closedAfterShutdown,
    lastCloseMs: Math.round(lastCloseMs * 10) / 10,
  })}`,
);
process.exit(0);
