/**
 * startup (skeleton): time from spawning `berth demo` to `GET /ready` answering 200, against
 * `node -e` opening one HTTP listener and answering its first request; the figure is the
 * difference in ms. Pending until the runner (`ServiceGroup`) and the diagnostics server that
 * serves `/ready` are merged.
 */

import { pendingUnless } from '../lib/berth-api.js';
import type { Suite } from '../lib/suite.js';

export const startupSuite: Suite = {
  name: 'startup',
  title: '`berth demo` to /ready vs a bare node listener',
  target: 'report the difference in ms (no fixed target)',
  pending: () => pendingUnless('ServiceGroup', 'DiagnosticsServer'),
  async run() {
    throw new Error('startup suite: the runner is exported now; write its measurement and run');
  },
};
