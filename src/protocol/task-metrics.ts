/**
 * A task server's counters and how they reach a prom-client registry. The hot path only bumps
 * plain numbers (a `Float64Array` cell per task code and outcome, and per code and duration
 * bucket); the registry reads them at scrape time. Durations do not go through prom-client's
 * `Histogram.observe`, which hashes its label set on every call: at a million tasks a second
 * that alone costs more than running the task.
 */

import { Counter, type Registry } from 'prom-client';
import { exportStats, type StatMetric } from '../metrics.js';

/** How a task ended. */
export const OUTCOMES = [
  /** OK with END. */
  'ok',
  /** Error with an application code (0 to 199). */
  'error',
  /** Error 205: the task failed with an uncoded error. */
  'internal',
  /** Error 200. */
  'cancelled',
  /** Error 201, 202 or 203: refused before it ran. */
  'rejected',
  /** Error 204: refused after Goodbye, or cut at the close deadline. */
  'shutdown',
  /** No answer: the connection ended first. */
  'abandoned',
] as const;

/** How a task ended: `ok`, `error`, `internal`, `cancelled`, `rejected`, `shutdown` or `abandoned`. */
export type Outcome = (typeof OUTCOMES)[number];

/** Each outcome's index in the counters. */
export const Outcome = Object.freeze({
  OK: 0,
  ERROR: 1,
  INTERNAL: 2,
  CANCELLED: 3,
  REJECTED: 4,
  SHUTDOWN: 5,
  ABANDONED: 6,
} as const);

const OUTCOME_COUNT = OUTCOMES.length;

/** Upper bounds (seconds) of the duration buckets: from a cache hit to a long job. */
export const DURATION_BUCKETS = Object.freeze([
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
]);
/** Per code: a count per bucket, one for +Inf, then the sum and the count. */
const DURATION_STRIDE = DURATION_BUCKETS.length + 3;

/** The plain numbers a server counts in; `TaskServer.stats` is a snapshot of them. */
export class TaskCounters {
  clients = 0;
  clientsTotal = 0;
  refused = 0;
  inFlight = 0;
  tasksTotal = 0;
  bytesIn = 0;
  bytesOut = 0;
  protocolErrors = 0;
  waitTimeouts = 0;
  readTimeouts = 0;
  writeTimeouts = 0;
  /** Tasks ended, by code (0 to 255) and outcome: `byCode[code * 7 + outcome]`. */
  readonly byCode = new Float64Array(256 * OUTCOME_COUNT);

  /** Durations by code: `DURATION_STRIDE` cells per code (buckets, +Inf, sum, count). */
  readonly durations = new Float64Array(256 * DURATION_STRIDE);

  count(code: number, outcome: number): void {
    this.byCode[code * OUTCOME_COUNT + outcome]!++;
  }

  /** A task with this code took `seconds`. */
  observe(code: number, seconds: number): void {
    const bounds = DURATION_BUCKETS;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    const base = code * DURATION_STRIDE;
    const d = this.durations;
    d[base + i]!++;
    d[base + bounds.length + 1]! += seconds;
    d[base + bounds.length + 2]!++;
  }

  /** Tasks ended, by outcome, over every code. */
  outcomes(): Record<Outcome, number> {
    const totals = new Array<number>(OUTCOME_COUNT).fill(0);
    const byCode = this.byCode;
    for (let i = 0; i < byCode.length; i++) totals[i % OUTCOME_COUNT]! += byCode[i]!;
    return Object.fromEntries(OUTCOMES.map((o, i) => [o, totals[i]!])) as Record<Outcome, number>;
  }
}

/** A snapshot of a task server's counters. */
export interface TaskServerStats {
  /** 1 while listening, else 0. */
  listening: 0 | 1;
  /** Where it listens; '' when not listening. */
  address: string;
  /** Clients connected now (handshake done). */
  clients: number;
  /** Handshakes accepted since the server was made. */
  clientsTotal: number;
  /** Handshakes refused (bad hello, unsupported version, too many clients, shutting down). */
  refused: number;
  /** Tasks started and not yet answered. */
  tasksInFlight: number;
  /** Tasks started since the server was made (refused ones included). */
  tasksTotal: number;
  /** Tasks ended, by outcome. */
  outcomes: Record<Outcome, number>;
  bytesIn: number;
  bytesOut: number;
  /** Connections ended because the peer broke the protocol. */
  protocolErrors: number;
  /** Clients ended by each timeout. */
  timeouts: { wait: number; read: number; write: number };
}

const TASK_METRICS: readonly StatMetric<TaskServerStats>[] = [
  {
    name: 'berth_task_clients',
    help: 'Task-protocol clients connected now.',
    type: 'gauge',
    read: (s) => s.clients,
  },
  {
    name: 'berth_task_clients_total',
    help: 'Task-protocol handshakes accepted.',
    type: 'counter',
    read: (s) => s.clientsTotal,
  },
  {
    name: 'berth_task_refused_total',
    help: 'Task-protocol handshakes refused.',
    type: 'counter',
    read: (s) => s.refused,
  },
  {
    name: 'berth_task_in_flight',
    help: 'Tasks started and not yet answered.',
    type: 'gauge',
    read: (s) => s.tasksInFlight,
  },
  {
    name: 'berth_task_received_bytes_total',
    help: 'Bytes read from task-protocol clients.',
    type: 'counter',
    read: (s) => s.bytesIn,
  },
  {
    name: 'berth_task_sent_bytes_total',
    help: 'Bytes written to task-protocol clients.',
    type: 'counter',
    read: (s) => s.bytesOut,
  },
  {
    name: 'berth_task_protocol_errors_total',
    help: 'Task-protocol connections ended because the client broke the protocol.',
    type: 'counter',
    read: (s) => s.protocolErrors,
  },
  {
    name: 'berth_task_timeouts_total',
    help: 'Task-protocol clients ended by a timeout.',
    type: 'counter',
    label: 'timeout',
    read: (s) => s.timeouts,
  },
];

