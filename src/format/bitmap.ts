/**
 * Sector bitmaps: one bit per 512-byte sector of a block, most significant bit first,
 * padded to a whole sector.
 */
export function bitmapByteSize(blockSize: number): number {
  const sectors = blockSize / 512;
  return Math.ceil(Math.ceil(sectors / 8) / 512) * 512;
}

export function testBit(bitmap: Uint8Array, sector: number): boolean {
  return (bitmap[sector >>> 3] & (0x80 >>> (sector & 7))) !== 0;
}

export function setBit(bitmap: Uint8Array, sector: number): void {
  bitmap[sector >>> 3] |= 0x80 >>> (sector & 7);
}

/** Sets bits [start, end). */
export function setBits(bitmap: Uint8Array, start: number, end: number): void {
  let s = start;
  while (s < end && (s & 7) !== 0) setBit(bitmap, s++);
  while (s + 8 <= end) {
    bitmap[s >>> 3] = 0xff;
    s += 8;
  }
  while (s < end) setBit(bitmap, s++);
}

/** First sector ≥ `from` and < `to` whose bit equals `value`, or `to`. Skips whole bytes. */
export function findBit(bitmap: Uint8Array, from: number, to: number, value: boolean): number {
  const skip = value ? 0x00 : 0xff;
  let s = from;
  while (s < to) {
    if ((s & 7) === 0 && s + 8 <= to && bitmap[s >>> 3] === skip) {
      s += 8;
      continue;
    }
    if (testBit(bitmap, s) === value) return s;
    s++;
  }
  return to;
}

/**
 * Calls `fn(start, end, present)` for each maximal run of equal bits over sectors [from, to).
 */
export function forEachBitRun(
  bitmap: Uint8Array,
  from: number,
  to: number,
  fn: (start: number, end: number, present: boolean) => void,
): void {
  let s = from;
  while (s < to) {
    const present = testBit(bitmap, s);
    const end = findBit(bitmap, s + 1, to, !present);
    fn(s, end, present);
    s = end;
  }
}

/** True when every bit in [from, to) is set. */
export function allSet(bitmap: Uint8Array, from: number, to: number): boolean {
  return findBit(bitmap, from, to, false) === to;
}
