/**
 * Which journal a merge run follows: the pending one (the same merge, checked), or a fresh plan
 * written durably; and, when the sources changed since a pending one was planned, that merge settled
 * by its step so that the run can plan again.
 */
import { ErrorCodes, VhdError } from '../../errors.js';
import { VhdEditor } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink } from '../../io/file.js';
import { type AnyJournal, type MergeJournal, readJournal, writeJournal } from '../journal.js';
import type { MergeOptions } from '../merge.js';
import { openedStamp } from '../open.js';
import type { Segment } from './overlay.js';
import { plan, planOf } from './plan.js';

/**
 * The journal of the merge into `targetFile`: the pending one (the same merge, or MERGE_PENDING),
 * or a fresh plan written durably.
 */
export async function journalOf(targetFile: string, target: VhdImage, sources: VhdImage[], options: MergeOptions, parentSize: number | undefined): Promise<{ journal: AnyJournal; planned?: Segment[] }> {
  const journal = readJournal(targetFile);
  if (journal === undefined) {
    if (options.resume) throw new VhdError(ErrorCodes.USAGE, 'no merge is pending on this disk: nothing to resume', { file: targetFile });
    return freshPlan(targetFile, target, sources, options, parentSize);
  }
  const want = sources.map((s) => s.uuid).join(',');
  const have = journal.sources.map((s) => s.uuid).join(',');
  if (want !== have || journal.targetUuid !== target.uuid) {
    throw new VhdError(ErrorCodes.MERGE_PENDING, `a different merge is pending on this disk (of ${journal.sources.map((s) => s.path).join(', ')}); run it again to complete it first`, { file: targetFile });
  }
  // The journal decides what happens after the merge: a --delete-child it lacks is not done silently.
  if (options.deleteChild && !journal.deleteChild) {
    throw new VhdError(ErrorCodes.USAGE, 'the interrupted merge into this disk was started without --delete-child: run it again without it to complete it, then delete the child', { file: targetFile });
  }
  return { journal };
}

/** A fresh plan of the merge, its journal written durably once the target is known to be writable. */
export async function freshPlan(targetFile: string, target: VhdImage, sources: VhdImage[], options: MergeOptions, parentSize: number | undefined): Promise<{ journal: MergeJournal; planned?: Segment[] }> {
  const made = await plan(target, sources, targetFile, !!options.deleteChild, parentSize);
  // A target that cannot be written (read-only, no permission) is refused before a journal says a
  // merge into it is pending.
  await (await FileSink.open(targetFile, 'r+')).close();
  writeJournal(targetFile, made.journal);
  return { journal: made.journal, planned: made.segments };
}

/** The sources whose file is no longer what the journal planned from (identity changed, or not recorded). */
export function changedSources(journal: AnyJournal, sources: VhdImage[]): VhdImage[] {
  return sources.filter((s, i) => journal.sources[i]?.stamp !== openedStamp(s));
}

/**
 * An interrupted merge that will not be completed from its plan, settled by its step: planned (the
 * data not durable), the target's layout before it put back; copied, its metadata written (complete).
 */
export async function settle(targetFile: string, journal: MergeJournal): Promise<void> {
  const sink = await FileSink.open(targetFile, 'r+');
  try {
    const editor = new VhdEditor(sink, planOf(journal));
    await (journal.step === 'copied' ? editor.finish() : editor.restore());
  } finally {
    await sink.close();
  }
}
