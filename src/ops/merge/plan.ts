/**
 * The plan of a merge as its journal keeps it: which sectors come from which source (the overlay),
 * the disk editor's plan for the target, and their round trip through the journal's fields.
 */
import type { VhdImage } from '../../disk/image.js';
import { type EditPlan, planEdit } from '../../disk/editor.js';
import type { MergeJournal } from '../journal.js';
import { byBlock, overlay, type Segment } from './overlay.js';
import { openedStamp } from '../open.js';

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function unb64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64'));
}

/** The plan of an edit as the journal saves it (base64 for bytes; the fields of journal version 1). */
function journalFields(p: EditPlan): Pick<MergeJournal, 'oldEnd' | 'newEnd' | 'newBlocks' | 'footer' | 'footerCopy' | 'originalHeader' | 'originalFooterCopy' | 'headerOffset' | 'header' | 'batOffset' | 'batEntries' | 'zeros' | 'clearBlocks'> {
  return {
    oldEnd: p.oldEnd,
    newEnd: p.newEnd,
    newBlocks: p.newBlocks.length > 0 ? b64(new Uint8Array(Uint32Array.from(p.newBlocks).buffer)) : '',
    footer: b64(p.footer),
    footerCopy: p.footerCopy,
    ...(p.original ? { originalHeader: b64(p.original.header), originalFooterCopy: b64(p.original.footerCopy), headerOffset: p.original.headerOffset } : {}),
    ...(p.grownBat ? { header: b64(p.grownBat.header), batOffset: p.grownBat.offset, batEntries: p.grownBat.entries } : {}),
    ...(p.zeros ? { zeros: p.zeros } : {}),
    ...(p.clearBlocks ? { clearBlocks: p.clearBlocks } : {}),
  };
}

/** The edit plan a journal holds. */
export function planOf(j: MergeJournal): EditPlan {
  return {
    oldEnd: j.oldEnd,
    newEnd: j.newEnd,
    newBlocks: j.newBlocks ? [...new Uint32Array(unb64(j.newBlocks).slice().buffer)] : [],
    footer: unb64(j.footer),
    footerCopy: j.footerCopy,
    original: j.originalHeader && j.originalFooterCopy && j.headerOffset !== undefined ? { header: unb64(j.originalHeader), headerOffset: j.headerOffset, footerCopy: unb64(j.originalFooterCopy) } : undefined,
    grownBat: j.header !== undefined ? { header: unb64(j.header), offset: j.batOffset!, entries: j.batEntries! } : undefined,
    zeros: j.zeros,
    clearBlocks: j.clearBlocks,
  };
}

/**
 * The journal of a fresh merge: which sectors come from which source (the overlay), and the editor's
 * plan for the target (new blocks appended, the BAT grown when the child is larger).
 */
export async function plan(
  target: VhdImage,
  sources: VhdImage[],
  targetFile: string,
  deleteChild: boolean,
  parentSize: number | undefined,
): Promise<{ journal: MergeJournal; segments?: Segment[] }> {
  const newSize = Math.max(target.virtualSize, sources[0].virtualSize);
  const base = {
    version: 1 as const,
    kind: 'vhdkit-merge' as const,
    target: targetFile,
    targetUuid: target.uuid,
    sources: sources.map((s) => ({ path: s.id, uuid: s.uuid, size: s.source.size, stamp: openedStamp(s) })),
    deleteChild,
    started: new Date().toISOString(),
  };
  // The chain reads zeros past the end of any disk between the child and the target.
  const zerosFrom = Math.min(...sources.slice(1).map((s) => s.virtualSize), Infinity);
  if (target.type === 'fixed') return { journal: { ...base, ...journalFields(await planEdit(target, [], newSize, { zerosFrom, zerosTo: sources[0].virtualSize })) } };
  const bs = target.blockSize;
  const segments = await overlay(sources, newSize);
  const edit = await planEdit(target, [...byBlock(segments, bs).keys()], newSize, { parentSize, zerosFrom, zerosTo: sources[0].virtualSize });
  return { journal: { ...base, ...journalFields(edit) }, segments };
}

