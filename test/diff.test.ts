/**
 * `diff`: the changed byte ranges between two disks, exact to the sector, and `--out`, a
 * differencing child of `old` whose chain content equals `new` (src/ops/diff.ts).
 *
 * - Property (fast-check): random raw base + random writes (identical rewrites, one-byte changes,
 *   writes at the last sector, zeroing), both converted to VHD forms by the library; the ranges are
 *   exactly the 512-byte sectors whose content differs (computed here by comparing the raws),
 *   coalesced, in order. With an old VHD, `--out` writes a child whose chain is `new` and whose own
 *   sectors are exactly the changed ones.
 * - `diff --out` in detail: parent link (info.parent.path), content (sha256), own sector ranges,
 *   `check --strict`, and qemu-img reading the child alone (it ignores the parent) at the changed
 *   sectors.
 * - Ancestor method ('bitmap'): equal to the 'compare' method against the flattened disk; a sector
 *   rewritten with identical bytes is not reported.
 * - Refusals: sizes differ or raw old with --out (exit 2, USAGE); CLI --json shape.
 *
 * The pool runs the compiled worker from dist/: `npm run build` first (npm test does it in pretest).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { FileSink } from '../src/io/file.js';
import { check } from '../src/ops/check.js';
import { convert } from '../src/ops/convert.js';
import { create, parentLinkFor } from '../src/ops/create.js';
import { diff } from '../src/ops/diff.js';
import { info } from '../src/ops/info.js';
import { openDisk } from '../src/ops/open.js';
import { corpusDir, corpusPresent, fixturesDir, hasQemu, readCorpusFile, repoRoot, sha256OfDisk, tmpDir, mulberry32, runProcess, readVirtual, type ProcessRun } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const KiB = 1024;
const MiB = 1024 * 1024;
const SECTOR = 512;

if (!hasQemu) console.warn('diff.test.ts: qemu-img not on PATH — the qemu reading of --out children is SKIPPED');
if (!corpusPresent) console.warn(`diff.test.ts: corpus chains SKIPPED — the conformance corpus is not at ${corpusDir}`);

type Range = [number, number];

// -------------------------------------------------------------------------------------------------
// Local helpers

beforeAll(() => {
  if (!fs.existsSync(path.join(repoRoot, 'dist/pool/worker.js'))) {
    throw new Error('dist/pool/worker.js is missing: run "npm run build" first (npm test does it in pretest)');
  }
});

/** The model: 512-byte sectors whose bytes differ (shorter disk padded with zeros), coalesced. */
function changedSectors(a: Uint8Array, b: Uint8Array): Range[] {
  const size = Math.max(a.length, b.length);
  const A = Buffer.alloc(size);
  A.set(a);
  const B = Buffer.alloc(size);
  B.set(b);
  const out: Range[] = [];
  for (let s = 0; s < size; s += SECTOR) {
    const e = Math.min(size, s + SECTOR);
    if (A.compare(B, s, e, s, e) !== 0) {
      const last = out[out.length - 1];
      if (last && last[1] === s) last[1] = e;
      else out.push([s, e]);
    }
  }
  return out;
}

const total = (rs: Range[]) => rs.reduce((n, [a, b]) => n + b - a, 0);


