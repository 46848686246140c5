/**
 * How services put their counters into a prom-client `Registry`.
 *
 * A service keeps its counts in plain fields (they are its `stats` too) and never touches a
 * metric on the hot path. Each metric is created once per registry and shared by every service
 * that reports into it, labelled `service="<name>"`; at scrape time its `collect` reads each
 * service's current stats. Counters advance by the difference since the last scrape, so they stay
 * monotonic. Histograms must see each observation: services keep them in `HistogramCells`
 * (plain arrays, nothing allocated per observation) and the registry reads those at scrape
 * time through `exportHistogram`.
 */

import {
  Counter,
  collectDefaultMetrics,
  register as defaultRegistry,
  Gauge,
  type Registry,
} from 'prom-client';

export type StatValue = number | Readonly<Record<string, number>>;

export interface StatMetric<S> {
  /** Full metric name, e.g. `berth_tcp_connections_total`. */
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  /** When `read` returns a record, the label its keys go into (e.g. `class` for `2xx`). */
  label?: string;
  read: (stats: S) => StatValue;
}

interface Source {
  read: () => StatValue;
  /** Last exported value of a counter, per extra label value ('' when none). */
  last: Map<string, number>;
}

interface Family {
  metric: Counter<string> | Gauge<string>;
  sources: Map<string, Source>;
}

const families = new WeakMap<Registry, Map<string, Family>>();

function familyFor<S>(registry: Registry, spec: StatMetric<S>): Family {
  let byName = families.get(registry);
  if (!byName) {
    byName = new Map();
    families.set(registry, byName);
  }
  const known = byName.get(spec.name);
  // A registry that was cleared (`registry.clear()`) no longer holds our metric: make a new one.
  if (known && registry.getSingleMetric(spec.name) === known.metric) return known;

  const sources = new Map<string, Source>();
  const labelNames = spec.label ? ['service', spec.label] : ['service'];
  const extra = spec.label;
  const config = { name: spec.name, help: spec.help, labelNames, registers: [registry] };
  let metric: Counter<string> | Gauge<string>;
  if (spec.type === 'gauge') {
    metric = new Gauge({
      ...config,
      collect(this: Gauge<string>) {
        for (const [service, source] of sources) {
          const value = source.read();
          if (typeof value === 'number') this.set({ service }, value);
          else if (extra)
            for (const [k, v] of Object.entries(value)) this.set({ service, [extra]: k }, v);
        }
      },
    });
  } else {
    metric = new Counter({
      ...config,
      collect(this: Counter<string>) {
        for (const [service, source] of sources) {
          const value = source.read();
          if (typeof value === 'number') advance(this, source, { service }, '', value);
          else if (extra) {
            for (const [k, v] of Object.entries(value))
              advance(this, source, { service, [extra]: k }, k, v);
          }
        }
      },
    });
  }
  const family = { metric, sources };
  byName.set(spec.name, family);
  return family;
}

function advance(
  counter: Counter<string>,
  source: Source,
  labels: Record<string, string>,
  key: string,
  value: number,
): void {
  const last = source.last.get(key) ?? 0;
  // A smaller value means a new service took over the name (a restart): count from zero again.
  const delta = value >= last ? value - last : value;
  source.last.set(key, value);
  // Incrementing by 0 still creates the series, so dashboards see it before the first event.
  counter.inc(labels, delta);
}

/**
 * Exports `specs` for one service into `registry`, read from `stats()` at every scrape. A later
 * service with the same name replaces the earlier one's source (a restarted service).
 */
export function exportStats<S>(
  registry: Registry,
  service: string,
  stats: () => S,
  specs: readonly StatMetric<S>[],
): void {
  // One snapshot per scrape, not one per metric: prom-client collects every metric in the same
  // synchronous pass, and a task server's stats walk all of its connections.
  let snapshot: S | undefined;
  const current = (): S => {
    if (snapshot === undefined) {
      snapshot = stats();
      queueMicrotask(() => {
        snapshot = undefined;
      });
    }
    return snapshot;
  };
  for (const spec of specs) {
    const family = familyFor(registry, spec);
    const previous = family.sources.get(service);
    family.sources.set(service, {
      read: () => spec.read(current()),
      // Keep what was exported, so a restarted service's counters continue rather than jump.
      last: previous?.last ?? new Map(),
    });
  }
}

/** prom-client's global registry: what services report into unless given one. */
export { defaultRegistry };

/**
 * prom-client's defaults that are gauges named like counters. `promtool check metrics` rejects
 * them (`non-counter metrics should not have "_total" suffix`), and a lint failure anywhere fails
 * the whole scrape's check. Each is the sum of the per-type gauge of the same name without
 * `_total` (`sum(nodejs_active_handles)`), so nothing is lost by leaving them out.
 */
