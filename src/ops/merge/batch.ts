/**
 * Batches of merges: bounded lanes, a report of every child, totals; refused up front when its
 * merges chain (one merging a disk away that another merges into).
 */
import { abortError, ErrorCodes, VhdError, withCodedErrors } from '../../errors.js';
import type { Progress } from '../common.js';
import { merge, type MergeOptions, type MergeResult } from '../merge.js';
import { openDisk } from '../open.js';
import { forEachBounded } from '../../io/window.js';

export interface MergeBatchOptions extends Omit<MergeOptions, 'to' | 'intoCopy' | 'onProgress'> {
  /** Merges that run at once (default 2). They share the process's one pool. */
  concurrency?: number;
  /** Progress in merges: `done` counts the merges ended and the running ones' share done, `total` the children. */
  onProgress?: (p: Progress) => void;
  /** Called as each child's merge ends, in the order they end (an error it throws is thrown at the end). */
  onResult?: (item: MergeBatchItem) => void;
}

export interface MergeBatchItem {
  child: string;
  ok: boolean;
  result?: MergeResult;
  /** Why it failed (a VhdError with its code, file and offset where it is one). */
  error?: unknown;
  /** When its merge began and ended, in seconds from the batch's start. */
  start: number;
  end: number;
}

export interface MergeBatchResult {
  ok: boolean;
  merged: number;
  failed: number;
  sectorsMerged: number;
  blocksAllocated: number;
  bytesWritten: number;
  seconds: number;
  /** One per child, in the order they ended; children not started because of an abort fail with ABORTED. */
  results: MergeBatchItem[];
}

/** The batch's concurrency (default 2); USAGE unless a whole number ≥ 1. */
export function checkConcurrency(concurrency: number | undefined): number {
  const n = concurrency ?? 2;
  if (!Number.isInteger(n) || n < 1) throw new VhdError(ErrorCodes.USAGE, `--concurrency must be a whole number ≥ 1, got ${concurrency}`);
  return n;
}

/**
 * Merges several children, each into its own parent, at most `concurrency` at a time; a failed one
 * does not stop the others. After an abort no new merge starts (those running stop as `merge` does)
 * and the children left are reported as failed with ABORTED. Never throws for one child's failure:
 * the result says which failed and why.
 */
/**
 * A batch must not merge into a disk that another of its merges merges away: run side by side, one
 * would copy a child the other is still filling (or deleting). Refused before any merge starts,
 * naming both; the same child twice too. Children that cannot be opened are left to their merge.
 */
async function refuseChainedBatch(children: string[], options: MergeBatchOptions): Promise<void> {
  const asChild = new Map<string, string>();
  const asTarget = new Map<string, string>();
  for (const c of children) {
    let chain: string[];
    try {
      const d = await openDisk(c, { allowedDirs: options.allowedDirs, tolerateBrokenChain: true });
      chain = d.chain.map((x) => x.id);
      await d.close();
    } catch {
      continue;
    }
    if (asChild.has(chain[0])) throw new VhdError(ErrorCodes.USAGE, `the batch lists this child twice (${asChild.get(chain[0])} and ${c})`, { file: c });
    asChild.set(chain[0], c);
    if (chain[1] !== undefined) asTarget.set(chain[1], c);
  }
  for (const [file, by] of asTarget) {
    const merged = asChild.get(file);
    if (merged !== undefined) {
      throw new VhdError(
        ErrorCodes.USAGE,
        `this batch merges ${merged} into its parent and also merges ${by} into ${merged}: run side by side, one would lose the other's data; merge ${by} first, in a run of its own (or use --to on it)`,
        { file: by },
      );
    }
  }
}

export async function mergeBatch(children: string[], options: MergeBatchOptions = {}): Promise<MergeBatchResult> {
  const concurrency = checkConcurrency(options.concurrency);
  await withCodedErrors(() => refuseChainedBatch(children, options));
  const { onResult, onProgress, concurrency: _concurrency, ...mergeOptions } = options;
  const t0 = performance.now();
  const clock = () => Math.round(performance.now() - t0) / 1000;
  const results: MergeBatchItem[] = [];
  // Progress in merges: those ended count whole, those running by their share done.
  const running = new Map<number, Progress>();
  let ended = 0;
  const report = () => {
    if (!onProgress) return;
    let share = 0;
    for (const p of running.values()) share += p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    try {
      onProgress({ done: ended + share, total: children.length });
    } catch (error) {
      callbackError ??= { error };
    }
  };
  // A callback that throws neither stops the batch nor records a child twice: the first such
  // error is thrown once every merge has settled.
  let callbackError: { error: unknown } | undefined;
  const finish = (item: MergeBatchItem) => {
    results.push(item);
    try {
      onResult?.(item);
    } catch (error) {
      callbackError ??= { error };
    }
  };
  const started = await forEachBounded(
    children.entries(),
    concurrency,
    async ([index, child]) => {
      const start = clock();
      let item: MergeBatchItem;
      try {
        const onChildProgress = (p: Progress) => {
          running.set(index, p);
          report();
        };
        const result = await merge(child, { ...mergeOptions, onProgress: onChildProgress });
        item = { child, ok: true, result, start, end: clock() };
      } catch (error) {
        item = { child, ok: false, error, start, end: clock() };
      }
      running.delete(index);
      ended++;
      finish(item);
      report();
    },
    { signal: options.signal },
  );
  for (let next = started; next < children.length; next++) {
    const error = abortError(options.signal, 'not started: the batch was interrupted', { file: children[next] });
    finish({ child: children[next], ok: false, error, start: clock(), end: clock() });
  }
  if (callbackError) throw callbackError.error;
  const ok = results.filter((r) => r.ok);
  const sum = (k: 'sectorsMerged' | 'blocksAllocated' | 'bytesWritten') => ok.reduce((n, r) => n + r.result![k], 0);
  return {
    ok: ok.length === results.length,
    merged: ok.length,
    failed: results.length - ok.length,
    sectorsMerged: sum('sectorsMerged'),
    blocksAllocated: sum('blocksAllocated'),
    bytesWritten: sum('bytesWritten'),
    seconds: clock(),
    results,
  };
}