function fillRandom(b: Uint8Array, seed: number): void {
  const r = mulberry32(seed);
  for (let i = 0; i < b.length; i++) b[i] = ((r() * 255) | 0) + 1; // never 0: every write is data
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function chainSha256(file: string): Promise<string> {
  const img = await openDisk(file);
  try {
    return await sha256OfDisk(img);
  } finally {
    await img.close();
  }
}


async function ownSectorRanges(file: string): Promise<Range[]> {
  const img = await openDisk(file);
  try {
    return (await img.ownSectorRanges()) as Range[];
  } finally {
    await img.close();
  }
}

type Form = { to: 'raw' } | { to: 'fixed' } | { to: 'dynamic'; blockSize: number };

/** Writes `bytes` as a raw file and, unless the form is raw, converts it with the library. */
async function materialize(dir: string, name: string, bytes: Uint8Array, form: Form): Promise<string> {
  const raw = path.join(dir, `${name}.raw`);
  fs.writeFileSync(raw, bytes);
  if (form.to === 'raw') return raw;
  const vhd = path.join(dir, `${name}.vhd`);
  await convert(raw, vhd, form.to === 'dynamic' ? { to: 'dynamic', blockSize: form.blockSize } : { to: 'fixed' });
  return vhd;
}

/** Sets sectors [from, to) in an MSB-first sector bitmap (written here, not with src/format). */
function markSectors(bitmap: Uint8Array, from: number, to: number): void {
  for (let s = from; s < to; s++) bitmap[s >>> 3] |= 0x80 >>> (s & 7);
}

const vhdkit = (args: string[], cwd: string) => runProcess(process.execPath, [CLI, ...args], { cwd });

function json(r: ProcessRun): any {
  try {
    return JSON.parse(r.stdout);
  } catch (e) {
    throw new Error(`stdout is not one JSON document (${(e as Error).message}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

const show = (r: ProcessRun) => `exit ${r.code}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`;

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

// -------------------------------------------------------------------------------------------------
// Property: ranges = the changed sectors of the raws

type Write =
  | { kind: 'random'; at: number; len: number; seed: number }
  | { kind: 'same'; at: number; len: number }
  | { kind: 'onebyte'; sector: number; byte: number; xor: number }
  | { kind: 'last'; len: number; seed: number }
  | { kind: 'zero'; at: number; len: number };

function applyWrites(base: Uint8Array, writes: Write[]): Buffer {
  const out = Buffer.from(base);
  const size = out.length;
  for (const w of writes) {
    if (w.kind === 'random') {
      const at = w.at % size;
      fillRandom(out.subarray(at, Math.min(size, at + w.len)), w.seed);
    } else if (w.kind === 'same') {
      const at = w.at % size;
      out.set(out.subarray(at, Math.min(size, at + w.len)).slice(), at); // identical bytes rewritten
    } else if (w.kind === 'onebyte') {
      const s = w.sector % (size / SECTOR);
      out[s * SECTOR + w.byte] ^= w.xor;
    } else if (w.kind === 'last') {
      fillRandom(out.subarray(size - w.len), w.seed);
    } else {
      const at = w.at % size;
      out.fill(0, at, Math.min(size, at + w.len));
    }
  }
  return out;
}

const arbWrite: fc.Arbitrary<Write> = fc.oneof(
  fc.record({ kind: fc.constant('random' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 70_000 }), seed: fc.nat() }),
  fc.record({ kind: fc.constant('same' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 300_000 }) }),
  fc.record({ kind: fc.constant('onebyte' as const), sector: fc.nat(), byte: fc.integer({ min: 0, max: 511 }), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('last' as const), len: fc.integer({ min: 1, max: 1024 }), seed: fc.nat() }),
  fc.record({ kind: fc.constant('zero' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 200_000 }) }),
);

const arbForm: fc.Arbitrary<Form> = fc.oneof(
  fc.constant({ to: 'raw' as const }),
  fc.constant({ to: 'fixed' as const }),
  fc.constantFrom(4 * KiB, 64 * KiB, 512 * KiB, 2 * MiB).map((blockSize) => ({ to: 'dynamic' as const, blockSize })),
);

describe('property: diff ranges are exactly the changed sectors', () => {
  it('random base + random writes, any forms, 0 or 2 workers; with an old VHD, --out gives a child equal to new', async () => {
    const root = tmpDir('vhdkit-diff-prop-');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 4096, max: 10240 }), // sectors: 2..5 MiB
        fc.array(fc.record({ at: fc.nat(), len: fc.integer({ min: 1, max: 400_000 }), seed: fc.nat() }), { maxLength: 8 }),
        fc.array(arbWrite, { minLength: 0, maxLength: 12 }),
        arbForm,
        arbForm,
        fc.constantFrom(0, 2),
        async (sectors, baseWrites, writes, oldForm, newForm, workers) => {
          const dir = path.join(root, `run-${n++}`);
          fs.mkdirSync(dir);
          try {
            const size = sectors * SECTOR;
            const base = Buffer.alloc(size);
            for (const w of baseWrites) {
              const at = w.at % size;
              fillRandom(base.subarray(at, Math.min(size, at + w.len)), w.seed);
            }
            const next = applyWrites(base, writes);
            const expected = changedSectors(base, next);
            const oldFile = await materialize(dir, 'old', base, oldForm);
            const newFile = await materialize(dir, 'new', next, newForm);
            const withOut = oldForm.to !== 'raw';
            const out = path.join(dir, 'child.vhd');
            const r = await diff(oldFile, newFile, { workers, ...(withOut ? { out } : {}) });
            expect(r.ranges).toEqual(expected);
            expect(r.changedSectors).toBe(total(expected) / SECTOR);
            expect(r.changedBytes).toBe(total(expected));
            expect(r.method).toBe('compare');
            expect(r.virtualSize).toBe(size);
            if (withOut) {
              expect(r.out?.file).toBe(path.resolve(out));
              expect(await chainSha256(out)).toBe(sha256(next));
              expect(await ownSectorRanges(out)).toEqual(expected);
              // And the ancestor path finds the same ranges through the child's bitmaps.
              const again = await diff(oldFile, out, { workers });
              expect(again.method).toBe('bitmap');
              expect(again.ranges).toEqual(expected);
            }
          } finally {
            fs.rmSync(dir, { recursive: true, force: true });
          }
        },
      ),
      { numRuns: 30 },
    );
  });
});

// -------------------------------------------------------------------------------------------------
// diff --out in detail

describe('diff --out: a differencing child of old whose chain is new', () => {
  const SIZE = 6 * MiB;
  let dir = '';
  let base: Buffer;
  let next: Buffer;
  let expected: Range[];

  beforeAll(async () => {
    dir = tmpDir('vhdkit-diff-out-');
    base = Buffer.alloc(SIZE);
    fillRandom(base.subarray(0, 300 * KiB), 1);
    fillRandom(base.subarray(2 * MiB - 4 * KiB, 2 * MiB + 40 * KiB), 2);
    fillRandom(base.subarray(5 * MiB, 5 * MiB + 10 * KiB), 3);
    next = Buffer.from(base);
    next[100] ^= 0xff; // one byte in sector 0
    fillRandom(next.subarray(64 * KiB + 7, 64 * KiB + 7 + 3000), 10); // unaligned, over several sectors
    next.set(base.subarray(200 * KiB, 260 * KiB), 200 * KiB); // identical rewrite: no change
    fillRandom(next.subarray(2 * MiB - 1024, 2 * MiB + 1024), 11); // across a 2 MiB block boundary
    fillRandom(next.subarray(3 * MiB + 512 * 9, 3 * MiB + 512 * 10), 12); // where old has no data
    next.fill(0, 5 * MiB, 5 * MiB + 4 * KiB); // zeroed data
    fillRandom(next.subarray(SIZE - 1), 13); // the very last byte
    expected = changedSectors(base, next);
    expect(expected.length).toBeGreaterThanOrEqual(6);
    fs.writeFileSync(path.join(dir, 'new.raw'), next);
    fs.writeFileSync(path.join(dir, 'base.raw'), base);
    await convert(path.join(dir, 'base.raw'), path.join(dir, 'old.vhd'), { to: 'dynamic' });
    await convert(path.join(dir, 'base.raw'), path.join(dir, 'old-fixed.vhd'), { to: 'fixed' });
    await convert(path.join(dir, 'new.raw'), path.join(dir, 'new.vhd'), { to: 'dynamic', blockSize: 512 * KiB });
  });

  it('CLI: the child is differencing, parent.path = old\'s real path, content = new, own sectors = the changed ones, check --strict passes', async () => {
    const r = await vhdkit(['diff', 'old.vhd', 'new.vhd', '--out', 'child.vhd', '--json'], dir);
    expect(r.code, show(r)).toBe(0);
    const j = json(r);
    expect(j.ranges).toEqual(expected);
    expect(j.out.file).toBe(path.join(fs.realpathSync(dir), 'child.vhd'));
    expect(j.out.fileSize).toBe(fs.statSync(path.join(dir, 'child.vhd')).size);
    const child = path.join(dir, 'child.vhd');
    const i = await info(child);
    const o = await info(path.join(dir, 'old.vhd'));
    expect(i.type).toBe('differencing');
    expect(i.virtualSize).toBe(SIZE);
    expect(i.blockSize, 'the child takes the parent\'s block size').toBe(o.blockSize);
    expect(i.parent?.uuid).toBe(o.uuid);
    expect(i.parent?.path).toBe(fs.realpathSync(path.join(dir, 'old.vhd')));
    // The three locators Hyper-V, Windows and qemu/blktap read: relative and absolute Windows paths, a file URL.
    expect(i.parent?.name).toBe('old.vhd');
    expect(i.parent?.locators.map((l) => [l.platformCode, l.path])).toEqual([
      ['W2ru', '.\\old.vhd'],
      ['W2ku', fs.realpathSync(path.join(dir, 'old.vhd'))],
      ['MacX', './old.vhd'],
    ]);
    expect(i.chain.map((c) => c.uuid)).toEqual([i.uuid, o.uuid]);
    expect(await chainSha256(child)).toBe(sha256(next));
    expect(await ownSectorRanges(child)).toEqual(expected);
    const c = await vhdkit(['check', 'child.vhd', '--strict', '--json'], dir);
    expect(c.code, show(c)).toBe(0);
    expect(json(c)).toMatchObject({ ok: true, errors: [] });
    // The child holds only the blocks the changes touch: far smaller than the new disk's data.
    expect(j.out.blocks).toBe(new Set(expected.flatMap(([s, e]) => [Math.floor(s / (2 * MiB)), Math.floor((e - 1) / (2 * MiB))])).size);
  });

  it('library: a fixed old disk (child block size 2 MiB), --block-size, a raw new; the child moves with its parent (relative locator)', async () => {
    const child = path.join(dir, 'child-of-fixed.vhd');
    const r = await diff(path.join(dir, 'old-fixed.vhd'), path.join(dir, 'new.raw'), { out: child, workers: 2 });
    expect(r.ranges).toEqual(expected);
    expect((await info(child)).blockSize).toBe(2 * MiB);
    expect(await chainSha256(child)).toBe(sha256(next));
    expect(await ownSectorRanges(child)).toEqual(expected);
    expect((await check(child, { strict: true })).errors).toEqual([]);

    const small = path.join(dir, 'child-64k.vhd');
    await diff(path.join(dir, 'old.vhd'), path.join(dir, 'new.raw'), { out: small, blockSize: 64 * KiB, workers: 0 });
    expect((await info(small)).blockSize).toBe(64 * KiB);
    expect(await chainSha256(small)).toBe(sha256(next));
    expect(await ownSectorRanges(small)).toEqual(expected);

    // Move parent and child together to another directory: the chain still resolves.
    const moved = fs.mkdtempSync(path.join(dir, 'moved-'));
    fs.copyFileSync(path.join(dir, 'old.vhd'), path.join(moved, 'old.vhd'));
    fs.copyFileSync(small, path.join(moved, 'child.vhd'));
    const mi = await info(path.join(moved, 'child.vhd'));
    expect(mi.parent?.path).toBe(fs.realpathSync(path.join(moved, 'old.vhd')));
  });

  it('--out over an existing file is refused without --force (OUTPUT_EXISTS), and the child may not replace an input', async () => {
    const existing = path.join(dir, 'exists.vhd');
    fs.writeFileSync(existing, 'keep');
    const e = await rejection(diff(path.join(dir, 'old.vhd'), path.join(dir, 'new.vhd'), { out: existing, workers: 0 }));
    expect(e).toBeInstanceOf(VhdError);
    expect((e as VhdError).code).toBe(ErrorCodes.OUTPUT_EXISTS);
    expect(fs.readFileSync(existing, 'utf8')).toBe('keep');
    const before = fs.readFileSync(path.join(dir, 'new.vhd'));
    const e2 = await rejection(diff(path.join(dir, 'old.vhd'), path.join(dir, 'new.vhd'), { out: path.join(dir, 'new.vhd'), force: true, workers: 0 }));
    expect((e2 as VhdError)?.code).toBe(ErrorCodes.USAGE);
    expect(fs.readFileSync(path.join(dir, 'new.vhd')).equals(before)).toBe(true);
  });

  describe.skipIf(!hasQemu)('qemu-img reading the child alone', () => {
    it('sees the new bytes at every changed sector (it ignores the parent, so only those are compared)', async () => {
      const child = path.join(dir, 'child-q.vhd');
      await diff(path.join(dir, 'old.vhd'), path.join(dir, 'new.raw'), { out: child, workers: 2 });
      const outRaw = path.join(dir, 'child-q.raw');
      const q = await runProcess('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', child, outRaw], { cwd: dir });
      expect(q.code, show(q)).toBe(0);
      const seen = fs.readFileSync(outRaw);
      expect(seen.length).toBe(SIZE);
      for (const [s, e] of expected) {
        expect(seen.subarray(s, e).equals(next.subarray(s, e)), `qemu's bytes at [${s}, ${e})`).toBe(true);
      }
    });
  });
});