interface Source {
  counters: TaskCounters;
  names: (code: number) => string;
  last: Map<string, number>;
}

const taskCounters = new WeakMap<
  Registry,
  { metric: Counter<string>; sources: Map<string, Source> }
>();

/** `berth_task_tasks_total{service,code,task,outcome}`, read from the counters at scrape time. */
function exportTaskCounter(
  registry: Registry,
  service: string,
  counters: TaskCounters,
  names: (code: number) => string,
): void {
  let family = taskCounters.get(registry);
  if (!family || registry.getSingleMetric('berth_task_tasks_total') !== family.metric) {
    const sources = new Map<string, Source>();
    const metric = new Counter({
      name: 'berth_task_tasks_total',
      help: 'Tasks ended, by task code and outcome.',
      labelNames: ['service', 'code', 'task', 'outcome'],
      registers: [registry],
      collect(this: Counter<string>) {
        for (const [service, source] of sources) {
          const byCode = source.counters.byCode;
          for (let i = 0; i < byCode.length; i++) {
            const value = byCode[i]!;
            const key = String(i);
            const last = source.last.get(key) ?? 0;
            if (value === 0 && last === 0) continue;
            const code = Math.floor(i / OUTCOME_COUNT);
            const labels = {
              service,
              code: String(code),
              task: source.names(code),
              outcome: OUTCOMES[i % OUTCOME_COUNT]!,
            };
            source.last.set(key, value);
            this.inc(labels, value >= last ? value - last : value);
          }
        }
      },
    });
    family = { metric, sources };
    taskCounters.set(registry, family);
  }
  const previous = family.sources.get(service);
  family.sources.set(service, { counters, names, last: previous?.last ?? new Map() });
}

interface DurationSource {
  counters: TaskCounters;
  names: (code: number) => string;
  /** What a service of the same name had counted before this one replaced it. */
  base: Float64Array;
}

/** One sample as prom-client's registry formats it. */
interface Sample {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

const DURATION_NAME = 'berth_task_duration_seconds';

/**
 * `berth_task_duration_seconds{service,code,task}` as a prom-client metric object: the registry
 * calls `get()` at scrape time and it reads the buckets every server of that registry kept.
 */
class DurationHistogram {
  readonly name = DURATION_NAME;
  readonly help = 'Time from a task starting to its final frame, by task code.';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly sources = new Map<string, DurationSource>();

  get(): { name: string; help: string; type: string; aggregator: string; values: Sample[] } {
    const values: Sample[] = [];
    const n = DURATION_BUCKETS.length;
    for (const [service, { counters, names, base }] of this.sources) {
      const d = counters.durations;
      for (let code = 0; code < 256; code++) {
        const at = code * DURATION_STRIDE;
        const count = d[at + n + 2]! + base[at + n + 2]!;
        if (count === 0) continue;
        const labels = { service, code: String(code), task: names(code) };
        let cumulative = 0;
        for (let i = 0; i <= n; i++) {
          cumulative += d[at + i]! + base[at + i]!;
          values.push({
            metricName: `${DURATION_NAME}_bucket`,
            labels: { ...labels, le: i < n ? DURATION_BUCKETS[i]! : '+Inf' },
            value: cumulative,
          });
        }
        values.push({
          metricName: `${DURATION_NAME}_sum`,
          labels,
          value: d[at + n + 1]! + base[at + n + 1]!,
        });
        values.push({ metricName: `${DURATION_NAME}_count`, labels, value: count });
      }
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    };
  }

  reset(): void {
    for (const source of this.sources.values()) {
      source.counters.durations.fill(0);
      source.base.fill(0);
    }
  }
}

const durationHistograms = new WeakMap<Registry, DurationHistogram>();

function exportDurations(
  registry: Registry,
  service: string,
  counters: TaskCounters,
  names: (code: number) => string,
): void {
  let histogram = durationHistograms.get(registry);
  // A registry that was cleared no longer holds it: make a new one.
  if (!histogram || registry.getSingleMetric(DURATION_NAME) !== (histogram as unknown)) {
    histogram = new DurationHistogram();
    durationHistograms.set(registry, histogram);
    registry.registerMetric(histogram as unknown as Parameters<Registry['registerMetric']>[0]);
  }
  const previous = histogram.sources.get(service);
  const base = new Float64Array(256 * DURATION_STRIDE);
  if (previous) {
    // A restarted service continues its predecessor's histogram rather than resetting it.
    for (let i = 0; i < base.length; i++) {
      base[i] = previous.base[i]! + previous.counters.durations[i]!;
    }
  }
  histogram.sources.set(service, { counters, names, base });
}

/** Exports a task server's metrics into `registry`, read from `counters` at scrape time. */
export function exportTaskMetrics(
  registry: Registry,
  service: string,
  stats: () => TaskServerStats,
  counters: TaskCounters,
  names: (code: number) => string,
): void {
  exportStats(registry, service, stats, TASK_METRICS);
  exportTaskCounter(registry, service, counters, names);
  exportDurations(registry, service, counters, names);
}
