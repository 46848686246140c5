/**
 * The abuse suite's attacks at the edges: out of file descriptors, HTTP requests too large or
 * too slow, shutdowns that work will not let finish, what the diagnostics port shows and to whom,
 * and the task server's client limit. Each is bounded in time and bytes, on loopback (except the
 * exposure check, which connects to this machine's own non-loopback address), every process
 * ended by pid.
 */

import { once } from 'node:events';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { TaskClient } from '../../src/index.js';
import { helloProbe, httpGet, writeFlood } from './attacks.js';
import { getJson, startDemo } from './demo.js';
import { type Attack, type Build, MiB, mb, ms, serveModule, sleep, unreadFlood } from './suite.js';

/** Opens `n` connections at once; each resolves with its socket, or undefined if refused. */
function openMany(port: number, n: number): Promise<(Socket | undefined)[]> {
  return Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Socket | undefined>((resolve) => {
          const s = connect({ port, host: '127.0.0.1' });
          s.on('error', () => resolve(undefined));
          s.once('connect', () => resolve(s));
        }),
    ),
  );
}

/** Polls `GET /hello` until it answers 200; ms taken, or undefined after `bound` ms. */
async function answersAgain(port: number, bound = 10_000): Promise<number | undefined> {
  const t0 = performance.now();
  while (performance.now() - t0 < bound) {
    if ((await httpGet(port, '/hello', 1_000).catch(() => 0)) === 200) {
      return performance.now() - t0;
    }
    await sleep(50);
  }
  return undefined;
}

/**
 * One request too large for comfort: `head`, then `total` bytes in writes of `piece`, reading the
 * answer, while an honest `GET /hello` runs beside it.
 */
async function oversized(port: number, head: string, piece: number, total: number) {
  const probe = helloProbe(port);
  const r = await writeFlood({
    port,
    prefix: Buffer.from(head),
    chunk: Buffer.alloc(piece, 'a'),
    total,
    timeout: 30_000,
    read: true,
  });
  return { r, honest: await probe.stop() };
}

/** The first line of an HTTP reply, or what the attacker saw instead. */
const statusLine = (reply: string | undefined) =>
  reply ? `answered "${reply.split('\r\n', 1)[0]}"` : 'no answer';

/** What one slow upload got: a status and body, or how its connection ended, and when. */
interface UploadResult {
  status?: number;
  body?: string;
  error?: string;
  /** ms from the start of the upload. */
  at: number;
}

/**
 * POSTs `total` bytes to `path`, `piece` bytes every `everyMs`, declaring `length` bytes
 * (more than `total` makes an upload that never ends). Stops sending once answered or cut.
 */
function slowUpload(
  port: number,
  options: { total: number; length: number; piece: number; everyMs: number },
): Promise<UploadResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (r: Omit<UploadResult, 'at'>) => {
      clearInterval(timer);
      resolve({ ...r, at: performance.now() - t0 });
    };
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/upload',
        agent: false,
        headers: { 'content-length': options.length },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => done({ status: res.statusCode!, body: body.trim() }));
        res.on('error', (e) => done({ status: res.statusCode!, error: e.message }));
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => done({ error: e.code ?? e.message }));
    let sent = 0;
    const piece = Buffer.alloc(options.piece, 'u');
    timer = setInterval(() => {
      if (sent >= options.total) return clearInterval(timer);
      sent += piece.length;
      req.write(piece);
    }, options.everyMs);
  });
}

/** Counts the results: "25× 200 32768, 25× ECONNRESET at 2.1–2.2 s". */
function tally(results: UploadResult[]): string {
  const by = new Map<string, number[]>();
  for (const r of results) {
    const key = r.status === undefined ? (r.error ?? '?') : `${r.status} ${r.body ?? r.error}`;
    by.set(key, [...(by.get(key) ?? []), r.at]);
  }
  return [...by]
    .map(([key, at]) => {
      const lo = Math.min(...at) / 1e3;
      const hi = Math.max(...at) / 1e3;
      return `${at.length}× ${key} at ${lo.toFixed(1)}–${hi.toFixed(1)} s`;
    })
    .join(', ');
}

const UPLOAD_MODULE = `export default (req, res) => {
  let n = 0;
  req.on('data', (d) => { n += d.length; });
  req.on('end', () => res.end(n + '\\n'));
};`;

/** A TCP handler and a task that both ignore their signals: only the deadline ends them. */
const STUBBORN_MODULE = `export default ({ host }) => [
  new berth.TcpService({ name: 'hung', host, port: 0, handler: () => new Promise(() => {}) }),
  new berth.TaskServer({ name: 'tasks', host, port: 0 }).register(1, () => new Promise((r) => setTimeout(r, 60_000).unref()), 'stubborn'),
];`;

