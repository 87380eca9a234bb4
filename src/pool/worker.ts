/**
 * The worker module: one named function per task kind. Each worker keeps one pair of reused
 * page-aligned buffers and its own open disks; results go back by transfer (Piscina.move).
 */
import { createRequire } from 'node:module';
import path from 'node:path';
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

/**
 * Piscina transfers (not copies) a result marked "movable", which its `move()` does with a marker
 * private to its `common` module. Importing the 'piscina' package here to get `move()` would load
 * all of it into every worker (15–20 ms of each thread's start); the `common` module is already
 * loaded in this thread by piscina's own worker, which runs this module, so it is taken from there.
 * Should that module ever lack `markMovable` (another piscina), the package's `move()` is used.
 */
const TRANSFERABLE = Symbol.for('Piscina.transferable');
const VALUE = Symbol.for('Piscina.valueOf');
type Mark = (value: object) => void;
let markMovable: Mark | undefined;
try {
  const req = createRequire(import.meta.url);
  const common = req(path.join(path.dirname(req.resolve('piscina')), 'common.js')) as { markMovable?: Mark; isMovable?: (v: unknown) => boolean };
  if (typeof common.markMovable === 'function' && typeof common.isMovable === 'function') {
    const probe = { [TRANSFERABLE]: [], [VALUE]: null };
    common.markMovable(probe);
    if (common.isMovable(probe)) markMovable = common.markMovable;
  }
} catch {
  // the fallback below
}
const move: Promise<(value: object) => object> | undefined = markMovable ? undefined : import('piscina').then((m) => m.move as (value: object) => object);

/** Returns `value` to the main thread with `buffers` transferred, not copied. */
async function transfer<T>(value: T, buffers: ArrayBufferLike[]): Promise<T> {
  const wrapped = { [TRANSFERABLE]: buffers, [VALUE]: value };
  if (markMovable) {
    markMovable(wrapped);
    return wrapped as unknown as T;
  }
  return (await move!)(wrapped) as unknown as T;
}

export async function hash(task: HashTask): Promise<HashTaskResult | { error: TaskError }> {
  try {
    const k = await kernel;
    const disk = await openRef(task.disk);
    const r = await runHashTask(task, disk, k.buffer, k.hashAt);
    return await transfer(r, [r.hashes.buffer, r.zero.buffer]);
  } catch (e) {
    return asResult(e);
  }
}

export async function diff(task: DiffTask): Promise<DiffTaskResult | { error: TaskError }> {
  try {
    const [a, b] = await Promise.all([openRef(task.a), openRef(task.b)]);
    const [x, y] = buffers();
    const r = await runDiffTask(task, a, b, x, y);
    return await transfer(r, [r.changed.buffer]);
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
