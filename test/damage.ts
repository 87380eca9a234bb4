/**
 * Structure-aware damage for the bad-input tests (mutation.test.ts on the library, fuzz.test.ts on
 * the command line): an independent, minimal reading of a good image's layout to aim the damage at
 * its footers, dynamic header, BAT, parent locators and sector bitmaps, and the damage itself as
 * small descriptors (so that fast-check prints readable counterexamples).
 */
import fc from 'fast-check';

// -------------------------------------------------------------------------------------------------
// Subjects: the file that is damaged, the file that is opened, and every file the resolver sees.

export interface Region {
  what: string;
  start: number;
  end: number;
}

export interface Subject {
  name: string;
  /** The file opened. */
  open: string;
  /** The file damaged (the opened one or one of its parents). */
  target: string;
  files: Map<string, Uint8Array>;
  /** SHA-256 of the undamaged virtual content. */
  sha256: string;
  regions: Region[];
  /** Offsets of u32 fields (and halves of u64 fields) in the target. */
  u32Fields: number[];
  /** Offsets of structures whose checksums can be recomputed after damage: [offset, size, checksumAt]. */
  checksummed: Array<[number, number, number]>;
}

export const u32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
export const u64 = (b: Uint8Array, o: number) => u32(b, o) * 2 ** 32 + u32(b, o + 4);

/** An independent, minimal reading of the layout of a good image, to aim the damage. */
export function layoutOf(bytes: Uint8Array): Pick<Subject, 'regions' | 'u32Fields' | 'checksummed'> {
  const size = bytes.length;
  const tail = size - 512;
  const regions: Region[] = [{ what: 'footer', start: tail, end: size }];
  const footerFields = [8, 12, 16, 20, 24, 40, 44, 48, 52, 60, 64];
  const u32Fields = footerFields.map((o) => tail + o);
  const checksummed: Array<[number, number, number]> = [[tail, 512, 64]];
  const type = u32(bytes, tail + 60);
  if (type === 2) {
    regions.push({ what: 'data head', start: 0, end: Math.min(4096, tail) });
    regions.push({ what: 'data tail', start: Math.max(0, tail - 4096), end: tail });
    return { regions, u32Fields, checksummed };
  }
  regions.push({ what: 'footer copy', start: 0, end: 512 });
  u32Fields.push(...footerFields);
  checksummed.push([0, 512, 64]);
  const hdr = u64(bytes, tail + 16);
  regions.push({ what: 'dynamic header', start: hdr, end: hdr + 1024 });
  regions.push({ what: 'parent locator table', start: hdr + 576, end: hdr + 576 + 192 });
  checksummed.push([hdr, 1024, 36]);
  u32Fields.push(...[8, 12, 16, 20, 24, 28, 32, 36, 56].map((o) => hdr + o));
  for (let i = 0; i < 8; i++) {
    const e = hdr + 576 + 24 * i;
    u32Fields.push(e + 4, e + 8, e + 16, e + 20);
    if (u32(bytes, e) !== 0) {
      const off = u64(bytes, e + 16);
      const len = u32(bytes, e + 8);
      if (off + len <= size) regions.push({ what: `locator ${i} data`, start: off, end: off + Math.max(len, 1) });
    }
  }
  const table = u64(bytes, hdr + 16);
  const entries = u32(bytes, hdr + 28);
  const blockSize = u32(bytes, hdr + 32);
  const bitmapBytes = Math.ceil(blockSize / 512 / 8 / 512) * 512;
  regions.push({ what: 'BAT', start: table, end: table + Math.ceil((entries * 4) / 512) * 512 });
  for (let i = 0; i < entries; i++) {
    u32Fields.push(table + 4 * i);
    const s = u32(bytes, table + 4 * i);
    if (s !== 0xffffffff) {
      regions.push({ what: `bitmap of block ${i}`, start: s * 512, end: s * 512 + bitmapBytes });
      regions.push({ what: `data head of block ${i}`, start: s * 512 + bitmapBytes, end: s * 512 + bitmapBytes + 512 });
    }
  }
  return { regions, u32Fields, checksummed };
}

