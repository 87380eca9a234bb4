/**
 * The VHD editor: with the writers (disk/writer.ts), the only code that changes a VHD's on-disk
 * structures. Operations ask it "add these blocks, grow to this size", get back a plan of plain
 * numbers and bytes they can journal, and have it write BAT entries, the grown BAT, the header and
 * the footers; they never compute an offset in a disk's layout themselves.
 *
 * A plan is pure (VhdImage in, numbers and encoded structures out), so a merge can save it before the
 * disk's first byte changes, and a rerun after a crash applies the same plan again.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { batByteSize, batTable, BAT_ENTRIES_PER_SECTOR, BAT_UNUSED, encodeBat } from '../format/bat.js';
import { decodeFooter, encodeFooter, FOOTER_SIZE } from '../format/footer.js';
import { geometryForWrite } from '../format/geometry.js';
import { decodeHeader, encodeHeader, HEADER, HEADER_SIZE } from '../format/header.js';
import type { ByteSink } from '../io/types.js';
import type { VhdImage } from './image.js';
import { normalizeRanges, type Range } from './ranges.js';
import { orderedWindow } from '../io/window.js';

/** Blocks of this size and more get their data area aligned to ALIGN_DATA, as Windows lays them out. */
const ALIGN_FROM_BLOCK = 65536;
const ALIGN_DATA = 4096;

/**
 * Where a new block goes when the file's data ends at `end`: the offset of its bitmap, on a sector,
 * with the data area 4 KiB aligned for blocks of 64 KiB and more. One rule for the writers and for
 * blocks added to an existing disk.
 */
export function placeBlock(end: number, blockSize: number, bitmapSize: number): number {
  const start = Math.ceil(end / 512) * 512;
  return blockSize >= ALIGN_FROM_BLOCK ? Math.ceil((start + bitmapSize) / ALIGN_DATA) * ALIGN_DATA - bitmapSize : start;
}

/** What an edit does to a disk's layout: plain values, saved in a journal before anything is written. */
export interface EditPlan {
  /** The data end before the edit (the old trailing footer's offset). */
  oldEnd: number;
  /** The file size after the edit (the new trailing footer included). */
  newEnd: number;
  /** New blocks: pairs of (block index, sector of its bitmap), in block order. */
  newBlocks: number[];
  /** The trailing footer to write last (512 bytes). */
  footer: Uint8Array;
  /** The footer copy at 0 changes too (the virtual size grew). */
  footerCopy: boolean;
  /** Dynamic and differencing disks: the header and footer copy before the edit, to put back first. */
  original?: { header: Uint8Array; headerOffset: number; footerCopy: Uint8Array };
  /** When the BAT must grow: it moves to the end of the data, and this new header points at it. */
  grownBat?: { header: Uint8Array; offset: number; entries: number };
  /**
   * Where the result must read as zeros unless the edit writes there (a grown disk past its old size;
   * under a chain whose newer disks are smaller): those bytes of its existing blocks, as (file
   * offset, length), are zeroed before the edit's data...
   */
  zeros?: Array<[offset: number, length: number]>;
  /** ...and allocated BAT entries past the old size (stale blocks) are cleared, where the BAT stays. */
  clearBlocks?: number[];
}

/**
 * The plan for writing the sectors of `blocks` (sorted block indices; blocks the disk lacks are
 * appended) into `target`, whose virtual size becomes `newSize` when that is larger. A fixed disk
 * cannot grow (USAGE).
 */
