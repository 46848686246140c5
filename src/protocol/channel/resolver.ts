/**
 * `Resolver`: turns a channel's endpoints into the addresses to connect to. An IP address or a
 * unix path is one address as it is; a host name is looked up (every record: a Kubernetes headless
 * Service answers with one per ready pod) when the channel starts, every `refresh` ms, and soon
 * after a connection to it fails. It owns no socket: it reports address lists to its channel.
 */

import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { type Endpoint, formatEndpoint } from './endpoint.js';

/** A name lookup: every address for `hostname`. berth's default is `dns.promises.lookup(all)`. */
export type Lookup = (hostname: string) => Promise<readonly { address: string }[]>;

/** One address to connect to, and the endpoint it came from. */
export interface ResolvedAddress {
  /** `ip:port`, `[v6]:port` or `unix:/path`: unique within a channel. */
  readonly key: string;
  readonly endpoint: Endpoint;
  /** What `TaskClient.connect` takes: `{ host, port }` with an IP address, or `{ path }`. */
  readonly target: Endpoint;
}

export interface ResolverOptions {
  lookup: Lookup;
  /** Look names up again this often (ms); 0 for only at start and after failures. */
  refresh: number;
  /** Told every time the set of addresses may have changed (sorted by key, de-duplicated). */
  onUpdate: (addresses: readonly ResolvedAddress[]) => void;
  /** Told when a lookup fails; the addresses it had stay in use. */
  onError: (endpoint: Endpoint, error: Error) => void;
}

/** After a failure, at most one lookup per this many ms: a server down must not flood DNS. */
const MIN_RELOOKUP_MS = 1_000;

export const defaultLookup: Lookup = (hostname) => dnsLookup(hostname, { all: true });

function isName(endpoint: Endpoint): endpoint is { host: string; port: number } {
  return 'host' in endpoint && isIP(endpoint.host) === 0;
}

export class Resolver {
  readonly #endpoints: readonly Endpoint[];
  readonly #options: ResolverOptions;
  /** The last good answer for each endpoint (by its index). */
  readonly #answers: (readonly ResolvedAddress[] | undefined)[];
  #timer: NodeJS.Timeout | undefined;
  #retry: NodeJS.Timeout | undefined;
  #lastLookup = Number.NEGATIVE_INFINITY;
  #stopped = false;
  /** Lookups started and not yet answered. */
  #pending = 0;

  constructor(endpoints: readonly Endpoint[], options: ResolverOptions) {
    this.#endpoints = endpoints;
    this.#options = options;
    this.#answers = endpoints.map((endpoint) =>
      isName(endpoint)
        ? undefined
        : [{ key: formatEndpoint(endpoint), endpoint, target: endpoint }],
    );
  }

  /** True when some endpoint is a name (so there is something to look up). */
  get dynamic(): boolean {
    return this.#endpoints.some(isName);
  }

  /** True while a lookup is under way and no answer for that endpoint has come yet. */
  get resolving(): boolean {
    return this.#pending > 0 && this.#answers.some((a) => a === undefined);
  }

  /** Reports the static addresses, looks the names up, and again every `refresh` ms. */
  start(): void {
    this.#publish();
    if (!this.dynamic) return;
    this.#lookupAll();
    if (this.#options.refresh > 0) {
      this.#timer = setInterval(() => this.#lookupAll(), this.#options.refresh).unref();
    }
  }

  /** A connection failed: look the names up again soon (at most once a second). */
  refresh(): void {
    if (this.#stopped || !this.dynamic || this.#retry !== undefined) return;
    const wait = Math.max(0, this.#lastLookup + MIN_RELOOKUP_MS - performance.now());
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#lookupAll();
    }, wait).unref();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#retry);
  }

  #lookupAll(): void {
    if (this.#stopped) return;
    this.#lastLookup = performance.now();
    this.#endpoints.forEach((endpoint, i) => {
      if (!isName(endpoint)) return;
      this.#pending++;
      let answer: Promise<readonly { address: string }[]>;
      try {
        answer = Promise.resolve(this.#options.lookup(endpoint.host));
      } catch (error) {
        answer = Promise.reject(error);
      }
      answer.then(
        (records) => {
          this.#pending--;
          if (this.#stopped) return;
          const addresses = records.map(({ address }) => {
            const target = { host: address, port: endpoint.port };
            return { key: formatEndpoint(target), endpoint, target };
          });
          if (addresses.length === 0) {
            this.#options.onError(endpoint, new Error(`${endpoint.host}: no addresses`));
            return; // keep what we had: an empty answer is more likely a glitch than a wish
          }
          this.#answers[i] = addresses;
          this.#publish();
        },
        (error: unknown) => {
          this.#pending--;
          if (this.#stopped) return;
          this.#options.onError(endpoint, error as Error);
          if (this.#answers[i] === undefined) this.#publish(); // nobody waits for it any longer
        },
      );
    });
  }

  #publish(): void {
    const byKey = new Map<string, ResolvedAddress>();
    for (const answer of this.#answers) for (const a of answer ?? []) byKey.set(a.key, a);
    this.#options.onUpdate([...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : 1)));
  }
}
