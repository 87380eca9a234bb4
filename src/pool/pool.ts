/**
 * The single worker pool of the process (piscina), sized to the available cores. Operations hand
 * it small task descriptors; `workers: 0` runs the same task bodies inline on the main thread.
 */
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Piscina } from 'piscina';
import { abortError, ErrorCodes, type ErrorCode, VhdError } from '../errors.js';
import { alignedBuffer } from '../io/aligned.js';
import { type MergeCopyResult, type MergeCopyTask, runMergeCopyInline } from './merge-task.js';
import { type Md5Result, type Md5Task, runMd5Task } from './md5-task.js';
import { openRef } from './open-ref.js';
import { hashKernel, type HashKernel } from './xxh64.js';
import { type DiffTask, type DiffTaskResult, type HashTask, type HashTaskResult, READ_UNIT, runDiffTask, runHashTask, type TaskError } from './tasks.js';

export interface PoolOptions {
  /** Worker threads; 0 runs tasks inline. Default: the available parallelism. */
  workers?: number;
}

export interface TaskRunner {
  readonly workers: number;
  hash(task: HashTask, signal?: AbortSignal): Promise<HashTaskResult>;
  diff(task: DiffTask, signal?: AbortSignal): Promise<DiffTaskResult>;
  /**
   * A merge's data task. No AbortSignal: a task that has started writing always runs to its end (at
   * most 32 MiB), so nothing writes to the target once the caller has seen every task settle.
   */
  mergeCopy(task: MergeCopyTask): Promise<MergeCopyResult>;
  /** The Content-MD5 of a whole fixed VHD (one long task: it holds one worker while it runs). */
  md5(task: Md5Task, signal?: AbortSignal): Promise<Md5Result>;
  /** How many tasks to keep in flight to keep every worker busy. */
  readonly concurrency: number;
}

/** The compiled worker module. From the sources (tests), the build in dist/ is used. */
function workerFile(): string {
  const here = import.meta.url;
  const url = here.endsWith('.ts') ? new URL('../../dist/pool/worker.js', here) : new URL('./worker.js', here);
  return fileURLToPath(url);
}

/**
 * Default pool size: one thread per core, at most MAX_DEFAULT_WORKERS. Each thread holds two read
 * buffers of READ_UNIT bytes, so the cap keeps peak memory bounded on very large machines
 * (16 × 2 × 8 MiB = 256 MiB at most for diff, half that for hash); `--workers` goes beyond it.
 */
export const MAX_DEFAULT_WORKERS = 16;

export function defaultWorkers(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(MAX_DEFAULT_WORKERS, cores));
}

const aborted = (signal?: AbortSignal): VhdError => abortError(signal);

/** Turns a worker's `{ error }` result back into the VhdError it was. */
function unwrap<R>(r: R | { error: TaskError }): R {
  const err = (r as { error?: TaskError }).error;
  if (err) throw new VhdError(err.code as ErrorCode, err.detail, { file: err.file, structure: err.structure, offset: err.offset, field: err.field });
  return r as R;
}

function rethrow(e: unknown, signal?: AbortSignal): never {
  if (signal?.aborted || (e as Error)?.name === 'AbortError') throw aborted(signal);
  throw e;
}

class PiscinaRunner implements TaskRunner {
  /**
   * piscina is imported when the first pool is made, not when this module loads: a run that never
   * starts a thread (`--workers 0`, small inputs, info, check) does not pay for loading it.
   */
  private readonly ready: Promise<Piscina>;
  constructor(readonly workers: number) {
    this.ready = import('piscina').then(
      ({ Piscina }) =>
        new Piscina({
          filename: workerFile(),
          // Started at once, so the threads load while the main thread goes on; idle threads are
          // unreferenced by piscina and never keep the process alive.
          minThreads: workers,
          maxThreads: workers,
          idleTimeout: 2000,
          // Tasks are few and large: the queue stays short; tasks wait in the caller's bounded window.
          concurrentTasksPerWorker: 1,
        }).on('error', (err: Error) => {
          // A task aborted while its worker still ran it: the worker's late result reaches piscina,
          // which no longer knows the task and emits this (an abort is already reported to the
          // caller). Anything else piscina emits here is a fault of the pool: let it surface.
          if (/^Unexpected message from Worker/.test(err?.message ?? '')) return;
          queueMicrotask(() => {
            throw err;
          });
        }),
    );
    this.ready.catch(() => {}); // reported by the first task
  }
  // What a task returns is typed where it is unwrapped.
  private async run(task: unknown, options: { name: string; signal?: AbortSignal | null; transferList?: ArrayBuffer[] }): Promise<any> {
    return (await this.ready).run(task, options as never);
  }
  async destroy(): Promise<void> {
    await (await this.ready).destroy();
  }
  get concurrency(): number {
    return this.workers * 2;
  }
  async hash(task: HashTask, signal?: AbortSignal): Promise<HashTaskResult> {
    try {
      return unwrap<HashTaskResult>(await this.run(task, { name: 'hash', signal: signal ?? null }));
    } catch (e) {
      rethrow(e, signal);
    }
  }
  async diff(task: DiffTask, signal?: AbortSignal): Promise<DiffTaskResult> {
    try {
      return unwrap<DiffTaskResult>(await this.run(task, { name: 'diff', signal: signal ?? null }));
    } catch (e) {
      rethrow(e, signal);
    }
  }
  async md5(task: Md5Task, signal?: AbortSignal): Promise<Md5Result> {
    try {
      return unwrap<Md5Result>(await this.run(task, { name: 'md5', signal: signal ?? null }));
    } catch (e) {
      rethrow(e, signal);
    }
  }
  async mergeCopy(task: MergeCopyTask): Promise<MergeCopyResult> {
    // The copy lists go by transfer, not structured clone (a fragmented child has many copies).
    const transferList = [task.copies.buffer, task.blocks.buffer, task.bitmapInit.buffer] as ArrayBuffer[];
    return unwrap<MergeCopyResult>(await this.run(task, { name: 'mergeCopy', transferList }));
  }
}

