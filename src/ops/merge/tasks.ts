/**
 * A merge cut into task descriptors for the copier (main thread or pool): copies from source file
 * offsets to the target offsets the journal fixed, grouped by target block.
 */
import { ErrorCodes, VhdError } from '../../errors.js';
import type { VhdImage } from '../../disk/image.js';
import { BITMAP_FROM_FILE, BITMAP_ONES, BITMAP_ZEROS, type MergeCopyTask } from '../../pool/merge-task.js';
import type { Segment } from './overlay.js';

/** A fragmented child (a few sectors per run) makes many copies: a task's copy list stays small. */
const MAX_COPIES_PER_TASK = 16384;

export interface PlannedTask {
  task: MergeCopyTask;
  /** Data bytes it copies. */
  bytes: number;
}

/** Where the blocks of a dynamic or differencing target are. */
export interface TargetLayout {
  blockSize: number;
  bitmapSize: number;
  dynamic: boolean;
  /** New blocks: block index → sector of its bitmap (from the journal). */
  newAt: Map<number, number>;
  /** The target's BAT before the merge (existing blocks). */
  bat: Uint32Array;
}

/**
 * Cuts the merge into task descriptors, lazily (one task's lists exist at a time on this side):
 * copies from source file offsets (each source's own BAT) to the target file offsets the journal
 * fixed, grouped by target block, about `taskBytes` of data per task.
 */
export class TaskPlan {
  private copies: number[] = [];
  private blockList: number[] = [];
  private init: number[] = [];
  private bytes = 0;
  private readonly sourcePaths: string[];
  private readonly sourceSizes: number[];

  constructor(
    private readonly targetFile: string,
    private readonly sources: VhdImage[],
    private readonly taskBytes: number,
  ) {
    this.sourcePaths = sources.map((s) => s.id);
    this.sourceSizes = sources.map((s) => s.source.size);
  }

  /** A fixed target: every copy lands at its virtual offset. */
  *fixed(segments: Segment[]): Generator<PlannedTask> {
    for (const seg of segments) {
      for (const [from, at, length] of sourcePieces(this.sources[seg.source], seg.start, seg.end)) {
        this.copies.push(seg.source, from, at, length);
        this.bytes += length;
        if (this.full()) yield this.take(0);
      }
    }
    if (this.bytes > 0) yield this.take(0);
  }

  /** A dynamic or differencing target: whole blocks per task, each with its bitmap update. */
  *blocks(blocks: number[], byBlock: Map<number, Segment[]>, t: TargetLayout): Generator<PlannedTask> {
    for (const b of blocks) {
      const fresh = t.newAt.get(b);
      const blockStart = (fresh ?? t.bat[b]) * 512;
      const data = blockStart + t.bitmapSize - b * t.blockSize; // file offset of virtual offset 0, in this block
      const first = this.copies.length / 4;
      for (const p of byBlock.get(b)!) {
        for (const [from, at, length] of sourcePieces(this.sources[p.source], p.start, p.end)) {
          this.copies.push(p.source, from, data + at, length);
          this.bytes += length;
        }
      }
      this.blockList.push(blockStart, first, this.copies.length / 4);
      this.init.push(fresh === undefined ? BITMAP_FROM_FILE : t.dynamic ? BITMAP_ONES : BITMAP_ZEROS);
      if (this.full()) yield this.take(t.bitmapSize);
    }
    if (this.bytes > 0 || this.blockList.length > 0) yield this.take(t.bitmapSize);
  }

  private full(): boolean {
    return this.bytes >= this.taskBytes || this.copies.length >= MAX_COPIES_PER_TASK * 4;
  }

  private take(bitmapSize: number): PlannedTask {
    const task: MergeCopyTask = {
      target: this.targetFile,
      sources: this.sourcePaths,
      sourceSizes: this.sourceSizes,
      bitmapSize,
      copies: Float64Array.from(this.copies),
      blocks: Float64Array.from(this.blockList),
      bitmapInit: Uint8Array.from(this.init),
    };
    const planned = { task, bytes: this.bytes };
    this.copies = [];
    this.blockList = [];
    this.init = [];
    this.bytes = 0;
    return planned;
  }
}

/**
 * A virtual range a source holds itself, as [file offset, virtual offset, length] pieces, one per
 * block of that source it crosses (its blocks need not be in file order).
 */
export function* sourcePieces(source: VhdImage, start: number, end: number): Generator<[number, number, number]> {
  const bs = source.blockSize;
  for (let p = start; p < end; ) {
    const b = Math.floor(p / bs);
    const e = Math.min(end, (b + 1) * bs);
    const data = source.blockDataOffset(b);
    if (data === undefined) {
      throw new VhdError(ErrorCodes.RANGE, `sectors at ${p} were planned from block ${b}, which this disk does not hold`, { file: source.id });
    }
    yield [data + (p - b * bs), p, e - p];
    p = e;
  }
}
