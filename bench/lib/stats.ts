/**
 * Small, pure statistics for benchmark samples: medians, ranges and the berth/baseline ratio.
 */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values);
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

/** Nearest-rank percentile (p in 0..100) of unsorted values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

/**
 * Median of the per-round ratios berth/baseline. Rounds run berth and baseline back to back, so
 * the ratio within a round cancels the machine's drift between rounds better than a ratio of
 * medians does.
 */
export function pairedRatio(berth: readonly number[], baseline: readonly number[]): number {
  const n = Math.min(berth.length, baseline.length);
  const ratios: number[] = [];
  for (let i = 0; i < n; i++) {
    if (baseline[i]! > 0) ratios.push(berth[i]! / baseline[i]!);
  }
  return median(ratios);
}

/** `1234.5` → `1,235`; small numbers keep `digits` decimals. */
export function fmt(value: number, digits = 0): string {
  if (!Number.isFinite(value)) return '–';
  return value.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function fmtRange(values: readonly number[], digits = 0): string {
  if (values.length === 0) return '–';
  const lo = min(values);
  const hi = max(values);
  return lo === hi ? fmt(lo, digits) : `${fmt(lo, digits)}–${fmt(hi, digits)}`;
}
