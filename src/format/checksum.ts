/**
 * VHD checksum: the one's complement of the sum of all bytes of the structure, with the checksum
 * field itself taken as zero.
 */
import type { Field } from './layout.js';

export function vhdChecksum(bytes: Uint8Array, checksumField: Field): number {
  let sum = 0;
  const skipFrom = checksumField.offset;
  const skipTo = checksumField.offset + checksumField.size;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= skipFrom && i < skipTo) continue;
    sum = (sum + bytes[i]) >>> 0;
  }
  return ~sum >>> 0;
}
