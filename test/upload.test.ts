/**
 * `upload` and `generations` against a real Azurite blob server (fixtures/azurite.mjs: the pinned
 * devDependency, in memory, 127.0.0.1, ephemeral port; started once for this file).
 *
 * Every uploaded blob is downloaded with the SDK and compared byte for byte with the model: the
 * virtual content, zeros up to the blob's virtual size, then a fixed-VHD footer checked field by
 * field (cookie, type 2, sizes, data offset, checksum recomputed here) and the blob's Content-MD5
 * recomputed from the downloaded bytes.
 *
 * 1. Content: dynamic (with an allocated all-zero block), fixed, raw (size not a whole sector),
 *    a differencing chain (partial-sector edits over parent data, new sectors, a run across a block
 *    boundary), a size that is not a whole MiB (rounded by default, kept with `resize: false`).
 * 2. Sparse: bytes sent = non-zero 64 KiB chunks + the footer, exactly; the blob's page ranges lie
 *    inside those chunks and the footer.
 * 3. Dedup: a full disk against `base` ('chunks': only changed chunks written, chunks that became
 *    zero cleared), a differencing child of the base's disk ('sectors': exactly its own sectors),
 *    the same with the parent's mtime touched (identity by hash), `generations` (base, differing
 *    bytes, data bytes, merge hint), BASE_INVALID for missing / foreign / unfinished bases.
 * 4. `snapshot`: generations kept as snapshots of one blob, each snapshot's content exact; a
 *    generation interrupted, then replaced by another disk with `overwrite`.
 * 5. Safety: BLOB_EXISTS (library and CLI exit 2) unless `overwrite`; the same disk twice sends
 *    nothing and leaves the blob untouched (ETag); secrets (SAS `sig=`, AccountKey) never printed by
 *    the CLI in normal, --json and --debug modes, on success and on failure.
 * 6. Faults: a legacy SDK RequestPolicyFactory failing ~20% of requests (503 ServerBusy, 500
 *    OperationTimedOut, ECONNRESET), half of them after the request reached the server; a hanging
 *    request abandoned by the per-try timeout; a 400 never retried; a snapshot whose response is
 *    lost. A failed or aborted run followed by a clean rerun still ends exact (the watermark never
 *    passes a write that did not land).
 * 8. `generations` shape, and an interrupted upload listed as 'uploading' with a hint.
 *
 * Azurite 3.35.0 shares page ranges between a server-side copy and
 * its source (see 'dedup against a base'): each derived upload here gets a base of its own.
 * (7, real SIGKILLs and --verify with tampered blobs: test/upload-crash.test.ts.)
 *
 * The pool runs the compiled worker and the CLI runs from dist/: `npm run build` first.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlobServiceClient, RestError } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type BlobLocation, parseDestination, publicUrl } from '../src/azure/destination.js';
import { newCounters, PageBlob } from '../src/azure/pageblob.js';
import { DynamicWriter } from '../src/disk/writer.js';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { bitmapByteSize, setBits } from '../src/format/bitmap.js';
import { FileSink } from '../src/io/file.js';
import { isZero } from '../src/io/aligned.js';
import { convert } from '../src/ops/convert.js';
import { newUuid, parentLinkFor } from '../src/ops/create.js';
import { generations, type Generation } from '../src/ops/generations.js';
import { acquireLock, acquireSharedLock } from '../src/ops/journal.js';
import { openDisk } from '../src/ops/open.js';
import { heldSectors as chainSectorRanges } from '../src/disk/chain.js';
import { upload, type UploadOptions, type UploadResult } from '../src/ops/upload.js';
import { normalizeRanges, totalLength, type Range } from '../src/disk/ranges.js';
import { destroyPool } from '../src/pool/pool.js';
import { mulberry32, readVirtual, repoRoot, runProcess, startTestAzurite, tmpDir, type ProcessRun , type TestAzurite, rejection } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const KiB = 1024;
const MiB = 1024 * 1024;
const SECTOR = 512;
const CHUNK = 64 * KiB;

let az: TestAzurite;
let svc: BlobServiceClient;
let work: string;
let journalDir: string;

beforeAll(async () => {
  az = await startTestAzurite();
  svc = BlobServiceClient.fromConnectionString(az.connectionString);
  work = tmpDir('vhdkit-upload-');
  journalDir = path.join(work, 'journals');
});

afterAll(async () => {
  await destroyPool();
  await az?.stop();
});

// -------------------------------------------------------------------------------------------------
// Disks

/** `size` bytes of zeros with random bytes at each [offset, length]. */
function contentWith(size: number, pieces: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(size);
  for (const [at, n] of pieces) randomFillSync(b, at, n);
  return b;
}

/** A dynamic VHD holding `content` (its length is the virtual size); all-zero blocks stay unallocated unless in `allocateZero`. */
async function writeDynamic(file: string, content: Uint8Array, o: { blockSize?: number; allocateZero?: number[] } = {}): Promise<void> {
  const bs = o.blockSize ?? 2 * MiB;
  const sink = await FileSink.open(file, 'wx');
  try {
    const w = await DynamicWriter.create(sink, { virtualSize: content.length, blockSize: bs, uuid: newUuid() });
    for (let b = 0; b * bs < content.length; b++) {
      const data = content.subarray(b * bs, Math.min(content.length, (b + 1) * bs));
      if (isZero(data) && !o.allocateZero?.includes(b)) continue;
      await w.writeBlock(b, data);
    }
    await w.finish();
  } finally {
    await sink.close();
  }
}

/**
 * A differencing child of `parent` whose own sectors are `runs` ([byte offset, bytes], sector
 * aligned; a run may cross block boundaries). Returns the chain's content (the model).
 */
async function writeChild(file: string, parent: string, parentContent: Uint8Array, runs: Array<[number, Uint8Array]>): Promise<Buffer> {
  const p = await openDisk(parent);
  const link = parentLinkFor(file, parent, p.footer.uniqueId, p.footer.timestamp);
  const bs = p.blockSize;
  const vs = p.virtualSize;
  await p.close();
  const model = Buffer.from(parentContent);
  const blocks = new Map<number, { bitmap: Uint8Array; pieces: Array<[number, Uint8Array]> }>();
  for (const [at, bytes] of runs) {
    expect(at % SECTOR === 0 && bytes.length % SECTOR === 0 && at + bytes.length <= vs).toBe(true);
    model.set(bytes, at);
    for (let x = at; x < at + bytes.length; ) {
      const block = Math.floor(x / bs);
      const end = Math.min(at + bytes.length, (block + 1) * bs);
      let b = blocks.get(block);
      if (!b) blocks.set(block, (b = { bitmap: new Uint8Array(bitmapByteSize(bs)), pieces: [] }));
      setBits(b.bitmap, (x - block * bs) / SECTOR, (end - block * bs) / SECTOR);
      b.pieces.push([x - block * bs, bytes.subarray(x - at, end - at)]);
      x = end;
    }
  }
  const sink = await FileSink.open(file, 'wx');
  try {
    const w = await DynamicWriter.create(sink, { virtualSize: vs, blockSize: bs, uuid: newUuid(), parent: link });
    for (const [block, b] of [...blocks].sort((x, y) => x[0] - y[0])) await w.writeBlockPieces(block, b.bitmap, b.pieces);
    await w.finish();
  } finally {
    await sink.close();
  }
  return model;
}

function randomBytes(n: number): Uint8Array {
  return randomFillSync(new Uint8Array(n));
}

/** Indices of the 64 KiB chunks of `content` holding a non-zero byte. */
function nonZeroChunks(content: Uint8Array): number[] {
  const out: number[] = [];
  for (let c = 0; c * CHUNK < content.length; c++) if (!isZero(content.subarray(c * CHUNK, (c + 1) * CHUNK))) out.push(c);
  return out;
}

/** Indices of the 64 KiB chunks that differ between two contents of equal length. */
function changedChunks(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let c = 0; c * CHUNK < a.length; c++) {
    if (Buffer.compare(a.subarray(c * CHUNK, (c + 1) * CHUNK), b.subarray(c * CHUNK, (c + 1) * CHUNK)) !== 0) out.push(c);
  }
  return out;
}

// -------------------------------------------------------------------------------------------------
// Blobs

async function download(container: string, blob: string, snapshot?: string): Promise<Buffer> {
  let c = svc.getContainerClient(container).getBlobClient(blob);
  if (snapshot) c = c.withSnapshot(snapshot);
  return c.downloadToBuffer();
}

function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  if (a.length !== b.length) return `length ${a.length}, want ${b.length}`;
  if (Buffer.compare(a, b) === 0) return undefined;
  let i = 0;
  while (a[i] === b[i]) i++;
  let j = i;
  while (j < a.length && a[j] !== b[j]) j++;
  return `first difference at byte ${i} (sector ${Math.floor(i / SECTOR)}, chunk ${Math.floor(i / CHUNK)}), ${j - i} bytes differ from there`;
}

