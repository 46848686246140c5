/**
 * `berth demo`: the seeds' example system, ready with nothing installed. HTTP `/hello` on 8080,
 * a TCP echo on 8000, the task server on 8082 (docs/protocol.md's demo tasks), diagnostics on
 * 8081 (127.0.0.1).
 */

import { addAbortListener } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { UsageError } from '../errors.js';
import { HttpService, type UpgradeHandler } from '../http/http-service.js';
import { createDemoTaskServer } from '../protocol/demo-tasks.js';
import type { Service } from '../service.js';
import { type ConnectionHandler, TcpService } from '../tcp/tcp-service.js';
import type { DemoFlags } from './flags.js';
import type { Placement } from './placement.js';

/** The longest `/sleep` the demo grants, so a typo cannot hold a drain for ever. */
const MAX_SLEEP_MS = 60_000;

/**
 * `/hello` answers `Hello world.`; `/sleep?ms=N` answers after N ms, to watch a drain wait for
 * a request in flight.
 */
export function demoHandler(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://demo');
  res.setHeader('content-type', 'text/plain; charset=utf-8');
  if (url.pathname === '/hello') {
    res.end('Hello world.\n');
  } else if (url.pathname === '/sleep') {
    const ms = Math.min(Math.max(Number(url.searchParams.get('ms')) || 0, 0), MAX_SLEEP_MS);
    setTimeout(() => res.end(`slept ${ms} ms\n`), ms);
  } else {
    res.statusCode = 404;
    res.end('Not Found: try /hello, /sleep?ms=1000, or Upgrade: echo\n');
  }
}

/**
 * `Upgrade: echo` switches the connection to a raw echo, the way a WebSocket holds a socket open;
 * on shutdown it says goodbye and closes.
 */
export const echoUpgrade: UpgradeHandler = (req, socket, head, { signal }) => {
  if (req.headers.upgrade?.toLowerCase() !== 'echo') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nUpgrade: echo only\n');
    return;
  }
  socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
  if (head.length > 0) socket.write(head);
  socket.pipe(socket);
  signal.addEventListener('abort', () => socket.end('goodbye\n'), { once: true });
};

/**
 * Echoes until the peer ends; when the service closes: flush what was echoed, end, stop reading.
 * `pipeline` respects backpressure: while the peer reads nothing, the echo stops reading from it,
 * so a peer that only sends fills its own socket, not this process.
 */
export const echoHandler: ConnectionHandler = async (conn, { signal }) => {
  using _ = addAbortListener(signal, () => conn.end(() => conn.destroy()));
  try {
    await pipeline(conn, conn);
  } catch (err) {
    // A stream cut short by our own close is the polite end, not a failure. (A reset by the peer
    // rejects with the socket's own error, which TcpService counts under peerErrors.)
    if (!signal.aborted) throw err;
  }
};

/**
 * The demo's services, each where `placement` puts it: an adopted fd of its name, the one
 * accepted connection (then only the service that serves it), or its flag's port.
 */
export function demoServices(flags: DemoFlags, placement: Placement): Service[] {
  const make: Record<string, () => Service> = {
    http: () =>
      new HttpService({
        name: 'http',
        ...placement.listen('http', { port: flags.port, host: flags.host }),
        handler: demoHandler,
        upgrade: echoUpgrade,
      }),
    echo: () =>
      new TcpService({
        name: 'echo',
        ...placement.listen('echo', { port: flags.tcpPort, host: flags.host }),
        handler: echoHandler,
      }),
    tasks: () =>
      createDemoTaskServer({
        name: 'tasks',
        ...placement.listen('tasks', { port: flags.taskPort, host: flags.host }),
      }),
  };
  const one = placement.oneConnection;
  if (!one) return Object.values(make).map((build) => build());
  const build = make[one.service];
  if (!build) {
    throw new UsageError(
      `--connection-service ${one.service}: the demo has no such service (${Object.keys(make).join(', ')})`,
    );
  }
  return [build()];
}
