/** Sizes on the command line: bytes, or a number with a binary suffix (512K, 64M, 10G, 1T; KiB/MiB too). */
import { ErrorCodes, VhdError } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw new VhdError(ErrorCodes.USAGE, `${what} must be a whole number of bytes, got ${text}`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new VhdError(ErrorCodes.USAGE, `${what} "${text}" is not a size (use bytes or a suffix: 512K, 64M, 10G, 1T)`);
  const value = Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (!Number.isSafeInteger(value)) throw new VhdError(ErrorCodes.USAGE, `${what} "${text}" is not a whole number of bytes`);
  return value;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} B` : `${v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, '')} ${units[u]}`;
}
