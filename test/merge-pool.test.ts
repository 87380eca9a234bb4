/**
 * `merge` with its data copies on the worker pool (src/pool/merge-task.ts, src/ops/merge.ts).
 *
 * - The pool (`workers: 2`) and the main thread (`workers: 0`) write byte-identical targets, over
 *   many tasks in flight: a dynamic target (whole, partial and alternating-sector child blocks, the
 *   latter enough to split tasks by copy count), a grown one (the BAT moves), a differencing target
 *   (grandchild into child) and a fixed one. Each result equals the overlay model and checks clean.
 * - An AbortSignal while workers copy: merge rejects with ABORTED only after every task has settled
 *   (the target does not change afterwards), the journal stays, and a rerun completes the merge.
 * - A task's error comes back as the VhdError it was (code, file), from a worker as inline.
 * - `vhdkit merge --workers N` reaches the engine; the JSON says which runner copied.
 *
 * Kills of real processes while workers write are in merge-crash.test.ts. The pool runs the compiled
 * worker from dist/: `npm run build` first (npm test does it in pretest).
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { setBits } from '../src/format/bitmap.js';
import { FileSink } from '../src/io/file.js';
import { check } from '../src/ops/check.js';
import { create, newUuid, parentLinkFor } from '../src/ops/create.js';
import { journalPath } from '../src/ops/journal.js';
import { merge, type MergeResult } from '../src/ops/merge.js';
import { openDisk } from '../src/ops/open.js';
import { getPool } from '../src/pool/pool.js';
import { hasQemu, mulberry32, readVirtual, repoRoot, tmpDir } from './helpers.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;
const SECTOR = 512;
const BS = 2 * MiB;

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/ is missing: run "npm run build" first (npm test does it in pretest)');
});

type Kind = 'full' | 'partial' | 'alternating';

/**
 * Writes a differencing child of `parentFile` (2 MiB blocks) holding, per listed block, the sectors
 * of its kind: every sector, three random runs, or every other sector (2048 runs). Random bytes
 * under set bits, 0xEE under clear ones; the set sectors are applied to `model`.
 */
async function writeLayer(file: string, parentFile: string, size: number, layout: Array<[number, Kind]>, model: Uint8Array, seed: number): Promise<void> {
  const rnd = mulberry32(seed);
  const parent = await openDisk(parentFile);
  const link = parentLinkFor(file, parentFile, parent.footer.uniqueId, parent.footer.timestamp);
  await parent.close();
  const sink = await FileSink.open(file, 'wx');
  try {
    const w = await DynamicWriter.create(sink, { virtualSize: size, blockSize: BS, uuid: newUuid(), parent: link });
    for (const [b, kind] of layout) {
      const len = Math.min(BS, size - b * BS);
      const sectors = len / SECTOR;
      const data = new Uint8Array(len).fill(0xee);
      const bitmap = new Uint8Array(512);
      const runs: Array<[number, number]> = [];
      if (kind === 'full') runs.push([0, sectors]);
      else if (kind === 'alternating') for (let s = 0; s < sectors; s += 2) runs.push([s, s + 1]);
      else {
        for (let k = 0; k < 3; k++) {
          const n = 1 + Math.floor(rnd() * 700);
          const first = Math.floor(rnd() * (sectors - n));
          runs.push([first, first + n]);
        }
      }
      for (const [a, e] of runs) {
        const bytes = crypto.randomFillSync(new Uint8Array((e - a) * SECTOR));
        data.set(bytes, a * SECTOR);
        setBits(bitmap, a, e);
        model.set(bytes, b * BS + a * SECTOR);
      }
      await w.writeBlock(b, data, bitmap);
    }
    await w.finish();
  } finally {
    await sink.close();
  }
}

/** A dynamic disk of `size` with random data in `blocks`; returns its content. */
async function writeBase(file: string, size: number, blocks: number[]): Promise<Uint8Array> {
  const content = new Uint8Array(size);
  const sink = await FileSink.open(file, 'wx');
  try {
    const w = await DynamicWriter.create(sink, { virtualSize: size, blockSize: BS, uuid: newUuid() });
    for (const b of [...blocks].reverse()) {
      const len = Math.min(BS, size - b * BS);
      crypto.randomFillSync(content, b * BS, len);
      await w.writeBlock(b, content.slice(b * BS, b * BS + len));
    }
    await w.finish();
  } finally {
    await sink.close();
  }
  return content;
}

interface Family {
  /** The files as built (names only: copies are made per run, found through relative locators). */
  files: Map<string, Buffer>;
  child: string;
  target: string;
  model: Uint8Array;
}

/** A copy of the family in a new folder (the build folder is gone: absolute locators lead nowhere). */
function place(f: Family): string {
  const dir = tmpDir('vhdkit-merge-pool-run-');
  for (const [name, bytes] of f.files) fs.writeFileSync(path.join(dir, name), bytes);
  return dir;
}

