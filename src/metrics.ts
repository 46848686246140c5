/**
 * How services put their counters into a prom-client `Registry`.
 *
 * A service keeps its counts in plain fields (they are its `stats` too) and never touches a
 * metric on the hot path. Each metric is created once per registry and shared by every service
 * that reports into it, labelled `service="<name>"`; at scrape time its `collect` reads each
 * service's current stats. Counters advance by the difference since the last scrape, so they stay
 * monotonic. Histograms are the exception: they must see each observation, so services observe
 * them directly through `sharedHistogram`.
 */

import { Counter, register as defaultRegistry, Gauge, Histogram, type Registry } from 'prom-client';

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
  for (const spec of specs) {
    const family = familyFor(registry, spec);
    const previous = family.sources.get(service);
    family.sources.set(service, {
      read: () => spec.read(stats()),
      // Keep what was exported, so a restarted service's counters continue rather than jump.
      last: previous?.last ?? new Map(),
    });
  }
}

const histograms = new WeakMap<Registry, Map<string, Histogram<string>>>();

/** One histogram per registry and name, shared by every service that observes into it. */
export function sharedHistogram(
  registry: Registry,
  config: { name: string; help: string; labelNames: string[]; buckets?: number[] },
): Histogram<string> {
  let byName = histograms.get(registry);
  if (!byName) {
    byName = new Map();
    histograms.set(registry, byName);
  }
  const known = byName.get(config.name);
  if (known && registry.getSingleMetric(config.name) === known) return known;
  const histogram = new Histogram({ ...config, registers: [registry] });
  byName.set(config.name, histogram);
  return histogram;
}

/** prom-client's global registry: what services report into unless given one. */
export { defaultRegistry };
