/**
 * `merge --into-copy`: the copy is made (reflinked where the file system can) under a fixed work
 * name beside its final one, merged there, and renamed into place; the originals are never written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { codedError, ErrorCodes, type Finding, VhdError } from '../../errors.js';
import { giveIdentity } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink, fileStamp, realPathOf } from '../../io/file.js';
import { OWN_SUFFIX } from '../../io/paths.js';
import { acquireLock, type AnyJournal, deletingJournal, fsyncDir, hasPendingMerge, holdLocks, journalPath, readJournal, removeJournal, writeJournal } from '../journal.js';
import { openDisk, openedStamp } from '../open.js';

/** Where --into-copy makes and merges its copy before it takes the final name. */
export function copyWorkPath(intoCopy: string): string {
  const final = path.resolve(intoCopy);
  return path.join(path.dirname(final), `.${path.basename(final)}${OWN_SUFFIX.copy}`);
}

type DiskState = 'merged' | 'changed' | 'other';

/**
 * Of the merged disks (newest first) in their states, those to delete: none from the newest one
 * written since it was merged on (it holds what the target lacks, and it reads through the older
 * ones), and only those still the disks merged. `warnings` is told of every disk kept.
 */
function keepFromChanged(paths: string[], states: DiskState[], target: string, warnings: Finding[]): string[] {
  const first = states.indexOf('changed');
  const warn = (message: string) => warnings.push({ code: ErrorCodes.MERGE_PENDING, severity: 'warning', message });
  if (first >= 0) {
    warn(`${paths[first]}: not deleted: it changed after it was merged into ${target} (merge it again)`);
    for (const p of paths.slice(first + 1)) warn(`${p}: not deleted: ${paths[first]} reads through it`);
  }
  return paths.filter((p, i) => (first < 0 || i < first) && states[i] === 'merged');
}

/**
 * Deletes the merged disks (--delete-child) once the merge into `file` (the target, or the copy under
 * its final name) is complete, the child first, and removes the journal, in an order where a run
 * killed at any instant is finished by running the same merge again. One disk: the journal goes
 * first (killed before the child's deletion, a rerun merges the child again, which changes nothing,
 * then deletes it). A chain: the journal is marked `deleting` first and removed last, so a rerun that
 * finds the child gone finishes the rest through --to or --into-copy (finishDeleting). Returns the paths.
 */
export function deleteMerged(file: string, journal: AnyJournal, sources: VhdImage[], warnings: Finding[]): string[] {
  // A disk written since the merge planned from it (its file now, under the exclusive lock) holds
  // what the target lacks: kept, with every disk it reads through.
  const paths = sources.map((s) => s.id);
  const doomed = keepFromChanged(paths, paths.map((p, i) => (journal.sources[i]?.stamp === fileStamp(p) ? 'merged' : 'changed')), file, warnings);
  if (sources.length === 1) {
    removeJournal(file);
    for (const s of doomed) fs.rmSync(s, { force: true });
    return doomed;
  }
  // The deleting step names the disks where they are now (a folder moved since the plan).
  if (journal.step !== 'deleting') writeJournal(file, deletingJournal({ ...journal, target: file, sources: journal.sources.map((j, i) => ({ ...j, path: sources[i].id })) }));
  for (const s of doomed) fs.rmSync(s, { force: true });
  fsyncDir(path.dirname(sources[0].id));
  removeJournal(file);
  return doomed;
}

/**
 * The rerun of a merge of a chain with --delete-child killed while it deleted the merged disks: the
 * child is gone, and the journal beside the target (--to) or the copy (--into-copy) is marked
 * `deleting` and names this child. Deletes what is left of what it merged (each disk only while it is
 * still that disk: its UUID as the journal has it) and removes the journal. Undefined when that is not
 * the case (the merge then goes on, and reports the missing child).
 */
export async function finishDeleting(childPath: string, to: string | undefined, intoCopy: string | undefined): Promise<{ target: string; sources: string[]; deleted: string[]; kept: Finding[] } | undefined> {
  if (fs.existsSync(childPath) || (to === undefined && intoCopy === undefined)) return undefined;
  const file = intoCopy !== undefined ? path.resolve(intoCopy) : realPathOf(to!);
  const child = danglingRealPath(childPath);
  const names = (j: AnyJournal | undefined) => j?.step === 'deleting' && relocated(j, file)[0] === child;
  if (!names(readJournal(file))) return undefined;
  // The lock a merge into this target holds (into a copy: the work file's; a killed run's is taken over).
  const release = acquireLock(intoCopy !== undefined ? copyWorkPath(intoCopy) : file, 'merge');
  try {
    // Under the lock: another run may have finished it meanwhile.
    const journal = readJournal(file);
    if (!names(journal)) return undefined;
    // Every disk it merged locked (a killed run's locks taken over, and removed with these), deleted
    // while still that disk.
    const all = relocated(journal!, file);
    const releases = holdLocks(all, { shared: 'merge (deleting it)', exclusive: 'merge (deleting it)', exclusiveFirst: all.length, during: 'this merge' }, []);
    let left: string[] = [];
    const kept: Finding[] = [];
    try {
      const states: DiskState[] = [];
      for (const [i, s] of journal!.sources.entries()) states.push(await stateOf(all[i], s.uuid, s.stamp));
      left = keepFromChanged(all, states, file, kept);
      for (const s of left) fs.rmSync(s, { force: true });
      if (left.length > 0) fsyncDir(path.dirname(left[0]));
      removeJournal(file);
    } finally {
      for (const r of releases) r();
    }
    return { target: file, sources: all, deleted: left, kept };
  } finally {
    release();
  }
}

