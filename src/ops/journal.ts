/**
 * The merge journal and the lock, both files next to the merge target.
 *
 *   TARGET.vhdkit-merge.json   the plan of a merge in progress: written (fsynced, atomically) before
 *                              the target's first byte changes, removed after its last metadata write.
 *                              While it exists the target is "pending": `info`/`check` say so, and
 *                              only the same merge (run again, or `--resume`) may touch the target.
 *   TARGET.vhdkit-lock         the exclusive lock, held while a merge writes into TARGET; names the
 *                              holder's pid and host. A lock whose process is gone (killed) is taken over.
 *   TARGET.vhdkit-read.PID.R   a shared lock, one per reader that needs TARGET unchanged while it runs
 *                              (an upload of a chain holding TARGET). Readers exclude a merge, not each
 *                              other: two uploads of one disk run together.
 *
 * A reader creates its mark, then looks for the exclusive lock; a merge creates the lock, then looks
 * for marks. Whichever comes second sees the first and backs off (both may, never neither).
 */
import { durableTemp, fsyncDir, noHardLinks, viaTemp, writeJsonDurably, writeNewFile } from '../io/durable.js';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ErrorCodes, type Finding, VhdError } from '../errors.js';
import { realPathOf } from '../io/file.js';
import { OWN_SUFFIX } from '../io/paths.js';

export const JOURNAL_SUFFIX = OWN_SUFFIX.journal;
export const LOCK_SUFFIX = OWN_SUFFIX.lock;

export function journalPath(target: string): string {
  return `${target}${JOURNAL_SUFFIX}`;
}

export function lockPath(target: string): string {
  return `${target}${LOCK_SUFFIX}`;
}

export interface JournalSource {
  path: string;
  uuid: string;
  size: number;
  /** The file's identity (size, mtime, inode) when the merge was planned: a change since is seen. */
  stamp?: string;
}

/** Which merge a journal is of, whatever its step. */
interface JournalOf {
  version: 1;
  kind: 'vhdkit-merge';
  target: string;
  targetUuid: string;
  /** Newest first: the child, then the disks between it and the target. */
  sources: JournalSource[];
  deleteChild: boolean;
  started: string;
}

/**
 * The journal of a merge in progress: its plan, from which every run completes it, and the step it
 * has reached. Absent step: planned (a run starts from the target's original layout and copies the
 * data); `copied`: the data is durable, a run writes only the metadata.
 */
export interface MergeJournal extends JournalOf {
  step?: 'copied';
  /** Data end of the target before the merge (its old trailing footer's offset). */
  oldEnd: number;
  /** File size after the merge (new trailing footer included). */
  newEnd: number;
  /** New blocks: pairs (block index, sector of its bitmap), base64 of a little-endian Uint32Array. */
  newBlocks: string;
  /** The trailing footer to write at newEnd - 512 (base64, 512 bytes). */
  footer: string;
  /** When the footer copy at 0 changes too (virtual size grown): true. */
  footerCopy: boolean;
  /**
   * The target's dynamic header and footer copy at offset 0 as they were before the merge (base64).
   * Every run writes them back before it cuts the file, so a run interrupted after the header moved
   * the BAT starts again from the original, intact layout.
   */
  originalHeader?: string;
  originalFooterCopy?: string;
  /** A new dynamic header (base64) when the BAT moves, with the BAT's new offset and size. */
  header?: string;
  headerOffset?: number;
  batOffset?: number;
  batEntries?: number;
  /** A grown target: bytes zeroed past its old size (file offset, length), stale BAT entries cleared. */
  zeros?: Array<[number, number]>;
  clearBlocks?: number[];
}

/**
 * The journal of a merge that is complete while the disks it merged (--delete-child of a chain) are
 * being deleted: a run killed between two deletions leaves it, and running the same merge again
 * finishes them (the child may be gone already: it is found through --to or --into-copy).
 */
export interface DeletingJournal extends JournalOf {
  step: 'deleting';
}

export type AnyJournal = MergeJournal | DeletingJournal;

/** The deleting step of the merge a journal (of any step) is of: what it merged, no plan. */
export function deletingJournal(j: Pick<JournalOf, 'target' | 'targetUuid' | 'sources' | 'started'>): DeletingJournal {
  return { version: 1, kind: 'vhdkit-merge', target: j.target, targetUuid: j.targetUuid, sources: j.sources, deleteChild: true, started: j.started, step: 'deleting' };
}

export { fsyncDir };

export function writeJournal(target: string, journal: AnyJournal): void {
  writeJsonDurably(journalPath(target), journal);
}

export function readJournal(target: string): AnyJournal | undefined {
  const file = journalPath(target);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const j = JSON.parse(text) as AnyJournal;
    if (j.kind !== 'vhdkit-merge' || j.version !== 1) throw new Error('not a vhdkit merge journal');
    return j;
  } catch (e) {
    throw new VhdError(ErrorCodes.MERGE_JOURNAL, `the merge journal cannot be read (${(e as Error).message}); it was not written by this version of vhdkit`, {
      file,
      cause: e,
    });
  }
}

