// tinybench micro-benchmarks of the hot pieces: structure decode, BAT decode and scan, zero detection.
// Run alone with `node bench/micro.mjs`, or as part of `npm run bench`.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export async function runMicro({ quick = false } = {}) {
  const { format, isZero, alignedBuffer } = await import(path.join(root, 'dist', 'index.js'));
  const { makeFooter } = await import(path.join(root, 'dist', 'disk', 'writer.js'));
  const footerBytes = format.encodeFooter(makeFooter({ type: 'dynamic', virtualSize: 10 * 2 ** 30, uuid: new Uint8Array(16) }));
  const entries = 1_024_000; // a 2000 GiB disk with 2 MiB blocks
  const bat = new Uint32Array(entries).fill(format.BAT_UNUSED);
  for (let i = 0; i < entries; i += 97) bat[i] = 3 + i * 4097;
  const batBytes = format.encodeBat(bat);
  const zero2m = alignedBuffer(2 * 2 ** 20);
  const plain2m = new Uint8Array(2 * 2 ** 20);

  const bench = new Bench({ time: quick ? 200 : 1000 });
  bench
    .add('decode footer (512 B)', () => format.decodeFooter(footerBytes))
    .add('decode BAT, 1,024,000 entries', () => format.decodeBat(batBytes, entries))
    .add('scan BAT runs, 1,024,000 entries', () => {
      let n = 0;
      format.forEachAllocatedRun(bat, () => n++);
      return n;
    })
    .add('isZero 2 MiB (page-aligned buffer)', () => isZero(zero2m))
    .add('isZero 2 MiB (plain Uint8Array)', () => isZero(plain2m));
  // Hash inline (main thread) vs the pool, on the same 64 MiB raw file from page cache.
  const fs = await import('node:fs');
  const os = await import('node:os');
  const { hash, destroyPool } = await import(path.join(root, 'dist', 'index.js'));
  const raw = path.join(os.tmpdir(), `vhdkit-micro-${process.pid}.raw`);
  const block = new Uint8Array(64 * 2 ** 20);
  for (let i = 0; i < block.length; i += 4096) block[i] = (i >>> 12) & 0xff || 1;
  fs.writeFileSync(raw, block);
  bench
    .add('hash 64 MiB inline (workers 0)', () => hash(raw, { workers: 0 }))
    .add('hash 64 MiB on the pool', () => hash(raw));
  await bench.run();
  await destroyPool();
  fs.rmSync(raw, { force: true });
  return bench.tasks.map((t) => {
    const hz = t.result?.throughput?.mean ?? t.result?.hz ?? 0;
    const out = { name: t.name, opsPerSec: hz };
    if (t.name.startsWith('isZero')) out.throughput = `${((hz * 2) / 1024).toFixed(1)} GiB/s`;
    if (t.name.startsWith('hash 64 MiB')) out.throughput = `${((hz * 64) / 1024).toFixed(2)} GiB/s`;
    return out;
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  for (const m of await runMicro({ quick: process.argv.includes('--quick') })) {
    console.log(`${m.name.padEnd(44)} ${m.opsPerSec.toFixed(0).padStart(12)} ops/s  ${m.throughput ?? ''}`);
  }
}
