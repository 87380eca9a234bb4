/**
 * The hard disk footer: 512 bytes at the end of every VHD, and a copy at offset 0 of dynamic and
 * differencing disks. Decode and encode round-trip byte for byte (reserved bytes included).
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { vhdChecksum } from './checksum.js';
import type { Geometry } from './geometry.js';
import {
  ascii,
  defineLayout,
  readUint16BE,
  readUint32BE,
  readUint64BE,
  toSafeNumber,
  UINT64_NONE,
  writeAscii,
  writeUint16BE,
  writeUint32BE,
  writeUint64BE,
} from './layout.js';

export const FOOTER_SIZE = 512;
export const FOOTER_COOKIE = 'conectix';
export const FILE_FORMAT_VERSION = 0x00010000;

export const FOOTER = defineLayout('footer', FOOTER_SIZE, [
  ['cookie', 8], //                 0x00
  ['features', 4], //               0x08
  ['fileFormatVersion', 4], //      0x0c
  ['dataOffset', 8], //             0x10
  ['timestamp', 4], //              0x18
  ['creatorApplication', 4], //     0x1c
  ['creatorVersion', 4], //         0x20
  ['creatorHostOs', 4], //          0x24
  ['originalSize', 8], //           0x28
  ['currentSize', 8], //            0x30
  ['cylinders', 2], //              0x38
  ['heads', 1], //                  0x3a
  ['sectorsPerTrack', 1], //        0x3b
  ['diskType', 4], //               0x3c
  ['checksum', 4], //               0x40
  ['uniqueId', 16], //              0x44
  ['savedState', 1], //             0x54
  ['reserved', 427], //             0x55
]);

export const DiskType = { fixed: 2, dynamic: 3, differencing: 4 } as const;
export type DiskTypeName = keyof typeof DiskType;

export function diskTypeName(code: number): DiskTypeName | undefined {
  if (code === 2) return 'fixed';
  if (code === 3) return 'dynamic';
  if (code === 4) return 'differencing';
  return undefined;
}

/** The largest virtual size the specification allows (2040 GiB). */
export const MAX_VHD_SIZE = 2040 * 1024 * 1024 * 1024;

export interface Footer {
  cookie: string;
  features: number;
  fileFormatVersion: number;
  /** Offset of the dynamic header; UINT64_NONE for fixed disks. */
  dataOffset: bigint;
  timestamp: number;
  creatorApplication: string;
  creatorVersion: number;
  creatorHostOs: string;
  originalSize: bigint;
  currentSize: bigint;
  geometry: Geometry;
  diskType: number;
  checksum: number;
  uniqueId: Uint8Array;
  savedState: number;
  reserved: Uint8Array;
}

/** Receives recoverable findings while decoding; fatal ones are thrown. */
export type Report = (finding: VhdError) => void;

/**
 * Decodes a footer. Throws FOOTER_COOKIE, FOOTER_DISK_TYPE and FOOTER_SIZE for a size that is not a
 * whole number of sectors or not a safe integer (the bytes are not a usable footer); reports
 * FOOTER_CHECKSUM, FOOTER_VERSION, FOOTER_SIZE (over 2040 GiB), FOOTER_DATA_OFFSET, FOOTER_SAVED_STATE.
 * `offset` is the footer's position in the file, for messages.
 */
