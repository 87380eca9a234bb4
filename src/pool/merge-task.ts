/**
 * The data task of `merge` (src/ops/merge.ts): copies of source sectors to target file offsets that
 * the main thread has already fixed (they are the journal's), and the sector-bitmap updates of the
 * target blocks those sectors land in. It runs in a pool worker, or inline on the main thread
 * (`workers: 0`); the two differ only in how they wait for the disk:
 *
 * - a worker copies one piece at a time with blocking calls: the thread is an I/O stream of its own,
 *   and the pool's workers together are as many streams (not more clients of libuv's four threads);
 * - the main thread must not block: LANES asynchronous lanes, each with its own buffer, take the
 *   next piece of the oldest task that has one, so while some read others write, and a task's start
 *   overlaps the previous one's end: one continuous stream in file order, four pieces in flight (as
 *   the main-thread merge before tasks kept four blocks in flight).
 *
 * The main thread plans and owns everything that orders writes: the journal, the file's cut and
 * extension, the BAT, header and footer, and every fsync. A task only writes data areas and bitmaps
 * of blocks no other task touches, and never syncs: the main thread's fsync after the last task has
 * settled covers these writes too (fsync is per inode, not per descriptor).
 *
 * Files are opened by each task and closed at its end. Unlike a VHD (open-ref.ts caches those because
 * opening one parses its footer, header and BAT), a task opens plain files: ~20 µs against the
 * milliseconds of its I/O, and no descriptor outlives the task — none can point at a file that was
 * replaced under the same name between two merges, and none keeps a merged child or a renamed copy open.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { setBits } from '../format/bitmap.js';
import { alignedBuffer } from '../io/aligned.js';
import { FileSink } from '../io/file.js';

export interface MergeCopyTask {
  /** The file merged into (opened for writing). */
  target: string;
  /** The merge's sources, newest first, as files; copies name them by index. */
  sources: string[];
  /** Each source's size as the main thread opened it: a task refuses a file that is not that one. */
  sourceSizes: number[];
  /** Bytes of a target block's sector bitmap; 0 for a fixed target (no blocks, no bitmaps). */
  bitmapSize: number;
  /**
   * Flat [source index, source file offset, target file offset, length] per copy, every number a
   * multiple of 512 (Float64: offsets pass 2^32). Sent by transfer.
   */
  copies: Float64Array;
  /**
   * Target blocks, flat [bitmap file offset, first copy, end copy] per block: the block's copies are
   * those with index in [first, end). Empty for a fixed target. Sent by transfer.
   */
  blocks: Float64Array;
  /** Per block, what its bitmap starts as before its copies' bits are set: BITMAP_ZEROS, _ONES or _FROM_FILE. */
  bitmapInit: Uint8Array;
}

/** A new block of a differencing target: only the merged sectors are its own. */
export const BITMAP_ZEROS = 0;
/** A new block of a dynamic target: the whole block is its data (unwritten sectors are zeros). */
export const BITMAP_ONES = 1;
/** An existing block: its bitmap as the file holds it (an interrupted run may already have added bits). */
export const BITMAP_FROM_FILE = 2;

export interface MergeCopyResult {
  /** Data bytes copied (bitmaps not counted). */
  bytes: number;
}

/** Copies in flight on the main thread. */
export const LANES = 4;
/** A piece's largest size (a lane's or a worker's buffer): one 2 MiB block; longer copies go in pieces. */
export const PIECE_BYTES = 2 * 1024 * 1024;

const buffers: Uint8Array[] = [];

/** This thread's i-th reused page-aligned copy buffer. */
function buffer(i: number): Uint8Array {
  while (buffers.length <= i) buffers.push(alignedBuffer(PIECE_BYTES));
  return buffers[i];
}

interface Piece {
  source: number;
  from: number;
  to: number;
  length: number;
}

/** A task's copies, handed out as pieces of at most PIECE_BYTES, in order. */
class Pieces {
  private k = 0;
  private inCopy = 0;
  constructor(private readonly copies: Float64Array) {}
  get done(): boolean {
    return this.k * 4 >= this.copies.length;
  }
  next(): Piece {
    const c = this.k * 4;
    const length = Math.min(this.copies[c + 3] - this.inCopy, PIECE_BYTES);
    const piece = { source: this.copies[c], from: this.copies[c + 1] + this.inCopy, to: this.copies[c + 2] + this.inCopy, length };
    this.inCopy += length;
    if (this.inCopy === this.copies[c + 3]) {
      this.k++;
      this.inCopy = 0;
    }
    return piece;
  }
}

/** A task's files: the target, and each source when first needed (checked against the size planned). */
class TaskFiles {
  private readonly sources: Array<Promise<FileSink> | undefined> = [];
  private readonly opened: FileSink[] = [];
  private targetSink?: Promise<FileSink>;
  constructor(private readonly task: MergeCopyTask) {}
  target(): Promise<FileSink> {
    return (this.targetSink ??= FileSink.open(this.task.target, 'r+').then((t) => (this.opened.push(t), t)));
  }
  source(i: number): Promise<FileSink> {
    return (this.sources[i] ??= (async () => {
      const s = await FileSink.open(this.task.sources[i], 'r');
      this.opened.push(s);
      if (s.size !== this.task.sourceSizes[i]) {
        throw new VhdError(ErrorCodes.IO, `changed during the merge: ${s.size} bytes, ${this.task.sourceSizes[i]} when the merge opened it`, { file: this.task.sources[i] });
      }
      return s;
    })());
  }
  async close(): Promise<void> {
    await Promise.allSettled([this.targetSink, ...this.sources]);
    await Promise.all(this.opened.map((f) => f.close()));
  }
}

