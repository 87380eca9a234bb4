/**
 * `merge`: coalesce a differencing child (or a chain of them) into an ancestor in place,
 * sector-exact, crash-safe and resumable.
 *
 * Sector exact: for every block of the sources only the sectors whose bitmap bit is set are copied,
 * each from the newest source holding it; the target's bitmaps gain those bits when it is itself a
 * differencing disk. Partly filled child blocks (the Hyper-V norm) therefore merge correctly.
 *
 * Crash safety — the write order, with the journal (see journal.ts):
 *   1. plan everything (new block positions, new footer, a moved BAT when it must grow) and write
 *      the journal durably. Until then the target is untouched.
 *   2. data: cut the file at its old data end (the old trailing footer is in the journal) and extend
 *      it to its new end, so new blocks start as zeros; then the copy tasks write the merged sectors
 *      and the bitmap of every block they touch, new or existing; once every task has settled, fsync;
 *      then the journal's step says `copied`.
 *   3. metadata: the BAT entries of new blocks (or the moved BAT and the new header), the footer at
 *      the new end (and its copy at 0 when it changed); fsync.
 *   4. remove the journal (--delete-child of a chain: its step says `deleting`, the disks go, then it).
 * Every step only copies from the sources, which a merge never changes, to positions fixed by the
 * journal: repeating any prefix of it is harmless. A run does what the journal's step says is left:
 * before `copied` it starts again from the original layout and copies the data, from `copied` on it
 * writes only the metadata (a target left unopenable there is completed forward, never put back).
 * So a merge killed at any instant is completed by running it again; the target is its old self
 * only until step 2 starts.
 *
 * Who writes what. The main thread plans and keeps everything that orders writes: the journal, the
 * cut and extension of the file (before the first task starts), the BAT, header and footer, and every
 * fsync. The data goes in copy tasks (pool/merge-task.ts): lists of (source file offset, target file
 * offset, length) that the plan fixed, grouped by target block, a few MiB of data each. A task runs on
 * a pool worker or inline on the main thread; either way it writes only the data areas and bitmaps of
 * its own blocks and never syncs. The data fsync of step 2 comes after every task has settled, and
 * fsync flushes the file whichever thread or descriptor wrote it, so it covers the workers' writes
 * before any metadata that points at them is written. A failed task or an abort is reported only once
 * every task in flight has settled: nothing writes to the target after merge has returned.
 *
 * Main thread or pool. The copies are I/O bound: the pool's threads copy no faster once running and
 * cost their start-up, so without `workers` a child under POOL_MIN_BYTES copies on the main thread
 * (measured by bench/merge.mjs; the numbers are in the session notes).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { codedError, ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import type { VhdImage } from '../disk/image.js';
import { totalLength, type Range } from '../disk/ranges.js';
import { footerVirtualSize, HEAD_BYTES, parentOfHead, VhdEditor } from '../disk/editor.js';
import { uuidToString, uuidV4 } from '../format/uuid.js';
import { durableTemp, renameNoReplace } from '../io/durable.js';
import { FileSink, fileStamp, realPathOf } from '../io/file.js';
import { chainRoles, checkInputFolder, checkOutputPath, refuseOverlap, type RolePath } from '../io/paths.js';
import { type MergeCopyResult, type MergeCopyTask, runMergeCopyInline } from '../pool/merge-task.js';
import { byBlock, overlay, type Segment } from './merge/overlay.js';
import { type PlannedTask, TaskPlan, type TargetLayout } from './merge/tasks.js';
import { orderedWindow } from '../pool/schedule.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { acquireLock, type AnyJournal, deletingJournal, fsyncDir, holdLocks, lockTempPath, hasPendingMerge, journalPath, lockPath, type MergeJournal, readJournal, removeJournal, writeJournal } from './journal.js';
import { openDisk, openedStamp, refuseChangedSinceOpened } from './open.js';
import { copyFailure, copyTarget, copyWorkPath, deleteMerged, finishDeleting, isFinishedCopy, settleInterruptedRename } from './merge/copy.js';
import { changedSources, freshPlan, journalOf, settle } from './merge/journaled.js';
import { planOf } from './merge/plan.js';
import { openChain, openTarget } from './merge/restore.js';

export interface MergeOptions extends OperationOptions {
  /** Merge into this ancestor (default: the child's parent), every disk in between included. */
  to?: string;
  /** Merge even though other children depend on the target. */
  force?: boolean;
  /** More folders to search for other children of the target (its own folder always is). */
  search?: string[];
  /** Merge into a copy of the target made at this path (reflink when the file system can). */
  intoCopy?: string;
  /** Delete the merged child (and, with --to, the disks in between) afterwards. */
  deleteChild?: boolean;
  /** Only complete a pending merge; refuse to start a new one. */
  resume?: boolean;
  allowedDirs?: string[];
  /** Refuse a chain with any finding, warnings included (as --strict does for every command). */
  strict?: boolean;
  /**
   * Worker threads that copy the data; 0 copies on the main thread. Default: the main thread for a
   * child file under 4 GiB, the pool (one thread per core) from there.
   */
  workers?: number;
}

