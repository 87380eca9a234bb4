#!/usr/bin/env node
// Macro benchmark: vhdkit side by side with the peers installed on this machine, on the same files,
// in the same run. Prints a table of ratios and writes a JSON result file CI can compare.
//
//   npm run bench [-- --quick] [--work DIR] [--out FILE] [--runs N]
//
// Data (made here, deterministic, kept in --work between runs):
//   dyn      dynamic disk, every other 2 MiB block allocated with random data (4 GiB; 1 GiB --quick),
//            and its raw form twice: a sparse file (holes where the blocks are not) and a dense copy
//   full-8g  an 8 GiB dynamic disk, every block allocated (full runs with root only: a cold row)
//   sparse   2000 GiB dynamic disk with 100 MiB allocated, and a 1 GiB disk with the same data
//   gens     two full generations (1 GiB; 256 MiB --quick) differing in 1% of their 4 KiB pages
// Every vhdkit and peer measurement is a whole process (startup included), best of --runs.
// Cold-cache rows drop the page cache first (root only; skipped otherwise). "data cold" rows then load
// the program itself back (node and vhdkit's modules, by hashing a tiny file; `dd --version`), so
// they measure reading the data, not a cold start of Node (~0.25 s here); the fully cold row shows both.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runMicro } from './micro.mjs';
import { claimScratch, resultFile, writeResult } from './out.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const arg = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const work = path.resolve(arg('--work', path.join(os.tmpdir(), 'vhdkit-bench')));
const outFile = resultFile(arg('--out'), path.join(root, 'bench', 'results', `bench-${Date.now()}.json`), work);
const runs = Number(arg('--runs', quick ? 2 : 3));
const GiB = 2 ** 30;
const MiB = 2 ** 20;

if (!fs.existsSync(cli)) {
  console.error('build first: npm run build');
  process.exit(2);
}
const { DynamicWriter, FileSink, hash: libHash, destroyPool } = await import(path.join(root, 'dist', 'index.js'));

const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const hasQemu = have('qemu-img');
const hasXxhsum = have('xxhsum');
const hasTime = fs.existsSync('/usr/bin/time');
const canDropCaches = (() => {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
})();
const dropCaches = () => {
  spawnSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
};

claimScratch(work);

function lcgFill(data, seed) {
  let x = seed >>> 0;
  for (let i = 0; i < data.length; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    data[i] = x;
    data[i + 1] = x >>> 8;
    data[i + 2] = x >>> 16;
    data[i + 3] = x >>> 24;
  }
  return x;
}

/** A dynamic disk with `blocks` (2 MiB each) filled by `fill(block, data)`. Made once, kept in --work. */
async function makeDynamic(file, virtualSize, blocks, fill) {
  if (fs.existsSync(file)) return;
  const tmp = `${file}.tmp`;
  fs.rmSync(tmp, { force: true });
  const sink = await FileSink.open(tmp, 'wx');
  const w = await DynamicWriter.create(sink, { virtualSize, uuid: crypto.createHash('md5').update(path.basename(file)).digest() });
  const data = new Uint8Array(2 * MiB);
  for (const b of blocks) {
    fill(b, data);
    await w.writeBlock(b, data);
  }
  await w.finish();
  await sink.close();
  fs.renameSync(tmp, file);
}

function vhdkit(...args) {
  return [process.execPath, [cli, ...args, '--quiet']];
}

