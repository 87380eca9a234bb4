/**
 * Sending a plan to the blob and reading the blob back: bounded requests in flight, a watermark
 * below which everything has landed, and a chunk-by-chunk check against the manifest.
 */
import xxhash from 'xxhash-wasm';
import { ErrorCodes, VhdError } from '../../errors.js';
import { normalizeRanges, type Range } from '../../disk/ranges.js';
import type { VirtualDisk } from '../../disk/source.js';
import { alignedBuffer, isZero } from '../../io/aligned.js';
import { forEachBounded } from '../../io/window.js';
import { MAX_PAGE_WRITE, type PageBlob } from '../../azure/pageblob.js';
import { throwIfAborted } from '../common.js';
import { type ManifestFile, WINDOW_CHUNKS } from '../manifest-file.js';
import type { Op } from './plan.js';

/** How often the watermark is saved: local journal / blob metadata. */
const JOURNAL_EVERY_MS = 1000;
const METADATA_EVERY_MS = 5000;

export interface SendOptions {
  disk: VirtualDisk;
  blob: PageBlob;
  footer: Uint8Array;
  concurrency: number;
  signal?: AbortSignal;
  total: number;
  onProgress?: (p: { done: number; total: number }) => void;
  /** Saves the watermark: to the local journal always, to the blob's metadata when `toBlob`. */
  saveWatermark: (done: number, toBlob: boolean) => Promise<void>;
}

/**
 * Runs the plan with `concurrency` requests in flight and a bounded set of 4 MiB buffers. The
 * watermark is the start of the oldest operation still in flight or failed (or the end of the
 * last one issued): everything below it has landed.
 */
export async function send(plan: AsyncGenerator<Op>, o: SendOptions): Promise<void> {
  const free: Uint8Array[] = [];
  const starts = new Set<number>();
  let issuedEnd = -1;
  let done = 0;
  let failure: unknown;
  let lastJournal = performance.now();
  let lastMeta = performance.now();
  let savingMeta: Promise<void> | undefined;

  const watermark = (): number => (starts.size > 0 ? Math.min(...starts) : issuedEnd);

  const maybeSave = () => {
    const now = performance.now();
    if (now - lastJournal < JOURNAL_EVERY_MS) return;
    lastJournal = now;
    const mark = watermark();
    if (mark < 0) return;
    const toBlob = now - lastMeta >= METADATA_EVERY_MS && !savingMeta;
    if (toBlob) lastMeta = now;
    const p = o.saveWatermark(mark, toBlob).catch((e) => {
      failure ??= e;
    });
    if (toBlob) savingMeta = p.finally(() => (savingMeta = undefined));
  };

  const runOp = async (op: Op): Promise<void> => {
    const length = op.end - op.start;
    if (op.kind === 'clear') {
      await o.blob.clearPages(op.start, length);
    } else if (op.kind === 'footer') {
      await o.blob.writePages(o.footer, op.start);
    } else {
      const buffer = free.pop() ?? alignedBuffer(MAX_PAGE_WRITE);
      try {
        const view = buffer.subarray(0, length);
        await o.disk.read(view, op.start);
        if (isZero(view)) {
          await o.blob.clearPages(op.start, length);
        } else {
          await o.blob.writePages(view, op.start);
        }
      } finally {
        free.push(buffer);
      }
    }
    done += length;
    o.onProgress?.({ done, total: o.total });
  };

  const issue = async (op: Op): Promise<void> => {
    starts.add(op.start);
    issuedEnd = op.end;
    try {
      await runOp(op);
      // A failed (or aborted) operation keeps its start in `starts`: the watermark saved from here
      // on stays below it, so a rerun sends it again.
      starts.delete(op.start);
    } finally {
      maybeSave();
    }
  };
  try {
    await forEachBounded(plan, o.concurrency, issue, { stop: () => failure !== undefined, signal: o.signal });
  } catch (e) {
    failure ??= e;
  }
  await savingMeta;
  if (failure) throw failure;
  throwIfAborted(o.signal);
  if (issuedEnd >= 0) await o.saveWatermark(issuedEnd, false);
}

