/** `info`: everything about a disk and its chain, as a plain JSON-ready object. */
import { withCodedErrors } from '../errors.js';
import type { Finding } from '../errors.js';
import type { VhdImage } from '../disk/image.js';
import { vhdTimestampToDate } from '../format/timestamp.js';
import { openDisk, type OpenDiskOptions } from './open.js';

export interface ChainMember {
  file: string;
  type: 'fixed' | 'dynamic' | 'differencing';
  uuid: string;
  virtualSize: number;
}

export interface ParentInfo {
  uuid: string;
  name: string;
  timestamp: string | null;
  locators: Array<{ index: number; platformCode: string; path: string | null; dataOffset: number; dataLength: number }>;
  /** The file the parent resolved to, or null when it could not be found. */
  path: string | null;
}

export interface DiskInfo {
  file: string;
  type: 'fixed' | 'dynamic' | 'differencing';
  virtualSize: number;
  fileSize: number;
  blockSize: number | null;
  totalBlocks: number | null;
  allocatedBlocks: number | null;
  creator: { application: string; version: string; hostOs: string };
  uuid: string;
  timestamp: string;
  originalSize: number;
  geometry: { cylinders: number; heads: number; sectorsPerTrack: number; size: number };
  savedState: boolean;
  parent: ParentInfo | null;
  chain: ChainMember[];
  findings: Finding[];
}

function tag(t: string): string {
  return t.replace(/\0+$/, '').replace(/[^\x20-\x7e]/g, '?');
}

export function describe(img: VhdImage): DiskInfo {
  const f = img.footer;
  let parent: ParentInfo | null = null;
  if (img.type === 'differencing' && img.header) {
    parent = {
      uuid: img.parentUuid!,
      name: img.parentName ?? '',
      timestamp: img.header.parentTimestamp === 0 ? null : vhdTimestampToDate(img.header.parentTimestamp).toISOString(),
      locators: img.locators.map((l) => ({
        index: l.index,
        platformCode: l.platformCode,
        path: l.path ?? null,
        dataOffset: l.dataOffset,
        dataLength: l.dataLength,
      })),
      path: img.parent ? img.parent.id : null,
    };
  }
  return {
    file: img.name,
    type: img.type,
    virtualSize: img.virtualSize,
    fileSize: img.source.size,
    blockSize: img.type === 'fixed' ? null : img.blockSize,
    totalBlocks: img.bat ? img.bat.length : null,
    allocatedBlocks: img.bat ? img.allocatedBlocks : null,
    creator: {
      application: tag(f.creatorApplication),
      version: `${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`,
      hostOs: tag(f.creatorHostOs),
    },
    uuid: img.uuid,
    timestamp: vhdTimestampToDate(f.timestamp).toISOString(),
    originalSize: Number(f.originalSize),
    geometry: { ...f.geometry, size: img.geometrySize },
    savedState: f.savedState !== 0,
    parent,
    chain: img.chain.map((d) => ({ file: d.name, type: d.type, uuid: d.uuid, virtualSize: d.virtualSize })),
    findings: img.allFindings,
  };
}

/** Opens `file` (and its chain, tolerating a broken one) and describes it. */
export function info(file: string, options: OpenDiskOptions = {}): Promise<DiskInfo> {
  return withCodedErrors(async () => {
    const img = await openDisk(file, { ...options, tolerateBrokenChain: true });
    try {
      return describe(img);
    } finally {
      await img.close();
    }
  });
}
