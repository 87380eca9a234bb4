/** Half-open byte ranges [start, end), sorted and coalesced. */
export type Range = [start: number, end: number];

/** Sorts and merges overlapping or touching ranges; drops empty ones. */
export function normalizeRanges(ranges: Range[]): Range[] {
  const sorted = ranges.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Range[] = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) {
      if (b > last[1]) last[1] = b;
    } else out.push([a, b]);
  }
  return out;
}

/** Union of several already normalised lists. */
export function unionRanges(...lists: Range[][]): Range[] {
  return normalizeRanges(lists.flat().map(([a, b]) => [a, b] as Range));
}

export function clipRanges(ranges: Range[], limit: number): Range[] {
  const out: Range[] = [];
  for (const [a, b] of ranges) {
    if (a >= limit) break;
    out.push([a, Math.min(b, limit)]);
  }
  return out;
}

export function totalLength(ranges: Range[]): number {
  let n = 0;
  for (const [a, b] of ranges) n += b - a;
  return n;
}

/** Expands every range outward to multiples of `unit` and merges again. */
export function alignRanges(ranges: Range[], unit: number, limit: number): Range[] {
  return normalizeRanges(ranges.map(([a, b]) => [Math.floor(a / unit) * unit, Math.min(limit, Math.ceil(b / unit) * unit)] as Range));
}

/** Ranges of `a` not in `b` (both sorted, coalesced). */
export function subtractRanges(a: Range[], b: Range[]): Range[] {
  const out: Range[] = [];
  let j = 0;
  for (const [s0, e] of a) {
    let s = s0;
    while (j < b.length && b[j][1] <= s) j++;
    let k = j;
    while (s < e) {
      if (k >= b.length || b[k][0] >= e) {
        out.push([s, e]);
        break;
      }
      if (b[k][0] > s) out.push([s, b[k][0]]);
      s = Math.max(s, b[k][1]);
      k++;
    }
  }
  return out;
}
