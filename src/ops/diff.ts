/**
 * `diff`: the changed byte ranges between two disks' virtual content, exact to the sector, and
 * optionally a differencing child of `old` whose chain content equals `new`.
 *
 * Where to look: when one disk is an ancestor of the other (same file in the other's chain), only
 * the sectors held by the disks above the ancestor can differ — their sector bitmaps give the
 * candidates, and nothing else is read. Otherwise the candidates are the union of both disks' data
 * ranges (everything outside reads as zeros on both sides). Candidates are then compared on the
 * worker pool, so a sector rewritten with the same bytes is not reported.
 */
import { sectorsAbove } from '../disk/chain.js';
import path from 'node:path';
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import type { VhdImage } from '../disk/image.js';
import { normalizeRanges, totalLength, type Range } from '../disk/ranges.js';
import type { VirtualDisk } from '../disk/source.js';
import { blockSizeLike, DynamicWriter } from '../disk/writer.js';
import { writeAtomically } from '../io/file.js';
import { checkWorkers, poolFor } from '../pool/pool.js';
import type { DiffTask, DiskRef } from '../pool/tasks.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { newUuid, parentLinkFor } from './create.js';
import { orderedWindow, packTasks, TASK_BYTES } from '../pool/schedule.js';
import { guardOutputs } from '../io/paths.js';
import { holdReading, inputRoles, openAny, type OpenDiskOptions, type ReadHold } from './open.js';

export interface DiffOptions extends OperationOptions, OpenDiskOptions {
  workers?: number;
  /** Write a differencing child of `old` whose content equals `new`. */
  out?: string;
  /** Replace an existing `out`. */
  force?: boolean;
  /** Block size of the child (default: old's, or 2 MiB). */
  blockSize?: number;
}

export interface DiffResult {
  old: string;
  new: string;
  virtualSize: number;
  /** 'bitmap' when one disk is an ancestor of the other, else 'compare'. */
  method: 'bitmap' | 'compare';
  /** Changed byte ranges [start, end), sector exact, coalesced. */
  ranges: Range[];
  changedBytes: number;
  changedSectors: number;
  /** Bytes compared (read on each side). */
  bytesCompared: number;
  /** Worker threads that compared (0: the main thread, as for small inputs). */
  workers: number;
  out: { file: string; blocks: number; fileSize: number } | null;
  seconds: number;
  warnings: Finding[];
}

function chainIds(d: VirtualDisk): string[] {
  const img = d as VhdImage;
  return Array.isArray(img.chain) ? img.chain.map((c) => c.id) : [];
}

/** Candidate ranges where `a` and `b` may differ, and the method used to find them. */
async function candidates(a: VirtualDisk, b: VirtualDisk): Promise<{ ranges: Range[]; method: 'bitmap' | 'compare' }> {
  const idsA = chainIds(a);
  const idsB = chainIds(b);
  const above = (top: VirtualDisk, ancestorId: string) => sectorsAbove(top as VhdImage, ancestorId);
  if (idsA.length > 0 && idsB.length > 0) {
    const viaB = await above(b, idsA[0]);
    if (viaB) return { ranges: viaB, method: 'bitmap' };
    const viaA = await above(a, idsB[0]);
    if (viaA) return { ranges: viaA, method: 'bitmap' };
  }
  return { ranges: normalizeRanges([...a.dataRanges(), ...b.dataRanges()]), method: 'compare' };
}

export function diff(oldFile: string, newFile: string, options: DiffOptions = {}): Promise<DiffResult> {
  return withCodedErrors(() => diffDisks(oldFile, newFile, options));
}

