/**
 * A task server's counters and how they reach a prom-client registry. The hot path only bumps
 * plain numbers (a `Float64Array` cell per task code and outcome, and per code and duration
 * bucket); the registry reads them at scrape time. Durations do not go through prom-client's
 * `Histogram.observe`, which hashes its label set on every call: at a million tasks a second
 * that alone costs more than running the task.
 */

import { Counter, type Registry } from 'prom-client';
import { exportHistogram, exportStats, HistogramCells, type StatMetric } from '../metrics.js';

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
  /** Error 232: its response waited for the client's window longer than the write timeout. */
  'timeout',
] as const;

/**
 * How a task ended: `ok`, `error`, `internal`, `cancelled`, `rejected`, `shutdown`, `abandoned`
 * or `timeout`.
 */
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
  TIMEOUT: 7,
} as const);

const OUTCOME_COUNT = OUTCOMES.length;

/** Upper bounds (seconds) of the duration buckets: from a cache hit to a long job. */
export const DURATION_BUCKETS = Object.freeze([
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
]);

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
  windowTimeouts = 0;
  /** Times a client's held responses reached `maxOutboundBytes`. */
  outboundFull = 0;
  /** Tasks ended, by code (0 to 255) and outcome: `byCode[code * OUTCOME_COUNT + outcome]`. */
  readonly byCode = new Float64Array(256 * OUTCOME_COUNT);

  /** Durations (seconds) by task code. */
  readonly durations = new HistogramCells(DURATION_BUCKETS, 256);

  count(code: number, outcome: number): void {
    this.byCode[code * OUTCOME_COUNT + outcome]!++;
  }

  /** A task with this code took `seconds`. */
  observe(code: number, seconds: number): void {
    this.durations.observe(code, seconds);
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
  /**
   * Expired timeouts: `wait`, `read` and `write` each ended a client; `window` ended a task whose
   * response waited for the client's window too long (Error 232).
   */
  timeouts: { wait: number; read: number; write: number; window: number };
  /** Message bytes held now for tasks receiving or waiting for their turn, over every client. */
  bufferedBytes: number;
  /** Response bytes held now (waiting for a window or in a socket's buffer), over every client. */
  outboundBytes: number;
  /** Times a client's held responses reached `maxOutboundBytes` (its new tasks then waited). */
  outboundFull: number;
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
    help: 'Task-protocol timeouts that ended a client (wait, read, write) or a task (window).',
    type: 'counter',
    label: 'timeout',
    read: (s) => s.timeouts,
  },
  {
    name: 'berth_task_buffered_bytes',
    help: 'Message bytes held for tasks not yet running.',
    type: 'gauge',
    read: (s) => s.bufferedBytes,
  },
  {
    name: 'berth_task_outbound_bytes',
    help: 'Response bytes held: waiting for a client window or in a socket buffer.',
    type: 'gauge',
    read: (s) => s.outboundBytes,
  },
  {
    name: 'berth_task_outbound_full_total',
    help: 'Times a client reached maxOutboundBytes, so that its new tasks waited.',
    type: 'counter',
    read: (s) => s.outboundFull,
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
  exportHistogram(
    registry,
    {
      name: 'berth_task_duration_seconds',
      help: 'Time from a task starting to its final frame, by task code.',
    },
    service,
    counters.durations,
    (code) => ({ code: String(code), task: names(code) }),
  );
}