const stubborn = (build: Build) => ['serve', serveModule(build, 'stubborn', STUBBORN_MODULE)];
const STUBBORN_ARGS = ['--host', '127.0.0.1', '--shutdown-timeout', '2s'];

const MAX_CLIENTS = 50;

/** This machine's first non-loopback IPv4 address, if it has one. */
function outsideAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

/** Resolves with what a connection to host:port met: 'connected' or the error code. */
function tryConnect(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.setTimeout(2_000, () => {
      s.destroy();
      resolve('no answer in 2 s');
    });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

const SECRET = 'abuse-secret-5c1e7a90';

export const EDGE_ATTACKS: readonly Attack[] = [
  {
    name: 'fd-exhaustion',
    group: 'descriptors',
    title: 'The demo under `ulimit -n 256`: 500 connections at once',
    sends:
      '500 connections to the HTTP port at once, held 3 s, then closed; then `GET /hello` until it answers',
    start: { ulimit: 256 },
    honestMayFail: true, // out of descriptors, its connections are shed too: that is the attack
    async run(demo) {
      const port = demo.ports.http!;
      const lines0 = demo.lines();
      const honest = helloProbe(port);
      const sockets = await openMany(port, 500);
      await sleep(3_000);
      const held = sockets.filter((s) => s && !s.destroyed).length;
      const shed = sockets.filter((s) => s?.destroyed).length;
      const seen = await honest.stop();
      for (const s of sockets) s?.destroy();
      const again = await answersAgain(port);
      await sleep(1_500); // a probe of the descriptor watch after they left
      const vars = await demo.vars();
      const d = vars.descriptors as
        | { exhaustions: number; exhaustedMs: number; limit: number }
        | undefined;
      const http = vars.services.http as { acceptErrors?: number; count?: number };
      const watch = d
        ? `descriptor watch: ${d.exhaustions} episode(s), ${(d.exhaustedMs / 1e3).toFixed(1)} s out of ${d.limit}`
        : 'no descriptor watch: nothing reports it';
      return {
        verdict: `${sockets.filter(Boolean).length} connected: ${held} held by the demo, ${shed} closed at once (libuv sheds them); /hello answered again ${again === undefined ? 'NEVER (10 s)' : `${ms(again)} after they closed`}; acceptErrors ${http.acceptErrors ?? '—'}; ${watch}; ${demo.lines() - lines0} log lines`,
        honest: seen,
        checks: {
          'the process stays up': demo.proc.exitCode === null,
          '/hello answers within 1 s of their closing': again !== undefined && again < 1_000,
          'the exhaustion is reported': (d?.exhaustions ?? 0) >= 1,
          'at most 10 log lines': demo.lines() - lines0 <= 10,
        },
      };
    },
  },
  {
    name: 'http-big-headers',
    group: 'http',
    title: 'HTTP: request headers of 8 MiB',
    sends:
      '`GET /hello` with one header whose value runs to 8 MiB, in 64 KiB writes, reading the answer',
    async run(demo) {
      const { r, honest } = await oversized(
        demo.ports.http!,
        'GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ',
        64 * 1_024,
        8 * MiB,
      );
      const taken = r.cut ? `cut after ${mb(r.sent)} written` : `all ${mb(r.sent)} taken`;
      return {
        verdict: `${statusLine(r.reply)}; ${taken}`,
        honest,
        checks: { 'answered 431 and closed': /^HTTP\/1\.1 431 /.test(r.reply ?? '') && r.cut },
      };
    },
  },
  {
    name: 'http-big-body',
    group: 'http',
    title: 'HTTP: a 100 MB body to `/hello`',
    sends:
      '`POST /hello` with `Content-Length: 104857600` and the 100 MiB in 1 MiB writes, reading the answer',
    async run(demo) {
      const { r, honest } = await oversized(
        demo.ports.http!,
        `POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: ${100 * MiB}\r\n\r\n`,
        MiB,
        100 * MiB,
      );
      const taken = r.cut
        ? `cut after ${mb(r.sent)} written`
        : r.throttled
          ? `throttled after ${mb(r.sent)}`
          : `all ${mb(r.sent)} read by the server (to throw away) in ${(r.elapsed / 1e3).toFixed(1)} s`;
      return {
        verdict: `${statusLine(r.reply)}; ${taken}`,
        honest,
        checks: {
          'answered 200 or 413': /^HTTP\/1\.1 (200|413) /.test(r.reply ?? ''),
          'the server stops taking the body (at most 32 MiB of the 100 MiB)': r.sent <= 32 * MiB,
        },
      };
    },
  },
  {
    name: 'http-upgrade-flood',
    group: 'http',
    title: 'HTTP upgrade: 1 GiB into the demo’s `Upgrade: echo`, nothing read',
    sends:
      'an `Upgrade: echo` request, then 1 GiB in 1 MiB writes, reading nothing; stops when its writes stall for 3 s',
    run: (demo) =>
      unreadFlood(
        demo.ports.http!,
        helloProbe(demo.ports.http!),
        Buffer.from('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n'),
      ),
  },
  {
    name: 'http-slow-uploads',
    group: 'shutdown',
    title: 'HTTP: SIGTERM while 50 slow uploads are in flight (`berth serve`, 5 s deadline)',
    sends:
      'to a handler that reads the whole body and answers its size: 25 uploads of 32 KiB at 1 KiB per 100 ms (3.2 s each) and 25 declaring 10 MiB at the same pace (they would take 17 min); SIGTERM 1 s after they began',
    command: (build) => ['serve', serveModule(build, 'upload', UPLOAD_MODULE)],
    async run(demo) {
      const port = demo.ports.http!;
      const pace = { piece: 1_024, everyMs: 100 };
      const finishing = Array.from({ length: 25 }, () =>
        slowUpload(port, { ...pace, total: 32 * 1_024, length: 32 * 1_024 }),
      );
      const endless = Array.from({ length: 25 }, () =>
        slowUpload(port, { ...pace, total: 10 * MiB, length: 10 * MiB }),
      );
      await sleep(1_000);
      const t0 = performance.now();
      const code = await demo.stop('SIGTERM', 15_000);
      const took = performance.now() - t0;
      const [a, b] = await Promise.all([Promise.all(finishing), Promise.all(endless)]);
      return {
        verdict: `the 25 that finish: ${tally(a)}; the 25 that never finish: ${tally(b)} (times from their start; SIGTERM at 1 s)`,
        extra: `exit ${code} in ${ms(took)} after SIGTERM`,
        checks: {
          'the 25 that finish get 200 and their size': a.every(
            (u) => u.status === 200 && u.body === '32768',
          ),
          'exit 1 (live work cut) within 1 s of the deadline': code === 1 && took < 6_000,
        },
      };
    },
  },
  {
    name: 'stubborn-work',
    group: 'shutdown',
    title: 'Shutdown: a task and a TCP handler that ignore cancellation; then two signals',
    sends:
      'a `berth serve` module (`--shutdown-timeout 2s`) with a TCP handler that never returns and a task that sleeps 60 s ignoring its signal; one connection and one call to each, then SIGTERM; then, on a second server, SIGTERM twice 100 ms apart',
    command: stubborn,
    start: { args: STUBBORN_ARGS },
    async run(demo, build) {
      const tcp = connect({ port: demo.ports.hung!, host: '127.0.0.1' });
      tcp.on('error', () => {});
      tcp.resume(); // read, so that the server's end is seen
      let tcpClosed = false;
      tcp.once('close', () => {
        tcpClosed = true;
      });
      await once(tcp, 'connect');
      const client = await TaskClient.connect({ port: demo.ports.tasks! });
      const call = client.call('stubborn', '').then(
        () => 'answered OK',
        (e: Error & { errorCode?: number; code?: string }) =>
          `got ${e.errorCode === undefined ? e.code : `error ${e.errorCode}`}`,
      );
      await sleep(200);
      const t0 = performance.now();
      const code = await demo.stop('SIGTERM', 15_000);
      const took = performance.now() - t0;
      if (!tcpClosed) await Promise.race([once(tcp, 'close'), sleep(1_000)]);
      const tcpEnd = tcpClosed ? 'closed' : 'open';
      const callEnd = await call;
      client.destroy();
      tcp.destroy();

      const second = await startDemo({
        cli: build.cli,
        cwd: build.cwd,
        command: stubborn(build),
        args: STUBBORN_ARGS,
      });
      try {
        const c2 = await TaskClient.connect({ port: second.ports.tasks! });
        c2.call('stubborn', '').catch(() => {});
        await sleep(200);
        const t1 = performance.now();
        process.kill(second.pid, 'SIGTERM');
        await sleep(100);
        const forced = await second.stop('SIGTERM', 15_000);
        const took2 = performance.now() - t1;
        c2.destroy();
        return {
          verdict: `SIGTERM: exit ${code} in ${ms(took)} (deadline 2 s); the call ${callEnd}; the TCP connection ${tcpEnd === 'open' ? 'still open' : 'closed'}`,
          extra: `two SIGTERMs 100 ms apart: exit ${forced} in ${ms(took2)} from the first`,
          checks: {
            'SIGTERM: exit 1 within 1 s of the 2 s deadline': code === 1 && took < 3_000,
            'the call is answered with an error': callEnd.startsWith('got error'),
            'the TCP connection is closed': tcpEnd !== 'open',
            'a second SIGTERM: exit 143 within 1 s': forced === 143 && took2 < 1_000,
          },
        };
      } finally {
        await second.stop();
      }
    },
  },
  {
    name: 'exposure',
    group: 'exposure',
    title: 'Exposure: `berth demo --host 0.0.0.0` with a secret in its environment',
    sends: `the demo with \`--host 0.0.0.0\` and \`BERTH_ABUSE_SECRET=${SECRET}\` in its environment; connects to each port on this machine's non-loopback address; reads /live, /ready, /metrics and /debug/vars and looks for the secret`,
    start: { args: ['--host', '0.0.0.0'], env: { BERTH_ABUSE_SECRET: SECRET } },
    async run(demo) {
      const outside = outsideAddress();
      const from = outside
        ? {
            http: await tryConnect(outside, demo.ports.http!),
            tasks: await tryConnect(outside, demo.ports.tasks!),
            diagnostics: await tryConnect(outside, demo.ports.diagnostics!),
          }
        : undefined;
      const reach = from
        ? `from ${outside}: http ${from.http}, tasks ${from.tasks}, diagnostics ${from.diagnostics}`
        : 'no non-loopback address on this machine to try from';
      const diag = demo.ports.diagnostics!;
      const bodies = await Promise.all(
        ['/live', '/ready', '/metrics', '/debug/vars'].map(
          (path) =>
            new Promise<string>((resolve, reject) => {
              request({ host: '127.0.0.1', port: diag, path, agent: false }, (res) => {
                let body = '';
                res.setEncoding('utf8');
                res.on('data', (d: string) => {
                  body += d;
                });
                res.on('end', () => resolve(body));
              })
                .on('error', reject)
                .end();
            }),
        ),
      );
      const all = bodies.join('\n');
      const found = all.includes(SECRET);
      const vars = (await getJson(diag, '/debug/vars')) as Record<string, unknown>;
      return {
        checks: {
          'the application ports answer from outside, diagnostics do not':
            from === undefined || (from.http === 'connected' && from.diagnostics !== 'connected'),
          'the secret appears nowhere': !found,
        },
        verdict: `${reach}; the secret ${found ? 'APPEARED' : 'appeared nowhere'} in the ${Math.round(all.length / 1e3)} kB read; /debug/vars holds ${Object.keys(vars).join(', ')}; cmdline is ${JSON.stringify((vars.cmdline as string[]).slice(2))} after node and the script`,
      };
    },
  },
  {
    name: 'task-max-clients',
    group: 'limits',
    title: `Task server: one client over \`maxClients: ${MAX_CLIENTS}\``,
    sends: `a \`berth serve\` module with the demo tasks on a TaskServer of \`maxClients: ${MAX_CLIENTS}\`; ${MAX_CLIENTS} clients connect, a ${MAX_CLIENTS + 1}st tries, each of the ${MAX_CLIENTS} calls \`sum\`, one leaves, and the refused one tries again`,
    command: (build) => [
      'serve',
      serveModule(
        build,
        'max-clients',
        `export default ({ host }) => berth.registerDemoTasks(new berth.TaskServer({ name: 'tasks', host, port: 0, maxClients: ${MAX_CLIENTS} }));`,
      ),
    ],
    async run(demo) {
      const port = demo.ports.tasks!;
      const clients = await Promise.all(
        Array.from({ length: MAX_CLIENTS }, () => TaskClient.connect({ port })),
      );
      const over = await TaskClient.connect({ port }).then(
        (c) => {
          c.destroy();
          return 'ACCEPTED';
        },
        (e: Error & { errorCode?: number; code?: string }) =>
          `refused: ${e.code}, errorCode ${e.errorCode} (${e.message})`,
      );
      const sums = await Promise.allSettled(clients.map((c) => c.call('sum', '1 2 3')));
      const ok = sums.filter((s) => s.status === 'fulfilled').length;
      await clients.pop()!.close();
      await sleep(100);
      const retry = await TaskClient.connect({ port }).then(
        async (c) => {
          const r = String(await c.call('sum', '4 5'));
          await c.close();
          return `accepted, sum answered ${r}`;
        },
        (e: Error) => `refused again: ${e.message}`,
      );
      for (const c of clients) c.destroy();
      return {
        verdict: `the ${MAX_CLIENTS + 1}st: ${over}; the ${MAX_CLIENTS} connected: ${ok} of ${MAX_CLIENTS} sums answered; after one left, the refused client: ${retry}`,
        checks: {
          [`the ${MAX_CLIENTS + 1}st is refused with 222`]: over.includes('errorCode 222'),
          [`all ${MAX_CLIENTS} sums are answered`]: ok === MAX_CLIENTS,
          'a place freed is taken': retry.startsWith('accepted'),
        },
      };
    },
  },
];