export async function planEdit(
  target: VhdImage,
  blocks: number[],
  newSize: number,
  o: { parentSize?: number; zerosFrom?: number; zerosTo?: number } = {},
): Promise<EditPlan> {
  const size = Math.max(target.virtualSize, newSize);
  const footerCopy = size !== target.virtualSize;
  // A grown disk gets the geometry of its new size (readers keyed on CHS, like qemu, see it).
  const footer = encodeFooter(footerCopy ? { ...target.footer, currentSize: BigInt(size), geometry: geometryForWrite(size) } : target.footer);
  if (target.type === 'fixed') {
    if (size > target.virtualSize) {
      throw new VhdError(ErrorCodes.USAGE, `the child (${size} bytes) is larger than the fixed target (${target.virtualSize} bytes); convert the target to dynamic first`, {
        file: target.name,
      });
    }
    // Its data sits at its virtual offsets: the bytes under a smaller disk of the chain are zeroed.
    const plan: EditPlan = { oldEnd: target.dataEnd, newEnd: target.dataEnd + FOOTER_SIZE, newBlocks: [], footer, footerCopy };
    const from = o.zerosFrom ?? Infinity;
    const to = Math.min(o.zerosTo ?? size, target.virtualSize);
    if (from < to) plan.zeros = [[from, to - from]];
    return plan;
  }
  const bat = target.bat!;
  const old = target.virtualSize;
  // Zeros from here to there in the result, unless the edit writes them: past the old size when it
  // grows, and past a smaller disk of the chain above it.
  const zerosFrom = Math.min(o.zerosFrom ?? Infinity, old);
  const zerosTo = o.zerosTo ?? size;
  if (zerosFrom < zerosTo && target.type === 'differencing' && o.parentSize !== undefined && o.parentSize > zerosFrom) {
    throw new VhdError(
      ErrorCodes.USAGE,
      `the chain reads zeros from ${zerosFrom} bytes on (a disk of it ends there), but this differencing target's own parent (${o.parentSize} bytes) would then show through; merge the chain into its base with --to`,
      { file: target.name },
    );
  }
  let end = target.dataEnd;
  const newBlocks: number[] = [];
  for (const b of blocks) {
    if (b < bat.length && bat[b] !== BAT_UNUSED) continue;
    const start = placeBlock(end, target.blockSize, target.bitmapSize);
    newBlocks.push(b, start / 512);
    end = start + target.bitmapSize + target.blockSize;
  }
  const header = new Uint8Array(HEADER_SIZE);
  await target.source.read(header, target.headerOffset!);
  const copy = new Uint8Array(FOOTER_SIZE);
  await target.source.read(copy, 0);
  const plan: EditPlan = { oldEnd: target.dataEnd, newEnd: 0, newBlocks, footer, footerCopy, original: { header, headerOffset: target.headerOffset!, footerCopy: copy } };
  const needed = Math.ceil(size / target.blockSize);
  if (needed > target.header!.maxTableEntries) {
    const offset = Math.ceil(end / 512) * 512;
    plan.grownBat = { header: encodeHeader({ ...target.header!, tableOffset: BigInt(offset), maxTableEntries: needed }), offset, entries: needed };
    end = offset + batByteSize(needed);
  }
  plan.newEnd = end + FOOTER_SIZE;
  if (zerosFrom < zerosTo) await planZeros(target, plan, zerosFrom, zerosTo, old, size, new Set(blocks));
  return plan;
}

/**
 * What makes the result read as zeros in [from, to): those bytes of the target's existing blocks
 * (below its old size) zeroed, and, past the old size, stale allocated BAT entries cleared.
 */
async function planZeros(target: VhdImage, plan: EditPlan, from: number, to: number, old: number, size: number, touched: Set<number>): Promise<void> {
  const bs = target.blockSize;
  const zeros: Array<[number, number]> = [];
  for (let b = Math.floor(from / bs); b * bs < Math.min(to, old); b++) {
    const data = target.blockDataOffset(b);
    if (data === undefined) continue;
    const s = Math.max(from, b * bs) - b * bs;
    const e = Math.min(to, (b + 1) * bs) - b * bs;
    if (e > s) zeros.push([data + s, e - s]);
  }
  if (zeros.length > 0) plan.zeros = zeros;
  if (size <= old || plan.grownBat) return; // a new table starts with every entry past the old ones unused
  const first = Math.ceil(old / bs);
  const last = Math.min(Math.ceil(size / bs), target.header!.maxTableEntries);
  if (last <= first) return;
  const bytes = new Uint8Array((last - first) * 4);
  await target.source.read(bytes, Number(target.header!.tableOffset) + first * 4);
  const view = new DataView(bytes.buffer);
  const clear: number[] = [];
  for (let i = first; i < last; i++) if (view.getUint32((i - first) * 4) !== BAT_UNUSED && !touched.has(i)) clear.push(i);
  if (clear.length > 0) plan.clearBlocks = clear;
}