/** Checks a fixed-VHD footer field by field (offsets from the specification). */
function expectFixedFooter(f: Buffer, virtualSize: number, what: string, uuid?: Uint8Array): void {
  expect(f.length, what).toBe(512);
  expect(f.subarray(0, 8).toString('latin1'), `${what}: cookie`).toBe('conectix');
  expect(f.readUInt32BE(0x0c), `${what}: format version`).toBe(0x00010000);
  expect(f.readBigUInt64BE(0x10), `${what}: data offset (none for a fixed disk)`).toBe(0xffffffffffffffffn);
  expect(f.readBigUInt64BE(0x28), `${what}: original size`).toBe(BigInt(virtualSize));
  expect(f.readBigUInt64BE(0x30), `${what}: current size`).toBe(BigInt(virtualSize));
  expect(f.readUInt32BE(0x3c), `${what}: disk type`).toBe(2);
  // CHS: the specification's geometry when it describes the size exactly, else the maximum
  // (65535/16/255, the Disk2vhd convention that sends readers to the current size).
  const [cyl, heads, spt] = [f.readUInt16BE(0x38), f[0x3a], f[0x3b]];
  const exact = cyl * heads * spt * SECTOR === virtualSize;
  expect(exact || (cyl === 65535 && heads === 16 && spt === 255), `${what}: CHS ${cyl}/${heads}/${spt}`).toBe(true);
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 0x40 || i >= 0x44) sum += f[i];
  expect(f.readUInt32BE(0x40), `${what}: checksum`).toBe(~sum >>> 0);
  if (uuid) expect(Buffer.from(f.subarray(0x44, 0x54)).equals(Buffer.from(uuid)), `${what}: the source's UUID`).toBe(true);
}

/** The blob is exactly content, zeros to `virtualSize`, a fixed footer; its Content-MD5 is its MD5. */
async function expectBlob(container: string, blob: string, content: Uint8Array, virtualSize: number, o: { snapshot?: string; uuid?: Uint8Array; md5?: boolean } = {}): Promise<Buffer> {
  const what = `${container}/${blob}${o.snapshot ? `@${o.snapshot}` : ''}`;
  const bytes = await download(container, blob, o.snapshot);
  expect(bytes.length, `${what}: blob size`).toBe(virtualSize + 512);
  const body = Buffer.alloc(virtualSize);
  body.set(content.subarray(0, Math.min(content.length, virtualSize)));
  expect(firstDifference(bytes.subarray(0, virtualSize), body), `${what}: content`).toBeUndefined();
  expectFixedFooter(bytes.subarray(virtualSize), virtualSize, what, o.uuid);
  if (o.md5 !== false) {
    let c = svc.getContainerClient(container).getBlobClient(blob);
    if (o.snapshot) c = c.withSnapshot(o.snapshot);
    const props = await c.getProperties();
    expect(props.contentMD5 && Buffer.from(props.contentMD5).toString('base64'), `${what}: Content-MD5`).toBe(createHash('md5').update(bytes).digest('base64'));
  }
  return bytes;
}

function uuidOf(file: string): Uint8Array {
  const b = fs.readFileSync(file);
  return b.subarray(b.length - 512 + 0x44, b.length - 512 + 0x54);
}

function opts(extra: UploadOptions = {}): UploadOptions {
  return { connectionString: az.connectionString, journalDir, workers: 2, ...extra };
}


async function blobExists(container: string, blob: string): Promise<boolean> {
  return svc.getContainerClient(container).getBlobClient(blob).exists();
}

/** Options that abort an upload once `afterBytes` of its plan have been sent (progress of the hash phase ignored). */
function abortDuringUpload(afterBytes: number): Pick<UploadOptions, 'signal' | 'onPhase' | 'onProgress'> {
  const ac = new AbortController();
  let sending = false;
  return {
    signal: ac.signal,
    onPhase: (phase) => {
      sending = phase === 'upload';
    },
    onProgress: (p) => {
      if (sending && p.done >= afterBytes) ac.abort(new Error('test abort'));
    },
  };
}

function cli(args: string[], env?: NodeJS.ProcessEnv): Promise<ProcessRun> {
  return runProcess(process.execPath, [CLI, ...args], { cwd: work, timeoutMs: 60_000, env: env ? { ...process.env, ...env } : process.env });
}

// -------------------------------------------------------------------------------------------------

describe('content: every form lands as the exact fixed VHD', () => {
  const C = 'content';

  it('a dynamic disk (partial blocks, an allocated all-zero block, unallocated blocks)', async () => {
    const content = contentWith(24 * MiB, [
      [0, 3 * KiB],
      [2 * MiB + 512, 700 * KiB],
      [9 * MiB - 4 * KiB, 8 * KiB],
      [20 * MiB, 3 * MiB + 512],
      [24 * MiB - SECTOR, SECTOR],
    ]);
    const file = path.join(work, 'dyn.vhd');
    await writeDynamic(file, content, { allocateZero: [6] });
    expect(Buffer.compare(await readVirtual(file), content)).toBe(0);
    const r = await upload(file, `${C}/dyn.vhd`, opts());
    expect(r).toMatchObject({ method: 'full', virtualSize: 24 * MiB, blobSize: 24 * MiB + 512, alreadyComplete: false, resumedFrom: 0, bytesCleared: 0, base: null });
    expect(r.bytesUploaded).toBe(nonZeroChunks(content).length * CHUNK + 512);
    await expectBlob(C, 'dyn.vhd', content, 24 * MiB, { uuid: uuidOf(file) });
    expect(r.contentMd5).toBe(createHash('md5').update(await download(C, 'dyn.vhd')).digest('base64'));
  });

  it('a fixed disk and a raw image (size not a whole sector, not a whole MiB)', async () => {
    const size = 20 * MiB + 3 * KiB;
    const content = contentWith(size, [[MiB, 5 * MiB], [size - 2 * KiB, 2 * KiB]]);
    const raw = path.join(work, 'fixed-src.raw');
    fs.writeFileSync(raw, content);
    const fixed = path.join(work, 'fixed.vhd');
    await convert(raw, fixed, { to: 'fixed', from: 'raw' });
    const r1 = await upload(fixed, `${C}/fixed.vhd`, opts());
    expect(r1.method).toBe('full');
    expect(r1.virtualSize).toBe(21 * MiB);
    await expectBlob(C, 'fixed.vhd', content, 21 * MiB, { uuid: uuidOf(fixed) });

    // A raw image whose length is not a multiple of 512: zero padded, then rounded to a whole MiB.
    const oddRaw = path.join(work, 'odd.img');
    const odd = contentWith(21 * MiB - 700, [[0, 64 * KiB], [21 * MiB - 700 - 3000, 3000]]);
    fs.writeFileSync(oddRaw, odd);
    const r2 = await upload(oddRaw, `${C}/odd.vhd`, opts());
    expect(r2.virtualSize).toBe(21 * MiB);
    await expectBlob(C, 'odd.vhd', odd, 21 * MiB);
    // Kept at its own size it is a whole number of sectors (the reader pads the last one).
    const r3 = await upload(oddRaw, `${C}/odd-noresize.vhd`, opts({ resize: false }));
    expect(r3.virtualSize).toBe(21 * MiB - 512);
    await expectBlob(C, 'odd-noresize.vhd', odd, 21 * MiB - 512);
  });

  it('a differencing chain: partial-sector edits over parent data, new sectors, runs across block and 4 MiB boundaries', async () => {
    const rnd = mulberry32(11);
    const parentContent = contentWith(32 * MiB, [[0, 6 * MiB], [10 * MiB, 3 * MiB], [30 * MiB, 2 * MiB]]);
    const parent = path.join(work, 'chain-parent.vhd');
    await writeDynamic(parent, parentContent);
    const runs: Array<[number, Uint8Array]> = [];
    // Partial-sector writes: the child's sector is the parent's with a few bytes changed.
    for (const at of [513, 2 * MiB + 100, 5 * MiB + 4000, 11 * MiB + 7, 31 * MiB + 511]) {
      const s = Math.floor(at / SECTOR) * SECTOR;
      const sector = Uint8Array.from(parentContent.subarray(s, s + SECTOR));
      for (let k = 0; k < 3; k++) sector[(at - s + k) % SECTOR] ^= 0x5a;
      runs.push([s, sector]);
    }
    // New sectors where the parent has none, odd lengths at random places.
    for (let k = 0; k < 6; k++) {
      const count = 1 + 2 * Math.floor(rnd() * 20);
      const first = 14 * MiB / SECTOR + Math.floor(rnd() * (14 * MiB / SECTOR - count));
      runs.push([first * SECTOR, randomBytes(count * SECTOR)]);
    }
    runs.push([4 * MiB - 3 * SECTOR, randomBytes(7 * SECTOR)]); // across a block and a 4 MiB page-write boundary
    // Runs may overlap: the later one wins in the model and in the child (written in order per block).
    const child = path.join(work, 'chain-child.vhd');
    const dedup = new Map<number, Uint8Array>();
    for (const [at, bytes] of runs) for (let x = 0; x < bytes.length; x += SECTOR) dedup.set(at + x, bytes.subarray(x, x + SECTOR));
    const sectors: Array<[number, Uint8Array]> = [...dedup].sort((a, b) => a[0] - b[0]);
    const model = await writeChild(child, parent, parentContent, sectors);
    expect(Buffer.compare(await readVirtual(child), model)).toBe(0);
    const r = await upload(child, `${C}/chain.vhd`, opts());
    expect(r.method).toBe('full');
    expect(r.bytesUploaded).toBe(nonZeroChunks(model).length * CHUNK + 512);
    await expectBlob(C, 'chain.vhd', model, 32 * MiB, { uuid: uuidOf(child) });
  });

  it('a size that is not a whole MiB: rounded up by default, kept with resize: false', async () => {
    const size = 20 * MiB + 7 * SECTOR;
    const content = contentWith(size, [[0, 100 * KiB], [size - 5 * SECTOR, 5 * SECTOR]]);
    const file = path.join(work, 'odd-size.vhd');
    await writeDynamic(file, content, { blockSize: 512 * KiB });
    const r1 = await upload(file, `${C}/odd-size.vhd`, opts());
    expect(r1).toMatchObject({ virtualSize: 21 * MiB, blobSize: 21 * MiB + 512 });
    await expectBlob(C, 'odd-size.vhd', content, 21 * MiB, { uuid: uuidOf(file) });
    const r2 = await upload(file, `${C}/odd-size-kept.vhd`, opts({ resize: false }));
    expect(r2).toMatchObject({ virtualSize: size, blobSize: size + 512 });
    await expectBlob(C, 'odd-size-kept.vhd', content, size, { uuid: uuidOf(file) });
    // Without a Content-MD5 when asked.
    const r3 = await upload(file, `${C}/odd-size-nomd5.vhd`, opts({ md5: false }));
    expect(r3.contentMd5).toBeNull();
    const props = await svc.getContainerClient(C).getBlobClient('odd-size-nomd5.vhd').getProperties();
    expect(props.contentMD5).toBeUndefined();
    await expectBlob(C, 'odd-size-nomd5.vhd', content, 21 * MiB, { md5: false });
  });
});