export interface MergeResult {
  child: string;
  target: string;
  sources: string[];
  resumed: boolean;
  sectorsMerged: number;
  blocksAllocated: number;
  blocksUpdated: number;
  bytesWritten: number;
  deleted: string[];
  /** Disks between the child and the target (with --to) whose own view changed; kept unless deleted. */
  invalidated: string[];
  /** Worker threads that copied the data (0: the main thread). */
  workers: number;
  seconds: number;
  warnings: Finding[];
}

const MiB = 1024 * 1024;
/** Source data per task: at most this (a task's round trip, well under a millisecond, is then nothing)... */
const TASK_MAX_BYTES = 32 * MiB;
/** ...at least this (two 2 MiB blocks), and otherwise the merge's data over TASKS_PER_WORKER per worker. */
const TASK_MIN_BYTES = 4 * MiB;
const TASKS_PER_WORKER = 4;
/** Tasks given to the main thread at once: the next one queued, so its lanes never wait for a task. */
const INLINE_WINDOW = 2;
/**
 * Dirty data started on its way to the disk every this many bytes (an fdatasync while the copy goes
 * on): the final fsync then finds little left; faster than none from page cache (bench/merge.mjs).
 */
const SYNC_EVERY = 32 * MiB;
/** Without `workers`: a child file smaller than this is merged on the main thread (see "Main thread or pool" above). */
const POOL_MIN_BYTES = 4096 * MiB;

/** Other differencing disks whose parent is `target` (UUID match), in the given folders. */
export function findSiblings(targetUuid: Uint8Array, dirs: string[], exclude: Set<string>): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const head = new Uint8Array(HEAD_BYTES);
  for (const dir of dirs) {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (!/\.a?vhd$/i.test(name)) continue; // Hyper-V names its differencing disks .avhd
      const file = path.join(dir, name);
      const real = realPathOf(file);
      if (exclude.has(real) || seen.has(real)) continue;
      seen.add(real);
      try {
        const fd = fs.openSync(file, 'r');
        let n = 0;
        try {
          n = fs.readSync(fd, head, 0, head.length, 0);
        } finally {
          fs.closeSync(fd);
        }
        const parentUuid = n < head.length ? undefined : parentOfHead(head);
        if (parentUuid?.every((v, i) => v === targetUuid[i])) found.push(file);
      } catch {
        // not a VHD, or unreadable: not a child of the target
      }
    }
  }
  return found;
}

export function merge(childPath: string, options: MergeOptions = {}): Promise<MergeResult> {
  return withCodedErrors(() => mergeChild(childPath, options));
}

/** The files a merge writes beside the chain's (journal, lock; with --into-copy the copy and its work file). */
function mergeOutputs(targetFile: string, intoCopy: string | undefined): RolePath[] {
  const own = (file: string, what: string): RolePath[] => [
    { path: journalPath(file), role: `merge journal of ${what}` },
    { path: durableTemp(journalPath(file)), role: `merge journal's temporary file of ${what}` },
    { path: lockPath(file), role: `merge lock of ${what}` },
    { path: lockTempPath(file), role: `merge lock's temporary file of ${what}` },
  ];
  if (intoCopy === undefined) return own(targetFile, 'the target');
  const work = copyWorkPath(intoCopy);
  return [{ path: intoCopy, role: 'copy (--into-copy)' }, { path: work, role: 'work file of the copy' }, ...own(work, 'the copy')];
}

