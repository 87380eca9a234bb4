/**
 * Sparse raw images: where the native helper (dist/io/extents.node, built by `npm run build` when
 * the machine has a C compiler) can tell a file's holes, raw images are read only where they hold
 * data, as qemu-img does, with exactly the results of reading them whole.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { RawDisk } from '../src/disk/source.js';
import { canFindHoles, FileSink, HOLE_MIN } from '../src/io/file.js';
import { convert } from '../src/ops/convert.js';
import { diff } from '../src/ops/diff.js';
import { hash } from '../src/ops/hash.js';
import { destroyPool } from '../src/pool/pool.js';
import { repoRoot, tmpDir } from './helpers.js';

const MiB = 1024 * 1024;
const hasCompiler = spawnSync(process.env.CC || 'cc', ['--version']).status === 0;
const helper = canFindHoles();
if (!helper) {
  console.warn(
    `sparse-raw: the native extents helper is not built (${hasCompiler ? 'a compiler exists: see npm run build' : 'no C compiler'}): ` +
      'only the read-everything path is tested',
  );
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

beforeAll(() => {
  dir = tmpDir('vhdkit-sparse-');
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
  return () => destroyPool();
});

describe('finding the holes of a sparse raw file', () => {
  it.runIf(process.platform === 'linux' && hasCompiler)('the build made the helper on this machine (a C compiler is here)', () => {
    expect(fs.existsSync(path.join(repoRoot, 'dist/io/extents.node'))).toBe(true);
    expect(helper).toBe(true);
  });

  it.runIf(helper)('FileSink.dataExtents: the data extents, holes under HOLE_MIN merged, none past the last data', async () => {
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

  it.runIf(helper)('RawDisk.dataRanges: the extents to the sector, inside the virtual size', async () => {
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
      if (helper) expect(ranges[0][0]).toBeGreaterThanOrEqual(7 * MiB);
      else expect(ranges).toEqual([[0, 8 * MiB + 1024]]);
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
      expect(d.bytesRead).toBe(Math.ceil(size / 512) * 512); // the whole (sector-padded) file
      if (helper) expect(s.bytesRead).toBeLessThan(8 * MiB);
      else expect(s.bytesRead).toBe(d.bytesRead);
    });
  }

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
    if (helper) expect(r.bytesRead).toBe(4 * 2 * MiB);
    expect((await hash(out, { workers: 0 })).digest).toBe((await hash(dense, { workers: 0 })).digest);
  });
});