/**
 * The journal's sources where they are now: a folder moved (or copied) with its journal moved the
 * disks that were in the target's folder (or below it) along; others stay where they were.
 */
function relocated(journal: AnyJournal, file: string): string[] {
  const was = path.dirname(journal.target);
  const now = path.dirname(file);
  return journal.sources.map((s) => (was !== now && s.path.startsWith(was + path.sep) ? path.join(now, path.relative(was, s.path)) : s.path));
}

/** The real path `file` names, its symlinks followed even to a target that is gone (a child deleted through a link). */
function danglingRealPath(file: string): string {
  let p = path.resolve(file);
  for (let hops = 0; hops < 40; hops++) {
    let link: string;
    try {
      if (!fs.lstatSync(p).isSymbolicLink()) break;
      link = fs.readlinkSync(p);
    } catch {
      break; // gone: p is where it was
    }
    p = path.resolve(path.dirname(p), link);
  }
  return path.join(realPathOf(path.dirname(p)), path.basename(p));
}

/**
 * What `file` is now: the disk merged (its UUID, unchanged since the merge planned from it), that
 * disk written since (`changed`: it holds what the target lacks), or something else (gone, or another
 * file put in its place). Only the first is deleted.
 */
async function stateOf(file: string, uuid: string, stamp: string | undefined): Promise<DiskState> {
  try {
    const d = await openDisk(file, { resolveParents: false });
    try {
      if (d.uuid !== uuid) return 'other';
      return openedStamp(d) === stamp ? 'merged' : 'changed';
    } finally {
      await d.close();
    }
  } catch {
    return 'other';
  }
}

/** True when `file` is a complete copy this merge made (its UUID, no merge pending, no errors). */
export async function isFinishedCopy(file: string, uuid: Uint8Array): Promise<boolean> {
  if (hasPendingMerge(file)) return false;
  try {
    const d = await openDisk(file, { resolveParents: false });
    try {
      return Buffer.compare(Buffer.from(d.footer.uniqueId), Buffer.from(uuid)) === 0 && !d.findings.some((f) => f.severity === 'error');
    } finally {
      await d.close();
    }
  } catch {
    return false;
  }
}

/** Makes the copy for --into-copy at `dest`: reflink or copy_file_range when possible, a new UUID. */
export async function copyTarget(target: VhdImage, dest: string, uuid: Uint8Array, final: string): Promise<void> {
  try {
    fs.copyFileSync(target.id, dest, fs.constants.COPYFILE_FICLONE);
  } catch (e) {
    const reason = (codedError(e) as VhdError).detail?.replace(/^.*? failed /, '') ?? String(e);
    throw new VhdError(ErrorCodes.IO, `copying ${target.name} to the work file ${path.basename(dest)} failed ${reason}`, { file: final, cause: e });
  }
  try {
    // A new identity: the copy is a different disk once merged (the original's children keep theirs).
    const sink = await FileSink.open(dest, 'r+');
    try {
      await giveIdentity(sink, target, uuid);
    } finally {
      await sink.close();
    }
  } catch (e) {
    fs.rmSync(dest, { force: true });
    throw e;
  }
}


/**
 * A run killed inside the copy's final rename (renameNoReplace: link made, work name not yet
 * removed) leaves the work name as a second link to the finished copy: the rename is done, only its
 * last step is left. Removes the work name then, so the run goes on as after the rename.
 */
export function settleInterruptedRename(intoCopy: string): void {
  const work = copyWorkPath(intoCopy);
  try {
    const a = fs.lstatSync(work);
    const b = fs.lstatSync(intoCopy);
    if (a.isFile() && b.isFile() && a.dev === b.dev && a.ino === b.ino) fs.rmSync(work);
  } catch {
    // one of them is missing: nothing was left half done
  }
}

/**
 * A merge into a copy that failed: named by the copy the user gave. Its work file is removed when no
 * journal says a merge into it began (a rerun starts over anyway); otherwise kept, and the error says
 * that running the same merge again completes it.
 */
export function copyFailure(e: unknown, work: string, intoCopy: string): unknown {
  const started = fs.existsSync(journalPath(work));
  if (!started) fs.rmSync(work, { force: true });
  if (!(e instanceof VhdError) || (e.file !== work && e.file !== journalPath(work))) return e;
  const kept = started ? `; its work file ${path.basename(work)} is kept: run the same merge again to complete it` : '';
  return new VhdError(e.code, `${e.detail} (in the copy's work file${kept})`, { file: intoCopy, structure: e.structure, offset: e.offset, cause: e.cause ?? e });
}
