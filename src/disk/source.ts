/**
 * What every operation reads from: a VHD (or chain) or a raw image, as virtual bytes plus the
 * ranges where data may live.
 */
import type { ByteSource } from '../io/types.js';
import { alignRanges, type Range } from './ranges.js';

export interface VirtualDisk {
  readonly name: string;
  readonly virtualSize: number;
  read(into: Uint8Array, position: number): Promise<void>;
  /** Sorted, coalesced ranges outside which every byte is zero. */
  dataRanges(): Range[];
  close(): Promise<void>;
}

/** A raw image: the bytes of the file are the disk. A size that is not a whole sector reads as zero-padded. */
export class RawDisk implements VirtualDisk {
  readonly virtualSize: number;
  private ranges?: Range[];
  constructor(readonly source: ByteSource) {
    this.virtualSize = Math.ceil(source.size / 512) * 512;
  }
  get name(): string {
    return this.source.name;
  }
  async read(into: Uint8Array, position: number): Promise<void> {
    const inFile = Math.max(0, Math.min(into.length, this.source.size - position));
    if (inFile > 0) await this.source.read(into.subarray(0, inFile), position);
    if (inFile < into.length) into.fill(0, inFile);
  }
  /** The whole disk, or, for a sparse file whose holes the source can tell, its data extents to the sector. */
  dataRanges(): Range[] {
    if (this.ranges) return this.ranges;
    const extents = this.source.dataExtents?.();
    if (!extents) return (this.ranges = this.virtualSize > 0 ? [[0, this.virtualSize]] : []);
    return (this.ranges = alignRanges(extents, 512, this.virtualSize));
  }
  close(): Promise<void> {
    return this.source.close();
  }
}
