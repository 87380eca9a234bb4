/** Opening disks from files: the bridge from paths to the disk layer. */
import { type ErrorCode, ErrorCodes, type Finding, findingFrom, VhdError } from '../errors.js';
import { FileSink, fileStamp, realPathOf } from '../io/file.js';
import type { ByteSource } from '../io/types.js';
import { noteFinding } from '../disk/policy.js';
import { hasPendingMerge, holdLocks, journalPath, liveLockHolder, lockPath, readJournal } from './journal.js';
import { CHAIN_ERRORS, VhdImage } from '../disk/image.js';
import { type FileOpenOptions, openFileAs, openVhdFile, type SourceFormat } from '../disk/files.js';
import { RawDisk, type VirtualDisk } from '../disk/source.js';
import { chainRoles, type RolePath } from '../io/paths.js';

export type OpenDiskOptions = FileOpenOptions;
export type { SourceFormat };

/**
 * Opens a VHD file and, for a differencing disk, its whole chain. A disk of the chain with a merge
 * pending on it gets an error finding: MERGE_PENDING when that merge was interrupted (its content is
 * only right again once the merge is run again), LOCKED while a merge into it is running (its content
 * is changing).
 */
export async function openDisk(file: string, options: OpenDiskOptions = {}): Promise<VhdImage> {
  let image: VhdImage;
  try {
    image = await openVhdFile(file, options);
  } catch (e) {
    // A merge killed at the wrong instant can leave its target unopenable until it is run again (the
    // file cut before its header is put back): say that, not only what is broken. Errors that are not
    // about the file's own structures (I/O, a parent) stay as they are.
    const broken = e instanceof VhdError ? (e.file ?? file) : undefined;
    if (broken !== undefined && e instanceof VhdError && !NOT_STRUCTURE.has(e.code) && hasPendingMerge(broken)) throw mergeState(broken, e);
    throw e;
  }
  // A parent that did not open (a chain described despite it, for info and check) because a merge
  // into it was interrupted, or runs: that is what its finding says.
  for (const d of image.chain) {
    for (const [i, f] of d.findings.entries()) {
      if (f.file !== undefined && f.file !== d.name && !NOT_STRUCTURE.has(f.code) && hasPendingMerge(f.file)) {
        d.findings[i] = findingFrom(mergeState(f.file, new VhdError(f.code as ErrorCode, f.message.replace(/^.*?: /, ''), { file: f.file, offset: f.offset })), 'error');
      }
    }
  }
  for (const d of image.chain) {
    if (!hasPendingMerge(d.id)) continue;
    try {
      noteFinding(mergeState(d.name), options, d.findings);
    } catch (e) {
      await image.close();
      throw e;
    }
  }
  return image;
}

/** Errors that say nothing about the file's own structures: never blamed on a pending merge. */
const NOT_STRUCTURE: ReadonlySet<string> = new Set([ErrorCodes.IO, ErrorCodes.MERGE_PENDING, ErrorCodes.LOCKED, ...CHAIN_ERRORS]);

/** The error for a disk (`file`, as named) with a merge journal beside it (`broken`: what opening it found, if it failed). */
function mergeState(file: string, broken?: VhdError): VhdError {
  const real = realPathOf(file);
  const running = liveLockHolder(real);
  const found = broken ? ` (${broken.detail} [${broken.code}])` : '';
  const context = { file, structure: broken?.structure, offset: broken?.offset, cause: broken };
  if (running) return new VhdError(ErrorCodes.LOCKED, `a merge into this disk is running: ${running}; its content changes until it ends${found}`, context);
  if (deletingStep(real)) {
    return new VhdError(ErrorCodes.MERGE_PENDING, `a merge into this disk is complete, but deleting the disks it merged (--delete-child) was interrupted; run the same "vhdkit merge" again to finish it (journal ${journalPath(real)})`, context);
  }
  const state = broken ? 'was interrupted and left it unopenable until that merge is completed' : 'was interrupted';
  return new VhdError(ErrorCodes.MERGE_PENDING, `a merge into this disk ${state}${found}; run the same "vhdkit merge" again to complete it (journal ${journalPath(real)})`, context);
}

/** True when the journal beside `file` is a complete merge's, deleting what it merged. */
function deletingStep(file: string): boolean {
  try {
    return readJournal(file)?.step === 'deleting';
  } catch {
    return false; // unreadable: the journal's own error says that when the merge is run again
  }
}

/**
 * Opens a disk for reading: a VHD (any type, chains resolved) or a raw image (disk/files openFileAs).
 * A disk mid-merge reads as neither its old nor its new self: refused (MERGE_PENDING or LOCKED).
 */
