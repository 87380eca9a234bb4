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
 *      it to its new end, so new blocks start as zeros; write new blocks' bitmaps and sectors, then the
 *      sectors (and bitmap bits) of existing blocks; fsync.
 *   3. metadata: the BAT entries of new blocks (or the moved BAT and the new header), the footer at
 *      the new end (and its copy at 0 when it changed); fsync.
 *   4. remove the journal.
 * Every step only copies from the sources, which a merge never changes, to positions fixed by the
 * journal: repeating any prefix of it is harmless. So a merge killed at any instant is completed by
 * running it again; the target is its old self only until step 2 starts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, type Finding, VhdError } from '../errors.js';
import type { VhdImage } from '../disk/image.js';
import { normalizeRanges, totalLength, type Range } from '../disk/ranges.js';
import { batByteSize, BAT_UNUSED, decodeBat, encodeBat } from '../format/bat.js';
import { bitmapByteSize, setBits } from '../format/bitmap.js';
import { decodeFooter, encodeFooter, FOOTER_SIZE } from '../format/footer.js';
import { decodeHeader, encodeHeader, HEADER_SIZE } from '../format/header.js';
import { geometryForWrite } from '../format/geometry.js';
import { alignedBuffer } from '../io/aligned.js';
import { FileSink } from '../io/file.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { newUuid } from './create.js';
import { acquireLock, fsyncDir, hasPendingMerge, journalPath, type MergeJournal, readJournal, removeJournal, writeJournal } from './journal.js';
import { openDisk } from './open.js';

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
  seconds: number;
  warnings: Finding[];
}

/** Blocks processed concurrently (reads of one overlap writes of others). */
const BLOCKS_IN_FLIGHT = 4;
/** Largest single read/write of a copy; segments longer than this (fixed targets) go in pieces. */
const COPY_UNIT = 4 * 1024 * 1024;
/** Dirty data started on its way to the disk every this many bytes. */
const SYNC_EVERY = 32 * 1024 * 1024;

interface Segment {
  /** Virtual byte range. */
  start: number;
  end: number;
  /** Index into the sources (0 = newest). */
  source: number;
}

/** Assigns every sector held by any source to the newest source holding it. */
async function overlay(sources: VhdImage[], limit: number): Promise<Segment[]> {
  let covered: Range[] = [];
  const segments: Segment[] = [];
  for (let i = 0; i < sources.length; i++) {
    const own = (await sources[i].ownSectorRanges()).map(([a, b]) => [a, Math.min(b, limit)] as Range).filter(([a, b]) => b > a);
    for (const [a, b] of subtract(own, covered)) segments.push({ start: a, end: b, source: i });
    covered = normalizeRanges([...covered, ...own]);
  }
  return segments.sort((x, y) => x.start - y.start);
}

/** Ranges of `a` not in `b` (both sorted, coalesced). */
function subtract(a: Range[], b: Range[]): Range[] {
  const out: Range[] = [];
  let j = 0;
  for (const [s0, e] of a) {
    let s = s0;
    while (j < b.length && b[j][1] <= s) j++;
    let k = j;
    while (s < e) {
      if (k >= b.length || b[k][0] >= e) {
        out.push([s, e]);
        break;
      }
      if (b[k][0] > s) out.push([s, b[k][0]]);
      s = Math.max(s, b[k][1]);
      k++;
    }
  }
  return out;
}

function resolveReal(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** Other differencing disks whose parent is `target` (UUID match), in the given folders. */
export function findSiblings(targetUuid: Uint8Array, dirs: string[], exclude: Set<string>): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const head = new Uint8Array(FOOTER_SIZE + HEADER_SIZE);
  for (const dir of dirs) {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (!/\.vhd$/i.test(name)) continue;
      const file = path.join(dir, name);
      const real = resolveReal(file);
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
        if (n < head.length) continue;
        const footer = decodeFooter(head.subarray(0, FOOTER_SIZE));
        if (footer.diskType !== 4 || footer.dataOffset !== 512n) continue;
        const parentUuid = head.subarray(512 + 40, 512 + 56);
        if (parentUuid.every((v, i) => v === targetUuid[i])) found.push(file);
      } catch {
        // not a VHD, or unreadable: not a child of the target
      }
    }
  }
  return found;
}

/**
 * Puts a target with a pending merge back to its layout before the merge: the file cut at its old
 * data end, the original footer after it and at offset 0, the original dynamic header. Data already
 * merged into existing blocks stays (it is merged again anyway); new blocks and a moved BAT go.
 * Every merge run does this first; a disk left unopenable by an interrupted run opens again after it.
 */
