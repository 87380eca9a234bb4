/**
 * How operations feed the pool: ranges cut into tasks of TASK_BYTES, and a bounded window of tasks
 * in flight whose results are taken in task order.
 */
import type { Range } from '../disk/ranges.js';

/** Bytes of data per task: 16 blocks of 2 MiB. Per-task overhead (~25 µs) vanishes at this size. */
export const TASK_BYTES = 32 * 1024 * 1024;

/**
 * Packs ranges, in order, into tasks of at most `max` bytes each; a range longer than that is cut
 * (cuts keep the ranges' alignment when `max` is a multiple of it). Small ranges
 * share a task: a disk whose data is scattered 2 MiB blocks still gets tasks of `max` bytes, and each
 * worker reads runs of neighbouring blocks (one sequential stream the kernel reads ahead on) instead
 * of every other block, with one round trip per task instead of per block.
 */
export function packTasks(ranges: Iterable<Range>, max: number): Range[][] {
  const tasks: Range[][] = [];
  let cur: Range[] = [];
  let size = 0;
  for (const [a0, b] of ranges) {
    let a = a0;
    while (a < b) {
      const n = Math.min(b - a, max - size);
      cur.push([a, a + n]);
      size += n;
      a += n;
      if (size >= max) {
        tasks.push(cur);
        cur = [];
        size = 0;
      }
    }
  }
  if (cur.length > 0) tasks.push(cur);
  return tasks;
}

export { orderedWindow } from '../io/window.js';
