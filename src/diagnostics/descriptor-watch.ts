/**
 * `DescriptorWatch`: notices when the process is out of file descriptors.
 *
 * Node never says so. On EMFILE/ENFILE libuv's accept loop closes a reserve descriptor, accepts
 * and at once closes every connection waiting in the queue, and reopens the reserve; it reports
 * nothing to Node unless that trick fails. So a process at its `ulimit -n` drops every new
 * connection while every counter (`acceptErrors` too) stays still and nothing is logged.
 *
 * Once per interval the watch opens the null device twice and closes both: four system calls,
 * whatever the number of connections. When an open fails with EMFILE or ENFILE, the process is
 * out of descriptors or one short: libuv then takes the last one for the next connection and
 * sheds the rest, and a process that churns through that last one (each new connection answered
 * and closed) would pass a one-descriptor probe while it sheds. The watch counts the episode,
 * publishes it on `berth:process:descriptors`, and publishes again when two are free.
 */

import { channel } from 'node:diagnostics_channel';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { devNull } from 'node:os';

export interface DescriptorStats {
  /** Descriptors open now (from /proc/self/fd); the limit itself while exhausted; undefined off Linux. */
  open: number | undefined;
  /** The soft limit (`ulimit -n`, from /proc/self/limits); undefined off Linux. */
  limit: number | undefined;
  /** The last probe found fewer than two descriptors free. */
  exhausted: boolean;
  /** Episodes seen: probes that found the process out after one that did not. */
  exhaustions: number;
  /** Time spent out of descriptors, ms (as seen by the probes). */
  exhaustedMs: number;
}

/** What `berth:process:descriptors` carries. */
export interface DescriptorEvent {
  exhausted: boolean;
  limit: number | undefined;
  /** On the way out of an episode: how long it lasted, ms. */
  duration?: number;
}

const events = channel('berth:process:descriptors');

/** The soft `Max open files` of this process, or undefined where /proc is not. */
function readLimit(): number | undefined {
  try {
    const line = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return line ? Number(line[1]) : undefined;
  } catch {
    return undefined;
  }
}

export class DescriptorWatch {
  readonly #interval: number;
  readonly #limit = readLimit();
  #timer: NodeJS.Timeout | undefined;
  #exhaustedSince: number | undefined;
  #exhaustions = 0;
  #exhaustedMs = 0;

  /** `interval`: ms between probes. */
  constructor(interval: number) {
    this.#interval = interval;
  }

  /** What the metrics read at each scrape: no directory listing. */
  get counts(): Pick<DescriptorStats, 'exhausted' | 'exhaustions'> {
    return { exhausted: this.#exhaustedSince !== undefined, exhaustions: this.#exhaustions };
  }

  /** Everything, `open` counted from /proc/self/fd (O(descriptors): for /debug/vars). */
  get stats(): DescriptorStats {
    const exhausted = this.#exhaustedSince !== undefined;
    let open: number | undefined = exhausted ? this.#limit : undefined;
    if (!exhausted) {
      try {
        open = readdirSync('/proc/self/fd').length - 1; // less the one reading the directory
      } catch {}
    }
    const now = exhausted ? performance.now() - this.#exhaustedSince! : 0;
    return {
      open,
      limit: this.#limit,
      exhausted,
      exhaustions: this.#exhaustions,
      exhaustedMs: Math.round(this.#exhaustedMs + now),
    };
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.#probe(), this.#interval);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #probe(): void {
    let out = false;
    let first: number | undefined;
    try {
      first = openSync(devNull, 'r');
      closeSync(openSync(devNull, 'r'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EMFILE' && code !== 'ENFILE') return; // no null device to probe with: unknown
      out = true;
    } finally {
      if (first !== undefined) closeSync(first);
    }
    const now = performance.now();
    if (out && this.#exhaustedSince === undefined) {
      this.#exhaustedSince = now;
      this.#exhaustions++;
      if (events.hasSubscribers) events.publish({ exhausted: true, limit: this.#limit });
    } else if (!out && this.#exhaustedSince !== undefined) {
      const duration = now - this.#exhaustedSince;
      this.#exhaustedMs += duration;
      this.#exhaustedSince = undefined;
      if (events.hasSubscribers) {
        events.publish({ exhausted: false, limit: this.#limit, duration: Math.round(duration) });
      }
    }
  }
}
