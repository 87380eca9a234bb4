/**
 * Writers for fixed, dynamic and differencing disks over a byte sink. Metadata is kept in memory
 * and written once at the end (`finish`), footer last; callers write to a temporary file and
 * rename it, so an interrupted write never leaves a file that looks complete.
 */
import { placeBlock } from './editor.js';
import { ErrorCodes, VhdError } from '../errors.js';
import { batByteSize, BAT_UNUSED, encodeBat } from '../format/bat.js';
import { bitmapByteSize, setBits } from '../format/bitmap.js';
import { DiskType, encodeFooter, FILE_FORMAT_VERSION, type Footer, FOOTER_COOKIE, MAX_VHD_SIZE } from '../format/footer.js';
import { geometryForWrite } from '../format/geometry.js';
import {
  DEFAULT_BLOCK_SIZE,
  emptyLocator,
  encodeHeader,
  encodeParentName,
  HEADER_COOKIE,
  HEADER_VERSION,
  isPowerOfTwo,
  type LocatorEntry,
  MAX_BLOCK_SIZE,
  MIN_BLOCK_SIZE,
} from '../format/header.js';
import { UINT64_NONE } from '../format/layout.js';
import { encodeLocatorPath } from '../format/locator.js';
import { dateToVhdTimestamp } from '../format/timestamp.js';
import type { ByteSink } from '../io/types.js';

export const CREATOR_APPLICATION = 'vhdk';
export const CREATOR_VERSION = 0x00010000;
/** Host OS written by vhdkit: "Wi2k", as Hyper-V, qemu and blktap write, so every reader accepts it. */
export const CREATOR_HOST_OS = 'Wi2k';

export interface FooterOptions {
  type: 'fixed' | 'dynamic' | 'differencing';
  virtualSize: number;
  uuid: Uint8Array;
  timestamp?: Date;
  dataOffset?: bigint;
}

/** The largest virtual size a VHD holds (2040 GiB). */
export const MAX_VIRTUAL_SIZE = MAX_VHD_SIZE;
/** The block size of a new dynamic disk unless told otherwise. */
export const DEFAULT_DYNAMIC_BLOCK_SIZE = DEFAULT_BLOCK_SIZE;

/** The block size a disk made from `disk` (a child, a conversion) gets by default: its own, or 2 MiB. */
export function blockSizeLike(disk: { type?: string; blockSize?: number }): number {
  return disk.type === 'dynamic' || disk.type === 'differencing' ? disk.blockSize! : DEFAULT_BLOCK_SIZE;
}

/** A footer as bytes (makeFooter, encoded). */
export function footerBytes(o: FooterOptions): Uint8Array {
  return encodeFooter(makeFooter(o));
}

export function makeFooter(o: FooterOptions): Footer {
  return {
    cookie: FOOTER_COOKIE,
    features: 2,
    fileFormatVersion: FILE_FORMAT_VERSION,
    dataOffset: o.type === 'fixed' ? UINT64_NONE : (o.dataOffset ?? 512n),
    timestamp: dateToVhdTimestamp(o.timestamp ?? new Date()),
    creatorApplication: CREATOR_APPLICATION,
    creatorVersion: CREATOR_VERSION,
    creatorHostOs: CREATOR_HOST_OS,
    originalSize: BigInt(o.virtualSize),
    currentSize: BigInt(o.virtualSize),
    geometry: geometryForWrite(o.virtualSize),
    diskType: DiskType[o.type],
    checksum: 0,
    uniqueId: o.uuid.slice(0, 16),
    savedState: 0,
    reserved: new Uint8Array(427),
  };
}

/** Validates a virtual size for a new disk: a positive multiple of 512 no larger than 2040 GiB. */
export function checkVirtualSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
    throw new VhdError(ErrorCodes.SIZE_INVALID, `virtual size ${size} must be a positive multiple of 512 bytes`);
  }
  if (size > MAX_VHD_SIZE) {
    throw new VhdError(ErrorCodes.SIZE_INVALID, `virtual size ${size} is larger than the VHD maximum of 2040 GiB (${MAX_VHD_SIZE} bytes)`);
  }
}

export function checkBlockSize(blockSize: number): void {
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw new VhdError(ErrorCodes.SIZE_INVALID, `block size ${blockSize} must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE} bytes`);
  }
}

/** Writes a fixed disk: content at its virtual offsets, the footer at the end. */
export class FixedWriter {
  private constructor(
    readonly sink: ByteSink,
    readonly footer: Footer,
  ) {}

