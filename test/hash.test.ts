/**
 * `hash`: the content digest and the binary hash manifest (src/ops/hash.ts, src/format/manifest.ts).
 *
 * - The digest depends on the content only: a chain, its flattened raw / fixed / dynamic forms
 *   (made by vhdkit convert, with another block size for the dynamic one) and, for the blktap
 *   grandchild, blktap's own coalesced base all hash alike — with 0, 1 and 2 workers. It also equals
 *   the digest this file recomputes from the virtual bytes and the documented definition.
 * - Any single changed byte changes the digest, and only the manifest hash of its own chunk
 *   (fast-check over a small raw image).
 * - Zero chunks are counted, flagged in the zero bitmap and have hash 0; an allocated all-zero block
 *   hashes as the sparse form does.
 * - The manifest is parsed here independently from the layout documented at the top of
 *   src/format/manifest.ts; each chunk hash is checked against xxhash-wasm's h64Raw of the chunk.
 * - The manifest is written atomically (nothing on failure; no overwrite without force).
 * - The CLI: `hash --json` shape, `--manifest`, `--workers 0`, a bad `--chunk-size` exits 2.
 *
 * The pool runs the compiled worker from dist/: `npm run build` first (npm test does it in pretest).
 */
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import xxhash from 'xxhash-wasm';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { FileSink } from '../src/io/file.js';
import { convert } from '../src/ops/convert.js';
import { hash } from '../src/ops/hash.js';
import { openAny } from '../src/ops/open.js';
import { corpusDir, corpusPresent, fixturesDir, readCorpusFile, repoRoot, tmpDir, mulberry32, runProcess, readVirtual, type ProcessRun } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const KiB = 1024;
const MiB = 1024 * 1024;

if (!corpusPresent) console.warn(`hash.test.ts: corpus chains SKIPPED — the conformance corpus is not at ${corpusDir}`);

// -------------------------------------------------------------------------------------------------
// Local helpers

let h64Raw: (b: Uint8Array) => bigint;

beforeAll(async () => {
  if (!fs.existsSync(path.join(repoRoot, 'dist/pool/worker.js'))) {
    throw new Error('dist/pool/worker.js is missing: run "npm run build" first (npm test does it in pretest)');
  }
  ({ h64Raw } = await xxhash());
});


function isAllZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

interface Model {
  chunks: number;
  hashes: bigint[];
  zero: boolean[];
  zeroChunks: number;
  digest: string;
}

/**
 * The documented definition, computed from the bytes: xxh64 (seed 0) of virtualSize (u64 LE),
 * chunkSize (u32 LE), then (index u64 LE, hash u64 LE) of every non-zero chunk, in order — hashed
 * here in one call over one buffer (not streamed, unlike the implementation).
 */
function model(content: Uint8Array, chunkSize: number): Model {
  const chunks = Math.ceil(content.length / chunkSize);
  const hashes: bigint[] = [];
  const zero: boolean[] = [];
  const records: number[] = [];
  const msg = Buffer.alloc(12 + chunks * 16);
  msg.writeBigUInt64LE(BigInt(content.length), 0);
  msg.writeUInt32LE(chunkSize, 8);
  let at = 12;
  for (let i = 0; i < chunks; i++) {
    const c = content.subarray(i * chunkSize, Math.min((i + 1) * chunkSize, content.length));
    const z = isAllZero(c);
    zero.push(z);
    const h = z ? 0n : h64Raw(c);
    hashes.push(h);
    if (!z) {
      msg.writeBigUInt64LE(BigInt(i), at);
      msg.writeBigUInt64LE(h, at + 8);
      at += 16;
      records.push(i);
    }
  }
  const digest = h64Raw(msg.subarray(0, at)).toString(16).padStart(16, '0');
  return { chunks, hashes, zero, zeroChunks: chunks - records.length, digest };
}

interface ParsedManifest {
  magic: string;
  version: number;
  algorithm: number;
  chunkSize: number;
  reserved1: number;
  virtualSize: number;
  chunks: number;
  digest: string;
  zeroChunks: number;
  reserved2: bigint;
  hashes: bigint[];
  zeroFlags: boolean[];
  /** Bits past the last chunk in the zero-flag bytes that are set (must be none). */
  strayBits: number;
  fileSize: number;
}