describe('sparse: zero regions are never sent', () => {
  const C = 'sparse';

  it('a mostly empty 100 MiB disk sends its non-zero chunks and the footer, nothing else', async () => {
    const size = 100 * MiB;
    const content = contentWith(size, [
      [5 * MiB + 4 * KiB, 100 * KiB],
      [50 * MiB - SECTOR, 2 * SECTOR], // across a chunk boundary: two chunks
      [77 * MiB + 3 * CHUNK + 1000, 10],
      [size - SECTOR, SECTOR],
    ]);
    const file = path.join(work, 'sparse.vhd');
    await writeDynamic(file, content, { allocateZero: [10, 11, 30] });
    const chunks = nonZeroChunks(content);
    const r = await upload(file, `${C}/sparse.vhd`, opts());
    expect(r.bytesUploaded).toBe(chunks.length * CHUNK + 512);
    expect(r.bytesPlanned).toBe(chunks.length * CHUNK + 512);
    expect(r.bytesCleared).toBe(0);
    expect(r.bytesFullUpload).toBe(size + 512);
    expect(r.bytesUploaded / r.bytesFullUpload).toBeLessThan(0.01);
    // What the blob holds as pages: inside the non-zero chunks and the footer only.
    const allowed = new Set(chunks);
    const pages = [];
    for await (const p of svc.getContainerClient(C).getPageBlobClient('sparse.vhd').listPageRanges()) pages.push([p.start, p.end + 1]);
    expect(pages.length).toBeGreaterThan(0);
    for (const [a, b] of pages) {
      if (a >= size) continue; // the footer
      for (let c = Math.floor(a / CHUNK); c * CHUNK < Math.min(b, size); c++) expect(allowed.has(c), `page range ${a}–${b} covers zero chunk ${c}`).toBe(true);
    }
    await expectBlob(C, 'sparse.vhd', content, size, { uuid: uuidOf(file) });
  });
});

describe('dedup against a base', () => {
  // Every derived upload starts from a server-side copy of its base and must leave the base blob
  // byte-identical: each base is read back after each upload made from it. (Azurite 3.35.0 shared a
  // copy's page list with its source, so writes to the copy showed in the base; the Azurite that
  // npm ci installs is patched, fixtures/patches, and test/azurite.test.ts keeps it so.)
  const C = 'dedup';
  const size = 40 * MiB;
  let baseContent: Buffer;
  let basePath: string;
  let baseResult: UploadResult;
  let gen2Changed: number[];
  let childOwn = 0;

  beforeAll(async () => {
    baseContent = contentWith(size, [[0, 36 * MiB]]);
    basePath = path.join(work, 'dedup-base.vhd');
    await writeDynamic(basePath, baseContent);
    baseResult = await upload(basePath, `${C}/base.vhd`, opts());
    for (const b of ['base-c.vhd', 'base-t.vhd']) expect((await upload(basePath, `${C}/${b}`, opts())).digest).toBe(baseResult.digest);
  });

  it('the base: a full upload of its non-zero chunks', async () => {
    expect(baseResult.method).toBe('full');
    expect(baseResult.manifest).toMatch(/^base\.vhd\.[0-9a-f]+\.vhdkit-manifest$/);
    expect(baseResult.bytesUploaded).toBe(36 * MiB + 512);
    await expectBlob(C, 'base.vhd', baseContent, size, { uuid: uuidOf(basePath) });
  });

  it("a full new disk: only the changed chunks are written, chunks that became zero are cleared ('chunks')", async () => {
    const rnd = mulberry32(7);
    const gen2 = Buffer.from(baseContent);
    const used = new Set<number>();
    const pick = (lo: number, hi: number): number => {
      for (;;) {
        const c = lo + Math.floor(rnd() * (hi - lo));
        if (!used.has(c)) {
          used.add(c);
          return c;
        }
      }
    };
    // 12 scattered 4 KiB pages rewritten, in distinct chunks.
    for (let k = 0; k < 12; k++) {
      const c = pick(0, (36 * MiB) / CHUNK);
      const page = Math.floor(rnd() * (CHUNK / (4 * KiB)));
      randomFillSync(gen2, c * CHUNK + page * 4 * KiB, 4 * KiB);
    }
    // Two chunks of data that became zero, and one new chunk in the base's zero tail.
    const zeroed = [pick(0, (36 * MiB) / CHUNK), pick(0, (36 * MiB) / CHUNK)];
    for (const c of zeroed) gen2.fill(0, c * CHUNK, (c + 1) * CHUNK);
    randomFillSync(gen2, 38 * MiB + 4 * KiB, 4 * KiB);
    const file = path.join(work, 'dedup-gen2.vhd');
    await writeDynamic(file, gen2);
    gen2Changed = changedChunks(baseContent, gen2);
    expect(gen2Changed.length).toBe(15);

    const r = await upload(file, `${C}/gen2.vhd`, opts({ base: 'base.vhd' }));
    expect(r).toMatchObject({ method: 'chunks', base: 'base.vhd', alreadyComplete: false });
    const written = gen2Changed.length - zeroed.length;
    expect(r.bytesUploaded).toBeLessThanOrEqual(1.1 * gen2Changed.length * CHUNK + 512);
    expect(r.bytesUploaded).toBe(written * CHUNK + 512);
    expect(r.bytesCleared).toBe(zeroed.length * CHUNK);
    expect(r.bytesDiffering).toBe(gen2Changed.length * CHUNK);
    await expectBlob(C, 'gen2.vhd', gen2, size, { uuid: uuidOf(file) });
    await expectBlob(C, 'base.vhd', baseContent, size, { uuid: uuidOf(basePath) });
  });

  it("a differencing child of the base's disk: exactly its own sectors ('sectors'); own zero sectors are cleared", async () => {
    const rnd = mulberry32(99);
    const runs: Array<[number, Uint8Array]> = [];
    let nonZero = 0;
    // Odd runs of random sectors, spaced 1 MiB apart so that none touch, some in the zero tail.
    for (let k = 0; k < 12; k++) {
      const count = 1 + 2 * Math.floor(rnd() * 9);
      const first = ((3 * k + 1) * MiB) / SECTOR + Math.floor(rnd() * 1000);
      runs.push([first * SECTOR, randomBytes(count * SECTOR)]);
      nonZero += count * SECTOR;
    }
    runs.push([8 * MiB - 2 * SECTOR, randomBytes(5 * SECTOR)]); // across a block and a 4 MiB boundary
    nonZero += 5 * SECTOR;
    const zeroRun: [number, Uint8Array] = [20 * MiB + 300 * SECTOR, new Uint8Array(3 * SECTOR)]; // zeros over the parent's data
    runs.push(zeroRun);
    const child = path.join(work, 'dedup-child.vhd');
    const model = await writeChild(child, basePath, baseContent, runs);
    expect(firstDifference(await readVirtual(child), model)).toBeUndefined();
    childOwn = nonZero + zeroRun[1].length;

    const r = await upload(child, `${C}/child.vhd`, opts({ base: 'base-c.vhd' }));
    expect(r).toMatchObject({ method: 'sectors', base: 'base-c.vhd' });
    await expectBlob(C, 'base-c.vhd', baseContent, size, { uuid: uuidOf(basePath) });
    expect(r.bytesUploaded).toBe(nonZero + 512);
    expect(r.bytesCleared).toBe(zeroRun[1].length);
    expect(r.bytesDiffering).toBe(childOwn);
    await expectBlob(C, 'child.vhd', model, size, { uuid: uuidOf(child) });

    // The child's sectors are read a window at a time (memory bounded for any child): any window
    // gives the same ranges, in order, each inside its window.
    const img = await openDisk(child);
    try {
      const collect = async (w?: number) => {
        const out: Range[] = [];
        for await (const r of chainSectorRanges(img.chain.slice(0, 1), size, w)) out.push(r);
        return out;
      };
      const whole = await collect();
      expect(totalLength(whole)).toBe(childOwn);
      for (const w of [4 * MiB, 3 * MiB + 512, 64 * KiB]) {
        const parts = await collect(w);
        for (let i = 1; i < parts.length; i++) expect(parts[i][0]).toBeGreaterThanOrEqual(parts[i - 1][1]);
        for (const [a, b] of parts) expect(Math.floor(a / w), `[${a}, ${b}) inside one window of ${w}`).toBe(Math.floor((b - 1) / w));
        expect(normalizeRanges(parts)).toEqual(whole);
      }
    } finally {
      await img.close();
    }

    // The parent file touched (new mtime, same bytes): its identity is then checked by hash, still 'sectors'.
    const later = new Date(Date.now() + 60_000);
    fs.utimesSync(basePath, later, later);
    const r2 = await upload(child, `${C}/child-touched.vhd`, opts({ base: 'base-t.vhd' }));
    expect(r2.method).toBe('sectors');
    expect(r2.bytesUploaded).toBe(nonZero + 512);
    expect(r2.warnings).toEqual([]);
    await expectBlob(C, 'child-touched.vhd', model, size, { uuid: uuidOf(child) });
    await expectBlob(C, 'base-t.vhd', baseContent, size, { uuid: uuidOf(basePath) });
  });

  it('generations lists the base and what each generation differs in', async () => {
    const g = await generations(C, { connectionString: az.connectionString });
    const by = new Map(g.generations.map((x) => [x.blob, x]));
    expect([...by.keys()].sort()).toEqual(['base-c.vhd', 'base-t.vhd', 'base.vhd', 'child-touched.vhd', 'child.vhd', 'gen2.vhd']);
    expect(g.otherBlobs).toBe(0); // the manifest sidecars are not counted
    // Read last, after every other test of this block: the base of gen2 still holds exactly the base.
    expect(firstDifference((await download(C, 'base.vhd')).subarray(0, size), baseContent), 'base.vhd after every derived upload').toBeUndefined();
    expect(by.get('base.vhd')).toMatchObject({ state: 'complete', base: null, method: 'full', differingBytes: null, dataBytes: 36 * MiB, virtualSize: size, blobSize: size + 512, hint: null });
    expect(by.get('gen2.vhd')).toMatchObject({ state: 'complete', base: 'base.vhd', method: 'chunks', differingBytes: gen2Changed.length * CHUNK, hint: null });
    expect(by.get('child.vhd')).toMatchObject({ state: 'complete', base: 'base-c.vhd', method: 'sectors', differingBytes: childOwn, hint: null });
    for (const x of g.generations) {
      expect(x.snapshot).toBeNull();
      expect(x.contentMd5).toMatch(/^[A-Za-z0-9+/]{22}==$/);
      expect(x.digest).toMatch(/^[0-9a-f]+$/);
    }
    // A tiny threshold: every generation with a base gets a merge hint.
    const g2 = await generations(C, { connectionString: az.connectionString, mergeThreshold: 1e-6 });
    for (const x of g2.generations) {
      if (x.blob.startsWith('base')) expect(x.hint).toBeNull();
      else expect(x.hint, x.blob).toMatch(/merge/);
    }
  });

  it('a base that is not a complete vhdkit upload is BASE_INVALID, and nothing is written', async () => {
    const cc = svc.getContainerClient(C);
    await cc.getPageBlobClient('foreign.vhd').create(size + 512);
    await cc.getPageBlobClient('unfinished.vhd').create(size + 512, { metadata: { vhdkit: '1', vhdkitstate: 'uploading', vhdkitdigest: baseResult.digest } });
    const file = path.join(work, 'dedup-gen2.vhd');
    for (const base of ['missing.vhd', 'foreign.vhd', 'unfinished.vhd', 'nosuchcontainer/base.vhd']) {
      const e = await rejection(upload(file, `${C}/never-${base.replace('/', '-')}`, opts({ base })));
      expect(e.code, base).toBe(ErrorCodes.BASE_INVALID);
      expect(await blobExists(C, `never-${base.replace('/', '-')}`)).toBe(false);
    }
    // Base and snapshot together, or the destination as its own base: usage errors.
    expect((await rejection(upload(file, `${C}/x.vhd`, opts({ base: 'base.vhd', snapshot: true })))).code).toBe(ErrorCodes.USAGE);
    expect((await rejection(upload(file, `${C}/base.vhd`, opts({ base: 'base.vhd' })))).code).toBe(ErrorCodes.USAGE);
  });
});

