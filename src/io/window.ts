/**
 * Bounded concurrency, once: a window of tasks in flight whose results are taken in task order. Every
 * loop with a limit (pool tasks, BAT writes, page writes) goes through it.
 */
import { throwIfAborted } from '../errors.js';

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