/** Parses a manifest from the layout documented in src/format/manifest.ts (not with its decoder). */
function parseManifest(file: string): ParsedManifest {
  const b = fs.readFileSync(file);
  expect(b.length, 'a manifest has at least its 64-byte header').toBeGreaterThanOrEqual(64);
  const chunks = Number(b.readBigUInt64LE(0x20));
  const hashes: bigint[] = [];
  for (let i = 0; i < chunks && 64 + i * 8 + 8 <= b.length; i++) hashes.push(b.readBigUInt64LE(64 + i * 8));
  const flagsAt = 64 + chunks * 8;
  const zeroFlags: boolean[] = [];
  let strayBits = 0;
  for (let i = 0; i < Math.ceil(chunks / 8) * 8; i++) {
    const byte = b[flagsAt + (i >>> 3)] ?? 0;
    const bit = (byte >>> (i & 7)) & 1;
    if (i < chunks) zeroFlags.push(bit === 1);
    else strayBits += bit;
  }
  return {
    magic: b.subarray(0, 8).toString('latin1'),
    version: b.readUInt32LE(0x08),
    algorithm: b.readUInt32LE(0x0c),
    chunkSize: b.readUInt32LE(0x10),
    reserved1: b.readUInt32LE(0x14),
    virtualSize: Number(b.readBigUInt64LE(0x18)),
    chunks,
    digest: b.readBigUInt64LE(0x28).toString(16).padStart(16, '0'),
    zeroChunks: Number(b.readBigUInt64LE(0x30)),
    reserved2: b.readBigUInt64LE(0x38),
    hashes,
    zeroFlags,
    strayBits,
    fileSize: b.length,
  };
}

/** Asserts a manifest file describes `content` at `chunkSize` exactly, and matches the result. */
function expectManifestOf(file: string, content: Uint8Array, chunkSize: number, result: { digest: string; zeroChunks: number; chunks: number }): void {
  const m = parseManifest(file);
  const x = model(content, chunkSize);
  expect(m.magic).toBe('VHDKHASH');
  expect(m.version).toBe(1);
  expect(m.algorithm).toBe(1);
  expect(m.chunkSize).toBe(chunkSize);
  expect(m.reserved1).toBe(0);
  expect(m.reserved2).toBe(0n);
  expect(m.virtualSize).toBe(content.length);
  expect(m.chunks).toBe(Math.ceil(content.length / chunkSize));
  expect(m.chunks).toBe(result.chunks);
  expect(m.fileSize).toBe(64 + 8 * m.chunks + Math.ceil(m.chunks / 8));
  expect(m.digest).toBe(result.digest);
  expect(m.digest, 'the stored digest is the documented definition over the content').toBe(x.digest);
  expect(m.zeroChunks).toBe(result.zeroChunks);
  expect(m.zeroChunks).toBe(x.zeroChunks);
  expect(m.strayBits, 'zero-flag bits past the last chunk are clear').toBe(0);
  // Compare whole arrays (one diff on failure), then name the first bad chunk.
  const badHash = m.hashes.findIndex((h, i) => h !== x.hashes[i]);
  expect(badHash, badHash >= 0 ? `chunk ${badHash}: manifest ${m.hashes[badHash]} vs xxh64 ${x.hashes[badHash]}` : '').toBe(-1);
  expect(m.hashes).toHaveLength(x.chunks);
  const badFlag = m.zeroFlags.findIndex((z, i) => z !== x.zero[i]);
  expect(badFlag, badFlag >= 0 ? `zero flag of chunk ${badFlag}` : '').toBe(-1);
}


function fillRandom(b: Uint8Array, seed: number): void {
  const r = mulberry32(seed);
  for (let i = 0; i < b.length; i++) b[i] = (r() * 256) | 0;
}

