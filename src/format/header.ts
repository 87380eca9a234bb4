/**
 * The dynamic disk header: 1024 bytes at the footer's data offset of dynamic and differencing
 * disks. Holds the BAT offset and size, the block size, and the parent's identity and locators.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { vhdChecksum } from './checksum.js';
import { hex32, type Report } from './footer.js';
import {
  ascii,
  defineLayout,
  printableTag,
  readUint32BE,
  readUint64BE,
  UINT64_NONE,
  writeAscii,
  writeUint32BE,
  writeUint64BE,
} from './layout.js';

export const HEADER_SIZE = 1024;
export const HEADER_COOKIE = 'cxsparse';
export const HEADER_VERSION = 0x00010000;
export const LOCATOR_ENTRY_SIZE = 24;
export const LOCATOR_COUNT = 8;

export const HEADER = defineLayout('dynamic header', HEADER_SIZE, [
  ['cookie', 8], //                   0x000
  ['dataOffset', 8], //               0x008
  ['tableOffset', 8], //              0x010
  ['headerVersion', 4], //            0x018
  ['maxTableEntries', 4], //          0x01c
  ['blockSize', 4], //                0x020
  ['checksum', 4], //                 0x024
  ['parentUniqueId', 16], //          0x028
  ['parentTimestamp', 4], //          0x038
  ['reserved1', 4], //                0x03c
  ['parentUnicodeName', 512], //      0x040
  ['parentLocators', 8 * 24], //      0x240
  ['reserved2', 256], //              0x300
]);

export const LOCATOR_ENTRY = defineLayout('parent locator entry', LOCATOR_ENTRY_SIZE, [
  ['platformCode', 4], //        0x00
  ['platformDataSpace', 4], //   0x04
  ['platformDataLength', 4], //  0x08
  ['reserved', 4], //            0x0c
  ['platformDataOffset', 8], //  0x10
]);

/** Smallest and largest block sizes accepted: one sector, and 256 MiB (far beyond any writer's). */
export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 256 * 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;

export interface LocatorEntry {
  /** Four-character platform code as text ("W2ku", "W2ru", "MacX", …); "\0\0\0\0" when unused. */
  platformCode: string;
  platformDataSpace: number;
  platformDataLength: number;
  reserved: number;
  platformDataOffset: bigint;
}

export interface DynamicHeader {
  cookie: string;
  dataOffset: bigint;
  tableOffset: bigint;
  headerVersion: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUniqueId: Uint8Array;
  parentTimestamp: number;
  reserved1: number;
  /** The 512 raw bytes of the parent's name (UTF-16BE, NUL padded). */
  parentUnicodeName: Uint8Array;
  parentLocators: LocatorEntry[];
  reserved2: Uint8Array;
}

export function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(n) && (n & (n - 1)) === 0;
}

/** Offset of parent locator entry `index` from the start of the dynamic header. */
export function locatorEntryOffset(index: number): number {
  return HEADER.parentLocators.offset + index * LOCATOR_ENTRY_SIZE;
}

export const EMPTY_LOCATOR_CODE = '\0\0\0\0';

export function isUnusedLocator(e: LocatorEntry): boolean {
  return e.platformCode === EMPTY_LOCATOR_CODE;
}

/**
 * Decodes the dynamic header. Throws HEADER_COOKIE and HEADER_BLOCK_SIZE (unusable);
 * reports HEADER_CHECKSUM, HEADER_VERSION and HEADER_TABLE_OFFSET (not sector aligned).
 */
