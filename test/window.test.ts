/**
 * src/io/window.ts: the two shapes of bounded concurrency (orderedWindow, forEachBounded), against a
 * model with random task durations and failures (fast-check): never more than the width in flight,
 * every started task settled before the call returns, the first failure thrown, nothing started after
 * a failure or a stop, results taken in task order (orderedWindow).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { forEachBounded, orderedWindow } from '../src/io/window.js';

const tick = (n: number) => new Promise<void>((r) => setTimeout(r, n));

/** Tasks with a duration (ms) and whether they fail. */
const tasksArb = fc.array(fc.record({ ms: fc.integer({ min: 0, max: 3 }), fails: fc.boolean() }), { maxLength: 24 });

describe('forEachBounded', () => {
  it('property: at most `width` at once; every started task settled on return; the first failure thrown; none started after it', async () => {
    await fc.assert(
      fc.asyncProperty(tasksArb, fc.integer({ min: 1, max: 6 }), fc.boolean(), async (tasks, width, asyncSource) => {
        let running = 0;
        let peak = 0;
        const started: number[] = [];
        const settled = new Set<number>();
        let firstFailure: number | undefined;
        const run = async (i: number) => {
          expect(firstFailure, 'started after a failure was seen').toBeUndefined();
          started.push(i);
          running++;
          peak = Math.max(peak, running);
          await tick(tasks[i].ms);
          running--;
          settled.add(i);
          if (tasks[i].fails) {
            firstFailure ??= i;
            throw new Error(`task ${i}`);
          }
        };
        const indices = tasks.map((_, i) => i);
        async function* lazily() {
          for (const i of indices) yield i;
        }
        let thrown: unknown;
        let count = -1;
        try {
          count = await forEachBounded(asyncSource ? lazily() : indices, width, run);
        } catch (e) {
          thrown = e;
        }
        expect(peak).toBeLessThanOrEqual(width);
        expect(running, 'a task still ran after the call returned').toBe(0);
        expect([...settled].sort((a, b) => a - b)).toEqual([...started].sort((a, b) => a - b));
        expect(started).toEqual(started.slice().sort((a, b) => a - b)); // taken in order
        if (firstFailure === undefined) {
          expect(thrown).toBeUndefined();
          expect(count).toBe(tasks.length);
        } else {
          expect((thrown as Error).message).toBe(`task ${firstFailure}`);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('stop() and an abort end the taking; the count says how many started', async () => {
    let n = 0;
    const count = await forEachBounded([1, 2, 3, 4, 5, 6], 2, async () => void n++, { stop: () => n >= 3 });
    expect(count).toBe(3);
    const ac = new AbortController();
    const seen: number[] = [];
    const c2 = await forEachBounded([1, 2, 3, 4], 1, async (i) => {
      seen.push(i);
      if (i === 2) ac.abort();
    }, { signal: ac.signal });
    expect(seen).toEqual([1, 2]);
    expect(c2).toBe(2);
  });
});

describe('orderedWindow', () => {
  it('property: results taken in task order, at most `window` in flight, every task settled on return', async () => {
    await fc.assert(
      fc.asyncProperty(tasksArb, fc.integer({ min: 1, max: 6 }), async (tasks, window) => {
        let running = 0;
        let peak = 0;
        const taken: number[] = [];
        let thrown: unknown;
        try {
          await orderedWindow(
            tasks.map((_, i) => i),
            window,
            async (i) => {
              running++;
              peak = Math.max(peak, running);
              await tick(tasks[i].ms);
              running--;
              if (tasks[i].fails) throw new Error(`task ${i}`);
              return i;
            },
            (i, r) => {
              expect(r).toBe(i);
              taken.push(i);
            },
          );
        } catch (e) {
          thrown = e;
        }
        expect(peak).toBeLessThanOrEqual(window);
        expect(running).toBe(0);
        const firstFailure = tasks.findIndex((t) => t.fails);
        if (firstFailure < 0) {
          expect(thrown).toBeUndefined();
          expect(taken).toEqual(tasks.map((_, i) => i));
        } else {
          expect((thrown as Error).message).toBe(`task ${firstFailure}`);
          expect(taken).toEqual(tasks.slice(0, firstFailure).map((_, i) => i));
        }
      }),
      { numRuns: 60 },
    );
  });
});