describe('--snapshot: generations as snapshots of one blob', () => {
  const C = 'snaps';

  it('each generation is a snapshot holding exactly that generation', async () => {
    const size = 24 * MiB;
    const gen1 = contentWith(size, [[0, 20 * MiB]]);
    const gen2 = Buffer.from(gen1);
    randomFillSync(gen2, 3 * MiB, 4 * KiB);
    randomFillSync(gen2, 17 * MiB + 64 * KiB, 8 * KiB);
    gen2.fill(0, 10 * MiB, 10 * MiB + CHUNK);
    const f1 = path.join(work, 'snap-gen1.vhd');
    const f2 = path.join(work, 'snap-gen2.vhd');
    await writeDynamic(f1, gen1);
    await writeDynamic(f2, gen2);

    const r1 = await upload(f1, `${C}/img.vhd`, opts({ snapshot: true }));
    expect(r1.method).toBe('full');
    expect(r1.snapshot).toEqual(expect.any(String));
    const r2 = await upload(f2, `${C}/img.vhd`, opts({ snapshot: true }));
    expect(r2).toMatchObject({ method: 'chunks', base: 'img.vhd (previous generation)' });
    expect(r2.snapshot).toEqual(expect.any(String));
    expect(r2.snapshot).not.toBe(r1.snapshot);
    expect(r2.bytesUploaded).toBe(2 * CHUNK + 512);
    expect(r2.bytesCleared).toBe(CHUNK);
    // The same generation again: already there, no new snapshot.
    const r3 = await upload(f2, `${C}/img.vhd`, opts({ snapshot: true }));
    expect(r3).toMatchObject({ alreadyComplete: true, bytesUploaded: 0, snapshot: null });

    const g = await generations(C, { connectionString: az.connectionString });
    const img = g.generations.filter((x) => x.blob === 'img.vhd');
    expect(img.map((x) => x.snapshot)).toEqual([r1.snapshot, r2.snapshot, null]);
    expect(img[1]).toMatchObject({ state: 'complete', base: 'img.vhd (previous generation)', method: 'chunks', differingBytes: 3 * CHUNK });
    await expectBlob(C, 'img.vhd', gen1, size, { snapshot: r1.snapshot!, uuid: uuidOf(f1) });
    await expectBlob(C, 'img.vhd', gen2, size, { snapshot: r2.snapshot!, uuid: uuidOf(f2) });
    await expectBlob(C, 'img.vhd', gen2, size, { uuid: uuidOf(f2) });
  });

  // gen1 complete; gen2 interrupted after its first 4 MiB landed; then gen3 (equal to gen1 where
  // gen2 wrote) with --overwrite: the blob must then hold gen3, not gen2's leftovers.
  const int = { size: 24 * MiB, gen1: Buffer.alloc(0), gen3: Buffer.alloc(0), s1: '', s3: '' };

  it('an interrupted generation is replaced by another disk only with --overwrite', async () => {
    const gen1 = contentWith(int.size, [[0, 20 * MiB]]);
    const gen2 = Buffer.from(gen1);
    randomFillSync(gen2, 0, 8 * MiB); // gen2 rewrites the first 8 MiB
    const gen3 = Buffer.from(gen1);
    randomFillSync(gen3, 15 * MiB, 4 * KiB); // gen3 changes one page elsewhere
    const [f1, f2, f3] = ['a', 'b', 'c'].map((n) => path.join(work, `snapint-${n}.vhd`));
    await writeDynamic(f1, gen1);
    await writeDynamic(f2, gen2);
    await writeDynamic(f3, gen3);
    const r1 = await upload(f1, `${C}/int.vhd`, opts({ snapshot: true }));
    const e = await rejection(upload(f2, `${C}/int.vhd`, opts({ snapshot: true, concurrency: 1, ...abortDuringUpload(4 * MiB) })));
    expect(e.code).toBe(ErrorCodes.ABORTED);
    const partial = await download(C, 'int.vhd');
    expect(Buffer.compare(partial.subarray(0, 4 * MiB), gen2.subarray(0, 4 * MiB)), 'gen2 landed in part before the abort').toBe(0);
    expect((await rejection(upload(f3, `${C}/int.vhd`, opts({ snapshot: true })))).code).toBe(ErrorCodes.BLOB_EXISTS);
    const r3 = await upload(f3, `${C}/int.vhd`, opts({ snapshot: true, overwrite: true }));
    expect(r3.snapshot).toEqual(expect.any(String));
    await expectBlob(C, 'int.vhd', gen1, int.size, { snapshot: r1.snapshot! });
    Object.assign(int, { gen1, gen3, s1: r1.snapshot!, s3: r3.snapshot! });
  });

  // Was a bug: the interrupted run's recorded base was taken as what the blob holds, so the chunks
  // where gen3 equals gen1 were skipped over gen2's leftovers. The blob and gen3's snapshot must hold gen3.
  it('… and then holds exactly the new disk', async () => {
    expect(int.s3).not.toBe('');
    await expectBlob(C, 'int.vhd', int.gen3, int.size, { snapshot: int.s3 });
  });
});

