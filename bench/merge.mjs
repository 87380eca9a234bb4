#!/usr/bin/env node
// Merge benchmark: `vhdkit merge` side by side with Xen Orchestra's vhd-lib (driven by the peer
// harness in ../shared/peers/xo), on the same files, in the same run. Prints a table of ratios and
// writes bench/results/merge-<ts>.json.
//
//   npm run build && node bench/merge.mjs [--quick] [--work DIR] [--runs N] [--peer DIR] [--out FILE] [--only 1,2,3,4] [--workers N]
//
// --workers N is passed to every vhdkit merge (0: the data copies on the main thread); without it,
// vhdkit chooses (the main thread for a child under 4 GiB, as all of these are; the pool above).
//
// Or from another script: `const rows = await runMergeBench({ quick, work, runs, peerDir, only, workers })`.
//
// The peer. vhd-lib is never a dependency of vhdkit: the harness is copied to WORK/xo-peer and
// `npm install`ed there (once; skipped with a clear line when that fails, e.g. without network).
// `--peer DIR` uses a harness that is already installed. The harness's mkchain.mjs (which does not
// use vhd-lib) makes the test data and expected.raw, the content a correct merge must produce; without
// the harness, the same layouts are made here with vhdkit's own writers.
//
// Scenarios (data made once, kept in WORK/merge between runs):
//   1  the target from the issue: a 256 MiB child (128 full 2 MiB blocks, 64 overwriting parent
//      blocks, 64 new) into a 1 GiB dynamic parent (256 random blocks). ratio = vhd-lib time / vhdkit
//      time, target ≥ 2.0. vhdkit fsyncs its result, vhd-lib never does: a second reference,
//      "vhd-lib + sync", adds `sync parent.vhd` for the same durability.
//   2  partial blocks (Hyper-V style: a few sector runs per child block). Time and correctness of
//      both; vhd-lib copies whole blocks and is wrong here (recorded as correct: false, not a failure).
//   3  cold cache: merged bytes per second against a `dd` copy + fsync of the same number of bytes,
//      page cache dropped before every run (root only; skipped otherwise). Target ≥ 0.8x. Full runs
//      add the same row for a 2 GiB child into an 8 GiB parent (Node's start amortized).
//   4  scale: the same child data merged into a 2000 GiB parent vs the 1 GiB one (same allocated
//      blocks). Target: 2000 GiB time ≤ 1.1 × 1 GiB time. vhd-lib runs on it too.
// Every run starts from a fresh copy of the pristine pair (copy not timed, followed by `sync` so
// that write-back of the copy does not land in the measurement). Every measurement is a whole
// process (node startup included) under /usr/bin/time -f %M (peak RSS); best of --runs is reported,
// all runs are in the JSON. Every vhdkit result is verified (qemu-img reads the merged parent, it
// is compared with expected.raw; vhdkit's own reader when qemu-img is missing): a wrong result is
// reported as WRONG, never as a time (and the exit code is 1). Finally a few merges run in-process
// with FileSink instrumented, to split the engine's time into setup, data copy, fsync and metadata.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { claimScratch, resultFile, writeResult } from './out.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');
const defaultHarness = path.resolve(root, '..', 'shared', 'peers', 'xo');
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const BLOCK = 2 * MiB;

const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/** Runs a command to completion; throws with its output when it fails (unless allowFail). */
function sh(cmd, args, { cwd, allowFail = false } = {}) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.error) throw r.error;
  if (r.status !== 0 && !allowFail) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : null;
};
const lastJson = (text) => {
  const line = text.trim().split('\n').filter((l) => l.startsWith('{')).at(-1);
  return line ? JSON.parse(line) : undefined;
};

// ------------------------------------------------------------------------------------------------
// Verification: the merged parent, read by qemu-img (or vhdkit when qemu-img is missing), against
// expected.raw. Returns the number of differing bytes (0 = correct).

function diffRange(fdA, offA, fdB, offB, length, bufs) {
  let diff = 0;
  for (let done = 0; done < length; ) {
    const n = Math.min(bufs[0].length, length - done);
    const a = bufs[0].subarray(0, n);
    const b = bufs[1].subarray(0, n);
    readFully(fdA, a, offA + done);
    readFully(fdB, b, offB + done);
    if (!a.equals(b)) for (let i = 0; i < n; i++) if (a[i] !== b[i]) diff++;
    done += n;
  }
  return diff;
}

function readFully(fd, buf, pos) {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done); // past the end of a (sparse) raw file: zeros
      return;
    }
    done += n;
  }
}

const newBufs = () => [Buffer.allocUnsafe(4 * MiB), Buffer.allocUnsafe(4 * MiB)];

