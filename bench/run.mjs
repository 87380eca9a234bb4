#!/usr/bin/env node
// Macro benchmark: vhdkit side by side with the peers installed on this machine, on the same files,
// in the same run. Prints a table of ratios and writes a JSON result file CI can compare.
//
//   npm run bench [-- --quick] [--work DIR] [--out FILE]
//
// Scenarios (made here, deterministic):
//   dyn4g     4 GiB dynamic disk, half of its 2 MiB blocks allocated with random data
//   sparse2t  2000 GiB dynamic disk with 10 MiB allocated, and the same data in a 1 GiB disk
// Measures (whole process, best of N, page cache warm):
//   convert dyn4g → raw         vhdkit vs qemu-img convert vs cat of the allocated bytes (device limit)
//   convert dyn4g → dynamic     vhdkit vs qemu-img convert -O vpc
//   convert sparse2t → dynamic  2000 GiB vs 1 GiB with the same data (cost must follow data)
//   peak RSS of every vhdkit run
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runMicro } from './micro.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const arg = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const work = path.resolve(arg('--work', path.join(os.tmpdir(), 'vhdkit-bench')));
const outFile = path.resolve(arg('--out', path.join(root, 'bench', 'results', `bench-${Date.now()}.json`)));
const runs = Number(arg('--runs', quick ? 2 : 3));
const GiB = 2 ** 30;
const MiB = 2 ** 20;

if (!fs.existsSync(cli)) {
  console.error('build first: npm run build');
  process.exit(2);
}
const { DynamicWriter, FileSink } = await import(path.join(root, 'dist', 'index.js'));

const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const hasQemu = have('qemu-img');
const hasTime = fs.existsSync('/usr/bin/time');

fs.mkdirSync(work, { recursive: true });

async function makeDynamic(file, virtualSize, blocks, seed) {
  if (fs.existsSync(file)) return;
  const tmp = `${file}.tmp`;
  fs.rmSync(tmp, { force: true });
  const sink = await FileSink.open(tmp, 'wx');
  const w = await DynamicWriter.create(sink, { virtualSize, uuid: crypto.createHash('md5').update(file).digest() });
  const data = new Uint8Array(2 * MiB);
  let x = seed >>> 0;
  for (const b of blocks) {
    for (let i = 0; i < data.length; i += 4) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      data[i] = x;
      data[i + 1] = x >>> 8;
      data[i + 2] = x >>> 16;
      data[i + 3] = x >>> 24;
    }
    await w.writeBlock(b, data);
  }
  await w.finish();
  await sink.close();
  fs.renameSync(tmp, file);
}

