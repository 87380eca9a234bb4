/**
 * `hash`: per-chunk xxh64 hashes of the virtual content and one content digest, on the worker pool.
 * The main thread turns the data ranges of the disk (or chain) into tasks of TASK_BYTES, keeps a
 * bounded window of them in flight, and folds results into the digest in order; chunks outside the
 * data ranges are zero without being read. With `manifest`, the hashes go to a sparse file written
 * at positions as results arrive, renamed into place at the end.
 */
import xxhash from 'xxhash-wasm';
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import { alignRanges, totalLength, type Range } from '../disk/ranges.js';
import type { VirtualDisk } from '../disk/source.js';
import { encodeManifestHeader, manifestSize } from '../format/manifest.js';
import { writeAtomically, type FileSink } from '../io/file.js';
import { checkWorkers, poolFor } from '../pool/pool.js';
import { type DiskRef, type HashTask, type HashTaskResult, READ_UNIT } from '../pool/tasks.js';
import { orderedWindow, packTasks, TASK_BYTES } from '../pool/schedule.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { guardOutputs } from '../io/paths.js';
import { holdReading, inputRoles, openAny, type OpenDiskOptions, type ReadHold, type SourceFormat } from './open.js';

export const DEFAULT_CHUNK_SIZE = 64 * 1024;
/** The largest chunk: 4 MiB, Azure's largest page write (and at most one read buffer). */
export const MAX_CHUNK_SIZE = Math.min(READ_UNIT, 4 * 1024 * 1024);

export interface HashOptions extends OperationOptions, OpenDiskOptions {
  chunkSize?: number;
  /** Worker threads (default: the cores); 0 hashes on the main thread. */
  workers?: number;
  /** Write the binary hash manifest to this file. */
  manifest?: string;
  /** Replace an existing manifest file. */
  force?: boolean;
  from?: SourceFormat;
}

export interface HashResult {
  file: string;
  /** Content digest, 16 hex digits. */
  digest: string;
  chunkSize: number;
  chunks: number;
  zeroChunks: number;
  virtualSize: number;
  /** Bytes actually read (the data ranges). */
  bytesRead: number;
  workers: number;
  seconds: number;
  manifest: string | null;
  warnings: Finding[];
}

export function hash(file: string, options: HashOptions = {}): Promise<HashResult> {
  return withCodedErrors(() => hashDisk(file, options));
}

/**
 * `hash` of a disk the caller has open and holds read marks on (`verify` is its hold's): the same
 * result, without opening the chain again (upload hashes the disk it sends).
 */
export function hashOpen(disk: VirtualDisk, file: string, format: 'vhd' | 'raw', options: HashOptions, verify: () => void): Promise<HashResult> {
  return withCodedErrors(async () => {
    const started = performance.now();
    const chunkSize = checkChunkSize(options.chunkSize);
    checkWorkers(options.workers);
    if (options.manifest !== undefined) guardOutputs([{ path: options.manifest, role: 'manifest' }], inputRoles(disk, file));
    const ranges = alignRanges(disk.dataRanges(), chunkSize, disk.virtualSize);
    return hashRanges(file, options, { format, virtualSize: disk.virtualSize, ranges, chunkSize, warnings: [], started, verify });
  });
}

function checkChunkSize(size: number | undefined): number {
  const chunkSize = size ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(Math.log2(chunkSize)) || chunkSize < 512 || chunkSize > MAX_CHUNK_SIZE) {
    throw new VhdError(ErrorCodes.USAGE, `chunk size ${chunkSize} must be a power of two from 512 bytes to 4 MiB`);
  }
  return chunkSize;
}

async function hashDisk(file: string, options: HashOptions): Promise<HashResult> {
  const started = performance.now();
  const chunkSize = checkChunkSize(options.chunkSize);
  const warnings: Finding[] = [];
  checkWorkers(options.workers);
  const manifestRole = { path: options.manifest ?? '', role: 'manifest' };
  if (options.manifest !== undefined) guardOutputs([manifestRole], [{ path: file, role: 'input' }]);
  const { disk, format } = await openAny(file, options.from ?? 'auto', { ...options, onFinding: (f) => warnings.push(f) });
  let virtualSize: number;
  let ranges: Range[];
  // The workers read the files themselves: the read marks stay until the last task is done.
  let hold: ReadHold;
  try {
    if (options.manifest !== undefined) guardOutputs([manifestRole], inputRoles(disk, file));
    hold = holdReading(disk, file, 'hash');
    virtualSize = disk.virtualSize;
    ranges = alignRanges(disk.dataRanges(), chunkSize, virtualSize);
  } finally {
    await disk.close();
  }
  try {
    return await hashRanges(file, options, { format, virtualSize, ranges, chunkSize, warnings, started, verify: () => hold.verify() });
  } finally {
    hold.release();
  }
}