function withFds(a, b, fn) {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    return fn(fa, fb);
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/** Bytes differing between two files of equal size (-1: sizes differ). */
function diffFiles(a, b) {
  const size = fs.statSync(a).size;
  if (size !== fs.statSync(b).size) return -1;
  return withFds(a, b, (fa, fb) => diffRange(fa, 0, fb, 0, size, newBufs()));
}

/**
 * Compares the virtual content of `vhd` with `expected` (a sparse raw file holding data only in the
 * blocks listed in the manifest). Up to 4 GiB: `qemu-img convert -f vpc -O raw` and a full compare.
 * Above: `qemu-img map` gives qemu's view of every allocated extent and where it lives in the file;
 * those bytes are compared with expected.raw, and every listed block not covered must be zeros in
 * expected.raw too. Outside both, both read as zeros: the comparison is complete without reading
 * 2000 GiB of holes.
 */
async function verify(vhd, dataset, ctx) {
  const expected = path.join(dataset.dir, 'expected.raw');
  const m = dataset.manifest;
  if (ctx.hasQemu && m.size <= 4 * GiB) {
    const raw = `${vhd}.verify.raw`;
    fs.rmSync(raw, { force: true });
    sh('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhd, raw]);
    try {
      return { diffBytes: diffFiles(raw, expected), by: 'qemu-img convert + compare' };
    } finally {
      fs.rmSync(raw, { force: true });
    }
  }
  if (ctx.hasQemu) {
    const map = JSON.parse(sh('qemu-img', ['map', '--output=json', '-f', 'vpc', vhd]).stdout);
    if (map.every((e) => e.data || e.zero)) {
      const bufs = newBufs();
      let diffBytes = 0;
      const covered = [];
      withFds(vhd, expected, (fv, fe) => {
        for (const e of map) {
          if (!e.data) continue;
          if (e.offset === undefined) throw new Error('qemu-img map gave no file offset');
          diffBytes += diffRange(fv, e.offset, fe, e.start, e.length, bufs);
          covered.push([e.start, e.start + e.length]);
        }
      });
      diffBytes += zerosOutside(expected, listedBlocks(m), covered, m.blockSize);
      if (map.at(-1).start + map.at(-1).length !== m.size) diffBytes = Math.max(diffBytes, 1);
      return { diffBytes, by: 'qemu-img map + compare of every allocated extent' };
    }
  }
  return verifyWithVhdkit(vhd, expected, m);
}

const listedBlocks = (m) => [...new Set([...m.parentIds, ...m.childIds])].sort((a, b) => a - b);

/** Non-zero bytes of `file` in the listed blocks outside the `covered` ranges. */
function zerosOutside(file, blocks, covered, bs) {
  covered.sort((x, y) => x[0] - y[0]);
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(bs);
  let bad = 0;
  try {
    for (const b of blocks) {
      let s = b * bs;
      const end = s + bs;
      for (const [cs, ce] of covered) {
        if (ce <= s || cs >= end) continue;
        if (cs > s) bad += nonZero(fd, buf, s, cs - s);
        s = Math.max(s, ce);
      }
      if (s < end) bad += nonZero(fd, buf, s, end - s);
    }
  } finally {
    fs.closeSync(fd);
  }
  return bad;
}

function nonZero(fd, buf, pos, len) {
  const b = buf.subarray(0, len);
  readFully(fd, b, pos);
  let n = 0;
  for (let i = 0; i < len; i++) if (b[i] !== 0) n++;
  return n;
}

/** Without qemu-img: vhdkit's reader, over every block allocated in the result or listed. */
async function verifyWithVhdkit(vhd, expected, m) {
  const { openDisk } = await import(path.join(root, 'dist', 'index.js'));
  const img = await openDisk(vhd, { resolveParents: false });
  try {
    if (img.type !== 'dynamic' || img.virtualSize !== m.size) return { diffBytes: -1, by: 'vhdkit reader (wrong type or size)' };
    const blocks = [...new Set([...img.allocated, ...listedBlocks(m)])].sort((a, b) => a - b);
    const got = Buffer.alloc(m.blockSize);
    const want = Buffer.alloc(m.blockSize);
    const fd = fs.openSync(expected, 'r');
    let diffBytes = 0;
    try {
      for (const b of blocks) {
        await img.read(got, b * m.blockSize);
        readFully(fd, want, b * m.blockSize);
        if (!got.equals(want)) for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) diffBytes++;
      }
    } finally {
      fs.closeSync(fd);
    }
    return { diffBytes, by: 'vhdkit reader (qemu-img missing) + compare' };
  } finally {
    await img.close();
  }
}

// ------------------------------------------------------------------------------------------------
// Test data: the harness's mkchain.mjs, or the same layouts with vhdkit's writers.

/** mulberry32, the generator mkchain uses for layout decisions. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pickDistinct(rand, n, count, exclude = new Set()) {
  const out = new Set();
  while (out.size < count) {
    const b = Math.floor(rand() * n);
    if (!exclude.has(b)) out.add(b);
  }
  return [...out].sort((x, y) => x - y);
}

/** Without the harness: parent (dynamic) + child (differencing) + expected.raw with vhdkit's writers. */
async function makeChainWithVhdkit(dir, o) {
  const { DynamicWriter, FileSink, parentLinkFor, openDisk } = await import(path.join(root, 'dist', 'index.js'));
  const nBlocks = o.size / BLOCK;
  const rand = prng(o.seed);
  const stream = (label) => {
    const key = crypto.createHash('sha256').update(`key:${o.seed}:${label}`).digest().subarray(0, 16);
    const c = crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
    return (n) => c.update(Buffer.alloc(n));
  };
  const parentData = stream('parent');
  const childData = stream('child');
  const parentIds = pickDistinct(rand, nBlocks, o.parentBlocks);
  const overlapIds = pickDistinct(rand, parentIds.length, o.overlap).map((i) => parentIds[i]);
  const newIds = pickDistinct(rand, nBlocks, o.childBlocks - overlapIds.length, new Set(parentIds));
  const childIds = [...overlapIds, ...newIds].sort((a, b) => a - b);
  const expFd = fs.openSync(path.join(dir, 'expected.raw'), 'w');
  fs.ftruncateSync(expFd, o.size);
  const parentFile = path.join(dir, 'parent.vhd');
  const childFile = path.join(dir, 'child.vhd');
  const write = async (file, opts, body) => {
    const sink = await FileSink.open(file, 'wx');
    const w = await DynamicWriter.create(sink, opts);
    await body(w);
    await w.finish();
    await sink.close();
  };
  await write(parentFile, { virtualSize: o.size, uuid: crypto.randomBytes(16) }, async (w) => {
    for (const id of parentIds) {
      const data = parentData(BLOCK);
      fs.writeSync(expFd, data, 0, BLOCK, id * BLOCK);
      await w.writeBlock(id, data);
    }
  });
  const parent = await openDisk(parentFile, { resolveParents: false });
  const link = parentLinkFor(childFile, parentFile, parent.footer.uniqueId, parent.footer.timestamp);
  await parent.close();
  let childSectors = 0;
  await write(childFile, { virtualSize: o.size, uuid: crypto.randomBytes(16), parent: link }, async (w) => {
    for (const id of childIds) {
      const bitmap = new Uint8Array(512);
      const data = Buffer.alloc(BLOCK);
      if (!o.partial) {
        bitmap.fill(0xff);
        childData(BLOCK).copy(data);
        fs.writeSync(expFd, data, 0, BLOCK, id * BLOCK);
        childSectors += BLOCK / 512;
      } else {
        for (let r = 0; r < 3; r++) {
          const len = 1 + Math.floor(rand() * 256);
          const start = Math.floor(rand() * (BLOCK / 512 - len));
          const chunk = childData(len * 512);
          chunk.copy(data, start * 512);
          for (let s = start; s < start + len; s++) bitmap[s >> 3] |= 0x80 >> (s & 7);
          fs.writeSync(expFd, chunk, 0, chunk.length, id * BLOCK + start * 512);
        }
        for (let s = 0; s < BLOCK / 512; s++) if (bitmap[s >> 3] & (0x80 >> (s & 7))) childSectors++;
      }
      await w.writeBlock(id, data, bitmap);
    }
  });
  fs.closeSync(expFd);
  return {
    size: o.size,
    blockSize: BLOCK,
    nBlocks,
    parentWriter: 'vhdkit',
    childWriter: 'vhdkit',
    partial: o.partial,
    parentBlocks: parentIds.length,
    childBlocks: childIds.length,
    overlapBlocks: overlapIds.length,
    newBlocksInChild: newIds.length,
    childDataBytes: childSectors * 512,
    parentIds,
    childIds,
  };
}

/** A dataset in WORK/merge/NAME, made once (again when its parameters change). */
async function dataset(ctx, name, o) {
  const dir = path.join(ctx.dataDir, name);
  const params = { ...o, generator: ctx.generator === 'mkchain' ? 'mkchain' : 'vhdkit', version: 1 };
  const paramsFile = path.join(dir, 'params.json');
  const ok =
    fs.existsSync(paramsFile) &&
    fs.readFileSync(paramsFile, 'utf8') === JSON.stringify(params) &&
    ['parent.vhd', 'child.vhd', 'expected.raw', 'manifest.json'].every((f) => fs.existsSync(path.join(dir, f)));
  if (!ok) {
    ctx.log(`generating ${name} (${params.generator}): ${JSON.stringify(o)}`);
    const tmp = `${dir}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    const t = Date.now();
    let manifest;
    if (ctx.generator === 'mkchain') {
      const args = [tmp, '--size', String(o.size), '--parent-blocks', String(o.parentBlocks), '--child-blocks', String(o.childBlocks), '--overlap', String(o.overlap), '--seed', String(o.seed)];
      if (o.partial) args.push('--partial');
      if (!ctx.hasQemu) args.push('--parent-writer', 'own');
      sh(process.execPath, [path.join(ctx.harnessSrc, 'mkchain.mjs'), ...args]);
      manifest = JSON.parse(fs.readFileSync(path.join(tmp, 'manifest.json'), 'utf8'));
      fs.rmSync(path.join(tmp, 'parent.raw'), { force: true }); // not needed: expected.raw is the reference
    } else {
      manifest = await makeChainWithVhdkit(tmp, o);
    }
    // Made in DIR.tmp and renamed: the child's absolute locator (W2ku) names a parent that no longer
    // exists, so a merge of a run copy can only find the copy next to it (relative locator), never
    // the pristine parent.
    fs.writeFileSync(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2));
    fs.writeFileSync(path.join(tmp, 'params.json'), JSON.stringify(params));
    fs.renameSync(tmp, dir);
    ctx.log(`  ${name} ready in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  }
  return { name, dir, manifest: JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) };
}

