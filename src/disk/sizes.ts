/**
 * The sizes of a disk, cross-checked in one place: the footer's current size, the file's length
 * (for a fixed disk, the bytes before its footer), the CHS geometry and (dynamic) the BAT's span.
 * Which size wins is a documented choice: the footer's current size, as Hyper-V, libvhdi and the
 * specification read it; `sizeFrom: 'file'` takes a fixed disk's size from its file instead. A
 * disagreement that still reads one way is a coded warning; one that cannot be read is thrown.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import type { Footer } from '../format/footer.js';

/** Where a fixed disk's virtual size comes from (dynamic disks have no second source: the footer). */
export type SizeSource = 'footer' | 'file';

/** 65535/16/255: the geometry writers put on any disk too large for CHS; it says nothing of the size. */
const MAX_GEOMETRY = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };

/**
 * The virtual size of a fixed disk whose footer is at `footerOffset` (the bytes of data before it).
 * Reports FILE_SIZE_MISMATCH when the file holds more than the footer says (or, from the file,
 * when the footer disagrees); throws FOOTER_SIZE when the footer's size does not fit in the file.
 */
export function fixedVirtualSize(footer: Footer, footerOffset: number, sizeFrom: SizeSource, report: (e: VhdError) => void): number {
  const current = Number(footer.currentSize);
  const where = { structure: 'footer', offset: footerOffset + 48, field: 'currentSize' };
  const whole = Math.floor(footerOffset / 512) * 512;
  if (sizeFrom === 'file') {
    if (whole !== footerOffset) {
      report(new VhdError(ErrorCodes.FILE_SIZE_MISMATCH, `the file holds ${footerOffset} bytes before its footer, not whole sectors; reading the first ${whole} (--size-from file)`, where));
    }
    if (whole !== current) {
      report(new VhdError(ErrorCodes.FILE_SIZE_MISMATCH, `the footer's current size is ${current} but the file holds ${whole} bytes of data; reading ${whole} (--size-from file)`, { ...where, expected: whole, actual: current }));
    }
    return whole;
  }
  if (current > footerOffset) {
    throw new VhdError(
      ErrorCodes.FOOTER_SIZE,
      `current size ${current} does not fit before the footer: the fixed disk holds ${footerOffset} bytes of data (the reading commands' --size-from file reads those ${whole})`,
      where,
    );
  }
  if (current < footerOffset) {
    report(
      new VhdError(
        ErrorCodes.FILE_SIZE_MISMATCH,
        `the file holds ${footerOffset} bytes of data before its footer, ${footerOffset - current} more than the current size ${current}; reading ${current} (the footer's size; --size-from file reads all ${whole})`,
        { ...where, expected: footerOffset, actual: current },
      ),
    );
  }
  return current;
}

/**
 * CHS geometry against the virtual size. CHS rounds down (a geometry smaller than the disk is
 * normal) and the maximum geometry is what writers put on every large disk; a geometry that
 * describes more sectors than the disk has is GEOMETRY_SIZE (the current size is used).
 */
export function checkGeometry(footer: Footer, footerOffset: number, virtualSize: number, report: (e: VhdError) => void): void {
  const g = footer.geometry;
  const bytes = g.cylinders * g.heads * g.sectorsPerTrack * 512;
  const isMax = g.cylinders === MAX_GEOMETRY.cylinders && g.heads === MAX_GEOMETRY.heads && g.sectorsPerTrack === MAX_GEOMETRY.sectorsPerTrack;
  if (bytes > virtualSize && !isMax) {
    report(
      new VhdError(
        ErrorCodes.GEOMETRY_SIZE,
        `geometry ${g.cylinders}/${g.heads}/${g.sectorsPerTrack} describes ${bytes} bytes, more than the disk's ${virtualSize}; the current size is used`,
        { structure: 'footer', offset: footerOffset + 56, field: 'geometry', expected: virtualSize, actual: bytes },
      ),
    );
  }
}

/**
 * The BAT's span against the virtual size: fewer entries than the size needs cannot be read
 * (BAT_TOO_SMALL); a table that does not fit in the file or the format cannot be read either
 * (BAT_PAST_EOF, BAT_TOO_LARGE); more entries than needed are a warning (BAT_TOO_LARGE).
 */
export function checkBatSpan(
  t: { declared: number; blockSize: number; virtualSize: number; tableOffset: number; fileSize: number; headerOffset: number; maxEntries: number },
  report: (e: VhdError) => void,
): number {
  const needed = Math.ceil(t.virtualSize / t.blockSize);
  const where = { structure: 'dynamic header', offset: t.headerOffset + 28, field: 'maxTableEntries', expected: needed, actual: t.declared };
  if (t.declared < needed) {
    throw new VhdError(ErrorCodes.BAT_TOO_SMALL, `BAT has ${t.declared} entries but a ${t.virtualSize}-byte disk with ${t.blockSize}-byte blocks needs ${needed}`, where);
  }
  if (t.declared * 4 > t.fileSize - t.tableOffset || t.declared > t.maxEntries) {
    throw new VhdError(
      t.declared > needed ? ErrorCodes.BAT_TOO_LARGE : ErrorCodes.BAT_PAST_EOF,
      `BAT of ${t.declared} entries (${t.declared * 4} bytes at offset ${t.tableOffset}) does not fit in the file (${t.fileSize} bytes); the disk needs ${needed}`,
      where,
    );
  }
  return needed;
}

/**
 * More BAT entries than the size needs: BAT_TOO_LARGE when they are unused; BLOCK_PAST_SIZE when
 * `used` of them (the first at entry `first`) are allocated, data the current size leaves out.
 */
export function checkExtraEntries(
  t: { declared: number; needed: number; used: number; first: number; virtualSize: number; tableOffset: number; headerOffset: number },
  report: (e: VhdError) => void,
): void {
  if (t.declared <= t.needed) return;
  if (t.used === 0) {
    report(new VhdError(ErrorCodes.BAT_TOO_LARGE, `BAT has ${t.declared} entries; the virtual size needs only ${t.needed}`, { structure: 'dynamic header', offset: t.headerOffset + 28, field: 'maxTableEntries' }));
    return;
  }
  report(
    new VhdError(
      ErrorCodes.BLOCK_PAST_SIZE,
      `${t.used} allocated block${t.used === 1 ? '' : 's'} past the virtual size (${t.virtualSize} bytes), from BAT entry ${t.first} (the BAT has ${t.declared} entries, the size needs ${t.needed}): their data is not part of the disk as its footer describes it`,
      { structure: `BAT entry ${t.first}`, offset: t.tableOffset + t.first * 4 },
    ),
  );
}
