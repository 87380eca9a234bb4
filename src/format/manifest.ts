/**
 * The hash manifest: per-chunk xxh64 hashes of a virtual disk's content, with a zero flag per chunk,
 * and the content digest. Little-endian (it is vhdkit's own format, read back on the same kinds of
 * machines, not a VHD structure).
 *
 *   0x00  magic        8   "VHDKHASH"
 *   0x08  version      4   u32 = 1
 *   0x0c  algorithm    4   u32 = 1 (xxh64, seed 0)
 *   0x10  chunkSize    4   u32, a power of two ≥ 512
 *   0x14  reserved     4   0
 *   0x18  virtualSize  8   u64
 *   0x20  chunks       8   u64 = ceil(virtualSize / chunkSize)
 *   0x28  digest       8   u64
 *   0x30  zeroChunks   8   u64
 *   0x38  reserved     8   0
 *   0x40  hashes       chunks × 8   u64 xxh64 (seed 0) of each chunk; 0 for a zero chunk (the file
 *                                   is sparse there: zero runs cost no space and no writes)
 *   ...   zero flags   ceil(chunks / 8) bytes, bit i (LSB first) set when chunk i is all zeros
 *
 * The digest is xxh64 (seed 0) of: virtualSize (u64 LE), chunkSize (u32 LE), then for every chunk
 * that is not all zeros, in order, its index (u64 LE) and its hash (u64 LE). It depends only on the
 * content (and the chunk size), never on the disk's form, and its cost follows the data, not the
 * virtual size.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { defineLayout } from './layout.js';

export const MANIFEST_MAGIC = 'VHDKHASH';
export const MANIFEST_VERSION = 1;
export const MANIFEST_ALGORITHM_XXH64 = 1;

export const MANIFEST_HEADER = defineLayout('hash manifest header', 64, [
  ['magic', 8], //        0x00
  ['version', 4], //      0x08
  ['algorithm', 4], //    0x0c
  ['chunkSize', 4], //    0x10
  ['reserved1', 4], //    0x14
  ['virtualSize', 8], //  0x18
  ['chunks', 8], //       0x20
  ['digest', 8], //       0x28
  ['zeroChunks', 8], //   0x30
  ['reserved2', 8], //    0x38
]);

export interface ManifestHeader {
  chunkSize: number;
  virtualSize: number;
  chunks: number;
  digest: bigint;
  zeroChunks: number;
}

export function encodeManifestHeader(h: ManifestHeader): Uint8Array {
  const out = new Uint8Array(MANIFEST_HEADER.$size);
  const v = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) out[i] = MANIFEST_MAGIC.charCodeAt(i);
  v.setUint32(MANIFEST_HEADER.version.offset, MANIFEST_VERSION, true);
  v.setUint32(MANIFEST_HEADER.algorithm.offset, MANIFEST_ALGORITHM_XXH64, true);
  v.setUint32(MANIFEST_HEADER.chunkSize.offset, h.chunkSize, true);
  v.setBigUint64(MANIFEST_HEADER.virtualSize.offset, BigInt(h.virtualSize), true);
  v.setBigUint64(MANIFEST_HEADER.chunks.offset, BigInt(h.chunks), true);
  v.setBigUint64(MANIFEST_HEADER.digest.offset, h.digest, true);
  v.setBigUint64(MANIFEST_HEADER.zeroChunks.offset, BigInt(h.zeroChunks), true);
  return out;
}

export function decodeManifestHeader(bytes: Uint8Array, fileSize: number): ManifestHeader {
  const structure = 'hash manifest header';
  if (bytes.length < 64) throw new VhdError(ErrorCodes.FILE_TOO_SMALL, `needs 64 bytes, got ${bytes.length}`, { structure, offset: 0 });
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== MANIFEST_MAGIC) throw new VhdError(ErrorCodes.NOT_VHD, 'not a vhdkit hash manifest (magic "VHDKHASH" missing)', { structure, offset: 0 });
  const v = new DataView(bytes.buffer, bytes.byteOffset, 64);
  const version = v.getUint32(MANIFEST_HEADER.version.offset, true);
  if (version !== MANIFEST_VERSION) throw new VhdError(ErrorCodes.FOOTER_VERSION, `manifest version ${version} is not supported (expected 1)`, { structure, offset: 8 });
  const chunkSize = v.getUint32(MANIFEST_HEADER.chunkSize.offset, true);
  const virtualSize = Number(v.getBigUint64(MANIFEST_HEADER.virtualSize.offset, true));
  const chunks = Number(v.getBigUint64(MANIFEST_HEADER.chunks.offset, true));
  if (chunkSize < 512 || (chunkSize & (chunkSize - 1)) !== 0 || chunks !== Math.ceil(virtualSize / chunkSize)) {
    throw new VhdError(ErrorCodes.RANGE, `chunk size ${chunkSize} and ${chunks} chunks do not describe ${virtualSize} bytes`, { structure, offset: 16 });
  }
  if (64 + chunks * 8 + Math.ceil(chunks / 8) !== fileSize) {
    throw new VhdError(ErrorCodes.FILE_TRUNCATED, `a manifest of ${chunks} chunks is ${64 + chunks * 8 + Math.ceil(chunks / 8)} bytes, the file has ${fileSize}`, { structure, offset: 0 });
  }
  return {
    chunkSize,
    virtualSize,
    chunks,
    digest: v.getBigUint64(MANIFEST_HEADER.digest.offset, true),
    zeroChunks: Number(v.getBigUint64(MANIFEST_HEADER.zeroChunks.offset, true)),
  };
}

export function manifestSize(chunks: number): number {
  return 64 + chunks * 8 + Math.ceil(chunks / 8);
}
