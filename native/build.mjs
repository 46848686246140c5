// Builds berth's sd_notify addon (native/notify.c) when the package is installed. It never fails
// the install: where the addon cannot be built (no compiler, no Node headers, not Linux), berth's
// Notifier falls back to the `systemd-notify` command and says so in `notifier.transport`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

if (process.platform !== 'linux') {
  console.log('berth: sd_notify addon not built (systemd runs on Linux only)');
  process.exit(0);
}

const args = ['rebuild'];
// Outside npm, point node-gyp at the headers that came with this Node, if any, rather than
// letting it download them.
if (!process.env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
}
const result = spawnSync('node-gyp', args, { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `node-gyp exited with ${result.status}`;
  console.warn(
    `berth: the sd_notify addon was not built (${why}); under systemd, Notifier will use the ` +
      'systemd-notify command instead. See docs/socket-activation.md.',
  );
}
process.exit(0);