describe('safety', () => {
  const C = 'safety';
  let disk: string;
  let diskContent: Buffer;

  beforeAll(async () => {
    diskContent = contentWith(20 * MiB, [[MiB, 2 * MiB], [15 * MiB, 64 * KiB]]);
    disk = path.join(work, 'safety.vhd');
    await writeDynamic(disk, diskContent);
    await svc.getContainerClient(C).createIfNotExists();
  });

  it('one disk uploaded to two blobs at once: both complete (uploads share the lock on their source); no lock marks left', async () => {
    // A third reader holds the disk throughout, so the two uploads surely overlap with it and each other.
    const hold = acquireSharedLock(disk, 'test reader');
    let runs: ProcessRun[];
    try {
      runs = await Promise.all(
        ['together-a.vhd', 'together-b.vhd'].map((name) => cli(['upload', disk, `${C}/${name}`, '--journal-dir', journalDir, '--json'], { AZURE_STORAGE_CONNECTION_STRING: az.connectionString })),
      );
    } finally {
      hold();
    }
    for (const run of runs) expect(run.code, run.stderr).toBe(0);
    await expectBlob(C, 'together-a.vhd', diskContent, 20 * MiB);
    await expectBlob(C, 'together-b.vhd', diskContent, 20 * MiB);
    expect(fs.readdirSync(path.dirname(disk)).filter((n) => n.includes('.vhdkit-'))).toEqual([]);
  });

  it('a merge into the disk running (its lock held, before and after its journal exists): LOCKED (CLI exit 1) naming it; interrupted (journal, no live holder): MERGE_PENDING; no blob either way', async () => {
    const env = { AZURE_STORAGE_CONNECTION_STRING: az.connectionString };
    const send = () => cli(['upload', disk, `${C}/during-merge.vhd`, '--journal-dir', journalDir], env);
    const journal = `${disk}.vhdkit-merge.json`;
    const release = acquireLock(disk, 'merge'); // what vhdkit merge holds while it plans and writes
    try {
      const planning = await send();
      expect(planning.code).toBe(1);
      expect(planning.stderr).toMatch(/^vhdkit: .*safety\.vhd.*locked by merge.*\[LOCKED\]\n$/);
      await expect(upload(disk, `${C}/during-merge.vhd`, { connectionString: az.connectionString, journalDir })).rejects.toMatchObject({ code: ErrorCodes.LOCKED });
      fs.writeFileSync(journal, '{}'); // the merge has begun writing
      const writing = await send();
      expect(writing.code).toBe(1);
      expect(writing.stderr).toMatch(/^vhdkit: .*safety\.vhd: a merge into this disk is running: merge \(pid \d+ .*\[LOCKED\]\n$/);
    } finally {
      release();
    }
    try {
      const interrupted = await send();
      expect(interrupted.code).toBe(2);
      expect(interrupted.stderr).toMatch(/^vhdkit: .*safety\.vhd: a merge into this disk was interrupted.*\[MERGE_PENDING\]\n$/);
    } finally {
      fs.rmSync(journal, { force: true });
    }
    expect(await svc.getContainerClient(C).getPageBlobClient('during-merge.vhd').exists()).toBe(false);
    expect(fs.readdirSync(path.dirname(disk)).filter((n) => n.includes('.vhdkit-'))).toEqual([]);
  });

  it('an existing blob that is not a vhdkit upload is BLOB_EXISTS (CLI exit 2) and untouched, unless overwrite', async () => {
    const pb = svc.getContainerClient(C).getPageBlobClient('theirs.vhd');
    await pb.create(MiB);
    const junk = Buffer.alloc(MiB, 0xab);
    await pb.uploadPages(junk, 0, MiB);
    const e = await rejection(upload(disk, `${C}/theirs.vhd`, opts()));
    expect(e.code).toBe(ErrorCodes.BLOB_EXISTS);
    const run = await cli(['upload', disk, `${C}/theirs.vhd`, '--journal-dir', journalDir, '--json'], { AZURE_STORAGE_CONNECTION_STRING: az.connectionString });
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ ok: false, error: { code: 'BLOB_EXISTS' } });
    expect(run.stderr).toMatch(/BLOB_EXISTS/);
    expect(Buffer.compare(await download(C, 'theirs.vhd'), junk)).toBe(0);

    const r = await upload(disk, `${C}/theirs.vhd`, opts({ overwrite: true }));
    expect(r.method).toBe('full');
    await expectBlob(C, 'theirs.vhd', diskContent, 20 * MiB);
  });

  it('the same disk twice: alreadyComplete, nothing sent, the blob untouched; another disk: BLOB_EXISTS', async () => {
    const r1 = await upload(disk, `${C}/twice.vhd`, opts());
    expect(r1.alreadyComplete).toBe(false);
    const before = await svc.getContainerClient(C).getBlobClient('twice.vhd').getProperties();
    const r2 = await upload(disk, `${C}/twice.vhd`, opts());
    expect(r2).toMatchObject({ alreadyComplete: true, bytesUploaded: 0, bytesCleared: 0, digest: r1.digest, contentMd5: r1.contentMd5 });
    const after = await svc.getContainerClient(C).getBlobClient('twice.vhd').getProperties();
    expect(after.etag).toBe(before.etag);
    const run = await cli(['upload', disk, `${C}/twice.vhd`, '--journal-dir', journalDir, '--json', '--connection-string', az.connectionString]);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ alreadyComplete: true, bytesUploaded: 0 });

    const other = path.join(work, 'safety-other.vhd');
    const otherContent = Buffer.from(diskContent);
    randomFillSync(otherContent, 0, 4 * KiB);
    await writeDynamic(other, otherContent);
    expect((await rejection(upload(other, `${C}/twice.vhd`, opts()))).code).toBe(ErrorCodes.BLOB_EXISTS);
    await expectBlob(C, 'twice.vhd', diskContent, 20 * MiB);
  });

  it('a blob another writer holds the lease of: LOCKED (CLI exit 1), untouched; after an upload, success or failure, no lease is left', async () => {
    const r1 = await upload(disk, `${C}/leased.vhd`, opts());
    const client = svc.getContainerClient(C).getPageBlobClient('leased.vhd');
    const idle = await client.getProperties();
    expect(idle.leaseState).toBe('available');
    const other = path.join(work, 'safety-leased-other.vhd');
    const otherContent = Buffer.from(diskContent);
    randomFillSync(otherContent, 5 * MiB, 5 * MiB + 64 * KiB);
    await writeDynamic(other, otherContent);
    const theirs = client.getBlobLeaseClient();
    await theirs.acquireLease(60);
    try {
      const e = await rejection(upload(other, `${C}/leased.vhd`, opts({ overwrite: true })));
      expect(e.code).toBe(ErrorCodes.LOCKED);
      expect(e.message).toMatch(/leased by another writer/);
      const run = await cli(['upload', other, `${C}/leased.vhd`, '--overwrite', '--journal-dir', journalDir], { AZURE_STORAGE_CONNECTION_STRING: az.connectionString });
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/leased by another writer.*\[LOCKED\]/);
      const props = await client.getProperties();
      expect(props.etag).toBe(idle.etag); // not one byte or field changed
      expect(props.metadata?.vhdkitdigest).toBe(r1.digest);
      // generations says an upload is writing it (its lease), not that it was interrupted.
      await client.setMetadata({ ...props.metadata, vhdkitstate: 'uploading' }, { conditions: { leaseId: theirs.leaseId } });
      const listed = (await generations(C, { connectionString: az.connectionString })).generations.find((g: Generation) => g.blob === 'leased.vhd' && !g.snapshot)!;
      expect(listed.hint).toMatch(/unfinished upload, leased: being written now/);
    } finally {
      await theirs.releaseLease();
    }
    const r2 = await upload(other, `${C}/leased.vhd`, opts({ overwrite: true }));
    expect(r2.digest).not.toBe(r1.digest);
    await expectBlob(C, 'leased.vhd', otherContent, 20 * MiB);
    expect((await client.getProperties()).leaseState).toBe('available');
    // A failed upload (aborted mid-way) gives its lease back too; the rerun completes.
    const big = path.join(work, 'safety-leased-big.vhd');
    const bigContent = contentWith(64 * MiB, [[0, 64 * MiB]]);
    await writeDynamic(big, bigContent);
    expect((await rejection(upload(big, `${C}/leased.vhd`, opts({ overwrite: true, ...abortDuringUpload(8 * MiB) })))).code).toBe(ErrorCodes.ABORTED);
    expect((await client.getProperties()).leaseState).toBe('available');
    await upload(big, `${C}/leased.vhd`, opts({ overwrite: true }));
    await expectBlob(C, 'leased.vhd', bigContent, 64 * MiB);
  });

  it('two uploads to one blob at the same time (one machine, one journal folder): one completes, the other is LOCKED', async () => {
    const results = await Promise.allSettled([upload(disk, `${C}/raced.vhd`, opts()), upload(disk, `${C}/raced.vhd`, opts())]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect(failed[0].reason).toMatchObject({ code: ErrorCodes.LOCKED });
    await expectBlob(C, 'raced.vhd', diskContent, 20 * MiB);
    expect((await svc.getContainerClient(C).getBlobClient('raced.vhd').getProperties()).leaseState).toBe('available');
    // The loser left no claim: the same upload again finds the blob complete.
    expect((await upload(disk, `${C}/raced.vhd`, opts())).alreadyComplete).toBe(true);
  });

  it("the local journal's lease id: taken back after a killed run (its process gone), never shared with a running one", async () => {
    const journalFile = (blobName: string) =>
      path.join(journalDir, `${createHash('sha256').update(publicUrl(parseDestination(`${C}/${blobName}`, { connectionString: az.connectionString }))).digest('hex').slice(0, 32)}.json`);
    const leaseId = '00000000-0000-4000-8000-00000000beef';
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    const live = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    try {
      for (const [name, pid, host, expectLocked] of [
        ['journal-dead.vhd', dead, os.hostname(), false],
        ['journal-live.vhd', live.pid!, os.hostname(), true],
        // A journal folder shared with another machine: its pids say nothing here.
        ['journal-elsewhere.vhd', dead, 'another-host', true],
      ] as const) {
        // A run of this machine holds the blob's lease under the id in the journal, as a killed or a running one would.
        const pb = svc.getContainerClient(C).getPageBlobClient(name);
        await pb.create(MiB);
        await pb.getBlobLeaseClient(leaseId).acquireLease(60);
        fs.mkdirSync(journalDir, { recursive: true });
        fs.writeFileSync(journalFile(name), JSON.stringify({ kind: 'vhdkit-upload', destination: 'x', plan: 'p', done: 0, lease: leaseId, pid, host }));
        const run = upload(disk, `${C}/${name}`, opts({ overwrite: true }));
        if (expectLocked) {
          expect((await rejection(run)).code).toBe(ErrorCodes.LOCKED);
          await pb.getBlobLeaseClient(leaseId).releaseLease();
        } else {
          await run;
          await expectBlob(C, name, diskContent, 20 * MiB);
          expect((await pb.getProperties()).leaseState).toBe('available');
        }
      }
    } finally {
      live.kill();
    }
  });

  it('--base onto a blob that exists: the copy never carries a lease (Azure refuses a finite one on Copy Blob), the result is exact', async () => {
    await upload(disk, `${C}/copy-base.vhd`, opts());
    const other = path.join(work, 'safety-copy-other.vhd');
    const otherContent = Buffer.from(diskContent);
    randomFillSync(otherContent, 9 * MiB, 128 * KiB);
    await writeDynamic(other, otherContent);
    await upload(other, `${C}/copy-over.vhd`, opts()); // there, complete, another disk
    const seen = { copies: 0, leasedCopies: 0 };
    // Azure's rule, which Azurite does not enforce: Copy Blob with a (finite) lease id is refused.
    const azureCopyRule = {
      create(nextPolicy: { sendRequest(r: unknown): Promise<unknown> }) {
        return {
          async sendRequest(request: any) {
            if (request.method === 'PUT' && request.headers.get('x-ms-copy-source')) {
              seen.copies++;
              if (request.headers.get('x-ms-lease-id')) {
                seen.leasedCopies++;
                throw new RestError('A lease ID was specified, but the lease for the blob has expired or is not infinite.', { statusCode: 412, code: 'InfiniteLeaseDurationRequired' });
              }
            }
            return nextPolicy.sendRequest(request);
          },
        };
      },
    };
    const r = await upload(disk, `${C}/copy-over.vhd`, opts({ base: 'copy-base.vhd', overwrite: true, policies: [azureCopyRule] }));
    expect(seen).toEqual({ copies: 1, leasedCopies: 0 });
    expect(r).toMatchObject({ method: 'chunks', bytesUploaded: 512 }); // the same content as the base: only the footer
    await expectBlob(C, 'copy-over.vhd', diskContent, 20 * MiB);
    expect((await svc.getContainerClient(C).getBlobClient('copy-over.vhd').getProperties()).leaseState).not.toBe('leased');
  });

  it('the lease is renewed while held, and every write carries it', async () => {
    const loc: BlobLocation = { accountUrl: az.endpoint, container: C, blob: 'renewed.vhd', connectionString: az.connectionString, display: `${C}/renewed.vhd` };
    const counters = newCounters();
    const pb = new PageBlob(svc.getContainerClient(C), loc, counters);
    await pb.create(MiB, { owner: 'test' }, true);
    pb.renewEveryMs = 50;
    await pb.acquireLease('00000000-0000-4000-8000-000000000001');
    const before = counters.requests;
    await new Promise((r) => setTimeout(r, 400));
    expect(counters.requests - before).toBeGreaterThanOrEqual(3); // renewals
    const client = svc.getContainerClient(C).getPageBlobClient('renewed.vhd');
    expect((await client.getProperties()).leaseState).toBe('leased');
    await pb.writePages(new Uint8Array(512).fill(7), 0); // carries the lease: accepted
    await expect(client.uploadPages(Buffer.alloc(512, 9), 512, 512)).rejects.toMatchObject({ statusCode: 412 }); // without it: refused
    // Creating where a blob exists, when asked for a new one, fails (409/412), never replaces it.
    const again = new PageBlob(svc.getContainerClient(C), loc, newCounters());
    expect((await rejection(again.create(MiB, {}, true))).actual).toBeGreaterThanOrEqual(409);
    await pb.releaseLease();
    expect((await client.getProperties()).leaseState).toBe('available');
    const settled = counters.requests;
    await new Promise((r) => setTimeout(r, 200));
    expect(counters.requests).toBe(settled); // no renewals after release
  });

  describe('secrets never reach stdout or stderr', () => {
    const modes = [[], ['--json'], ['--debug']];
    const badKey = Buffer.alloc(64, 7).toString('base64');

    function sigOf(url: string): string {
      return new URL(url).searchParams.get('sig')!;
    }

    function expectNoSecret(run: ProcessRun, secrets: string[], what: string): void {
      for (const s of secrets) {
        for (const form of new Set([s, encodeURIComponent(s), s.slice(0, 16), encodeURIComponent(s).slice(0, 16)])) {
          expect(run.stdout.includes(form), `${what}: stdout holds a secret (${form.slice(0, 4)}…)\n${run.stdout}`).toBe(false);
          expect(run.stderr.includes(form), `${what}: stderr holds a secret (${form.slice(0, 4)}…)\n${run.stderr}`).toBe(false);
        }
      }
    }

    it('a blob SAS URL: the upload completes (no manifest sidecar: a warning), no sig= printed', async () => {
      const runs = await Promise.all(
        modes.map(async (mode, i) => {
          const url = az.sasUrl(C, `sas-${i}.vhd`);
          return { i, mode, url, run: await cli(['upload', disk, url, '--journal-dir', journalDir, ...mode]) };
        }),
      );
      for (const { i, mode, url, run } of runs) {
        const what = `upload to a SAS URL ${mode.join(' ')}`;
        expect(run.code, `${what}: ${run.stderr}`).toBe(0);
        expectNoSecret(run, [sigOf(url)], what);
        if (mode.includes('--json')) {
          const r = JSON.parse(run.stdout) as UploadResult;
          expect(r.manifest).toBeNull();
          expect(r.warnings.map((w) => w.code)).toContain('AZURE_AUTH');
          expect(r.destination).not.toMatch(/sig=|\?/);
        } else {
          expect(run.stderr).toMatch(/warning: .*manifest/);
        }
        await expectBlob(C, `sas-${i}.vhd`, diskContent, 20 * MiB);
      }
      // Complete, but without a manifest it cannot be a base.
      expect((await rejection(upload(disk, `${C}/from-sas.vhd`, opts({ base: 'sas-0.vhd' })))).code).toBe(ErrorCodes.BASE_INVALID);
    });

    it('failures with a SAS: wrong signature, a base the SAS does not cover, a missing container', async () => {
      const good = az.sasUrl(C, 'fail.vhd');
      const u = new URL(good);
      u.searchParams.set('sig', Buffer.alloc(32, 9).toString('base64'));
      const forged = u.toString();
      const missing = az.sasUrl('no-such-container', 'x.vhd');
      const missingList = `${az.endpoint}/no-such-container?${az.containerSas('no-such-container')}`;
      const j = ['--journal-dir', journalDir];
      const cases: Array<{ name: string; args: string[]; secrets: string[]; code: number; message?: RegExp }> = [
        { name: 'forged sig', args: ['upload', '{disk}', forged, ...j], secrets: [sigOf(forged), sigOf(good)], code: 1, message: /AZURE_AUTH/ },
        { name: 'base outside the SAS', args: ['upload', '{disk}', good, '--base', 'twice.vhd', ...j], secrets: [sigOf(good)], code: 1, message: /SAS does not cover the base.*AZURE_AUTH/ },
        { name: 'missing container', args: ['upload', '{disk}', missing, ...j], secrets: [sigOf(missing)], code: 1 },
        { name: 'generations, missing container', args: ['generations', missingList], secrets: [sigOf(missingList)], code: 1 },
      ];
      const runs = await Promise.all(cases.flatMap((c) => modes.map(async (mode) => ({ c, mode, run: await cli([...c.args.map((a) => (a === '{disk}' ? disk : a)), ...mode]) }))));
      for (const { c, mode, run } of runs) {
        const what = `${c.name} ${mode.join(' ')}`;
        expect(run.code, `${what}: ${run.signal ? `killed by ${run.signal}; ` : ''}${run.stderr}`).toBe(c.code);
        expect(run.stderr).toMatch(/^vhdkit: /);
        if (c.message) expect(run.stderr, what).toMatch(c.message);
        expectNoSecret(run, c.secrets, what);
        if (mode.includes('--json')) expect(JSON.parse(run.stdout).ok).toBe(false);
      }
      expect(await blobExists(C, 'fail.vhd')).toBe(false);
    });

    it('a bad AccountKey (flag or environment) and a container SAS listing: no key, no sig printed', async () => {
      const bad = az.connectionString.replace(/AccountKey=[^;]+/, `AccountKey=${badKey}`);
      expect(bad).not.toBe(az.connectionString);
      const realKey = /AccountKey=([^;]+)/.exec(az.connectionString)![1];
      const listUrl = `${az.endpoint}/${C}?${az.containerSas(C)}`;
      const cases: Array<{ name: string; args: string[]; env?: NodeJS.ProcessEnv; code: number; secrets: string[] }> = [
        { name: 'upload, key by flag', args: ['upload', '{disk}', `${C}/badkey.vhd`, '--connection-string', bad, '--journal-dir', journalDir], code: 1, secrets: [badKey] },
        { name: 'upload, key by env', args: ['upload', '{disk}', `${C}/badkey.vhd`, '--journal-dir', journalDir], env: { AZURE_STORAGE_CONNECTION_STRING: bad }, code: 1, secrets: [badKey] },
        { name: 'upload, usage error with a key', args: ['upload', '{disk}', `${C}/badkey.vhd`, '--connection-string', az.connectionString, '--concurrency', '0'], code: 2, secrets: [realKey] },
        { name: 'generations, key by flag', args: ['generations', C, '--connection-string', bad], code: 1, secrets: [badKey] },
        { name: 'generations, unknown container', args: ['generations', 'no-such-container', '--connection-string', az.connectionString], code: 1, secrets: [realKey] },
        { name: 'generations, container SAS', args: ['generations', listUrl], code: 0, secrets: [sigOf(listUrl)] },
      ];
      const runs = await Promise.all(cases.flatMap((c) => modes.map(async (mode) => ({ c, mode, run: await cli([...c.args.map((a) => (a === '{disk}' ? disk : a)), ...mode], c.env) }))));
      for (const { c, mode, run } of runs) {
        const what = `${c.name} ${mode.join(' ')}`;
        expect(run.code, `${what}: ${run.stdout} ${run.stderr}`).toBe(c.code);
        expectNoSecret(run, c.secrets, what);
        if (c.code === 0 && mode.includes('--json')) {
          const g = JSON.parse(run.stdout);
          expect(g.generations.length).toBeGreaterThan(0);
          expect(g.container).not.toMatch(/sig=|\?/);
        }
      }
      expect(await blobExists(C, 'badkey.vhd')).toBe(false);
    });
  });
});

