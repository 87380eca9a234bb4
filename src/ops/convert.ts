/**
 * `convert`: any disk or chain, or a raw image, to raw, fixed or dynamic. Streams the data ranges
 * of the source (cost follows allocated data, not virtual size) through two reused page-aligned
 * buffers, reading ahead while earlier chunks are written; all-zero chunks are skipped
 * (left sparse in raw and fixed outputs, unallocated in dynamic ones). The output is written to a
 * temporary name and renamed only when complete.
 */
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import { alignRanges, totalLength } from '../disk/ranges.js';
import type { VirtualDisk } from '../disk/source.js';
import { blockSizeLike, DynamicWriter, FixedWriter, checkBlockSize, MAX_VIRTUAL_SIZE } from '../disk/writer.js';
import { alignedBuffer, isZero } from '../io/aligned.js';
import { writeAtomically } from '../io/file.js';
import type { ByteSink } from '../io/types.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { VhdImage } from '../disk/image.js';
import { guardOutputs } from '../io/paths.js';
import { holdReading, inputRoles, openAny, type OpenDiskOptions, type ReadHold, type SourceFormat } from './open.js';
import { newUuid } from './create.js';

export type TargetFormat = 'raw' | 'fixed' | 'dynamic';

export interface ConvertOptions extends OperationOptions, OpenDiskOptions {
  to: TargetFormat;
  /** Input format; `auto` (default) detects a VHD footer. */
  from?: SourceFormat;
  /** Azure-ready output: fixed VHD, virtual size rounded up to a whole MiB, Azure's limits checked. */
  azure?: boolean;
  /** Block size of a dynamic output (default: the source's, or 2 MiB). */
  blockSize?: number;
  /** Replace an existing output. */
  force?: boolean;
}

export interface ConvertResult {
  source: string;
  sourceFormat: 'vhd' | 'raw';
  output: string;
  to: TargetFormat;
  virtualSize: number;
  /** Bytes of the source's data ranges that were read. */
  bytesRead: number;
  /** Bytes of data written (zero chunks skipped). */
  bytesWritten: number;
  /** Blocks allocated in a dynamic output. */
  blocksWritten: number | null;
  seconds: number;
  warnings: Finding[];
}

const MiB = 1024 * 1024;
/** Chunk for raw and fixed outputs. */
const CHUNK = 4 * MiB;
/** Zero detection granularity of raw and fixed outputs: runs of zeros this long stay holes. */
const ZERO_GRAIN = 64 * 1024;
/** Buffers in the convert pipeline: reads run ahead of up to three writes in flight. */
const PIPELINE_DEPTH = 2;
/** Azure: a managed disk is at least 20 MiB; a page blob at most 8 TiB (VHDs stop at 2040 GiB before that). */
const AZURE_MIN_SIZE = 20 * MiB;

export function azureSize(virtualSize: number): number {
  return Math.ceil(virtualSize / MiB) * MiB;
}

export function convert(src: string, dst: string, options: ConvertOptions): Promise<ConvertResult> {
  return withCodedErrors(() => convertDisk(src, dst, options));
}

async function convertDisk(src: string, dst: string, options: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const to: TargetFormat = options.azure ? 'fixed' : options.to;
  if (options.azure && options.to !== 'fixed' && options.to !== undefined) {
    throw new VhdError(ErrorCodes.USAGE, `--azure makes a fixed VHD; it cannot be combined with --to ${options.to}`);
  }
  guardOutputs([{ path: dst, role: 'output' }], [{ path: src, role: 'input' }]);
  if (options.blockSize !== undefined) checkBlockSize(options.blockSize);
  const warnings: Finding[] = [];
  const { disk, format } = await openAny(src, options.from ?? 'auto', {
    ...options,
    onFinding: (f) => {
      warnings.push(f);
      options.onFinding?.(f);
    },
  });
  let hold: ReadHold | undefined;
  try {
    guardOutputs([{ path: dst, role: 'output' }], inputRoles(disk, src));
    hold = holdReading(disk, src, 'convert');
    const held = hold;
    let virtualSize = disk.virtualSize;
    if (options.azure) {
      virtualSize = azureSize(virtualSize);
      if (virtualSize > MAX_VIRTUAL_SIZE) {
        throw new VhdError(
          ErrorCodes.AZURE_LIMIT,
          `virtual size ${virtualSize} (rounded up to a whole MiB) exceeds the 2040 GiB a VHD can hold; Azure cannot take this disk as a VHD`,
          { file: src },
        );
      }
      if (virtualSize < AZURE_MIN_SIZE) {
        warnings.push({
          code: ErrorCodes.AZURE_LIMIT,
          severity: 'warning',
          message: `${src}: virtual size ${virtualSize} is below 20 MiB, the smallest disk Azure imports as a managed disk (a page blob is fine)`,
        });
      }
    }
    const blockSize = options.blockSize ?? blockSizeLike(disk as VhdImage);
    const counters = { read: 0, written: 0, blocks: 0 };
    await writeAtomically(
      dst,
      async (sink) => {
        if (to === 'dynamic') counters.blocks = await toDynamic(disk, sink, virtualSize, blockSize, options, counters);
        else await toFlat(disk, sink, virtualSize, to, options, counters);
        held.verify(); // what was read is what the source held throughout, or the output is not placed
      },
      { overwrite: options.force },
    );
    return {
      source: src,
      sourceFormat: format,
      output: dst,
      to,
      virtualSize,
      bytesRead: counters.read,
      bytesWritten: counters.written,
      blocksWritten: to === 'dynamic' ? counters.blocks : null,
      seconds: (performance.now() - started) / 1000,
      warnings,
    };
  } finally {
    hold?.release();
    await disk.close();
  }
}

