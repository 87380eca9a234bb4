/**
 * The plan of an upload: the page writes and clears that turn what the blob holds into the new
 * content, in ascending offset order (pure: it reads manifests and ranges, never the blob).
 */
import type { Range } from '../../disk/ranges.js';
import { MAX_PAGE_WRITE } from '../../azure/pageblob.js';
import { type ChunkSource, WINDOW_CHUNKS } from '../manifest-file.js';

/** Azure's page writes are at most 4 MiB; clears have no such limit, but keep each request modest. */
const MAX_CLEAR = 1024 * 1024 * 1024;

/** One step of the plan, in ascending offset order. */
export interface Op {
  kind: 'write' | 'clear' | 'footer';
  start: number;
  end: number;
}

/**
 * The plan of a chunk comparison: for each chunk, what the blob holds before (the base's chunk, or
 * zeros) and what it must hold after. Chunks past the base's content but inside the base blob (its
 * footer, the partial tail) hold unknown bytes: they are written or cleared whatever their hash.
 * Adjacent writes coalesce up to 4 MiB, adjacent clears up to MAX_CLEAR.
 */
export async function* chunkPlan(next: ChunkSource, base: ChunkSource, baseBlobSize: number, from: number): AsyncGenerator<Op> {
  const cs = next.header.chunkSize;
  const chunks = next.header.chunks;
  const vs = next.header.virtualSize;
  const baseVs = base.header.virtualSize;
  let pending: Op | undefined;
  for (let first = Math.floor(from / cs); first < chunks; first += WINDOW_CHUNKS) {
    const n = Math.min(WINDOW_CHUNKS, chunks - first);
    const [a, b] = await Promise.all([next.window(first, n), base.window(first, n)]);
    for (let i = 0; i < n; i++) {
      const start = (first + i) * cs;
      const end = Math.min(vs, start + cs);
      // What the blob holds here before this upload writes anything:
      const known = end <= baseVs && i < b.hashes.length; // the base's chunk, hash known
      const zeroBefore = known ? b.zero[i] === 1 : start >= baseBlobSize; // past the base blob: zeros
      let kind: Op['kind'] | undefined;
      if (a.zero[i]) kind = zeroBefore ? undefined : 'clear';
      else kind = known && !zeroBefore && a.hashes[i] === b.hashes[i] ? undefined : 'write';
      if (!kind) continue;
      const s = Math.max(start, from);
      if (s >= end) continue;
      const limit = kind === 'write' ? MAX_PAGE_WRITE : MAX_CLEAR;
      if (pending && pending.kind === kind && pending.end === s && end - pending.start <= limit) pending.end = end;
      else {
        if (pending) yield pending;
        pending = { kind, start: s, end };
      }
    }
  }
  if (pending) yield pending;
}

/** The plan of a differencing child: its own sectors, in pieces of at most 4 MiB on 4 MiB boundaries. */
export async function* sectorPlan(ranges: Iterable<Range> | AsyncIterable<Range>, from: number): AsyncGenerator<Op> {
  for await (const [a, b] of ranges) {
    let s = Math.max(a, from);
    while (s < b) {
      const e = Math.min(b, (Math.floor(s / MAX_PAGE_WRITE) + 1) * MAX_PAGE_WRITE);
      yield { kind: 'write', start: s, end: e };
      s = e;
    }
  }
}

/** The end of every plan: zeros past the source's end (where a base held data), then the footer. */
export async function* withTail(body: AsyncGenerator<Op>, tail: Op[], from: number): AsyncGenerator<Op> {
  yield* body;
  for (const op of tail) if (op.end > from) yield { ...op, start: Math.max(op.start, from) };
}

/** Bytes per kind in the whole plan, and how many of them lie at or past `from` (what a resumed run sends). */
export async function planTotals(ops: AsyncGenerator<Op>, from: number): Promise<{ write: number; clear: number; footer: number; remaining: number }> {
  const t = { write: 0, clear: 0, footer: 0, remaining: 0 };
  for await (const op of ops) {
    t[op.kind] += op.end - op.start;
    if (op.end > from) t.remaining += op.end - Math.max(op.start, from);
  }
  return t;
}

/** Every range of `ranges`, in order (the sectors method reads a child's bitmaps once, then plans from this). */
export async function collectRanges(ranges: AsyncIterable<Range>): Promise<Range[]> {
  const out: Range[] = [];
  for await (const r of ranges) out.push(r);
  return out;
}