// ------------------------------------------------------------------------------------------------
// The peer harness.

function setupPeer(ctx, peerDir) {
  const installed = (dir) => ['vhd-lib', '@xen-orchestra/fs'].every((p) => fs.existsSync(path.join(dir, 'node_modules', p, 'package.json')));
  const version = (dir) => JSON.parse(fs.readFileSync(path.join(dir, 'node_modules', 'vhd-lib', 'package.json'), 'utf8')).version;
  if (peerDir) {
    const dir = path.resolve(peerDir);
    if (!fs.existsSync(path.join(dir, 'merge.mjs'))) return { dir, ok: false, reason: `--peer ${dir}: no merge.mjs there` };
    if (!installed(dir)) return { dir, ok: false, reason: `--peer ${dir}: not installed (run npm install there)` };
    return { dir, ok: true, version: version(dir) };
  }
  const dir = path.join(ctx.work, 'xo-peer');
  if (!fs.existsSync(path.join(dir, 'merge.mjs'))) {
    if (!fs.existsSync(path.join(ctx.harnessSrc, 'merge.mjs'))) return { dir, ok: false, reason: `no peer harness at ${ctx.harnessSrc}` };
    ctx.log(`copying the peer harness ${ctx.harnessSrc} -> ${dir}`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.cpSync(ctx.harnessSrc, dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}node_modules`) });
    sh('chmod', ['-R', 'u+w', dir]); // the source may be read-only
  }
  if (!installed(dir)) {
    ctx.log(`installing the peer harness in ${dir} (npm install --no-audit --no-fund)`);
    const npm = spawnSync('npm', ['install', '--no-audit', '--no-fund'], { cwd: dir, encoding: 'utf8', timeout: 300_000 });
    if (npm.status !== 0 || !installed(dir)) {
      const lines = `${npm.stderr ?? ''}`.split('\n').filter((l) => /^npm (error|ERR!)/.test(l));
      const why = npm.error?.message ?? (lines.filter((l) => /code|errno|network|404|ETARGET/i.test(l)).slice(0, 2).join('; ') || lines[0] || `exit ${npm.status}`);
      return { dir, ok: false, reason: `npm install failed in ${dir} (no network?): ${why}` };
    }
  }
  return { dir, ok: true, version: version(dir) };
}

// ------------------------------------------------------------------------------------------------
// Measurement.

/** One whole process, timed; peak RSS from GNU time. */
function timeOnce(ctx, cmd, args, { cwd } = {}) {
  const full = ctx.hasTime ? ['/usr/bin/time', ['-f', '%M', cmd, ...args]] : [cmd, args];
  const t = process.hrtime.bigint();
  const r = spawnSync(full[0], full[1], { cwd, encoding: 'utf8', maxBuffer: 1 << 28 });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  const rss = ctx.hasTime ? Number(r.stderr.trim().split('\n').pop()) / 1024 : null;
  return { seconds, peakRssMiB: rss, stdout: r.stdout };
}

function dropCaches() {
  spawnSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** A fresh copy of the pristine pair in the run folder; `sync` so its write-back is done before timing. */
function freshPair(ctx, ds) {
  fs.rmSync(ctx.runDir, { recursive: true, force: true });
  fs.mkdirSync(ctx.runDir, { recursive: true });
  for (const f of ['parent.vhd', 'child.vhd']) sh('cp', ['--sparse=always', path.join(ds.dir, f), path.join(ctx.runDir, f)]);
  spawnSync('sync');
  return { parent: path.join(ctx.runDir, 'parent.vhd'), child: path.join(ctx.runDir, 'child.vhd') };
}

/**
 * A tool run on a dataset: `command(pair)` gives [cmd, args, opts]; `warm` (cold runs only) loads
 * the program itself back into the page cache after the drop, so a cold run measures the data's
 * I/O and not node reading its own binary and modules from disk.
 */
function vhdkitTool(ds, ctx) {
  const workers = ctx.workers === undefined ? [] : ['--workers', String(ctx.workers)];
  return {
    key: `vhdkit:${ds.name}`,
    name: 'vhdkit',
    ds,
    command: (p) => [process.execPath, [cli, 'merge', p.child, '--json', '--quiet', ...workers]],
    engineSeconds: (out) => JSON.parse(out).seconds,
    warm: () => {
      spawnSync(process.execPath, [cli, '--version']);
      spawnSync(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(pathToFileURL(path.join(root, 'dist', 'index.js')).href)})`]);
    },
  };
}

