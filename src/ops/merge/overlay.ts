/** Which source of a merge each sector comes from: the newest that holds it. */
import type { VhdImage } from '../../disk/image.js';
import { normalizeRanges, subtractRanges, type Range } from '../../disk/ranges.js';

export interface Segment {
  /** Virtual byte range. */
  start: number;
  end: number;
  /** Index into the sources (0 = newest). */
  source: number;
}

/**
 * Assigns every sector held by any source to the newest source holding it. A chain reads zeros past
 * the end of any of its disks (an older one is not asked there): a source's sectors count only below
 * the sizes of it and of every newer source.
 */
export async function overlay(sources: VhdImage[], limit: number): Promise<Segment[]> {
  let covered: Range[] = [];
  const segments: Segment[] = [];
  let visible = limit;
  for (let i = 0; i < sources.length; i++) {
    visible = Math.min(visible, sources[i].virtualSize);
    const own = (await sources[i].ownSectorRanges()).map(([a, b]) => [a, Math.min(b, visible)] as Range).filter(([a, b]) => b > a);
    for (const [a, b] of subtractRanges(own, covered)) segments.push({ start: a, end: b, source: i });
    covered = normalizeRanges([...covered, ...own]);
  }
  return segments.sort((x, y) => x.start - y.start);
}

/** The segments cut at block boundaries, by block (`blockSize` bytes each), in block order. */
export function byBlock(segments: Segment[], blockSize: number): Map<number, Segment[]> {
  const out = new Map<number, Segment[]>();
  for (const seg of segments) {
    for (let b = Math.floor(seg.start / blockSize); b * blockSize < seg.end; b++) {
      const piece = { start: Math.max(seg.start, b * blockSize), end: Math.min(seg.end, (b + 1) * blockSize), source: seg.source };
      if (!out.has(b)) out.set(b, []);
      out.get(b)!.push(piece);
    }
  }
  return new Map([...out.entries()].sort((x, y) => x[0] - y[0]));
}
