/**
 * The pure format layer (src/format): layout tables, golden bytes, one broken field at a time,
 * checksum, CHS geometry, time stamps, UUIDs, parent locators, BAT and sector bitmaps.
 *
 * Every number here was checked against the Microsoft "Virtual Hard Disk Image Format
 * Specification" v1.0 (Oct 2006), not taken from the code under test:
 *   - hard disk footer: cookie 0, features 8, file format version 12, data offset 16, time stamp 24,
 *     creator application 28, creator version 32, creator host OS 36, original size 40,
 *     current size 48, disk geometry 56 (cylinder u16, heads u8, sectors/track u8), disk type 60,
 *     checksum 64, unique id 68 (16), saved state 84, reserved 85 (427); 512 bytes in all.
 *   - dynamic disk header: cookie 0, data offset 8, table offset 16, header version 24,
 *     max table entries 28, block size 32, checksum 36, parent unique id 40 (16),
 *     parent time stamp 56, reserved 60, parent unicode name 64 (512), parent locator entries
 *     576 (8 × 24: code, data space, data length, reserved, data offset u64), reserved 768 (256).
 *   - checksum: one's complement of the sum of all bytes, the checksum field taken as zero.
 *   - disk types: 0 none, 1 reserved (deprecated), 2 fixed, 3 dynamic, 4 differencing,
 *     5 reserved, 6 reserved (deprecated).
 *   - CHS: the algorithm of the spec's appendix, transcribed below as `specChs` (integer division).
 *   - time stamps: seconds since 2000-01-01 00:00:00 UTC.
 * Golden bytes come from the conformance corpus (../shared/corpus); the inline copies below are
 * checked against the corpus files when the corpus is present.
 */
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGunzip } from 'node:zlib';

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { ErrorCodes, VhdError, type ErrorCode } from '../src/errors.js';
import {
  allSet,
  BAT_UNUSED,
  baseName,
  bitmapByteSize,
  chsForSectors,
  allocatedIndices,
  batTable,
  countAllocated,
  dateToVhdTimestamp,
  decodeBat,
  decodeFooter,
  decodeHeader,
  decodeLocatorPath,
  decodeParentName,
  diskTypeName,
  encodeBat,
  encodeFooter,
  encodeHeader,
  encodeLocatorPath,
  encodeParentName,
  fileUrlToPath,
  findBit,
  FOOTER,
  FOOTER_SIZE,
  forEachAllocatedRun,
  forEachBitRun,
  geometryForWrite,
  geometrySize,
  HEADER,
  HEADER_SIZE,
  isUnusedLocator,
  LOCATOR_COUNT,
  LOCATOR_ENTRY,
  LOCATOR_ENTRY_SIZE,
  locatorSpaceBytes,
  MAX_GEOMETRY,
  MAX_GEOMETRY_SECTORS,
  setBit,
  setBits,
  testBit,
  UINT64_NONE,
  uuidFromString,
  uuidToString,
  vhdChecksum,
  vhdTimestampToDate,
  type Geometry,
} from '../src/format/index.js';

// ---------------------------------------------------------------------------------------------
// Helpers (independent of the code under test)
// ---------------------------------------------------------------------------------------------

const here = dirname(fileURLToPath(import.meta.url));
const corpusDir = resolve(here, '../../shared/corpus');
const corpusPresent = existsSync(join(corpusDir, 'expected.json'));
if (!corpusPresent) {
  console.warn(`format.test.ts: conformance corpus not found at ${corpusDir}; corpus cross-checks are SKIPPED`);
}