async function build(make: (dir: string) => Promise<Omit<Family, 'files'>>): Promise<Family> {
  const dir = tmpDir('vhdkit-merge-pool-build-');
  const rest = await make(dir);
  const files = new Map(fs.readdirSync(dir).map((n) => [n, fs.readFileSync(path.join(dir, n))] as const));
  fs.rmSync(dir, { recursive: true, force: true });
  return { files, ...rest };
}

const range = (a: number, b: number, step = 1) => Array.from({ length: Math.ceil((b - a) / step) }, (_, i) => a + i * step);

/** The parent's 32 blocks, every other one allocated; the child's whole, partial and alternating blocks over both kinds. */
function dynamicFamily(): Promise<Family> {
  return build(async (dir) => {
    const size = 64 * MiB;
    const model = await writeBase(path.join(dir, 'parent.vhd'), size, range(0, 32, 2));
    const layout: Array<[number, Kind]> = [
      ...range(0, 8).map((b) => [b, 'full'] as [number, Kind]),
      ...range(8, 18).map((b) => [b, 'partial'] as [number, Kind]),
      ...range(18, 27).map((b) => [b, 'alternating'] as [number, Kind]), // 9 × 2048 runs: more copies than one task takes
      [31, 'partial'],
    ];
    await writeLayer(path.join(dir, 'child.vhd'), path.join(dir, 'parent.vhd'), size, layout, model, 1);
    return { child: 'child.vhd', target: 'parent.vhd', model };
  });
}

/** A 24 MiB parent, a 72 MiB child: new blocks past the old end, the BAT moves. */
function growFamily(): Promise<Family> {
  return build(async (dir) => {
    const pSize = 24 * MiB;
    const cSize = 72 * MiB;
    const base = await writeBase(path.join(dir, 'small.vhd'), pSize, [0, 3, 5, 11]);
    const model = new Uint8Array(cSize);
    model.set(base);
    const layout: Array<[number, Kind]> = [...range(0, 36, 3).map((b) => [b, 'full'] as [number, Kind]), ...range(1, 36, 3).map((b) => [b, 'partial'] as [number, Kind]), [35, 'alternating']];
    layout.sort((x, y) => x[0] - y[0]);
    await writeLayer(path.join(dir, 'big.vhd'), path.join(dir, 'small.vhd'), cSize, layout, model, 2);
    return { child: 'big.vhd', target: 'small.vhd', model };
  });
}

/** base ← child ← grand; the grandchild is merged into the child (a differencing target: bits added). */
function differencingFamily(): Promise<Family> {
  return build(async (dir) => {
    const size = 48 * MiB;
    const model = await writeBase(path.join(dir, 'base.vhd'), size, range(0, 24, 4));
    await writeLayer(path.join(dir, 'child.vhd'), path.join(dir, 'base.vhd'), size, range(0, 24, 2).map((b) => [b, b % 4 === 0 ? 'partial' : 'full'] as [number, Kind]), model, 3);
    await writeLayer(
      path.join(dir, 'grand.vhd'),
      path.join(dir, 'child.vhd'),
      size,
      range(0, 24).map((b) => [b, b % 3 === 0 ? 'full' : b % 3 === 1 ? 'partial' : 'alternating'] as [number, Kind]),
      model,
      4,
    );
    return { child: 'grand.vhd', target: 'child.vhd', model };
  });
}

/** A 40 MiB fixed parent with random content; the child's blocks of every kind. */
function fixedFamily(): Promise<Family> {
  return build(async (dir) => {
    const size = 40 * MiB;
    const parent = path.join(dir, 'fixed.vhd');
    await create(parent, { size, type: 'fixed' });
    const model = crypto.randomFillSync(new Uint8Array(size));
    const fd = fs.openSync(parent, 'r+');
    fs.writeSync(fd, model, 0, size, 0);
    fs.closeSync(fd);
    const layout: Array<[number, Kind]> = range(0, 20).map((b) => [b, b % 3 === 0 ? 'full' : b % 3 === 1 ? 'partial' : 'alternating']);
    await writeLayer(path.join(dir, 'child.vhd'), parent, size, layout, model, 5);
    return { child: 'child.vhd', target: 'fixed.vhd', model };
  });
}

function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  if (a.length !== b.length) return `length ${a.length}, want ${b.length}`;
  if (Buffer.compare(a, b) === 0) return undefined;
  let i = 0;
  while (a[i] === b[i]) i++;
  return `first difference at byte ${i}: ${a[i]} vs ${b[i]}`;
}

const counters = (r: MergeResult) => [r.sectorsMerged, r.blocksAllocated, r.blocksUpdated, r.bytesWritten];