async function restoreLayout(sink: FileSink, journal: MergeJournal): Promise<void> {
  if (!journal.originalHeader || !journal.originalFooterCopy || journal.headerOffset === undefined) return;
  const footer = unb64(journal.originalFooterCopy);
  await sink.truncate(journal.oldEnd);
  await sink.write(footer, journal.oldEnd);
  await sink.write(unb64(journal.originalHeader), journal.headerOffset);
  await sink.write(footer, 0);
  await sink.sync();
}

/** restoreLayout for a disk found unopenable, under the lock (never beside a live merge). */
async function restoreOriginalLayout(file: string): Promise<boolean> {
  const journal = readJournal(file);
  if (!journal?.originalHeader) return false;
  const release = acquireLock(file, 'merge');
  try {
    const sink = await FileSink.open(file, 'r+');
    try {
      await restoreLayout(sink, journal);
    } finally {
      await sink.close();
    }
  } finally {
    release();
  }
  return true;
}

/** Opens the child's chain; a disk of it left unopenable by an interrupted merge is restored first. */
async function openChain(childPath: string, options: MergeOptions, warnings: Finding[]): Promise<VhdImage> {
  const open = () => openDisk(childPath, { allowedDirs: options.allowedDirs, onFinding: (f) => warnings.push(f) });
  try {
    return await open();
  } catch (e) {
    if (e instanceof VhdError && e.file !== undefined && hasPendingMerge(e.file) && (await restoreOriginalLayout(e.file))) return open();
    throw e;
  }
}

export async function merge(childPath: string, options: MergeOptions = {}): Promise<MergeResult> {
  const started = performance.now();
  const warnings: Finding[] = [];
  const child = await openChain(childPath, options, warnings);
  let depth = 1;
  try {
    if (child.type !== 'differencing' || !child.parent) {
      throw new VhdError(ErrorCodes.USAGE, `only a differencing disk can be merged into its parent; this one is ${child.type}`, { file: childPath });
    }
    // The target: the parent, or the ancestor named by --to.
    const chain = child.chain;
    if (options.to !== undefined) {
      const want = resolveReal(options.to);
      depth = chain.findIndex((d, i) => i > 0 && d.id === want);
      if (depth < 0) {
        throw new VhdError(ErrorCodes.USAGE, `${options.to} is not an ancestor of ${childPath} (its chain: ${chain.map((d) => d.name).join(' -> ')})`, {
          file: childPath,
        });
      }
    }
    const target = chain[depth];
    // Damage anywhere in the chain stops a merge before it writes. A target left by an interrupted
    // merge (pending journal, footer not yet rewritten) is expected: the journal completes it.
    const pending = hasPendingMerge(target.id);
    for (const d of chain) {
      if (pending && d === target) continue;
      const f = d.findings.find((x) => x.severity === 'error');
      if (f) throw new VhdError(ErrorCodes.TARGET_DAMAGED, `cannot merge: ${f.message}`, { file: childPath });
    }
    if (options.intoCopy === undefined) return await mergeInto(child, childPath, target.id, depth, options, warnings, started, false);
    // Into a copy. The copy is made and merged under a fixed temporary name beside the final one,
    // which it takes only once the merge is complete. The original is never written, so a run
    // interrupted before the merge's journal exists simply starts over; one with a journal resumes.
    const final = path.resolve(options.intoCopy);
    if (fs.existsSync(final)) throw new VhdError(ErrorCodes.OUTPUT_EXISTS, 'the copy already exists', { file: options.intoCopy });
    const work = path.join(path.dirname(final), `.${path.basename(final)}.vhdkit-copy`);
    if (!fs.existsSync(journalPath(work))) {
      fs.rmSync(work, { force: true });
      await copyTarget(target, work);
    }
    const result = await mergeInto(child, childPath, work, depth, options, warnings, started, true);
    fs.renameSync(work, final);
    fsyncDir(path.dirname(final));
    return { ...result, target: final };
  } finally {
    await child.close();
  }
}

