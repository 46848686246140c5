/**
 * The worker side of a cluster: runs the services under a ServiceGroup that the primary, not a
 * signal, tells when to stop; reports readiness, stats and metrics over IPC; exits with the
 * group's exit code.
 */

import cluster from 'node:cluster';
import type { Registry } from 'prom-client';
import { collectProcessMetrics, defaultRegistry } from '../metrics.js';
import { ServiceGroup, type ServiceGroupOptions } from '../runner/service-group.js';
import type { Service } from '../service.js';
import { isBerthMessage, type PrimaryMessage, type WorkerMessage } from './messages.js';

export interface WorkerOptions {
  /** The budget for this worker's drain when the primary gives none. @default 5000 */
  shutdownTimeout?: number;
  /** What the primary's `/metrics` aggregates from this worker. @default prom-client's global */
  registry?: Registry;
  /** Called with the group before it runs, e.g. to log its events. */
  observe?: (group: ServiceGroup) => void;
  /** The worker's group's `beforeShutdown` hook: runs in this worker, within its budget. */
  beforeShutdown?: ServiceGroupOptions['beforeShutdown'];
  /** The worker's group's `afterClose` hook: runs in this worker, within its budget. */
  afterClose?: ServiceGroupOptions['afterClose'];
  /** The bound on each hook. @default 5000 (5 s, ServiceGroup's) */
  hookTimeout?: number;
}

function send(message: WorkerMessage): void {
  // The channel is gone if the primary died; the 'disconnect' below ends this worker then.
  if (process.connected) process.send?.(message);
}

/** Signals the primary owns: a terminal's Ctrl-C reaches every process in the group. */
const PRIMARY_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGHUP'];

/**
 * Runs `services` in this worker until the primary says shutdown, then exits with the group's
 * exit code. Never returns.
 */
export async function runWorker(services: Service[], options: WorkerOptions = {}): Promise<never> {
  if (!cluster.isWorker) throw new Error('runWorker() runs only in a cluster worker');
  const registry = options.registry ?? defaultRegistry;
  // The primary's /metrics sums every worker's process metrics too (memory, CPU, event loop).
  collectProcessMetrics(registry);
  for (const signal of PRIMARY_SIGNALS) process.on(signal, () => {});

  const group = new ServiceGroup({
    services,
    signals: false,
    exitOnForce: false,
    // The primary speaks for the service to systemd: a worker's READY=1 would be premature.
    notify: false,
    ...(options.shutdownTimeout === undefined ? {} : { shutdownTimeout: options.shutdownTimeout }),
    ...(options.beforeShutdown ? { beforeShutdown: options.beforeShutdown } : {}),
    ...(options.afterClose ? { afterClose: options.afterClose } : {}),
    ...(options.hookTimeout === undefined ? {} : { hookTimeout: options.hookTimeout }),
  });
  options.observe?.(group);
  group.on('started', ({ services: started }) => send({ berth: 'ready', services: started }));
  group.on('stopping', () => send({ berth: 'draining' }));

  process.on('message', async (message: unknown) => {
    if (!isBerthMessage<PrimaryMessage>(message)) return;
    if (message.berth === 'stop-accepting') {
      // A listener's close reaches the primary as an IPC message of Node's own, sent before
      // this reply on the same channel: when the primary reads the reply, it knows.
      for (const service of services) service.stopAccepting?.();
      send({ berth: 'stopped-accepting' });
    } else if (message.berth === 'shutdown') {
      group.stop('requested', { shutdownTimeout: message.timeout });
    } else if (message.berth === 'ask') {
      const data = message.what === 'stats' ? group.stats : await registry.getMetricsAsJSON();
      send({ berth: 'reply', id: message.id, data });
    }
  });

  const result = await group.run();
  process.exit(result.exitCode);
}
