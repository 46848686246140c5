/**
 * The promise HttpService makes: a close in the middle of load loses no request a client has
 * already sent. 50 keep-alive clients in a closed loop against a 10 ms handler; the service closes
 * mid-run; the only failures allowed are clean refusals of brand-new connections after the
 * listener closed. Repeated, because a race that loses one request in ten runs is still a race.
 */

import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { HttpService } from '../src/index.js';
import { sleep, waitFor } from './helpers.js';

interface LoadResult {
  ok: number;
  /** Clients that have had their first answer: their connection was accepted. */
  answered: number;
  refused: number;
  failed: { code: string | undefined; message: string; reused: boolean }[];
}

/** One client: requests back to back on a keep-alive agent until a new connection is refused. */
async function closedLoop(port: number, agent: http.Agent, result: LoadResult): Promise<void> {
  for (let first = true; ; first = false) {
    const outcome = await new Promise<'ok' | 'refused' | 'failed'>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/work', agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode === 200 ? 'ok' : 'failed'));
        res.on('error', (err) => {
          result.failed.push({
            code: (err as NodeJS.ErrnoException).code,
            message: err.message,
            reused: req.reusedSocket,
          });
          resolve('failed');
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNREFUSED') return resolve('refused');
        result.failed.push({ code: err.code, message: err.message, reused: req.reusedSocket });
        resolve('failed');
      });
    });
    if (outcome === 'ok') {
      result.ok++;
      if (first) result.answered++;
    } else {
      if (outcome === 'refused') result.refused++;
      return;
    }
  }
}

for (let run = 1; run <= 5; run++) {
  test(`drain under load loses no request (run ${run} of 5)`, async (t) => {
    const service = new HttpService({
      port: 0,
      host: '127.0.0.1',
      registry: null,
      handler: (_req: http.IncomingMessage, res: http.ServerResponse) => {
        setTimeout(() => res.end('done'), 10);
      },
    });
    t.after(() => service.destroy());
    await service.start();
    const { port } = service.address() as AddressInfo;

    const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
    t.after(() => agent.destroy());
    const result: LoadResult = { ok: 0, answered: 0, refused: 0, failed: [] };
    const clients = Array.from({ length: 50 }, () => closedLoop(port, agent, result));

    // A connection still in the kernel's accept queue when the listener closes is reset, in any
    // server; on a loaded machine a fixed sleep can end before every client's first connection
    // was accepted (seen once in CI, Node 24). Start the clock once every client is in.
    await waitFor(() => result.answered === 50, 'every client to have had an answer', 10_000);
    await sleep(300);
    const before = result.ok;
    const started = Date.now();
    await service.close({ timeout: 5_000 });
    const took = Date.now() - started;
    await Promise.all(clients);

    assert.deepEqual(result.failed, [], 'requests failed after being written');
    assert.ok(before > 100, `too little load before the close: ${before} requests`);
    assert.ok(result.ok > before, 'requests in flight at the close were not answered');
    assert.equal(result.refused, 50, 'every client should end on a clean refusal');
    assert.ok(took < 4_000, `close took ${took} ms`);
    assert.equal(service.stats.aborted, 0);
    assert.equal(service.stats.open, 0);
  });
}
