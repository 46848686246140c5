#!/usr/bin/env node
/**
 * The `berth` command. For now it runs one thing, the demo: a TCP echo service on
 * 127.0.0.1:8000 that Ctrl-C (SIGINT) or SIGTERM drains and exits 0.
 */

import { addAbortListener } from 'node:events';
import { TcpService } from '../index.js';
import { callCommand } from './call.js';

async function demo(): Promise<number> {
  const echo = new TcpService({
    name: 'echo',
    port: 8000,
    host: '127.0.0.1',
    handler: async (conn, { signal }) => {
      using _ = addAbortListener(signal, () => conn.end(() => conn.destroy()));
      try {
        for await (const chunk of conn) conn.write(chunk);
      } catch (err) {
        if (!signal.aborted) throw err;
      }
    },
  });
  await echo.start();
  console.log(`echo listening on ${echo.stats.address}`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  try {
    await echo.close();
    console.log('All done.');
    return 0;
  } catch (err) {
    console.error(String(err));
    return 1;
  }
}

const [command = 'demo', ...rest] = process.argv.slice(2);
if (command === 'call') process.exitCode = await callCommand(rest);
else if (command !== 'demo') {
  console.error(`berth: unknown command ${JSON.stringify(command)}\nusage: berth demo`);
  process.exit(2);
} else process.exitCode = await demo();