export function decodeFooter(bytes: Uint8Array, offset = 0, report: Report = () => {}): Footer {
  const structure = 'footer';
  if (bytes.length < FOOTER_SIZE) {
    throw new VhdError(ErrorCodes.FILE_TOO_SMALL, `needs ${FOOTER_SIZE} bytes, got ${bytes.length}`, { structure, offset });
  }
  const cookie = ascii(bytes, FOOTER.cookie.offset, 8);
  if (cookie !== FOOTER_COOKIE) {
    // The actual bytes are not printed: they may belong to a file that is not a VHD at all.
    throw new VhdError(ErrorCodes.FOOTER_COOKIE, `cookie is not "conectix"`, { structure, offset, field: 'cookie', expected: FOOTER_COOKIE });
  }
  const footer: Footer = {
    cookie,
    features: readUint32BE(bytes, FOOTER.features.offset),
    fileFormatVersion: readUint32BE(bytes, FOOTER.fileFormatVersion.offset),
    dataOffset: readUint64BE(bytes, FOOTER.dataOffset.offset),
    timestamp: readUint32BE(bytes, FOOTER.timestamp.offset),
    creatorApplication: ascii(bytes, FOOTER.creatorApplication.offset, 4),
    creatorVersion: readUint32BE(bytes, FOOTER.creatorVersion.offset),
    creatorHostOs: ascii(bytes, FOOTER.creatorHostOs.offset, 4),
    originalSize: readUint64BE(bytes, FOOTER.originalSize.offset),
    currentSize: readUint64BE(bytes, FOOTER.currentSize.offset),
    geometry: {
      cylinders: readUint16BE(bytes, FOOTER.cylinders.offset),
      heads: bytes[FOOTER.heads.offset],
      sectorsPerTrack: bytes[FOOTER.sectorsPerTrack.offset],
    },
    diskType: readUint32BE(bytes, FOOTER.diskType.offset),
    checksum: readUint32BE(bytes, FOOTER.checksum.offset),
    uniqueId: bytes.slice(FOOTER.uniqueId.offset, FOOTER.uniqueId.offset + 16),
    savedState: bytes[FOOTER.savedState.offset],
    reserved: bytes.slice(FOOTER.reserved.offset, FOOTER.reserved.offset + FOOTER.reserved.size),
  };
  const type = diskTypeName(footer.diskType);
  if (type === undefined) {
    throw new VhdError(ErrorCodes.FOOTER_DISK_TYPE, `disk type is ${footer.diskType}, expected 2 (fixed), 3 (dynamic) or 4 (differencing)`, {
      structure,
      offset: offset + FOOTER.diskType.offset,
      field: 'diskType',
      actual: footer.diskType,
    });
  }
  const computed = vhdChecksum(bytes.subarray(0, FOOTER_SIZE), FOOTER.checksum);
  if (computed !== footer.checksum) {
    report(
      new VhdError(ErrorCodes.FOOTER_CHECKSUM, `checksum is 0x${hex32(footer.checksum)}, computed 0x${hex32(computed)}`, {
        structure,
        offset: offset + FOOTER.checksum.offset,
        field: 'checksum',
        expected: computed,
        actual: footer.checksum,
      }),
    );
  }
  if (footer.fileFormatVersion !== FILE_FORMAT_VERSION) {
    report(
      new VhdError(ErrorCodes.FOOTER_VERSION, `file format version is 0x${hex32(footer.fileFormatVersion)}, expected 0x00010000`, {
        structure,
        offset: offset + FOOTER.fileFormatVersion.offset,
        field: 'fileFormatVersion',
      }),
    );
  }
  if (footer.currentSize % 512n !== 0n) {
    throw new VhdError(ErrorCodes.FOOTER_SIZE, `current size ${footer.currentSize} is not a multiple of 512`, {
      structure,
      offset: offset + FOOTER.currentSize.offset,
      field: 'currentSize',
    });
  }
  toSafeNumber(footer.currentSize, ErrorCodes.FOOTER_SIZE, structure, 'currentSize', offset + FOOTER.currentSize.offset);
  if (footer.currentSize > BigInt(MAX_VHD_SIZE)) {
    report(
      new VhdError(ErrorCodes.FOOTER_SIZE, `current size ${footer.currentSize} is larger than the 2040 GiB the specification allows`, {
        structure,
        offset: offset + FOOTER.currentSize.offset,
        field: 'currentSize',
      }),
    );
  }
  if (type === 'fixed' && footer.dataOffset !== UINT64_NONE) {
    report(
      new VhdError(ErrorCodes.FOOTER_DATA_OFFSET, `data offset is ${footer.dataOffset}, expected 0xFFFFFFFFFFFFFFFF for a fixed disk`, {
        structure,
        offset: offset + FOOTER.dataOffset.offset,
        field: 'dataOffset',
      }),
    );
  }
  if (footer.savedState !== 0) {
    report(
      new VhdError(ErrorCodes.FOOTER_SAVED_STATE, `saved-state flag is set: the disk was in use by a suspended virtual machine`, {
        structure,
        offset: offset + FOOTER.savedState.offset,
        field: 'savedState',
      }),
    );
  }
  return footer;
}

/** Encodes a footer. With `fixChecksum` (the default) the checksum field is computed. */
export function encodeFooter(footer: Footer, fixChecksum = true): Uint8Array {
  const bytes = new Uint8Array(FOOTER_SIZE);
  writeAscii(bytes, FOOTER.cookie.offset, 8, footer.cookie);
  writeUint32BE(bytes, FOOTER.features.offset, footer.features);
  writeUint32BE(bytes, FOOTER.fileFormatVersion.offset, footer.fileFormatVersion);
  writeUint64BE(bytes, FOOTER.dataOffset.offset, footer.dataOffset);
  writeUint32BE(bytes, FOOTER.timestamp.offset, footer.timestamp);
  writeAscii(bytes, FOOTER.creatorApplication.offset, 4, footer.creatorApplication);
  writeUint32BE(bytes, FOOTER.creatorVersion.offset, footer.creatorVersion);
  writeAscii(bytes, FOOTER.creatorHostOs.offset, 4, footer.creatorHostOs);
  writeUint64BE(bytes, FOOTER.originalSize.offset, footer.originalSize);
  writeUint64BE(bytes, FOOTER.currentSize.offset, footer.currentSize);
  writeUint16BE(bytes, FOOTER.cylinders.offset, footer.geometry.cylinders);
  bytes[FOOTER.heads.offset] = footer.geometry.heads;
  bytes[FOOTER.sectorsPerTrack.offset] = footer.geometry.sectorsPerTrack;
  writeUint32BE(bytes, FOOTER.diskType.offset, footer.diskType);
  bytes.set(footer.uniqueId.subarray(0, 16), FOOTER.uniqueId.offset);
  bytes[FOOTER.savedState.offset] = footer.savedState;
  bytes.set(footer.reserved.subarray(0, FOOTER.reserved.size), FOOTER.reserved.offset);
  const checksum = fixChecksum ? vhdChecksum(bytes, FOOTER.checksum) : footer.checksum;
  writeUint32BE(bytes, FOOTER.checksum.offset, checksum);
  return bytes;
}

export function hex32(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}
