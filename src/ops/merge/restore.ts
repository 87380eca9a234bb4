/**
 * Opening what a merge reads and writes when an interrupted merge left a disk unopenable: its
 * journal repairs it (under the disk's lock), then it is opened again.
 */
import { VhdError, type Finding } from '../../errors.js';
import { VhdEditor } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink, realPathOf } from '../../io/file.js';
import { acquireLock, hasPendingMerge, readJournal } from '../journal.js';
import { openDisk } from '../open.js';
import type { MergeOptions } from '../merge.js';
import { planOf } from './plan.js';

/**
 * Makes a target left unopenable by an interrupted merge openable again, by its journal, for a
 * caller that holds the lock. Planned (the data not yet durable): its layout before the merge is
 * put back (the file cut at its old data end, the original footer after it and at offset 0, the
 * original dynamic header; data already merged into existing blocks stays, it is merged again
 * anyway; new blocks and a moved BAT go). Copied (the data durable): the metadata is completed
 * instead, forward. True when it did either.
 */
async function repairLayoutOf(file: string): Promise<boolean> {
  const journal = readJournal(file);
  if (journal === undefined || journal.step === 'deleting') return false; // complete: nothing to repair
  const plan = planOf(journal);
  if (journal.step !== 'copied' && !plan.original) return false; // a fixed target has no layout to put back
  const sink = await FileSink.open(file, 'r+');
  try {
    const editor = new VhdEditor(sink, plan);
    await (journal.step === 'copied' ? editor.finish() : editor.restore());
  } finally {
    await sink.close();
  }
  return true;
}

/** repairLayoutOf for a disk found unopenable, under the lock (never beside a live merge). */
async function repairUnderLock(file: string): Promise<boolean> {
  if (!hasPendingMerge(file)) return false;
  const release = acquireLock(file, 'merge');
  try {
    return await repairLayoutOf(file);
  } finally {
    release();
  }
}

/**
 * Opens with `open`; a disk of what it opens left unopenable by an interrupted merge (its journal
 * beside it) is put back by `restore` and opened again.
 */
async function openRestoring(open: () => Promise<VhdImage>, restore: (file: string) => Promise<boolean>): Promise<VhdImage> {
  try {
    return await open();
  } catch (e) {
    // Repaired by its real path, where its journal and lock are (the name in the error may be a link to it).
    if (e instanceof VhdError && e.file !== undefined && hasPendingMerge(e.file) && (await restore(realPathOf(e.file)))) return open();
    throw e;
  }
}

/** A merge's own target, opened on its own under the merge's lock. */
export function openTarget(file: string): Promise<VhdImage> {
  return openRestoring(() => openDisk(file, { resolveParents: false }), repairLayoutOf);
}

/** The child's chain; restoring a disk of it takes that disk's lock (never beside a live merge). */
export function openChain(childPath: string, options: MergeOptions, warnings: Finding[]): Promise<VhdImage> {
  return openRestoring(() => openDisk(childPath, { allowedDirs: options.allowedDirs, strict: options.strict, onFinding: (f) => warnings.push(f) }), repairUnderLock);
}

