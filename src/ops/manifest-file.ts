/**
 * A hash manifest file (layout in src/format/manifest.ts) read and updated in windows, so that a
 * manifest of a 2 TiB disk (hundreds of MiB) never has to be in memory at once.
 */
import xxhash from 'xxhash-wasm';
import { decodeManifestHeader, encodeManifestHeader, type ManifestHeader, manifestSize } from '../format/manifest.js';
import { FileSink } from '../io/file.js';

/** Chunks per window: 1 Mi chunks = 8 MiB of hashes. */
export const WINDOW_CHUNKS = 1 << 20;

export interface ManifestWindow {
  first: number;
  hashes: BigUint64Array;
  /** 1 where the chunk is all zeros. */
  zero: Uint8Array;
}

/** What a chunk-by-chunk comparison needs of a manifest: windows of hashes and zero flags. */
export interface ChunkSource {
  readonly header: ManifestHeader;
  window(first: number, count: number): Promise<ManifestWindow>;
}

export class ManifestFile implements ChunkSource {
  private constructor(
    readonly file: FileSink,
    public header: ManifestHeader,
  ) {}

  static async open(path: string, writable = false): Promise<ManifestFile> {
    const file = await FileSink.open(path, writable ? 'r+' : 'r');
    try {
      const head = new Uint8Array(64);
      await file.read(head.subarray(0, Math.min(64, file.size)), 0);
      return new ManifestFile(file, decodeManifestHeader(head, file.size));
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  get flagsOffset(): number {
    return 64 + this.header.chunks * 8;
  }

  async window(first: number, count: number): Promise<ManifestWindow> {
    const n = Math.max(0, Math.min(count, this.header.chunks - first));
    const bytes = new Uint8Array(n * 8);
    if (n > 0) await this.file.read(bytes, 64 + first * 8);
    const hashes = new BigUint64Array(bytes.buffer, 0, n);
    const zero = new Uint8Array(n);
    if (n > 0) {
      const lo = first >>> 3;
      const hi = (first + n - 1) >>> 3;
      const flags = new Uint8Array(hi - lo + 1);
      await this.file.read(flags, this.flagsOffset + lo);
      for (let i = 0; i < n; i++) {
        const c = first + i;
        zero[i] = (flags[(c >>> 3) - lo] >>> (c & 7)) & 1;
      }
    }
    return { first, hashes, zero };
  }

  /** Sets one chunk's hash and zero flag (the header is stale until `finish`). */
  async setChunk(index: number, hash: bigint, zero: boolean): Promise<void> {
    const lane = new BigUint64Array([zero ? 0n : hash]);
    await this.file.write(new Uint8Array(lane.buffer), 64 + index * 8);
    const flag = new Uint8Array(1);
    await this.file.read(flag, this.flagsOffset + (index >>> 3));
    flag[0] = zero ? flag[0] | (1 << (index & 7)) : flag[0] & ~(1 << (index & 7));
    await this.file.write(flag, this.flagsOffset + (index >>> 3));
  }

  /** Recomputes the digest and the zero count from the chunks and rewrites the header. */
  async finish(): Promise<ManifestHeader> {
    const { create64 } = await xxhash();
    const digest = create64(0n);
    const head = new Uint8Array(12);
    const hv = new DataView(head.buffer);
    hv.setBigUint64(0, BigInt(this.header.virtualSize), true);
    hv.setUint32(8, this.header.chunkSize, true);
    digest.update(head);
    let zeroChunks = 0;
    for (let first = 0; first < this.header.chunks; first += WINDOW_CHUNKS) {
      const w = await this.window(first, WINDOW_CHUNKS);
      const records = new Uint8Array(w.hashes.length * 16);
      const rv = new DataView(records.buffer);
      let k = 0;
      for (let i = 0; i < w.hashes.length; i++) {
        if (w.zero[i]) {
          zeroChunks++;
          continue;
        }
        rv.setBigUint64(k, BigInt(first + i), true);
        rv.setBigUint64(k + 8, w.hashes[i], true);
        k += 16;
      }
      digest.update(records.subarray(0, k));
    }
    this.header = { ...this.header, digest: digest.digest(), zeroChunks };
    await this.file.write(encodeManifestHeader(this.header), 0);
    await this.file.sync();
    return this.header;
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

/** The manifest of an empty disk of `virtualSize` bytes: every chunk zero. */
export function emptyManifest(virtualSize: number, chunkSize: number): ChunkSource {
  const chunks = Math.ceil(virtualSize / chunkSize);
  return {
    header: { chunkSize, virtualSize, chunks, digest: 0n, zeroChunks: chunks },
    async window(first, count) {
      const n = Math.max(0, Math.min(count, chunks - first));
      return { first, hashes: new BigUint64Array(n), zero: new Uint8Array(n).fill(1) };
    },
  };
}

export function manifestDigestHex(h: ManifestHeader): string {
  return h.digest.toString(16).padStart(16, '0');
}

export { manifestSize };