function peerTool(peer, ds, { sync = false } = {}) {
  const merge = path.join(peer.dir, 'merge.mjs');
  return {
    key: `${sync ? 'vhdlibSync' : 'vhdlib'}:${ds.name}`,
    name: sync ? 'vhd-lib + sync' : 'vhd-lib',
    ds,
    verifyFirstOnly: true,
    command: (p) =>
      sync
        ? ['sh', ['-c', `"${process.execPath}" "${merge}" "${p.parent}" "${p.child}" --quiet && sync "${p.parent}"`], { cwd: peer.dir }]
        : [process.execPath, [merge, p.parent, p.child, '--quiet'], { cwd: peer.dir }],
    engineSeconds: (out) => (lastJson(out)?.elapsedMs ?? NaN) / 1000,
  };
}

/**
 * Runs every tool `runs` times, interleaved (run 1 of each tool, then run 2, ...) so that the drift
 * of a noisy machine hits all alike, each run on a fresh copy of its dataset's pristine pair.
 * vhdkit results are verified every run; the peer's on its first run.
 */
async function measure(ctx, tools, { runs, cold = false }) {
  const out = Object.fromEntries(tools.map((t) => [t.key, { runs: [], verified: [], diffBytes: null, error: null }]));
  for (let r = 0; r < runs; r++) {
    for (const t of tools) {
      const o = out[t.key];
      if (o.error) continue;
      const pair = t.ds ? freshPair(ctx, t.ds) : undefined;
      if (cold) {
        dropCaches();
        t.warm?.();
      }
      const [cmd, args, opts] = t.command(pair);
      let m;
      try {
        m = timeOnce(ctx, cmd, args, opts);
      } catch (e) {
        if (t.name === 'vhdkit') throw e;
        o.error = String(e.message).split('\n').slice(0, 3).join(' ');
        ctx.log(`  ${t.name} failed${t.ds ? ` on ${t.ds.name}` : ''}: ${o.error}`);
        continue;
      }
      const run = { seconds: m.seconds, peakRssMiB: m.peakRssMiB, engineSeconds: t.engineSeconds?.(m.stdout) ?? NaN };
      if (pair && (!t.verifyFirstOnly || r === 0)) {
        const v = await verify(pair.parent, t.ds, ctx);
        run.diffBytes = v.diffBytes;
        o.verifiedBy = v.by;
        o.verified.push(v.diffBytes === 0);
        o.diffBytes = o.diffBytes === null ? v.diffBytes : o.diffBytes < 0 || v.diffBytes < 0 ? -1 : Math.max(o.diffBytes, v.diffBytes);
      }
      o.runs.push(run);
      ctx.log(
        `  ${cold ? 'cold ' : ''}run ${r + 1}/${runs} ${t.name}${t.ds ? ` ${t.ds.name}` : ''}: ${m.seconds.toFixed(3)} s` +
          (Number.isFinite(run.engineSeconds) ? ` (engine ${run.engineSeconds.toFixed(3)} s)` : '') +
          (run.diffBytes === undefined ? '' : run.diffBytes === 0 ? ', content OK' : `, content WRONG (${run.diffBytes} bytes differ)`),
      );
    }
  }
  fs.rmSync(ctx.runDir, { recursive: true, force: true });
  return out;
}

