/**
 * Load generator for the tasks suite: one long-lived process per protocol (`--impl berth|grpc|
 * undici|raw`), so no trial pays a process start. The harness writes one JSON command a line on
 * stdin; each is answered with `result <json>` (or `error <message>`) when it is done:
 *
 *   {"op":"rt","port":P,"connections":C,"inflight":N,"warmup":ms,"duration":ms}
 *       round trips of a 64-byte echo on C fresh connections, N calls outstanding on each;
 *       `window-start` / `window-end` are printed around the measured window (the harness reads
 *       the server's CPU on them). Result: ops, seconds, opsPerSec, loadCpuUs, errors.
 *   {"op":"bulk","port":P,"bulkPort":B,"bytes":n,"warmupBytes":n,"window":w?}
 *       one streamed response of `bytes` bytes after a warm-up transfer; window lines as above.
 *   {"op":"cancel","port":P,"probes":n,"budget":ms,"load":{"connections":C,"inflight":N}|null}
 *       up to n cancel probes one after another (for at most `budget` ms), with round-trip load
 *       running meanwhile when `load`.
 *   {"op":"idle","port":P,"connections":n}  → `idle <n>` once open; then {"op":"release"}.
 *   {"op":"restart-start","port":P,"connections":C,"inflight":N}  starts load that goes on
 *       through failures (bench/load/task-restart.ts); answered at once with its start time;
 *       {"op":"restart-stop"} stops it and answers with its counts and timeline.
 *
 * The process exits when stdin ends (the harness went away, however it ended).
 */

import { createInterface } from 'node:readline';
import { arg } from '../fixtures/control.js';
import { openVariantRt } from './task-client-variants.js';
import {
  type Impl,
  openBulk,
  openCancel,
  openIdle,
  openRt,
  type RtCloser,
  type RtSession,
} from './task-drivers.js';
import { type RestartLoad, startRestartLoad } from './task-restart.js';

// A suite protocol, or one of bench/load/task-client-variants.ts's client variants.
const impl = arg('impl', 'berth') as Impl;

