/**
 * Opening what a merge reads and writes when an interrupted merge left a disk unopenable: its
 * journal puts the original layout back (under the disk's lock), then it is opened again.
 */
import { VhdError, type Finding } from '../../errors.js';
import { VhdEditor } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink } from '../../io/file.js';
import { acquireLock, hasPendingMerge, type MergeJournal, readJournal } from '../journal.js';
import { openDisk } from '../open.js';
import type { MergeOptions } from '../merge.js';
import { planOf } from './plan.js';

/**
 * Puts a target with a pending merge back to its layout before the merge: the file cut at its old
 * data end, the original footer after it and at offset 0, the original dynamic header. Data already
 * merged into existing blocks stays (it is merged again anyway); new blocks and a moved BAT go.
 * Every merge run does this first; a disk left unopenable by an interrupted run opens again after it.
 */
function restoreLayout(sink: FileSink, journal: MergeJournal): Promise<void> {
  return new VhdEditor(sink, planOf(journal)).restore();
}

/** restoreLayout for a disk found unopenable, under the lock (never beside a live merge). */
async function restoreOriginalLayout(file: string): Promise<boolean> {
  const journal = readJournal(file);
  // A merge that is complete (deleting what it merged) is never put back.
  if (journal === undefined || journal.deleting || !journal.originalHeader) return false;
  const release = acquireLock(file, 'merge');
  try {
    return await restoreLayoutOf(file);
  } finally {
    release();
  }
}

/** restoreLayout of `file` by its journal, for a caller that holds the lock. */
async function restoreLayoutOf(file: string): Promise<boolean> {
  const journal = readJournal(file);
  if (journal === undefined || journal.deleting || !journal.originalHeader) return false;
  const sink = await FileSink.open(file, 'r+');
  try {
    await restoreLayout(sink, journal);
  } finally {
    await sink.close();
  }
  return true;
}

/**
 * Opens with `open`; a disk of what it opens left unopenable by an interrupted merge (its journal
 * beside it) is put back by `restore` and opened again.
 */
async function openRestoring(open: () => Promise<VhdImage>, restore: (file: string) => Promise<boolean>): Promise<VhdImage> {
  try {
    return await open();
  } catch (e) {
    if (e instanceof VhdError && e.file !== undefined && hasPendingMerge(e.file) && (await restore(e.file))) return open();
    throw e;
  }
}

/** A merge's own target, opened on its own under the merge's lock. */
export function openTarget(file: string): Promise<VhdImage> {
  return openRestoring(() => openDisk(file, { resolveParents: false }), restoreLayoutOf);
}

/** The child's chain; restoring a disk of it takes that disk's lock (never beside a live merge). */
export function openChain(childPath: string, options: MergeOptions, warnings: Finding[]): Promise<VhdImage> {
  return openRestoring(() => openDisk(childPath, { allowedDirs: options.allowedDirs, strict: options.strict, onFinding: (f) => warnings.push(f) }), restoreOriginalLayout);
}

