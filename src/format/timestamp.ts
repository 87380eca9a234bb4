/** VHD time stamps: seconds since 2000-01-01T00:00:00Z, as an unsigned 32-bit number. */

export const VHD_EPOCH_MS = Date.UTC(2000, 0, 1);

export function vhdTimestampToDate(seconds: number): Date {
  return new Date(VHD_EPOCH_MS + seconds * 1000);
}

export function dateToVhdTimestamp(date: Date): number {
  const s = Math.floor((date.getTime() - VHD_EPOCH_MS) / 1000);
  if (s < 0) return 0;
  return Math.min(s, 0xffffffff) >>> 0;
}
