/**
 * Sparse raw images: where the native helper (dist/io/extents.node, built by `npm run build` when
 * the machine has a C compiler) can tell a file's holes, raw images are read only where they hold
 * data, as qemu-img does, with exactly the results of reading them whole.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawDisk } from '../src/disk/source.js';
import { canFindHoles, FileSink, HOLE_MIN } from '../src/io/file.js';
import { convert } from '../src/ops/convert.js';
import { diff } from '../src/ops/diff.js';
import { hash } from '../src/ops/hash.js';
import { destroyPool } from '../src/pool/pool.js';
import { repoRoot, tmpDir } from './helpers.js';

const MiB = 1024 * 1024;
const helper = canFindHoles();
const skippedWhy = path.join(repoRoot, 'dist/io/extents.skipped');
if (!helper) {
  const why = process.env.VHDKIT_NO_SEEK_DATA
    ? 'turned off by VHDKIT_NO_SEEK_DATA'
    : fs.existsSync(skippedWhy)
      ? fs.readFileSync(skippedWhy, 'utf8').trim()
      : 'dist/io/extents.node does not load';
  console.warn(`sparse-raw: the native extents helper is not in use (${why}): only the read-everything path is tested`);
}

let dir = '';
let sparse = ''; // 96 MiB + 1000 bytes, data in a few places, holes between
let dense = ''; // the same bytes, every block written
let content: Buffer;

/** Where `sparse` holds data (written pieces), in order. */
const pieces: Array<[number, number]> = [
  [0, 4096], // at the start
  [512 * 1024, 512 * 1024 + 4096], // a hole under HOLE_MIN before it: one extent with the first
  [8 * MiB, 8 * MiB + 3 * MiB], // a long run
  [40 * MiB + 512, 40 * MiB + 612], // 100 bytes mid-block
];
const size = 96 * MiB + 1000; // ends in a hole, not a whole sector

/**
 * True when this directory's file system reports holes exactly as a plain local file system does:
 * a 2 MiB hole between two written 4 KiB pieces is a hole, and written zeros are data. (9p, NFSv3 and
 * FUSE mounts report everything as data; ZFS with compression turns written zeros into holes.)
 */
let exactHoles = false;

async function probeHoles(): Promise<boolean> {
  if (!helper) return false;
  const sparseProbe = path.join(dir, 'probe-sparse.raw');
  const denseProbe = path.join(dir, 'probe-dense.raw');
  const fd = fs.openSync(sparseProbe, 'w');
  fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
  fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 3 * MiB);
  fs.closeSync(fd);
  fs.writeFileSync(denseProbe, Buffer.alloc(3 * MiB + 4096));
  const ext = async (f: string) => {
    const sink = await FileSink.open(f);
    try {
      return sink.dataExtents();
    } finally {
      await sink.close();
    }
  };
  const a = await ext(sparseProbe);
  const b = await ext(denseProbe);
  return a?.length === 2 && a[0][0] === 0 && a[1][1] === 3 * MiB + 4096 && JSON.stringify(b) === JSON.stringify([[0, 3 * MiB + 4096]]);
}

beforeAll(async () => {
  dir = tmpDir('vhdkit-sparse-');
  exactHoles = await probeHoles();
  if (helper && !exactHoles) console.warn(`sparse-raw: ${dir} does not report holes exactly (a network, FUSE or compressing file system?): extent checks skipped`);
  sparse = path.join(dir, 'sparse.raw');
  dense = path.join(dir, 'dense.raw');
  content = Buffer.alloc(size);
  const fd = fs.openSync(sparse, 'w');
  fs.ftruncateSync(fd, size);
  for (const [a, b] of pieces) {
    const data = crypto.randomBytes(b - a);
    data.copy(content, a);
    fs.writeSync(fd, data, 0, data.length, a);
  }
  fs.closeSync(fd);
  fs.writeFileSync(dense, content); // zeros written too: no holes
});

afterAll(() => destroyPool());