// -------------------------------------------------------------------------------------------------
// Faults

interface FaultLog {
  requests: number;
  before: number;
  after: number;
  kinds: Record<'busy' | 'timeout' | 'reset', number>;
}

/**
 * A legacy SDK RequestPolicyFactory that fails about `rate` of the requests it sees (deterministic),
 * half of them before forwarding (never sent), half after the server answered (the write landed,
 * the response is "lost"), as 503 ServerBusy, 500 OperationTimedOut or a connection reset.
 */
function faultPolicy(seed: number, rate: number, log: FaultLog) {
  const rnd = mulberry32(seed);
  const fault = (k: number): RestError => {
    if (k === 0) {
      log.kinds.busy++;
      return new RestError('The server is busy.', { statusCode: 503, code: 'ServerBusy' });
    }
    if (k === 1) {
      log.kinds.timeout++;
      return new RestError('Operation could not be completed within the specified time.', { statusCode: 500, code: 'OperationTimedOut' });
    }
    log.kinds.reset++;
    return new RestError('socket hang up', { code: 'ECONNRESET' });
  };
  return {
    create(nextPolicy: { sendRequest(r: unknown): Promise<unknown> }) {
      return {
        async sendRequest(request: unknown) {
          log.requests++;
          const x = rnd();
          const k = Math.floor(rnd() * 3);
          if (x < rate / 2) {
            log.before++;
            throw fault(k);
          }
          const response = await nextPolicy.sendRequest(request);
          if (x < rate) {
            log.after++;
            throw fault(k);
          }
          return response;
        },
      };
    },
  };
}