describe('the data copies on the pool and on the main thread', () => {
  it.each([
    ['dynamic target', dynamicFamily],
    ['grown target (BAT moves)', growFamily],
    ['differencing target', differencingFamily],
    ['fixed target', fixedFamily],
  ] as const)('%s: byte-identical targets, equal to the model, checking clean', async (_, family) => {
    const f = await family();
    const inline = place(f);
    const pooled = place(f);
    const a = await merge(path.join(inline, f.child), { workers: 0 });
    const b = await merge(path.join(pooled, f.child), { workers: 2 });
    expect(a.workers).toBe(0);
    expect(b.workers).toBe(2);
    expect(counters(b)).toEqual(counters(a));
    const fileA = fs.readFileSync(path.join(inline, f.target));
    const fileB = fs.readFileSync(path.join(pooled, f.target));
    expect(firstDifference(fileB, fileA), 'the target files').toBeUndefined();
    expect(firstDifference(await readVirtual(path.join(pooled, f.target)), f.model), 'the content').toBeUndefined();
    const c = await check(path.join(pooled, f.target), { strict: true });
    expect(c.errors).toEqual([]);
    expect(c.ok).toBe(true);
    // The sources are never written.
    expect(fs.readFileSync(path.join(pooled, f.child)).equals(f.files.get(f.child)!)).toBe(true);
    if (hasQemu && f.target !== 'child.vhd') {
      const raw = path.join(pooled, 'q.raw');
      const q = spawnSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path.join(pooled, f.target), raw]);
      expect(q.status).toBe(0);
      expect(firstDifference(fs.readFileSync(raw), f.model), 'qemu-img reading').toBeUndefined();
    }
  });
});

describe('an abort while workers copy', () => {
  it('rejects with ABORTED once every task has settled; the target stays as it is then; a rerun completes', async () => {
    const f = await dynamicFamily();
    const dir = place(f);
    const target = path.join(dir, f.target);
    const controller = new AbortController();
    let progress = 0;
    // Every task the merge hands the pool is counted while it runs (a task writes only while it runs).
    const pool = getPool({ workers: 2 });
    const copy = pool.mergeCopy;
    let running = 0;
    let started = 0;
    pool.mergeCopy = async (task) => {
      running++;
      started++;
      try {
        return await copy.call(pool, task);
      } finally {
        running--;
      }
    };
    let e: VhdError;
    try {
      e = await merge(path.join(dir, f.child), {
        workers: 2,
        signal: controller.signal,
        onProgress: () => {
          if (progress++ === 0) controller.abort();
        },
      }).catch((x) => x);
      // Nothing writes to the target once merge has returned: no task it started still runs.
      expect(started).toBeGreaterThan(1);
      expect(running).toBe(0);
    } finally {
      pool.mergeCopy = copy;
    }
    expect(e).toBeInstanceOf(VhdError);
    expect(e.code).toBe(ErrorCodes.ABORTED);
    expect(progress).toBeGreaterThan(0);
    expect(fs.existsSync(journalPath(target))).toBe(true);
    const r = await merge(path.join(dir, f.child), { workers: 2 });
    expect(r.resumed).toBe(true);
    expect(firstDifference(await readVirtual(target), f.model)).toBeUndefined();
    expect((await check(target, { strict: true })).ok).toBe(true);
    expect(fs.existsSync(journalPath(target))).toBe(false);
  });
});

describe('errors of a merge task', () => {
  it.each([0, 2])('workers: %i — a source that is not the file planned from is refused with a VhdError (IO, naming the file)', async (workers) => {
    const dir = tmpDir('vhdkit-merge-pool-err-');
    const src = path.join(dir, 'src.bin');
    const dst = path.join(dir, 'dst.bin');
    fs.writeFileSync(src, Buffer.alloc(4096, 1));
    fs.writeFileSync(dst, Buffer.alloc(4096));
    const task = () => ({
      target: dst,
      sources: [src],
      sourceSizes: [8192], // the merge planned from an 8 KiB file
      bitmapSize: 0,
      copies: Float64Array.from([0, 0, 0, 512]),
      blocks: new Float64Array(0),
      bitmapInit: new Uint8Array(0),
    });
    const e = await getPool({ workers }).mergeCopy(task()).catch((x) => x);
    expect(e).toBeInstanceOf(VhdError);
    expect(e.code).toBe(ErrorCodes.IO);
    expect(e.file).toBe(src);
    expect(fs.readFileSync(dst).every((v) => v === 0)).toBe(true);
    // And a good task still runs on the same runner afterwards.
    const ok = await getPool({ workers }).mergeCopy({ ...task(), sourceSizes: [4096] });
    expect(ok.bytes).toBe(512);
    expect(fs.readFileSync(dst).subarray(0, 512).every((v) => v === 1)).toBe(true);
  });
});

describe('vhdkit merge --workers', () => {
  it('reaches the engine: the JSON says which runner copied; a small merge copies on the main thread by default', async () => {
    const f = await dynamicFamily();
    for (const [args, want] of [[['--workers', '2'], 2], [['--workers', '0'], 0], [[], 0]] as const) {
      const dir = place(f);
      const r = spawnSync(process.execPath, [CLI, 'merge', f.child, '--json', ...args], { cwd: dir, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout).workers).toBe(want);
      expect(firstDifference(await readVirtual(path.join(dir, f.target)), f.model)).toBeUndefined();
    }
    const bad = spawnSync(process.execPath, [CLI, 'merge', 'child.vhd', '--workers', '-1'], { cwd: place(f), encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('[USAGE]');
  });
});
