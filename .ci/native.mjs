#!/usr/bin/env node
/**
 * Third step of `npm run build`: compiles src/io/native/extents.c (where a sparse raw file's data
 * is, by lseek SEEK_DATA/SEEK_HOLE) into dist/io/extents.node with the system's C compiler ($CC or
 * cc) against the Node-API headers installed with Node (or node-gyp's copy of them). It is an
 * optimisation only: without a compiler or the headers (or on Windows) this prints one line, writes
 * the reason to dist/io/extents.skipped and the build goes on; vhdkit then reads raw files whole,
 * holes included, with the same results.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const source = path.join(root, 'src/io/native/extents.c');
const out = path.join(root, 'dist/io/extents.node');
// Why the helper was not built, for the tests and CI to read (removed when it is built).
const skipped = path.join(root, 'dist/io/extents.skipped');
const skip = (why) => {
  fs.rmSync(out, { force: true });
  fs.mkdirSync(path.dirname(skipped), { recursive: true });
  fs.writeFileSync(skipped, `${why}\n`);
  console.log(`vhdkit build: native extents helper not built (${why}); sparse raw files will be read whole`);
  process.exit(0);
};

if (process.platform !== 'linux' && process.platform !== 'darwin') skip(`no SEEK_DATA on ${process.platform}`);
// Node-API headers: beside this Node (Debian's nodejs, the official tarballs), else node-gyp's cache.
const candidates = [
  path.resolve(path.dirname(process.execPath), '..', 'include', 'node'),
  path.join(os.homedir(), '.cache', 'node-gyp', process.versions.node, 'include', 'node'),
  process.env.npm_config_nodedir ? path.join(process.env.npm_config_nodedir, 'include', 'node') : '',
].filter(Boolean);
const include = candidates.find((dir) => fs.existsSync(path.join(dir, 'node_api.h')));
if (!include) skip(`no node_api.h in ${candidates.join(' or ')}`);
const cc = process.env.CC || 'cc';
const aside = `${out}.${process.pid}.tmp`;
const args = ['-O2', '-shared', '-fPIC', '-Wall', '-Werror', '-I', include, source, '-o', aside];
if (process.platform === 'darwin') args.push('-undefined', 'dynamic_lookup');
const r = spawnSync(cc, args, { encoding: 'utf8' });
if (r.error || r.status !== 0) {
  fs.rmSync(aside, { force: true });
  skip(`${cc} ${r.error ? `could not run: ${r.error.message}` : `failed: ${(r.stderr || '').trim().split('\n')[0]}`}`);
}
fs.renameSync(aside, out); // whole or not at all, as the bin
fs.rmSync(skipped, { force: true });