// -------------------------------------------------------------------------------------------------
// The ancestor method

describe("ancestor method ('bitmap')", () => {
  const SIZE = 4 * MiB;
  let dir = '';
  let raw0: Buffer;
  let raw1: Buffer;
  let raw2: Buffer;
  const F = (n: string) => path.join(dir, n);

  beforeAll(async () => {
    dir = tmpDir('vhdkit-diff-anc-');
    raw0 = Buffer.alloc(SIZE);
    fillRandom(raw0.subarray(0, 1 * MiB), 20);
    fillRandom(raw0.subarray(3 * MiB, 3 * MiB + 100 * KiB), 21);
    raw1 = Buffer.from(raw0);
    fillRandom(raw1.subarray(10 * SECTOR, 20 * SECTOR), 22);
    fillRandom(raw1.subarray(2 * MiB + 1000, 2 * MiB + 9000), 23);
    raw1[SIZE - 1] ^= 1;
    raw2 = Buffer.from(raw1);
    fillRandom(raw2.subarray(15 * SECTOR, 30 * SECTOR), 24); // overlaps the child's change
    raw2.set(raw0.subarray(2 * MiB + 1000, 2 * MiB + 5000), 2 * MiB + 1000); // back to base bytes
    raw2[3 * MiB + 5] ^= 0x80;
    fs.writeFileSync(F('r0.raw'), raw0);
    fs.writeFileSync(F('r1.raw'), raw1);
    fs.writeFileSync(F('r2.raw'), raw2);
    await convert(F('r0.raw'), F('base.vhd'), { to: 'dynamic', blockSize: 512 * KiB });
    // base ← empty (create --parent) ← child (diff --out) ← grandchild (diff --out)
    await create(F('empty.vhd'), { parent: F('base.vhd') });
    await diff(F('empty.vhd'), F('r1.raw'), { out: F('child.vhd'), workers: 0 });
    await diff(F('child.vhd'), F('r2.raw'), { out: F('grandchild.vhd'), workers: 0 });
    expect(await chainSha256(F('grandchild.vhd'))).toBe(sha256(raw2));
  });

  it('an empty child made by create --parent: bitmap method, no ranges', async () => {
    const r = await diff(F('base.vhd'), F('empty.vhd'), { workers: 2 });
    expect(r.method).toBe('bitmap');
    expect(r.ranges).toEqual([]);
    expect(r.bytesCompared).toBe(0);
  });

  for (const workers of [0, 2]) {
    it(`diff(base, grandchild) by bitmap = diff(base, grandchild flattened to raw) by compare = the model (${workers} workers)`, async () => {
      const flat = F(`gc-flat-${workers}.raw`);
      await convert(F('grandchild.vhd'), flat, { to: 'raw' });
      const viaBitmap = await diff(F('base.vhd'), F('grandchild.vhd'), { workers });
      const viaCompare = await diff(F('base.vhd'), flat, { workers });
      expect(viaBitmap.method).toBe('bitmap');
      expect(viaCompare.method).toBe('compare');
      expect(viaBitmap.ranges).toEqual(viaCompare.ranges);
      expect(viaBitmap.ranges).toEqual(changedSectors(raw0, raw2));
      expect(viaBitmap.changedSectors).toBe(viaCompare.changedSectors);
      // Only the layers above base were read: a few blocks, not the 1.1 MiB of base data.
      expect(viaBitmap.bytesCompared).toBeLessThan(viaCompare.bytesCompared);
      // The other way round (new is the ancestor of old): the same ranges.
      const reverse = await diff(F('grandchild.vhd'), F('base.vhd'), { workers });
      expect(reverse.method).toBe('bitmap');
      expect(reverse.ranges).toEqual(viaBitmap.ranges);
    });
  }

  it('diff(child, grandchild) and diff(empty, grandchild) by bitmap: the model', async () => {
    const a = await diff(F('child.vhd'), F('grandchild.vhd'), { workers: 2 });
    expect(a.method).toBe('bitmap');
    expect(a.ranges).toEqual(changedSectors(raw1, raw2));
    const b = await diff(F('empty.vhd'), F('grandchild.vhd'), { workers: 0 });
    expect(b.method).toBe('bitmap');
    expect(b.ranges).toEqual(changedSectors(raw0, raw2));
  });

  it('sectors a grandchild rewrote with identical bytes are not reported (built with DynamicWriter + parentLinkFor)', async () => {
    // The grandchild marks in its bitmaps:
    //  (a) sectors 0..63 with the bytes the chain already has there (identical rewrite);
    //  (b) the child's changed sectors 10..19 with base's bytes (differs from child, equals base);
    //  (c) sector 100 with new bytes (a real change against both);
    //  (d) a whole block (block 6) with the chain's bytes, all identical.
    const blockSize = 512 * KiB;
    const chainNow = await readVirtual(F('child.vhd'));
    const content = Buffer.from(chainNow);
    content.set(raw0.subarray(10 * SECTOR, 20 * SECTOR), 10 * SECTOR);
    fillRandom(content.subarray(100 * SECTOR, 101 * SECTOR), 30);
    const childImg = await openDisk(F('child.vhd'));
    const link = parentLinkFor(F('identical.vhd'), F('child.vhd'), childImg.footer.uniqueId, childImg.footer.timestamp);
    await childImg.close();
    const sink = await FileSink.open(F('identical.vhd'), 'wx');
    const w = await DynamicWriter.create(sink, { virtualSize: SIZE, blockSize, uuid: new Uint8Array(16).fill(0x61), parent: link });
    const bm0 = new Uint8Array(w.bitmapSize);
    markSectors(bm0, 0, 64);
    markSectors(bm0, 100, 101);
    await w.writeBlock(0, content.subarray(0, blockSize), bm0);
    const bm6 = new Uint8Array(w.bitmapSize);
    markSectors(bm6, 0, blockSize / SECTOR);
    await w.writeBlock(6, content.subarray(6 * blockSize, 7 * blockSize), bm6);
    await w.finish();
    await sink.close();
    expect(await chainSha256(F('identical.vhd'))).toBe(sha256(content));
    expect((await check(F('identical.vhd'), { strict: true })).errors).toEqual([]);

    const vsChild = await diff(F('child.vhd'), F('identical.vhd'), { workers: 2 });
    expect(vsChild.method).toBe('bitmap');
    expect(vsChild.ranges).toEqual([
      [10 * SECTOR, 20 * SECTOR],
      [100 * SECTOR, 101 * SECTOR],
    ]);
    const vsBase = await diff(F('base.vhd'), F('identical.vhd'), { workers: 0 });
    expect(vsBase.method).toBe('bitmap');
    expect(vsBase.ranges).toEqual(changedSectors(raw0, content));
    expect(vsBase.ranges.some(([s, e]) => s < 20 * SECTOR && e > 10 * SECTOR), 'sectors 10..19 equal base again').toBe(false);
  });

  it('fixture chain: diff(chain/base, chain/grandchild) by bitmap = by compare against the flattened grandchild', async () => {
    const { dir: fx } = await fixturesDir();
    const flat = F('fx-gc.raw');
    await convert(path.join(fx, 'chain/grandchild.vhd'), flat, { to: 'raw' });
    const a = await diff(path.join(fx, 'chain/base.vhd'), path.join(fx, 'chain/grandchild.vhd'), { workers: 2 });
    const b = await diff(path.join(fx, 'chain/base.vhd'), flat, { workers: 2 });
    expect(a.method).toBe('bitmap');
    expect(b.method).toBe('compare');
    expect(a.ranges).toEqual(b.ranges);
    expect(a.ranges).toEqual(changedSectors(await readVirtual(path.join(fx, 'chain/base.vhd')), fs.readFileSync(flat)));
  });

  describe.skipIf(!corpusPresent)('corpus (blktap base ← child ← grandchild)', () => {
    it('diff(base, grandchild) by bitmap = diff(base, coalesced-base) by compare = the model', async () => {
      const cdir = tmpDir('vhdkit-diff-corpus-');
      for (const n of ['base', 'child', 'grandchild', 'coalesced-base']) fs.writeFileSync(path.join(cdir, `${n}.vhd`), readCorpusFile(`blktap/${n}.vhd`));
      const C = (n: string) => path.join(cdir, n);
      const a = await diff(C('base.vhd'), C('grandchild.vhd'), { workers: 2 });
      const b = await diff(C('base.vhd'), C('coalesced-base.vhd'), { workers: 2 });
      expect(a.method).toBe('bitmap');
      expect(b.method).toBe('compare');
      expect(a.ranges).toEqual(b.ranges);
      expect(a.ranges).toEqual(changedSectors(await readVirtual(C('base.vhd')), await readVirtual(C('grandchild.vhd'))));
      expect(a.changedSectors).toBeGreaterThan(0);
    });
  });
});