/** Runs a command `runs` times; returns the best wall time (s) and the peak RSS (KiB) when GNU time is there. */
function timeit(cmd, args, { before } = {}) {
  let best = Infinity;
  let rss = 0;
  for (let r = 0; r < runs; r++) {
    before?.();
    const full = hasTime ? ['/usr/bin/time', ['-f', '%M', cmd, ...args]] : [cmd, args];
    const t = process.hrtime.bigint();
    const res = spawnSync(full[0], full[1], { encoding: 'utf8', maxBuffer: 1 << 26 });
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${res.stderr}`);
    if (hasTime) rss = Math.max(rss, Number(res.stderr.trim().split('\n').pop()));
    best = Math.min(best, s);
  }
  return { seconds: best, peakRssMiB: hasTime ? rss / 1024 : null };
}

const results = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, quick, runs, scenarios: {} };
const rows = [];
function row(name, vhdkit, peer, peerName, bytes) {
  const ratio = peer ? peer.seconds / vhdkit.seconds : null;
  results.scenarios[name] = { vhdkit, peer: peer ?? null, peerName, bytes, ratio };
  rows.push([
    name,
    `${vhdkit.seconds.toFixed(3)} s`,
    bytes ? `${(bytes / MiB / vhdkit.seconds).toFixed(0)} MiB/s` : '',
    peer ? `${peerName} ${peer.seconds.toFixed(3)} s` : `${peerName}: not installed`,
    ratio ? `${ratio.toFixed(2)}x` : '',
    vhdkit.peakRssMiB ? `${vhdkit.peakRssMiB.toFixed(0)} MiB` : '',
  ]);
}

// --- data
const size4 = (quick ? 1 : 4) * GiB;
const nBlocks = size4 / (2 * MiB);
const half = [];
for (let b = 0; b < nBlocks; b += 2) half.push(b);
const dyn = path.join(work, `dyn-${size4 / GiB}g.vhd`);
await makeDynamic(dyn, size4, half, 1);
const allocated = half.length * 2 * MiB;
const spread = (total, n) => Array.from({ length: n }, (_, i) => Math.floor((i * total) / n));
const sparseBig = path.join(work, 'sparse-2000g.vhd');
const sparseSmall = path.join(work, 'sparse-1g.vhd');
await makeDynamic(sparseBig, 2000 * GiB, spread(1000 * 512, 5), 2);
await makeDynamic(sparseSmall, 1 * GiB, spread(512, 5), 2);

const out = (n) => path.join(work, n);
const rm = (n) => () => fs.rmSync(out(n), { force: true });

// --- device limit: cat of the whole file (allocated bytes + metadata) from page cache
const catFile = timeit('sh', ['-c', `cat "${dyn}" > /dev/null`]);
const vhdkitRaw = timeit(process.execPath, [cli, 'convert', dyn, out('a.raw'), '--to', 'raw', '--force', '--quiet'], { before: rm('a.raw') });
row('convert dyn → raw vs cat (read limit)', vhdkitRaw, catFile, 'cat', allocated);
if (hasQemu) {
  const q = timeit('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', dyn, out('q.raw')], { before: rm('q.raw') });
  row('convert dyn → raw vs qemu-img', vhdkitRaw, q, 'qemu-img', allocated);
  const vd = timeit(process.execPath, [cli, 'convert', dyn, out('a.vhd'), '--to', 'dynamic', '--force', '--quiet'], { before: rm('a.vhd') });
  const qd = timeit('qemu-img', ['convert', '-f', 'vpc', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', dyn, out('q.vhd')], {
    before: rm('q.vhd'),
  });
  row('convert dyn → dynamic vs qemu-img', vd, qd, 'qemu-img', allocated);
} else {
  row('convert dyn → raw vs qemu-img', vhdkitRaw, null, 'qemu-img', allocated);
}
const big = timeit(process.execPath, [cli, 'convert', sparseBig, out('b.vhd'), '--to', 'dynamic', '--force', '--quiet'], { before: rm('b.vhd') });
const small = timeit(process.execPath, [cli, 'convert', sparseSmall, out('s.vhd'), '--to', 'dynamic', '--force', '--quiet'], { before: rm('s.vhd') });
row('convert 2000 GiB sparse vs 1 GiB (same data)', big, small, '1 GiB', 10 * MiB);
for (const f of ['a.raw', 'q.raw', 'a.vhd', 'q.vhd', 'b.vhd', 's.vhd']) rm(f)();

results.micro = await runMicro({ quick });

// --- report
const head = ['scenario', 'vhdkit', 'throughput', 'peer', 'peer/vhdkit', 'peak RSS'];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r) => r.map((c, i) => c.padEnd(widths[i])).join('  ');
console.log(`\nvhdkit macro benchmark (${quick ? 'quick' : 'full'}; best of ${runs}; node ${process.version}; ${os.cpus().length} cores)`);
console.log(line(head));
for (const r of rows) console.log(line(r));
console.log('\n(peer/vhdkit > 1 means vhdkit is faster; for "2000 GiB vs 1 GiB" it is the cost of the large disk relative to the small one, inverted: 1.0 = same cost)');
console.log('\nmicro-benchmarks (tinybench):');
for (const m of results.micro) console.log(`  ${m.name.padEnd(44)} ${m.opsPerSec.toFixed(0).padStart(12)} ops/s  ${m.throughput ?? ''}`);
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, JSON.stringify(results, null, 2));
console.log(`\nresults: ${outFile}`);