  /** Sizes the file (sparse: unwritten content reads as zeros) and prepares the footer. */
  static async create(sink: ByteSink, o: Omit<FooterOptions, 'type'>): Promise<FixedWriter> {
    checkVirtualSize(o.virtualSize);
    await sink.truncate(o.virtualSize);
    return new FixedWriter(sink, makeFooter({ ...o, type: 'fixed' }));
  }

  get virtualSize(): number {
    return Number(this.footer.currentSize);
  }

  async write(data: Uint8Array, position: number): Promise<void> {
    if (position + data.length > this.virtualSize) {
      throw new VhdError(ErrorCodes.RANGE, `write of ${data.length} bytes at ${position} is past the virtual size ${this.virtualSize}`);
    }
    await this.sink.write(data, position);
  }

  async finish(): Promise<void> {
    await this.sink.write(encodeFooter(this.footer), this.virtualSize);
  }
}

export interface ParentLink {
  /** The parent's footer UUID (16 raw bytes). */
  uuid: Uint8Array;
  /** The parent's footer time stamp (seconds since 2000). */
  timestamp: number;
  /** Name written in the header (the parent's file name). */
  name: string;
  /** Locators to write, in this order: usually W2ru (relative), W2ku (absolute), MacX. */
  locators: Array<{ code: 'W2ku' | 'W2ru' | 'MacX'; path: string }>;
}

export interface DynamicOptions {
  virtualSize: number;
  blockSize?: number;
  uuid: Uint8Array;
  timestamp?: Date;
  parent?: ParentLink;
}

/**
 * Writes a dynamic or differencing disk. Layout: footer copy, dynamic header, locator data, BAT,
 * then blocks appended in the order they are written. For blocks of 64 KiB or more the data area
 * of each block starts on a 4 KiB boundary, as Windows lays them out.
 */
export class DynamicWriter {
  readonly bat: Uint32Array;
  readonly bitmapSize: number;
  private end: number;
  private readonly headerBytes: Uint8Array;
  private readonly footerBytes: Uint8Array;
  private readonly tableOffset: number;
  private readonly locatorWrites: Array<[Uint8Array, number]> = [];
  private readonly zeroBitmapFull: Uint8Array;

  private constructor(
    readonly sink: ByteSink,
    readonly virtualSize: number,
    readonly blockSize: number,
    readonly type: 'dynamic' | 'differencing',
    o: DynamicOptions,
  ) {
    const entries = Math.ceil(virtualSize / blockSize);
    this.bat = new Uint32Array(entries).fill(BAT_UNUSED);
    this.bitmapSize = bitmapByteSize(blockSize);
    this.zeroBitmapFull = new Uint8Array(this.bitmapSize).fill(0xff);
    // Locator data right after the header, each in its own 512-byte-aligned area.
    let cursor = 512 + 1024;
    const locators: LocatorEntry[] = [];
    for (const l of o.parent?.locators ?? []) {
      const data = encodeLocatorPath(l.code, l.path);
      const space = Math.max(512, Math.ceil(data.length / 512) * 512);
      locators.push({ platformCode: l.code, platformDataSpace: space, platformDataLength: data.length, reserved: 0, platformDataOffset: BigInt(cursor) });
      this.locatorWrites.push([data, cursor]);
      cursor += space;
    }
    while (locators.length < 8) locators.push(emptyLocator());
    this.tableOffset = cursor;
    this.end = cursor + batByteSize(entries);
    this.headerBytes = encodeHeader({
      cookie: HEADER_COOKIE,
      dataOffset: UINT64_NONE,
      tableOffset: BigInt(this.tableOffset),
      headerVersion: HEADER_VERSION,
      maxTableEntries: entries,
      blockSize,
      checksum: 0,
      parentUniqueId: o.parent ? o.parent.uuid.slice(0, 16) : new Uint8Array(16),
      parentTimestamp: o.parent?.timestamp ?? 0,
      reserved1: 0,
      parentUnicodeName: encodeParentName(o.parent?.name ?? ''),
      parentLocators: locators,
      reserved2: new Uint8Array(256),
    });
    this.footerBytes = encodeFooter(makeFooter({ type, virtualSize, uuid: o.uuid, timestamp: o.timestamp, dataOffset: 512n }));
  }

  static async create(sink: ByteSink, o: DynamicOptions): Promise<DynamicWriter> {
    checkVirtualSize(o.virtualSize);
    const blockSize = o.blockSize ?? DEFAULT_BLOCK_SIZE;
    checkBlockSize(blockSize);
    const w = new DynamicWriter(sink, o.virtualSize, blockSize, o.parent ? 'differencing' : 'dynamic', o);
    await sink.truncate(0);
    return w;
  }

