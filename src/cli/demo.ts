/**
 * `berth demo`: the seeds' example system, ready with nothing installed. HTTP `/hello` on 8080,
 * a TCP echo on 8000, diagnostics on 8081 (127.0.0.1).
 */

import { addAbortListener } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpService } from '../http/http-service.js';
import type { Service } from '../service.js';
import { type ConnectionHandler, TcpService } from '../tcp/tcp-service.js';
import type { DemoFlags } from './flags.js';

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
    res.end('Not Found: try /hello or /sleep?ms=1000\n');
  }
}

/** Echoes until the peer ends; when the service closes: flush what was echoed, end, stop reading. */
export const echoHandler: ConnectionHandler = async (conn, { signal }) => {
  using _ = addAbortListener(signal, () => conn.end(() => conn.destroy()));
  try {
    for await (const chunk of conn) conn.write(chunk);
  } catch (err) {
    // A stream cut short by our own close is the polite end, not a failure.
    if (!signal.aborted) throw err;
  }
};

export function demoServices(flags: DemoFlags): Service[] {
  return [
    new HttpService({ name: 'http', port: flags.port, host: flags.host, handler: demoHandler }),
    new TcpService({ name: 'echo', port: flags.tcpPort, host: flags.host, handler: echoHandler }),
  ];
}
