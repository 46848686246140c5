/**
 * `WorkerPool`: the cluster primary's one service. It forks the workers (Node's `cluster`), knows
 * which are ready, replaces those that crash (with backoff, and gives up on a crash loop), reloads
 * them one at a time without dropping capacity, and drains them all on close. It runs under a
 * ServiceGroup like any other service, so the primary's signals, deadline and exit codes are the
 * single-process ones.
 */

import cluster, { type Worker } from 'node:cluster';
import { channel } from 'node:diagnostics_channel';
import { EventEmitter } from 'node:events';
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';
import {
  CrashLoopError,
  ReloadError,
  ServiceClosedError,
  ServiceDestroyedError,
  WorkerExitError,
  WorkerStartError,
} from '../errors.js';
import { Lifecycle } from '../lifecycle.js';
import { defaultRegistry, exportStats, type StatMetric } from '../metrics.js';
import {
  optional,
  rejectUnknownKeys,
  validateDuration,
  validateInteger,
  validateObject,
} from '../options.js';
import type { CloseOptions, Service, ServiceState } from '../service.js';
import { noop } from '../util.js';
import {
  isBerthMessage,
  type PrimaryMessage,
  type ReplyMessage,
  type ServiceAddress,
  type WorkerMessage,
} from './messages.js';

export interface WorkerPoolOptions {
  /** How many workers serve at once. */
  size: number;
  /** @default 'workers' */
  name?: string;
  /** A new worker must report ready within this, or it is killed. @default 30000 (30 s) */
  readyTimeout?: number;
  /** Default `close()` timeout, given to each worker's own drain. @default 5000 (5 s) */
  shutdownTimeout?: number;
  /** This many crashes within `crashWindow` stop the pool. @default 5 */
  crashLimit?: number;
  /** @default 10000 (10 s) */
  crashWindow?: number;
  /** The first replacement waits this long, doubling with each recent crash. @default 100 (ms) */
  restartDelay?: number;
  /** The longest wait before a replacement. @default 5000 (5 s) */
  maxRestartDelay?: number;
  /** Where the pool's own metrics go; `null` for none. @default prom-client's global registry */
  registry?: Registry | null;
}

export const WORKER_POOL_DEFAULTS = Object.freeze({
  name: 'workers',
  readyTimeout: 30_000, // 30 s
  shutdownTimeout: 5_000, // 5 s
  crashLimit: 5, // crashes...
  crashWindow: 10_000, // ...within 10 s is a crash loop
  restartDelay: 100, // ms, doubling
  maxRestartDelay: 5_000, // 5 s
  /** After a worker's own deadline, how long it gets to exit before SIGKILL. */
  exitGrace: 1_000, // 1 s
  askTimeout: 1_000, // 1 s for a worker to answer a stats/metrics question
});

const KNOWN_OPTIONS = [
  'size',
  'name',
  'readyTimeout',
  'shutdownTimeout',
  'crashLimit',
  'crashWindow',
  'restartDelay',
  'maxRestartDelay',
  'registry',
] as const;

const POOL_METRICS: readonly StatMetric<WorkerPoolStats>[] = [
  {
    name: 'berth_cluster_workers',
    help: 'Workers the pool keeps serving.',
    type: 'gauge',
    read: (s) => s.size,
  },
  {
    name: 'berth_cluster_workers_ready',
    help: 'Workers ready now.',
    type: 'gauge',
    read: (s) => s.ready,
  },
  {
    name: 'berth_cluster_restarts_total',
    help: 'Workers started to replace crashed ones.',
    type: 'counter',
    read: (s) => s.restarts,
  },
  {
    name: 'berth_cluster_crashes_total',
    help: 'Workers that exited unasked.',
    type: 'counter',
    read: (s) => s.crashes,
  },
  {
    name: 'berth_cluster_reloads_total',
    help: 'Completed zero-downtime reloads.',
    type: 'counter',
    read: (s) => s.reloads,
  },
];

/** Where a worker is: `member`s serve; a `candidate` is a reload's new worker; `retiring` drains. */
type Role = 'member' | 'candidate' | 'retiring';