/** Best time of the runs (and the largest peak RSS), the way run.mjs reports; every run in allSeconds. */
function summary(o) {
  if (!o || o.error || o.runs.length === 0) return null;
  const best = o.runs.reduce((a, b) => (b.seconds < a.seconds ? b : a));
  const rss = o.runs.map((r) => r.peakRssMiB).filter((x) => x !== null);
  const engines = o.runs.map((r) => r.engineSeconds).filter(Number.isFinite);
  return {
    seconds: best.seconds,
    peakRssMiB: rss.length ? Math.max(...rss) : null,
    engineSeconds: engines.length ? Math.min(...engines) : null,
    medianSeconds: median(o.runs.map((r) => r.seconds)),
    allSeconds: o.runs.map((r) => Number(r.seconds.toFixed(4))),
    allEngineSeconds: engines.map((x) => Number(x.toFixed(4))),
    correct: o.verified.length ? o.verified.every(Boolean) : null,
    diffBytes: o.diffBytes,
    verifiedBy: o.verifiedBy ?? null,
  };
}

/**
 * One result row. ratio = reference time / vhdkit time (> 1: vhdkit faster); null when either
 * result is wrong or missing. With the same bytes on both sides it is also the throughput ratio.
 * engineRatio: the same with each tool's own in-process time (node startup and imports left out).
 */
function makeRow(name, target, v, ref, referenceName, extra = {}) {
  const ok = v && v.correct !== false && ref && ref.correct !== false;
  const engineRatio = ok && v.engineSeconds && ref.engineSeconds ? ref.engineSeconds / v.engineSeconds : null;
  const medianRatio = ok && v.medianSeconds && ref.medianSeconds ? ref.medianSeconds / v.medianSeconds : null;
  return { name, vhdkit: v, reference: ref, referenceName, ratio: ok ? ref.seconds / v.seconds : null, medianRatio, engineRatio, target, ...extra };
}

// ------------------------------------------------------------------------------------------------
// Where vhdkit's engine time goes: one merge in-process with FileSink's methods timed. Phases:
// setup (open the chain, plan, journal: up to the first truncate of the target), data (copying
// sectors, several tasks in flight, up to the first fsync), fsync (the data fsync and the final
// one), metadata (BAT entries and footer, journal removal). Read/write sums overlap (in flight).
// When the copies run on worker threads, their FileSinks are other module instances: only the
// phases and the main thread's own I/O are timed then.

async function breakdown(ctx, ds, { cold = false } = {}) {
  const lib = await import(path.join(root, 'dist', 'index.js'));
  const proto = lib.FileSink.prototype;
  const events = [];
  const originals = {};
  let t0 = 0;
  for (const m of ['read', 'write', 'sync', 'truncate']) {
    originals[m] = proto[m];
    proto[m] = async function (...a) {
      const t = performance.now();
      try {
        return await originals[m].apply(this, a);
      } finally {
        events.push({ m, t0: t - t0, t1: performance.now() - t0, bytes: a[0] instanceof Uint8Array ? a[0].length : 0 });
      }
    };
  }
  try {
    const pair = freshPair(ctx, ds);
    if (cold) dropCaches();
    t0 = performance.now();
    const r = await lib.merge(pair.child, ctx.workers === undefined ? {} : { workers: ctx.workers });
    const wall = performance.now() - t0;
    const v = await verify(pair.parent, ds, ctx);
    const firstTruncate = events.find((e) => e.m === 'truncate')?.t0 ?? 0;
    const syncs = events.filter((e) => e.m === 'sync');
    const firstSync = syncs[0]?.t0 ?? wall;
    const fsyncMs = syncs.reduce((s, e) => s + e.t1 - e.t0, 0);
    const ops = (m) => {
      const es = events.filter((e) => e.m === m);
      return { calls: es.length, ms: round1(es.reduce((s, e) => s + e.t1 - e.t0, 0)), MiB: round1(es.reduce((s, e) => s + e.bytes, 0) / MiB) };
    };
    return {
      dataset: ds.name,
      cold,
      workers: r.workers,
      correct: v.diffBytes === 0,
      wallMs: round1(wall),
      setupMs: round1(firstTruncate),
      dataMs: round1(firstSync - firstTruncate),
      fsyncMs: round1(fsyncMs),
      metadataMs: round1(wall - firstSync - fsyncMs),
      ops: { read: ops('read'), write: ops('write'), sync: ops('sync'), truncate: ops('truncate') },
      bytesMerged: r.bytesWritten,
    };
  } finally {
    Object.assign(proto, originals);
    fs.rmSync(ctx.runDir, { recursive: true, force: true });
  }
}

