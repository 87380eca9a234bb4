import { Buffer } from 'node:buffer';

/**
 * Page-aligned buffers. A WebAssembly memory is mapped at a page boundary, so every multiple of
 * 4096 inside it is page aligned too — unlike Buffer.allocUnsafe, whose large allocations start
 * 16 bytes past a page. Kernel copies into page-aligned user buffers are the fastest.
 */
const WASM_PAGE = 65536;

// Node's type definitions for this version do not declare the WebAssembly global.
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum?: number }) => { buffer: ArrayBuffer };
};

export function alignedBuffer(size: number): Uint8Array {
  if (size === 0) return new Uint8Array(0);
  const pages = Math.ceil(size / WASM_PAGE);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
  return new Uint8Array(memory.buffer, 0, size);
}

const ZEROS = Buffer.alloc(65536);

/** True when every byte is zero. Compares against a zero buffer with memcmp (tens of GiB/s). */
export function isZero(bytes: Uint8Array): boolean {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let o = 0; o < b.length; o += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - o);
    if (b.compare(ZEROS, 0, n, o, o + n) !== 0) return false;
  }
  return true;
}
