/**
 * A/B of task-protocol code in one process: server and client of each variant run in this
 * process on a loopback connection, and the variants take turns, round after round, so they see
 * the same CPU, the same clock and no scheduler between two processes. What differs between
 * them is the CPU their code spends per round trip (both sides together), which is what a
 * candidate change to src/ should move. The two-process figures of the suite and of
 * bench/load/task-variants.ts vary more from run to run on a shared VM than the few percent a
 * change like these moves; this does not.
 *
 *   node --import tsx bench/load/task-inprocess.ts [--rounds 12] [--ms 600] [--inflight 64]
 *        server+client ...
 *
 * A server is `src` (src/), `codec` (bench/fixtures/task-codec.ts), a directory holding a copy
 * of src/ (e.g. `.bench-tmp/src-clock`, made by bench/load/task-candidates.ts) or a tsc build
 * (`.bench-tmp/dist`); a client is `src`, `codec-promise`, or such a directory. Example:
 *   src+src .bench-tmp/src-clock+src src+.bench-tmp/src-client codec+codec-promise
 */

import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import type * as Berth from '../../src/index.js';
import { codecConnection } from '../fixtures/task-codec.js';
import { ROOT } from '../lib/child.js';
import { fmt, median } from '../lib/stats.js';
import { codecConnect, promiseCaller } from './task-client-variants.js';
import { HOST, PAYLOAD } from './task-drivers.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '12' },
    ms: { type: 'string', default: '600' },
    inflight: { type: 'string', default: '64' },
  },
});

const ECHO = 1;
/** berth from src/, from a copy of it, or from a tsc build (`.bench-tmp/dist`, index.js). */
const api = (dir: string) =>
  import(
    pathToFileURL(join(ROOT, dir, dir.endsWith('dist') ? 'index.js' : 'index.ts')).href
  ) as Promise<typeof Berth>;

interface Variant {
  name: string;
  call: () => Promise<unknown>;
  close: () => Promise<void>;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const address = server.address();
  return typeof address === 'object' && address ? address.port : 0;
}

let made = 0;

async function make(spec: string): Promise<Variant> {
  const [serverSpec = '', clientSpec = ''] = spec.split('+');
  let port: number;
  let closeServer: () => Promise<void>;
  if (serverSpec === 'codec') {
    const server = createServer({ noDelay: true }, codecConnection);
    port = await listen(server);
    closeServer = async () => {
      server.close();
    };
  } else {
    // Metrics on, as in the suite, each copy of berth in a registry of its own (two copies of
    // the metrics module cannot share one).
    const server = (await api(serverSpec)).createDemoTaskServer({
      port: 0,
      host: HOST,
      name: `task-${++made}`,
      registry: new Registry(),
    });
    await server.start();
    const address = server.address();
    port = typeof address === 'object' && address ? address.port : 0;
    closeServer = () => server.destroy();
  }
  if (clientSpec === 'codec-promise') {
    const conn = await codecConnect(port);
    return {
      name: spec,
      call: promiseCaller(conn),
      close: async () => {
        conn.socket.destroy();
        await closeServer();
      },
    };
  }
  const client = await (await api(clientSpec)).TaskClient.connect({ host: HOST, port });
  return {
    name: spec,
    call: () => client.call(ECHO, PAYLOAD),
    close: async () => {
      await client.destroy();
      await closeServer();
    },
  };
}

/** `inflight` loops for `ms`; the CPU this process used per round trip, and the rate. */
async function turn(v: Variant, ms: number, inflight: number) {
  let running = true;
  let ops = 0;
  const timer = setTimeout(() => {
    running = false;
  }, ms);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (running) {
        await v.call();
        ops++;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  clearTimeout(timer);
  return { usPerRt: (cpu.user + cpu.system) / ops, rate: ops / seconds };
}

const rounds = Number(values.rounds);
const ms = Number(values.ms);
const inflight = Number(values.inflight);
const variants: Variant[] = [];
for (const spec of positionals) variants.push(await make(spec));
if (variants.length === 0) {
  console.error('usage: task-inprocess.ts [options] server+client ...');
  process.exit(2);
}
const results = new Map<string, { usPerRt: number; rate: number }[]>(
  variants.map((v) => [v.name, []]),
);
for (const v of variants) await turn(v, ms, inflight); // compile every hot path first
for (let round = 0; round < rounds; round++) {
  for (let i = 0; i < variants.length; i++) {
    const v = variants[(i + round) % variants.length]!;
    results.get(v.name)!.push(await turn(v, ms, inflight));
  }
}
const base = median(results.get(variants[0]!.name)!.map((r) => r.usPerRt));
console.log(
  `\none process, ${inflight} in flight, median of ${rounds} rounds of ${ms} ms; CPU is both sides together\n`,
);
console.log('| server+client | rt/s | CPU µs/rt | × first | per round (µs/rt) |');
console.log('|---|---|---|---|---|');
for (const v of variants) {
  const rs = results.get(v.name)!;
  const cpu = median(rs.map((r) => r.usPerRt));
  const sorted = rs.map((r) => r.usPerRt).sort((a, b) => a - b);
  console.log(
    `| ${v.name} | ${fmt(median(rs.map((r) => r.rate)))} | ${fmt(cpu, 3)} | ${fmt(cpu / base, 3)} | ${fmt(sorted[0]!, 3)}–${fmt(sorted[sorted.length - 1]!, 3)} |`,
  );
}
for (const v of variants) await v.close();
process.exit(0);
