#!/usr/bin/env node
// Upload benchmark: `vhdkit upload` to a real local Azurite, side by side with the strategies of
// Azure's own uploaders computed on the same disk, and with bare `uploadPages` calls sending the
// same bytes at the same concurrency. Prints a table and writes bench/results/upload-<ts>.json.
//
//   npm run build && node bench/upload.mjs [--quick] [--work DIR] [--runs N] [--concurrency N] [--out FILE]
//
// Data (made once, kept in WORK between runs): a 1 GiB base image (--quick: 256 MiB) like an OS
// image: a quarter of its 1 MiB regions empty, the others with 90% of their 4 KiB pages holding data, and the next generation: the same with 1% of its 4 KiB pages
// rewritten at random places (scattered). Both as dynamic VHDs; the generation also as a differencing
// child of the base (`vhdkit diff --out`).
//
// Rows:
//   bytes   the generation uploaded with --base: payload bytes sent, against the bytes of the 64 KiB
//           chunks that changed (target ≤ 1.1x), as a fraction of a full upload; beside it, on the same
//           disk, azure-vhd-utils' strategy (every allocated 2 MiB block of the VHD), AzCopy's (every
//           non-zero 4 MiB chunk), vhdkit's `sectors` method (the child) and what 4 KiB chunks would
//           send, with the manifest sizes of both chunk sizes.
//   speed   a full upload of the generation (no base): vhdkit's send phase and whole operation against
//           bare `uploadPages` calls for the same page ranges at the same concurrency (target ≥ 0.8x),
//           best of --runs; and peak RSS of the CLI doing it (/usr/bin/time -f %M; target < 300 MiB).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { claimScratch, resultFile, writeResult } from './out.mjs';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../fixtures/azurite.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');
const MiB = 2 ** 20;
const PAGE = 4096;

const argv = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const quick = argv.includes('--quick');
const work = path.resolve(arg('--work', path.join(os.tmpdir(), 'vhdkit-bench-upload')));
const runs = Number(arg('--runs', quick ? 2 : 3));
const concurrency = Number(arg('--concurrency', 8));
const size = (quick ? 256 : 1024) * MiB;
const outFile = resultFile(arg('--out'), path.join(root, 'bench', 'results', `upload-${Date.now()}.json`), work);
claimScratch(work);

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 28, ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r;
}
const vhdkit = (...args) => sh(process.execPath, [cli, ...args]).stdout;

/** mulberry32: the same data every time. */
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeData() {
  const stamp = path.join(work, `data-v2-${size}.ok`);
  if (fs.existsSync(stamp)) return JSON.parse(fs.readFileSync(stamp, 'utf8'));
  fs.rmSync(work, { recursive: true, force: true }); // a scratch folder a benchmark made (claimScratch)
  claimScratch(work);
  const rand = prng(42);
  const raw = Buffer.alloc(size);
  const pages = size / PAGE;
  const noise = crypto.randomBytes(PAGE * 64);
  // Like an OS image: a quarter of the 1 MiB regions empty, the rest 90% data pages.
  let regionEmpty = false;
  for (let p = 0; p < pages; p++) {
    if (p % 256 === 0) regionEmpty = rand() < 0.25;
    if (!regionEmpty && rand() < 0.9) noise.copy(raw, p * PAGE, ((p * 7) % 64) * PAGE, ((p * 7) % 64) * PAGE + PAGE), raw.writeUInt32LE(p + 1, p * PAGE);
  }
  fs.writeFileSync(path.join(work, 'base.raw'), raw);
  const changed = new Set();
  while (changed.size < Math.round(pages * 0.01)) changed.add(Math.floor(rand() * pages));
  for (const p of changed) crypto.randomFillSync(raw, p * PAGE, PAGE);
  fs.writeFileSync(path.join(work, 'gen.raw'), raw);
  vhdkit('convert', path.join(work, 'base.raw'), path.join(work, 'base.vhd'), '--to', 'dynamic');
  vhdkit('convert', path.join(work, 'gen.raw'), path.join(work, 'gen.vhd'), '--to', 'dynamic');
  vhdkit('diff', path.join(work, 'base.vhd'), path.join(work, 'gen.raw'), '--out', path.join(work, 'child.vhd'), '--json');
  const meta = { size, changedPages: changed.size };
  fs.writeFileSync(stamp, JSON.stringify(meta));
  return meta;
}

/** Reads a hash manifest (src/format/manifest.ts layout): chunk size, hashes, zero flags. */
function readManifest(file) {
  const b = fs.readFileSync(file);
  const chunkSize = b.readUInt32LE(0x10);
  const chunks = Number(b.readBigUInt64LE(0x20));
  const hashes = new BigUint64Array(b.buffer.slice(b.byteOffset + 64, b.byteOffset + 64 + chunks * 8));
  const flags = b.subarray(64 + chunks * 8);
  const zero = (i) => (flags[i >>> 3] >>> (i & 7)) & 1;
  return { chunkSize, chunks, hashes, zero, bytes: b.length };
}

