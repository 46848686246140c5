/**
 * `runCluster()`: the same services on every core. The same file runs in the primary and in each
 * worker (Node's `cluster` forks it again): in the primary it starts a `WorkerPool` and the
 * diagnostics server under a `ServiceGroup` that owns the signals; in a worker it builds the
 * services and runs them until the primary says stop. SIGHUP reloads the workers one at a time.
 */

import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import {
  DiagnosticsServer,
  type DiagnosticsServerOptions,
} from '../diagnostics/diagnostics-server.js';
import { InvalidOptionError } from '../errors.js';
import { defaultRegistry } from '../metrics.js';
import { describe, validateFunction } from '../options.js';
import { type RunResult, ServiceGroup, type ServiceGroupOptions } from '../runner/service-group.js';
import type { Service } from '../service.js';
import { runWorker } from './worker.js';
import { WorkerPool, type WorkerPoolOptions } from './worker-pool.js';

export interface ClusterOptions
  extends Omit<ServiceGroupOptions, 'services' | 'diagnostics'>,
    Omit<WorkerPoolOptions, 'size' | 'name' | 'registry' | 'shutdownTimeout'> {
  /** How many workers: a number, or `'auto'` for one per CPU (`os.availableParallelism()`). */
  workers: number | 'auto';
  /** Builds each worker's services; called in the worker, never in the primary. */
  services: () => Service[] | Promise<Service[]>;
  /** The primary's diagnostics server, reporting every worker. `false` for none. */
  diagnostics?: DiagnosticsServerOptions | false;
  /** The registry workers report into and the primary serves from. @default prom-client's global */
  registry?: Registry;
  /** Sees the primary's group and pool before they run (e.g. to log their events). */
  observePrimary?: (group: ServiceGroup, pool: WorkerPool) => void;
  /** Sees each worker's group before it runs. */
  observeWorker?: (group: ServiceGroup) => void;
}

/** `'auto'` or a number, as `--workers` takes it, to a count of workers. */
export function resolveWorkers(workers: unknown, name = 'workers'): number {
  if (workers === 'auto') return availableParallelism();
  if (typeof workers === 'number' && Number.isSafeInteger(workers) && workers >= 1) return workers;
  throw new InvalidOptionError(
    name,
    `${name} must be a positive integer or 'auto', got ${describe(workers)}`,
  );
}

/**
 * The primary's side, built but not run: a pool of `size` workers, and a group that runs it
 * beside a diagnostics server that reports every worker and aggregates their metrics.
 */
export function createClusterPrimary(
  options: Omit<ClusterOptions, 'services' | 'workers' | 'observeWorker'> & { size: number },
): { group: ServiceGroup; pool: WorkerPool } {
  const {
    size,
    diagnostics,
    registry = defaultRegistry,
    readyTimeout,
    crashLimit,
    crashWindow,
    restartDelay,
    maxRestartDelay,
    observePrimary,
    ...groupOptions
  } = options;
  const pool = new WorkerPool({
    size,
    registry,
    readyTimeout,
    crashLimit,
    crashWindow,
    restartDelay,
    maxRestartDelay,
    ...(groupOptions.shutdownTimeout === undefined
      ? {}
      : { shutdownTimeout: groupOptions.shutdownTimeout }),
  });
  let group: ServiceGroup | undefined;
  const diag =
    diagnostics === false
      ? undefined
      : new DiagnosticsServer({
          registry,
          readiness: () => group?.readiness ?? 'starting',
          stats: async () => ({ ...group?.stats, ...(await pool.workerStats()) }),
          // Each worker's metrics, summed by prom-client's own cluster aggregator, with the
          // primary's (its process, the pool's counters).
          metrics: async () =>
            AggregatorRegistry.aggregate([
              ...(await pool.workerMetrics()),
              await registry.getMetricsAsJSON(),
            ]).metrics(),
          ...diagnostics,
        });
  group = new ServiceGroup({
    ...groupOptions,
    services: [pool],
    ...(diag ? { diagnostics: diag } : {}),
  });
  observePrimary?.(group, pool);
  return { group, pool };
}

/**
 * Runs `services()` in `workers` processes. In the primary, resolves with the group's result
 * (SIGINT/SIGTERM drain every worker; a second signal forces; SIGHUP reloads). In a worker, never
 * returns: the worker exits with its own group's exit code.
 */
export async function runCluster(options: ClusterOptions): Promise<RunResult> {
  const { workers, services, observeWorker, ...rest } = options;
  validateFunction(services, 'services');
  if (cluster.isWorker) {
    return runWorker(await services(), {
      ...(rest.shutdownTimeout === undefined ? {} : { shutdownTimeout: rest.shutdownTimeout }),
      ...(rest.registry ? { registry: rest.registry } : {}),
      ...(observeWorker ? { observe: observeWorker } : {}),
    });
  }
  const { group, pool } = createClusterPrimary({ ...rest, size: resolveWorkers(workers) });
  const onHangup = () => pool.reload().catch(() => {}); // failures are 'reload-failed' events
  process.on('SIGHUP', onHangup);
  try {
    return await group.run();
  } finally {
    process.off('SIGHUP', onHangup);
  }
}
