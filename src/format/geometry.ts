/**
 * CHS geometry, by the algorithm of the VHD specification (appendix "CHS calculation").
 */
import { SECTOR_SIZE } from './layout.js';

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** 65535 × 16 × 255 sectors: the largest geometry; Disk2vhd and qemu's `qem2` always write it. */
export const MAX_GEOMETRY: Readonly<Geometry> = Object.freeze({ cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
export const MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;

export function geometrySize(g: Geometry): number {
  return g.cylinders * g.heads * g.sectorsPerTrack * SECTOR_SIZE;
}

export function isMaxGeometry(g: Geometry): boolean {
  return g.cylinders === 65535 && g.heads === 16 && g.sectorsPerTrack === 255;
}

/** The specification's CHS algorithm for a disk of `totalSectors` sectors. */
export function chsForSectors(totalSectors: number): Geometry {
  let total = Math.floor(totalSectors);
  if (total > MAX_GEOMETRY_SECTORS) total = MAX_GEOMETRY_SECTORS;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (total >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(total / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(total / sectorsPerTrack);
    heads = Math.floor((cylinderTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(total / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(total / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

/**
 * The geometry vhdkit writes for a disk of `virtualSize` bytes. The specification's geometry
 * when it describes the size exactly; otherwise the maximum geometry, the convention of Disk2vhd
 * and qemu (`force_size`) that tells readers keyed on CHS (qemu, Virtual PC) to use the footer's
 * current size instead — so every reader sees the same size.
 */
export function geometryForWrite(virtualSize: number): Geometry {
  const spec = chsForSectors(virtualSize / SECTOR_SIZE);
  return geometrySize(spec) === virtualSize ? spec : { ...MAX_GEOMETRY };
}
