/**
 * Load generator for the drain suite: `--clients` closed-loop HTTP/1.1 keep-alive clients
 * (one `http.Agent` with one socket each), each sending its next GET as soon as the previous
 * answer arrived. Prints `running` once every client has had an answer. When the harness writes
 * `shutdown` on stdin (and, once acknowledged, signals the server), clients go on for up to
 * `--after` ms, then stop and close their sockets. `stop` on stdin stops them at once (each
 * after its request in flight), for runs where the server does not go away (a cluster reload).
 *
 * Each failed request is classified by whether it had been written to its socket (the
 * request's 'finish'): a request written and then failed (ECONNRESET, "socket hang up", EPIPE)
 * is work a shutdown lost; ECONNREFUSED of a new connection is a clean refusal a client or
 * proxy can retry. A client stops once refused. Prints `result <json>`.
 */

import { Agent, request } from 'node:http';
import { createInterface } from 'node:readline';
import { arg } from '../fixtures/control.js';

const port = Number(arg('port', '0'));
const clients = Number(arg('clients', '50'));
const after = Number(arg('after', '5000'));

let shutdownAt = 0;
let stopping = false;
const counts = {
  okBefore: 0,
  okAfter: 0,
  refused: 0,
  failedAfterWrite: 0,
  failedBeforeWrite: 0,
  /** Failures of either kind before the shutdown began: should be 0. */
  failedBeforeShutdown: 0,
};
const failedCodes: Record<string, number> = {};
const clientsFailed = new Set<number>();
let lastOkAfterShutdown = 0;

function record(code: string): void {
  failedCodes[code] = (failedCodes[code] ?? 0) + 1;
}

let answered = 0;
let running = false;
let active = clients;
let allStopped!: () => void;
const stoppedAll = new Promise<void>((resolve) => {
  allStopped = resolve;
});

function client(id: number): void {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  let first = true;
  const stop = () => {
    agent.destroy();
    if (--active === 0) allStopped();
  };
  const next = (): void => {
    if (stopping) {
      stop();
      return;
    }
    let written = false;
    let settled = false; // a request ends once, whichever of req/res reports first
    const req = request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      res.resume();
      res.once('end', () => {
        if (settled) return;
        settled = true;
        if (shutdownAt) {
          counts.okAfter++;
          lastOkAfterShutdown = performance.now() - shutdownAt;
        } else counts.okBefore++;
        if (first) {
          first = false;
          if (++answered === clients && !running) {
            running = true;
            console.log('running');
          }
        }
        next();
      });
      res.once('error', fail);
    });
    req.once('finish', () => {
      written = true;
    });
    function fail(error: NodeJS.ErrnoException): void {
      if (settled) return;
      settled = true;
      const code = error.code ?? error.message;
      if (!shutdownAt) counts.failedBeforeShutdown++;
      if (code === 'ECONNREFUSED') {
        counts.refused++;
        stop();
        return;
      }
      if (written) {
        counts.failedAfterWrite++;
        clientsFailed.add(id);
        record(`${code}${error.message === 'socket hang up' ? ' (socket hang up)' : ''}`);
      } else {
        counts.failedBeforeWrite++;
        record(`${code} (before write)`);
      }
      // A real client goes on with its next request (a new connection if this one died).
      setImmediate(next);
    }
    req.once('error', fail);
    req.end();
  };
  next();
}

for (let i = 0; i < clients; i++) client(i);

const control = createInterface({ input: process.stdin });
// The harness went away (even by SIGKILL): nothing is left to report to.
control.on('close', () => process.exit(0));
control.on('line', (line) => {
  // `stop`: every client stops after its current request (the cluster reload run's end).
  if (line.trim() === 'stop') {
    stopping = true;
    return;
  }
  if (line.trim() !== 'shutdown' || shutdownAt) return;
  shutdownAt = performance.now();
  console.log('shutdown-ack'); // the harness sends SIGTERM only after this
  setTimeout(() => {
    stopping = true;
  }, after).unref();
});

await stoppedAll;
console.log(
  `result ${JSON.stringify({
    ...counts,
    clientsFailed: clientsFailed.size,
    failedCodes,
    lastOkAfterShutdownMs: Math.round(lastOkAfterShutdown),
    clientsLeftAtLimit: stopping,
  })}`,
);
process.exit(0);