// -------------------------------------------------------------------------------------------------
// Refusals, sizes, CLI

describe('refusals and disks of different sizes', () => {
  let dir = '';
  let small: Buffer;
  let large: Buffer;
  beforeAll(async () => {
    dir = tmpDir('vhdkit-diff-sizes-');
    small = Buffer.alloc(1 * MiB);
    fillRandom(small.subarray(1000, 5000), 40);
    large = Buffer.alloc(2 * MiB);
    large.set(small);
    large[4000] ^= 1;
    fillRandom(large.subarray(2 * MiB - 700), 41); // data past the smaller disk's end
    fs.writeFileSync(path.join(dir, 'small.raw'), small);
    fs.writeFileSync(path.join(dir, 'large.raw'), large);
    await convert(path.join(dir, 'small.raw'), path.join(dir, 'small.vhd'), { to: 'dynamic' });
    await convert(path.join(dir, 'large.raw'), path.join(dir, 'large.vhd'), { to: 'dynamic' });
  });

  it('without --out: the smaller disk reads as zeros past its end; virtualSize is the larger', async () => {
    const r = await diff(path.join(dir, 'small.vhd'), path.join(dir, 'large.vhd'), { workers: 2 });
    expect(r.virtualSize).toBe(2 * MiB);
    expect(r.ranges).toEqual(changedSectors(small, large));
    expect(r.ranges[r.ranges.length - 1]).toEqual([2 * MiB - 1024, 2 * MiB]);
  });

  it('sizes differ with --out: exit 2, USAGE, no child and no temp file', async () => {
    const before = fs.readdirSync(dir).sort();
    const r = await vhdkit(['diff', 'small.vhd', 'large.vhd', '--out', 'child.vhd'], dir);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toMatch(/\[USAGE\]\n?$/);
    expect(fs.readdirSync(dir).sort()).toEqual(before);
    const e = await rejection(diff(path.join(dir, 'small.vhd'), path.join(dir, 'large.vhd'), { out: path.join(dir, 'c2.vhd'), workers: 0 }));
    expect(e).toBeInstanceOf(VhdError);
    expect((e as VhdError).code).toBe(ErrorCodes.USAGE);
    expect(fs.existsSync(path.join(dir, 'c2.vhd'))).toBe(false);
  });

  it('a raw old disk with --out: exit 2, USAGE, no child', async () => {
    const before = fs.readdirSync(dir).sort();
    const r = await vhdkit(['diff', 'small.raw', 'small.vhd', '--out', 'child.vhd'], dir);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toContain('[USAGE]');
    expect(fs.readdirSync(dir).sort()).toEqual(before);
    const e = await rejection(diff(path.join(dir, 'small.raw'), path.join(dir, 'small.vhd'), { out: path.join(dir, 'c3.vhd'), workers: 0 }));
    expect((e as VhdError).code).toBe(ErrorCodes.USAGE);
  });
});

