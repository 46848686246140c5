/**
 * The messages a cluster primary and its workers exchange over Node's IPC channel. Each carries
 * a `berth` field naming it, so they never mix with the application's own messages (or
 * prom-client's).
 */

import type { MetricObjectWithValues, MetricValue } from 'prom-client';

export interface ServiceAddress {
  name: string;
  address?: string;
}

/** Worker → primary: every service started; it takes traffic. */
export interface ReadyMessage {
  berth: 'ready';
  services: ServiceAddress[];
}

/** Worker → primary: its drain began. */
export interface DrainingMessage {
  berth: 'draining';
}

/** Primary → worker: stop accepting connections, then say so; the drain comes next. */
export interface StopAcceptingMessage {
  berth: 'stop-accepting';
}

/** Worker → primary: every listener of this worker is closed. */
export interface StoppedAcceptingMessage {
  berth: 'stopped-accepting';
}

/** Primary → worker: drain and exit, within `timeout` ms. */
export interface ShutdownMessage {
  berth: 'shutdown';
  timeout: number;
}

/** Primary → worker: a question, answered by a `reply` with the same `id`. */
export interface AskMessage {
  berth: 'ask';
  id: number;
  what: 'stats' | 'metrics';
}

export interface ReplyMessage {
  berth: 'reply';
  id: number;
  data: Record<string, object> | MetricObjectWithValues<MetricValue<string>>[];
}

export type WorkerMessage = ReadyMessage | DrainingMessage | StoppedAcceptingMessage | ReplyMessage;
export type PrimaryMessage = StopAcceptingMessage | ShutdownMessage | AskMessage;

export function isBerthMessage<T extends { berth: string }>(value: unknown): value is T {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { berth?: unknown }).berth === 'string'
  );
}
