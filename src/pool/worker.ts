/**
 * The worker module: one named function per task kind. Each worker keeps one pair of reused
 * page-aligned buffers and its own open disks; results go back by transfer (Piscina.move).
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { VhdError } from '../errors.js';
import { alignedBuffer } from '../io/aligned.js';
import { useBlockingReads } from '../io/file.js';
import { type MergeCopyResult, type MergeCopyTask, runMergeCopyTask } from './merge-task.js';
import { type Md5Result, type Md5Task, runMd5Task } from './md5-task.js';
import { openRef } from './open-ref.js';
import { hashKernel } from './xxh64.js';
import { type DiffTask, type DiffTaskResult, type HashTask, type HashTaskResult, READ_UNIT, runDiffTask, runHashTask, type TaskError } from './tasks.js';

// This thread is one I/O stream of its own: its reads block here (see useBlockingReads).
useBlockingReads();
const kernel = hashKernel(READ_UNIT);
let bufA: Uint8Array | undefined;
let bufB: Uint8Array | undefined;

function buffers(): [Uint8Array, Uint8Array] {
  bufA ??= alignedBuffer(READ_UNIT);
  bufB ??= alignedBuffer(READ_UNIT);
  return [bufA, bufB];
}

/**
 * Errors cross the thread boundary by structured clone, which keeps only an Error's message: a
 * VhdError therefore comes back as a result `{ error }` holding its fields, and the main thread
 * rebuilds it. Anything else is thrown as is.
 */
function asResult(e: unknown): { error: TaskError } {
  if (e instanceof VhdError) {
    return { error: { code: e.code, detail: e.detail, file: e.file, structure: e.structure, offset: e.offset, field: e.field } };
  }
  throw e;
}

/** Returns `value` to the main thread with `buffers` transferred, not copied. */
function transfer<T>(value: T, buffers: ArrayBufferLike[]): T {
  return move({ [transferableSymbol]: buffers, [valueSymbol]: value } as never) as unknown as T;
}

export async function hash(task: HashTask): Promise<HashTaskResult | { error: TaskError }> {
  try {
    const k = await kernel;
    const disk = await openRef(task.disk);
    const r = await runHashTask(task, disk, k.buffer, k.hashAt);
    return transfer(r, [r.hashes.buffer, r.zero.buffer]);
  } catch (e) {
    return asResult(e);
  }
}

export async function diff(task: DiffTask): Promise<DiffTaskResult | { error: TaskError }> {
  try {
    const [a, b] = await Promise.all([openRef(task.a), openRef(task.b)]);
    const [x, y] = buffers();
    const r = await runDiffTask(task, a, b, x, y);
    return transfer(r, [r.changed.buffer]);
  } catch (e) {
    return asResult(e);
  }
}

// -------------------------------------------------------------------------------------------------
// merge: the data copies of one merge task (src/pool/merge-task.ts has the body and its buffers),
// with blocking I/O: this thread is one I/O stream of its own.

export async function mergeCopy(task: MergeCopyTask): Promise<MergeCopyResult | { error: TaskError }> {
  try {
    return await runMergeCopyTask(task);
  } catch (e) {
    return asResult(e);
  }
}

// -------------------------------------------------------------------------------------------------
// upload: the Content-MD5 of the whole fixed VHD, computed while the pages are sent.

export async function md5(task: Md5Task): Promise<Md5Result | { error: TaskError }> {
  try {
    return await runMd5Task(task, await openRef(task.disk));
  } catch (e) {
    return asResult(e);
  }
}