  get blocks(): number {
    return this.bat.length;
  }

  /** Where the next block goes: its data area 4 KiB aligned for blocks of 64 KiB and more. */
  private allocate(): number {
    const start = placeBlock(this.end, this.blockSize, this.bitmapSize);
    this.end = start + this.bitmapSize + this.blockSize;
    return start;
  }

  /**
   * Writes one whole block. `data` is blockSize bytes (shorter for the last, partial block, the rest
   * being zeros). `bitmap` defaults to all sectors present. Each block may be written once.
   */
  async writeBlock(block: number, data: Uint8Array, bitmap?: Uint8Array): Promise<void> {
    if (block < 0 || block >= this.bat.length) throw new VhdError(ErrorCodes.RANGE, `block ${block} is outside the BAT (${this.bat.length} entries)`);
    if (this.bat[block] !== BAT_UNUSED) throw new VhdError(ErrorCodes.RANGE, `block ${block} was already written`);
    const start = this.allocate();
    this.bat[block] = start / 512;
    await this.sink.write(bitmap ?? this.zeroBitmapFull, start);
    await this.sink.write(data, start + this.bitmapSize);
    if (data.length < this.blockSize) {
      // Short last block: the file still holds the whole block, zeros after the data.
      await this.sink.write(new Uint8Array(this.blockSize - data.length), start + this.bitmapSize + data.length);
    }
  }

  /**
   * Writes a block given as one buffer laid out [bitmap | data] (bitmapSize + blockSize bytes), in
   * one write: the fast path for converters that read straight into the data part.
   */
  async writeBlockWithBitmap(block: number, bitmapAndData: Uint8Array): Promise<void> {
    if (bitmapAndData.length !== this.bitmapSize + this.blockSize) throw new VhdError(ErrorCodes.RANGE, 'block buffer has the wrong size');
    if (this.bat[block] !== BAT_UNUSED) throw new VhdError(ErrorCodes.RANGE, `block ${block} was already written`);
    const start = this.allocate();
    this.bat[block] = start / 512;
    await this.sink.write(bitmapAndData, start);
  }

  /**
   * Writes a block of which only some byte ranges hold data: the bitmap, then each piece
   * (`[offsetInBlock, bytes]`) at its place. The rest of the block is left as a hole in the file
   * (it reads as zeros), so a child holding a few sectors per block stays small on disk.
   */
  async writeBlockPieces(block: number, bitmap: Uint8Array, pieces: Array<[number, Uint8Array]>): Promise<void> {
    if (block < 0 || block >= this.bat.length) throw new VhdError(ErrorCodes.RANGE, `block ${block} is outside the BAT (${this.bat.length} entries)`);
    if (this.bat[block] !== BAT_UNUSED) throw new VhdError(ErrorCodes.RANGE, `block ${block} was already written`);
    const start = this.allocate();
    this.bat[block] = start / 512;
    await this.sink.write(bitmap, start);
    for (const [offset, bytes] of pieces) {
      if (offset < 0 || offset + bytes.length > this.blockSize) throw new VhdError(ErrorCodes.RANGE, `piece at ${offset} (${bytes.length} bytes) is outside the block`);
      await this.sink.write(bytes, start + this.bitmapSize + offset);
    }
  }

  /**
   * writeBlockPieces with the bitmap made from the pieces: each piece ([offsetInBlock, bytes], whole
   * sectors) sets its sectors' bits, so a differencing child holds exactly them.
   */
  async writeSectors(block: number, pieces: Array<[number, Uint8Array]>): Promise<void> {
    const bitmap = new Uint8Array(this.bitmapSize);
    for (const [offset, bytes] of pieces) setBits(bitmap, offset / 512, (offset + bytes.length) / 512);
    await this.writeBlockPieces(block, bitmap, pieces);
  }

  /** Writes the metadata: footer copy, header, locators, BAT, then the footer at the end. */
  async finish(): Promise<void> {
    await this.sink.write(this.footerBytes, 0);
    await this.sink.write(this.headerBytes, 512);
    for (const [data, at] of this.locatorWrites) {
      const area = new Uint8Array(Math.ceil(data.length / 512) * 512 || 512);
      area.set(data);
      await this.sink.write(area, at);
    }
    await this.sink.write(encodeBat(this.bat), this.tableOffset);
    await this.sink.write(this.footerBytes, this.end);
    await this.sink.truncate(this.end + 512);
  }
}