/** Runs a command `runs` times; best wall time (s) and peak RSS (MiB, with GNU time). */
function timeit([cmd, args], { before, cold = false, warm } = {}) {
  let best = Infinity;
  let rss = 0;
  for (let r = 0; r < runs; r++) {
    before?.();
    if (cold) dropCaches();
    if (cold && warm) spawnSync(warm[0], warm[1]); // the program back in the page cache, the data not
    const full = hasTime ? ['/usr/bin/time', ['-f', '%M', cmd, ...args]] : [cmd, args];
    const t = process.hrtime.bigint();
    const res = spawnSync(full[0], full[1], { encoding: 'utf8', maxBuffer: 1 << 28 });
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${res.status}): ${res.stderr}`);
    if (hasTime) rss = Math.max(rss, Number(res.stderr.trim().split('\n').pop()));
    best = Math.min(best, s);
  }
  return { seconds: best, peakRssMiB: hasTime ? rss / 1024 : null };
}

/** Best over `runs` of a vhdkit command's own `seconds` (its --json); cache handling as in timeit. */
function engineSeconds(args, { cold = false, warm } = {}) {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    if (cold) dropCaches();
    if (cold && warm) spawnSync(warm[0], warm[1]);
    const res = spawnSync(process.execPath, [cli, ...args, '--json'], { encoding: 'utf8' });
    if (res.status !== 0) throw new Error(`vhdkit ${args.join(' ')} failed (${res.status}): ${res.stderr}`);
    best = Math.min(best, JSON.parse(res.stdout).seconds);
  }
  return { seconds: best, peakRssMiB: null };
}

const results = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, quick, runs, scenarios: {} };
const rows = [];
/**
 * One row: vhdkit against a reference. `ratio` = reference time / vhdkit time, or for throughput
 * comparisons (bytes differ) vhdkit bytes/s ÷ reference bytes/s. > 1: vhdkit faster.
 */
function row(name, target, v, ref, refName, { vBytes, refBytes } = {}) {
  let ratio = null;
  if (ref) ratio = vBytes && refBytes ? vBytes / v.seconds / (refBytes / ref.seconds) : ref.seconds / v.seconds;
  results.scenarios[name] = { vhdkit: v, reference: ref ?? null, referenceName: refName, ratio, target, vBytes: vBytes ?? null, refBytes: refBytes ?? null };
  rows.push([
    name,
    `${v.seconds.toFixed(3)} s`,
    vBytes ? `${(vBytes / MiB / v.seconds).toFixed(0)} MiB/s` : '',
    ref ? `${refName} ${ref.seconds.toFixed(3)} s` : `${refName}: not available`,
    ratio !== null ? `${ratio.toFixed(2)}x` : '',
    target,
    v.peakRssMiB ? `${v.peakRssMiB.toFixed(0)} MiB` : '',
  ]);
}

// ---------------------------------------------------------------- data
const dynSize = (quick ? 1 : 4) * GiB;
const half = [];
for (let b = 0; b < dynSize / (2 * MiB); b += 2) half.push(b);
const dyn = path.join(work, `dyn-${dynSize / GiB}g.vhd`);
await makeDynamic(dyn, dynSize, half, (b, d) => lcgFill(d, b + 1));
const dynRaw = path.join(work, `dyn-${dynSize / GiB}g.raw`);
if (!fs.existsSync(dynRaw)) spawnSync(process.execPath, [cli, 'convert', dyn, dynRaw, '--to', 'raw', '--quiet'], { stdio: 'inherit' });
const allocated = half.length * 2 * MiB;
// The same bytes with every hole written as zeros: vhdkit skips the holes of a sparse raw file (when
// its native helper is built), xxhsum reads them; on this file both read every byte.
const dynDense = path.join(work, `dyn-${dynSize / GiB}g.dense.raw`);
if (!fs.existsSync(dynDense)) {
  spawnSync('cp', ['--sparse=never', dynRaw, `${dynDense}.tmp`], { stdio: 'inherit' });
  fs.renameSync(`${dynDense}.tmp`, dynDense);
}

const spread = (total, n) => Array.from({ length: n }, (_, i) => Math.floor((i * total) / n));
const sparseBig = path.join(work, 'sparse-2000g.vhd');
const sparseSmall = path.join(work, 'sparse-1g.vhd');
await makeDynamic(sparseBig, 2000 * GiB, spread(1000 * 512, 50), (b, d) => lcgFill(d, 7));
await makeDynamic(sparseSmall, 1 * GiB, spread(512, 50), (b, d) => lcgFill(d, 7));

const genSize = (quick ? 256 : 1024) * MiB;
const gen1 = path.join(work, `gen1-${genSize / MiB}m.vhd`);
const gen2 = path.join(work, `gen2-${genSize / MiB}m.vhd`);
const allBlocks = Array.from({ length: genSize / (2 * MiB) }, (_, i) => i);
await makeDynamic(gen1, genSize, allBlocks, (b, d) => lcgFill(d, 1000 + b));
// gen2: the same, with 1% of its 4 KiB pages (chosen by a seeded PRNG) rewritten.
let pageSeed = 42;
const changedPages = new Set();
const pages = genSize / 4096;
while (changedPages.size < Math.round(pages / 100)) {
  pageSeed = (Math.imul(pageSeed, 1664525) + 1013904223) >>> 0;
  changedPages.add(pageSeed % pages);
}
await makeDynamic(gen2, genSize, allBlocks, (b, d) => {
  lcgFill(d, 1000 + b);
  for (let p = 0; p < 512; p++) if (changedPages.has(b * 512 + p)) d.fill((b + p) & 0xff || 1, p * 4096, p * 4096 + 4096);
});

const out = (n) => path.join(work, `out-${n}`);
const rm = (n) => () => {
  fs.rmSync(out(n), { force: true });
  spawnSync('sync'); // the file system frees the blocks now, not during the next measurement
};
const fileSize = (f) => fs.statSync(f).size;

// ---------------------------------------------------------------- hash
{
  // A tiny file: hashing it starts the pool (in process) or loads the program (cold rows).
  const tiny = path.join(work, 'tiny.raw');
  fs.writeFileSync(tiny, Buffer.alloc(65536, 1));
  // Same bytes on both sides: the dense raw file (no holes), half of it zeros.
  const v2 = timeit(vhdkit('hash', dynDense));
  const x = hasXxhsum ? timeit(['xxhsum', ['-H1', dynDense]]) : null;
  row('hash raw (page cache) vs xxhsum -H1', '≥ 1.0x', v2, x, 'xxhsum -H1', {});
  const v1 = timeit(vhdkit('hash', dynDense, '--workers', '1'));
  row('hash raw: 2 workers vs 1 worker (whole process)', '', v2, v1, '1 worker', {});
  // Scaling of the engine itself: the operation's own seconds (--json), without process startup.
  const inner = (w) => engineSeconds(['hash', dynDense, '--workers', String(w)]);
  row('hash raw: 2 workers vs 1 worker (engine time)', '≥ 1.7x', inner(2), inner(1), '1 worker', { vBytes: dynSize, refBytes: dynSize });
  // The same in this process on a pool whose threads already run (a batch job's steady state, and the
  // engine without the ~0.1 s of starting threads that the row above counts on both sides).
  const steady = async (w) => {
    await libHash(tiny, { workers: w }); // threads started, kernel compiled
    let best = Infinity;
    for (let r = 0; r < runs; r++) best = Math.min(best, (await libHash(dynDense, { workers: w })).seconds);
    return { seconds: best, peakRssMiB: null };
  };
  const s1 = await steady(1);
  const s2 = await steady(2);
  await destroyPool();
  row('hash raw: 2 workers vs 1 worker (threads running)', '', s2, s1, '1 worker', { vBytes: dynSize, refBytes: dynSize });
  // The same content as a sparse file: vhdkit reads its data extents only, xxhsum every byte.
  const vs = timeit(vhdkit('hash', dynRaw));
  const xs = hasXxhsum ? timeit(['xxhsum', ['-H1', dynRaw]]) : null;
  row('hash sparse raw (holes skipped) vs xxhsum -H1', '', vs, xs, 'xxhsum -H1', {});
  const vd = timeit(vhdkit('hash', dyn));
  row('hash dynamic (page cache) vs xxhsum of raw', '', vd, x, 'xxhsum -H1', {});
  if (canDropCaches) {
    const warmVhdkit = vhdkit('hash', tiny, '--workers', '2');
    const warmDd = ['dd', ['--version']];
    const ddCmd = ['dd', [`if=${dyn}`, 'of=/dev/null', 'bs=4M']];
    const cold = timeit(vhdkit('hash', dyn), { cold: true, warm: warmVhdkit });
    const dd = timeit(ddCmd, { cold: true, warm: warmDd });
    row('hash dynamic, data cold, vs dd read', '≥ 0.9x', cold, dd, 'dd', { vBytes: fileSize(dyn), refBytes: fileSize(dyn) });
    // The engine's own seconds (--json: from opening the disk to the digest, threads' start included).
    const engine = engineSeconds(['hash', dyn], { cold: true, warm: warmVhdkit });
    row('hash dynamic, data cold, engine time vs dd read', '', engine, dd, 'dd', { vBytes: fileSize(dyn), refBytes: fileSize(dyn) });
    const allCold = timeit(vhdkit('hash', dyn), { cold: true });
    const ddAllCold = timeit(ddCmd, { cold: true });
    row('hash dynamic, all cold (Node too), vs dd read', '', allCold, ddAllCold, 'dd', { vBytes: fileSize(dyn), refBytes: fileSize(dyn) });
    if (!quick) {
      // The same on 8 GiB of data (a full 8 GiB dynamic disk, made once): the ~0.3 s of starting Node
      // and the pool weigh a quarter as much as on 2 GiB, so this row shows the throughput they hide.
      const big8 = path.join(work, 'full-8g.vhd');
      await makeDynamic(big8, 8 * GiB, Array.from({ length: 4096 }, (_, b) => b), (b, d) => lcgFill(d, 5000 + b));
      const ddBig = ['dd', [`if=${big8}`, 'of=/dev/null', 'bs=4M']];
      const v8 = timeit(vhdkit('hash', big8), { cold: true, warm: warmVhdkit });
      const d8 = timeit(ddBig, { cold: true, warm: warmDd });
      row('hash 8 GiB dynamic (full), data cold, vs dd read', '', v8, d8, 'dd', { vBytes: fileSize(big8), refBytes: fileSize(big8) });
    }
  } else {
    rows.push(['hash dynamic, data cold, vs dd read', 'skipped: cannot drop caches (needs root)', '', '', '', '≥ 0.9x', '']);
  }
  const big = timeit(vhdkit('hash', sparseBig));
  const small = timeit(vhdkit('hash', sparseSmall));
  row('hash 2000 GiB sparse vs 1 GiB, same 100 MiB', '≥ 0.83x (≤ 1.2x cost)', big, small, '1 GiB', {});
}

// ---------------------------------------------------------------- diff
{
  const changed = changedPages.size * 4096;
  const d = timeit(vhdkit('diff', gen1, gen2, '--json'));
  const catBoth = timeit(['sh', ['-c', `cat "${gen1}" "${gen2}" > /dev/null`]]);
  row('diff 2 generations (1% pages) vs cat of both', '', d, catBoth, 'cat', { vBytes: 2 * genSize, refBytes: fileSize(gen1) + fileSize(gen2) });
  if (hasQemu) {
    const q = spawnSync('qemu-img', ['compare', '-f', 'vpc', '-F', 'vpc', gen1, gen1]);
    if (q.status === 0) {
      const qc = timeit(['qemu-img', ['compare', '-f', 'vpc', '-F', 'vpc', gen1, gen1]]);
      row('diff vs qemu-img compare (identical pair)', '', d, qc, 'qemu-img compare', { vBytes: 2 * genSize, refBytes: 2 * genSize });
    }
  }
  const o = timeit(vhdkit('diff', gen1, gen2, '--out', out('child.vhd'), '--force', '--json'), { before: rm('child.vhd') });
  row('diff --out (patch from two full builds)', '', o, d, 'diff alone', {});
  results.scenarios['diff --out (patch from two full builds)'].childBytes = fileSize(out('child.vhd'));
  results.scenarios['diff --out (patch from two full builds)'].changedBytes = changed;
  rm('child.vhd')();
}

// ---------------------------------------------------------------- convert
{
  const catFile = timeit(['sh', ['-c', `cat "${dyn}" > /dev/null`]]);
  const vr = timeit(vhdkit('convert', dyn, out('a.raw'), '--to', 'raw', '--force'), { before: rm('a.raw') });
  row('convert dynamic → raw vs cat (read limit)', '', vr, catFile, 'cat', { vBytes: allocated, refBytes: fileSize(dyn) });
  if (hasQemu) {
    // vhdkit fsyncs its output before renaming it into place; qemu-img does not, so the peer is
    // "qemu-img convert && sync FILE" (the same durability).
    const q = timeit(['sh', ['-c', `qemu-img convert -f vpc -O raw "${dyn}" "${out('q.raw')}" && sync "${out('q.raw')}"`]], { before: rm('q.raw') });
    row('convert dynamic → raw vs qemu-img + sync', '', vr, q, 'qemu-img', {});
    const vd = timeit(vhdkit('convert', dyn, out('a.vhd'), '--to', 'dynamic', '--force'), { before: rm('a.vhd') });
    const qd = timeit(
      ['sh', ['-c', `qemu-img convert -f vpc -O vpc -o subformat=dynamic,force_size=on "${dyn}" "${out('q.vhd')}" && sync "${out('q.vhd')}"`]],
      { before: rm('q.vhd') },
    );
    row('convert dynamic → dynamic vs qemu-img + sync', '', vd, qd, 'qemu-img', {});
  }
  const big = timeit(vhdkit('convert', sparseBig, out('b.vhd'), '--to', 'dynamic', '--force'), { before: rm('b.vhd') });
  const small = timeit(vhdkit('convert', sparseSmall, out('s.vhd'), '--to', 'dynamic', '--force'), { before: rm('s.vhd') });
  row('convert 2000 GiB sparse vs 1 GiB, same data', '', big, small, '1 GiB', {});
  for (const f of ['a.raw', 'q.raw', 'a.vhd', 'q.vhd', 'b.vhd', 's.vhd']) rm(f)();
}

results.micro = await runMicro({ quick });

// ---------------------------------------------------------------- report
const head = ['scenario', 'vhdkit', 'throughput', 'reference', 'ratio', 'target', 'peak RSS'];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
const line = (r) => r.map((c, i) => String(c).padEnd(widths[i])).join('  ');
console.log(`\nvhdkit macro benchmark (${quick ? 'quick' : 'full'}; best of ${runs}; node ${process.version}; ${os.cpus().length} cores)`);
console.log(line(head));
for (const r of rows) console.log(line(r));
console.log('\nratio > 1: vhdkit faster (time ratio; for rows with two throughputs, the throughput ratio).');
console.log('\nmicro-benchmarks (tinybench):');
for (const m of results.micro) console.log(`  ${m.name.padEnd(44)} ${m.opsPerSec.toFixed(0).padStart(12)} ops/s  ${m.throughput ?? ''}`);
writeResult(outFile, results);
console.log(`\nresults: ${outFile}`);