const round1 = (x) => Math.round(x * 10) / 10;

// ------------------------------------------------------------------------------------------------

/**
 * Runs the merge scenarios. Returns rows `{ name, vhdkit, reference, referenceName, ratio, target,
 * ... }`; `vhdkit` and `reference` are `{ seconds, peakRssMiB, engineSeconds, correct, ... }` (best
 * of the runs) or null; a row that could not run says why in `skipped`. `rows.meta` holds the
 * context (peer, datasets, time split) for the JSON file.
 */
export async function runMergeBench({ quick = false, work = path.join(os.tmpdir(), 'vhdkit-bench'), runs, peerDir, only, workers, log = (...a) => console.error('[merge]', ...a) } = {}) {
  if (!fs.existsSync(cli)) throw new Error('build first: npm run build');
  runs = Number(runs ?? (quick ? 2 : 5));
  const coldRuns = quick ? 1 : Math.min(runs, 3);
  const want = (n) => !only || only.includes(n);
  work = path.resolve(work);
  const ctx = {
    work,
    dataDir: path.join(work, 'merge'),
    runDir: path.join(work, 'merge', 'run'),
    harnessSrc: peerDir ? path.resolve(peerDir) : defaultHarness,
    hasQemu: have('qemu-img'),
    hasTime: fs.existsSync('/usr/bin/time'),
    workers: workers === undefined ? undefined : Number(workers),
    log,
  };
  claimScratch(work);
  fs.mkdirSync(ctx.dataDir, { recursive: true });
  ctx.generator = fs.existsSync(path.join(ctx.harnessSrc, 'mkchain.mjs')) ? 'mkchain' : 'vhdkit';
  let canDrop = false;
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    canDrop = true;
  } catch {
    // not root
  }
  const peer = setupPeer(ctx, peerDir);
  if (!peer.ok) log(`vhd-lib rows skipped: ${peer.reason}`);
  else log(`peer: vhd-lib ${peer.version} in ${peer.dir}`);
  if (!ctx.hasQemu) log('qemu-img not found: results are verified with vhdkit\'s own reader');
  const rows = [];
  const peerSkipped = { skipped: `vhd-lib not available: ${peer.reason}` };
  const meta = { peer, workers: ctx.workers ?? 'auto', generator: ctx.generator, verifier: ctx.hasQemu ? 'qemu-img' : 'vhdkit', runs, coldRuns, canDropCaches: canDrop, datasets: {}, breakdown: [] };
  const describe = (ds) => {
    const { parentIds, childIds, files, ...rest } = ds.manifest;
    meta.datasets[ds.name] = rest;
  };
  const shape = { parentBlocks: 256, childBlocks: 128, overlap: 64, seed: 1, partial: false };
  const issue = await dataset(ctx, 'issue-1g', { size: GiB, ...shape });
  describe(issue);
  const childBytes = issue.manifest.childDataBytes;
  const childMiB = childBytes / MiB;

  // 1. The target from the issue.
  if (want(1)) {
    log(`scenario 1: ${childMiB} MiB child into a 1 GiB parent (best of ${runs})`);
    const tools = [vhdkitTool(issue, ctx)];
    if (peer.ok) tools.push(peerTool(peer, issue), peerTool(peer, issue, { sync: true }));
    const m = await measure(ctx, tools, { runs });
    const v = summary(m[tools[0].key]);
    const base = `merge ${childMiB} MiB child into 1 GiB parent`;
    if (peer.ok) {
      rows.push(makeRow(`${base} vs vhd-lib`, '≥ 2.0x', v, summary(m[tools[1].key]), 'vhd-lib', { vBytes: childBytes, refError: m[tools[1].key].error }));
      rows.push(makeRow(`${base} vs vhd-lib + sync (same durability)`, '≥ 2.0x', v, summary(m[tools[2].key]), 'vhd-lib + sync', { vBytes: childBytes, refError: m[tools[2].key].error }));
    } else {
      rows.push(makeRow(`${base} vs vhd-lib`, '≥ 2.0x', v, null, 'vhd-lib', { vBytes: childBytes, ...peerSkipped }));
    }
  }

  // 2. Partial blocks.
  if (want(2)) {
    const partial = await dataset(ctx, 'partial-1g', { size: GiB, ...shape, partial: true });
    describe(partial);
    log(`scenario 2: partial-block child (${(partial.manifest.childDataBytes / MiB).toFixed(1)} MiB of sectors in ${partial.manifest.childBlocks} blocks, best of ${runs})`);
    const tools = [vhdkitTool(partial, ctx)];
    if (peer.ok) tools.push(peerTool(peer, partial));
    const m = await measure(ctx, tools, { runs });
    const v = summary(m[tools[0].key]);
    const ref = peer.ok ? summary(m[tools[1].key]) : null;
    rows.push(
      makeRow('merge partial-block child (Hyper-V style), 1 GiB', 'correct', v, ref, 'vhd-lib', {
        vBytes: partial.manifest.childDataBytes,
        vhdkitCorrect: v.correct,
        referenceCorrect: ref ? ref.correct : null,
        referenceDiffBytes: ref ? ref.diffBytes : null,
        ...(peer.ok ? { refError: m[tools[1].key].error } : peerSkipped),
      }),
    );
  }

  // 3. Cold cache. The fair floor is `dd` copying the same number of bytes from one file to another
  // with conv=fsync: the merge must read N bytes of child data from the device AND write N bytes to
  // the parent durably (vhdkit fsyncs). `dd of=/dev/null` would measure only the read half, a floor
  // no merge can reach. Input: the pristine child (cold, like the merge's), output: a new file.
  // Both are whole processes with the program itself warmed after the drop (see vhdkitTool).
  const coldName = 'merge, cold cache, vs dd copy + fsync of the same bytes';
  if (want(3) && !canDrop) {
    rows.push({ name: coldName, vhdkit: null, reference: null, referenceName: 'dd conv=fsync', ratio: null, target: '≥ 0.8x', skipped: 'cannot drop caches (needs root)' });
    log('scenario 3 skipped: cannot drop caches (echo 3 > /proc/sys/vm/drop_caches needs root)');
  } else if (want(3)) {
    log(`scenario 3: cold cache (best of ${coldRuns})`);
    const coldRow = async (ds, name, target) => {
      const bytes = ds.manifest.childDataBytes;
      const ddOut = path.join(ctx.dataDir, 'dd.out');
      const count = Math.ceil(bytes / (4 * MiB));
      const dd = {
        key: `dd:${ds.name}`,
        name: 'dd conv=fsync',
        command: () => ['dd', [`if=${path.join(ds.dir, 'child.vhd')}`, `of=${ddOut}`, 'bs=4M', `count=${count}`, 'conv=fsync', 'status=none']],
        warm: () => {
          fs.rmSync(ddOut, { force: true });
          spawnSync('sync');
          spawnSync('dd', ['--version']);
        },
      };
      const tools = [vhdkitTool(ds, ctx), dd];
      const m = await measure(ctx, tools, { runs: coldRuns, cold: true });
      fs.rmSync(ddOut, { force: true });
      // dd starts in a millisecond: its whole time is its I/O, the fair match for vhdkit's engine time.
      const ref = summary(m[dd.key]);
      if (ref) ref.engineSeconds = ref.seconds;
      rows.push(makeRow(name, target, summary(m[tools[0].key]), ref, 'dd conv=fsync', { vBytes: bytes, refBytes: count * 4 * MiB }));
    };
    await coldRow(issue, coldName, '≥ 0.8x');
    if (!quick) {
      // The same with a 2 GiB child (1024 full blocks, half new) into an 8 GiB parent: Node's start
      // (~0.2 s) weighs an eighth as much as on 256 MiB, so this row shows the throughput it hides.
      const big = await dataset(ctx, 'cold-2g-child', { size: 8 * GiB, parentBlocks: 1024, childBlocks: 1024, overlap: 512, seed: 2, partial: false });
      describe(big);
      await coldRow(big, 'merge 2 GiB child, cold cache, vs dd copy + fsync of the same bytes', '');
    }
  }

  // 4. Scale: the same child data into a 2000 GiB parent, interleaved with the 1 GiB one.
  if (want(4)) {
    const big = await dataset(ctx, 'issue-2000g', { size: 2000 * GiB, ...shape });
    describe(big);
    log(`scenario 4: 2000 GiB parent vs 1 GiB parent, same data (best of ${runs})`);
    const tools = [vhdkitTool(issue, ctx), vhdkitTool(big, ctx)];
    if (peer.ok) tools.push(peerTool(peer, big));
    const m = await measure(ctx, tools, { runs });
    const vBig = summary(m[tools[1].key]);
    rows.push(makeRow('merge into 2000 GiB parent vs 1 GiB parent, same data', '≥ 0.91x (≤ 1.1x cost)', vBig, summary(m[tools[0].key]), '1 GiB parent'));
    if (peer.ok) {
      const ref = summary(m[tools[2].key]);
      const r = makeRow('merge into 2000 GiB parent vs vhd-lib', '', vBig, ref, 'vhd-lib', { vBytes: childBytes, refError: m[tools[2].key].error });
      const peerSmall = rows.find((x) => x.referenceName === 'vhd-lib' && x.name.includes('into 1 GiB parent'))?.reference;
      if (ref && peerSmall) r.referenceScale = ref.seconds / peerSmall.seconds; // vhd-lib's own 2000 GiB / 1 GiB cost
      rows.push(r);
    } else rows.push(makeRow('merge into 2000 GiB parent vs vhd-lib', '', vBig, null, 'vhd-lib', { vBytes: childBytes, ...peerSkipped }));
  }

  // Where vhdkit's engine time goes.
  log('time split: in-process merges with FileSink instrumented');
  meta.breakdown.push(await breakdown(ctx, issue));
  if (want(4)) meta.breakdown.push(await breakdown(ctx, await dataset(ctx, 'issue-2000g', { size: 2000 * GiB, ...shape })));
  if (want(3) && canDrop) meta.breakdown.push(await breakdown(ctx, issue, { cold: true }));
  rows.meta = meta;
  return rows;
}

