/**
 * What a chain holds above an ancestor: the sectors its newer disks hold themselves (their sector
 * bitmaps), where the chain can differ from that ancestor. One home for merge, upload and diff.
 */
import type { VhdImage } from './image.js';
import { normalizeRanges, type Range } from './ranges.js';

/**
 * Sectors are listed a window of the virtual disk at a time: memory follows one window's runs. A
 * multiple of every block size and of Azure's 4 MiB page write, so cutting there changes no write.
 */
export const SECTOR_WINDOW = 1024 * 1024 * 1024;

/** The union of the sectors `levels` hold themselves, in order, clipped to `size`, a window at a time. */
export async function* heldSectors(levels: VhdImage[], size: number, window = SECTOR_WINDOW): AsyncGenerator<Range> {
  for (let w = 0; w < size; w += window) {
    const end = Math.min(size, w + window);
    const parts: Range[] = [];
    for (const d of levels) for (const r of await d.ownSectorRanges(w, end)) parts.push(r);
    yield* normalizeRanges(parts);
  }
}

/**
 * The sectors `top`'s chain holds above its member `ancestorId` (the disks newer than it), or
 * undefined when the chain has no such member.
 */
export async function sectorsAbove(top: VhdImage, ancestorId: string): Promise<Range[] | undefined> {
  const chain = top.chain;
  const at = chain.findIndex((c) => c.id === ancestorId);
  if (at < 0) return undefined;
  const levels = chain.slice(0, at);
  const out: Range[] = [];
  for await (const r of heldSectors(levels, Math.max(0, ...levels.map((d) => d.virtualSize)), Number.MAX_SAFE_INTEGER)) out.push(r);
  return out;
}