async function mergeChild(childPath: string, options: MergeOptions): Promise<MergeResult> {
  const started = performance.now();
  const warnings: Finding[] = [];
  // A rerun after a run killed while it deleted a merged chain (the child gone already).
  const finished = await finishDeleting(childPath, options.to, options.intoCopy);
  if (finished) {
    const { kept, ...done } = finished;
    warnings.push(...kept);
    return { child: childPath, ...done, resumed: true, ...NOTHING_COPIED, invalidated: [], workers: 0, seconds: (performance.now() - started) / 1000, warnings };
  }
  // The pool's threads (when it is used) start loading now, while the chain is opened and the merge
  // planned; a bad `workers` is reported where the copier is awaited, before the target is touched.
  const copier = copierFor(childPath, options);
  copier.catch(() => {});
  const child = await openChain(childPath, options, warnings);
  let depth = 1;
  const releases: Array<() => void> = [];
  try {
    if (child.type !== 'differencing' || !child.parent) {
      throw new VhdError(ErrorCodes.USAGE, `only a differencing disk can be merged into its parent; this one is ${child.type}`, { file: childPath });
    }
    // The target: the parent, or the ancestor named by --to.
    const chain = child.chain;
    if (options.to !== undefined) {
      const want = realPathOf(options.to);
      depth = chain.findIndex((d, i) => i > 0 && d.id === want);
      if (depth < 0) {
        throw new VhdError(ErrorCodes.USAGE, `${options.to} is not an ancestor of ${childPath} (its chain: ${chain.map((d) => d.name).join(' -> ')})`, {
          file: childPath,
        });
      }
    }
    const target = chain[depth];
    if (options.intoCopy !== undefined) settleInterruptedRename(options.intoCopy);
    refuseOverlap(mergeOutputs(target.id, options.intoCopy), chainRoles(chain, 'child'));
    // A --search folder must be one: a typo would silently skip the sibling check.
    for (const dir of options.search ?? []) checkInputFolder(dir, 'folder to search for other children (--search)');
    if (options.intoCopy !== undefined) checkOutputPath(options.intoCopy, 'copy (--into-copy)');
    // Damage anywhere in the chain stops a merge before it writes. A target left by an interrupted
    // merge (pending journal, footer not yet rewritten) is expected: the journal completes it.
    const pending = hasPendingMerge(target.id);
    for (const d of chain) {
      if (pending && d === target) continue;
      // A merge running or interrupted on a disk of the chain explains the rest of what it shows.
      const state = d.findings.find((x) => x.code === ErrorCodes.LOCKED || x.code === ErrorCodes.MERGE_PENDING);
      if (state) throw new VhdError(state.code, `cannot merge: ${state.message}`, { file: childPath });
      const f = d.findings.find((x) => x.severity === 'error');
      if (f) throw new VhdError(ErrorCodes.TARGET_DAMAGED, `cannot merge: ${f.message}`, { file: childPath });
    }
    // A pending merge into the target is what this run completes: what opening it showed is not news.
    if (pending) {
      const own = new Set([target.id, target.name]);
      for (let i = warnings.length - 1; i >= 0; i--) if (warnings[i].file !== undefined && own.has(warnings[i].file!)) warnings.splice(i, 1);
    }
    // Before anything is written (the copy too): no other disk may read through what this changes.
    const resuming = options.intoCopy === undefined ? pending : fs.existsSync(journalPath(copyWorkPath(options.intoCopy)));
    if (!options.force && !resuming) refuseDependents(chain, depth, options.intoCopy !== undefined, !!options.deleteChild, options.search ?? [], target.id);
    // What the merge reads holds a shared lock while it runs: no other merge writes into it meanwhile
    // (a merge into the child of this one, in another process or the same batch, is LOCKED).
    // The disks it deletes afterwards (--delete-child) are locked exclusively: not while an upload reads them.
    const reading = (options.intoCopy === undefined ? chain.slice(0, depth) : chain.slice(0, depth + 1)).map((d) => d.id);
    releases.push(...holdLocks(reading, { shared: 'merge (reading)', exclusive: 'merge (deleting it when done)', exclusiveFirst: options.deleteChild ? depth : 0, during: 'this merge' }, warnings));
    if (options.intoCopy === undefined) return (await mergeInto(child, childPath, target.id, depth, options, await copier, warnings, started, false)).result;
    // Into a copy. The copy is made and merged under a fixed temporary name beside the final one,
    // which it takes only once the merge is complete. The original is never written, so a run
    // interrupted before the merge's journal exists simply starts over; one with a journal resumes.
    const final = path.resolve(options.intoCopy);
    const work = copyWorkPath(options.intoCopy);
    // The copy's UUID is derived from the target, the child, the final path and the state of every
    // file merged (size, mtime, inode): a run killed after the final rename (the copy complete) is
    // recognised by it when run again, and reports success; a copy made before the child (or the
    // target) was written to since is not, and is never taken for done.
    const merged = chain.slice(0, depth + 1);
    const copyUuid = uuidV4(
      createHash('sha256')
        .update(`vhdkit merge copy\n${target.uuid}\n${child.uuid}\n${final}\n${merged.map((d) => fileStamp(d.id)).join('\n')}`)
        .digest()
        .subarray(0, 16),
    );
    const sources = chain.slice(0, depth);
    // Everything from here to the final rename holds the work file's lock: two runs into one copy
    // never interleave (the second is LOCKED).
    try {
      releases.push(acquireLock(work, 'merge'));
    } catch (e) {
      const c = codedError(e);
      if (!(c instanceof VhdError) || c.code !== ErrorCodes.IO) throw c;
      throw new VhdError(ErrorCodes.IO, `cannot make the copy's lock: ${c.message}`, { file: options.intoCopy, cause: c.cause ?? e });
    }
    const paths = sources.map((s) => s.id);
    if (fs.existsSync(final)) {
      // Killed after the rename: only the deletions (--delete-child) may be left to do (begun, when
      // the copy's journal says so).
      const left = readJournal(final);
      const deleting = left?.step === 'deleting' && left.sources[0]?.path === child.id;
      if (!fs.existsSync(work) && (deleting || (left === undefined && (await isFinishedCopy(final, copyUuid))))) {
        const record = left ?? deletingJournal({ target: final, targetUuid: uuidToString(copyUuid), sources: sources.map((s) => ({ path: s.id, uuid: s.uuid, size: s.source.size, stamp: openedStamp(s) })), started: new Date().toISOString() });
        const deleted = options.deleteChild || deleting ? deleteMerged(final, record, sources, warnings) : [];
        return { child: childPath, target: final, sources: paths, resumed: true, ...NOTHING_COPIED, deleted, invalidated: [], workers: 0, seconds: (performance.now() - started) / 1000, warnings };
      }
      throw new VhdError(ErrorCodes.OUTPUT_EXISTS, 'the copy already exists', { file: options.intoCopy });
    }
    if (!fs.existsSync(journalPath(work))) {
      if (options.resume) throw new VhdError(ErrorCodes.USAGE, 'no merge into this copy is pending: nothing to resume', { file: options.intoCopy });
      fs.rmSync(work, { force: true });
      await copyTarget(target, work, copyUuid, options.intoCopy);
    }
    let done: Awaited<ReturnType<typeof mergeInto>>;
    try {
      done = await mergeInto(child, childPath, work, depth, options, await copier, warnings, started, true);
    } catch (e) {
      throw copyFailure(e, work, options.intoCopy);
    }
    const { result, journal } = done;
    // The copy takes its name (never over a file made there meanwhile), and only then are the
    // children deleted (what its journal says, as in place): until the rename, running the merge again completes it.
    if (!renameNoReplace(work, final)) {
      throw new VhdError(ErrorCodes.OUTPUT_EXISTS, `the copy already exists: another process made it while this merge ran (the merged copy is kept as ${path.basename(work)})`, { file: options.intoCopy });
    }
    fsyncDir(path.dirname(final));
    return { ...result, target: final, deleted: journal.deleteChild ? deleteMerged(final, { ...journal, target: final }, sources, warnings) : [] };
  } finally {
    for (const r of releases) r();
    await child.close();
  }
}