function newLog(): FaultLog {
  return { requests: 0, before: 0, after: 0, kinds: { busy: 0, timeout: 0, reset: 0 } };
}

/** A policy that acts on the page writes (PUT …comp=page with x-ms-page-write: update) only. */
function pageWritePolicy(onWrite: (offset: number, request: any, forward: () => Promise<unknown>) => Promise<unknown>) {
  return {
    create(nextPolicy: { sendRequest(r: unknown): Promise<unknown> }) {
      return {
        async sendRequest(request: any) {
          const url = String(request.url);
          const range = request.headers.get('x-ms-range') ?? request.headers.get('range');
          if (request.method === 'PUT' && /[?&]comp=page/.test(url) && request.headers.get('x-ms-page-write') === 'update' && range) {
            const offset = Number(/bytes=(\d+)-/.exec(range)![1]);
            return onWrite(offset, request, () => nextPolicy.sendRequest(request));
          }
          return nextPolicy.sendRequest(request);
        },
      };
    },
  };
}

const fast = { baseDelayMs: 5, maxDelayMs: 50 };

describe('faults: retried by the one policy, the result still exact', () => {
  const C = 'faults';
  const size = 32 * MiB;
  let content: Buffer;
  let file: string;

  beforeAll(async () => {
    content = contentWith(size, [[0, 12 * MiB], [16 * MiB + 512, 5 * MiB], [30 * MiB, 2 * MiB]]);
    file = path.join(work, 'faults.vhd');
    await writeDynamic(file, content);
  });

  it('~20% of requests fail (503, 500 OperationTimedOut, ECONNRESET; before and after reaching the server): full, base and snapshot uploads exact', async () => {
    const log = newLog();
    const policies = [faultPolicy(1234, 0.2, log)];
    const r1 = await upload(file, `${C}/full.vhd`, opts({ policies, retry: fast, concurrency: 4 }));
    expect(r1.retries).toBeGreaterThan(0);
    expect(r1.method).toBe('full');
    expect(r1.bytesUploaded, 'retried writes are counted once').toBe(nonZeroChunks(content).length * CHUNK + 512);
    await expectBlob(C, 'full.vhd', content, size, { uuid: uuidOf(file) });

    const gen2 = Buffer.from(content);
    for (let k = 0; k < 10; k++) randomFillSync(gen2, k * 3 * MiB + k * 8 * KiB, 4 * KiB);
    gen2.fill(0, 16 * MiB + CHUNK, 16 * MiB + 3 * CHUNK);
    const f2 = path.join(work, 'faults-gen2.vhd');
    await writeDynamic(f2, gen2);
    const r2 = await upload(f2, `${C}/gen2.vhd`, opts({ policies, retry: fast, base: 'full.vhd', concurrency: 4 }));
    expect(r2.method).toBe('chunks');
    await expectBlob(C, 'gen2.vhd', gen2, size, { uuid: uuidOf(f2) });
    await expectBlob(C, 'full.vhd', content, size, { uuid: uuidOf(file) });

    const s1 = await upload(file, `${C}/snap.vhd`, opts({ policies, retry: fast, snapshot: true }));
    const s2 = await upload(f2, `${C}/snap.vhd`, opts({ policies, retry: fast, snapshot: true }));
    await expectBlob(C, 'snap.vhd', content, size, { snapshot: s1.snapshot! });
    await expectBlob(C, 'snap.vhd', gen2, size, { snapshot: s2.snapshot! });
    const g = await generations(C, { connectionString: az.connectionString, policies, retry: fast });
    expect(g.generations.filter((x) => x.blob === 'snap.vhd').map((x) => x.snapshot), 'one snapshot per generation').toEqual([s1.snapshot, s2.snapshot, null]);

    expect(log.before).toBeGreaterThan(0);
    expect(log.after).toBeGreaterThan(0);
    expect(log.kinds.busy * log.kinds.timeout * log.kinds.reset).toBeGreaterThan(0);
    expect((log.before + log.after) / log.requests).toBeGreaterThan(0.1);
  });

  const lostSnapshot = { snapshot: '' };

  it('a snapshot whose response is lost: the upload completes', async () => {
    let lost = 0;
    const policy = {
      create(nextPolicy: { sendRequest(r: unknown): Promise<unknown> }) {
        return {
          async sendRequest(request: any) {
            const response = await nextPolicy.sendRequest(request);
            if (request.method === 'PUT' && /[?&]comp=snapshot/.test(String(request.url)) && lost++ === 0) {
              throw new RestError('socket hang up', { code: 'ECONNRESET' });
            }
            return response;
          },
        };
      },
    };
    const r = await upload(file, `${C}/lost-snapshot.vhd`, opts({ policies: [policy], retry: fast, snapshot: true }));
    // One Create Snapshot reached the server; its lost response is recovered by listing, not by another.
    expect(lost).toBe(1);
    expect(r.retries).toBeGreaterThanOrEqual(1);
    expect(r.snapshot).toEqual(expect.any(String));
    await expectBlob(C, 'lost-snapshot.vhd', content, size, { snapshot: r.snapshot! });
    lostSnapshot.snapshot = r.snapshot!;
  });

  // Was a bug: Create Snapshot is not idempotent; a retry after a lost response made a second one.
  // Now the retry finds the snapshot the lost attempt made (by a token in its metadata).
  it('… and leaves one snapshot for the one generation', async () => {
    expect(lostSnapshot.snapshot).not.toBe('');
    const g = await generations(C, { connectionString: az.connectionString, prefix: 'lost-snapshot' });
    expect(g.generations.map((x) => x.snapshot)).toEqual([lostSnapshot.snapshot, null]);
  });

  it('a request that hangs is abandoned after tryTimeoutMs and sent again', async () => {
    let hung = 0;
    const policy = pageWritePolicy(async (offset, request, forward) => {
      if (hung++ === 0) {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(resolve, 20_000);
          request.abortSignal?.addEventListener('abort', () => {
            clearTimeout(t);
            reject(new RestError('The operation was aborted.', { code: 'ECONNRESET' }));
          });
        });
      }
      return forward();
    });
    const t0 = performance.now();
    const r = await upload(file, `${C}/hang.vhd`, opts({ policies: [policy], retry: { ...fast, tryTimeoutMs: 500 } }));
    expect(performance.now() - t0).toBeLessThan(15_000);
    expect(r.retries).toBeGreaterThanOrEqual(1);
    await expectBlob(C, 'hang.vhd', content, size);
  });

  it('a 400 is never retried', async () => {
    let attempts = 0;
    const policy = pageWritePolicy(async () => {
      attempts++;
      throw new RestError('The value for one of the HTTP headers is not in the correct format.', { statusCode: 400, code: 'InvalidHeaderValue' });
    });
    const e = await rejection(upload(file, `${C}/bad-request.vhd`, opts({ policies: [policy], retry: fast, concurrency: 1 })));
    expect(e.code).toBe(ErrorCodes.AZURE);
    expect(e.message).toMatch(/HTTP 400/);
    expect(e.message).not.toMatch(/after \d+ tries/);
    expect(attempts).toBe(1);
  });

  it('a write that fails for good: the rerun still sends it (the watermark never passes a write that did not land)', async () => {
    // The page write at 4 MiB hangs ~1.3 s, then fails with a 400; the others land meanwhile.
    // The local journal is saved once a second: a watermark saved when that write fails must stay
    // below it, or the rerun resumes past it and leaves a hole.
    const policy = pageWritePolicy(async (offset, _request, forward) => {
      if (offset === 4 * MiB) {
        await new Promise((r) => setTimeout(r, 1300));
        throw new RestError('Bad request', { statusCode: 400, code: 'InvalidInput' });
      }
      await new Promise((r) => setTimeout(r, 20));
      return forward();
    });
    const e = await rejection(upload(file, `${C}/failed-write.vhd`, opts({ policies: [policy], retry: fast, concurrency: 4 })));
    expect(e.code).toBe(ErrorCodes.AZURE);
    const r = await upload(file, `${C}/failed-write.vhd`, opts({ retry: fast }));
    expect(r.alreadyComplete).toBe(false);
    expect(r.resumedFrom).toBeLessThanOrEqual(4 * MiB);
    await expectBlob(C, 'failed-write.vhd', content, size);
  });

  it('an abort (Ctrl-C) while writes are in flight: the rerun still sends them', async () => {
    // Writes from 8 MiB on take 1.5 s; the abort comes 1.2 s into sending (past the 1 s journal
    // interval) while they are in flight: they never land, and the rerun must send them.
    const ac = new AbortController();
    let started = 0;
    const policy = pageWritePolicy(async (offset, request, forward) => {
      started++;
      if (offset >= 8 * MiB) {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(resolve, 1500);
          request.abortSignal?.addEventListener('abort', () => {
            clearTimeout(t);
            reject(new RestError('The operation was aborted.', { code: 'ECONNRESET' }));
          });
        });
      }
      return forward();
    });
    const onPhase = (phase: string) => {
      if (phase === 'upload') setTimeout(() => ac.abort(new Error('test abort')), 1200);
    };
    const e = await rejection(upload(file, `${C}/aborted.vhd`, opts({ policies: [policy], retry: fast, concurrency: 4, signal: ac.signal, onPhase })));
    expect(e.code).toBe(ErrorCodes.ABORTED);
    expect(started).toBeGreaterThan(0);
    const g = await generations(C, { connectionString: az.connectionString, prefix: 'aborted' });
    expect(g.generations).toHaveLength(1);
    expect(g.generations[0]).toMatchObject({ state: 'uploading', digest: null, contentMd5: null });
    expect(g.generations[0].hint).toMatch(/vhdkit upload/);
    const r = await upload(file, `${C}/aborted.vhd`, opts({ retry: fast }));
    expect(r.alreadyComplete).toBe(false);
    await expectBlob(C, 'aborted.vhd', content, size);
  });

  it('a derived upload (--base) aborted mid-way and run again: exact, and its base blob byte-identical throughout', async () => {
    const base = path.join(work, 'faults-dbase.vhd');
    await writeDynamic(base, content);
    await upload(base, `${C}/dbase.vhd`, opts({ retry: fast }));
    const next = Buffer.from(content);
    for (let k = 0; k < 24; k++) randomFillSync(next, k * MiB + 12 * KiB, 4 * KiB);
    const f = path.join(work, 'faults-dnext.vhd');
    await writeDynamic(f, next);
    const ac = new AbortController();
    let writes = 0;
    const policy = pageWritePolicy(async (_offset, _request, forward) => {
      if (++writes === 6) ac.abort(new Error('test abort'));
      await new Promise((r) => setTimeout(r, 30));
      return forward();
    });
    const e = await rejection(upload(f, `${C}/dnext.vhd`, opts({ policies: [policy], retry: fast, base: 'dbase.vhd', concurrency: 2, signal: ac.signal })));
    expect(e.code).toBe(ErrorCodes.ABORTED);
    await expectBlob(C, 'dbase.vhd', content, size, { uuid: uuidOf(base) });
    const r = await upload(f, `${C}/dnext.vhd`, opts({ retry: fast, base: 'dbase.vhd' }));
    expect(r.method).toBe('chunks');
    await expectBlob(C, 'dnext.vhd', next, size, { uuid: uuidOf(f) });
    await expectBlob(C, 'dbase.vhd', content, size, { uuid: uuidOf(base) });
  });
});