export const MISNAMED_DEFAULT_METRICS = Object.freeze([
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]);

/**
 * Adds prom-client's process metrics (CPU, memory, event loop lag, GC, handles) to `registry`,
 * less `MISNAMED_DEFAULT_METRICS`, unless the process metrics are there already (prom-client
 * throws on a second registration; what someone else registered is left as they made it).
 */
export function collectProcessMetrics(registry: Registry): void {
  if (registry.getSingleMetric('process_cpu_user_seconds_total')) return;
  collectDefaultMetrics({ register: registry });
  for (const name of MISNAMED_DEFAULT_METRICS) registry.removeSingleMetric(name);
}

/**
 * A histogram kept in a plain `Float64Array`: `slots` label combinations (an HTTP status class, a
 * task code), each with a count per bucket, one for +Inf, the sum and the count. Observing is
 * a bucket search and three additions, with nothing allocated: prom-client's own `observe`
 * validates and hashes a labels object on every call, which the http benchmark measured at
 * 1-2 µs a request. `exportHistogram` lets a registry read it at scrape time.
 */
export class HistogramCells {
  readonly buckets: readonly number[];
  readonly slots: number;
  /** Cells per slot: the buckets, +Inf, the sum, the count. */
  readonly stride: number;
  readonly data: Float64Array;

  constructor(buckets: readonly number[], slots: number) {
    this.buckets = buckets;
    this.slots = slots;
    this.stride = buckets.length + 3;
    this.data = new Float64Array(slots * this.stride);
  }

  observe(slot: number, value: number): void {
    const bounds = this.buckets;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    const at = slot * this.stride;
    const d = this.data;
    d[at + i]!++;
    d[at + bounds.length + 1]! += value;
    d[at + bounds.length + 2]!++;
  }
}

/** One sample as prom-client's registry formats it. */
interface Sample {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

interface HistogramSource {
  cells: HistogramCells;
  labels: (slot: number) => Record<string, string>;
  /** What a service of the same name had counted before this one replaced it. */
  base: Float64Array;
}

/**
 * The registry's view of every service's `HistogramCells` under one name: an object with the
 * shape prom-client's `Registry` (and its cluster aggregator) reads, which builds the samples
 * when scraped.
 */
class CellsHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly sources = new Map<string, HistogramSource>();

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: Sample[] } {
    const values: Sample[] = [];
    for (const [service, { cells, labels: labelsOf, base }] of this.sources) {
      const { data, stride, buckets } = cells;
      const n = buckets.length;
      for (let slot = 0; slot < cells.slots; slot++) {
        const at = slot * stride;
        const count = data[at + n + 2]! + base[at + n + 2]!;
        if (count === 0) continue;
        const labels = { service, ...labelsOf(slot) };
        let cumulative = 0;
        for (let i = 0; i <= n; i++) {
          cumulative += data[at + i]! + base[at + i]!;
          values.push({
            metricName: `${this.name}_bucket`,
            labels: { ...labels, le: i < n ? buckets[i]! : '+Inf' },
            value: cumulative,
          });
        }
        values.push({
          metricName: `${this.name}_sum`,
          labels,
          value: data[at + n + 1]! + base[at + n + 1]!,
        });
        values.push({ metricName: `${this.name}_count`, labels, value: count });
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
      source.cells.data.fill(0);
      source.base.fill(0);
    }
  }
}

const cellHistograms = new WeakMap<Registry, Map<string, CellsHistogram>>();

/**
 * Exports one service's `cells` into `registry` as histogram `name`, labelled `service` plus
 * `labels(slot)`; a slot with no observation is left out. A later service of the same name
 * continues its predecessor's counts (a restart), as `exportStats` does for counters.
 */
export function exportHistogram(
  registry: Registry,
  spec: { name: string; help: string },
  service: string,
  cells: HistogramCells,
  labels: (slot: number) => Record<string, string>,
): void {
  let byName = cellHistograms.get(registry);
  if (!byName) {
    byName = new Map();
    cellHistograms.set(registry, byName);
  }
  let histogram = byName.get(spec.name);
  // A registry that was cleared no longer holds it: make a new one.
  if (!histogram || registry.getSingleMetric(spec.name) !== (histogram as unknown)) {
    histogram = new CellsHistogram(spec.name, spec.help);
    byName.set(spec.name, histogram);
    registry.registerMetric(histogram as unknown as Parameters<Registry['registerMetric']>[0]);
  }
  const previous = histogram.sources.get(service);
  const base = new Float64Array(cells.data.length);
  if (previous && previous.cells.data.length === base.length) {
    for (let i = 0; i < base.length; i++) base[i] = previous.base[i]! + previous.cells.data[i]!;
  }
  histogram.sources.set(service, { cells, labels, base });
}