function checksum(b: Uint8Array, start: number, size: number, at: number): number {
  let sum = 0;
  for (let i = start; i < start + size; i++) if (i < at || i >= at + 4) sum += b[i];
  return ~sum >>> 0;
}

export function fixChecksums(b: Uint8Array, subject: Subject): void {
  for (const [start, size, field] of subject.checksummed) {
    if (start + size > b.length) continue;
    const v = checksum(b, start, size, start + field);
    b[start + field] = v >>> 24;
    b[start + field + 1] = (v >>> 16) & 0xff;
    b[start + field + 2] = (v >>> 8) & 0xff;
    b[start + field + 3] = v & 0xff;
  }
}

// -------------------------------------------------------------------------------------------------
// Damage, as small descriptors (so that fast-check prints readable counterexamples)

export type ByteEdit = { sel: number; at: number; bytes: number[] };
export type FieldEdit = { field: number; value: number };
export type Damage =
  | { kind: 'bytes'; subject: number; edits: ByteEdit[]; fix: boolean }
  | { kind: 'truncate'; subject: number; keep: number }
  | { kind: 'fields'; subject: number; edits: FieldEdit[]; fix: boolean }
  | { kind: 'mixed'; subject: number; bytes: ByteEdit[]; fields: FieldEdit[]; keep: number; fix: boolean };

export const EXTREMES = [0, 0xffffffff, 0x7fffffff, 0x80000000, 0xfffffffe, 1, 0x1000, 0x10000000, 0x00200000, 0x000fffff];

export const byteEdit = fc.record({
  sel: fc.nat(),
  at: fc.nat(),
  bytes: fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff)), { minLength: 1, maxLength: 8 }),
});
export const fieldEdit = fc.record({ field: fc.nat(), value: fc.oneof(fc.constantFrom(...EXTREMES), fc.nat({ max: 0xffffffff })) });
/** A fraction in thousandths: where to cut, relative to the file size; biased to the ends. */
export const cut = fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 950, max: 1000 }), fc.integer({ min: 0, max: 20 }));

export function damaged(subject: Subject, d: Damage): Map<string, Uint8Array> {
  const original = subject.files.get(subject.target)!;
  let b = original.slice();
  const applyBytes = (edits: ByteEdit[]) => {
    for (const e of edits) {
      // One edit in ten lands anywhere in the file; the rest in a metadata region.
      const r = e.sel % 10 === 9 ? { start: 0, end: b.length } : subject.regions[e.sel % subject.regions.length];
      const len = Math.max(1, r.end - r.start);
      const at = r.start + (e.at % len);
      for (let k = 0; k < e.bytes.length && at + k < b.length; k++) b[at + k] = e.bytes[k];
    }
  };
  const applyFields = (edits: FieldEdit[]) => {
    for (const e of edits) {
      const o = subject.u32Fields[e.field % subject.u32Fields.length];
      if (o + 4 > b.length) continue;
      b[o] = e.value >>> 24;
      b[o + 1] = (e.value >>> 16) & 0xff;
      b[o + 2] = (e.value >>> 8) & 0xff;
      b[o + 3] = e.value & 0xff;
    }
  };
  const truncate = (keep: number) => {
    b = b.slice(0, Math.floor((b.length * keep) / 1000));
  };
  switch (d.kind) {
    case 'bytes':
      applyBytes(d.edits);
      if (d.fix) fixChecksums(b, subject);
      break;
    case 'fields':
      applyFields(d.edits);
      if (d.fix) fixChecksums(b, subject);
      break;
    case 'truncate':
      truncate(d.keep);
      break;
    case 'mixed':
      applyBytes(d.bytes);
      applyFields(d.fields);
      if (d.fix) fixChecksums(b, subject);
      if (d.keep < 1000) truncate(d.keep);
      break;
  }
  const files = new Map(subject.files);
  files.set(subject.target, b);
  return files;
}
