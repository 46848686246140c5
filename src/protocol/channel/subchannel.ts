/**
 * `Subchannel`: one connection slot of a channel, to one address. It keeps a `TaskClient` ready
 * there: it connects, reconnects with backoff after a failure, and on the server's Goodbye sets the
 * old connection aside to finish its calls (draining) while it opens a new one at once. It knows
 * nothing of calls beyond how many it carries; the channel picks among subchannels and retries.
 */

import { subscribe } from 'node:diagnostics_channel';
import { TaskClient, type TaskClientOptions } from '../task-client.js';
import type { Backoff } from './backoff.js';
import type { ResolvedAddress } from './resolver.js';

/** What a subchannel is doing: `connecting`, `ready`, `backoff` (waiting to retry) or `closed`. */
export type SubchannelState = 'connecting' | 'ready' | 'backoff' | 'closed';

/** The options each connection is made with (where to connect is the subchannel's). */
export type ConnectionOptions = Omit<
  TaskClientOptions,
  'host' | 'port' | 'path' | 'socket' | 'signal'
>;

/** What a subchannel tells its channel. */
export interface SubchannelHost {
  readonly connectionOptions: ConnectionOptions;
  /** The state changed (a connection became ready, failed, or said goodbye). */
  changed(sub: Subchannel): void;
  connected(sub: Subchannel, reconnect: boolean): void;
  connectFailed(sub: Subchannel, error: Error): void;
  /** A ready connection failed (not after a Goodbye). */
  lost(sub: Subchannel, error: Error): void;
  goodbye(sub: Subchannel, code: number, reason: string): void;
}

/** A connection that says goodbye within this long of its handshake is replaced after a backoff. */
const YOUNG_MS = 1_000;

/** TaskClient publishes each Goodbye; this finds the subchannel whose connection it was. */
const owners = new WeakMap<TaskClient, Subchannel>();
let subscribed = false;

function watchGoodbyes(): void {
  if (subscribed) return;
  subscribed = true;
  // One subscriber for the process, whatever the number of channels: the lookup is a WeakMap get.
  subscribe('berth:task:goodbye', (message) => {
    const { client, code, reason } = message as {
      client: TaskClient;
      code: number;
      reason: string;
    };
    owners.get(client)?.onGoodbye(client, code, reason);
  });
}

export class Subchannel {
  readonly address: ResolvedAddress;
  /** Which of the address's connections this is (0 to connectionsPerEndpoint - 1). */
  readonly slot: number;
  readonly #host: SubchannelHost;
  readonly #backoff: Backoff;
  state: SubchannelState = 'connecting';
  /** The connection new calls go to, while ready. */
  client: TaskClient | undefined;
  /** Connections that said Goodbye and still finish calls. */
  readonly draining = new Set<TaskClient>();
  /** Calls on this subchannel now (the channel counts them). */
  inFlight = 0;
  /** Handshakes done (the next one is a reconnect). */
  connects = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Aborts the attempt to connect under way (the channel closed meanwhile). */
  #attempt: AbortController | undefined;
  /** performance.now() when the current connection became ready. */
  #readyAt = 0;

  constructor(host: SubchannelHost, address: ResolvedAddress, backoff: Backoff, slot = 0) {
    this.#host = host;
    this.address = address;
    this.slot = slot;
    this.#backoff = backoff;
    watchGoodbyes();
  }

  /** True when a call may go here now. */
  get ready(): boolean {
    return this.state === 'ready' && this.client !== undefined && !this.client.goodbye;
  }

  start(): void {
    this.#connect();
  }

  /** @internal The server said Goodbye on one of this subchannel's connections. */
  onGoodbye(client: TaskClient, code: number, reason: string): void {
    if (client !== this.client) return;
    this.client = undefined;
    this.draining.add(client);
    this.#host.goodbye(this, code, reason);
    if (this.state === 'closed') return;
    // A Goodbye is a deploy, not a failure: the next connection is made at once. Unless the
    // connection was new: a server that says goodbye to every newcomer must not be hammered.
    if (performance.now() - this.#readyAt < YOUNG_MS) this.#later();
    else this.#connect();
  }

  /** Graceful: no new connection; each open one finishes its calls, then closes. */
  async close(): Promise<void> {
    this.#stop();
    const clients = [...this.draining, ...(this.client ? [this.client] : [])];
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
  }

  /** Abrupt: every connection destroyed now, its calls failed with `error`. */
  async destroy(error?: Error): Promise<void> {
    this.#stop();
    const clients = [...this.draining, ...(this.client ? [this.client] : [])];
    await Promise.all(clients.map((c) => c.destroy(error)));
  }

  #stop(): void {
    this.state = 'closed';
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#attempt?.abort();
    this.#attempt = undefined;
  }

  #set(state: SubchannelState): void {
    this.state = state;
    this.#host.changed(this);
  }

  #connect(): void {
    this.#timer = undefined;
    this.#set('connecting');
    const reconnect = this.connects > 0;
    const attempt = new AbortController();
    this.#attempt = attempt;
    TaskClient.connect({
      ...this.#host.connectionOptions,
      ...this.address.target,
      signal: attempt.signal,
    }).then(
      (client) => {
        if (this.#attempt === attempt) this.#attempt = undefined;
        if (this.state === 'closed') {
          void client.close();
          return;
        }
        owners.set(client, this);
        client.closed.then(
          () => this.#ended(client, undefined),
          (error: Error) => this.#ended(client, error),
        );
        this.connects++;
        this.#backoff.reset();
        this.#readyAt = performance.now();
        this.client = client;
        this.#host.connected(this, reconnect);
        this.#set('ready');
      },
      (error: Error) => {
        if (this.#attempt === attempt) this.#attempt = undefined;
        if (this.state === 'closed') return;
        this.#host.connectFailed(this, error);
        this.#later();
      },
    );
  }

  /** A connection closed: a drained one is simply gone; the current one is replaced. */
  #ended(client: TaskClient, error: Error | undefined): void {
    if (this.draining.delete(client) || client !== this.client) return;
    this.client = undefined;
    if (this.state === 'closed') return;
    if (error) this.#host.lost(this, error);
    this.#later();
  }

  #later(): void {
    this.#set('backoff');
    this.#timer = setTimeout(() => this.#connect(), this.#backoff.next()).unref();
  }
}
