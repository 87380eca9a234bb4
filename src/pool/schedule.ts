/**
 * How operations feed the pool: ranges cut into tasks of TASK_BYTES, and a bounded window of tasks
 * in flight whose results are taken in task order.
 */
import type { Range } from '../disk/ranges.js';
import { throwIfAborted } from '../ops/common.js';

/** Bytes of data per task: 16 blocks of 2 MiB. Per-task overhead (~25 µs) vanishes at this size. */
export const TASK_BYTES = 32 * 1024 * 1024;

/** Splits ranges into tasks of at most `max` bytes, cutting at multiples of `unit`. */
export function splitRanges(ranges: Range[], max: number, unit: number): Range[] {
  const step = Math.max(unit, Math.floor(max / unit) * unit);
  const out: Range[] = [];
  for (const [a, b] of ranges) for (let s = a; s < b; s += step) out.push([s, Math.min(b, s + step)]);
  return out;
}

/**
 * Runs `tasks` through `run` with at most `window` in flight, delivering results to `take` in task
 * order. Never more than `window` results wait in memory.
 */
export async function orderedWindow<T, R>(
  tasks: Iterable<T>,
  window: number,
  run: (t: T) => Promise<R>,
  take: (t: T, r: R) => void | Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const queue: Array<{ task: T; result: Promise<R> }> = [];
  try {
    for (const task of tasks) {
      throwIfAborted(signal);
      const result = run(task);
      result.catch(() => {}); // observed below, in order
      queue.push({ task, result });
      if (queue.length >= window) {
        const head = queue.shift()!;
        const r = await head.result;
        throwIfAborted(signal);
        await take(head.task, r);
      }
    }
    while (queue.length > 0) {
      const head = queue.shift()!;
      const r = await head.result;
      throwIfAborted(signal);
      await take(head.task, r);
    }
  } finally {
    // On failure, let the tasks still in flight settle before returning (no stray work).
    await Promise.allSettled(queue.map((q) => q.result));
  }
}