function changedChunkBytes(a, b) {
  let n = 0;
  for (let i = 0; i < b.chunks; i++) {
    if (b.zero(i) && a.zero(i)) continue;
    if (!b.zero(i) && !a.zero(i) && a.hashes[i] === b.hashes[i]) continue;
    if (b.zero(i)) continue; // cleared, not sent
    n += b.chunkSize;
  }
  return n;
}

/** Page ranges a sparse full upload writes: non-zero 64 KiB chunks, adjacent ones coalesced up to 4 MiB. */
function nonZeroRuns(m) {
  const out = [];
  for (let i = 0; i < m.chunks; i++) {
    if (m.zero(i)) continue;
    const s = i * m.chunkSize;
    const last = out[out.length - 1];
    if (last && last[1] === s && s + m.chunkSize - last[0] <= 4 * MiB) last[1] = s + m.chunkSize;
    else out.push([s, s + m.chunkSize]);
  }
  return out;
}

async function bare(client, container, name, raw, ranges) {
  const blob = client.getContainerClient(container).getPageBlobClient(name);
  await blob.create(size + 512);
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < ranges.length) {
      const [a, b] = ranges[next++];
      await blob.uploadPages(raw.subarray(a, b), a, b - a);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  await blob.uploadPages(Buffer.alloc(512), size, 512);
  return (performance.now() - started) / 1000;
}