interface RtCommand {
  op: 'rt';
  port: number;
  connections: number;
  inflight: number;
  warmup: number;
  duration: number;
}
interface BulkCommand {
  op: 'bulk';
  port: number;
  bulkPort: number;
  bytes: number;
  warmupBytes: number;
  window?: number;
}
interface CancelCommand {
  op: 'cancel';
  port: number;
  probes: number;
  /** Stop probing after this long even if fewer probes were made (grpc-js under load is slow). */
  budget: number;
  load: { connections: number; inflight: number } | null;
}
interface IdleCommand {
  op: 'idle';
  port: number;
  connections: number;
  /** berth: each client runs one echo task before it idles. */
  task?: boolean;
}
interface RestartCommand {
  op: 'restart-start';
  port: number;
  connections: number;
  inflight: number;
}
type Command =
  | RtCommand
  | BulkCommand
  | CancelCommand
  | IdleCommand
  | RestartCommand
  | { op: 'release' }
  | { op: 'restart-stop' };

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function cpuNow(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

/**
 * How long to let outstanding calls finish after a window before the connections are closed
 * under them (grpc-js takes seconds to answer 8 × 1,024; nothing after the window is counted).
 */
const STOP_BOUND = 300;

/**
 * Waits `ms`, and longer (by at most `extra` ms) until `count()` reaches `atLeast`: a window
 * must see every call in flight complete at least once, or a protocol whose round trip at 8,192
 * in flight is longer than the window would be measured on the bursts of its first cycle.
 */
async function waitFor(ms: number, count: () => number, atLeast: number, extra: number) {
  const t0 = performance.now();
  await sleep(ms);
  while (count() < atLeast && performance.now() - t0 < ms + extra) await sleep(10);
}

async function rt(cmd: RtCommand): Promise<object> {
  const session: RtSession =
    (await openVariantRt(impl, cmd.port, cmd.connections, cmd.inflight)) ??
    (await openRt(impl, cmd.port, cmd.connections, cmd.inflight));
  const total = cmd.connections * cmd.inflight;
  let phase: 'warmup' | 'measure' | 'done' = 'warmup';
  let warm = 0;
  let ops = 0;
  let errors = 0;
  let firstError: string | undefined;
  session.start(
    (n) => {
      if (phase === 'measure') ops += n;
      else if (phase === 'warmup') warm += n;
    },
    (error) => {
      if (phase === 'done') return; // calls cut by the close after the window
      errors++;
      firstError ??= error.message;
    },
  );
  await waitFor(cmd.warmup, () => warm, total, 2_000);
  phase = 'measure';
  console.log('window-start');
  const t0 = performance.now();
  const cpu0 = cpuNow();
  await waitFor(cmd.duration, () => ops, total, 3_000);
  phase = 'done';
  const seconds = (performance.now() - t0) / 1000;
  const loadCpuUs = cpuNow() - cpu0;
  console.log('window-end');
  await session.stop(STOP_BOUND);
  await session.close();
  return { ops, seconds, opsPerSec: ops / seconds, loadCpuUs, errors, firstError };
}

async function bulk(cmd: BulkCommand): Promise<object> {
  const session = await openBulk(impl, cmd.port, cmd.bulkPort, cmd.window);
  try {
    await session.fetch(cmd.warmupBytes);
    console.log('window-start');
    const t0 = performance.now();
    const cpu0 = cpuNow();
    await session.fetch(cmd.bytes);
    const seconds = (performance.now() - t0) / 1000;
    const loadCpuUs = cpuNow() - cpu0;
    console.log('window-end');
    return { bytes: cmd.bytes, seconds, mibPerSec: cmd.bytes / 2 ** 20 / seconds, loadCpuUs };
  } finally {
    await session.close();
  }
}

async function cancel(cmd: CancelCommand): Promise<object> {
  const background = cmd.load
    ? await openRt(impl, cmd.port, cmd.load.connections, cmd.load.inflight)
    : undefined;
  let ops = 0;
  let errors = 0;
  let probing = true;
  background?.start(
    (n) => {
      ops += n;
    },
    () => {
      if (probing) errors++;
    },
  );
  const prober = await openCancel(impl, cmd.port);
  const latencies: number[] = [];
  let lost = 0;
  const t0 = performance.now();
  try {
    if (background) await sleep(200); // let the load reach its pace first
    for (let i = 0; i < cmd.probes && performance.now() - t0 < cmd.budget; i++) {
      const ms = await prober.probe(`probe-${i}`);
      if (ms === undefined) lost++;
      else latencies.push(ms);
    }
  } finally {
    probing = false;
    await prober.close();
    await background?.stop(STOP_BOUND);
    await background?.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  return { latencies, lost, loadOpsPerSec: ops / seconds, errors };
}

let idle: RtCloser | undefined;
let restart: RestartLoad | undefined;

async function run(cmd: Command): Promise<object> {
  switch (cmd.op) {
    case 'rt':
      return rt(cmd);
    case 'bulk':
      return bulk(cmd);
    case 'cancel':
      return cancel(cmd);
    case 'idle':
      idle = await openIdle(impl, cmd.port, cmd.connections, cmd.task === true);
      console.log(`idle ${cmd.connections}`);
      return { connections: cmd.connections };
    case 'release':
      await idle?.close();
      idle = undefined;
      return {};
    case 'restart-start':
      restart = await startRestartLoad(impl, cmd.port, cmd.connections, cmd.inflight);
      return { startedAt: restart.startedAt };
    case 'restart-stop': {
      const result = await restart!.stop();
      restart = undefined;
      return result;
    }
  }
}

// One command at a time, in order.
let chain = Promise.resolve();
const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line.trim() === '') return;
  chain = chain.then(async () => {
    try {
      const result = await run(JSON.parse(line) as Command);
      console.log(`result ${JSON.stringify(result)}`);
    } catch (error) {
      console.log(`error ${String((error as Error).stack ?? error).replaceAll('\n', ' | ')}`);
    }
  });
});
input.on('close', () => process.exit(0));
console.log(`ready ${impl}`);
