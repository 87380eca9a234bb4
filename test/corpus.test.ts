/**
 * The conformance corpus (../shared/corpus): real images from Windows, Hyper-V, Virtual PC,
 * Disk2vhd, qemu and blktap, with the expected SHA-256 of each virtual disk (MANIFEST.md,
 * expected.json). Chains are checked against the chain content, never the values of a reader that
 * ignores the parent (qemu) or libvhdi's bitmap bug.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes, VhdError } from '../src/errors.js';
import type { VhdImage } from '../src/disk/image.js';
import { openDisk } from '../src/ops/open.js';
import { info } from '../src/ops/info.js';
import { check } from '../src/ops/check.js';
import { vhdTimestampToDate } from '../src/format/timestamp.js';
import { corpusDir, corpusExpected, corpusPresent, sha256OfDisk, unpackCorpus, type CorpusSample, mulberry32, rejection } from './helpers.js';

if (!corpusPresent) console.warn(`corpus.test.ts: SKIPPED — the conformance corpus is not at ${corpusDir}`);

const samples: Record<string, CorpusSample> = corpusPresent ? corpusExpected().samples : {};
const names = Object.keys(samples);

const FAT_DIFF = 'windows/dfvfs-fat-differential.vhd';
const FAT_PARENT_UUID = '5fa21a55-f394-aa4d-9958-1951a67d5540';
const IMAGE = 'dfvfs/image.vhd';
const IMAGE_DIFF = 'dfvfs/image-differential.vhd';
const FOOTER511 = 'derived/qemu-fixed-511footer.vhd';
const HUGE_ZERO = ['qemu-iotests/virtualpc-dynamic.vhd', 'qemu-iotests/hyperv2012r2-dynamic.vhd'];
/** Samples whose whole content has a hash to compare (everything but the parentless child and the 127 GiB ones). */
const hashable = names.filter((n) => samples[n].content.sha256 && !HUGE_ZERO.includes(n));
/** Samples with nothing wrong in them: valid checksums, parent present. */
const clean = names.filter((n) => {
  const h = samples[n].header;
  return h.footer_checksum_ok && h.dyn_header_checksum_ok !== false && !samples[n].content.parent_missing;
});

/** The 18 sectors of block 0 of the fat differential that the child holds (MANIFEST). */
const FAT_SECTORS = [134, 143, 152, 153, 154, 155, 156, 157, 158, 159, 184, 185, 188, 190, 191, 192, 194, 196];
const FAT_SECTORS_SHA = 'eda75676597b44170921425cb00ad70be1d94ad0d7dae92fcbedb9712846e457';

let dir = '';
const file = (rel: string) => path.join(dir, rel);
const open: VhdImage[] = [];
async function openSample(rel: string, opts: Parameters<typeof openDisk>[1] = {}): Promise<VhdImage> {
  const img = await openDisk(file(rel), opts);
  open.push(img);
  return img;
}


const ZEROS = Buffer.alloc(4 << 20);

/** SHA-256 of the whole disk, and the first offsets outside dataRanges() that read non-zero. */
async function hashChecking(img: VhdImage): Promise<{ sha: string; nonZeroOutside: number[] }> {
  const h = createHash('sha256');
  const ranges = img.dataRanges();
  const nonZeroOutside: number[] = [];
  const step = 4 << 20;
  const buf = new Uint8Array(step);
  for (let pos = 0; pos < img.virtualSize; pos += step) {
    const view = buf.subarray(0, Math.min(step, img.virtualSize - pos));
    await img.read(view, pos);
    h.update(view);
    let p = pos;
    const end = pos + view.length;
    for (const [a, b] of [...ranges, [end, end] as [number, number]]) {
      if (b <= p) continue;
      const gapEnd = Math.min(a, end);
      if (gapEnd > p) {
        const gap = Buffer.from(view.buffer, view.byteOffset + (p - pos), gapEnd - p);
        if (!gap.equals(ZEROS.subarray(0, gap.length)) && nonZeroOutside.length < 4) nonZeroOutside.push(p + gap.findIndex((x) => x !== 0));
      }
      p = Math.max(p, b);
      if (p >= end) break;
    }
  }
  return { sha: h.digest('hex'), nonZeroOutside };
}