/** Runs one task in a worker thread: each piece read and written with blocking calls, then the bitmaps. */
export async function runMergeCopyTask(task: MergeCopyTask): Promise<MergeCopyResult> {
  const files = new TaskFiles(task);
  try {
    const target = await files.target();
    const pieces = new Pieces(task.copies);
    const buf = buffer(0);
    let bytes = 0;
    while (!pieces.done) {
      const p = pieces.next();
      const view = buf.subarray(0, p.length);
      (await files.source(p.source)).readBlocking(view, p.from);
      target.writeBlocking(view, p.to);
      bytes += p.length;
    }
    if (task.bitmapSize > 0) await updateBitmaps(task, target, true);
    return { bytes };
  } finally {
    await files.close();
  }
}

interface InlineJob {
  task: MergeCopyTask;
  files: TaskFiles;
  pieces: Pieces;
  inFlight: number;
  bytes: number;
  failure?: unknown;
  finished: boolean;
  resolve: (r: MergeCopyResult) => void;
  reject: (e: unknown) => void;
}

/** Tasks given to the main thread, oldest first, until finished. */
const jobs: InlineJob[] = [];
const laneRunning: boolean[] = [];

/**
 * Runs a task on the main thread. Its promise settles only once every write of the task has
 * completed (or, after a failure, once none of its writes is still running).
 */
export function runMergeCopyInline(task: MergeCopyTask): Promise<MergeCopyResult> {
  return new Promise<MergeCopyResult>((resolve, reject) => {
    const job: InlineJob = { task, files: new TaskFiles(task), pieces: new Pieces(task.copies), inFlight: 0, bytes: 0, finished: false, resolve, reject };
    jobs.push(job);
    if (job.pieces.done) void finish(job);
    for (let i = 0; i < LANES; i++) {
      if (laneRunning[i]) continue;
      laneRunning[i] = true;
      void lane(i);
    }
  });
}

/** A lane: the next piece of the oldest job that has one, read then written, until none is left. */
async function lane(i: number): Promise<void> {
  const buf = buffer(i);
  try {
    for (;;) {
      const job = jobs.find((j) => j.failure === undefined && !j.pieces.done);
      if (!job) return;
      const p = job.pieces.next();
      job.inFlight++;
      try {
        const view = buf.subarray(0, p.length);
        await (await job.files.source(p.source)).read(view, p.from);
        await (await job.files.target()).write(view, p.to);
        job.bytes += p.length;
      } catch (e) {
        job.failure ??= e;
      }
      job.inFlight--;
      if (job.inFlight === 0 && (job.pieces.done || job.failure !== undefined)) void finish(job);
    }
  } finally {
    laneRunning[i] = false;
  }
}

/** A job whose data writes have all completed: its bitmaps, its files closed, its promise settled. */
async function finish(job: InlineJob): Promise<void> {
  if (job.finished) return;
  job.finished = true;
  jobs.splice(jobs.indexOf(job), 1);
  try {
    if (job.failure !== undefined) throw job.failure;
    if (job.task.bitmapSize > 0) await updateBitmaps(job.task, await job.files.target(), false);
    await job.files.close();
    job.resolve({ bytes: job.bytes });
  } catch (e) {
    await job.files.close();
    job.reject(e);
  }
}

/**
 * Each block's bitmap: its starting state, the bits of its copies' sectors set, written back. Returns
 * (or throws) only once none of these writes is still running.
 */
async function updateBitmaps(task: MergeCopyTask, target: FileSink, blocking: boolean): Promise<void> {
  const { blocks, copies, bitmapSize } = task;
  const count = blocks.length / 3;
  const all = new Uint8Array(count * bitmapSize);
  const settled = await Promise.allSettled(
    Array.from({ length: count }, async (_, j) => {
      const at = blocks[j * 3];
      const bitmap = all.subarray(j * bitmapSize, (j + 1) * bitmapSize);
      const init = task.bitmapInit[j];
      if (init === BITMAP_ONES) bitmap.fill(0xff);
      else if (init === BITMAP_FROM_FILE) {
        if (blocking) target.readBlocking(bitmap, at);
        else await target.read(bitmap, at);
      }
      const data = at + bitmapSize;
      for (let c = blocks[j * 3 + 1]; c < blocks[j * 3 + 2]; c++) {
        const first = (copies[c * 4 + 2] - data) / 512;
        setBits(bitmap, first, first + copies[c * 4 + 3] / 512);
      }
      if (blocking) target.writeBlocking(bitmap, at);
      else await target.write(bitmap, at);
    }),
  );
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
