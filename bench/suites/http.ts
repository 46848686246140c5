/**
 * http (skeleton): requests/s and p99 latency with 50 keep-alive connections and a small
 * response, `HttpService` (metrics on) vs raw `http.createServer`, load from autocannon in its
 * own process. Pending until `HttpService` is merged; it then needs its server fixtures and run.
 */

import { pendingUnless } from '../lib/berth-api.js';
import type { Suite } from '../lib/suite.js';

export const httpSuite: Suite = {
  name: 'http',
  title: 'HttpService vs raw http.createServer',
  target: 'berth/baseline ratio ≥ 0.95 on requests/s and on p99 latency',
  pending: () => pendingUnless('HttpService'),
  async run() {
    throw new Error('http suite: HttpService is exported now; write its fixtures and run');
  },
};