interface Counters {
  read: number;
  written: number;
  blocks: number;
}

/**
 * Calls `consume(buffer, data, position)` for each chunk of the source's data ranges (aligned to
 * `align`, at most `unit` long). A ring of PIPELINE_DEPTH reused buffers of `unit + headroom`
 * bytes lets reads run ahead while up to PIPELINE_DEPTH - 1 consumers (writes) are still in flight;
 * `headroom` bytes before the data are left for the caller (a dynamic block's bitmap). Consumers
 * must not depend on finishing in order (positional writes, allocation at call time).
 */
async function pipeline(
  disk: VirtualDisk,
  unit: number,
  align: number,
  headroom: number,
  options: OperationOptions,
  counters: Counters,
  consume: (buffer: Uint8Array, data: Uint8Array, position: number) => Promise<void>,
): Promise<void> {
  const ranges = alignRanges(disk.dataRanges(), align, disk.virtualSize);
  const total = totalLength(ranges);
  const buffers = Array.from({ length: PIPELINE_DEPTH }, () => alignedBuffer(headroom + unit));
  const pending: Array<Promise<void>> = buffers.map(() => Promise.resolve());
  let k = 0;
  let done = 0;
  try {
    for (const [start, end] of ranges) {
      for (let pos = start; pos < end; pos += unit) {
        throwIfAborted(options.signal);
        const len = Math.min(unit, end - pos);
        const slot = k++ % PIPELINE_DEPTH;
        await pending[slot]; // this buffer's previous consumer must be done before it is reused
        const buffer = buffers[slot];
        const data = buffer.subarray(headroom, headroom + len);
        await disk.read(data, pos);
        counters.read += len;
        pending[slot] = consume(buffer, data, pos);
        pending[slot].catch(() => {}); // observed when the slot is reused or at the end
        done += len;
        options.onProgress?.({ done, total });
      }
    }
    await Promise.all(pending);
  } finally {
    await Promise.allSettled(pending);
  }
}

async function toFlat(disk: VirtualDisk, sink: ByteSink, virtualSize: number, to: 'raw' | 'fixed', options: OperationOptions, counters: Counters): Promise<void> {
  const fixed = to === 'fixed' ? await FixedWriter.create(sink, { virtualSize, uuid: newUuid() }) : undefined;
  if (!fixed) await sink.truncate(virtualSize);
  await pipeline(disk, CHUNK, ZERO_GRAIN, 0, options, counters, async (_buffer, data, pos) => {
    // Write only the non-zero runs, found at ZERO_GRAIN granularity: zeros stay holes.
    let runStart = -1;
    for (let o = 0; o < data.length; o += ZERO_GRAIN) {
      const zero = isZero(data.subarray(o, Math.min(o + ZERO_GRAIN, data.length)));
      if (!zero && runStart < 0) runStart = o;
      else if (zero && runStart >= 0) {
        await sink.write(data.subarray(runStart, o), pos + runStart);
        counters.written += o - runStart;
        runStart = -1;
      }
    }
    if (runStart >= 0) {
      await sink.write(data.subarray(runStart), pos + runStart);
      counters.written += data.length - runStart;
    }
  });
  if (fixed) await fixed.finish();
}

async function toDynamic(
  disk: VirtualDisk,
  sink: ByteSink,
  virtualSize: number,
  blockSize: number,
  options: OperationOptions,
  counters: Counters,
): Promise<number> {
  const w = await DynamicWriter.create(sink, { virtualSize, blockSize, uuid: newUuid() });
  const bitmapSize = w.bitmapSize;
  let blocks = 0;
  await pipeline(disk, blockSize, blockSize, bitmapSize, options, counters, async (buffer, data, pos) => {
    if (isZero(data)) return;
    const block = pos / blockSize;
    if (data.length === blockSize) {
      // One write: [bitmap | data] from the same buffer the data was read into.
      buffer.fill(0xff, 0, bitmapSize);
      await w.writeBlockWithBitmap(block, buffer);
    } else {
      await w.writeBlock(block, data);
    }
    counters.written += data.length;
    blocks++;
  });
  await w.finish();
  return blocks;
}
