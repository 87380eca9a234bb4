/**
 * xxh64 hashing in place. xxhash-wasm's public `h64Raw` copies every input into its own WebAssembly
 * memory before hashing. Here the same WebAssembly module (the one the xxhash-wasm package ships)
 * is instantiated directly, the worker's read buffer is carved out of that module's memory (a
 * WebAssembly memory is page aligned), and chunks are hashed where the read left them: no copy.
 * The kernel checks itself against the package's public API when it loads, and callers fall back to
 * `h64Raw` when the module cannot be found or disagrees.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import xxhash from 'xxhash-wasm';
import { alignedBuffer } from '../io/aligned.js';

// Node's type definitions for this version do not declare the WebAssembly global.
declare const WebAssembly: {
  instantiate(bytes: Uint8Array): Promise<{ instance: { exports: Record<string, unknown> } }>;
};

export interface HashKernel {
  /** The read buffer: hash its bytes in place with `hashAt`. */
  readonly buffer: Uint8Array;
  /** xxh64 (seed 0) of buffer[offset, offset + length). */
  hashAt(offset: number, length: number): bigint;
  /** True when hashing happens in place (the fast path). */
  readonly inPlace: boolean;
}

const WASM_PAGE = 65536;

async function loadModuleBytes(): Promise<Uint8Array | undefined> {
  try {
    const file = createRequire(import.meta.url).resolve('xxhash-wasm');
    const text = fs.readFileSync(file, 'utf8');
    const m = /new Uint8Array\(\[([0-9,\s]+)\]\)/.exec(text);
    if (!m) return undefined;
    return Uint8Array.from(m[1].split(',').map((x) => Number(x.trim())));
  } catch {
    return undefined;
  }
}

/** A kernel whose buffer holds `size` bytes. */
export async function hashKernel(size: number): Promise<HashKernel> {
  const api = await xxhash();
  const fallback = (): HashKernel => {
    const buffer = alignedBuffer(size);
    return { buffer, inPlace: false, hashAt: (o, n) => api.h64Raw(buffer.subarray(o, o + n)) };
  };
  const bytes = await loadModuleBytes();
  if (!bytes) return fallback();
  try {
    const { instance } = await WebAssembly.instantiate(bytes);
    const mem = instance.exports.mem as { buffer: ArrayBuffer; grow(pages: number): number } | undefined;
    const xxh64 = instance.exports.xxh64 as ((ptr: number, len: number, seed: bigint) => bigint) | undefined;
    if (!mem || typeof xxh64 !== 'function') return fallback();
    // The buffer starts one page in (the module may use the start of its memory for itself).
    const need = WASM_PAGE + size;
    if (mem.buffer.byteLength < need) mem.grow(Math.ceil((need - mem.buffer.byteLength) / WASM_PAGE));
    const buffer = new Uint8Array(mem.buffer, WASM_PAGE, size);
    const kernel: HashKernel = { buffer, inPlace: true, hashAt: (o, n) => BigInt.asUintN(64, xxh64(WASM_PAGE + o, n, 0n)) };
    // Self-check against the public API on a few lengths (tails of every size class).
    for (const n of [0, 1, 7, 31, 32, 100, 4096, 65536]) {
      if (n > size) break;
      for (let i = 0; i < n; i++) buffer[i] = (i * 131 + n) & 0xff;
      if (kernel.hashAt(0, n) !== api.h64Raw(buffer.subarray(0, n))) return fallback();
    }
    return kernel;
  } catch {
    return fallback();
  }
}