// ------------------------------------------------------------------------------------------------
// Table (run.mjs's columns, plus each tool's in-process time and the content check).

const fmtS = (x) => `${x.toFixed(3)} s`;
/** A row as run.mjs's table columns: scenario, vhdkit, throughput, reference, ratio, target, peak RSS. */
export function tableRow(r) {
  if (!r.vhdkit) return [r.name, `skipped: ${r.skipped ?? 'no result'}`, '', '', '', r.target, ''];
  const v = r.vhdkit;
  const check = (x) => (x.correct === false ? ` WRONG (${x.diffBytes} bytes differ)` : '');
  let ref;
  if (r.reference) ref = `${r.referenceName} ${fmtS(r.reference.seconds)}${check(r.reference)}`;
  else if (r.skipped) ref = `${r.referenceName}: skipped`;
  else ref = `${r.referenceName}: ${r.refError ? 'failed' : 'not available'}`;
  return [
    r.name,
    v.correct === false ? `WRONG (${v.diffBytes} bytes differ)` : fmtS(v.seconds),
    r.vBytes && v.correct !== false ? `${(r.vBytes / MiB / v.seconds).toFixed(0)} MiB/s` : '',
    ref,
    r.ratio !== null ? `${r.ratio.toFixed(2)}x${r.medianRatio ? ` (med ${r.medianRatio.toFixed(2)}x)` : ''}` : '',
    r.target,
    v.peakRssMiB ? `${v.peakRssMiB.toFixed(0)} MiB` : '',
  ];
}