interface Entry {
  worker: Worker;
  pid: number;
  role: Role;
  state: 'starting' | 'ready' | 'draining' | 'exited';
  startedAt: number;
  services: ServiceAddress[];
  /** Settles with the exit code (128+n for a signal) once the process has exited. */
  exited: Promise<number>;
  ready: Promise<void>;
  /** Forked by start(): start() reports it if it never gets ready. */
  initial: boolean;
  /** A reload has a new worker starting in its place: if it crashes, that one replaces it. */
  replacing?: boolean;
}

/** Read through a call: a worker's state changes across the awaits of a reload. */
function hasExited(entry: Entry): boolean {
  return entry.state === 'exited';
}

export interface WorkerInfo {
  id: number;
  pid: number;
  state: Entry['state'];
  role: Role;
  /** Seconds since the worker was forked. */
  uptime: number;
  services: ServiceAddress[];
}

export interface WorkerPoolStats {
  size: number;
  /** Members ready now. */
  ready: number;
  workers: WorkerInfo[];
  /** Workers started to replace crashed ones. */
  restarts: number;
  crashes: number;
  reloads: number;
  /** The services' addresses, as the first ready worker reports them. */
  address: string;
}

export interface WorkerPoolEvents {
  /** A worker reported ready. */
  'worker-ready': [WorkerInfo];
  /** A worker exited when nobody asked it to. */
  'worker-crashed': [{ id: number; pid: number; code: number; restartIn: number | undefined }];
  'reload-started': [{ workers: number }];
  reloaded: [{ replaced: number; duration: number }];
  'reload-failed': [ReloadError];
}

const SIGNAL_NUMBERS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGTERM: 15,
};
const workerChannel = channel('berth:cluster:worker');

export class WorkerPool extends EventEmitter<WorkerPoolEvents> implements Service {
  readonly name: string;
  readonly #size: number;
  readonly #readyTimeout: number;
  readonly #shutdownTimeout: number;
  readonly #crashLimit: number;
  readonly #crashWindow: number;
  readonly #restartDelay: number;
  readonly #maxRestartDelay: number;
  readonly #lifecycle: Lifecycle;
  readonly #entries = new Map<number, Entry>();
  readonly #pending = new Map<number, (reply: ReplyMessage) => void>();
  readonly #restartTimers = new Set<NodeJS.Timeout>();
  #crashTimes: number[] = [];
  #restarts = 0;
  #crashes = 0;
  #reloads = 0;
  #askId = 0;
  #reloading: Promise<void> | undefined;
  #startPromise: Promise<void> | undefined;