export function openAny(file: string, format: SourceFormat = 'auto', options: OpenDiskOptions = {}): Promise<{ disk: VirtualDisk; format: 'vhd' | 'raw' }> {
  return openFileAs(file, format, options, async (f, o) => {
    const disk = await openDisk(f, o);
    const pending = disk.allFindings.find((x) => x.code === ErrorCodes.MERGE_PENDING || x.code === ErrorCodes.LOCKED);
    if (pending) {
      await disk.close();
      throw new VhdError(pending.code, pending.message.replace(/^.*?: /, ''), { file: pending.file });
    }
    return disk;
  });
}

/** The files an opened disk reads, for the output guard: a VHD's whole chain, or the raw file. */
export function inputRoles(disk: VirtualDisk, file: string, what = 'input'): RolePath[] {
  if (!(disk instanceof VhdImage)) return [{ path: file, role: what }];
  const disks = chainRoles(disk.chain, what);
  // The names a merge keeps beside each disk: a file there would be taken for a merge of it.
  const beside = disks.flatMap((d) => [
    { path: journalPath(d.path), role: `merge journal name of the ${d.role} (${d.path})` },
    { path: lockPath(d.path), role: `merge lock name of the ${d.role} (${d.path})` },
  ]);
  return [...disks, ...beside];
}


/** A disk's file identity when it was opened (fileStamp's form), from its open descriptor. */
export function openedStamp(d: VhdImage): string {
  return stampOf(d.source, d.id);
}

/** The identity of `file` when `source` opened it (a FileSink's own), or now. */
function stampOf(source: ByteSource | undefined, file: string): string {
  return source instanceof FileSink ? source.stamp : fileStamp(file);
}

/**
 * Throws LOCKED when a disk opened before its lock was taken has changed since (a merge into it
 * ended in between): a plan from the old view would write over that merge, or read what moved.
 */
export function refuseChangedSinceOpened(disks: VhdImage[], during: string): void {
  for (const d of disks) {
    if (fileStamp(d.id) !== openedStamp(d)) throw new VhdError(ErrorCodes.LOCKED, `it changed while ${during} was opening it (another merge into it ended meanwhile?); run it again`, { file: d.id });
  }
}

/** The files an opened disk reads (its chain's, or the raw file), each with its identity when it was opened. */
function filesRead(disk: VirtualDisk, file: string): Array<{ name: string; opened: string }> {
  // The real paths: a merge keeps its journal and lock beside the real path of what it writes.
  if (disk instanceof VhdImage) return disk.chain.map((d) => ({ name: d.id, opened: openedStamp(d) }));
  return [{ name: realPathOf(file), opened: stampOf(disk instanceof RawDisk ? disk.source : undefined, file) }];
}

/** What holdReading holds: `verify` before a result is given, `release` when done. */
export interface ReadHold {
  /** Throws LOCKED or MERGE_PENDING when a file read has changed since the open (a merge wrote it). */
  verify(): void;
  release(): void;
}

/**
 * Shared read marks on every file `disk` reads, held until released: a merge into any of them is
 * LOCKED meanwhile instead of changing what is being read. Called right after the open: a merge that
 * began in between shows as a pending journal (MERGE_PENDING), one that began and ended as a file
 * changed since it was opened (LOCKED: each file's identity is taken from its open descriptor).
 * Where a mark cannot be made (a folder this user may not write, while another user may merge
 * there), a merge running now is LOCKED all the same, and `verify` (called before any result is
 * given or output placed) catches one that started later: the file's identity (size, mtime, inode)
 * changed. `warnings` is told of marks that could not be made; readers that pass none accept that.
 */
export function holdReading(disk: VirtualDisk, file: string, what: string, warnings: Finding[] = []): ReadHold {
  const read = filesRead(disk, file);
  const files = read.map((f) => f.name);
  const opened = read.map((f) => f.opened);
  const releases = holdLocks(files, { shared: what, during: `the ${what}` }, warnings);
  const release = () => {
    for (const r of releases) r();
  };
  const verify = () => {
    for (const [i, f] of files.entries()) {
      if (hasPendingMerge(f)) throw new VhdError(ErrorCodes.MERGE_PENDING, `a merge into it began while this ${what} read it; complete it (vhdkit merge --resume), then run the ${what} again`, { file: f });
      const running = liveLockHolder(f);
      if (running) throw new VhdError(ErrorCodes.LOCKED, `a merge into it is running: ${running}; run the ${what} again when it has ended`, { file: f });
      if (fileStamp(f) !== opened[i]) throw new VhdError(ErrorCodes.LOCKED, `it changed while this ${what} read it (a merge?); run the ${what} again`, { file: f });
    }
  };
  try {
    verify();
  } catch (e) {
    release();
    throw e;
  }
  return { verify, release };
}