class InlineRunner implements TaskRunner {
  readonly workers = 0;
  readonly concurrency = 1;
  private kernel?: Promise<HashKernel>;
  private bufA?: Uint8Array;
  private bufB?: Uint8Array;
  /** Tasks share the buffers: one at a time, even across concurrent operations. */
  private queue: Promise<unknown> = Promise.resolve();
  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }
  hash(task: HashTask): Promise<HashTaskResult> {
    return this.serial(async () => {
      this.kernel ??= hashKernel(READ_UNIT);
      const k = await this.kernel;
      return runHashTask(task, await openRef(task.disk), k.buffer, k.hashAt);
    });
  }
  diff(task: DiffTask): Promise<DiffTaskResult> {
    return this.serial(async () => {
      this.bufA ??= alignedBuffer(READ_UNIT);
      this.bufB ??= alignedBuffer(READ_UNIT);
      const [a, b] = await Promise.all([openRef(task.a), openRef(task.b)]);
      return runDiffTask(task, a, b, this.bufA, this.bufB);
    });
  }
  md5(task: Md5Task): Promise<Md5Result> {
    return this.serial(async () => runMd5Task(task, await openRef(task.disk)));
  }
  mergeCopy(task: MergeCopyTask): Promise<MergeCopyResult> {
    return runMergeCopyInline(task); // queued on the main thread's copy lanes, which own their buffers
  }
}

let shared: PiscinaRunner | undefined;
const inline = new InlineRunner();

/** Throws USAGE unless `workers` is absent or a whole number ≥ 0 (operations check it before opening anything). */
/** The most worker threads one pool may have (each holds buffers and a V8 isolate). */
export const MAX_WORKERS = 256;

export function checkWorkers(workers: number | undefined): void {
  if (workers !== undefined && (!Number.isInteger(workers) || workers < 0 || workers > MAX_WORKERS)) {
    throw new VhdError(ErrorCodes.USAGE, `--workers must be a whole number from 0 to ${MAX_WORKERS}, got ${workers}`);
  }
}

/** The process's pool (created on first use, resized if asked for a different size). */
export function getPool(options: PoolOptions = {}): TaskRunner {
  const workers = options.workers ?? defaultWorkers();
  if (workers === 0) return inline;
  checkWorkers(workers);
  if (shared && shared.workers !== workers) {
    const old = shared;
    shared = undefined;
    void old.destroy().catch(() => {});
  }
  shared ??= new PiscinaRunner(workers);
  return shared;
}

/**
 * Below this many bytes to read, an operation runs on the main thread unless the caller chose a pool
 * size: starting threads (loading the worker module and compiling the hash kernel, ~50 ms of CPU
 * each) costs more than the pool saves on so little data.
 */
export const INLINE_BELOW = 64 * 1024 * 1024;

/** The pool for an operation that will read `bytes`: inline for small inputs unless `workers` is given. */
export function poolFor(bytes: number, options: PoolOptions = {}): TaskRunner {
  if (options.workers === undefined && bytes < INLINE_BELOW) return inline;
  return getPool(options);
}

/** Stops the pool's threads (the process also exits without this: idle workers are unreferenced). */
export async function destroyPool(): Promise<void> {
  const p = shared;
  shared = undefined;
  if (p) await p.destroy();
}
