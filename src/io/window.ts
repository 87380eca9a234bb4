/**
 * Bounded concurrency, once, in its two shapes: a window of tasks in flight whose results are taken
 * in task order (orderedWindow: pool tasks, BAT writes), and lanes that each take the next item, in
 * no order (forEachBounded: page writes and reads of an upload, merges of a batch). Every loop with a
 * limit goes through one of them.
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


/**
 * Runs `run` over `items` (taken lazily, in order) with at most `width` at once, in no order: the
 * shape of lanes that each take the next item. Stops taking items once one has failed, `stop()`
 * holds or `signal` is aborted; returns only once every started item has settled, then throws the
 * first failure. Returns how many items were started.
 */
export async function forEachBounded<T>(
  items: Iterable<T> | AsyncIterable<T>,
  width: number,
  run: (item: T) => Promise<void>,
  o: { stop?: () => boolean; signal?: AbortSignal } = {},
): Promise<number> {
  const inFlight = new Set<Promise<void>>();
  let failed = false;
  let failure: unknown;
  let started = 0;
  const halted = () => failed || o.stop?.() === true || o.signal?.aborted === true;
  try {
    for await (const item of items) {
      if (halted()) break;
      while (inFlight.size >= width) await Promise.race(inFlight);
      if (halted()) break;
      started++;
      const p: Promise<void> = run(item).then(
        () => {},
        (e) => {
          if (!failed) failure = e;
          failed = true;
        },
      );
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
    }
  } finally {
    await Promise.allSettled(inFlight);
  }
  if (failed) throw failure;
  return started;
}