async function main() {
  if (!fs.existsSync(cli)) throw new Error('build first: npm run build');
  const started = Date.now();
  console.log(`upload benchmark: ${size / MiB} MiB disks in ${work}, concurrency ${concurrency}, best of ${runs}`);
  const meta = makeData();
  const f = (n) => path.join(work, n);
  for (const n of ['base', 'gen']) vhdkit('hash', f(`${n}.vhd`), '--manifest', f(`${n}.m64k`), '--force');
  for (const n of ['base', 'gen']) vhdkit('hash', f(`${n}.vhd`), '--manifest', f(`${n}.m4k`), '--chunk-size', '4K', '--force');
  const m64 = [readManifest(f('base.m64k')), readManifest(f('gen.m64k'))];
  const m4 = [readManifest(f('base.m4k')), readManifest(f('gen.m4k'))];
  const changed64 = changedChunkBytes(m64[0], m64[1]);
  const changed4 = changedChunkBytes(m4[0], m4[1]);
  const genInfo = JSON.parse(vhdkit('info', f('gen.vhd'), '--json'));
  const vhdUtils = genInfo.allocatedBlocks * genInfo.blockSize;
  const raw = fs.readFileSync(f('gen.raw'));
  let azcopy = 0;
  for (let s = 0; s < size; s += 4 * MiB) if (raw.subarray(s, s + 4 * MiB).some((x) => x !== 0)) azcopy += 4 * MiB;

  const az = await startAzurite({ extentMemoryLimit: 12 * 1024 });
  const { upload, destroyPool } = await import(pathToFileURL(path.join(root, 'dist', 'index.js')).href);
  const rows = [];
  try {
    const cs = az.connectionString;
    const jdir = f('journals');
    const opts = { connectionString: cs, journalDir: jdir, concurrency };
    await upload(f('base.vhd'), 'bench/base', opts);
    const dedup = await upload(f('gen.vhd'), 'bench/gen', { ...opts, base: 'base', verify: true });
    const child = await upload(f('child.vhd'), 'bench/child', { ...opts, base: 'base', verify: true });
    const full = size + 512;
    const pct = (n) => `${((100 * n) / full).toFixed(2)}%`;
    rows.push({ row: 'bytes: vhdkit --base (chunks)', bytes: dedup.bytesUploaded, ofFull: dedup.bytesUploaded / full, vsChangedChunks: dedup.bytesUploaded / changed64, target: '≤ 1.1x changed chunks' });
    rows.push({ row: 'bytes: changed 64 KiB chunks', bytes: changed64, ofFull: changed64 / full, manifestBytes: m64[1].bytes });
    rows.push({ row: 'bytes: changed 4 KiB chunks (finer chunk)', bytes: changed4, ofFull: changed4 / full, manifestBytes: m4[1].bytes });
    rows.push({ row: 'bytes: vhdkit child --base (sectors)', bytes: child.bytesUploaded, ofFull: child.bytesUploaded / full });
    rows.push({ row: "bytes: azure-vhd-utils' strategy (allocated 2 MiB blocks)", bytes: vhdUtils, ofFull: vhdUtils / full });
    rows.push({ row: "bytes: AzCopy's strategy (non-zero 4 MiB chunks)", bytes: azcopy, ofFull: azcopy / full });
    console.log(`\n${meta.changedPages} of ${size / PAGE} pages changed (1%), scattered; full upload ${(full / MiB).toFixed(1)} MiB`);
    for (const r of rows) {
      console.log(`${r.row.padEnd(58)} ${(r.bytes / MiB).toFixed(2).padStart(9)} MiB  ${pct(r.bytes).padStart(7)} of full${r.vsChangedChunks ? `  ${r.vsChangedChunks.toFixed(3)}x changed chunks (${r.target})` : ''}${r.manifestBytes ? `  manifest ${(r.manifestBytes / 1024).toFixed(0)} KiB` : ''}`);
    }
    if (!dedup.verified || !child.verified) throw new Error('a deduplicated upload did not verify');

    // Speed: a full sparse upload of the generation, vhdkit vs bare uploadPages of the same ranges.
    const ranges = nonZeroRuns(m64[1]);
    const client = BlobServiceClient.fromConnectionString(cs);
    const speed = { vhdkitSend: [], vhdkitWhole: [], vhdkitNoMd5Send: [], bare: [], rss: [] };
    for (let r = 0; r < runs; r++) {
      for (const md5 of [true, false]) {
        const marks = {};
        const t0 = performance.now();
        const res = await upload(f('gen.vhd'), `bench/speed-${r}-${md5}`, { ...opts, md5, onPhase: (p) => (marks[p] = performance.now()) });
        const whole = (performance.now() - t0) / 1000;
        const send = ((marks.finish ?? performance.now()) - marks.upload) / 1000;
        if (md5) {
          speed.vhdkitSend.push(send);
          speed.vhdkitWhole.push(whole);
        } else speed.vhdkitNoMd5Send.push(send);
        if (r === 0 && md5) speed.bytes = res.bytesUploaded;
      }
      speed.bare.push(await bare(client, 'bench', `bare-${r}`, raw, ranges));
      const t = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, cli, 'upload', f('gen.vhd'), `bench/rss-${r}`, '--json', '--journal-dir', jdir], {
        encoding: 'utf8',
        env: { ...process.env, AZURE_STORAGE_CONNECTION_STRING: cs },
      });
      const kb = Number(t.stderr.trim().split('\n').pop());
      if (Number.isFinite(kb)) speed.rss.push(kb / 1024);
    }
    const best = (a) => Math.min(...a);
    const mbps = (s) => (speed.bytes / MiB / s).toFixed(0);
    const s = {
      row: 'speed: full sparse upload of the generation',
      bytes: speed.bytes,
      bareSeconds: best(speed.bare),
      vhdkitSendSeconds: best(speed.vhdkitSend),
      vhdkitSendNoMd5Seconds: best(speed.vhdkitNoMd5Send),
      vhdkitWholeSeconds: best(speed.vhdkitWhole),
      ratioSend: best(speed.bare) / best(speed.vhdkitSend),
      ratioSendNoMd5: best(speed.bare) / best(speed.vhdkitNoMd5Send),
      ratioWhole: best(speed.bare) / best(speed.vhdkitWhole),
      peakRssMiB: speed.rss.length ? Math.max(...speed.rss) : null,
      all: speed,
    };
    rows.push(s);
    console.log(`\nfull sparse upload, ${(speed.bytes / MiB).toFixed(0)} MiB of pages at concurrency ${concurrency}:`);
    console.log(`  bare uploadPages            ${s.bareSeconds.toFixed(2)} s  ${mbps(s.bareSeconds)} MiB/s`);
    console.log(`  vhdkit send phase           ${s.vhdkitSendSeconds.toFixed(2)} s  ${mbps(s.vhdkitSendSeconds)} MiB/s  ratio ${s.ratioSend.toFixed(2)}x (target ≥ 0.8x)`);
    console.log(`  vhdkit send phase, --no-md5 ${s.vhdkitSendNoMd5Seconds.toFixed(2)} s  ${mbps(s.vhdkitSendNoMd5Seconds)} MiB/s  ratio ${s.ratioSendNoMd5.toFixed(2)}x`);
    console.log(`  vhdkit whole operation      ${s.vhdkitWholeSeconds.toFixed(2)} s  ratio ${s.ratioWhole.toFixed(2)}x (hash, create, send, MD5, manifest, metadata)`);
    console.log(`  peak RSS of the CLI         ${s.peakRssMiB?.toFixed(0) ?? '?'} MiB (target < 300 MiB)`);
  } finally {
    await destroyPool();
    await az.stop();
  }
  const results = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, quick, size, concurrency, seconds: (Date.now() - started) / 1000, rows };
  writeResult(outFile, results);
  console.log(`\nresults: ${outFile} (${results.seconds.toFixed(0)} s)`);
}

main().catch((e) => {
  console.error(`upload benchmark failed: ${e.stack ?? e}`);
  process.exit(1);
});