async function diffDisks(oldFile: string, newFile: string, options: DiffOptions): Promise<DiffResult> {
  const started = performance.now();
  const warnings: Finding[] = [];
  checkWorkers(options.workers);
  const outRole = [{ path: options.out ?? '', role: 'child (--out)' }];
  if (options.out !== undefined) guardOutputs(outRole, [{ path: oldFile, role: 'old disk' }, { path: newFile, role: 'new disk' }]);
  const open = { ...options, onFinding: (f: Finding) => warnings.push(f) };
  const a = await openAny(oldFile, 'auto', open);
  let b: Awaited<ReturnType<typeof openAny>>;
  try {
    b = await openAny(newFile, 'auto', open);
  } catch (e) {
    await a.disk.close();
    throw e;
  }
  const holds: ReadHold[] = [];
  const verify = () => {
    for (const h of holds) h.verify();
  };
  try {
    if (options.out !== undefined) guardOutputs(outRole, [...inputRoles(a.disk, oldFile, 'old disk'), ...inputRoles(b.disk, newFile, 'new disk')]);
    holds.push(holdReading(a.disk, oldFile, 'diff'));
    holds.push(holdReading(b.disk, newFile, 'diff'));
    const virtualSize = Math.max(a.disk.virtualSize, b.disk.virtualSize);
    const { ranges: cand, method } = await candidates(a.disk, b.disk);
    // Sector alignment: candidates from block ranges are aligned already; clip to the larger disk.
    const candidatesAligned = normalizeRanges(cand.map(([s, e]) => [Math.floor(s / 512) * 512, Math.min(virtualSize, Math.ceil(e / 512) * 512)] as Range));
    const total = totalLength(candidatesAligned);
    const pool = poolFor(2 * total, { workers: options.workers });
    const refA: DiskRef = { file: oldFile, format: a.format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom };
    const refB: DiskRef = { file: newFile, format: b.format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom };
    const changed: Range[] = [];
    let done = 0;
    let compared = 0;
    await orderedWindow(
      packTasks(candidatesAligned, TASK_BYTES).map((ranges): DiffTask => ({ a: refA, b: refB, ranges })),
      pool.concurrency,
      (t) => pool.diff(t, options.signal),
      (t, r) => {
        for (let i = 0; i < r.changed.length; i += 2) {
          const s = r.changed[i];
          const e = r.changed[i + 1];
          const last = changed[changed.length - 1];
          if (last && last[1] === s) last[1] = e;
          else changed.push([s, e]);
        }
        compared += r.bytes;
        done += totalLength(t.ranges);
        options.onProgress?.({ done, total });
      },
      options.signal,
    );
    throwIfAborted(options.signal);
    verify();
    const changedBytes = totalLength(changed);
    let out: DiffResult['out'] = null;
    if (options.out) {
      if (a.format !== 'vhd') {
        throw new VhdError(ErrorCodes.USAGE, 'a differencing child needs a VHD parent: the old disk is a raw image', { file: oldFile });
      }
      if (a.disk.virtualSize !== b.disk.virtualSize) {
        throw new VhdError(
          ErrorCodes.USAGE,
          `a differencing child has its parent's size: the old disk is ${a.disk.virtualSize} bytes, the new one ${b.disk.virtualSize}`,
          { file: newFile },
        );
      }
      out = await writeChild(a.disk as VhdImage, b.disk, oldFile, options.out, changed, b.disk.virtualSize, options, verify);
    }
    return {
      old: oldFile,
      new: newFile,
      virtualSize,
      method,
      ranges: changed,
      changedBytes,
      changedSectors: changedBytes / 512,
      bytesCompared: compared,
      workers: pool.workers,
      out,
      seconds: (performance.now() - started) / 1000,
      warnings,
    };
  } finally {
    for (const h of holds) h.release();
    await a.disk.close();
    await b.disk.close();
  }
}

/** Writes a differencing child of `parent` holding exactly the `changed` sectors, read from `source`. */
async function writeChild(
  parent: VhdImage,
  source: VirtualDisk,
  parentFile: string,
  outFile: string,
  changed: Range[],
  virtualSize: number,
  options: DiffOptions,
  verify: () => void,
): Promise<{ file: string; blocks: number; fileSize: number }> {
  const blockSize = options.blockSize ?? blockSizeLike(parent);
  const link = parentLinkFor(outFile, parentFile, parent.footer.uniqueId, parent.footer.timestamp);
  let blocks = 0;
  let fileSize = 0;
  await writeAtomically(
    outFile,
    async (sink) => {
      const w = await DynamicWriter.create(sink, { virtualSize, blockSize, uuid: newUuid(), parent: link });
      let i = 0;
      let pos = 0; // everything before pos is written
      while (i < changed.length) {
        throwIfAborted(options.signal);
        const block = Math.floor(Math.max(changed[i][0], pos) / blockSize);
        const base = block * blockSize;
        const end = Math.min(base + blockSize, virtualSize);
        // Every changed range touching this block: its sectors set, its bytes read from `new`;
        // the rest of the block stays a hole in the file.
        const pieces: Array<[number, Uint8Array]> = [];
        while (i < changed.length && changed[i][0] < end) {
          const s = Math.max(changed[i][0], base);
          const e = Math.min(changed[i][1], end);
          const bytes = new Uint8Array(e - s);
          await source.read(bytes, s);
          pieces.push([s - base, bytes]);
          if (changed[i][1] > end) break; // the range continues in the next block
          i++;
        }
        await w.writeSectors(block, pieces);
        blocks++;
        pos = end;
      }
      await w.finish();
      fileSize = sink.size;
      verify(); // what was read is what the disks held throughout, or the child is not placed
    },
    { overwrite: options.force },
  );
  return { file: path.resolve(outFile), blocks, fileSize };
}