export function decodeHeader(bytes: Uint8Array, offset = 0, report: Report = () => {}): DynamicHeader {
  const structure = 'dynamic header';
  if (bytes.length < HEADER_SIZE) {
    throw new VhdError(ErrorCodes.FILE_TRUNCATED, `needs ${HEADER_SIZE} bytes, got ${bytes.length}`, { structure, offset });
  }
  const cookie = ascii(bytes, HEADER.cookie.offset, 8);
  if (cookie !== HEADER_COOKIE) {
    throw new VhdError(ErrorCodes.HEADER_COOKIE, `cookie is "${printableTag(cookie)}", expected "cxsparse"`, {
      structure,
      offset,
      field: 'cookie',
      expected: HEADER_COOKIE,
      actual: cookie,
    });
  }
  const parentLocators: LocatorEntry[] = [];
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const o = locatorEntryOffset(i);
    parentLocators.push({
      platformCode: ascii(bytes, o + LOCATOR_ENTRY.platformCode.offset, 4),
      platformDataSpace: readUint32BE(bytes, o + LOCATOR_ENTRY.platformDataSpace.offset),
      platformDataLength: readUint32BE(bytes, o + LOCATOR_ENTRY.platformDataLength.offset),
      reserved: readUint32BE(bytes, o + LOCATOR_ENTRY.reserved.offset),
      platformDataOffset: readUint64BE(bytes, o + LOCATOR_ENTRY.platformDataOffset.offset),
    });
  }
  const header: DynamicHeader = {
    cookie,
    dataOffset: readUint64BE(bytes, HEADER.dataOffset.offset),
    tableOffset: readUint64BE(bytes, HEADER.tableOffset.offset),
    headerVersion: readUint32BE(bytes, HEADER.headerVersion.offset),
    maxTableEntries: readUint32BE(bytes, HEADER.maxTableEntries.offset),
    blockSize: readUint32BE(bytes, HEADER.blockSize.offset),
    checksum: readUint32BE(bytes, HEADER.checksum.offset),
    parentUniqueId: bytes.slice(HEADER.parentUniqueId.offset, HEADER.parentUniqueId.offset + 16),
    parentTimestamp: readUint32BE(bytes, HEADER.parentTimestamp.offset),
    reserved1: readUint32BE(bytes, HEADER.reserved1.offset),
    parentUnicodeName: bytes.slice(HEADER.parentUnicodeName.offset, HEADER.parentUnicodeName.offset + 512),
    parentLocators,
    reserved2: bytes.slice(HEADER.reserved2.offset, HEADER.reserved2.offset + 256),
  };
  const computed = vhdChecksum(bytes.subarray(0, HEADER_SIZE), HEADER.checksum);
  if (computed !== header.checksum) {
    report(
      new VhdError(ErrorCodes.HEADER_CHECKSUM, `checksum is 0x${hex32(header.checksum)}, computed 0x${hex32(computed)}`, {
        structure,
        offset: offset + HEADER.checksum.offset,
        field: 'checksum',
        expected: computed,
        actual: header.checksum,
      }),
    );
  }
  if (header.headerVersion !== HEADER_VERSION) {
    report(
      new VhdError(ErrorCodes.HEADER_VERSION, `header version is 0x${hex32(header.headerVersion)}, expected 0x00010000`, {
        structure,
        offset: offset + HEADER.headerVersion.offset,
        field: 'headerVersion',
      }),
    );
  }
  if (!isPowerOfTwo(header.blockSize) || header.blockSize < MIN_BLOCK_SIZE || header.blockSize > MAX_BLOCK_SIZE) {
    throw new VhdError(
      ErrorCodes.HEADER_BLOCK_SIZE,
      `block size ${header.blockSize} is not a power of two between ${MIN_BLOCK_SIZE} and ${MAX_BLOCK_SIZE}`,
      { structure, offset: offset + HEADER.blockSize.offset, field: 'blockSize', actual: header.blockSize },
    );
  }
  if (header.tableOffset === UINT64_NONE || header.tableOffset % 512n !== 0n) {
    report(
      new VhdError(ErrorCodes.HEADER_TABLE_OFFSET, `BAT offset ${header.tableOffset} is not sector aligned`, {
        structure,
        offset: offset + HEADER.tableOffset.offset,
        field: 'tableOffset',
      }),
    );
  }
  return header;
}

export function encodeHeader(header: DynamicHeader, fixChecksum = true): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  writeAscii(bytes, HEADER.cookie.offset, 8, header.cookie);
  writeUint64BE(bytes, HEADER.dataOffset.offset, header.dataOffset);
  writeUint64BE(bytes, HEADER.tableOffset.offset, header.tableOffset);
  writeUint32BE(bytes, HEADER.headerVersion.offset, header.headerVersion);
  writeUint32BE(bytes, HEADER.maxTableEntries.offset, header.maxTableEntries);
  writeUint32BE(bytes, HEADER.blockSize.offset, header.blockSize);
  bytes.set(header.parentUniqueId.subarray(0, 16), HEADER.parentUniqueId.offset);
  writeUint32BE(bytes, HEADER.parentTimestamp.offset, header.parentTimestamp);
  writeUint32BE(bytes, HEADER.reserved1.offset, header.reserved1);
  bytes.set(header.parentUnicodeName.subarray(0, 512), HEADER.parentUnicodeName.offset);
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const e = header.parentLocators[i];
    if (!e) continue;
    const o = locatorEntryOffset(i);
    writeAscii(bytes, o + LOCATOR_ENTRY.platformCode.offset, 4, e.platformCode);
    writeUint32BE(bytes, o + LOCATOR_ENTRY.platformDataSpace.offset, e.platformDataSpace);
    writeUint32BE(bytes, o + LOCATOR_ENTRY.platformDataLength.offset, e.platformDataLength);
    writeUint32BE(bytes, o + LOCATOR_ENTRY.reserved.offset, e.reserved);
    writeUint64BE(bytes, o + LOCATOR_ENTRY.platformDataOffset.offset, e.platformDataOffset);
  }
  bytes.set(header.reserved2.subarray(0, 256), HEADER.reserved2.offset);
  const checksum = fixChecksum ? vhdChecksum(bytes, HEADER.checksum) : header.checksum;
  writeUint32BE(bytes, HEADER.checksum.offset, checksum);
  return bytes;
}

/** The parent's name from the header (UTF-16BE up to the first NUL). */
export function decodeParentName(raw: Uint8Array): string {
  let s = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const c = (raw[i] << 8) | raw[i + 1];
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

/** Encodes a parent name as the header's 512 bytes (at most 255 UTF-16 code units and a NUL). */
export function encodeParentName(name: string): Uint8Array {
  const raw = new Uint8Array(512);
  const n = Math.min(name.length, 255);
  for (let i = 0; i < n; i++) {
    const c = name.charCodeAt(i);
    raw[i * 2] = c >>> 8;
    raw[i * 2 + 1] = c & 0xff;
  }
  return raw;
}

export function emptyLocator(): LocatorEntry {
  return { platformCode: EMPTY_LOCATOR_CODE, platformDataSpace: 0, platformDataLength: 0, reserved: 0, platformDataOffset: 0n };
}