/** The virtual size a footer (512 bytes, as a plan or journal holds it) gives. */
export function footerVirtualSize(footer: Uint8Array): number {
  return Number(decodeFooter(footer).currentSize);
}

/** BAT writes in flight at once while the entries of new blocks are written. */
const BAT_WRITES_IN_FLIGHT = 16;

/**
 * Applies a plan's structures to the disk open for writing in `sink`, in the steps a crash-safe edit
 * takes: `restore` (the layout before the edit, whatever an interrupted run left), `cut` (new blocks
 * start as zeros), the caller's data and bitmaps, `syncData`, then `finish` (BAT entries or the grown
 * BAT and its header, the footers, the final size, durably). Every step can be repeated, and `finish`
 * needs nothing but the plan and durable data.
 */
export class VhdEditor {
  constructor(
    private readonly sink: ByteSink,
    private readonly plan: EditPlan,
  ) {}

  /** New blocks: block index → sector of its bitmap. */
  newBlocks(): Map<number, number> {
    const at = new Map<number, number>();
    for (let i = 0; i < this.plan.newBlocks.length; i += 2) at.set(this.plan.newBlocks[i], this.plan.newBlocks[i + 1]);
    return at;
  }

  /**
   * Puts the disk back to its layout before the edit: cut at its old data end, the original footer
   * after it and at 0, the original header, durably. Data already written into existing blocks stays
   * (it is written again anyway); new blocks and a moved BAT go. A no-op for fixed disks.
   */
  async restore(): Promise<void> {
    const o = this.plan.original;
    if (!o) return;
    await this.sink.truncate(this.plan.oldEnd);
    await this.sink.write(o.footerCopy, this.plan.oldEnd);
    await this.sink.write(o.header, o.headerOffset);
    await this.sink.write(o.footerCopy, 0);
    await this.sink.sync();
  }

  /**
   * The BAT as it was before the edit, read from its original place, with the entries of the new
   * blocks unused (an interrupted run may have written them; they were unused before).
   */
  async originalBat(): Promise<Uint32Array> {
    const o = this.plan.original!;
    const bs = decodeHeader(o.header, o.headerOffset).blockSize;
    const table = batTable(Math.ceil(footerVirtualSize(o.footerCopy) / bs));
    await this.sink.read(table.bytes, this.tableOffset());
    const bat = table.decode().bat;
    for (const b of this.newBlocks().keys()) if (b < bat.length) bat[b] = BAT_UNUSED;
    return bat;
  }

  /** Of `blocks` (to be written), those with no place: neither new in the plan nor allocated in `bat`. */
  unplaced(blocks: number[], bat: Uint32Array): number[] {
    const at = this.newBlocks();
    return blocks.filter((b) => !at.has(b) && (b >= bat.length || bat[b] === BAT_UNUSED));
  }

  /** Cuts away the old trailing footer and extends the file to its new size: new blocks read as zeros. */
  async cut(): Promise<void> {
    await this.sink.truncate(this.plan.oldEnd);
    await this.sink.truncate(this.plan.newEnd);
  }

  /** Zeros what the result must read as zeros (past the old size of a grown disk, under a smaller disk of the chain), before the edit's own data. */
  async zeroStale(): Promise<void> {
    const zeros = new Uint8Array(1024 * 1024);
    for (const [at, length] of this.plan.zeros ?? []) {
      for (let done = 0; done < length; done += zeros.length) await this.sink.write(zeros.subarray(0, Math.min(zeros.length, length - done)), at + done);
    }
  }

  /** Makes everything written so far durable (data before the metadata that points at it). */
  syncData(): Promise<void> {
    return this.sink.sync();
  }