async function hashRanges(
  file: string,
  options: HashOptions,
  o: { format: 'vhd' | 'raw'; virtualSize: number; ranges: Range[]; chunkSize: number; warnings: Finding[]; started: number; verify: () => void },
): Promise<HashResult> {
  const { format, virtualSize, ranges, chunkSize, warnings, started } = o;
  const ref: DiskRef = { file, format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom };
  const chunks = Math.ceil(virtualSize / chunkSize);
  const total = totalLength(ranges);
  const pool = poolFor(total, { workers: options.workers });
  // Tasks of TASK_BYTES of data (a multiple of every chunk size), small ranges packed together.
  const tasks = packTasks(ranges, TASK_BYTES).map((rs): HashTask => ({ disk: ref, chunkSize, ranges: rs }));

  const { create64 } = await xxhash();
  const digest = create64(0n);
  const head = new Uint8Array(12);
  const hv = new DataView(head.buffer);
  hv.setBigUint64(0, BigInt(virtualSize), true);
  hv.setUint32(8, chunkSize, true);
  digest.update(head);

  // Zero flags for every chunk, set by default: chunks outside the data ranges are zero unread.
  const zeroFlags = new Uint8Array(Math.ceil(chunks / 8)).fill(0xff);
  if (chunks % 8 !== 0) zeroFlags[zeroFlags.length - 1] = (1 << (chunks % 8)) - 1;
  let zeroChunks = chunks;
  let done = 0;
  let bytesRead = 0;

  const fold = async (task: HashTask, r: HashTaskResult, sink?: FileSink) => {
    let i = 0;
    for (const [start, end] of task.ranges) {
      const first = start / chunkSize;
      const n = Math.ceil((end - start) / chunkSize);
      const records = new Uint8Array(n * 16);
      const rv = new DataView(records.buffer);
      let k = 0;
      for (let c = 0; c < n; c++) {
        if (r.zero[i + c]) continue;
        const index = first + c;
        zeroFlags[index >>> 3] &= ~(1 << (index & 7));
        zeroChunks--;
        rv.setBigUint64(k, BigInt(index), true);
        rv.setBigUint64(k + 8, r.hashes[i + c], true);
        k += 16;
      }
      digest.update(records.subarray(0, k));
      if (sink && k > 0) {
        // Zero chunks were never hashed: their lanes are 0, as the format wants. The lanes are host
        // order, and the manifest little endian: every platform Node supports is little endian.
        await sink.write(new Uint8Array(r.hashes.buffer, r.hashes.byteOffset + i * 8, n * 8), 64 + first * 8);
      }
      i += n;
      done += end - start;
    }
    bytesRead += r.bytes;
    options.onProgress?.({ done, total });
  };

  const run = async (sink?: FileSink) => {
    if (sink) await sink.truncate(manifestSize(chunks));
    await orderedWindow(tasks, pool.concurrency, (t) => pool.hash(t, options.signal), (t, r) => fold(t, r, sink), options.signal);
    const value = digest.digest();
    throwIfAborted(options.signal);
    o.verify(); // what was hashed is what the disk held throughout, or no digest (and no manifest)
    if (sink) {
      await sink.write(zeroFlags, 64 + chunks * 8);
      await sink.write(encodeManifestHeader({ chunkSize, virtualSize, chunks, digest: value, zeroChunks }), 0);
    }
    return value;
  };
  const value = options.manifest ? await writeAtomically(options.manifest, run, { overwrite: options.force }) : await run();
  return {
    file,
    digest: value.toString(16).padStart(16, '0'),
    chunkSize,
    chunks,
    zeroChunks,
    virtualSize,
    bytesRead,
    workers: pool.workers,
    seconds: (performance.now() - started) / 1000,
    manifest: options.manifest ?? null,
    warnings,
  };
}