describe('generations --json shape', () => {
  it('complete and interrupted uploads, each field typed; an unfinished one says how to finish it', async () => {
    const C = 'shape';
    const content = contentWith(20 * MiB, [[0, 6 * MiB]]);
    const file = path.join(work, 'shape.vhd');
    await writeDynamic(file, content);
    await upload(file, `${C}/done.vhd`, opts());
    expect((await rejection(upload(file, `${C}/half.vhd`, opts({ concurrency: 1, ...abortDuringUpload(1) })))).code).toBe(ErrorCodes.ABORTED);
    await svc.getContainerClient(C).getBlockBlobClient('other.txt').upload('x', 1);

    const run = await cli(['generations', C, '--json', '--connection-string', az.connectionString]);
    expect(run.code, run.stderr).toBe(0);
    const g = JSON.parse(run.stdout) as { container: string; generations: Generation[]; otherBlobs: number };
    expect(g.container).toMatch(/^shape at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1$/);
    expect(g.otherBlobs).toBe(1);
    expect(g.generations.map((x) => x.blob)).toEqual(['done.vhd', 'half.vhd']);
    const keys = ['blob', 'snapshot', 'state', 'base', 'method', 'virtualSize', 'blobSize', 'dataBytes', 'differingBytes', 'digest', 'contentMd5', 'completed', 'lastModified', 'hint'];
    for (const x of g.generations) {
      expect(Object.keys(x).sort()).toEqual([...keys].sort());
      expect(typeof x.virtualSize).toBe('number');
      expect(typeof x.blobSize).toBe('number');
      expect(x.virtualSize).toBe(20 * MiB);
      expect(x.blobSize).toBe(20 * MiB + 512);
      expect(x.base).toBeNull();
      expect(x.differingBytes).toBeNull();
      expect(x.snapshot).toBeNull();
    }
    const [done, half] = g.generations;
    expect(done).toMatchObject({ state: 'complete', method: 'full', dataBytes: 6 * MiB, hint: null });
    expect(new Date(done.completed!).getTime()).toBeGreaterThan(Date.now() - 600_000);
    expect(half).toMatchObject({ state: 'uploading', digest: null, contentMd5: null, completed: null });
    expect(half.hint).toMatch(/unfinished upload.*vhdkit upload/);

    const human = await cli(['generations', C, '--connection-string', az.connectionString]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/2 generations/);
    expect(human.stdout).toMatch(/half\.vhd\s+uploading/);
    expect(human.stdout).toMatch(/hint: unfinished upload/);
  });
});