describe('several tasks', () => {
  it('a change across the 32 MiB task boundary is one coalesced range (0 and 2 workers), and the --out child holds it', async () => {
    const d = tmpDir('vhdkit-diff-tasks-');
    const size = 40 * MiB;
    const a = Buffer.alloc(size);
    fillRandom(a.subarray(31 * MiB, 33 * MiB), 50);
    const b = Buffer.from(a);
    fillRandom(b.subarray(32 * MiB - 1024, 32 * MiB + 1024), 51); // straddles the first task's end
    fillRandom(b.subarray(10 * MiB, 10 * MiB + 512), 52);
    b[size - 1] = 1;
    fs.writeFileSync(path.join(d, 'a.raw'), a);
    fs.writeFileSync(path.join(d, 'b.raw'), b);
    const expected = changedSectors(a, b);
    expect(expected).toEqual([
      [10 * MiB, 10 * MiB + 512],
      [32 * MiB - 1024, 32 * MiB + 1024],
      [size - 512, size],
    ]);
    for (const workers of [0, 2]) {
      const r = await diff(path.join(d, 'a.raw'), path.join(d, 'b.raw'), { workers });
      expect(r.ranges, `${workers} workers`).toEqual(expected);
      expect(r.bytesCompared).toBe(size);
    }
    await convert(path.join(d, 'a.raw'), path.join(d, 'a.vhd'), { to: 'dynamic' });
    const r = await diff(path.join(d, 'a.vhd'), path.join(d, 'b.raw'), { workers: 2, out: path.join(d, 'child.vhd') });
    expect(r.ranges).toEqual(expected);
    expect(await ownSectorRanges(path.join(d, 'child.vhd'))).toEqual(expected);
    expect(await chainSha256(path.join(d, 'child.vhd'))).toBe(sha256(b));
  });

  it('a disk against itself: bitmap method, nothing compared, no ranges', async () => {
    const { dir: fx } = await fixturesDir();
    const r = await diff(path.join(fx, 'chain/child.vhd'), path.join(fx, 'chain/child.vhd'), { workers: 2 });
    expect(r).toMatchObject({ method: 'bitmap', ranges: [], changedBytes: 0, bytesCompared: 0 });
  });
});

