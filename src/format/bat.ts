/**
 * The block allocation table: big-endian uint32 sector offsets, 0xFFFFFFFF = unallocated.
 * In memory it is a Uint32Array in host order, converted once.
 */
export const BAT_UNUSED = 0xffffffff;

export function decodeBat(bytes: Uint8Array, entries: number): Uint32Array {
  const bat = new Uint32Array(entries);
  const be = new DataView(bytes.buffer, bytes.byteOffset, entries * 4);
  for (let i = 0; i < entries; i++) bat[i] = be.getUint32(i * 4);
  return bat;
}

/** Bytes the BAT occupies on disk: entries × 4 rounded up to a whole sector. */
export function batByteSize(entries: number): number {
  return Math.ceil((entries * 4) / 512) * 512;
}

/** Encodes the BAT, padded to a whole sector with 0xFF. */
export function encodeBat(bat: Uint32Array): Uint8Array {
  const bytes = new Uint8Array(batByteSize(bat.length)).fill(0xff);
  for (let i = 0, o = 0; i < bat.length; i++, o += 4) {
    const v = bat[i];
    bytes[o] = v >>> 24;
    bytes[o + 1] = (v >>> 16) & 0xff;
    bytes[o + 2] = (v >>> 8) & 0xff;
    bytes[o + 3] = v & 0xff;
  }
  return bytes;
}

/** Runs of consecutive allocated entries: calls `fn(firstBlock, endBlockExclusive)` for each. */
export function forEachAllocatedRun(bat: Uint32Array, fn: (first: number, end: number) => void, from = 0, to = bat.length): void {
  let i = from;
  while (i < to) {
    while (i < to && bat[i] === BAT_UNUSED) i++;
    if (i >= to) break;
    const start = i;
    while (i < to && bat[i] !== BAT_UNUSED) i++;
    fn(start, i);
  }
}

export function countAllocated(bat: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== BAT_UNUSED) n++;
  return n;
}