export function removeJournal(target: string): void {
  fs.rmSync(journalPath(target), { force: true });
  fs.rmSync(durableTemp(journalPath(target)), { force: true });
  fsyncDir(path.dirname(path.resolve(target)));
}

/** True when a merge into `file` is pending: its journal is beside the real path (a symlinked name finds it too). */
export function hasPendingMerge(file: string): boolean {
  return fs.existsSync(journalPath(realPathOf(file)));
}

/** True when a process with this pid runs on this host. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The temporary name this process writes a lock under before linking it into place. */
export function lockTempPath(target: string): string {
  return `${lockPath(target)}.${process.pid}${OWN_SUFFIX.temp}`;
}

/**
 * Creates the lock file of `target` with its content in one step: written to a private temporary
 * name, then hard-linked into place (link fails if the lock exists), so a process killed at any
 * instant never leaves an empty lock. Where the file system has no hard links, an exclusive create
 * and a write.
 */
function createLockFile(target: string, content: string): void {
  const file = lockPath(target);
  const tmp = lockTempPath(target);
  viaTemp(file, tmp, () => {
    fs.rmSync(tmp, { force: true });
    writeNewFile(tmp, content);
  });
  try {
    fs.linkSync(tmp, file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // EEXIST: the lock is held (the caller's case); no hard links here: the fallback below.
    if (code === 'EEXIST') throw e;
    if (!noHardLinks(code)) {
      viaTemp(file, tmp, () => {
        throw e;
      });
    }
    writeNewFile(file, content);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Removes a stale lock under a takeover mark made exclusively (`LOCK.takeover`): only the process
 * that made the mark removes the lock, after reading it again; the others see the mark and stop. A
 * mark left by a killed process is stale after 5 s. False when another process holds the mark.
 */
function takeOver(file: string): boolean {
  const mark = `${file}${OWN_SUFFIX.takeover}`;
  try {
    writeNewFile(mark, holderRecord('taking over a stale lock'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    if (lockAgeMs(mark) <= 5000) return false;
    fs.rmSync(mark, { force: true });
    return takeOver(file);
  }
  try {
    const holder = readHolder(file);
    if (holder !== undefined && lockIsStale(holder, file)) fs.rmSync(file, { force: true });
    return true;
  } finally {
    fs.rmSync(mark, { force: true });
  }
}

/** Temporary lock files of processes killed between writing and linking them. */
function removeStaleLockTemps(file: string): void {
  const dir = path.dirname(path.resolve(file));
  const prefix = `${path.basename(file)}.`;
  try {
    for (const name of fs.readdirSync(dir)) {
      const m = name.startsWith(prefix) && /^(\d+)\.tmp$/.exec(name.slice(prefix.length));
      if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) fs.rmSync(path.join(dir, name), { force: true });
    }
  } catch {
    // a folder that cannot be listed: nothing to tidy
  }
}

function lockAgeMs(file: string): number {
  try {
    return Date.now() - fs.statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

/**
 * Takes the lock of `target` for `what` ("merge", "upload"). Throws LOCKED naming the holder when
 * another live process has it; takes over a lock left by a process that no longer runs.
 */
export function acquireLock(target: string, what: string): () => void {
  const file = lockPath(target);
  const me = holderRecord(what);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      createLockFile(target, me);
      removeStaleLockTemps(file);
      const reader = liveReaders(target)[0];
      if (reader) {
        fs.rmSync(file, { force: true });
        throw lockedBy(target, reader.holder, reader.file);
      }
      let released = false;
      return () => {
        if (released) return;
        released = true;
        fs.rmSync(file, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = readHolder(file) ?? {};
    if (lockIsStale(holder, file)) {
      // The holder was killed: take over, one process at a time (two removing the stale lock at once
      // could each remove the other's new one and both hold it).
      if (takeOver(file)) continue;
      throw new VhdError(ErrorCodes.LOCKED, `another process is taking over the stale lock ${file} right now; run again`, { file: target });
    }
    throw lockedBy(target, holder, file);
  }
  throw new VhdError(ErrorCodes.LOCKED, `could not take the lock ${file}`, { file: target });
}

/**
 * Who holds the exclusive lock of `target` while running ("merge (pid 123 on host since …)"), or
 * undefined when nobody does or its holder is gone: a journal beside `target` is then an
 * interrupted merge's, not a running one's.
 */
export function liveLockHolder(target: string): string | undefined {
  const file = lockPath(target);
  const holder = readHolder(file);
  return holder === undefined || lockIsStale(holder, file) ? undefined : describeHolder(holder);
}

interface Holder {
  pid?: number;
  host?: string;
  what?: string;
  since?: string;
}

function describeHolder(holder: Holder): string {
  return `${holder.what ?? 'another vhdkit process'} (pid ${holder.pid ?? '?'} on ${holder.host ?? '?'} since ${holder.since ?? '?'})`;
}

function lockedBy(target: string, holder: Holder, file: string): VhdError {
  return new VhdError(ErrorCodes.LOCKED, `locked by ${describeHolder(holder)}; wait for it, or remove ${file} if that process is gone`, { file: target });
}

function holderRecord(what: string): string {
  return JSON.stringify({ pid: process.pid, host: os.hostname(), what, since: new Date().toISOString() } satisfies Holder);
}

/** A lock or mark's content; undefined when the file is gone, {} while it is being written or damaged. */
function readHolder(file: string): Holder | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Holder;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : {};
  }
}

/**
 * Whether the exclusive lock's holder is gone: a process of this host that no longer runs, or an
 * empty lock older than 5 s (its creator was killed between creating and writing it, only possible
 * where hard links are missing, see createLockFile; younger, it is being written right now).
 */
function lockIsStale(holder: Holder, file: string): boolean {
  if (holder.pid === undefined) return lockAgeMs(file) > 5000;
  return holder.host === os.hostname() && !alive(holder.pid);
}

const READ_INFIX = OWN_SUFFIX.read;
/** This process's own marks: any other mark carrying its pid was left by an earlier process with the same pid. */
const ownMarks = new Set<string>();

/**
 * The shared locks of `target` held by live processes. Marks of processes that no longer run on this
 * host are removed (their pid is in the name, so even a mark killed before its content was written
 * is recognised).
 */
function liveReaders(target: string): Array<{ file: string; holder: Holder }> {
  const dir = path.dirname(path.resolve(target));
  const prefix = `${path.basename(target)}${READ_INFIX}`;
  const out: Array<{ file: string; holder: Holder }> = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    const m = name.startsWith(prefix) && /^(\d+)\.[0-9a-f]+$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const file = path.join(dir, name);
    const holder = readHolder(file);
    if (!holder) continue; // released meanwhile
    const pid = holder.pid ?? Number(m[1]);
    const host = holder.host ?? os.hostname();
    const stale = host === os.hostname() && (pid === process.pid ? !ownMarks.has(file) : !alive(pid));
    if (stale) {
      fs.rmSync(file, { force: true });
      continue;
    }
    out.push({ file, holder: { ...holder, pid, host } });
  }
  return out;
}

/**
 * Takes a shared lock of `target` for `what` ("upload"): any number of readers hold it together,
 * and while one does, `acquireLock` (a merge into `target`) fails with LOCKED naming it. Throws
 * LOCKED when a live merge holds the exclusive lock; takes over one left by a killed merge.
 */
export function acquireSharedLock(target: string, what: string): () => void {
  const dir = path.dirname(path.resolve(target));
  // A random part in the name: a mark left by a killed process whose pid this one now has never collides.
  const mine = path.join(dir, `${path.basename(target)}${READ_INFIX}${process.pid}.${randomBytes(6).toString('hex')}`);
  writeNewFile(mine, holderRecord(what));
  ownMarks.add(mine);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    ownMarks.delete(mine);
    fs.rmSync(mine, { force: true });
  };
  try {
    liveReaders(target); // tidies the marks of killed readers
    const file = lockPath(target);
    const holder = readHolder(file);
    if (holder) {
      if (!lockIsStale(holder, file)) throw lockedBy(target, holder, file);
      // A merge killed mid-way left its lock: the disk's pending journal (checked when it is
      // opened) is what stops readers then; the lock itself is stale.
      fs.rmSync(file, { force: true });
    }
  } catch (e) {
    release();
    throw e;
  }
  return release;
}

/**
 * Locks on disks an operation reads (shared) or removes afterwards (the first `exclusiveFirst`,
 * exclusive). A folder where no lock can be made (read-only media, no permission) is a warning: a
 * merge into those disks `during` the operation would not be stopped. All or none: on a failure the
 * locks taken are released.
 */
export function holdLocks(
  files: string[],
  o: { shared: string; exclusive?: string; exclusiveFirst?: number; during: string },
  warnings: Finding[],
): Array<() => void> {
  const releases: Array<() => void> = [];
  try {
    for (const [i, f] of files.entries()) {
      try {
        releases.push(i < (o.exclusiveFirst ?? 0) ? acquireLock(f, o.exclusive ?? o.shared) : acquireSharedLock(f, o.shared));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EACCES' && code !== 'EROFS' && code !== 'EPERM') throw e;
        warnings.push({ code: ErrorCodes.LOCKED, severity: 'warning', message: `${f}: cannot create a lock file beside it (${code}); a merge into it during ${o.during} would not be stopped` });
      }
    }
  } catch (e) {
    for (const r of releases) r();
    throw e;
  }
  return releases;
}
