// Builds berth's sd_notify addon (native/notify.c) when the package is installed. It never fails
// the install: where the addon cannot be built (no compiler, no Node headers, not Linux), berth
// uses the prebuilt addon shipped in the package for this platform, if any, or else its Notifier
// falls back to the `systemd-notify` command and says so in `notifier.transport`.
//
// `--prebuild` (run by `prepack`) builds and copies the addon to prebuilds/<platform>-<arch>/, so
// the published package carries it: npm 11 skips dependencies' install scripts unless the user
// approves them, and a prebuilt N-API addon needs no install script and no rebuild for new Node
// versions. Packing fails loudly if that build fails. The prebuild is compiled in a scratch copy
// of binding.gyp and native/, so packing (the consumer test does it while other tests run) never
// removes the build/ that this checkout's own tests load the addon from.
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const prebuild = process.argv.includes('--prebuild');

if (process.platform !== 'linux') {
  console.log('berth: sd_notify addon not built (systemd runs on Linux only)');
  process.exit(0);
}

const cwd = prebuild ? mkdtempSync(join(tmpdir(), 'berth-prebuild-')) : root;
if (prebuild) {
  copyFileSync(join(root, 'binding.gyp'), join(cwd, 'binding.gyp'));
  cpSync(join(root, 'native'), join(cwd, 'native'), { recursive: true });
}

const args = ['rebuild'];
// Outside npm, point node-gyp at the headers that came with this Node, if any, rather than
// letting it download them.
if (!process.env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
}
const result = spawnSync('node-gyp', args, { cwd, stdio: 'inherit' });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `node-gyp exited with ${result.status}`;
  if (prebuild) {
    rmSync(cwd, { recursive: true, force: true });
    console.error(`berth: cannot prebuild the sd_notify addon: ${why}`);
    process.exit(1);
  }
  console.warn(
    `berth: the sd_notify addon was not built (${why}); under systemd, Notifier will use the ` +
      'prebuilt addon for this platform if the package has one, else the systemd-notify ' +
      'command. See docs/socket-activation.md.',
  );
} else if (prebuild) {
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  mkdirSync(dir, { recursive: true });
  // Copied beside, then renamed over: a process that has the old file loaded keeps its mapping.
  const partial = join(dir, `berth_notify.node.${process.pid}`);
  copyFileSync(join(cwd, 'build', 'Release', 'berth_notify.node'), partial);
  renameSync(partial, join(dir, 'berth_notify.node'));
  rmSync(cwd, { recursive: true, force: true });
  console.log(`berth: prebuilt addon in ${dir}`);
}
process.exit(0);