describe('finding the holes of a sparse raw file', () => {
  it('the build made the helper, or recorded why not; the helper loads when it is there', () => {
    const built = fs.existsSync(path.join(repoRoot, 'dist/io/extents.node'));
    if (built && !process.env.VHDKIT_NO_SEEK_DATA) expect(helper).toBe(true);
    if (!built) expect(fs.readFileSync(skippedWhy, 'utf8').trim().length).toBeGreaterThan(0);
  });

  it('FileSink.dataExtents: the data extents, holes under HOLE_MIN merged, none past the last data', async (ctx) => {
    if (!exactHoles) ctx.skip();
    const f = await FileSink.open(sparse);
    try {
      const ext = f.dataExtents()!;
      expect(ext).toBeDefined();
      // File systems allocate whole blocks (4 KiB here): the extents cover the pieces, block aligned.
      expect(ext).toHaveLength(3);
      expect(ext[0][0]).toBe(0);
      expect(ext[0][1]).toBeGreaterThanOrEqual(512 * 1024 + 4096);
      expect(ext[1][0]).toBeLessThanOrEqual(8 * MiB);
      expect(ext[1][1]).toBeGreaterThanOrEqual(11 * MiB);
      expect(ext[1][1]).toBeLessThan(40 * MiB);
      expect(ext[2][0]).toBeLessThanOrEqual(40 * MiB + 512);
      expect(ext[2][1]).toBeGreaterThanOrEqual(40 * MiB + 612);
      expect(ext[2][1]).toBeLessThan(96 * MiB);
      for (let i = 1; i < ext.length; i++) expect(ext[i][0] - ext[i - 1][1]).toBeGreaterThanOrEqual(HOLE_MIN);
    } finally {
      await f.close();
    }
    const d = await FileSink.open(dense);
    try {
      expect(d.dataExtents()).toEqual([[0, size]]);
    } finally {
      await d.close();
    }
  });

  it('RawDisk.dataRanges: the extents to the sector, inside the virtual size', async (ctx) => {
    if (!exactHoles) ctx.skip();
    const disk = new RawDisk(await FileSink.open(sparse));
    try {
      const ranges = disk.dataRanges();
      expect(ranges).toHaveLength(3);
      for (const [a, b] of ranges) {
        expect(a % 512).toBe(0);
        expect(b % 512).toBe(0);
        expect(b).toBeLessThanOrEqual(disk.virtualSize);
      }
      // Every byte outside the ranges is zero.
      let outside = 0;
      for (let i = 0, r = 0; i < size; i++) {
        while (r < ranges.length && i >= ranges[r][1]) r++;
        if (r < ranges.length && i >= ranges[r][0]) continue;
        outside |= content[i];
      }
      expect(outside).toBe(0);
    } finally {
      await disk.close();
    }
  });

  it('a file that ends in data, not a whole sector: its last range ends at the virtual size', async () => {
    const f = path.join(dir, 'tail.raw');
    const fd = fs.openSync(f, 'w');
    fs.ftruncateSync(fd, 8 * MiB + 700);
    fs.writeSync(fd, Buffer.alloc(300, 7), 0, 300, 8 * MiB + 400);
    fs.closeSync(fd);
    const disk = new RawDisk(await FileSink.open(f));
    try {
      const ranges = disk.dataRanges();
      expect(ranges[ranges.length - 1][1]).toBe(8 * MiB + 1024);
      if (exactHoles) expect(ranges[0][0]).toBeGreaterThanOrEqual(7 * MiB);
      else if (!helper) expect(ranges).toEqual([[0, 8 * MiB + 1024]]);
    } finally {
      await disk.close();
    }
  });
});

describe('operations on a sparse raw file read only its data, with the results of reading it whole', () => {
  for (const workers of [0, 2]) {
    it(`hash (${workers} workers): the digest and manifest of the dense copy; bytes read are the data extents only`, async () => {
      const out = tmpDir('vhdkit-sparse-m-');
      const s = await hash(sparse, { workers, manifest: path.join(out, 's') });
      const d = await hash(dense, { workers, manifest: path.join(out, 'd') });
      expect(s.digest).toBe(d.digest);
      expect(s.zeroChunks).toBe(d.zeroChunks);
      expect(fs.readFileSync(path.join(out, 's')).equals(fs.readFileSync(path.join(out, 'd')))).toBe(true);
      if (exactHoles || !helper) expect(d.bytesRead).toBe(Math.ceil(size / 512) * 512); // the whole (sector-padded) file
      if (exactHoles) expect(s.bytesRead).toBeLessThan(8 * MiB);
      else if (!helper) expect(s.bytesRead).toBe(d.bytesRead);
    });
  }

  it('CLI: VHDKIT_NO_SEEK_DATA=1 reads the whole file (the same digest); without it only the data', (ctx) => {
    if (!exactHoles) ctx.skip();
    const run = (env: NodeJS.ProcessEnv) => {
      const r = spawnSync(process.execPath, [path.join(repoRoot, 'dist/cli/main.js'), 'hash', sparse, '--json', '--workers', '0'], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { digest: string; bytesRead: number };
    };
    const { VHDKIT_NO_SEEK_DATA: _, ...env } = process.env;
    const skipping = run(env);
    const whole = run({ ...env, VHDKIT_NO_SEEK_DATA: '1' });
    expect(whole.digest).toBe(skipping.digest);
    expect(whole.bytesRead).toBe(Math.ceil(size / 512) * 512);
    expect(skipping.bytesRead).toBeLessThan(8 * MiB);
  });

  it('diff of the sparse file against its dense copy: no change; against a copy with one byte changed in a hole: that sector', async () => {
    const same = await diff(sparse, dense, { workers: 0 });
    expect(same.ranges).toEqual([]);
    const changed = path.join(dir, 'changed.raw');
    const c = Buffer.from(content);
    c[70 * MiB + 5] = 1; // in a hole of the sparse file
    fs.writeFileSync(changed, c);
    const d = await diff(sparse, changed, { workers: 0 });
    expect(d.ranges).toEqual([[70 * MiB, 70 * MiB + 512]]);
  });

  it('convert to a dynamic VHD: the same content, blocks only where there is data', async () => {
    const out = path.join(dir, 'sparse.vhd');
    const r = await convert(sparse, out, { to: 'dynamic' });
    // Pieces at 0 and 512 KiB share block 0; 8–11 MiB is blocks 4 and 5; 40 MiB is block 20.
    expect(r.blocksWritten).toBe(4);
    // Read in whole blocks: the four blocks with data, not the 48 of the file.
    if (exactHoles) expect(r.bytesRead).toBe(4 * 2 * MiB);
    expect((await hash(out, { workers: 0 })).digest).toBe((await hash(dense, { workers: 0 })).digest);
  });
});
