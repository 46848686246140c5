/**
 * The listening half of a service, shared by every service built on a `net.Server`: start (once,
 * and never after a close), stop accepting, know the address, and sort the server's errors into
 * accept errors (counted, not fatal) and failures (the service is destroyed).
 */

import { channel } from 'node:diagnostics_channel';
import { Server, type Socket } from 'node:net';
import { ServiceClosedError, ServiceFailedError } from './errors.js';
import type { Lifecycle } from './lifecycle.js';
import { formatAddress, type ListenTarget, listenOn } from './listen.js';
import { serveOneConnection } from './systemd/accepted-connection.js';
import { noop } from './util.js';

export interface ListenerOptions {
  /** The service's name, for errors and events. */
  name: string;
  /** Channel prefix: events go to `berth:<component>:listening` and `berth:<component>:error`. */
  component: string;
  server: Server;
  /** Where to listen, unless the server already listens or `connection` is given. */
  target: ListenTarget | undefined;
  /**
   * Serve this one already-accepted connection instead of listening (systemd's Accept=yes,
   * inetd). The service is ready at once, and `onConnectionEnded` runs when it has closed.
   */
  connection?: Socket | undefined;
  onConnectionEnded?: () => void;
  lifecycle: Lifecycle;
  /** The listener failed after it was listening: the service must stop. */
  onFailure: (error: Error) => void;
}

export class Listener {
  /** Errors accepting connections that Node reported (EMFILE when libuv cannot shed them, ...). */
  acceptErrors = 0;
  readonly #options: ListenerOptions;
  readonly #listeningChannel;
  readonly #errorChannel;
  #listening = false;
  #address = '';
  #startPromise: Promise<void> | undefined;

  constructor(options: ListenerOptions) {
    this.#options = options;
    this.#listeningChannel = channel(`berth:${options.component}:listening`);
    this.#errorChannel = channel(`berth:${options.component}:error`);
    options.server.on('error', (err: NodeJS.ErrnoException) => this.#onError(err));
    if (options.server.listening) this.#markListening();
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** `host:port`, `[v6]:port` or the socket path; '' when not listening. */
  get address(): string {
    return this.#address;
  }

  /** Listens (once); rejects if the service is closed, or closes while the listen is under way. */
  start(): Promise<void> {
    const state = this.#options.lifecycle.state;
    if (this.#startPromise && (state === 'starting' || state === 'ready'))
      return this.#startPromise;
    if (state !== 'starting') {
      return Promise.reject(
        new ServiceClosedError(`${this.#options.name}: cannot start a closed service`),
      );
    }
    this.#startPromise = this.#start();
    return this.#startPromise;
  }

  async #start(): Promise<void> {
    const { server, target, lifecycle, name, connection } = this.#options;
    if (connection) {
      lifecycle.ready();
      const peer = connection.remoteAddress;
      this.#address = peer
        ? `connection from ${formatAddress({ address: peer, port: connection.remotePort ?? 0, family: '' })}`
        : 'one connection';
      // After ready(): the server's own 'connection' listeners see a ready service.
      void serveOneConnection(server, connection).then(() => this.#options.onConnectionEnded?.());
      return;
    }
    if (!server.listening) {
      try {
        await listenOn(server, target!);
      } catch (err) {
        lifecycle.fail(err as Error);
        throw err;
      }
    }
    // close() or destroy() may have run while the listen was under way.
    if (lifecycle.state !== 'starting') {
      this.stop();
      throw new ServiceClosedError(`${name}: closed while starting`);
    }
    this.#markListening();
    lifecycle.ready();
    if (this.#listeningChannel.hasSubscribers) {
      this.#listeningChannel.publish({ service: name, address: this.#address });
    }
  }

  /** Settles once a `start()` under way has finished, however it finished. */
  async started(): Promise<void> {
    await this.#startPromise?.catch(noop);
  }

  /**
   * Stops accepting: the listening socket closes, connections stay. net.Server's own close even
   * for an http.Server, whose close would also reap idle keep-alive sockets at once.
   */
  stop(): void {
    if (this.#options.server.listening) Server.prototype.close.call(this.#options.server, noop);
    this.#listening = false;
  }

  #markListening(): void {
    this.#listening = true;
    this.#address = formatAddress(this.#options.server.address());
  }

  #onError(err: NodeJS.ErrnoException): void {
    const { name, lifecycle, onFailure } = this.#options;
    if (err.syscall === 'accept') {
      // libuv keeps the listener open and, on EMFILE/ENFILE, sheds the queued connections it
      // cannot take rather than spinning; accepting resumes by itself once descriptors free up.
      this.acceptErrors++;
      if (this.#errorChannel.hasSubscribers)
        this.#errorChannel.publish({ service: name, error: err });
      return;
    }
    if (lifecycle.state === 'starting' && !this.#listening) return; // listenOn reports it
    onFailure(new ServiceFailedError(name, `listener failed: ${err.message}`, { cause: err }));
  }
}
