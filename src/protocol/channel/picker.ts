/**
 * The load balancer: which ready subchannel the next call goes to. `least-in-flight` takes the one
 * carrying the fewest calls (ties go round the ring, so equal connections share evenly);
 * `round-robin` takes each ready one in turn. Pure over the subchannels it is shown.
 */

import type { Subchannel } from './subchannel.js';

/** How a channel spreads its calls over its connections. */
export type BalancePolicy = 'least-in-flight' | 'round-robin';

export const BALANCE_POLICIES: readonly BalancePolicy[] = ['least-in-flight', 'round-robin'];

export class Picker {
  readonly #policy: BalancePolicy;
  #cursor = 0;

  constructor(policy: BalancePolicy) {
    this.#policy = policy;
  }

  /** A ready subchannel for the next call, or undefined when none is ready. */
  pick(subs: readonly Subchannel[]): Subchannel | undefined {
    const n = subs.length;
    if (n === 0) return undefined;
    const start = this.#cursor % n;
    let best: Subchannel | undefined;
    let bestAt = 0;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      const sub = subs[i]!;
      if (!sub.ready) continue;
      if (this.#policy === 'round-robin') {
        best = sub;
        bestAt = i;
        break;
      }
      if (best === undefined || sub.inFlight < best.inFlight) {
        best = sub;
        bestAt = i;
        if (sub.inFlight === 0) break; // cannot do better
      }
    }
    if (best !== undefined) this.#cursor = bestAt + 1;
    return best;
  }
}