export function formatTable(rows) {
  const head = ['scenario', 'vhdkit', 'throughput', 'reference', 'ratio', 'target', 'peak RSS', 'engine (ratio)', 'verified'];
  const body = rows.map((r) => [
    ...tableRow(r),
    r.vhdkit?.engineSeconds != null ? `${fmtS(r.vhdkit.engineSeconds)}${r.engineRatio ? ` (${r.engineRatio.toFixed(2)}x)` : ''}` : '',
    r.vhdkit?.correct === true ? 'yes' : r.vhdkit?.correct === false ? 'NO' : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => String(b[i]).length)));
  const line = (b) => b.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
  return [line(head), ...body.map(line)].join('\n');
}

export function formatBreakdown(b) {
  const o = b.ops;
  return (
    `  ${b.dataset}${b.cold ? ' (cold)' : ''}: ${b.wallMs} ms = setup ${b.setupMs} + data ${b.dataMs} + fsync ${b.fsyncMs} + metadata ${b.metadataMs}` +
    (b.workers > 0
      ? `   [data copied on ${b.workers} worker threads; only main-thread I/O timed: read ${o.read.calls}×, write ${o.write.calls}× ${o.write.MiB} MiB]`
      : `   [read ${o.read.calls}× ${o.read.MiB} MiB ${o.read.ms} ms, write ${o.write.calls}× ${o.write.MiB} MiB ${o.write.ms} ms, summed over reads and writes in flight]`) +
    (b.correct ? '' : '  RESULT WRONG')
  );
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const arg = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : dflt;
  };
  const quick = argv.includes('--quick');
  const started = Date.now();
  const opts = {
    quick,
    work: arg('--work', path.join(os.tmpdir(), 'vhdkit-bench')),
    runs: arg('--runs'),
    peerDir: arg('--peer'),
    only: arg('--only')?.split(',').map(Number),
    workers: arg('--workers'),
  };
  const outFile = resultFile(arg('--out'), path.join(root, 'bench', 'results', `merge-${Date.now()}.json`), opts.work);
  const rows = await runMergeBench(opts);
  const { meta } = rows;
  console.log(`\nvhdkit merge benchmark (${quick ? 'quick' : 'full'}; best of ${meta.runs}, cold best of ${meta.coldRuns}; node ${process.version}; ${os.cpus().length} cores; vhdkit --workers ${meta.workers})`);
  console.log(formatTable(rows));
  console.log('\nratio = reference time / vhdkit time (> 1: vhdkit faster), best of the runs (med: medians), whole processes with node startup;');
  console.log('same bytes on both sides, so also the throughput ratio. engine = vhdkit\'s own `seconds` (its --json); in brackets the ratio');
  console.log('on in-process times (vhd-lib: its elapsedMs; dd: its whole time).');
  console.log(`peer: ${meta.peer.ok ? `vhd-lib ${meta.peer.version} (${meta.peer.dir})` : `skipped: ${meta.peer.reason}`}; every vhdkit result verified with ${meta.verifier}.`);
  for (const r of rows) if (r.referenceScale) console.log(`vhd-lib's own cost, 2000 GiB vs 1 GiB parent: ${r.referenceScale.toFixed(2)}x`);
  if (meta.breakdown.length) {
    console.log('\nvhdkit engine time split (in-process merge, FileSink timed):');
    for (const b of meta.breakdown) console.log(formatBreakdown(b));
  }
  const results = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, quick, seconds: (Date.now() - started) / 1000, ...meta, rows };
  writeResult(outFile, results);
  console.log(`\nresults: ${outFile} (${results.seconds.toFixed(0)} s)`);
  if (rows.some((r) => r.vhdkit?.correct === false) || meta.breakdown.some((b) => !b.correct)) {
    console.error('vhdkit produced a WRONG merge result (see above)');
    process.exitCode = 1;
  }
}
