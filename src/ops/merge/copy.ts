/**
 * `merge --into-copy`: the copy is made (reflinked where the file system can) under a fixed work
 * name beside its final one, merged there, and renamed into place; the originals are never written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { codedError, ErrorCodes, VhdError } from '../../errors.js';
import { giveIdentity } from '../../disk/editor.js';
import type { VhdImage } from '../../disk/image.js';
import { FileSink } from '../../io/file.js';
import { hasPendingMerge } from '../journal.js';
import { openDisk } from '../open.js';

/** Where --into-copy makes and merges its copy before it takes the final name. */
export function copyWorkPath(intoCopy: string): string {
  const final = path.resolve(intoCopy);
  return path.join(path.dirname(final), `.${path.basename(final)}.vhdkit-copy`);
}

/** Deletes the merged disks (--delete-child), the child first; returns their paths. */
export function deleteSources(sources: VhdImage[]): string[] {
  for (const s of sources) fs.rmSync(s.id, { force: true });
  return sources.map((s) => s.id);
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