/** Files in a directory (hidden temp files included). */
function ls(dir: string): string[] {
  return fs.readdirSync(dir).sort();
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

// -------------------------------------------------------------------------------------------------
// Digest equality across forms

/**
 * Hashes `file` and its flattened forms (raw, fixed, dynamic with a block size different from the
 * source's) and expects one digest, equal to the documented definition over the content.
 */
async function expectSameDigestInEveryForm(file: string, extra: string[] = []): Promise<string> {
  const dir = tmpDir('vhdkit-hash-forms-');
  const { disk } = await openAny(file);
  const srcBlock = (disk as { blockSize?: number }).blockSize ?? 0;
  await disk.close();
  const otherBlock = srcBlock === 512 * KiB ? 1 * MiB : 512 * KiB;
  const raw = path.join(dir, 'flat.raw');
  const fixed = path.join(dir, 'flat-fixed.vhd');
  const dynamic = path.join(dir, 'flat-dynamic.vhd');
  await convert(file, raw, { to: 'raw' });
  await convert(file, fixed, { to: 'fixed' });
  await convert(file, dynamic, { to: 'dynamic', blockSize: otherBlock });
  const content = fs.readFileSync(raw);
  const expected = model(content, 64 * KiB);
  const digests: Record<string, string> = {};
  for (const f of [file, raw, fixed, dynamic, ...extra]) digests[path.basename(f)] = (await hash(f, { workers: 0 })).digest;
  for (const [name, d] of Object.entries(digests)) expect(d, `${name} (vs the digest of the content)`).toBe(expected.digest);
  return expected.digest;
}

describe('the digest is the same for the same content in any form', () => {
  let fx = '';
  beforeAll(async () => {
    ({ dir: fx } = await fixturesDir());
  });

  for (const rel of ['chain/child.vhd', 'chain/grandchild.vhd', 'chain-nolocator/child.vhd', 'chain-sectors/child.vhd', 'dynamic-2m-blocks.vhd', 'dynamic-512k-blocks.vhd', 'dynamic-4k-blocks.vhd', 'fixed-1m.vhd']) {
    it(`fixture ${rel}: the chain / disk = raw = fixed = dynamic (other block size) = the definition`, async () => {
      await expectSameDigestInEveryForm(path.join(fx, rel));
    });
  }

  it('fixture footer511.vhd (511-byte footer) hashes as fixed-1m.vhd and fixed-1m.raw', async () => {
    const a = await hash(path.join(fx, 'fixed-1m.vhd'), { workers: 0 });
    const b = await hash(path.join(fx, 'footer511.vhd'), { workers: 0 });
    const c = await hash(path.join(fx, 'fixed-1m.raw'), { workers: 0 });
    expect(b.digest).toBe(a.digest);
    expect(c.digest).toBe(a.digest);
  });

  it('workers 0, 1 and 2 give the same digest, chunk counts and zero counts (fixture chain)', async () => {
    const f = path.join(fx, 'chain/grandchild.vhd');
    const results = [];
    for (const workers of [0, 1, 2]) {
      const r = await hash(f, { workers });
      expect(r.workers).toBe(workers);
      results.push(r);
    }
    for (const r of results.slice(1)) {
      expect({ d: r.digest, c: r.chunks, z: r.zeroChunks, v: r.virtualSize }).toEqual({
        d: results[0].digest,
        c: results[0].chunks,
        z: results[0].zeroChunks,
        v: results[0].virtualSize,
      });
    }
  });

  describe.skipIf(!corpusPresent)('corpus chains (blktap)', () => {
    let dir = '';
    const B = (n: string) => path.join(dir, 'blktap', n);
    beforeAll(() => {
      dir = tmpDir('vhdkit-hash-corpus-');
      fs.mkdirSync(path.join(dir, 'blktap'));
      for (const n of ['base', 'child', 'grandchild', 'coalesced-base', 'p5', 'c5']) fs.writeFileSync(B(`${n}.vhd`), readCorpusFile(`blktap/${n}.vhd`));
    });

    it('blktap/child.vhd: chain = raw = fixed = dynamic', async () => {
      await expectSameDigestInEveryForm(B('child.vhd'));
    });

    it('blktap/grandchild.vhd: chain = raw = fixed = dynamic = blktap/coalesced-base.vhd', async () => {
      await expectSameDigestInEveryForm(B('grandchild.vhd'), [B('coalesced-base.vhd')]);
    });

    it('blktap/c5.vhd: chain = raw = fixed = dynamic', async () => {
      await expectSameDigestInEveryForm(B('c5.vhd'));
    });

    it('the chains differ from their parents (the digest sees the child)', async () => {
      expect((await hash(B('child.vhd'), { workers: 0 })).digest).not.toBe((await hash(B('base.vhd'), { workers: 0 })).digest);
      expect((await hash(B('c5.vhd'), { workers: 0 })).digest).not.toBe((await hash(B('p5.vhd'), { workers: 0 })).digest);
    });

    it('workers 0, 1 and 2 agree on every corpus chain', async () => {
      for (const n of ['child', 'grandchild', 'c5']) {
        const ds = [];
        for (const workers of [0, 1, 2]) ds.push((await hash(B(`${n}.vhd`), { workers })).digest);
        expect(new Set(ds).size, `${n}: ${ds.join(' ')}`).toBe(1);
      }
    });
  });
});

// -------------------------------------------------------------------------------------------------
// A single changed byte

describe('any single changed byte changes the digest, and only its own chunk hash', () => {
  const SIZE = 256 * KiB;
  const CHUNK = 4 * KiB;
  let dir = '';
  let base: Buffer;
  let baseManifest: ParsedManifest;
  let baseDigest = '';

  beforeAll(async () => {
    dir = tmpDir('vhdkit-hash-flip-');
    // Random data with zero chunks in between (a flip may turn a zero chunk into data).
    base = Buffer.alloc(SIZE);
    const r = mulberry32(7);
    for (let c = 0; c < SIZE / CHUNK; c++) if (r() < 0.6) fillRandom(base.subarray(c * CHUNK, (c + 1) * CHUNK), 100 + c);
    // One chunk that differs from zero in a single byte (a flip may turn it into a zero chunk).
    base.fill(0, 5 * CHUNK, 6 * CHUNK);
    base[5 * CHUNK + 100] = 0x40;
    fs.writeFileSync(path.join(dir, 'base.raw'), base);
    const r0 = await hash(path.join(dir, 'base.raw'), { chunkSize: CHUNK, workers: 0, manifest: path.join(dir, 'base.vhdhash') });
    baseManifest = parseManifest(path.join(dir, 'base.vhdhash'));
    baseDigest = r0.digest;
    expect(baseManifest.chunks).toBe(SIZE / CHUNK);
  });

  it('property: flip one random byte → another digest; the flipped chunk is the only changed manifest hash', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.integer({ min: 0, max: SIZE - 1 }), fc.constant(5 * CHUNK + 100), fc.constant(SIZE - 1), fc.constant(0)),
        fc.integer({ min: 1, max: 255 }),
        fc.constantFrom(0, 2),
        async (pos, xor, workers) => {
          const name = `flip-${n++}`;
          const bytes = Buffer.from(base);
          bytes[pos] ^= xor;
          const file = path.join(dir, `${name}.raw`);
          const man = path.join(dir, `${name}.vhdhash`);
          fs.writeFileSync(file, bytes);
          try {
            const r = await hash(file, { chunkSize: CHUNK, workers, manifest: man });
            expect(r.digest).not.toBe(baseDigest);
            const m = parseManifest(man);
            const changed = m.hashes.map((h, i) => (h !== baseManifest.hashes[i] ? i : -1)).filter((i) => i >= 0);
            expect(changed).toEqual([Math.floor(pos / CHUNK)]);
            const flagChanged = m.zeroFlags.map((z, i) => (z !== baseManifest.zeroFlags[i] ? i : -1)).filter((i) => i >= 0);
            expect(flagChanged.every((i) => i === Math.floor(pos / CHUNK))).toBe(true);
            // And the new hash is the chunk's xxh64 (or 0 if the flip made it all zeros).
            const c = bytes.subarray(Math.floor(pos / CHUNK) * CHUNK, Math.floor(pos / CHUNK) * CHUNK + CHUNK);
            expect(m.hashes[Math.floor(pos / CHUNK)]).toBe(isAllZero(c) ? 0n : h64Raw(c));
          } finally {
            fs.rmSync(file, { force: true });
            fs.rmSync(man, { force: true });
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

// -------------------------------------------------------------------------------------------------
// Zero chunks

describe('zero chunks', () => {
  let dir = '';
  beforeAll(() => {
    dir = tmpDir('vhdkit-hash-zero-');
  });

  it('an all-zero disk: every chunk is zero, hash fields 0, all flags set, digest = xxh64(virtualSize, chunkSize)', async () => {
    const f = path.join(dir, 'zeros.raw');
    fs.writeFileSync(f, Buffer.alloc(1 * MiB + 3 * 512));
    const r = await hash(f, { workers: 0, chunkSize: 64 * KiB, manifest: path.join(dir, 'zeros.vhdhash') });
    expect(r.chunks).toBe(17);
    expect(r.zeroChunks).toBe(17);
    const m = parseManifest(path.join(dir, 'zeros.vhdhash'));
    expect(m.hashes.every((h) => h === 0n)).toBe(true);
    expect(m.zeroFlags.every(Boolean)).toBe(true);
    const head = Buffer.alloc(12);
    head.writeBigUInt64LE(BigInt(1 * MiB + 3 * 512), 0);
    head.writeUInt32LE(64 * KiB, 8);
    expect(r.digest).toBe(h64Raw(head).toString(16).padStart(16, '0'));
  });

  it('a dynamic VHD with allocated all-zero blocks and zero chunks inside data blocks: counted, flagged, hash 0, same digest as the sparse raw', async () => {
    const blockSize = 512 * KiB;
    const virtualSize = 4 * MiB;
    const content = Buffer.alloc(virtualSize);
    // block 0: allocated, all zeros; block 1: data in its first 64 KiB and at its last byte (chunks in
    // between are zero); block 2: unallocated; block 3: all data; block 5: allocated, all zeros.
    fillRandom(content.subarray(1 * blockSize, 1 * blockSize + 64 * KiB), 11);
    content[2 * blockSize - 1] = 0x5a;
    fillRandom(content.subarray(3 * blockSize, 4 * blockSize), 12);
    const vhd = path.join(dir, 'zero-blocks.vhd');
    const sink = await FileSink.open(vhd, 'wx');
    const w = await DynamicWriter.create(sink, { virtualSize, blockSize, uuid: new Uint8Array(16).fill(3) });
    for (const b of [5, 0, 1, 3]) await w.writeBlock(b, content.subarray(b * blockSize, (b + 1) * blockSize));
    await w.finish();
    await sink.close();
    const raw = path.join(dir, 'zero-blocks.raw');
    fs.writeFileSync(raw, content);

    const chunkSize = 64 * KiB;
    const x = model(content, chunkSize);
    // 64 chunks; non-zero: chunk 8 (block 1 first 64K), chunk 15 (block 1 last byte), chunks 24..31.
    expect(x.zeroChunks).toBe(64 - 10);
    const rv = await hash(vhd, { workers: 2, chunkSize, manifest: path.join(dir, 'zb-vhd.vhdhash') });
    const rr = await hash(raw, { workers: 0, chunkSize, manifest: path.join(dir, 'zb-raw.vhdhash') });
    expect(rv.zeroChunks).toBe(54);
    expect(rr.zeroChunks).toBe(54);
    expect(rv.digest).toBe(rr.digest);
    expect(rv.digest).toBe(x.digest);
    expectManifestOf(path.join(dir, 'zb-vhd.vhdhash'), content, chunkSize, rv);
    expectManifestOf(path.join(dir, 'zb-raw.vhdhash'), content, chunkSize, rr);
    const m = parseManifest(path.join(dir, 'zb-vhd.vhdhash'));
    // The allocated all-zero block 0 (chunks 0..7) and 5 (40..47): flagged, hash 0.
    for (const i of [0, 7, 40, 47, 9, 14]) {
      expect(m.zeroFlags[i], `chunk ${i} flagged zero`).toBe(true);
      expect(m.hashes[i], `chunk ${i} hash`).toBe(0n);
    }
    for (const i of [8, 15, 24, 31]) {
      expect(m.zeroFlags[i], `chunk ${i} not flagged`).toBe(false);
      expect(m.hashes[i]).not.toBe(0n);
    }
    // Writing the same content with every block allocated does not change the digest either.
    const full = path.join(dir, 'all-allocated.vhd');
    const s2 = await FileSink.open(full, 'wx');
    const w2 = await DynamicWriter.create(s2, { virtualSize, blockSize, uuid: new Uint8Array(16).fill(4) });
    for (let b = 0; b < virtualSize / blockSize; b++) await w2.writeBlock(b, content.subarray(b * blockSize, (b + 1) * blockSize));
    await w2.finish();
    await s2.close();
    const rf = await hash(full, { workers: 2, chunkSize });
    expect(rf.digest).toBe(x.digest);
    expect(rf.zeroChunks).toBe(54);
  });
});

// -------------------------------------------------------------------------------------------------
// A 2000 GiB disk: a 1M-entry BAT, decoded by the WebAssembly kernel

describe('a 2000 GiB sparse dynamic disk', () => {
  it('opens with exactly its blocks (at the kernel\'s group edges and the last entry) and hashes to the digest of its content, at 0 and 2 workers', async () => {
    const dir = tmpDir('vhdkit-hash-2000g-');
    const blockSize = 2 * MiB;
    const virtualSize = 2000 * 1024 * MiB;
    const entries = virtualSize / blockSize;
    const blocks = [0, 7, 8, 31, 32, 65535, 65536, 524287, entries - 1];
    const vhd = path.join(dir, 'huge.vhd');
    const sink = await FileSink.open(vhd, 'wx');
    const w = await DynamicWriter.create(sink, { virtualSize, blockSize, uuid: new Uint8Array(16).fill(9) });
    const data = new Map<number, Uint8Array>();
    for (const b of blocks) {
      const d = new Uint8Array(blockSize);
      fillRandom(d, b + 1);
      d.fill(0, 64 * KiB, 192 * KiB); // two zero chunks inside each block
      data.set(b, d);
      await w.writeBlock(b, d);
    }
    await w.finish();
    await sink.close();

    const { disk } = await openAny(vhd, 'vhd');
    try {
      const img = disk as unknown as { allocated: Uint32Array; bat: Uint32Array };
      expect(img.bat.length).toBe(entries);
      expect(Array.from(img.allocated)).toEqual(blocks);
      const back = new Uint8Array(4096);
      await disk.read(back, (entries - 1) * blockSize + blockSize - 4096);
      expect(Buffer.compare(back, data.get(entries - 1)!.subarray(blockSize - 4096))).toBe(0);
    } finally {
      await disk.close();
    }

    // The digest, as the manifest format defines it: the header, then (index, hash) of every non-zero chunk.
    const chunkSize = 64 * KiB;
    const { create64, h64Raw } = await xxhash();
    const digest = create64(0n);
    const head = new DataView(new ArrayBuffer(12));
    head.setBigUint64(0, BigInt(virtualSize), true);
    head.setUint32(8, chunkSize, true);
    digest.update(new Uint8Array(head.buffer));
    let nonZero = 0;
    for (const b of blocks) {
      const d = data.get(b)!;
      for (let c = 0; c < blockSize / chunkSize; c++) {
        const chunk = d.subarray(c * chunkSize, (c + 1) * chunkSize);
        if (isAllZero(chunk)) continue;
        const rec = new DataView(new ArrayBuffer(16));
        rec.setBigUint64(0, BigInt((b * blockSize) / chunkSize + c), true);
        rec.setBigUint64(8, h64Raw(chunk), true);
        digest.update(new Uint8Array(rec.buffer));
        nonZero++;
      }
    }
    const expected = digest.digest().toString(16).padStart(16, '0');
    for (const workers of [0, 2]) {
      const r = await hash(vhd, { workers });
      expect(r.digest, `workers ${workers}`).toBe(expected);
      expect(r.chunks).toBe(virtualSize / chunkSize);
      expect(r.zeroChunks).toBe(r.chunks - nonZero);
      expect(r.bytesRead).toBe(blocks.length * blockSize);
    }
  });
});

// -------------------------------------------------------------------------------------------------
// The manifest, parsed from its documented layout

describe('the manifest file, parsed independently', () => {
  let dir = '';
  let fx = '';
  // 3 MiB + 1536 bytes: not a multiple of 4K, 64K or 1M (partial last chunk), random data with holes.
  const RAW_SIZE = 3 * MiB + 1536;
  let raw = '';
  let content: Buffer;

  beforeAll(async () => {
    dir = tmpDir('vhdkit-hash-manifest-');
    ({ dir: fx } = await fixturesDir());
    content = Buffer.alloc(RAW_SIZE);
    const r = mulberry32(99);
    for (let i = 0; i < 40; i++) {
      const at = Math.floor(r() * RAW_SIZE);
      const len = Math.min(RAW_SIZE - at, 1 + Math.floor(r() * 100 * KiB));
      fillRandom(content.subarray(at, at + len), 1000 + i);
    }
    content[RAW_SIZE - 1] = 0xaa; // the last (partial) chunk holds data
    raw = path.join(dir, 'odd.raw');
    fs.writeFileSync(raw, content);
  });

  for (const [label, chunkSize] of [
    ['512', 512],
    ['4K', 4 * KiB],
    ['64K (default)', undefined],
    ['1M', 1 * MiB],
  ] as const) {
    for (const workers of [0, 2]) {
      it(`chunk size ${label}, ${workers} workers, virtual size 3 MiB + 1536 (last chunk partial)`, async () => {
        const man = path.join(dir, `odd-${label.replace(/\W.*/, '')}-${workers}.vhdhash`);
        const r = await hash(raw, { chunkSize, workers, manifest: man });
        const cs = chunkSize ?? 64 * KiB;
        expect(r.chunkSize).toBe(cs);
        expect(r.virtualSize).toBe(RAW_SIZE);
        expect(r.chunks).toBe(Math.ceil(RAW_SIZE / cs));
        expect(r.manifest).toBe(man);
        expectManifestOf(man, content, cs, r);
      });
    }
  }

  it('the largest chunk (4 MiB, one read unit) hashes the whole chunk', async () => {
    const size = 20 * MiB;
    const big = Buffer.alloc(size);
    // Data only near the end of each chunk (a hash of a chunk's head alone would see zeros).
    for (let c = 0; c < size / (4 * MiB); c++) fillRandom(big.subarray(c * 4 * MiB + 3 * MiB, c * 4 * MiB + 3 * MiB + 4096), 500 + c);
    const f = path.join(dir, 'big.raw');
    fs.writeFileSync(f, big);
    try {
      const man = path.join(dir, 'big-4m.vhdhash');
      const r = await hash(f, { chunkSize: 4 * MiB, workers: 0, manifest: man });
      expect(r.zeroChunks, 'no chunk is all zeros').toBe(0);
      expectManifestOf(man, big, 4 * MiB, r);
    } finally {
      fs.rmSync(f, { force: true });
    }
  });

  for (const rel of ['dynamic-512k-blocks.vhd', 'chain/grandchild.vhd', 'dynamic-2m-blocks.vhd']) {
    it(`fixture ${rel} with 4K and 1M chunks: manifest = xxh64 of the virtual bytes`, async () => {
      const f = path.join(fx, rel);
      const bytes = await readVirtual(f);
      for (const cs of [4 * KiB, 1 * MiB]) {
        const man = path.join(dir, `${rel.replace(/\W/g, '_')}-${cs}.vhdhash`);
        const r = await hash(f, { chunkSize: cs, workers: 2, manifest: man });
        expectManifestOf(man, bytes, cs, r);
      }
    });
  }

  it('chunk sizes that are not a power of two, or outside 512 B..4 MiB, are refused with USAGE (and no manifest)', async () => {
    for (const cs of [0, 256, 3 * KiB, 1000, 8 * MiB, 128 * MiB]) {
      const man = path.join(dir, `bad-${cs}.vhdhash`);
      const e = await hash(raw, { chunkSize: cs, workers: 0, manifest: man }).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e, `chunk size ${cs}`).toBeInstanceOf(VhdError);
      expect((e as VhdError).code).toBe(ErrorCodes.USAGE);
      expect(fs.existsSync(man)).toBe(false);
    }
  });
});

// -------------------------------------------------------------------------------------------------
// Atomic manifest

describe('the manifest is written atomically', () => {
  let dir = '';
  let fx = '';
  beforeAll(async () => {
    dir = tmpDir('vhdkit-hash-atomic-');
    ({ dir: fx } = await fixturesDir());
  });

  for (const workers of [0, 2]) {
    it(`a read failure mid-hash (BAT entry past EOF, ${workers} workers): rejects, no manifest, no temp file`, async () => {
      const d = fs.mkdtempSync(path.join(dir, 'fail-'));
      const disk = path.join(d, 'bad.vhd');
      fs.copyFileSync(path.join(fx, 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd'), disk);
      const man = path.join(d, 'bad.vhdhash');
      const e = await hash(disk, { workers, manifest: man }).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e, 'hashing must fail').toBeInstanceOf(Error);
      if (workers === 0) expect((e as VhdError).code).toBe(ErrorCodes.BAT_ENTRY_PAST_EOF);
      expect(ls(d)).toEqual(['bad.vhd']);
    });
  }

  it('an input that is not a VHD (NOT_VHD, *.vhd): rejects before writing, no manifest', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'notvhd-'));
    fs.copyFileSync(path.join(fx, 'corrupt/NOT_VHD--text.vhd'), path.join(d, 'text.vhd'));
    await expect(hash(path.join(d, 'text.vhd'), { workers: 0, manifest: path.join(d, 'm') })).rejects.toMatchObject({ code: ErrorCodes.NOT_VHD });
    expect(ls(d)).toEqual(['text.vhd']);
  });

  it('refuses to overwrite an existing manifest without force (OUTPUT_EXISTS, file untouched); force replaces it', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'exists-'));
    const man = path.join(d, 'm.vhdhash');
    fs.writeFileSync(man, 'keep me');
    const src = path.join(fx, 'chain/child.vhd');
    await expect(hash(src, { workers: 0, manifest: man })).rejects.toMatchObject({ code: ErrorCodes.OUTPUT_EXISTS });
    expect(fs.readFileSync(man, 'utf8')).toBe('keep me');
    expect(ls(d)).toEqual(['m.vhdhash']);
    const r = await hash(src, { workers: 2, manifest: man, force: true });
    expectManifestOf(man, await readVirtual(src), 64 * KiB, r);
    expect(ls(d)).toEqual(['m.vhdhash']);
  });
});