  /**
   * The metadata, once the data is durable: the new blocks' BAT entries (or the grown BAT, holding
   * the original entries and them, and its header), then the trailing footer (and the copy at 0 when
   * the size grew), then the final size; durably. A fixed disk has only its footer.
   */
  async finish(): Promise<void> {
    const fixed = this.plan.original === undefined;
    const grown = this.plan.grownBat;
    if (grown) {
      const bat = await this.originalBat();
      const table = new Uint32Array(grown.entries).fill(BAT_UNUSED);
      table.set(bat.subarray(0, Math.min(bat.length, table.length)));
      for (const [b, s] of this.newBlocks()) table[b] = s;
      await this.sink.write(encodeBat(table), grown.offset);
      await this.sink.write(grown.header, this.plan.original!.headerOffset);
    } else if (!fixed) {
      const entries = this.newBlocks();
      for (const b of this.plan.clearBlocks ?? []) entries.set(b, BAT_UNUSED);
      await this.writeBatEntries(entries);
    }
    await this.sink.write(this.plan.footer, this.plan.newEnd - FOOTER_SIZE);
    if (this.plan.footerCopy && !fixed) await this.sink.write(this.plan.footer, 0);
    await this.sink.truncate(this.plan.newEnd);
    await this.sink.sync();
  }

  private tableOffset(): number {
    const o = this.plan.original!;
    return Number(decodeHeader(o.header, o.headerOffset).tableOffset);
  }

  /**
   * Writes BAT entries in place: each run of neighbouring BAT sectors touched is read, its entries
   * set, and written back, BAT_WRITES_IN_FLIGHT runs at a time. Sector by sector, not from the BAT
   * in memory: the bytes of the table's last sector past its entries stay as the file has them.
   */
  private async writeBatEntries(entries: Map<number, number>): Promise<void> {
    const tableOffset = this.tableOffset();
    const per = BAT_ENTRIES_PER_SECTOR;
    const runs = normalizeRanges([...entries.keys()].map((b): Range => [Math.floor(b / per), Math.floor(b / per) + 1]));
    const patch = async ([first, end]: Range) => {
      const buf = new Uint8Array((end - first) * 512);
      const view = new DataView(buf.buffer);
      await this.sink.read(buf, tableOffset + first * 512);
      for (let b = first * per; b < end * per; b++) {
        const s = entries.get(b);
        if (s !== undefined) view.setUint32((b - first * per) * 4, s);
      }
      await this.sink.write(buf, tableOffset + first * 512);
    };
    // At most BAT_WRITES_IN_FLIGHT at once; on a failure nothing new starts, and it returns only once
    // the runs in flight have settled.
    await orderedWindow(runs, BAT_WRITES_IN_FLIGHT, patch, () => {});
  }
}

/**
 * A copy of `target` (a file holding the same bytes, in `sink`) given a new identity: the footer
 * with `uuid` at its end and, for dynamic and differencing disks, at 0.
 */
export async function giveIdentity(sink: ByteSink, target: VhdImage, uuid: Uint8Array): Promise<void> {
  const footer = encodeFooter({ ...target.footer, uniqueId: uuid });
  if (target.type !== 'fixed') await sink.write(footer, 0);
  await sink.write(footer, target.footerOffset);
  await sink.sync();
}

/** Bytes at the start of a file that tell whether it is a differencing disk and whose child (parentOfHead). */
export const HEAD_BYTES = FOOTER_SIZE + HEADER_SIZE;

/**
 * The parent UUID of a differencing disk from the first HEAD_BYTES of its file (footer copy, then
 * the dynamic header right after it, as every writer lays them out), or undefined when those bytes
 * are not such a disk. For finding the other children of a disk; never throws.
 */
export function parentOfHead(head: Uint8Array): Uint8Array | undefined {
  if (head.length < HEAD_BYTES) return undefined;
  try {
    const footer = decodeFooter(head.subarray(0, FOOTER_SIZE));
    if (footer.diskType !== 4 || footer.dataOffset !== BigInt(FOOTER_SIZE)) return undefined;
    const at = FOOTER_SIZE + HEADER.parentUniqueId.offset;
    return head.slice(at, at + HEADER.parentUniqueId.size);
  } catch {
    return undefined;
  }
}