  constructor(options: WorkerPoolOptions) {
    super();
    validateObject(options, 'WorkerPool options');
    rejectUnknownKeys(options, 'WorkerPool', KNOWN_OPTIONS);
    if (!cluster.isPrimary)
      throw new ServiceClosedError('a WorkerPool runs only in the cluster primary');
    this.#size = validateInteger(options.size, 'size', { min: 1 });
    this.name = options.name ?? WORKER_POOL_DEFAULTS.name;
    const d = WORKER_POOL_DEFAULTS;
    this.#readyTimeout = optional(options.readyTimeout, d.readyTimeout, (v) =>
      validateDuration(v, 'readyTimeout'),
    );
    this.#shutdownTimeout = optional(options.shutdownTimeout, d.shutdownTimeout, (v) =>
      validateDuration(v, 'shutdownTimeout'),
    );
    this.#crashLimit = optional(options.crashLimit, d.crashLimit, (v) =>
      validateInteger(v, 'crashLimit', { min: 1 }),
    );
    this.#crashWindow = optional(options.crashWindow, d.crashWindow, (v) =>
      validateDuration(v, 'crashWindow'),
    );
    this.#restartDelay = optional(options.restartDelay, d.restartDelay, (v) =>
      validateDuration(v, 'restartDelay'),
    );
    this.#maxRestartDelay = optional(options.maxRestartDelay, d.maxRestartDelay, (v) =>
      validateDuration(v, 'maxRestartDelay'),
    );
    this.#lifecycle = new Lifecycle(() => this.#alive().length === 0);
    const registry = options.registry === undefined ? defaultRegistry : options.registry;
    if (registry) exportStats(registry, this.name, () => this.stats, POOL_METRICS);
  }

  /** Ready while `size` members are ready; a crashed member makes it `starting` until replaced. */
  get state(): ServiceState {
    const state = this.#lifecycle.state;
    if (state !== 'ready') return state;
    return this.#readyMembers() >= this.#size ? 'ready' : 'starting';
  }

  get closed(): Promise<void> {
    return this.#lifecycle.closed;
  }

  get stats(): WorkerPoolStats {
    const first = [...this.#entries.values()].find((e) => e.state === 'ready');
    return {
      size: this.#size,
      ready: this.#readyMembers(),
      workers: [...this.#entries.values()].map((e) => this.#info(e)),
      restarts: this.#restarts,
      crashes: this.#crashes,
      reloads: this.#reloads,
      address: first
        ? first.services.map((s) => `${s.name} ${s.address ?? ''}`.trim()).join(', ')
        : '',
    };
  }

  /** Every live worker's service stats, asked over IPC; a worker that does not answer is left out. */
  async workerStats(): Promise<Record<string, object>> {
    const out: Record<string, object> = {};
    await Promise.all(
      this.#alive().map(async (e) => {
        const data = await this.#ask(e, 'stats');
        out[`worker ${e.worker.id}`] = { ...this.#info(e), services: data ?? 'no answer' };
      }),
    );
    return out;
  }

  /** Every live worker's metrics as prom-client JSON, for `AggregatorRegistry.aggregate`. */
  async workerMetrics(): Promise<MetricObjectWithValues<MetricValue<string>>[][]> {
    const all = await Promise.all(this.#alive().map((e) => this.#ask(e, 'metrics')));
    return all.filter((m): m is MetricObjectWithValues<MetricValue<string>>[] => Array.isArray(m));
  }

  start(): Promise<void> {
    if (this.#startPromise) return this.#startPromise;
    this.#startPromise = this.#start();
    return this.#startPromise;
  }

  async #start(): Promise<void> {
    const first = Array.from({ length: this.#size }, () => this.#fork('member', true));
    const results = await Promise.allSettled(first.map((e) => this.#waitReady(e)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      for (const e of first) e.worker.process.kill('SIGKILL');
      await Promise.all(first.map((e) => e.exited));
      this.#lifecycle.fail(failed.reason);
      throw failed.reason;
    }
    this.#lifecycle.ready();
  }

  close(options: CloseOptions = {}): Promise<void> {
    const timeout = optional(options.timeout, this.#shutdownTimeout, (v) =>
      validateDuration(v, 'timeout'),
    );
    return this.#lifecycle.close(() => this.#drainAll(timeout));
  }

  destroy(error?: Error): Promise<void> {
    return this.#lifecycle.destroy(() => {
      this.#stopRestarts();
      const live = this.#alive();
      for (const e of live) e.worker.process.kill('SIGKILL');
      return (
        error ??
        (live.length > 0
          ? new ServiceDestroyedError(`${this.name} was destroyed: killed ${live.length} worker(s)`)
          : undefined)
      );
    });
  }

  /**
   * Replaces every worker, one at a time: fork a new one, wait until it is ready, then drain an
   * old one. Capacity never drops below `size`. If a new worker fails to become ready within
   * `readyTimeout`, it is killed, the reload stops, and the old workers keep serving; the
   * promise rejects with `ReloadError`. A reload already under way is joined.
   */
  reload(): Promise<void> {
    if (this.#reloading) return this.#reloading;
    if (this.#lifecycle.state !== 'ready') {
      return Promise.reject(
        new ReloadError(`${this.name} is ${this.#lifecycle.state}, not running`),
      );
    }
    this.#reloading = this.#reload().finally(() => {
      this.#reloading = undefined;
    });
    return this.#reloading;
  }

  async #reload(): Promise<void> {
    const started = Date.now();
    const old = [...this.#entries.values()].filter((e) => e.role === 'member');
    this.emit('reload-started', { workers: old.length });
    for (const retiring of old) {
      if (this.#lifecycle.state !== 'ready')
        throw new ReloadError('the pool began closing during the reload');
      // It crashed before its turn: the crash handler has replaced it already.
      if (hasExited(retiring)) continue;
      retiring.replacing = true;
      const fresh = this.#fork('candidate');
      try {
        await this.#waitReady(fresh);
      } catch (err) {
        retiring.replacing = false;
        // It crashed while its replacement was failing: nothing else will replace it.
        if (hasExited(retiring)) this.#replace();
        fresh.worker.process.kill('SIGKILL');
        await fresh.exited;
        const error = new ReloadError(
          `new worker ${fresh.worker.id} did not become ready: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
        this.emit('reload-failed', error);
        throw error;
      }
      fresh.role = 'member';
      if (!hasExited(retiring)) await this.#retire(retiring, this.#shutdownTimeout);
    }
    this.#reloads++;
    this.emit('reloaded', { replaced: old.length, duration: Date.now() - started });
  }

  #fork(role: Role, initial = false): Entry {
    const worker = cluster.fork();
    let markReady = noop;
    let failReady: (err: Error) => void = noop;
    const ready = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      failReady = reject;
    });
    ready.catch(noop);
    const exited = new Promise<number>((resolve) => {
      worker.once('exit', (code: number | null, signal: string | null) => {
        resolve(code ?? 128 + (SIGNAL_NUMBERS[signal ?? ''] ?? 0));
      });
    });
    const entry: Entry = {
      worker,
      pid: worker.process.pid ?? 0,
      role,
      state: 'starting',
      startedAt: Date.now(),
      services: [],
      exited,
      ready,
      initial,
    };
    this.#entries.set(worker.id, entry);
    worker.on('message', (message: unknown) => {
      if (!isBerthMessage<WorkerMessage>(message)) return;
      if (message.berth === 'ready') {
        entry.state = 'ready';
        entry.services = message.services;
        markReady();
        this.emit('worker-ready', this.#info(entry));
        if (workerChannel.hasSubscribers)
          workerChannel.publish({ event: 'ready', ...this.#info(entry) });
      } else if (message.berth === 'draining') {
        entry.state = 'draining';
      } else if (message.berth === 'reply') {
        this.#pending.get(message.id)?.(message);
      }
    });
    // An IPC channel error (the worker died mid-send) must not crash the primary.
    worker.on('error', noop);
    exited.then((code) => {
      const wasReady = entry.state !== 'starting';
      entry.state = 'exited';
      this.#entries.delete(worker.id);
      failReady(
        new WorkerStartError(worker.id, entry.pid, `exited with code ${code} before it was ready`),
      );
      this.#lifecycle.poke();
      // One of the first workers that never got ready is start()'s to report. Any other member
      // that exits is a crash, even while the pool is still starting the others, and even a
      // replacement that dies before it is ready.
      if (entry.role === 'member' && (wasReady || !entry.initial)) this.#onMemberExit(entry, code);
    });
    return entry;
  }

  /** Resolves once the worker is ready; rejects if it exits first or takes over `readyTimeout`. */
  async #waitReady(entry: Entry): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new WorkerStartError(
              entry.worker.id,
              entry.pid,
              `not ready within ${this.#readyTimeout} ms`,
            ),
          ),
        this.#readyTimeout,
      );
    });
    try {
      await Promise.race([entry.ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A member exited without being asked: count it, replace it after a backoff, or give up. */
  #onMemberExit(entry: Entry, code: number): void {
    const state = this.#lifecycle.state;
    if (state !== 'ready' && state !== 'starting') return; // closing: exits are expected
    this.#crashes++;
    const now = Date.now();
    this.#crashTimes = [...this.#crashTimes.filter((t) => now - t < this.#crashWindow), now];
    const recent = this.#crashTimes.length;
    if (recent >= this.#crashLimit) {
      this.emit('worker-crashed', {
        id: entry.worker.id,
        pid: entry.pid,
        code,
        restartIn: undefined,
      });
      const error = new CrashLoopError(this.name, recent, this.#crashWindow);
      void this.#lifecycle.close(async () => {
        await this.#drainAll(this.#shutdownTimeout);
        return error;
      });
      return;
    }
    if (entry.replacing) {
      // The reload's new worker, already starting, takes its place; a second would be one too many.
      this.emit('worker-crashed', { id: entry.worker.id, pid: entry.pid, code, restartIn: 0 });
      return;
    }
    const restartIn = Math.min(this.#restartDelay * 2 ** (recent - 1), this.#maxRestartDelay);
    this.emit('worker-crashed', { id: entry.worker.id, pid: entry.pid, code, restartIn });
    const timer = setTimeout(() => {
      this.#restartTimers.delete(timer);
      this.#replace();
    }, restartIn);
    this.#restartTimers.add(timer);
  }

  /** Forks a member in place of one that exited, unless the pool is closing. */
  #replace(): void {
    const state = this.#lifecycle.state;
    if (state !== 'ready' && state !== 'starting') return;
    this.#restarts++;
    // A replacement that dies before it is ready is one more crash, handled the same way.
    this.#fork('member');
  }

  #stopRestarts(): void {
    for (const timer of this.#restartTimers) clearTimeout(timer);
    this.#restartTimers.clear();
  }

  /** Drains one worker: it gets `timeout` for its own deadline, then `exitGrace`, then SIGKILL. */
  async #retire(entry: Entry, timeout: number): Promise<number> {
    entry.role = 'retiring';
    entry.state = 'draining';
    this.#send(entry, { berth: 'shutdown', timeout });
    const kill = setTimeout(
      () => entry.worker.process.kill('SIGKILL'),
      timeout + WORKER_POOL_DEFAULTS.exitGrace,
    );
    try {
      return await entry.exited;
    } finally {
      clearTimeout(kill);
    }
  }

  async #drainAll(timeout: number): Promise<Error | undefined> {
    await this.#startPromise?.catch(noop);
    this.#stopRestarts();
    const live = this.#alive();
    // With round-robin, the primary holds the listening socket until the last worker closes its
    // listener, and resets the connections it accepted meanwhile and had not handed over yet.
    // So every worker stops accepting first (new clients are then refused cleanly by the
    // kernel), and only then does any worker tell its keep-alive clients to reconnect.
    const asked = Date.now();
    const ask = Math.min(timeout, WORKER_POOL_DEFAULTS.askTimeout);
    await Promise.all(live.map((e) => this.#stopAccepting(e, ask)));
    // One budget for both steps: the drain gets what the ask left, so a worker slow to answer
    // does not stretch the whole shutdown past `timeout` (+ exitGrace, then SIGKILL).
    const left = Math.max(0, timeout - (Date.now() - asked));
    const codes = await Promise.all(live.map((e) => this.#retire(e, left)));
    const failed = codes.findIndex((code) => code !== 0);
    if (failed === -1) return undefined;
    const entry = live[failed]!;
    return new WorkerExitError(entry.worker.id, entry.pid, codes[failed]!);
  }

  /** Asks a worker to close its listeners; resolves on its answer, or after `timeout`. */
  #stopAccepting(entry: Entry, timeout: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        entry.worker.off('message', onMessage);
        resolve();
      };
      const onMessage = (message: unknown) => {
        if (isBerthMessage<WorkerMessage>(message) && message.berth === 'stopped-accepting') done();
      };
      const timer = setTimeout(done, timeout);
      entry.worker.on('message', onMessage);
      void entry.exited.then(done);
      this.#send(entry, { berth: 'stop-accepting' });
    });
  }

  #alive(): Entry[] {
    return [...this.#entries.values()].filter((e) => e.state !== 'exited');
  }

  #readyMembers(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.role === 'member' && e.state === 'ready') n++;
    return n;
  }

  #info(e: Entry): WorkerInfo {
    return {
      id: e.worker.id,
      pid: e.pid,
      state: e.state,
      role: e.role,
      uptime: (Date.now() - e.startedAt) / 1000,
      services: e.services,
    };
  }

  #send(entry: Entry, message: PrimaryMessage): void {
    if (entry.worker.isConnected()) entry.worker.send(message, noop);
  }

  #ask(entry: Entry, what: 'stats' | 'metrics'): Promise<ReplyMessage['data'] | undefined> {
    const id = ++this.#askId;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve(undefined);
      }, WORKER_POOL_DEFAULTS.askTimeout);
      this.#pending.set(id, (reply) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        resolve(reply.data);
      });
      this.#send(entry, { berth: 'ask', id, what });
    });
  }
}