// -------------------------------------------------------------------------------------------------
// CLI

describe('vhdkit hash (CLI)', () => {
  let fx = '';
  let dir = '';
  beforeAll(async () => {
    ({ dir: fx } = await fixturesDir());
    dir = tmpDir('vhdkit-hash-cli-');
  });

  it('--json prints one document: digest, chunkSize, chunks, zeroChunks, virtualSize (as the library computes)', async () => {
    const r = await vhdkit(['hash', 'chain/grandchild.vhd', '--json'], fx);
    expect(r.code, show(r)).toBe(0);
    const j = json(r);
    const lib = await hash(path.join(fx, 'chain/grandchild.vhd'), { workers: 0 });
    expect(j.digest).toMatch(/^[0-9a-f]{16}$/);
    expect({ digest: j.digest, chunkSize: j.chunkSize, chunks: j.chunks, zeroChunks: j.zeroChunks, virtualSize: j.virtualSize }).toEqual({
      digest: lib.digest,
      chunkSize: 65536,
      chunks: lib.chunks,
      zeroChunks: lib.zeroChunks,
      virtualSize: 8388608,
    });
    expect(j.manifest).toBeNull();
  });

  it('--manifest F --chunk-size 4K writes the manifest; --workers 0 gives the same digest', async () => {
    const man = path.join(dir, 'gc.vhdhash');
    const r = await vhdkit(['hash', 'chain/grandchild.vhd', '--json', '--manifest', man, '--chunk-size', '4K'], fx);
    expect(r.code, show(r)).toBe(0);
    const j = json(r);
    expect(j.chunkSize).toBe(4096);
    expect(j.manifest).toBe(man);
    expectManifestOf(man, await readVirtual(path.join(fx, 'chain/grandchild.vhd')), 4096, j);
    const r0 = await vhdkit(['hash', 'chain/grandchild.vhd', '--json', '--workers', '0', '--chunk-size', '4K'], fx);
    expect(r0.code, show(r0)).toBe(0);
    const j0 = json(r0);
    expect(j0.workers).toBe(0);
    expect(j0.digest).toBe(j.digest);
    // An existing manifest is refused (exit 2, OUTPUT_EXISTS), and kept.
    const before = fs.readFileSync(man);
    const again = await vhdkit(['hash', 'chain/grandchild.vhd', '--manifest', man], fx);
    expect(again.code, show(again)).toBe(2);
    expect(again.stderr).toContain('[OUTPUT_EXISTS]');
    expect(fs.readFileSync(man).equals(before)).toBe(true);
  });

  it('the human output: "<digest>  <file>" on the first line', async () => {
    const r = await vhdkit(['hash', 'fixed-1m.vhd', '--workers', '0'], fx);
    expect(r.code, show(r)).toBe(0);
    const lib = await hash(path.join(fx, 'fixed-1m.vhd'), { workers: 0 });
    expect(r.stdout.split('\n')[0]).toBe(`${lib.digest}  fixed-1m.vhd`);
  });

  it('a bad --chunk-size (3K) exits 2 with one USAGE line; nothing on stdout; no manifest', async () => {
    const man = path.join(dir, 'never.vhdhash');
    const r = await vhdkit(['hash', 'fixed-1m.vhd', '--chunk-size', '3K', '--manifest', man], fx);
    expect(r.code, show(r)).toBe(2);
    expect(r.stdout).toBe('');
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^vhdkit: .*\[USAGE\]$/);
    expect(fs.existsSync(man)).toBe(false);
  });

  it('a chunk size that is not a size at all (--chunk-size lots) exits 2', async () => {
    const r = await vhdkit(['hash', 'fixed-1m.vhd', '--chunk-size', 'lots'], fx);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toContain('[USAGE]');
  });
});