describe('vhdkit diff --json (CLI)', () => {
  it('shape: ranges as [[start,end],...], changedBytes, changedSectors, method; values as the library gives', async () => {
    const { dir: fx } = await fixturesDir();
    const r = await vhdkit(['diff', 'chain/base.vhd', 'chain/child.vhd', '--json'], fx);
    expect(r.code, show(r)).toBe(0);
    const j = json(r);
    expect(Array.isArray(j.ranges)).toBe(true);
    expect(j.ranges.length).toBeGreaterThan(0);
    for (const x of j.ranges) {
      expect(Array.isArray(x)).toBe(true);
      expect(x).toHaveLength(2);
      expect(Number.isInteger(x[0]) && Number.isInteger(x[1])).toBe(true);
      expect(x[0] % SECTOR).toBe(0);
      expect(x[1] % SECTOR).toBe(0);
      expect(x[1]).toBeGreaterThan(x[0]);
    }
    for (let i = 1; i < j.ranges.length; i++) expect(j.ranges[i][0], 'sorted and coalesced').toBeGreaterThan(j.ranges[i - 1][1]);
    expect(j.method).toBe('bitmap');
    expect(j.changedBytes).toBe(total(j.ranges));
    expect(j.changedSectors).toBe(j.changedBytes / SECTOR);
    expect(j.virtualSize).toBe(8 * MiB);
    expect(j.out).toBeNull();
    const lib = await diff(path.join(fx, 'chain/base.vhd'), path.join(fx, 'chain/child.vhd'), { workers: 0 });
    expect(j.ranges).toEqual(lib.ranges);
    // Against the model over the flattened contents.
    expect(j.ranges).toEqual(changedSectors(await readVirtual(path.join(fx, 'chain/base.vhd')), await readVirtual(path.join(fx, 'chain/child.vhd'))));
    // compare method between two unrelated disks of the same content: no ranges.
    const same = await vhdkit(['diff', 'dynamic-2m-blocks.vhd', 'dynamic-2m-blocks.raw', '--json', '--workers', '0'], fx);
    expect(same.code, show(same)).toBe(0);
    expect(json(same)).toMatchObject({ method: 'compare', ranges: [], changedBytes: 0, changedSectors: 0 });
  });
});
