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

/** True when every byte is zero; compares 32-bit words where the view is aligned. */
export function isZero(bytes: Uint8Array): boolean {
  let i = 0;
  const n = bytes.length;
  while (i < n && ((bytes.byteOffset + i) & 3) !== 0) if (bytes[i++] !== 0) return false;
  const words = (n - i) >>> 2;
  if (words > 0) {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset + i, words);
    for (let k = 0; k < words; k++) if (u[k] !== 0) return false;
    i += words * 4;
  }
  for (; i < n; i++) if (bytes[i] !== 0) return false;
  return true;
}