function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, '');
  if (clean.length % 2 !== 0) throw new Error(`odd hex length: ${text}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** A zero-filled structure of `size` bytes with hex segments placed at their offsets. */
function bytesWith(size: number, segments: ReadonlyArray<readonly [number, string]>): Uint8Array {
  const out = new Uint8Array(size);
  for (const [offset, h] of segments) out.set(hex(h), offset);
  return out;
}

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
const setU32 = (b: Uint8Array, at: number, v: number): void => dv(b).setUint32(at, v >>> 0, false);
const getU32 = (b: Uint8Array, at: number): number => dv(b).getUint32(at, false);
const setU64 = (b: Uint8Array, at: number, v: bigint): void => dv(b).setBigUint64(at, v, false);

/** The spec's checksum, written out independently: ~(sum of bytes, checksum field as zero). */
function specChecksum(b: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < b.length; i++) if (i < at || i >= at + 4) sum += b[i];
  return ~sum >>> 0;
}

function fixChecksum(b: Uint8Array, at: number): Uint8Array {
  setU32(b, at, specChecksum(b, at));
  return b;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Byte-for-byte equality; on failure names the first differing offset. */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what = 'bytes'): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  expect(firstDifference(actual, expected), `${what}: first differing offset (-1 = identical)`).toBe(-1);
}

interface Outcome<T> {
  value?: T;
  thrown?: VhdError;
  reported: VhdError[];
}

/** Runs a decoder with a collecting `report` callback; captures a thrown VhdError. */
function attempt<T>(fn: (report: (e: VhdError) => void) => T): Outcome<T> {
  const reported: VhdError[] = [];
  try {
    return { value: fn((e) => reported.push(e)), reported };
  } catch (e) {
    if (e instanceof VhdError) return { thrown: e, reported };
    throw e;
  }
}

const utf16le = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'utf16le'));
function utf16be(s: string): Uint8Array {
  const le = utf16le(s);
  for (let i = 0; i + 1 < le.length; i += 2) [le[i], le[i + 1]] = [le[i + 1], le[i]];
  return le;
}
const utf8 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'utf8'));

const versionText = (v: number): string => `${v >>> 16}.${v & 0xffff}`;
const chsOf = (g: Geometry): [number, number, number] => [g.cylinders, g.heads, g.sectorsPerTrack];

/** The spec's CHS algorithm (appendix), transcribed with C integer division. */
function specChs(totalSectorsIn: number): [number, number, number] {
  let totalSectors = totalSectorsIn;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors > 65535 * 16 * 255) totalSectors = 65535 * 16 * 255;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.trunc(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.trunc(totalSectors / sectorsPerTrack);
    heads = Math.trunc((cylinderTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.trunc(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.trunc(totalSectors / sectorsPerTrack);
    }
  }
  return [Math.trunc(cylinderTimesHeads / heads), heads, sectorsPerTrack];
}

// ---------------------------------------------------------------------------------------------
// Golden bytes (inline copies of corpus structures; verified against the corpus below)
// ---------------------------------------------------------------------------------------------

/** blktap/child.vhd bytes 0..511: the footer copy. Every byte past offset 83 is zero. */
const CHILD_FOOTER_HEX =
  '636f6e6563746978 00000002 00010000 0000000000000200 329ad717 74617000 00010003 00000000' +
  '0000000001400000 0000000001400000 025a 04 11 00000004 ffffef6d 27bf9ccf891440309efefae3919f3ff0';
/** blktap/child.vhd bytes 512..1535: the dynamic header (parent base.vhd, three locators). */
const CHILD_HEADER_SEGMENTS: ReadonlyArray<readonly [number, string]> = [
  [
    0,
    '6378737061727365 ffffffffffffffff 0000000000000600 00010000 0000000a 00200000 ffffe316' +
      '0f56fd54141844dd96cc2bf7b3af25d9 329ad717 00000000',
  ],
  [64, '0062 0061 0073 0065 002e 0076 0068 0064'],
  [
    576,
    '4d616358 00000200 00000011 00000000 0000000000000c00' +
      '57326b75 00000200 00000014 00000000 0000000000000e00' +
      '57327275 00000200 00000014 00000000 0000000000001000',
  ],
];
/** windows/dissect-win10-dynamic.vhd bytes 0..511 (Windows 10, dynamic). */
const WIN10_FOOTER_HEX =
  '636f6e6563746978 00000002 00010000 0000000000000200 260cf38f 77696e20 000a0000 5769326b' +
  '0000000000a00000 0000000000a00000 012d 04 11 00000003 ffffee6f 4b6a0d04f946d74e836fd3dc87e1816b';
/** windows/dissect-win10-dynamic.vhd bytes 512..1535. */
const WIN10_HEADER_HEX =
  '6378737061727365 ffffffffffffffff 0000000000000600 00010000 00000005 00200000 fffff472';
/** windows/dissect-win10-dynamic.vhd bytes 1536..1555: its BAT (block 0 at 15, 1 at 8223, 3 at 4119). */
const WIN10_BAT_HEX = '0000000f 0000201f ffffffff 00001017 ffffffff';

const childFooter = (): Uint8Array => bytesWith(512, [[0, CHILD_FOOTER_HEX]]);
const childHeader = (): Uint8Array => bytesWith(1024, CHILD_HEADER_SEGMENTS);
const win10Footer = (): Uint8Array => bytesWith(512, [[0, WIN10_FOOTER_HEX]]);
const win10Header = (): Uint8Array => bytesWith(1024, [[0, WIN10_HEADER_HEX]]);

// ---------------------------------------------------------------------------------------------
// Corpus access (streamed: only the head and the last 512 bytes of each file are kept)
// ---------------------------------------------------------------------------------------------

interface Sample {
  head: Uint8Array;
  tail: Uint8Array;
  size: number;
}

const sampleCache = new Map<string, Promise<Sample>>();

function loadSample(rel: string, headMax = 512 * 1024): Promise<Sample> {
  let p = sampleCache.get(rel);
  if (!p) {
    p = (async () => {
      const gunzip = createReadStream(join(corpusDir, `${rel}.gz`)).pipe(createGunzip());
      const headParts: Buffer[] = [];
      let headLen = 0;
      let size = 0;
      let tail = Buffer.alloc(0);
      for await (const chunk of gunzip as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (headLen < headMax) {
          const take = chunk.subarray(0, headMax - headLen);
          headParts.push(Buffer.from(take));
          headLen += take.length;
        }
        tail = chunk.length >= 512 ? Buffer.from(chunk.subarray(chunk.length - 512)) : Buffer.concat([tail, chunk]).subarray(-512);
      }
      return { head: new Uint8Array(Buffer.concat(headParts)), tail: new Uint8Array(tail), size };
    })();
    sampleCache.set(rel, p);
  }
  return p;
}

interface ExpectedHeader {
  file_size: number;
  creator_app: string;
  creator_version: string;
  creator_os: string;
  disk_type: 'fixed' | 'dynamic' | 'differencing';
  current_size: number;
  original_size: number;
  chs: [number, number, number];
  footer_checksum_ok: boolean;
  uuid: string;
  timestamp: number;
  footer_copy_at_0_identical?: boolean;
  dyn_header_checksum_ok?: boolean;
  block_size?: number;
  bat_offset?: number;
  max_table_entries?: number;
  allocated_blocks?: number;
  bat_in_file_order?: boolean;
  parent_uuid?: string;
  parent_timestamp?: number;
  parent_unicode_name?: string;
  parent_locators?: Array<{ code: string; data_space: number; data_length: number; data_offset: number; value: string }>;
}

const expectedSamples: Record<string, { header: ExpectedHeader }> = corpusPresent
  ? JSON.parse(readFileSync(join(corpusDir, 'expected.json'), 'utf8')).samples
  : {};

// ---------------------------------------------------------------------------------------------
// Layout tables
// ---------------------------------------------------------------------------------------------

describe('layout tables match the specification offsets', () => {
  it('FOOTER: every field at its spec offset and size, 512 bytes in all', () => {
    const spec: Array<[keyof typeof FOOTER, number, number]> = [
      ['cookie', 0, 8],
      ['features', 8, 4],
      ['fileFormatVersion', 12, 4],
      ['dataOffset', 16, 8],
      ['timestamp', 24, 4],
      ['creatorApplication', 28, 4],
      ['creatorVersion', 32, 4],
      ['creatorHostOs', 36, 4],
      ['originalSize', 40, 8],
      ['currentSize', 48, 8],
      ['cylinders', 56, 2], // disk geometry 56: cylinder (2), heads (1), sectors per track (1)
      ['heads', 58, 1],
      ['sectorsPerTrack', 59, 1],
      ['diskType', 60, 4],
      ['checksum', 64, 4],
      ['uniqueId', 68, 16],
      ['savedState', 84, 1],
      ['reserved', 85, 427],
    ];
    for (const [name, offset, size] of spec) {
      const f = FOOTER[name] as { offset: number; size: number };
      expect({ name, offset: f.offset, size: f.size }).toEqual({ name, offset, size });
    }
    expect(FOOTER.$size).toBe(512);
    expect(FOOTER_SIZE).toBe(512);
    // No field beyond the spec's: the table has exactly these entries.
    expect(Object.keys(FOOTER).filter((k) => k !== '$size').sort()).toEqual(spec.map(([n]) => n as string).sort());
  });

  it('HEADER: every field at its spec offset and size, 1024 bytes in all', () => {
    const spec: Array<[keyof typeof HEADER, number, number]> = [
      ['cookie', 0, 8],
      ['dataOffset', 8, 8],
      ['tableOffset', 16, 8],
      ['headerVersion', 24, 4],
      ['maxTableEntries', 28, 4],
      ['blockSize', 32, 4],
      ['checksum', 36, 4],
      ['parentUniqueId', 40, 16],
      ['parentTimestamp', 56, 4],
      ['reserved1', 60, 4],
      ['parentUnicodeName', 64, 512],
      ['parentLocators', 576, 8 * 24],
      ['reserved2', 768, 256],
    ];
    for (const [name, offset, size] of spec) {
      const f = HEADER[name] as { offset: number; size: number };
      expect({ name, offset: f.offset, size: f.size }).toEqual({ name, offset, size });
    }
    expect(HEADER.$size).toBe(1024);
    expect(HEADER_SIZE).toBe(1024);
    expect(Object.keys(HEADER).filter((k) => k !== '$size').sort()).toEqual(spec.map(([n]) => n as string).sort());
  });

  it('LOCATOR_ENTRY: 8 entries of 24 bytes (code 0, space 4, length 8, reserved 12, offset 16 u64)', () => {
    expect(LOCATOR_COUNT).toBe(8);
    expect(LOCATOR_ENTRY_SIZE).toBe(24);
    expect(LOCATOR_ENTRY.$size).toBe(24);
    expect([LOCATOR_ENTRY.platformCode.offset, LOCATOR_ENTRY.platformCode.size]).toEqual([0, 4]);
    expect([LOCATOR_ENTRY.platformDataSpace.offset, LOCATOR_ENTRY.platformDataSpace.size]).toEqual([4, 4]);
    expect([LOCATOR_ENTRY.platformDataLength.offset, LOCATOR_ENTRY.platformDataLength.size]).toEqual([8, 4]);
    expect([LOCATOR_ENTRY.reserved.offset, LOCATOR_ENTRY.reserved.size]).toEqual([12, 4]);
    expect([LOCATOR_ENTRY.platformDataOffset.offset, LOCATOR_ENTRY.platformDataOffset.size]).toEqual([16, 8]);
    expect(LOCATOR_COUNT * LOCATOR_ENTRY_SIZE).toBe(HEADER.parentLocators.size);
  });

  it('decode reads each footer field from its spec offset, and encode writes it back there', () => {
    // A footer with a distinct value in every field, written with DataView at the spec offsets.
    const b = new Uint8Array(512);
    b.set(utf8('conectix'), 0);
    setU32(b, 8, 0x00000003); // features: temporary + reserved bit
    setU32(b, 12, 0x00010000);
    setU64(b, 16, 0x0000000000000200n);
    setU32(b, 24, 0x11223344);
    b.set(utf8('abcd'), 28);
    setU32(b, 32, 0x00070009);
    b.set(utf8('Mac '), 36);
    setU64(b, 40, 0x0000000123456000n);
    setU64(b, 48, 0x0000000765432000n);
    dv(b).setUint16(56, 0xabcd, false);
    b[58] = 0x0e;
    b[59] = 0x3f;
    setU32(b, 60, 3);
    for (let i = 0; i < 16; i++) b[68 + i] = 0xa0 + i;
    b[84] = 0;
    for (let i = 85; i < 512; i++) b[i] = (i * 7) & 0xff; // reserved bytes are kept, whatever they hold
    fixChecksum(b, 64);

    const r = attempt((report) => decodeFooter(b, 0, report));
    expect(r.thrown).toBeUndefined();
    expect(r.reported.map((e) => e.code)).toEqual([]);
    const f = r.value!;
    expect(f.cookie).toBe('conectix');
    expect(f.features).toBe(3);
    expect(f.fileFormatVersion).toBe(0x00010000);
    expect(f.dataOffset).toBe(512n);
    expect(f.timestamp).toBe(0x11223344);
    expect(f.creatorApplication).toBe('abcd');
    expect(f.creatorVersion).toBe(0x00070009);
    expect(f.creatorHostOs).toBe('Mac ');
    expect(f.originalSize).toBe(0x123456000n);
    expect(f.currentSize).toBe(0x765432000n);
    expect(f.geometry).toEqual({ cylinders: 0xabcd, heads: 14, sectorsPerTrack: 63 });
    expect(f.diskType).toBe(3);
    expect(f.checksum).toBe(getU32(b, 64));
    expect(Array.from(f.uniqueId)).toEqual(Array.from({ length: 16 }, (_, i) => 0xa0 + i));
    expect(f.savedState).toBe(0);
    expectSameBytes(encodeFooter(f, false), b, 'footer re-encoded (stored checksum)');
    expectSameBytes(encodeFooter(f, true), b, 'footer re-encoded (computed checksum)');
  });

  it('decode reads each header field from its spec offset, and encode writes it back there (reserved bytes too)', () => {
    const b = new Uint8Array(1024);
    b.set(utf8('cxsparse'), 0);
    setU64(b, 8, UINT64_NONE);
    setU64(b, 16, 0x0000000000003000n);
    setU32(b, 24, 0x00010000);
    setU32(b, 28, 0x00001234);
    setU32(b, 32, 0x00080000);
    for (let i = 0; i < 16; i++) b[40 + i] = 0x50 + i;
    setU32(b, 56, 0x0badcafe);
    setU32(b, 60, 0x01020304); // reserved
    b.set(utf16be('parent name'), 64);
    const codes = ['W2ku', 'W2ru', 'MacX', 'Wi2k', 'Wi2r', 'Mac ', 'W2ku', 'W2ru'];
    for (let i = 0; i < 8; i++) {
      const o = 576 + i * 24;
      b.set(utf8(codes[i]), o);
      setU32(b, o + 4, 0x100 + i);
      setU32(b, o + 8, 0x200 + i);
      setU32(b, o + 12, 0x300 + i); // reserved
      setU64(b, o + 16, 0x0000000400000000n + BigInt(i));
    }
    for (let i = 768; i < 1024; i++) b[i] = (i * 13) & 0xff;
    fixChecksum(b, 36);

    const r = attempt((report) => decodeHeader(b, 0, report));
    expect(r.thrown).toBeUndefined();
    expect(r.reported.map((e) => e.code)).toEqual([]);
    const h = r.value!;
    expect(h.cookie).toBe('cxsparse');
    expect(h.dataOffset).toBe(UINT64_NONE);
    expect(h.tableOffset).toBe(0x3000n);
    expect(h.headerVersion).toBe(0x00010000);
    expect(h.maxTableEntries).toBe(0x1234);
    expect(h.blockSize).toBe(0x80000);
    expect(h.checksum).toBe(getU32(b, 36));
    expect(Array.from(h.parentUniqueId)).toEqual(Array.from({ length: 16 }, (_, i) => 0x50 + i));
    expect(h.parentTimestamp).toBe(0x0badcafe);
    expect(decodeParentName(h.parentUnicodeName)).toBe('parent name');
    expect(h.parentLocators).toHaveLength(8);
    h.parentLocators.forEach((e, i) => {
      expect(e.platformCode).toBe(codes[i]);
      expect(e.platformDataSpace).toBe(0x100 + i);
      expect(e.platformDataLength).toBe(0x200 + i);
      expect(e.platformDataOffset).toBe(0x400000000n + BigInt(i));
    });
    expectSameBytes(encodeHeader(h, false), b, 'header re-encoded (stored checksum)');
    expectSameBytes(encodeHeader(h, true), b, 'header re-encoded (computed checksum)');
  });
});

// ---------------------------------------------------------------------------------------------
// Golden bytes
// ---------------------------------------------------------------------------------------------

describe('golden bytes from real files', () => {
  it('blktap child.vhd footer decodes to the documented values and re-encodes byte for byte', () => {
    const b = childFooter();
    const r = attempt((report) => decodeFooter(b, 0, report));
    expect(r.thrown).toBeUndefined();
    expect(r.reported).toEqual([]);
    const f = r.value!;
    expect(f.cookie).toBe('conectix');
    expect(f.features).toBe(2);
    expect(f.fileFormatVersion).toBe(0x00010000);
    expect(f.dataOffset).toBe(512n);
    expect(f.timestamp).toBe(849008407);
    expect(f.creatorApplication).toBe('tap\0');
    expect(versionText(f.creatorVersion)).toBe('1.3');
    expect(f.creatorHostOs).toBe('\0\0\0\0');
    expect(f.originalSize).toBe(20971520n);
    expect(f.currentSize).toBe(20971520n);
    expect(chsOf(f.geometry)).toEqual([602, 4, 17]);
    expect(f.diskType).toBe(4);
    expect(diskTypeName(f.diskType)).toBe('differencing');
    expect(f.checksum).toBe(0xffffef6d);
    expect(uuidToString(f.uniqueId)).toBe('27bf9ccf-8914-4030-9efe-fae3919f3ff0');
    expect(f.savedState).toBe(0);
    expect(f.reserved.length).toBe(427);
    expectSameBytes(encodeFooter(f, false), b, 'child footer');
    expectSameBytes(encodeFooter(f), b, 'child footer, checksum recomputed');
  });

  it('blktap child.vhd dynamic header decodes to the documented values and re-encodes byte for byte', () => {
    const b = childHeader();
    const r = attempt((report) => decodeHeader(b, 512, report));
    expect(r.thrown).toBeUndefined();
    expect(r.reported).toEqual([]);
    const h = r.value!;
    expect(h.cookie).toBe('cxsparse');
    expect(h.dataOffset).toBe(UINT64_NONE);
    expect(h.tableOffset).toBe(1536n);
    expect(h.headerVersion).toBe(0x00010000);
    expect(h.maxTableEntries).toBe(10);
    expect(h.blockSize).toBe(2097152);
    expect(h.checksum).toBe(0xffffe316);
    expect(uuidToString(h.parentUniqueId)).toBe('0f56fd54-1418-44dd-96cc-2bf7b3af25d9');
    expect(h.parentTimestamp).toBe(849008407);
    expect(decodeParentName(h.parentUnicodeName)).toBe('base.vhd');
    const used = h.parentLocators.filter((e) => !isUnusedLocator(e));
    expect(used.map((e) => [e.platformCode, e.platformDataSpace, e.platformDataLength, Number(e.platformDataOffset)])).toEqual([
      ['MacX', 512, 17, 3072],
      ['W2ku', 512, 20, 3584],
      ['W2ru', 512, 20, 4096],
    ]);
    expect(h.parentLocators.slice(3).every(isUnusedLocator)).toBe(true);
    expectSameBytes(encodeHeader(h, false), b, 'child header');
    expectSameBytes(encodeHeader(h), b, 'child header, checksum recomputed');
  });

  it('Windows 10 dynamic footer and header decode to the documented values and re-encode byte for byte', () => {
    const fb = win10Footer();
    const fr = attempt((report) => decodeFooter(fb, 0, report));
    expect(fr.thrown).toBeUndefined();
    expect(fr.reported).toEqual([]);
    const f = fr.value!;
    expect(f.creatorApplication).toBe('win ');
    expect(versionText(f.creatorVersion)).toBe('10.0');
    expect(f.creatorHostOs).toBe('Wi2k');
    expect(f.currentSize).toBe(10485760n);
    expect(f.originalSize).toBe(10485760n);
    expect(chsOf(f.geometry)).toEqual([301, 4, 17]);
    expect(diskTypeName(f.diskType)).toBe('dynamic');
    expect(f.timestamp).toBe(638382991);
    expect(uuidToString(f.uniqueId)).toBe('4b6a0d04-f946-d74e-836f-d3dc87e1816b');
    expectSameBytes(encodeFooter(f, false), fb, 'win10 footer');

    const hb = win10Header();
    const hr = attempt((report) => decodeHeader(hb, 512, report));
    expect(hr.thrown).toBeUndefined();
    expect(hr.reported).toEqual([]);
    const h = hr.value!;
    expect(h.blockSize).toBe(2097152);
    expect(h.maxTableEntries).toBe(5);
    expect(h.tableOffset).toBe(1536n);
    expect(h.parentLocators.every(isUnusedLocator)).toBe(true);
    expectSameBytes(encodeHeader(h, false), hb, 'win10 header');
  });

  it('a footer and header whose reserved bytes are not zero still round-trip byte for byte', () => {
    const fb = childFooter();
    for (let i = 85; i < 512; i += 3) fb[i] = 0x5a;
    fixChecksum(fb, 64);
    expectSameBytes(encodeFooter(decodeFooter(fb), false), fb, 'footer with reserved bytes');

    const hb = childHeader();
    setU32(hb, 60, 0xdeadbeef);
    setU32(hb, 576 + 12, 0x01020304); // locator 0 reserved
    for (let i = 768; i < 1024; i += 5) hb[i] = 0xa5;
    fixChecksum(hb, 36);
    expectSameBytes(encodeHeader(decodeHeader(hb), false), hb, 'header with reserved bytes');
  });

  describe.skipIf(!corpusPresent)('inline golden bytes are the corpus bytes', () => {
    it('blktap/child.vhd: footer copy at 0, header at 512, footer at the end', async () => {
      const s = await loadSample('blktap/child.vhd');
      expectSameBytes(s.head.subarray(0, 512), childFooter(), 'child footer copy');
      expectSameBytes(s.head.subarray(512, 1536), childHeader(), 'child header');
      expectSameBytes(s.tail, childFooter(), 'child footer at the end');
    });
    it('windows/dissect-win10-dynamic.vhd: footer, header and BAT', async () => {
      const s = await loadSample('windows/dissect-win10-dynamic.vhd');
      expectSameBytes(s.head.subarray(0, 512), win10Footer(), 'win10 footer copy');
      expectSameBytes(s.head.subarray(512, 1536), win10Header(), 'win10 header');
      expectSameBytes(s.head.subarray(1536, 1556), hex(WIN10_BAT_HEX), 'win10 BAT');
      expectSameBytes(s.tail, win10Footer(), 'win10 footer at the end');
    });
  });
});

// Every corpus sample: footer (and header, BAT, locators) against expected.json, and byte-exact re-encoding.
describe.skipIf(!corpusPresent)('corpus samples decode to expected.json and re-encode byte for byte', () => {
  for (const [rel, { header: x }] of Object.entries(expectedSamples)) {
    it(rel, async () => {
      const s = await loadSample(rel);
      expect(s.size).toBe(x.file_size);

      let footerBytes = s.tail;
      if (s.size % 512 !== 0) {
        // Old Virtual PC style: a 511-byte footer. The format layer wants 512 bytes and says so.
        const short = s.tail.subarray(512 - (s.size % 512));
        const r = attempt(() => decodeFooter(short, s.size - short.length));
        expect(r.thrown?.code).toBe(ErrorCodes.FILE_TOO_SMALL);
        footerBytes = new Uint8Array(512);
        footerBytes.set(short);
      }
      const footerAt = s.size - (s.size % 512 || 512);
      const fr = attempt((report) => decodeFooter(footerBytes, footerAt, report));
      expect(fr.thrown).toBeUndefined();
      const f = fr.value!;
      expect(f.creatorApplication).toBe(x.creator_app);
      expect(versionText(f.creatorVersion)).toBe(x.creator_version);
      expect(f.creatorHostOs).toBe(x.creator_os);
      expect(diskTypeName(f.diskType)).toBe(x.disk_type);
      expect(f.currentSize).toBe(BigInt(x.current_size));
      expect(f.originalSize).toBe(BigInt(x.original_size));
      expect(chsOf(f.geometry)).toEqual(x.chs);
      expect(uuidToString(f.uniqueId)).toBe(x.uuid);
      expect(f.timestamp).toBe(x.timestamp);
      // The only finding a corpus footer may produce is a checksum mismatch the manifest documents.
      const expectedFooterFindings = x.footer_checksum_ok ? [] : [[ErrorCodes.FOOTER_CHECKSUM, footerAt + 64]];
      expect(fr.reported.map((e) => [e.code, e.offset])).toEqual(expectedFooterFindings);
      expectSameBytes(encodeFooter(f, false), footerBytes, `${rel} footer`);
      if (x.footer_checksum_ok) expectSameBytes(encodeFooter(f, true), footerBytes, `${rel} footer, checksum recomputed`);
      if (x.footer_copy_at_0_identical) expectSameBytes(s.head.subarray(0, 512), footerBytes, `${rel} footer copy at 0`);

      // CHS: the stored geometry is the spec's for the size, except for writers that store the maximum.
      if (!(x.chs[0] === 65535 && x.chs[1] === 16 && x.chs[2] === 255)) {
        expect(chsOf(chsForSectors(x.current_size / 512))).toEqual(x.chs);
      }

      if (x.disk_type === 'fixed') {
        expect(f.dataOffset).toBe(UINT64_NONE);
        return;
      }
      const at = Number(f.dataOffset);
      const hb = s.head.subarray(at, at + 1024);
      const hr = attempt((report) => decodeHeader(hb, at, report));
      expect(hr.thrown).toBeUndefined();
      const h = hr.value!;
      const expectedHeaderFindings = x.dyn_header_checksum_ok ? [] : [[ErrorCodes.HEADER_CHECKSUM, at + 36]];
      expect(hr.reported.map((e) => [e.code, e.offset])).toEqual(expectedHeaderFindings);
      expect(h.blockSize).toBe(x.block_size);
      expect(h.maxTableEntries).toBe(x.max_table_entries);
      expect(Number(h.tableOffset)).toBe(x.bat_offset);
      expectSameBytes(encodeHeader(h, false), hb, `${rel} header`);

      const batAt = Number(h.tableOffset);
      const bat = decodeBat(s.head.subarray(batAt, batAt + h.maxTableEntries * 4), h.maxTableEntries);
      expect(countAllocated(bat)).toBe(x.allocated_blocks);
      const allocated = Array.from(bat).filter((v) => v !== BAT_UNUSED);
      const inOrder = allocated.every((v, i) => i === 0 || v > allocated[i - 1]);
      expect(inOrder).toBe(x.bat_in_file_order);

      if (x.disk_type === 'differencing') {
        expect(uuidToString(h.parentUniqueId)).toBe(x.parent_uuid);
        expect(h.parentTimestamp).toBe(x.parent_timestamp);
        expect(decodeParentName(h.parentUnicodeName)).toBe(x.parent_unicode_name);
        const used = h.parentLocators.filter((e) => !isUnusedLocator(e));
        expect(
          used.map((e) => ({
            code: e.platformCode,
            data_space: e.platformDataSpace,
            data_length: e.platformDataLength,
            data_offset: Number(e.platformDataOffset),
          })),
        ).toEqual((x.parent_locators ?? []).map(({ value: _v, ...rest }) => rest));
        for (const loc of x.parent_locators ?? []) {
          const data = s.head.subarray(loc.data_offset, loc.data_offset + loc.data_length);
          const want = loc.code === 'MacX' ? fileUrlToPath(loc.value) : loc.value;
          expect(decodeLocatorPath(loc.code, data)).toBe(want);
        }
      }
    });
  }

  it('dfvfs/image.vhd: the wrong footer checksum is reported with stored and computed values', async () => {
    const s = await loadSample('dfvfs/image.vhd');
    for (const [bytes, at] of [
      [s.head.subarray(0, 512), 0],
      [s.tail, s.size - 512],
    ] as const) {
      const r = attempt((report) => decodeFooter(bytes, at, report));
      expect(r.thrown).toBeUndefined();
      expect(r.reported).toHaveLength(1);
      const e = r.reported[0];
      expect(e.code).toBe(ErrorCodes.FOOTER_CHECKSUM);
      expect(e.offset).toBe(at + 64);
      expect(e.actual).toBe(0xfffff683); // stored (MANIFEST)
      expect(e.expected).toBe(0xffffef25); // computed (MANIFEST)
      expect(vhdChecksum(bytes, FOOTER.checksum)).toBe(0xffffef25);
      // Re-encoding keeps the wrong checksum when asked to, and fixes it otherwise.
      expectSameBytes(encodeFooter(r.value!, false), bytes, 'image.vhd footer as stored');
      expect(getU32(encodeFooter(r.value!), 64)).toBe(0xffffef25);
    }
  });

  it('windows/dfvfs-fat-differential.vhd: W2ku/W2ru locators with data_space in bytes', async () => {
    const s = await loadSample('windows/dfvfs-fat-differential.vhd');
    const h = decodeHeader(s.head.subarray(512, 1536), 512);
    expect(decodeParentName(h.parentUnicodeName)).toBe('C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd');
    const [w2ku, w2ru] = h.parentLocators;
    expect(w2ku.platformCode).toBe('W2ku');
    expect(locatorSpaceBytes(w2ku.platformDataSpace)).toBe(4096);
    expect(w2ru.platformCode).toBe('W2ru');
    expect(locatorSpaceBytes(w2ru.platformDataSpace)).toBe(65536);
    const ku = decodeLocatorPath('W2ku', s.head.subarray(4096, 4096 + 84));
    const ru = decodeLocatorPath('W2ru', s.head.subarray(12288, 12288 + 32));
    expect(ku).toBe('C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd');
    expect(ru).toBe('.\\fat-parent.vhd');
    expect(baseName(ku!)).toBe('fat-parent.vhd');
    expect(baseName(ru!)).toBe('fat-parent.vhd');
  });

  it('windows/dfvfs-fat-differential.vhd: block 0 bitmap has the 18 documented sectors (MSB first)', async () => {
    const s = await loadSample('windows/dfvfs-fat-differential.vhd');
    const bitmap = s.head.subarray(159 * 512, 159 * 512 + bitmapByteSize(2097152));
    const present: Array<[number, number]> = [];
    forEachBitRun(bitmap, 0, 4096, (start, end, p) => {
      if (p) present.push([start, end]);
    });
    expect(present).toEqual([
      [134, 135],
      [143, 144],
      [152, 160],
      [184, 186],
      [188, 189],
      [190, 193],
      [194, 195],
      [196, 197],
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// One broken field at a time
// ---------------------------------------------------------------------------------------------

type Mode = 'throw' | 'report' | 'either';
interface Break {
  name: string;
  mutate: (b: Uint8Array) => void;
  /** Recompute the checksum after the change, so that only the broken field is wrong. */
  fix: boolean;
  code: ErrorCode;
  mode: Mode;
  /** Offset of the broken field inside the structure. */
  field: number;
}

function checkBreak(b: Break, base: () => Uint8Array, at: number, decode: (bytes: Uint8Array, at: number, report: (e: VhdError) => void) => unknown, checksumAt: number): void {
  const bytes = base();
  b.mutate(bytes);
  if (b.fix) fixChecksum(bytes, checksumAt);
  const r = attempt((report) => decode(bytes, at, report));
  const all = [...(r.thrown ? [r.thrown] : []), ...r.reported];
  if (b.mode === 'throw') {
    expect(r.thrown?.code, `${b.name}: thrown code`).toBe(b.code);
    expect(r.thrown?.offset, `${b.name}: offset of the field`).toBe(at + b.field);
    expect(r.thrown?.message).toContain(`at offset ${at + b.field}`);
    expect(r.thrown?.message).not.toContain('\n');
  } else if (b.mode === 'report') {
    expect(r.thrown, `${b.name}: must not throw`).toBeUndefined();
    // Only the broken field is reported (the checksum was fixed, unless it is the broken field).
    expect(r.reported.map((e) => e.code)).toEqual([b.code]);
    expect(r.reported[0].offset, `${b.name}: offset of the field`).toBe(at + b.field);
  } else {
    const hit = all.find((e) => e.code === b.code);
    expect(hit?.code, `${b.name}: code thrown or reported`).toBe(b.code);
    expect(hit?.offset, `${b.name}: offset of the field`).toBe(at + b.field);
  }
  for (const e of all) expect(e).toBeInstanceOf(VhdError);
}

describe('footer: break one field at a time', () => {
  const AT = 8 * 1024 * 1024; // pretend this footer sits at the end of an 8 MiB file: offsets are absolute
  const decode = (bytes: Uint8Array, at: number, report: (e: VhdError) => void) => decodeFooter(bytes, at, report);

  it('the unbroken footer has no findings', () => {
    const r = attempt((report) => decodeFooter(childFooter(), AT, report));
    expect(r.thrown).toBeUndefined();
    expect(r.reported).toEqual([]);
  });

  const breaks: Break[] = [
    { name: 'cookie "conectiy"', mutate: (b) => (b[7] = 0x79), fix: true, code: ErrorCodes.FOOTER_COOKIE, mode: 'throw', field: 0 },
    { name: 'cookie zeroed', mutate: (b) => b.fill(0, 0, 8), fix: true, code: ErrorCodes.FOOTER_COOKIE, mode: 'throw', field: 0 },
    { name: 'cookie "cxsparse"', mutate: (b) => b.set(utf8('cxsparse'), 0), fix: true, code: ErrorCodes.FOOTER_COOKIE, mode: 'throw', field: 0 },
    { name: 'checksum off by one', mutate: (b) => setU32(b, 64, getU32(b, 64) + 1), fix: false, code: ErrorCodes.FOOTER_CHECKSUM, mode: 'report', field: 64 },
    { name: 'checksum zero', mutate: (b) => setU32(b, 64, 0), fix: false, code: ErrorCodes.FOOTER_CHECKSUM, mode: 'report', field: 64 },
    { name: 'reserved byte changed, checksum stale', mutate: (b) => (b[400] = 1), fix: false, code: ErrorCodes.FOOTER_CHECKSUM, mode: 'report', field: 64 },
    { name: 'uuid byte changed, checksum stale', mutate: (b) => (b[70] ^= 0xff), fix: false, code: ErrorCodes.FOOTER_CHECKSUM, mode: 'report', field: 64 },
    ...[0, 1, 5, 6, 7, 0x102, 0xffffffff].map(
      (t): Break => ({ name: `disk type ${t}`, mutate: (b) => setU32(b, 60, t), fix: true, code: ErrorCodes.FOOTER_DISK_TYPE, mode: 'throw', field: 60 }),
    ),
    ...[0x00020000, 0x00000001, 0x00010001, 0].map(
      (v): Break => ({ name: `version 0x${v.toString(16)}`, mutate: (b) => setU32(b, 12, v), fix: true, code: ErrorCodes.FOOTER_VERSION, mode: 'report', field: 12 }),
    ),
    { name: 'current size 20971521 (not a multiple of 512)', mutate: (b) => setU64(b, 48, 20971521n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'either', field: 48 },
    { name: 'current size 20971520 + 256 (half a sector)', mutate: (b) => setU64(b, 48, 20971520n + 256n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'either', field: 48 },
    { name: 'current size 2^53 (checked conversion)', mutate: (b) => setU64(b, 48, 2n ** 53n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'throw', field: 48 },
    { name: 'current size 2^53 + 512', mutate: (b) => setU64(b, 48, 2n ** 53n + 512n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'throw', field: 48 },
    { name: 'current size 2^64 - 512', mutate: (b) => setU64(b, 48, 2n ** 64n - 512n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'throw', field: 48 },
    { name: 'current size 2040 GiB + 512 (past the spec maximum)', mutate: (b) => setU64(b, 48, 2040n * 2n ** 30n + 512n), fix: true, code: ErrorCodes.FOOTER_SIZE, mode: 'report', field: 48 },
    { name: 'saved state set', mutate: (b) => (b[84] = 1), fix: true, code: ErrorCodes.FOOTER_SAVED_STATE, mode: 'report', field: 84 },
    {
      name: 'fixed footer with data offset 512',
      mutate: (b) => {
        setU32(b, 60, 2);
        setU64(b, 16, 512n);
      },
      fix: true,
      code: ErrorCodes.FOOTER_DATA_OFFSET,
      mode: 'report',
      field: 16,
    },
    {
      name: 'fixed footer with data offset 0',
      mutate: (b) => {
        setU32(b, 60, 2);
        setU64(b, 16, 0n);
      },
      fix: true,
      code: ErrorCodes.FOOTER_DATA_OFFSET,
      mode: 'report',
      field: 16,
    },
    {
      name: 'fixed footer with data offset 0x00000000FFFFFFFF',
      mutate: (b) => {
        setU32(b, 60, 2);
        setU64(b, 16, 0xffffffffn);
      },
      fix: true,
      code: ErrorCodes.FOOTER_DATA_OFFSET,
      mode: 'report',
      field: 16,
    },
  ];

  for (const b of breaks) {
    it(`${b.name} → ${b.code} ${b.mode === 'throw' ? 'thrown' : b.mode === 'report' ? 'reported' : ''}`, () => {
      checkBreak(b, childFooter, AT, decode, 64);
    });
  }

  it('disk types 2, 3 and 4 are accepted; a fixed footer with an all-ones data offset has no findings', () => {
    for (const t of [2, 3, 4]) {
      const b = childFooter();
      setU32(b, 60, t);
      if (t === 2) setU64(b, 16, UINT64_NONE);
      fixChecksum(b, 64);
      const r = attempt((report) => decodeFooter(b, AT, report));
      expect(r.thrown).toBeUndefined();
      expect(r.reported).toEqual([]);
      expect(r.value!.diskType).toBe(t);
    }
  });

  it('the largest safe current size (2^53 - 512) is not a conversion error', () => {
    const b = childFooter();
    setU64(b, 48, 2n ** 53n - 512n);
    fixChecksum(b, 64);
    const r = attempt((report) => decodeFooter(b, AT, report));
    expect(r.thrown).toBeUndefined();
    expect(r.value!.currentSize).toBe(2n ** 53n - 512n); // stays an exact bigint
    // It is past 2040 GiB: a (reported) size finding, nothing thrown.
    expect(r.reported.map((e) => e.code)).toEqual([ErrorCodes.FOOTER_SIZE]);
  });

  it('a checksum-broken footer still re-encodes byte for byte when the stored checksum is kept', () => {
    const b = childFooter();
    setU32(b, 64, 0x12345678);
    const f = decodeFooter(b, AT, () => {});
    expectSameBytes(encodeFooter(f, false), b, 'footer with wrong checksum');
    expect(getU32(encodeFooter(f), 64)).toBe(0xffffef6d);
  });

  it('fewer than 512 bytes → FILE_TOO_SMALL', () => {
    const r = attempt(() => decodeFooter(childFooter().subarray(0, 511), AT));
    expect(r.thrown?.code).toBe(ErrorCodes.FILE_TOO_SMALL);
  });
});

describe('dynamic header: break one field at a time', () => {
  const AT = 512;
  const decode = (bytes: Uint8Array, at: number, report: (e: VhdError) => void) => decodeHeader(bytes, at, report);

  const breaks: Break[] = [
    { name: 'cookie "cxsparsf"', mutate: (b) => (b[7] = 0x66), fix: true, code: ErrorCodes.HEADER_COOKIE, mode: 'throw', field: 0 },
    { name: 'cookie "conectix"', mutate: (b) => b.set(utf8('conectix'), 0), fix: true, code: ErrorCodes.HEADER_COOKIE, mode: 'throw', field: 0 },
    { name: 'checksum off by one', mutate: (b) => setU32(b, 36, getU32(b, 36) + 1), fix: false, code: ErrorCodes.HEADER_CHECKSUM, mode: 'report', field: 36 },
    { name: 'parent name changed, checksum stale', mutate: (b) => (b[65] = 0x42), fix: false, code: ErrorCodes.HEADER_CHECKSUM, mode: 'report', field: 36 },
    { name: 'reserved2 byte changed, checksum stale', mutate: (b) => (b[1000] = 9), fix: false, code: ErrorCodes.HEADER_CHECKSUM, mode: 'report', field: 36 },
    ...[0x00020000, 0x00000001, 0].map(
      (v): Break => ({ name: `header version 0x${v.toString(16)}`, mutate: (b) => setU32(b, 24, v), fix: true, code: ErrorCodes.HEADER_VERSION, mode: 'report', field: 24 }),
    ),
    ...[0, 1, 256, 511, 3 * 1024 * 1024, 2 * 1024 * 1024 + 512, 512 * 1024 * 1024, 2 ** 31, 0xffffffff].map(
      (v): Break => ({ name: `block size ${v}`, mutate: (b) => setU32(b, 32, v), fix: true, code: ErrorCodes.HEADER_BLOCK_SIZE, mode: 'throw', field: 32 }),
    ),
    { name: 'table offset 1537 (not sector aligned)', mutate: (b) => setU64(b, 16, 1537n), fix: true, code: ErrorCodes.HEADER_TABLE_OFFSET, mode: 'report', field: 16 },
    { name: 'table offset all ones', mutate: (b) => setU64(b, 16, UINT64_NONE), fix: true, code: ErrorCodes.HEADER_TABLE_OFFSET, mode: 'report', field: 16 },
  ];

  for (const b of breaks) {
    it(`${b.name} → ${b.code} ${b.mode === 'throw' ? 'thrown' : b.mode === 'report' ? 'reported' : ''}`, () => {
      checkBreak(b, childHeader, AT, decode, 36);
    });
  }

  it('every power of two from 512 bytes to 256 MiB is an accepted block size', () => {
    for (let k = 9; k <= 28; k++) {
      const b = childHeader();
      setU32(b, 32, 2 ** k);
      fixChecksum(b, 36);
      const r = attempt((report) => decodeHeader(b, AT, report));
      expect(r.thrown, `block size 2^${k}`).toBeUndefined();
      expect(r.reported).toEqual([]);
      expect(r.value!.blockSize).toBe(2 ** k);
    }
  });

  it('a checksum-broken header still re-encodes byte for byte when the stored checksum is kept', () => {
    const b = childHeader();
    setU32(b, 36, 0);
    const h = decodeHeader(b, AT, () => {});
    expectSameBytes(encodeHeader(h, false), b, 'header with wrong checksum');
    expect(getU32(encodeHeader(h), 36)).toBe(0xffffe316);
  });

  it('fewer than 1024 bytes is an error with a code', () => {
    const r = attempt(() => decodeHeader(childHeader().subarray(0, 1023), AT));
    expect(r.thrown).toBeInstanceOf(VhdError);
    expect(r.thrown?.code).toBe(ErrorCodes.FILE_TRUNCATED);
  });
});

// ---------------------------------------------------------------------------------------------
// Checksum
// ---------------------------------------------------------------------------------------------

describe('checksum: one\'s complement of the byte sum, checksum field as zero', () => {
  const field = (offset: number) => ({ name: 'checksum', offset, size: 4 });

  it('hand-computed small examples', () => {
    // 1+2+3+4+5 = 15 (the four 0x09 bytes are the checksum field) → ~15 = 0xFFFFFFF0
    expect(vhdChecksum(Uint8Array.of(1, 2, 3, 4, 9, 9, 9, 9, 5), field(4))).toBe(0xfffffff0);
    // The field's content does not matter.
    expect(vhdChecksum(Uint8Array.of(1, 2, 3, 4, 0, 0, 0, 0, 5), field(4))).toBe(0xfffffff0);
    expect(vhdChecksum(new Uint8Array(512), FOOTER.checksum)).toBe(0xffffffff);
    // 508 bytes of 0xFF: 508 × 255 = 129540 = 0x1FA04 → 0xFFFFFFFF − 0x1FA04 = 0xFFFE05FB
    expect(vhdChecksum(new Uint8Array(512).fill(0xff), FOOTER.checksum)).toBe(0xfffe05fb);
    // 1020 bytes of 0xFF in a header: 260100 = 0x3F804 → 0xFFFC07FB
    expect(vhdChecksum(new Uint8Array(1024).fill(0xff), HEADER.checksum)).toBe(0xfffc07fb);
  });

  it('golden structures: computed checksum equals the stored one', () => {
    expect(vhdChecksum(childFooter(), FOOTER.checksum)).toBe(0xffffef6d);
    expect(vhdChecksum(childHeader(), HEADER.checksum)).toBe(0xffffe316);
    expect(vhdChecksum(win10Footer(), FOOTER.checksum)).toBe(0xffffee6f);
    expect(vhdChecksum(win10Header(), HEADER.checksum)).toBe(0xfffff472);
  });

  it('property: equals an independent implementation for any 512- or 1024-byte structure', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ minLength: 512, maxLength: 512 }), fc.uint8Array({ minLength: 1024, maxLength: 1024 })), (b) => {
        const at = b.length === 512 ? 64 : 36;
        const f = b.length === 512 ? FOOTER.checksum : HEADER.checksum;
        expect(vhdChecksum(b, f)).toBe(specChecksum(b, at));
      }),
      { numRuns: 200 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// CHS geometry
// ---------------------------------------------------------------------------------------------

describe('CHS geometry (spec appendix algorithm)', () => {
  const known: Array<[string, number, [number, number, number]]> = [
    ['10 MiB (corpus win10: 301/4/17)', 10485760, [301, 4, 17]],
    ['20 MiB (corpus blktap: 602/4/17)', 20971520, [602, 4, 17]],
    ['dfvfs ext2 4212736 (expected.json 121/4/17)', 4212736, [121, 4, 17]],
    ['4 MiB (corpus fat/fixed4 120/4/17)', 4194304, [120, 4, 17]],
    ['6 MiB (corpus p5 180/4/17)', 6291456, [180, 4, 17]],
    ['104448 (corpus image.vhd 3/4/17)', 104448, [3, 4, 17]],
    ['qemu 10514432 (302/4/17)', 10514432, [302, 4, 17]],
    ['hyperv/virtualpc 136365211648 (expected.json 65278/16/255)', 136365211648, [65278, 16, 255]],
    // Hand-computed with the spec algorithm: branch 31 and branch 63.
    ['278528 sectors → sectors-per-track 31', 278528 * 512, [561, 16, 31]],
    ['263454720 (d2v size) → sectors-per-track 63', 263454720, [510, 16, 63]],
    ['65535×16×63 − 1 sectors (last of branch 63)', (65535 * 16 * 63 - 1) * 512, [65534, 16, 63]],
    ['65535×16×63 sectors (first of branch 255)', 65535 * 16 * 63 * 512, [16191, 16, 255]],
  ];
  for (const [name, bytes, chs] of known) {
    it(name, () => {
      expect(chsOf(chsForSectors(bytes / 512))).toEqual(chs);
      expect(specChs(bytes / 512)).toEqual(chs); // the test's own transcription agrees
    });
  }

  it('sizes of 65535×16×255 sectors and more cap at 65535/16/255', () => {
    expect(MAX_GEOMETRY_SECTORS).toBe(65535 * 16 * 255);
    for (const sectors of [65535 * 16 * 255, 65535 * 16 * 255 + 1, 2040 * 2 ** 21, 2 ** 40]) {
      expect(chsOf(chsForSectors(sectors))).toEqual([65535, 16, 255]);
    }
    expect(chsOf(MAX_GEOMETRY)).toEqual([65535, 16, 255]);
  });

  it('geometryForWrite: the spec geometry when it describes the size exactly, else the maximum', () => {
    const exact: Array<[number, [number, number, number]]> = [
      [4212736, [121, 4, 17]],
      [10514432, [302, 4, 17]],
      [3168256, [91, 4, 17]],
      [104448, [3, 4, 17]],
      [1000 * 16 * 63 * 512, [1000, 16, 63]],
    ];
    for (const [size, chs] of exact) expect(chsOf(geometryForWrite(size)), `size ${size}`).toEqual(chs);
    for (const size of [10485760, 20971520, 4194304, 136365211648, 10000384, 2040 * 2 ** 30]) {
      expect(chsOf(geometryForWrite(size)), `size ${size}`).toEqual([65535, 16, 255]);
    }
    expect(geometrySize({ cylinders: 301, heads: 4, sectorsPerTrack: 17 })).toBe(10479616);
  });

  it('property: for any sector count up to the maximum, the result is the spec algorithm and within bounds', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAX_GEOMETRY_SECTORS }), (total) => {
        const g = chsForSectors(total);
        expect(g.heads).toBeLessThanOrEqual(16);
        expect([17, 31, 63, 255]).toContain(g.sectorsPerTrack);
        expect(g.cylinders).toBeLessThanOrEqual(65535);
        expect(g.cylinders * g.heads * g.sectorsPerTrack).toBeLessThanOrEqual(total);
        expect(chsOf(g)).toEqual(specChs(total));
      }),
      { numRuns: 2000 },
    );
  });

  it('property: past the maximum the geometry is always 65535/16/255', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: BigInt(MAX_GEOMETRY_SECTORS), max: 2n ** 44n }), (total) => {
        expect(chsOf(chsForSectors(Number(total)))).toEqual([65535, 16, 255]);
      }),
    );
  });

  it('property: geometryForWrite is exact-or-maximum for any sector-multiple size', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_GEOMETRY_SECTORS }), (sectors) => {
        const size = sectors * 512;
        const g = geometryForWrite(size);
        const spec = specChs(sectors);
        const specSize = spec[0] * spec[1] * spec[2] * 512;
        expect(chsOf(g)).toEqual(specSize === size ? spec : [65535, 16, 255]);
      }),
      { numRuns: 1000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Time stamps and UUIDs
// ---------------------------------------------------------------------------------------------

describe('time stamps: seconds since 2000-01-01T00:00:00Z', () => {
  it('epoch ↔ 0 and known values', () => {
    expect(vhdTimestampToDate(0).toISOString()).toBe('2000-01-01T00:00:00.000Z');
    expect(dateToVhdTimestamp(new Date('2000-01-01T00:00:00Z'))).toBe(0);
    const known: Array<[number, string]> = [
      [1, '2000-01-01T00:00:01.000Z'],
      [638382991, '2020-03-24T16:36:31.000Z'], // corpus win10 footer
      [849008407, '2026-11-26T11:40:07.000Z'], // corpus blktap footer
      [0xffffffff, '2136-02-07T06:28:15.000Z'],
    ];
    for (const [s, iso] of known) {
      expect(vhdTimestampToDate(s).toISOString()).toBe(iso);
      expect(dateToVhdTimestamp(new Date(iso))).toBe(s);
    }
  });

  it('fractions of a second are dropped, not rounded up', () => {
    expect(dateToVhdTimestamp(new Date(Date.UTC(2000, 0, 1, 0, 0, 1, 999)))).toBe(1);
  });

  it('property: round trip over the whole unsigned 32-bit range', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 0xffffffffn }), (big) => {
        const s = Number(big);
        expect(dateToVhdTimestamp(vhdTimestampToDate(s))).toBe(s);
      }),
    );
  });
});

describe('UUIDs: 16 raw bytes, text in file order', () => {
  it('the golden footer uuid prints its bytes in file order (no GUID byte swapping)', () => {
    const b = childFooter();
    const raw = b.slice(68, 84);
    expect(uuidToString(raw)).toBe('27bf9ccf-8914-4030-9efe-fae3919f3ff0');
    expectSameBytes(uuidFromString('27bf9ccf-8914-4030-9efe-fae3919f3ff0'), raw, 'uuid bytes');
    expect(uuidFromString('00010203-0405-0607-0809-0a0b0c0d0e0f')).toEqual(Uint8Array.from({ length: 16 }, (_, i) => i));
    expect(uuidToString(Uint8Array.from({ length: 16 }, (_, i) => i))).toBe('00010203-0405-0607-0809-0a0b0c0d0e0f');
  });

  it('upper-case text parses to the same bytes; malformed text is rejected', () => {
    expect(uuidFromString('4B6A0D04-F946-D74E-836F-D3DC87E1816B')).toEqual(uuidFromString('4b6a0d04-f946-d74e-836f-d3dc87e1816b'));
    for (const bad of ['', 'not-a-uuid', '4b6a0d04-f946-d74e-836f-d3dc87e1816', '4b6a0d04-f946-d74e-836f-d3dc87e1816bb', 'zb6a0d04-f946-d74e-836f-d3dc87e1816b']) {
      expect(() => uuidFromString(bad), bad).toThrow();
    }
  });

  it('property: bytes → text → bytes and text → bytes → text', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (raw) => {
        const text = uuidToString(raw);
        expect(text).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
        expect(text.replace(/-/g, '')).toBe(Buffer.from(raw).toString('hex'));
        expect(uuidFromString(text)).toEqual(Uint8Array.from(raw));
      }),
    );
    fc.assert(
      fc.property(fc.uuid(), (text) => {
        expect(uuidToString(uuidFromString(text))).toBe(text.toLowerCase());
      }),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Parent locators and the header's parent name
// ---------------------------------------------------------------------------------------------

describe('parent locators', () => {
  it('W2ku: UTF-16LE encode/decode of an absolute Windows path', () => {
    const path = 'C:\\Projects\\x.vhd';
    const bytes = encodeLocatorPath('W2ku', path);
    expectSameBytes(bytes, utf16le(path), 'W2ku bytes');
    expect(Array.from(bytes.subarray(0, 6))).toEqual([0x43, 0x00, 0x3a, 0x00, 0x5c, 0x00]);
    expect(decodeLocatorPath('W2ku', bytes)).toBe(path);
  });

  it('W2ru: UTF-16LE with non-ASCII characters (é, 日本), decoded up to the NUL padding', () => {
    for (const path of ['.\\base.vhd', '.\\bäse-é.vhd', '.\\日本\\base.vhd', '..\\images\\é日本.vhd', '.\\𝄞.vhd']) {
      const bytes = encodeLocatorPath('W2ru', path);
      expectSameBytes(bytes, utf16le(path), `W2ru bytes of ${path}`);
      const area = new Uint8Array(512); // the data area is sector sized, zero padded
      area.set(bytes);
      expect(decodeLocatorPath('W2ru', area)).toBe(path);
      expect(decodeLocatorPath('W2ru', bytes)).toBe(path);
    }
    // 日 is U+65E5: little-endian E5 65.
    expect(Array.from(encodeLocatorPath('W2ru', '日'))).toEqual([0xe5, 0x65]);
    expect(Array.from(encodeLocatorPath('W2ru', 'é'))).toEqual([0xe9, 0x00]);
  });

  it('MacX: UTF-8 file URLs', () => {
    expect(decodeLocatorPath('MacX', utf8('file://./base.vhd'))).toBe('./base.vhd');
    expect(decodeLocatorPath('MacX', utf8('file:///srv/a%20b.vhd'))).toBe('/srv/a b.vhd');
    const padded = new Uint8Array(512);
    padded.set(utf8('file://./base.vhd'));
    expect(decodeLocatorPath('MacX', padded)).toBe('./base.vhd');
    expect(fileUrlToPath('file://./base.vhd')).toBe('./base.vhd');
    expect(fileUrlToPath('file:///srv/a%20b.vhd')).toBe('/srv/a b.vhd');
    expect(fileUrlToPath('file://localhost/srv/x.vhd')).toBe('/srv/x.vhd');
    // What blktap writes, byte for byte (corpus child.vhd MacX locator).
    expectSameBytes(encodeLocatorPath('MacX', './base.vhd'), utf8('file://./base.vhd'), 'MacX ./base.vhd');
    expectSameBytes(encodeLocatorPath('MacX', '/srv/a b.vhd'), utf8('file:///srv/a%20b.vhd'), 'MacX /srv/a b.vhd');
    for (const path of ['./base.vhd', '/srv/a b.vhd', '/srv/日本/é x.vhd', './50%.vhd']) {
      expect(decodeLocatorPath('MacX', encodeLocatorPath('MacX', path))).toBe(path);
    }
  });

  it('non-path platform codes decode to undefined', () => {
    expect(decodeLocatorPath('Mac ', utf8('alias record'))).toBeUndefined();
    expect(decodeLocatorPath('\0\0\0\0', new Uint8Array(8))).toBeUndefined();
  });

  it('locatorSpaceBytes: sectors below 512, bytes from 512 up', () => {
    const table: Array<[number, number]> = [
      [1, 512],
      [2, 1024],
      [511, 511 * 512],
      [512, 512],
      [4096, 4096],
      [65536, 65536],
    ];
    for (const [space, bytes] of table) expect(locatorSpaceBytes(space), `data space ${space}`).toBe(bytes);
  });

  it('baseName of Windows and POSIX paths', () => {
    const table: Array<[string, string]> = [
      ['C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd', 'fat-parent.vhd'],
      ['.\\base.vhd', 'base.vhd'],
      ['..\\images\\日本.vhd', '日本.vhd'],
      ['\\\\server\\share\\disk.vhd', 'disk.vhd'],
      ['C:base.vhd', 'base.vhd'],
      ['/srv/a b.vhd', 'a b.vhd'],
      ['./base.vhd', 'base.vhd'],
      ['base.vhd', 'base.vhd'],
    ];
    for (const [path, base] of table) expect(baseName(path), path).toBe(base);
  });

  it('header parent name: UTF-16BE in 512 bytes, decoded up to the first NUL', () => {
    const golden = childHeader().subarray(64, 576);
    expectSameBytes(encodeParentName('base.vhd'), golden, 'parent name base.vhd');
    expect(decodeParentName(golden)).toBe('base.vhd');
    for (const name of ['C:\\VMs\\é日本.vhd', 'fat-parent.vhd', '𝄞.vhd']) {
      const raw = encodeParentName(name);
      expect(raw.length).toBe(512);
      expectSameBytes(raw.subarray(0, name.length * 2), utf16be(name), `UTF-16BE of ${name}`);
      expect(raw.subarray(name.length * 2).every((x) => x === 0)).toBe(true);
      expect(decodeParentName(raw)).toBe(name);
    }
    expect(Array.from(encodeParentName('日').subarray(0, 2))).toEqual([0x65, 0xe5]);
  });
});

// ---------------------------------------------------------------------------------------------
// BAT
// ---------------------------------------------------------------------------------------------

const u32 = fc.bigInt({ min: 0n, max: 0xffffffffn }).map(Number);
const batEntry = fc.oneof(fc.constant(BAT_UNUSED), fc.integer({ min: 0, max: 1 << 20 }), u32);

describe('block allocation table', () => {
  it('decodes big-endian entries (Windows 10 golden BAT, not in file order)', () => {
    const bat = decodeBat(hex(WIN10_BAT_HEX), 5);
    expect(bat).toBeInstanceOf(Uint32Array);
    expect(Array.from(bat)).toEqual([15, 8223, BAT_UNUSED, 4119, BAT_UNUSED]);
    expect(countAllocated(bat)).toBe(3);
  });

  it('encodes big-endian, padded with 0xFF to a whole sector', () => {
    const bytes = encodeBat(Uint32Array.of(15, 8223, BAT_UNUSED, 4119, BAT_UNUSED));
    expect(bytes.length).toBe(512);
    expectSameBytes(bytes.subarray(0, 20), hex(WIN10_BAT_HEX), 'BAT entries');
    expect(bytes.subarray(20).every((x) => x === 0xff)).toBe(true);
    expect(encodeBat(new Uint32Array(1)).length).toBe(512);
    expect(encodeBat(new Uint32Array(128)).length).toBe(512);
    expect(encodeBat(new Uint32Array(129)).length).toBe(1024);
    const b129 = encodeBat(new Uint32Array(129));
    expect(b129.subarray(0, 516).every((x) => x === 0)).toBe(true);
    expect(b129.subarray(516).every((x) => x === 0xff)).toBe(true);
  });

  it('property: decodeBat(encodeBat(x)) = x, padding is 0xFF to a whole sector', () => {
    fc.assert(
      fc.property(fc.array(batEntry, { maxLength: 400 }), (entries) => {
        const bat = Uint32Array.from(entries);
        const bytes = encodeBat(bat);
        expect(bytes.length % 512).toBe(0);
        expect(bytes.length).toBe(Math.ceil((entries.length * 4) / 512) * 512);
        expect(bytes.subarray(entries.length * 4).every((x) => x === 0xff)).toBe(true);
        for (let i = 0; i < entries.length; i++) expect(getU32(bytes, i * 4)).toBe(entries[i]);
        expect(Array.from(decodeBat(bytes, entries.length))).toEqual(entries);
      }),
      { numRuns: 200 },
    );
  });

  it('property: allocatedIndices and countAllocated = the entries that are not 0xFFFFFFFF (model; entries ≥ 2^31 count)', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(batEntry, fc.constant(0x80000000), fc.constant(0xfffffffe)), { maxLength: 400 }), (entries) => {
        const bat = decodeBat(encodeBat(Uint32Array.from(entries)), entries.length);
        const model = entries.flatMap((e, i) => (e === BAT_UNUSED ? [] : [i]));
        expect(Array.from(allocatedIndices(bat))).toEqual(model);
        expect(countAllocated(bat)).toBe(model.length);
        // A view into a larger buffer (as a BAT read with its neighbours) gives the same.
        const wide = new Uint32Array(entries.length + 2).fill(7);
        wide.set(bat, 1);
        expect(Array.from(allocatedIndices(wide.subarray(1, 1 + entries.length)))).toEqual(model);
      }),
      { numRuns: 200 },
    );
  });

  it('property: sparse tables (long runs of unused entries, used ones near group edges) decode and index like the model', () => {
    // Mostly unused, as a 2000 GiB disk's BAT: the scans skip groups of 8 unused entries at a time.
    const sparse = fc.array(
      fc.tuple(fc.integer({ min: 0, max: 700 }), fc.oneof(batEntry, fc.constant(0x80000000), fc.constant(0xfffffffe), fc.constant(0))),
      { maxLength: 12 },
    );
    fc.assert(
      fc.property(sparse, fc.integer({ min: 0, max: 80 }), (used, tail) => {
        const entries: number[] = [];
        for (const [gap, e] of used) entries.push(...new Array<number>(gap).fill(BAT_UNUSED), e);
        entries.push(...new Array<number>(tail).fill(BAT_UNUSED));
        const bat = decodeBat(encodeBat(Uint32Array.from(entries)), entries.length);
        expect(Array.from(bat)).toEqual(entries);
        const model = entries.flatMap((e, i) => (e === BAT_UNUSED ? [] : [i]));
        expect(Array.from(allocatedIndices(bat))).toEqual(model);
        expect(countAllocated(bat)).toBe(model.length);
        // At an offset that is not a multiple of 8 entries in its buffer.
        const wide = new Uint32Array(entries.length + 3).fill(BAT_UNUSED);
        wide.set(bat, 3);
        expect(Array.from(allocatedIndices(wide.subarray(3)))).toEqual(model);
        expect(countAllocated(wide.subarray(3))).toBe(model.length);
      }),
      { numRuns: 300 },
    );
  });

  it('property: batTable (the WebAssembly kernel for 65536 entries and more, JavaScript below) = the model, decoded where it was read', () => {
    const used = fc.array(fc.tuple(fc.nat(), fc.oneof(batEntry, fc.constant(0x80000000), fc.constant(0xfffffffe), fc.constant(0))), { maxLength: 40 });
    fc.assert(
      fc.property(fc.constantFrom(65536, 65537, 65543, 70000, 1000, 7), used, fc.boolean(), (entries, placed, dense) => {
        const model = new Uint32Array(entries).fill(BAT_UNUSED);
        if (dense) for (let i = 0; i < entries; i += 3) model[i] = i * 7; // many used entries, not only sparse ones
        for (const [at, e] of placed) model[at % entries] = e;
        // Used entries at the very start, at the end and across a group edge.
        model[entries - 1] = 5;
        model[Math.min(7, entries - 1)] = 0x12345678;
        const table = batTable(entries);
        expect(table.bytes.length).toBe(entries * 4);
        table.bytes.set(encodeBat(model).subarray(0, entries * 4));
        const { bat, allocated } = table.decode();
        const bytesOf = (a: Uint32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
        expect(bat.length).toBe(entries);
        expect(Buffer.compare(bytesOf(bat), bytesOf(model))).toBe(0);
        const want = Uint32Array.from(Array.from(model).flatMap((e, i) => (e === BAT_UNUSED ? [] : [i])));
        expect(allocated.length).toBe(want.length);
        expect(Buffer.compare(bytesOf(allocated), bytesOf(want))).toBe(0);
        // Large tables are decoded in place, in the kernel's memory (which holds the indices after the table).
        if (entries >= 65536) expect(bat.buffer).toBe(table.bytes.buffer);
        if (entries >= 65536) expect(bat.buffer.byteLength).toBeGreaterThanOrEqual(entries * 8);
      }),
      { numRuns: 60 },
    );
  });

  it('property: forEachAllocatedRun gives the maximal runs of allocated entries (model)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.constant(BAT_UNUSED), fc.integer({ min: 0, max: 1000 })), { maxLength: 200 }),
        fc.nat(),
        fc.nat(),
        (entries, a, b) => {
          const n = entries.length;
          const from = Math.min(a, b) % (n + 1);
          const to = Math.max(from, Math.max(a, b) % (n + 1));
          const model: Array<[number, number]> = [];
          for (let i = from; i < to; ) {
            if (entries[i] === BAT_UNUSED) {
              i++;
              continue;
            }
            const s = i;
            while (i < to && entries[i] !== BAT_UNUSED) i++;
            model.push([s, i]);
          }
          const runs: Array<[number, number]> = [];
          forEachAllocatedRun(Uint32Array.from(entries), (s, e) => runs.push([s, e]), from, to);
          expect(runs).toEqual(model);
          const all: Array<[number, number]> = [];
          forEachAllocatedRun(Uint32Array.from(entries), (s, e) => all.push([s, e]));
          expect(all.reduce((k, [s, e]) => k + e - s, 0)).toBe(entries.filter((v) => v !== BAT_UNUSED).length);
        },
      ),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Sector bitmaps
// ---------------------------------------------------------------------------------------------

/** Model: bit i is the (7 − i mod 8)-th bit of byte i/8 — most significant bit first. */
const modelBit = (bytes: Uint8Array, i: number): boolean => ((bytes[i >> 3] >> (7 - (i & 7))) & 1) === 1;

describe('sector bitmaps', () => {
  it('bitmapByteSize: one bit per sector, padded to a whole sector', () => {
    expect(bitmapByteSize(4096)).toBe(512); // 8 sectors → 1 byte → 512
    expect(bitmapByteSize(512 * 1024)).toBe(512); // 1024 sectors → 128 bytes → 512
    expect(bitmapByteSize(2 * 1024 * 1024)).toBe(512); // 4096 sectors → 512 bytes
    expect(bitmapByteSize(4 * 1024 * 1024)).toBe(1024);
    expect(bitmapByteSize(256 * 1024 * 1024)).toBe(65536); // 524288 sectors → 65536 bytes
  });

  it('most significant bit first: sector 0 is bit 0x80 of byte 0', () => {
    const b = new Uint8Array(4);
    setBit(b, 0);
    expect(Array.from(b)).toEqual([0x80, 0, 0, 0]);
    setBit(b, 7);
    expect(Array.from(b)).toEqual([0x81, 0, 0, 0]);
    setBit(b, 8);
    setBit(b, 31);
    expect(Array.from(b)).toEqual([0x81, 0x80, 0, 0x01]);
    expect(testBit(Uint8Array.of(0x80), 0)).toBe(true);
    expect(testBit(Uint8Array.of(0x80), 7)).toBe(false);
    expect(testBit(Uint8Array.of(0x01), 7)).toBe(true);
    const c = new Uint8Array(3);
    setBits(c, 3, 13);
    expect(Array.from(c)).toEqual([0x1f, 0xf8, 0]);
  });

  it('property: setBits/testBit/findBit/forEachBitRun/allSet agree with a boolean-array model', () => {
    const range = fc.tuple(fc.nat(), fc.nat());
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 40 }),
        fc.boolean(),
        fc.array(range, { maxLength: 8 }),
        fc.array(range, { minLength: 1, maxLength: 8 }),
        (initial, startEmpty, sets, queries) => {
          const bitmap = startEmpty ? new Uint8Array(initial.length) : Uint8Array.from(initial);
          const nbits = bitmap.length * 8;
          const model = Array.from({ length: nbits }, (_, i) => modelBit(bitmap, i));
          const norm = ([a, b]: [number, number]): [number, number] => {
            const x = a % (nbits + 1);
            const y = b % (nbits + 1);
            return x <= y ? [x, y] : [y, x];
          };
          for (const r of sets) {
            const [s, e] = norm(r);
            setBits(bitmap, s, e);
            for (let i = s; i < e; i++) model[i] = true;
          }
          for (let i = 0; i < nbits; i++) {
            expect(testBit(bitmap, i)).toBe(model[i]);
            expect(modelBit(bitmap, i)).toBe(model[i]);
          }
          for (const q of queries) {
            const [from, to] = norm(q);
            for (const value of [true, false]) {
              let want = to;
              for (let i = from; i < to; i++) {
                if (model[i] === value) {
                  want = i;
                  break;
                }
              }
              expect(findBit(bitmap, from, to, value)).toBe(want);
            }
            expect(allSet(bitmap, from, to)).toBe(model.slice(from, to).every(Boolean));
            const runs: Array<[number, number, boolean]> = [];
            forEachBitRun(bitmap, from, to, (s, e, p) => runs.push([s, e, p]));
            const wantRuns: Array<[number, number, boolean]> = [];
            for (let i = from; i < to; ) {
              const s = i;
              while (i < to && model[i] === model[s]) i++;
              wantRuns.push([s, i, model[s]]);
            }
            expect(runs).toEqual(wantRuns);
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  it('a full 2 MiB-block bitmap: allSet over the whole block, and false after clearing the last sector', () => {
    const b = new Uint8Array(bitmapByteSize(2 * 1024 * 1024));
    setBits(b, 0, 4096);
    expect(b.every((x) => x === 0xff)).toBe(true);
    expect(allSet(b, 0, 4096)).toBe(true);
    b[511] &= 0xfe; // sector 4095
    expect(allSet(b, 0, 4096)).toBe(false);
    expect(allSet(b, 0, 4095)).toBe(true);
    expect(findBit(b, 0, 4096, false)).toBe(4095);
  });
});