/**
 * The merge proper, into `targetFile`, which is `depth` levels above the child in its open chain
 * (or a copy of that disk). A fresh merge and a resumed one share this path.
 */
async function mergeInto(
  child: VhdImage,
  childPath: string,
  targetFile: string,
  depth: number,
  options: MergeOptions,
  copier: Copier,
  warnings: Finding[],
  started: number,
  intoCopy: boolean,
): Promise<{ result: MergeResult; journal: AnyJournal }> {
  const release = intoCopy ? () => {} : acquireLock(targetFile, 'merge');
  try {
    const chain = child.chain;
    const sources = chain.slice(0, depth);
    // Everything opened before the locks were taken must be as it was then.
    refuseChangedSinceOpened(chain.slice(0, depth + 1), 'this merge');
    const resumed = hasPendingMerge(targetFile);
    // The target itself, opened on its own (its footer may be gone mid-merge: the copy at 0 serves).
    let target = intoCopy ? await openTarget(targetFile) : chain[depth];
    const opened = [target];
    try {
      let { journal, planned } = await journalOf(targetFile, target, sources, options, chain[depth + 1]?.virtualSize);
      const changed = journal.step === 'deleting' ? [] : changedSources(journal, sources);
      if (changed.length > 0 && journal.step !== 'deleting') {
        // Written since the interrupted merge began (a program still using the child, another merge
        // into it): that merge is settled (completed or undone by its step), and the merge planned
        // again from the sources as they are now. A differencing disk only gains sectors, so that
        // covers whatever the interrupted one wrote.
        const names = changed.map((s) => s.id);
        warnings.push({ code: ErrorCodes.MERGE_PENDING, severity: 'warning', message: `${names.join(', ')}: changed since the interrupted merge into ${targetFile} began; merged again as ${names.length > 1 ? 'they are' : 'it is'} now` });
        await settle(targetFile, journal);
        target = await openDisk(targetFile, { resolveParents: false });
        opened.push(target);
        ({ journal, planned } = await freshPlan(targetFile, target, sources, options, chain[depth + 1]?.virtualSize));
      }
      // A journal at its deleting step: the merge is complete, only the deletions are left.
      const stats = journal.step === 'deleting' ? NOTHING_COPIED : await execute(targetFile, target, sources, journal, options, copier, planned);
      // Into a copy, the children go once the copy has its name (the caller).
      let deleted: string[] = [];
      if (journal.deleteChild && !intoCopy) deleted = deleteMerged(targetFile, journal, sources, warnings);
      else removeJournal(targetFile);
      const between = sources.slice(1).map((s) => s.id);
      const result: MergeResult = {
        child: childPath,
        target: targetFile,
        sources: sources.map((s) => s.id),
        resumed,
        ...stats,
        deleted,
        // Into a copy the disks between still read through the untouched original.
        invalidated: journal.deleteChild || intoCopy ? [] : between,
        workers: copier.workers,
        seconds: (performance.now() - started) / 1000,
        warnings,
      };
      return { result, journal };
    } finally {
      for (const d of opened) if (d !== chain[depth]) await d.close();
    }
  } finally {
    release();
  }
}