/** Makes the copy for --into-copy at `dest`: reflink or copy_file_range when possible, a new UUID. */
async function copyTarget(target: VhdImage, dest: string): Promise<void> {
  fs.copyFileSync(target.id, dest, fs.constants.COPYFILE_FICLONE);
  try {
    // A new identity: the copy is a different disk once merged (the original's children keep theirs).
    const sink = await FileSink.open(dest, 'r+');
    try {
      const footer = encodeFooter({ ...target.footer, uniqueId: newUuid() });
      if (target.type !== 'fixed') await sink.write(footer, 0);
      await sink.write(footer, target.footerOffset);
      await sink.sync();
    } finally {
      await sink.close();
    }
  } catch (e) {
    fs.rmSync(dest, { force: true });
    throw e;
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
  warnings: Finding[],
  started: number,
  intoCopy: boolean,
): Promise<MergeResult> {
  const release = acquireLock(targetFile, 'merge');
  try {
    const chain = child.chain;
    const sources = chain.slice(0, depth);
    const targetInChain = chain[depth];
    let journal = readJournal(targetFile);
    const resumed = journal !== undefined;
    let planned: Segment[] | undefined;
    // The target itself, opened on its own (its footer may be gone mid-merge: the copy at 0 serves).
    const target = intoCopy ? await openDisk(targetFile, { resolveParents: false }) : targetInChain;
    try {
      if (journal) {
        const want = sources.map((s) => s.uuid).join(',');
        const have = journal.sources.map((s) => s.uuid).join(',');
        if (want !== have || journal.targetUuid !== target.uuid) {
          throw new VhdError(
            ErrorCodes.MERGE_PENDING,
            `a different merge is pending on this disk (of ${journal.sources.map((s) => s.path).join(', ')}); run it again to complete it first`,
            { file: targetFile },
          );
        }
      } else {
        if (options.resume) throw new VhdError(ErrorCodes.USAGE, 'no merge is pending on this disk: nothing to resume', { file: targetFile });
        if (!intoCopy && !options.force) {
          const exclude = new Set(chain.map((d) => d.id));
          const dirs = [path.dirname(targetFile), ...(options.search ?? [])];
          const siblings = findSiblings(target.footer.uniqueId, dirs, exclude);
          if (siblings.length > 0) {
            throw new VhdError(
              ErrorCodes.SIBLINGS,
              `other children depend on this disk and would be broken by a merge: ${siblings.join(', ')} (use --into-copy PATH to merge into a copy, or --force)`,
              { file: targetFile },
            );
          }
        }
        const made = await plan(target, sources, targetFile, !!options.deleteChild);
        journal = made.journal;
        planned = made.segments;
        writeJournal(targetFile, journal);
      }
      const stats = await execute(target, sources, journal, options, planned);
      removeJournal(targetFile);
      const deleted: string[] = [];
      const between = sources.slice(1).map((s) => s.id);
      if (journal.deleteChild) {
        for (const s of sources) {
          fs.rmSync(s.id, { force: true });
          deleted.push(s.id);
        }
      }
      return {
        child: childPath,
        target: targetFile,
        sources: sources.map((s) => s.id),
        resumed,
        ...stats,
        deleted,
        invalidated: journal.deleteChild ? [] : between,
        seconds: (performance.now() - started) / 1000,
        warnings,
      };
    } finally {
      if (intoCopy) await target.close();
    }
  } finally {
    release();
  }
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function unb64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64'));
}

/** Computes the journal: where new blocks go, the final footer, a moved BAT if it must grow. */
async function plan(
  target: VhdImage,
  sources: VhdImage[],
  targetFile: string,
  deleteChild: boolean,
): Promise<{ journal: MergeJournal; segments?: Segment[] }> {
  const newSize = Math.max(target.virtualSize, sources[0].virtualSize);
  const footerCopy = newSize !== target.virtualSize;
  // A grown disk gets the geometry of its new size (readers keyed on CHS, like qemu, see it).
  const footer = footerCopy ? { ...target.footer, currentSize: BigInt(newSize), geometry: geometryForWrite(newSize) } : target.footer;
  const base: Omit<MergeJournal, 'newBlocks' | 'newEnd' | 'footer'> = {
    version: 1,
    kind: 'vhdkit-merge',
    target: targetFile,
    targetUuid: target.uuid,
    sources: sources.map((s) => ({ path: s.id, uuid: s.uuid, size: s.source.size })),
    oldEnd: target.dataEnd,
    footerCopy,
    deleteChild,
    started: new Date().toISOString(),
  };
  if (target.type === 'fixed') {
    if (newSize > target.virtualSize) {
      throw new VhdError(ErrorCodes.USAGE, `the child (${newSize} bytes) is larger than the fixed target (${target.virtualSize} bytes); convert the target to dynamic first`, {
        file: targetFile,
      });
    }
    return { journal: { ...base, newBlocks: '', newEnd: target.dataEnd + FOOTER_SIZE, footer: b64(encodeFooter(footer)) } };
  }
  const bs = target.blockSize;
  const segments = await overlay(sources, newSize);
  const touched = new Set<number>();
  for (const seg of segments) for (let b = Math.floor(seg.start / bs); b * bs < seg.end; b++) touched.add(b);
  const bat = target.bat!;
  const needed = Math.ceil(newSize / bs);
  const span = bitmapByteSize(bs) + bs;
  let end = target.dataEnd;
  const pairs: number[] = [];
  for (const b of [...touched].sort((x, y) => x - y)) {
    if (b < bat.length && bat[b] !== BAT_UNUSED) continue;
    // Data areas 4 KiB aligned for blocks of 64 KiB or more, as the writer lays them out.
    let start = Math.ceil(end / 512) * 512;
    if (bs >= 65536) start = Math.ceil((start + bitmapByteSize(bs)) / 4096) * 4096 - bitmapByteSize(bs);
    pairs.push(b, start / 512);
    end = start + span;
  }
  const headerBytes = new Uint8Array(HEADER_SIZE);
  await target.source.read(headerBytes, target.headerOffset!);
  const copyBytes = new Uint8Array(FOOTER_SIZE);
  await target.source.read(copyBytes, 0);
  const journal: MergeJournal = {
    ...base,
    newBlocks: b64(new Uint8Array(Uint32Array.from(pairs).buffer)),
    newEnd: 0,
    footer: '',
    originalHeader: b64(headerBytes),
    originalFooterCopy: b64(copyBytes),
    headerOffset: target.headerOffset!,
  };
  if (needed > target.header!.maxTableEntries) {
    // The BAT must grow: it moves to the end of the data, the header points at it.
    const batOffset = Math.ceil(end / 512) * 512;
    journal.batOffset = batOffset;
    journal.batEntries = needed;
    journal.header = b64(encodeHeader({ ...target.header!, tableOffset: BigInt(batOffset), maxTableEntries: needed }));
    end = batOffset + batByteSize(needed);
  }
  journal.newEnd = end + FOOTER_SIZE;
  journal.footer = b64(encodeFooter(footer));
  return { journal, segments };
}

interface Stats {
  sectorsMerged: number;
  blocksAllocated: number;
  blocksUpdated: number;
  bytesWritten: number;
}

async function execute(target: VhdImage, sources: VhdImage[], journal: MergeJournal, options: MergeOptions, planned?: Segment[]): Promise<Stats> {
  const stats: Stats = { sectorsMerged: 0, blocksAllocated: 0, blocksUpdated: 0, bytesWritten: 0 };
  const newSize = Number(decodeFooter(unb64(journal.footer)).currentSize);
  const sink = await FileSink.open(journal.target, 'r+');
  try {
    const segments = planned ?? (await overlay(sources, newSize));
    const total = totalLength(segments.map((s) => [s.start, s.end] as Range));
    let done = 0;
    // Reused page-aligned buffers, one per copy in flight; data written back in the background
    // every SYNC_EVERY bytes so the fsync that ends the data step finds little left to write.
    const free: Uint8Array[] = [];
    let sinceSync = 0;
    let background: Promise<void> = Promise.resolve();
    const copy = async (seg: Segment, at: number) => {
      const buffer = free.pop() ?? alignedBuffer(COPY_UNIT);
      try {
        for (let p = seg.start; p < seg.end; p += COPY_UNIT) {
          const view = buffer.subarray(0, Math.min(COPY_UNIT, seg.end - p));
          await sources[seg.source].read(view, p);
          await sink.write(view, at + (p - seg.start));
          stats.bytesWritten += view.length;
          stats.sectorsMerged += view.length / 512;
          done += view.length;
          sinceSync += view.length;
          if (sinceSync >= SYNC_EVERY) {
            sinceSync = 0;
            background = background.then(() => sink.datasync());
          }
          options.onProgress?.({ done, total });
        }
      } finally {
        free.push(buffer);
      }
    };

    if (target.type === 'fixed') {
      await inFlight(segments, BLOCKS_IN_FLIGHT, options.signal, (seg) => copy(seg, seg.start));
      await background;
    } else {
      const bs = target.blockSize;
      const bitmapSize = bitmapByteSize(bs);
      const pairs = new Uint32Array(unb64(journal.newBlocks).slice().buffer);
      const newAt = new Map<number, number>();
      for (let i = 0; i < pairs.length; i += 2) newAt.set(pairs[i], pairs[i + 1]);
      // Start from the layout before the merge, whatever an interrupted run left: the original
      // header and footer copy back in place (durably, before the cut below removes a moved BAT),
      // the original BAT read from its original place (only entries of new blocks may have been
      // written there; they were unused before and are again).
      // (A fresh merge, planned just now on an untouched target, skips this: nothing to undo.)
      const originalHeader = decodeHeader(unb64(journal.originalHeader!), journal.headerOffset!);
      const tableOffset = Number(originalHeader.tableOffset);
      let bat: Uint32Array;
      if (planned) {
        bat = target.bat!;
      } else {
        await restoreLayout(sink, journal);
        const entries = Math.ceil(Number(decodeFooter(unb64(journal.originalFooterCopy!)).currentSize) / bs);
        const batBytes = new Uint8Array(entries * 4);
        await sink.read(batBytes, tableOffset);
        bat = decodeBat(batBytes, entries);
        for (const b of newAt.keys()) if (b < bat.length) bat[b] = BAT_UNUSED;
      }
      // Step 2: new blocks start as zeros (the old trailing footer is cut away), then every block.
      await sink.truncate(journal.oldEnd);
      await sink.truncate(journal.newEnd);
      const byBlock = new Map<number, Segment[]>();
      for (const seg of segments) {
        for (let b = Math.floor(seg.start / bs); b * bs < seg.end; b++) {
          const piece = { start: Math.max(seg.start, b * bs), end: Math.min(seg.end, (b + 1) * bs), source: seg.source };
          if (!byBlock.has(b)) byBlock.set(b, []);
          byBlock.get(b)!.push(piece);
        }
      }
      const blocks = [...byBlock.keys()].sort((x, y) => x - y);
      await inFlight(blocks, BLOCKS_IN_FLIGHT, options.signal, async (b) => {
        const pieces = byBlock.get(b)!;
        const fresh = newAt.get(b);
        const sector = fresh ?? bat[b];
        const blockStart = sector * 512;
        const bitmap = new Uint8Array(bitmapSize);
        if (fresh !== undefined) {
          // A dynamic target's new block holds the whole block (unwritten sectors are zeros);
          // a differencing target's holds only the merged sectors.
          if (target.type === 'dynamic') bitmap.fill(0xff);
          stats.blocksAllocated++;
        } else {
          await sink.read(bitmap, blockStart); // from the file: an interrupted run may have added bits
          stats.blocksUpdated++;
        }
        for (const p of pieces) setBits(bitmap, (p.start - b * bs) / 512, (p.end - b * bs) / 512);
        for (const p of pieces) await copy(p, blockStart + bitmapSize + (p.start - b * bs));
        await sink.write(bitmap, blockStart);
      });
      await background;
      await sink.sync();
      // Step 3: metadata.
      if (journal.header !== undefined) {
        const grown = new Uint32Array(journal.batEntries!).fill(BAT_UNUSED);
        grown.set(bat.subarray(0, Math.min(bat.length, grown.length)));
        for (const [b, s] of newAt) grown[b] = s;
        await sink.write(encodeBat(grown), journal.batOffset!);
        await sink.write(unb64(journal.header), journal.headerOffset!);
      } else {
        await writeBatEntries(sink, tableOffset, newAt);
      }
    }
    const footer = unb64(journal.footer);
    await sink.write(footer, journal.newEnd - FOOTER_SIZE);
    if (journal.footerCopy && target.type !== 'fixed') await sink.write(footer, 0);
    await sink.truncate(journal.newEnd);
    await sink.sync();
    throwIfAborted(options.signal);
    return stats;
  } finally {
    await sink.close();
  }
}

/** Writes the BAT entries of new blocks, one write per BAT sector touched. */
async function writeBatEntries(sink: FileSink, tableOffset: number, entries: Map<number, number>): Promise<void> {
  const bySector = new Map<number, Array<[number, number]>>();
  for (const [b, s] of entries) {
    const sec = Math.floor(b / 128);
    if (!bySector.has(sec)) bySector.set(sec, []);
    bySector.get(sec)!.push([b, s]);
  }
  const buf = new Uint8Array(512);
  const view = new DataView(buf.buffer);
  for (const [sec, list] of [...bySector].sort((x, y) => x[0] - y[0])) {
    await sink.read(buf, tableOffset + sec * 512);
    for (const [b, s] of list) view.setUint32((b % 128) * 4, s);
    await sink.write(buf, tableOffset + sec * 512);
  }
}

/** Runs `fn` over `items` with at most `limit` in flight. */
async function inFlight<T>(items: T[], limit: number, signal: AbortSignal | undefined, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const lane = async () => {
    while (failure === undefined && next < items.length) {
      const item = items[next++];
      try {
        throwIfAborted(signal);
        await fn(item);
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failure !== undefined) throw failure;
}