/**
 * Reads the blob back and compares it with the manifest chunk by chunk: every chunk that should hold
 * data, and every page range the blob reports (which must then hold what the manifest says, or
 * zeros past the source's end), is downloaded and hashed; the footer must match byte for byte.
 */
export async function verifyBlob(
  blob: PageBlob,
  manifest: ManifestFile,
  footer: Uint8Array,
  virtualSize: number,
  concurrency: number,
  signal?: AbortSignal,
): Promise<boolean> {
  const { h64Raw } = await xxhash();
  const cs = manifest.header.chunkSize;
  const vs = manifest.header.virtualSize;
  const pages = await blob.pageRanges(0, virtualSize);
  // Window by window (bounded memory for any disk size): the chunks that should hold data, and
  // those where the blob reports pages.
  const windowBytes = WINDOW_CHUNKS * cs;
  let mismatch: VhdError | undefined;
  let p = 0;
  for (let w0 = 0; w0 < virtualSize && !mismatch; w0 += windowBytes) {
    const w1 = Math.min(virtualSize, w0 + windowBytes);
    const toCheck: Range[] = [];
    while (p < pages.length && pages[p][1] <= w0) p++;
    for (let q = p; q < pages.length && pages[q][0] < w1; q++) {
      toCheck.push([Math.max(w0, Math.floor(pages[q][0] / cs) * cs), Math.min(w1, Math.ceil(pages[q][1] / cs) * cs)]);
    }
    const w = await manifest.window(w0 / cs, WINDOW_CHUNKS);
    for (let i = 0; i < w.zero.length; i++) if (!w.zero[i]) toCheck.push([w0 + i * cs, Math.min(vs, w0 + (i + 1) * cs)]);
    const pieces: Range[] = [];
    for (const [x0, x1] of normalizeRanges(toCheck)) for (let x = x0; x < x1; x += MAX_PAGE_WRITE) pieces.push([x, Math.min(x1, x + MAX_PAGE_WRITE)]);
    await verifyPieces(pieces);
  }
  if (mismatch) throw mismatch;
  const tail = new Uint8Array(512);
  await blob.read(tail, virtualSize);
  if (Buffer.compare(Buffer.from(tail), Buffer.from(footer)) !== 0) {
    throw new VhdError(ErrorCodes.VERIFY_MISMATCH, 'the footer differs from the expected fixed-VHD footer', { file: blob.name, offset: virtualSize });
  }
  return true;

  async function verifyPieces(pieces: Range[]): Promise<void> {
    const free: Uint8Array[] = [];
    const check = async ([a, b]: Range) => {
      const buf = free.pop() ?? new Uint8Array(MAX_PAGE_WRITE);
      try {
        const view = buf.subarray(0, b - a);
        await blob.read(view, a);
        const firstChunk = Math.floor(a / cs);
        const w = await manifest.window(firstChunk, Math.ceil((b - a) / cs));
        for (let x = a; x < b; x += cs) {
          const i = Math.floor(x / cs) - firstChunk;
          const piece = view.subarray(x - a, Math.min(b, x + cs, Math.max(x, vs)) - a);
          const rest = view.subarray(Math.min(b, Math.max(x, vs)) - a, Math.min(b, x + cs) - a); // past the source: zeros
          const zero = isZero(piece);
          const expectZero = i >= w.zero.length || w.zero[i] === 1;
          const ok = (expectZero ? zero : !zero && h64Raw(piece, 0n) === w.hashes[i]) && isZero(rest);
          if (!ok) {
            mismatch ??= new VhdError(ErrorCodes.VERIFY_MISMATCH, `chunk ${firstChunk + i} (bytes ${x}–${Math.min(b, x + cs)}) differs from the source`, {
              file: blob.name,
              offset: x,
            });
            return;
          }
        }
      } finally {
        free.push(buf);
      }
    };
    await forEachBounded(pieces, Math.max(1, Math.min(concurrency, 8)), check, { stop: () => mismatch !== undefined, signal });
    throwIfAborted(signal);
  }
}