/**
 * Other disks that read through what the merge changes or deletes are broken by it: children of the
 * target and of every disk between it and the child (a merge changes what they read), those disks
 * themselves in place without --delete-child, and with
 * --delete-child children of the disks it deletes. SIBLINGS naming them (unless --force).
 */
function refuseDependents(chain: VhdImage[], depth: number, intoCopy: boolean, deleteChild: boolean, search: string[], targetFile: string): void {
  const exclude = new Set(chain.map((d) => d.id));
  const childrenOf = (d: VhdImage) => findSiblings(d.footer.uniqueId, [path.dirname(d.id), ...search], exclude);
  const changed = intoCopy ? [] : chain.slice(1, depth + 1).flatMap(childrenOf);
  const orphaned = deleteChild ? chain.slice(0, depth).flatMap(childrenOf) : [];
  // With --to in place, the disks between the child and the target are children of what changes:
  // kept, they read wrong (and a later merge of one of them writes its old sectors back over the child's).
  const between = intoCopy || deleteChild ? [] : chain.slice(1, depth).map((d) => d.id);
  const parts = [
    ...(between.length > 0 ? [`the disks between the child and the target would read wrong after the merge: ${between.join(', ')} (add --delete-child to delete them with the child)`] : []),
    ...(changed.length > 0 ? [`other children read through this disk and would be broken by the merge: ${[...new Set(changed)].join(', ')} (use --into-copy PATH to merge into a copy)`] : []),
    ...(orphaned.length > 0 ? [`--delete-child would delete the parent of ${[...new Set(orphaned)].join(', ')}`] : []),
  ];
  if (parts.length > 0) throw new VhdError(ErrorCodes.SIBLINGS, `${parts.join('; ')} (or --force)`, { file: targetFile });
}

