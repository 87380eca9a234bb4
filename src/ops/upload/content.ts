/**
 * What an upload sends, decided before the blob is touched: the manifest of the new content, the
 * method (full, chunks against a base's manifest, or a differencing child's own sectors), and for
 * the sectors method the child's ranges, read from its bitmaps once.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import xxhash from 'xxhash-wasm';
import { ErrorCodes, type Finding, VhdError } from '../../errors.js';
import { heldSectors } from '../../disk/chain.js';
import { VhdImage } from '../../disk/image.js';
import type { Range } from '../../disk/ranges.js';
import type { VirtualDisk } from '../../disk/source.js';
import { alignedBuffer, isZero } from '../../io/aligned.js';
import { throwIfAborted } from '../common.js';
import { DEFAULT_CHUNK_SIZE, hash, hashOpen } from '../hash.js';
import { type ChunkSource, emptyManifest, ManifestFile, manifestDigestHex } from '../manifest-file.js';
import type { BaseInfo } from './base.js';
import { collectRanges } from './plan.js';

export type UploadMethod = 'full' | 'chunks' | 'sectors';

/** What planning the content reads of the upload. */
export interface ContentInput {
  disk: VirtualDisk;
  file: string;
  format: 'vhd' | 'raw';
  options: { chunkSize?: number; workers?: number; allowedDirs?: string[]; sizeFrom?: 'footer' | 'file'; signal?: AbortSignal; onProgress?: (p: { done: number; total: number }) => void };
  /** A private folder for the manifests. */
  tmp: string;
  /** The caller's read hold on the disk's files (ops/open holdReading). */
  verify: () => void;
  warnings: Finding[];
}

/** A source file's quick identity: what changes when the file is written (size, mtime, UUID). */
export function stampOfChain(disk: VirtualDisk, from = 0, file?: string): string {
  const parts: string[] = [];
  const files = disk instanceof VhdImage ? disk.chain.slice(from).map((d) => [d.uuid, d.source.name]) : [['raw', file ?? '']];
  for (const [id, name] of files) {
    const st = fs.statSync(name);
    parts.push(`${id}:${st.size}:${Math.round(st.mtimeMs)}`);
  }
  return createHash('sha256').update(parts.join('|')).digest('hex').slice(0, 32);
}

/** What the new content is, against what: the method, both manifests and (sectors) the child's ranges. */
export interface Content {
  method: UploadMethod;
  chunkSize: number;
  digest: string;
  baseManifest: ChunkSource;
  next: ManifestFile;
  newPath: string;
  /** The sectors method: the child's sectors above the base's disk, read once. */
  sectors?: Range[];
}

export async function planContent(u: ContentInput, base: BaseInfo | undefined): Promise<Content> {
  const { disk, options, file } = u;
  const signal = options.signal;
  const chunkSize = base ? base.chunkSize : (options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  let baseManifest: ChunkSource = emptyManifest(0, chunkSize);
  const basePath = path.join(u.tmp, 'base.manifest');
  if (base) {
    if (!(await base.blob.downloadSidecar(base.manifest, basePath))) {
      throw new VhdError(ErrorCodes.BASE_INVALID, `${base.blob.name}: its hash manifest ${base.manifest} is missing; upload the base again with vhdkit`);
    }
    const m = await ManifestFile.open(basePath);
    baseManifest = m;
    if (manifestDigestHex(m.header) !== base.digest || m.header.chunkSize !== chunkSize) {
      await m.close();
      throw new VhdError(ErrorCodes.BASE_INVALID, `${base.blob.name}: its manifest ${base.manifest} does not match the digest in its metadata`);
    }
  }
  try {
    const newPath = path.join(u.tmp, 'new.manifest');
    const hashOptions = { chunkSize, workers: options.workers, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom, signal };
    let sectors: Range[] | undefined;
    const levels = base && baseManifest instanceof ManifestFile ? await sectorLevels(u, base, baseManifest, hashOptions) : undefined;
    if (levels) {
      sectors = await collectRanges(heldSectors(levels, disk.virtualSize));
      await deriveManifest(disk, basePath, sectors, newPath, signal);
    } else {
      await hashOpen(disk, file, u.format, { ...hashOptions, manifest: newPath, force: true, onProgress: options.onProgress }, u.verify);
    }
    const next = await ManifestFile.open(newPath);
    return { method: sectors ? 'sectors' : base ? 'chunks' : 'full', chunkSize, digest: manifestDigestHex(next.header), baseManifest, next, newPath, sectors };
  } catch (e) {
    if (baseManifest instanceof ManifestFile) await baseManifest.close().catch(() => {});
    throw e;
  }
}

/**
 * For a differencing child of the disk the base was uploaded from: the levels above that disk,
 * if it is still what the base holds (its quick identity unchanged, or else its hash equal).
 * Undefined: compare whole chunks instead.
 */
async function sectorLevels(u: ContentInput, base: BaseInfo, baseManifest: ManifestFile, hashOptions: Parameters<typeof hash>[1]): Promise<VhdImage[] | undefined> {
  const disk = u.disk;
  if (!(disk instanceof VhdImage) || disk.type !== 'differencing' || disk.virtualSize !== baseManifest.header.virtualSize) return undefined;
  const at = disk.chain.findIndex((d, i) => i > 0 && d.uuid === base.uuid);
  if (at <= 0) return undefined;
  if (stampOfChain(disk, at) !== base.stamp) {
    const ancestor = disk.chain[at];
    const r = await hash(ancestor.source.name, hashOptions);
    if (r.digest !== base.digest) {
      u.warnings.push({
        code: ErrorCodes.BASE_INVALID,
        severity: 'warning',
        message: `${ancestor.source.name}: differs from what base blob ${base.blob.name} holds (digest ${r.digest}, blob ${base.digest}); comparing whole chunks instead of sending the child's sectors`,
      });
      return undefined;
    }
  }
  return disk.chain.slice(0, at);
}

/**
 * The manifest of a child from its base's: a copy of the base manifest with every chunk the child's
 * sectors touch re-hashed from the chain (read on the main thread: this is the child's data only).
 */
async function deriveManifest(disk: VirtualDisk, basePath: string, ranges: Range[], out: string, signal?: AbortSignal): Promise<void> {
  fs.copyFileSync(basePath, out);
  const m = await ManifestFile.open(out, true);
  try {
    const { h64Raw } = await xxhash();
    const cs = m.header.chunkSize;
    const vs = m.header.virtualSize;
    const buf = alignedBuffer(cs);
    let last = -1;
    for (const [a, b] of ranges) {
      for (let c = Math.max(Math.floor(a / cs), last + 1); c * cs < b; c++) {
        throwIfAborted(signal);
        const view = buf.subarray(0, Math.min(cs, vs - c * cs));
        await disk.read(view, c * cs);
        const zero = isZero(view);
        await m.setChunk(c, zero ? 0n : h64Raw(view, 0n), zero);
        last = c;
      }
    }
    await m.finish();
  } finally {
    await m.close();
  }
}