describe.skipIf(!corpusPresent)('conformance corpus', () => {
  beforeAll(async () => {
    dir = await unpackCorpus();
  }, 120_000);

  afterAll(async () => {
    for (const img of open.splice(0)) await img.close();
  });

  it('lists every sample of expected.json', () => {
    expect(names.length).toBeGreaterThanOrEqual(19);
    expect(hashable).toContain('blktap/grandchild.vhd');
    expect(clean).toContain('blktap/c5.vhd');
    expect(clean).not.toContain(IMAGE);
    expect(clean).not.toContain(FAT_DIFF);
  });

  it.each(names)('%s unpacks to the file of expected.json', async (rel) => {
    const h = createHash('sha256');
    for await (const chunk of fs.createReadStream(file(rel))) h.update(chunk as Buffer);
    expect(fs.statSync(file(rel)).size).toBe(samples[rel].file_size);
    expect(h.digest('hex')).toBe(samples[rel].file_sha256);
  });

  describe('content SHA-256', () => {
    it.each(hashable)('%s', async (rel) => {
      const s = samples[rel];
      const img = await openSample(rel);
      expect(img.virtualSize).toBe(s.content.size);
      expect(img.type).toBe(s.header.disk_type);
      const { sha, nonZeroOutside } = await hashChecking(img);
      expect(sha).toBe(s.content.sha256);
      if (img.virtualSize <= 64 << 20) expect(await sha256OfDisk(img)).toBe(sha);
      // Outside dataRanges() the disk reads as zeros.
      expect(nonZeroOutside).toEqual([]);
      if (s.header.allocated_blocks !== undefined) expect(img.allocatedBlocks).toBe(s.header.allocated_blocks);
      // Never the answer of a reader that ignores the parent, nor libvhdi's bitmap bug.
      if (s.content.parent_ignored_sha256) expect(sha).not.toBe(s.content.parent_ignored_sha256);
      if (s.content.libvhdi_wrong_sha256) expect(sha).not.toBe(s.content.libvhdi_wrong_sha256);
      if (s.content.chain) {
        expect(img.chain.map((d) => path.relative(dir, d.id).split(path.sep).join('/'))).toEqual([rel, ...s.content.chain]);
      } else {
        expect(img.chain).toHaveLength(1);
      }
    }, 60_000);
  });

  describe('blktap samples against the write lists of the MANIFEST', () => {
    /** (first sector, count, seed) per file, in the order written; a chain's top sees the last write. */
    const WRITES: Record<string, Array<[number, number, number]>> = {
      'blktap/base.vhd': [[0, 8, 1], [4100, 100, 2], [20480, 4096, 3], [40900, 60, 4]],
      'blktap/child.vhd': [[4, 8, 11], [8202, 20, 12], [4150, 10, 13], [40950, 10, 14]],
      'blktap/grandchild.vhd': [[6, 1, 21], [30000, 3, 22]],
      'blktap/p5.vhd': [[0, 1, 31], [2047, 3, 32], [10230, 10, 33]],
      'blktap/c5.vhd': [[1, 1, 41], [2048, 1, 42], [8191, 2, 43], [10239, 1, 44]],
      'blktap/fixed4.vhd': [[0, 4, 51], [8191, 1, 52]],
    };
    const pattern = (s: number, k: number) => Uint8Array.from({ length: 512 }, (_, i) => (s * 131 + i * 7 + k) & 0xff);
    const sectorRanges = (writes: Array<[number, number, number]>) => {
      const sectors = [...new Set(writes.flatMap(([s, n]) => Array.from({ length: n }, (_, i) => s + i)))].sort((a, b) => a - b);
      const out: Array<[number, number]> = [];
      for (const s of sectors) {
        const last = out[out.length - 1];
        if (last && last[1] === s * 512) last[1] += 512;
        else out.push([s * 512, s * 512 + 512]);
      }
      return out;
    };

    it.each(Object.keys(WRITES))('%s: every written sector holds its pattern through the chain', async (rel) => {
      const img = await openSample(rel);
      const layers = [rel, ...(samples[rel].content.chain ?? [])].reverse(); // base first
      const latest = new Map<number, number>();
      for (const layer of layers) for (const [s, n, k] of WRITES[layer]) for (let i = 0; i < n; i++) latest.set(s + i, k);
      const got = new Uint8Array(512);
      for (const [s, k] of latest) {
        await img.read(got, s * 512);
        expect(Buffer.from(got).equals(Buffer.from(pattern(s, k))), `sector ${s} (seed ${k})`).toBe(true);
      }
      // Whole content = the model: the written sectors, zeros elsewhere.
      const model = new Uint8Array(img.virtualSize);
      for (const [s, k] of latest) model.set(pattern(s, k), s * 512);
      expect(createHash('sha256').update(model).digest('hex')).toBe(samples[rel].content.sha256);
    });

    it.each(['blktap/child.vhd', 'blktap/grandchild.vhd', 'blktap/c5.vhd'])('%s: ownSectorRanges() are exactly its writes', async (rel) => {
      const img = await openSample(rel);
      expect(await img.ownSectorRanges()).toEqual(sectorRanges(WRITES[rel]));
      // Block granularity covers them, and dataRanges() the whole chain's blocks.
      for (const [a, b] of sectorRanges(WRITES[rel])) {
        expect(img.ownBlockRanges().some(([x, y]) => x <= a && b <= y), `[${a}, ${b}) in a block`).toBe(true);
        expect(img.dataRanges().some(([x, y]) => x <= a && b <= y)).toBe(true);
      }
    });
  });

  describe('127 GiB all-zero disks (not hashed)', () => {
    it.each(HUGE_ZERO)('%s: current size, no data, zero reads', async (rel) => {
      const s = samples[rel];
      const bySize = s.content.by_current_size?.size ?? s.content.size;
      expect(bySize).toBe(136365211648);
      const img = await openSample(rel);
      expect(img.virtualSize).toBe(bySize);
      expect(img.virtualSize).toBe(s.header.current_size);
      expect(img.type).toBe('dynamic');
      expect(img.bat).toHaveLength(s.header.max_table_entries);
      expect(img.allocatedBlocks).toBe(0);
      expect(img.dataRanges()).toEqual([]);
      expect(img.ownBlockRanges()).toEqual([]);
      const r = mulberry32(0x127);
      const buf = new Uint8Array(65536);
      const offsets = [0, img.virtualSize - buf.length];
      for (let i = 0; i < 6; i++) offsets.push(Math.floor((r() * (img.virtualSize - buf.length)) / 512) * 512);
      for (const off of offsets) {
        buf.fill(0xaa);
        await img.read(buf, off);
        expect(buf.every((b) => b === 0), `bytes at ${off}`).toBe(true);
      }
      // A read across the end is refused, not clipped.
      const e = await rejection(img.read(new Uint8Array(1024), img.virtualSize - 512));
      expect(e.code).toBe(ErrorCodes.RANGE);
    });
  });

  describe('windows/dfvfs-fat-differential.vhd (parent not available)', () => {
    it('opening with parents throws PARENT_MISSING naming the file and the parent UUID', async () => {
      const e = await rejection(openDisk(file(FAT_DIFF)));
      expect(e.code).toBe(ErrorCodes.PARENT_MISSING);
      expect(e.message).toContain('dfvfs-fat-differential.vhd');
      expect(e.message).toContain(FAT_PARENT_UUID);
      expect(e.message.includes('\n')).toBe(false);
    });

    it('opens alone with resolveParents:false; parent identity from the header', async () => {
      const img = await openSample(FAT_DIFF, { resolveParents: false });
      const s = samples[FAT_DIFF];
      expect(img.type).toBe('differencing');
      expect(img.parent).toBeUndefined();
      expect(img.parentUuid).toBe(FAT_PARENT_UUID);
      expect(img.parentUuid).toBe(s.header.parent_uuid);
      expect(img.parentName).toBe('C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd');
      expect(img.header!.parentTimestamp).toBe(0);
      expect(img.virtualSize).toBe(4194304);
      expect(Number(img.header!.tableOffset)).toBe(8192);
      expect(img.bat![0]).toBe(159);
      // A well-formed file: nothing wrong in it but the absent parent.
      expect(img.findings.filter((f) => f.severity === 'error')).toEqual([]);
    });

    it('ownSectorRanges() are exactly the 18 sectors of the MANIFEST', async () => {
      const img = await openSample(FAT_DIFF, { resolveParents: false });
      const expected: Array<[number, number]> = [];
      for (const s of FAT_SECTORS) {
        const last = expected[expected.length - 1];
        if (last && last[1] === s * 512) last[1] += 512;
        else expected.push([s * 512, s * 512 + 512]);
      }
      expect(expected).toHaveLength(8);
      expect(await img.ownSectorRanges()).toEqual(expected);
      expect(img.ownBlockRanges()).toEqual([[0, 2097152]]);
    });

    it('the 18 sectors read from the data area hash to eda756…', async () => {
      const img = await openSample(FAT_DIFF, { resolveParents: false });
      // Block 0 at sector 159, then its 512-byte bitmap, then the data.
      const dataStart = 159 * 512 + 512;
      expect(img.blockDataOffset(0)).toBe(dataStart);
      const h = createHash('sha256');
      const viaDisk = createHash('sha256');
      const sector = new Uint8Array(512);
      for (const s of FAT_SECTORS) {
        await img.source.read(sector, dataStart + s * 512);
        h.update(sector);
        // The same sectors through the virtual disk: present in the child, so no parent needed.
        await img.read(sector, s * 512);
        viaDisk.update(sector);
      }
      expect(h.digest('hex')).toBe(FAT_SECTORS_SHA);
      expect(viaDisk.digest('hex')).toBe(FAT_SECTORS_SHA);
      // A sector the child does not hold needs the parent, which is not open.
      const e = await rejection(img.read(new Uint8Array(512), 135 * 512));
      expect(e.code).toBe(ErrorCodes.PARENT_MISSING);
    });

    it('locators decode to the documented paths; data_space 4096/65536 are bytes', async () => {
      const img = await openSample(FAT_DIFF, { resolveParents: false });
      const byCode = Object.fromEntries(img.locators.map((l) => [l.platformCode, l]));
      expect(img.locators.map((l) => l.platformCode)).toEqual(['W2ku', 'W2ru']);
      expect(byCode.W2ku.path).toBe('C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd');
      expect(byCode.W2ku.dataOffset).toBe(4096);
      expect(byCode.W2ku.dataLength).toBe(84);
      expect(byCode.W2ku.dataSpaceBytes).toBe(4096);
      expect(byCode.W2ru.path).toBe('.\\fat-parent.vhd');
      expect(byCode.W2ru.dataOffset).toBe(12288);
      expect(byCode.W2ru.dataLength).toBe(32);
      expect(byCode.W2ru.dataSpaceBytes).toBe(65536);
      // Taken as sectors, the areas would overlap the BAT and block 0; no such finding may appear.
      const codes = img.findings.map((f) => f.code);
      for (const c of [ErrorCodes.LOCATOR_INVALID, ErrorCodes.LOCATOR_OVERLAP, ErrorCodes.LOCATOR_PAST_EOF, ErrorCodes.BAT_ENTRY_OVERLAPS_METADATA]) {
        expect(codes).not.toContain(c);
      }
    });

    it('info() tolerates the missing parent and reports it', async () => {
      const d = await info(file(FAT_DIFF));
      expect(d.type).toBe('differencing');
      expect(d.parent).not.toBeNull();
      expect(d.parent!.uuid).toBe(FAT_PARENT_UUID);
      expect(d.parent!.path).toBeNull();
      expect(d.parent!.locators.map((l) => l.path)).toEqual(['C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd', '.\\fat-parent.vhd']);
      expect(d.chain).toHaveLength(1);
      expect(d.findings.map((f) => f.code)).toContain(ErrorCodes.PARENT_MISSING);
    });

    it('check() fails with PARENT_MISSING', async () => {
      const r = await check(file(FAT_DIFF));
      expect(r.ok).toBe(false);
      expect(r.errors.map((f) => f.code)).toContain(ErrorCodes.PARENT_MISSING);
    });
  });

  describe('dfvfs/image.vhd (footer checksum wrong in both copies)', () => {
    it('reads with a FOOTER_CHECKSUM error finding and the right content', async () => {
      const img = await openSample(IMAGE);
      const f = img.findings.find((x) => x.code === ErrorCodes.FOOTER_CHECKSUM);
      expect(f).toBeDefined();
      expect(f!.severity).toBe('error');
      expect(f!.message).toContain('image.vhd');
      expect(img.virtualSize).toBe(104448);
      expect(await sha256OfDisk(img)).toBe(samples[IMAGE].content.sha256);
    });

    it('strict opening throws FOOTER_CHECKSUM', async () => {
      const e = await rejection(openDisk(file(IMAGE), { strict: true }));
      expect(e.code).toBe(ErrorCodes.FOOTER_CHECKSUM);
      expect(e.message).toContain('image.vhd');
    });

    it('check() is not ok and lists FOOTER_CHECKSUM as an error', async () => {
      const r = await check(file(IMAGE));
      expect(r.ok).toBe(false);
      expect(r.errors.map((x) => x.code)).toContain(ErrorCodes.FOOTER_CHECKSUM);
    });
  });

  describe('dfvfs/image-differential.vhd (bad checksums, no locators)', () => {
    it('findings include FOOTER_CHECKSUM, HEADER_CHECKSUM and LOCATOR_NONE; the chain resolves by the header name', async () => {
      const img = await openSample(IMAGE_DIFF);
      const codes = img.findings.map((f) => f.code);
      expect(codes).toContain(ErrorCodes.FOOTER_CHECKSUM);
      expect(codes).toContain(ErrorCodes.HEADER_CHECKSUM);
      expect(codes).toContain(ErrorCodes.LOCATOR_NONE);
      expect(img.locators).toEqual([]);
      expect(img.parentName).toBe('image.vhd');
      expect(img.parent).toBeDefined();
      expect(path.relative(dir, img.parent!.id).split(path.sep).join('/')).toBe(IMAGE);
      expect(img.parent!.uuid).toBe(samples[IMAGE].header.uuid);
      expect(img.parentUuid).toBe(samples[IMAGE_DIFF].header.parent_uuid);
      // The parent's own footer checksum is reported on the parent.
      expect(img.parent!.findings.map((f) => f.code)).toContain(ErrorCodes.FOOTER_CHECKSUM);
      expect(await sha256OfDisk(img)).toBe(samples[IMAGE_DIFF].content.sha256);
    });

    it('strict opening refuses it', async () => {
      const e = await rejection(openDisk(file(IMAGE_DIFF), { strict: true }));
      expect([ErrorCodes.FOOTER_CHECKSUM, ErrorCodes.HEADER_CHECKSUM]).toContain(e.code);
    });

    it('check() fails on both checksums and warns about the missing locators, for the whole chain', async () => {
      const r = await check(file(IMAGE_DIFF));
      expect(r.ok).toBe(false);
      const errors = r.errors.map((f) => f.code);
      expect(errors).toContain(ErrorCodes.HEADER_CHECKSUM);
      expect(errors.filter((c) => c === ErrorCodes.FOOTER_CHECKSUM)).toHaveLength(2); // child and parent
      expect(r.warnings.map((f) => f.code)).toContain(ErrorCodes.LOCATOR_NONE);
      expect(r.chain).toHaveLength(2);
    });
  });

  describe('derived/qemu-fixed-511footer.vhd', () => {
    it('reads the right content with a FOOTER_511 warning', async () => {
      const img = await openSample(FOOTER511);
      const f = img.findings.find((x) => x.code === ErrorCodes.FOOTER_511);
      expect(f).toBeDefined();
      expect(f!.severity).toBe('warning');
      expect(img.findings.filter((x) => x.severity === 'error')).toEqual([]);
      expect(img.type).toBe('fixed');
      expect(img.virtualSize).toBe(3168256);
      expect(await sha256OfDisk(img)).toBe(samples[FOOTER511].content.sha256);
      expect(samples[FOOTER511].content.sha256).toBe(samples['qemu-img/qemu-fixed.vhd'].content.sha256);
    });
  });

  describe('structural facts match info()', () => {
    it.each(names)('%s', async (rel) => {
      const s = samples[rel];
      const h = s.header;
      const d = await info(file(rel));
      expect(d.type).toBe(h.disk_type);
      expect(d.virtualSize).toBe(h.current_size);
      expect(d.originalSize).toBe(h.original_size);
      expect(d.fileSize).toBe(s.file_size);
      expect(d.uuid).toBe(h.uuid);
      expect(d.creator.application).toBe(String(h.creator_app).replace(/\0+$/, ''));
      expect(d.creator.version).toBe(h.creator_version);
      expect(d.creator.hostOs).toBe(String(h.creator_os).replace(/\0+$/, ''));
      expect([d.geometry.cylinders, d.geometry.heads, d.geometry.sectorsPerTrack]).toEqual(h.chs);
      expect(d.geometry.size).toBe(h.chs_size);
      expect(d.timestamp).toBe(vhdTimestampToDate(h.timestamp).toISOString());
      expect(d.timestamp).toBe(new Date(Date.UTC(2000, 0, 1) + h.timestamp * 1000).toISOString());
      if (h.disk_type === 'fixed') {
        expect(d.blockSize).toBeNull();
        expect(d.allocatedBlocks).toBeNull();
      } else {
        expect(d.blockSize).toBe(h.block_size);
        expect(d.totalBlocks).toBe(h.max_table_entries);
        expect(d.allocatedBlocks).toBe(h.allocated_blocks);
      }
      if (h.disk_type === 'differencing') {
        expect(d.parent).not.toBeNull();
        expect(d.parent!.uuid).toBe(h.parent_uuid);
        expect(d.parent!.name).toBe(h.parent_unicode_name);
        expect(d.parent!.timestamp).toBe(h.parent_timestamp === 0 ? null : vhdTimestampToDate(h.parent_timestamp).toISOString());
        expect(d.parent!.locators.map((l) => ({ code: l.platformCode, offset: l.dataOffset, length: l.dataLength, path: l.path }))).toEqual(
          h.parent_locators.map((l: any) => ({ code: l.code, offset: l.data_offset, length: l.data_length, path: l.value.replace(/^file:\/\//, '') })),
        );
        if (s.content.chain) {
          expect(d.chain.map((m) => m.uuid)).toEqual([h.uuid, ...s.content.chain.map((p: string) => samples[p].header.uuid)]);
          expect(d.parent!.path).not.toBeNull();
        }
      } else {
        expect(d.parent).toBeNull();
        expect(d.chain).toHaveLength(1);
      }
    });
  });

  describe('check()', () => {
    it.each(clean)('%s is ok', async (rel) => {
      const r = await check(file(rel));
      expect(r.errors).toEqual([]);
      expect(r.ok).toBe(true);
      const s = samples[rel];
      expect(r.chain).toHaveLength(1 + (s.content.chain?.length ?? 0));
    });

    it('strict check of the 511-byte footer sample fails on FOOTER_511', async () => {
      const r = await check(file(FOOTER511), { strict: true });
      expect(r.ok).toBe(false);
      expect(r.errors.map((f) => f.code)).toContain(ErrorCodes.FOOTER_511);
    });
  });
});