/** Where the copy tasks run, and how many at once. */
interface Copier {
  /** Worker threads (0: the main thread). */
  workers: number;
  window: number;
  copy(task: MergeCopyTask): Promise<MergeCopyResult>;
}

/**
 * The pool, or the main thread: `workers` when given; otherwise the pool for a child file of
 * POOL_MIN_BYTES or more (its size bounds the data it holds, and is known before anything is opened).
 * The pool's module (and piscina) is loaded only then: a merge on the main thread starts sooner.
 */
async function copierFor(childPath: string, options: MergeOptions): Promise<Copier> {
  let workers = options.workers;
  if (workers === undefined) {
    let size = 0;
    try {
      size = fs.statSync(childPath).size;
    } catch {
      // missing or unreadable: opening it reports that
    }
    if (size < POOL_MIN_BYTES) workers = 0;
  }
  if (workers === 0) return { workers: 0, window: INLINE_WINDOW, copy: runMergeCopyInline };
  const { getPool } = await import('../pool/pool.js');
  const pool = getPool({ workers });
  return { workers: pool.workers, window: pool.concurrency, copy: (t) => pool.mergeCopy(t) };
}

interface Stats {
  sectorsMerged: number;
  blocksAllocated: number;
  blocksUpdated: number;
  bytesWritten: number;
}

const NOTHING_COPIED: Stats = { sectorsMerged: 0, blocksAllocated: 0, blocksUpdated: 0, bytesWritten: 0 };

async function execute(
  targetFile: string,
  target: VhdImage,
  sources: VhdImage[],
  journal: MergeJournal,
  options: MergeOptions,
  copier: Copier,
  planned?: Segment[],
): Promise<Stats> {
  const stats: Stats = { ...NOTHING_COPIED };
  const edit = planOf(journal);
  // The file opened and locked, never the path the journal recorded: a folder copied or moved with
  // its pending merge completes where it is now, and writes nothing at its old place.
  const sink = await FileSink.open(targetFile, 'r+');
  const editor = new VhdEditor(sink, edit);
  try {
    // Step 2, data (unless a run before made it durable): every run from the plan, durably, and the
    // journal then says so.
    if (journal.step !== 'copied') {
      await copyData({ targetFile, target, sources, editor, sink, copier, stats, options }, planned ?? (await overlay(sources, footerVirtualSize(edit.footer))), !planned);
      throwIfAborted(options.signal);
      writeJournal(targetFile, { ...journal, step: 'copied' });
    }
    // Step 3: metadata, from the plan alone.
    await editor.finish();
    throwIfAborted(options.signal);
    return stats;
  } finally {
    await sink.close();
  }
}

/** What the data step works with: the target open for writing, its editor, the sources, the copier. */
interface DataStep {
  targetFile: string;
  target: VhdImage;
  sources: VhdImage[];
  editor: VhdEditor;
  sink: FileSink;
  copier: Copier;
  stats: Stats;
  options: MergeOptions;
}

/**
 * The data step: the merged sectors (`segments`) and the bitmaps of their blocks written into the
 * target, then made durable (one fsync after every task has settled covers the writes of every
 * thread). A rerun (`rerun`) first puts back the layout before the merge, whatever an interrupted run
 * left; a fresh merge, planned just now on the untouched target, has nothing to undo.
 */
