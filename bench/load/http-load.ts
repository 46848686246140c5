/**
 * Load generator for the http suite, in its own process: autocannon with `--connections`
 * keep-alive connections (no pipelining), each sending its next GET as soon as the previous
 * answer arrived. A `--warmup` ms run first (its connections then close), then the measured run
 * of `--duration` ms, with `window-start` and `window-end` printed around it (the harness
 * samples the server's CPU on those lines), then `result <json>`.
 *
 * Latency is taken from each response's own time (autocannon measures it with hrtime, in ms
 * with a fraction) rather than from autocannon's histogram, which rounds to whole milliseconds:
 * at a few ms per request that rounding alone would move p99 by 20%.
 */

import { createInterface } from 'node:readline';
import autocannon from 'autocannon';
import { arg } from '../fixtures/control.js';
import { percentile } from '../lib/stats.js';

const port = Number(arg('port', '0'));
const connections = Number(arg('connections', '50'));
const warmup = Number(arg('warmup', '1000'));
const duration = Number(arg('duration', '3000'));
const url = `http://127.0.0.1:${port}/`;

// The harness went away (even by SIGKILL): nothing is left to report to.
createInterface({ input: process.stdin }).on('close', () => process.exit(0));

if (warmup > 0) await autocannon({ url, connections, duration: warmup / 1000 });

let ok = 0;
let latencies = new Float64Array(1 << 16);
const instance = autocannon({ url, connections, duration: duration / 1000 });
instance.on('response', (_client, statusCode, _bytes, responseTime) => {
  if (statusCode !== 200) return;
  if (ok === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[ok++] = responseTime;
});
const windowStart = performance.now();
console.log('window-start');
const result = await instance;
const windowEnd = performance.now();
console.log('window-end');

const seconds = (windowEnd - windowStart) / 1000;
const sample = Array.from(latencies.subarray(0, ok));
console.log(
  `result ${JSON.stringify({
    seconds,
    requests: ok,
    requestsPerSec: ok / seconds,
    p50Ms: percentile(sample, 50),
    p99Ms: percentile(sample, 99),
    errors: result.errors,
    timeouts: result.timeouts,
    non2xx: result.non2xx,
  })}`,
);
process.exit(0);
