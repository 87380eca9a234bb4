/**
 * Field tables and the big-endian primitives every structure uses. Pure: no I/O, no node:* imports.
 */
import { VhdError, type ErrorCode } from '../errors.js';

export interface Field {
  readonly name: string;
  /** Byte offset inside the structure (the spec's offset). */
  readonly offset: number;
  readonly size: number;
}

/**
 * Builds a layout from consecutive field sizes and asserts, when the module loads, that the
 * fields tile the structure exactly (no gap, no overlap, total = `total`).
 */
export function defineLayout<const N extends string>(
  structure: string,
  total: number,
  fields: ReadonlyArray<readonly [N, number]>,
): { readonly [K in N]: Field } & { readonly $size: number } {
  const out: Record<string, Field | number> = {};
  let offset = 0;
  for (const [name, size] of fields) {
    out[name] = { name, offset, size };
    offset += size;
  }
  if (offset !== total) throw new Error(`layout ${structure}: fields add up to ${offset}, expected ${total}`);
  out.$size = total;
  return out as { readonly [K in N]: Field } & { readonly $size: number };
}

export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function readUint32BE(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3]) >>> 0;
}

export function writeUint32BE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 24;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}

export function readUint16BE(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] << 8) | bytes[offset + 1];
}

export function writeUint16BE(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 8) & 0xff;
  bytes[offset + 1] = value & 0xff;
}

export function readUint64BE(bytes: Uint8Array, offset: number): bigint {
  return (BigInt(readUint32BE(bytes, offset)) << 32n) | BigInt(readUint32BE(bytes, offset + 4));
}

export function writeUint64BE(bytes: Uint8Array, offset: number, value: bigint): void {
  writeUint32BE(bytes, offset, Number((value >> 32n) & 0xffffffffn));
  writeUint32BE(bytes, offset + 4, Number(value & 0xffffffffn));
}

/** All ones in 64 bits: the spec's "unused" data offset. */
export const UINT64_NONE = 0xffffffffffffffffn;

/**
 * Checked bigint → number conversion: anything past 2^53 is an error, never a rounding.
 */
export function toSafeNumber(value: bigint, code: ErrorCode, structure: string, field: string, offset?: number): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhdError(code, `${field} ${value} is too large (more than 2^53)`, { structure, field, offset, actual: value });
  }
  return Number(value);
}

export function ascii(bytes: Uint8Array, offset: number, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += String.fromCharCode(bytes[offset + i]);
  return s;
}

export function writeAscii(bytes: Uint8Array, offset: number, length: number, text: string): void {
  for (let i = 0; i < length; i++) bytes[offset + i] = i < text.length ? text.charCodeAt(i) & 0xff : 0;
}

/** A printable rendering of a 4- or 8-byte tag for messages ("conectix", "win ", "tap\0" → "tap\\0"). */
export function printableTag(tag: string): string {
  return tag.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`).replace(/\\x00/g, '\\0');
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export const SECTOR_SIZE = 512;