async function copyData({ targetFile, target, sources, editor, sink, copier, stats, options }: DataStep, segments: Segment[], rerun: boolean): Promise<void> {
  const total = totalLength(segments.map((s) => [s.start, s.end] as Range));
  const plan = new TaskPlan(targetFile, sources, taskBytesFor(total, copier));
  if (target.type === 'fixed') {
    // A fixed target holds every virtual byte at its own offset: no blocks, no bitmaps. What a
    // smaller disk of the chain hides reads as zeros (every run zeros it again before the copies).
    await editor.zeroStale();
    await copyAll(sink, copier, plan.fixed(segments), total, stats, options);
  } else {
    const bs = target.blockSize;
    const newAt = editor.newBlocks();
    // The original header and footer copy back in place (durably, before the cut below removes a
    // moved BAT), the original BAT read from its original place.
    if (rerun) await editor.restore();
    const bat = rerun ? await editor.originalBat() : target.bat!;
    const pieces = byBlock(segments, bs);
    const blocks = [...pieces.keys()];
    // Never a write at no place (an unused BAT entry read as an offset): the plan and the sources disagree.
    const lost = editor.unplaced(blocks, bat);
    if (lost.length > 0) {
      throw new VhdError(ErrorCodes.MERGE_JOURNAL, `the merge's plan has no place for block ${lost[0]} (of ${lost.length}) that the sources hold now; nothing of it was written`, { file: targetFile });
    }
    for (const b of blocks) {
      if (newAt.has(b)) stats.blocksAllocated++;
      else stats.blocksUpdated++;
    }
    // New blocks start as zeros (the old trailing footer is cut away), then every block's sectors
    // and bitmap, by the tasks (their writes land only in data areas and bitmaps).
    await editor.cut();
    await editor.zeroStale();
    const layout: TargetLayout = { blockSize: bs, bitmapSize: target.bitmapSize, dynamic: target.type === 'dynamic', newAt, bat };
    await copyAll(sink, copier, plan.blocks(blocks, pieces, layout), total, stats, options);
  }
  // Every task has settled (copyAll returns or throws only then): before any metadata points at them.
  await editor.syncData();
}

/** Tasks of at most this much source data, at least the minimum; several per worker when the merge is small. */
function taskBytesFor(total: number, copier: Copier): number {
  const share = Math.ceil(total / (Math.max(1, copier.workers) * TASKS_PER_WORKER) / 512) * 512;
  return Math.min(TASK_MAX_BYTES, Math.max(TASK_MIN_BYTES, share));
}

/**
 * Runs the tasks through the copier, a bounded window of them in flight, and returns only once
 * every task it started has settled (orderedWindow's guarantee, also on failure and abort): after
 * that no thread writes to the target. Completed data is started on its way to the disk every
 * SYNC_EVERY bytes (fdatasync of the target: it covers every thread's writes, as any fsync does).
 */
async function copyAll(sink: FileSink, copier: Copier, tasks: Iterable<PlannedTask>, total: number, stats: Stats, options: MergeOptions): Promise<void> {
  let done = 0;
  let sinceSync = 0;
  let background: Promise<void> = Promise.resolve();
  try {
    await orderedWindow(
      tasks,
      copier.window,
      (t) => copier.copy(t.task),
      (t, r) => {
        if (r.bytes !== t.bytes) throw new VhdError(ErrorCodes.IO, `a merge task copied ${r.bytes} bytes, ${t.bytes} were planned`, { file: t.task.target });
        stats.bytesWritten += r.bytes;
        stats.sectorsMerged += r.bytes / 512;
        done += r.bytes;
        sinceSync += r.bytes;
        if (sinceSync >= SYNC_EVERY) {
          sinceSync = 0;
          background = background.then(() => sink.datasync());
        }
        options.onProgress?.({ done, total });
      },
      options.signal,
    );
  } finally {
    await background.catch(() => {});
  }
  await background;
}

export { checkConcurrency, mergeBatch, type MergeBatchItem, type MergeBatchOptions, type MergeBatchResult } from './merge/batch.js';
