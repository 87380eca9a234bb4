/**
 * `merge --into-copy`: the copy is made (reflinked where the file system can) under a fixed work
 * name beside its final one, merged there, and renamed into place; the originals are never written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { codedError, ErrorCodes, VhdError } from '../../errors.js';
import { giveIdentity } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink, realPathOf } from '../../io/file.js';
import { acquireLock, type AnyJournal, deletingJournal, fsyncDir, hasPendingMerge, holdLocks, readJournal, removeJournal, writeJournal } from '../journal.js';
import { openDisk } from '../open.js';

/** Where --into-copy makes and merges its copy before it takes the final name. */
export function copyWorkPath(intoCopy: string): string {
  const final = path.resolve(intoCopy);
  return path.join(path.dirname(final), `.${path.basename(final)}.vhdkit-copy`);
}

/**
 * Deletes the merged disks (--delete-child) once the merge into `file` (the target, or the copy under
 * its final name) is complete, the child first, and removes the journal, in an order where a run
 * killed at any instant is finished by running the same merge again. One disk: the journal goes
 * first (killed before the child's deletion, a rerun merges the child again, which changes nothing,
 * then deletes it). A chain: the journal is marked `deleting` first and removed last, so a rerun that
 * finds the child gone finishes the rest through --to or --into-copy (finishDeleting). Returns the paths.
 */
export function deleteMerged(file: string, journal: AnyJournal, sources: string[]): string[] {
  if (sources.length === 1) {
    removeJournal(file);
    fs.rmSync(sources[0], { force: true });
    return sources;
  }
  if (journal.step !== 'deleting') writeJournal(file, deletingJournal(journal));
  for (const s of sources) fs.rmSync(s, { force: true });
  fsyncDir(path.dirname(sources[0]));
  removeJournal(file);
  return sources;
}

/**
 * The rerun of a merge of a chain with --delete-child killed while it deleted the merged disks: the
 * child is gone, and the journal beside the target (--to) or the copy (--into-copy) is marked
 * `deleting` and names this child. Deletes what is left of what it merged (each disk only while it is
 * still that disk: its UUID as the journal has it) and removes the journal. Undefined when that is not
 * the case (the merge then goes on, and reports the missing child).
 */
export async function finishDeleting(childPath: string, to: string | undefined, intoCopy: string | undefined): Promise<{ target: string; sources: string[]; deleted: string[] } | undefined> {
  if (fs.existsSync(childPath) || (to === undefined && intoCopy === undefined)) return undefined;
  const file = intoCopy !== undefined ? path.resolve(intoCopy) : realPathOf(to!);
  const child = path.join(realPathOf(path.dirname(path.resolve(childPath))), path.basename(childPath));
  const names = (j: AnyJournal | undefined) => j?.step === 'deleting' && j.sources[0]?.path === child;
  if (!names(readJournal(file))) return undefined;
  // The lock a merge into this target holds (into a copy: the work file's; a killed run's is taken over).
  const release = acquireLock(intoCopy !== undefined ? copyWorkPath(intoCopy) : file, 'merge');
  try {
    // Under the lock: another run may have finished it meanwhile.
    const journal = readJournal(file);
    if (!names(journal)) return undefined;
    // Every disk it merged locked (a killed run's locks taken over, and removed with these), deleted
    // while still that disk.
    const all = journal!.sources.map((s) => s.path);
    const releases = holdLocks(all, { shared: 'merge (deleting it)', exclusive: 'merge (deleting it)', exclusiveFirst: all.length, during: 'this merge' }, []);
    const left: string[] = [];
    try {
      for (const s of journal!.sources) if (await isDisk(s.path, s.uuid)) left.push(s.path);
      for (const s of left) fs.rmSync(s, { force: true });
      if (left.length > 0) fsyncDir(path.dirname(left[0]));
      removeJournal(file);
    } finally {
      for (const r of releases) r();
    }
    return { target: file, sources: journal!.sources.map((s) => s.path), deleted: left };
  } finally {
    release();
  }
}

/** True when `file` is the VHD with this UUID (a file put in its place since is not deleted). */
async function isDisk(file: string, uuid: string): Promise<boolean> {
  try {
    const d = await openDisk(file, { resolveParents: false });
    try {
      return d.uuid === uuid;
    } finally {
      await d.close();
    }
  } catch {
    return false;
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
