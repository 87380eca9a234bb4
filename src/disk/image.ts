/**
 * VHD semantics on top of the format layer and a byte source: open fixed, dynamic and
 * differencing disks, validate their structures, resolve parents, read any virtual range and
 * list allocated extents. No node:* imports: parents are opened through a SourceResolver.
 */
import { geometrySize } from '../format/geometry.js';
import { ErrorCodes, findingFrom, type Finding, VhdError } from '../errors.js';
import { batByteSize, BAT_UNUSED } from '../format/bat.js';
import { bitmapByteSize, forEachBitRun } from '../format/bitmap.js';
import { type DiskTypeName, diskTypeName, type Footer } from '../format/footer.js';
import { decodeParentName, type DynamicHeader, HEADER, HEADER_SIZE } from '../format/header.js';
import { equalBytes } from '../format/layout.js';
import { baseName, isAbsoluteSlashPath, isRelativeCode, toSlashPath } from '../format/locator.js';
import { uuidToString } from '../format/uuid.js';
import type { ByteSource, SourceResolver } from '../io/types.js';
import { type Range, normalizeRanges } from './ranges.js';
import { noteFinding } from './policy.js';
import { checkGeometry, fixedVirtualSize, type SizeSource } from './sizes.js';
import { chooseFooter, decodeDynamic, decodeLocators, type ParentLocatorInfo } from './decode.js';

export type { ParentLocatorInfo } from './decode.js';

export interface OpenOptions {
  /** Opens parents of differencing disks. Without one, a differencing disk is opened alone. */
  resolver?: SourceResolver;
  /** Resolve and open the parent chain (default true when a resolver is given). */
  resolveParents?: boolean;
  /** Refuse the disk when any finding (error or warning) is made. */
  strict?: boolean;
  /** Longest chain accepted, this disk included (default 64). */
  maxDepth?: number;
  /** Called for every finding, as it is made. */
  onFinding?: (finding: Finding) => void;
  /**
   * Record a chain that cannot be resolved (missing parent, UUID mismatch, cycle, too deep) as a
   * finding on this disk instead of throwing; the disk is then open without its parent.
   */
  tolerateBrokenChain?: boolean;
  /** Identity of the source as the resolver would name it (a real path), for cycle detection. */
  id?: string;
  /** Where a fixed disk's virtual size comes from: its footer (default) or its file's length (disk/sizes). */
  sizeFrom?: SizeSource;
}

/** Errors about a disk's parents, not about the disk's own structures. */
export const CHAIN_ERRORS: ReadonlySet<string> = new Set([
  ErrorCodes.PARENT_MISSING,
  ErrorCodes.PARENT_UUID_MISMATCH,
  ErrorCodes.PARENT_NOT_ALLOWED,
  ErrorCodes.CHAIN_CYCLE,
  ErrorCodes.CHAIN_TOO_DEEP,
]);

const DEFAULT_MAX_DEPTH = 64;
/** Bitmaps cached per image (512 bytes each for 2 MiB blocks): 8 MiB at most. */
const BITMAP_CACHE_BYTES = 8 * 1024 * 1024;
/** The first index of sorted `a` whose value is at least `x`. */
function lowerBound(a: Uint32Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Above this many bitmap runs in one read, read whole spans and merge in memory. */
const MAX_RUN_READS = 16;
/** Sector bitmaps read together when listing a differencing disk's sectors. */
const BITMAP_BATCH = 32;
/** Block pieces of one read issued concurrently (small blocks would otherwise flood the I/O queue). */
const MAX_PARALLEL_PIECES = 8;

export class VhdImage {
  readonly type: DiskTypeName;
  readonly virtualSize: number;
  /** The footer in force (the trailing one, or the copy at offset 0 when the trailing one is missing or bad). */
  readonly footer: Footer;
  readonly footerOffset: number;
  readonly header?: DynamicHeader;
  readonly headerOffset?: number;
  readonly bat?: Uint32Array;
  /** Indices of the allocated BAT entries, ascending (empty for fixed disks). */
  readonly allocated: Uint32Array;
  readonly blockSize: number;
  readonly bitmapSize: number;
  readonly locators: ParentLocatorInfo[] = [];
  /** Findings made while opening this file (not its parents). */
  readonly findings: Finding[] = [];
  parent?: VhdImage;
  /** Identity of this file as the resolver names it (a real path for files). */
  id: string;
  private readonly bitmapCache = new Map<number, Uint8Array>();
  private readonly badBlocks = new Map<number, VhdError>();
  /** Where the data area ends: the trailing footer's offset (the file size when it is missing). */
  dataEnd = 0;

  private constructor(
    readonly source: ByteSource,
    init: {
      type: DiskTypeName;
      footer: Footer;
      footerOffset: number;
      header?: DynamicHeader;
      headerOffset?: number;
      bat?: Uint32Array;
      /** The BAT's used entries, ascending (listed by its decoding). */
      allocated?: Uint32Array;
      /** The virtual size when it is not the footer's current size (disk/sizes). */
      virtualSize?: number;
    },
  ) {
    this.id = source.name;
    this.type = init.type;
    this.footer = init.footer;
    this.footerOffset = init.footerOffset;
    this.header = init.header;
    this.headerOffset = init.headerOffset;
    this.bat = init.bat;
    this.allocated = init.allocated ?? new Uint32Array(0);
    this.virtualSize = init.virtualSize ?? Number(init.footer.currentSize);
    this.blockSize = init.header?.blockSize ?? 0;
    this.bitmapSize = init.header ? bitmapByteSize(init.header.blockSize) : 0;
  }

  get name(): string {
    return this.source.name;
  }

  get uuid(): string {
    return uuidToString(this.footer.uniqueId);
  }

  get parentUuid(): string | undefined {
    return this.header && this.type === 'differencing' ? uuidToString(this.header.parentUniqueId) : undefined;
  }

  get parentName(): string | undefined {
    return this.header && this.type === 'differencing' ? decodeParentName(this.header.parentUnicodeName) : undefined;
  }

  /** The size the CHS geometry describes (cylinders × heads × sectors per track × 512). */
  get geometrySize(): number {
    return geometrySize(this.footer.geometry);
  }

  get allocatedBlocks(): number {
    return this.allocated.length;
  }

  /** Every disk from this one to the base, this one first. */
  get chain(): VhdImage[] {
    const out: VhdImage[] = [];
    for (let d: VhdImage | undefined = this; d; d = d.parent) out.push(d);
    return out;
  }

  /** Findings of the whole chain, this disk first. */
  get allFindings(): Finding[] {
    return this.chain.flatMap((d) => d.findings);
  }

  /**
   * Opens a VHD from a byte source. Unusable structures throw a VhdError; recoverable problems
   * become findings (thrown instead with `strict`).
   */
  static async open(source: ByteSource, options: OpenOptions = {}): Promise<VhdImage> {
    const image = await VhdImage.openOne(source, options);
    if (options.id !== undefined) image.id = options.id;
    try {
      const resolve = options.resolveParents ?? options.resolver !== undefined;
      if (image.type === 'differencing' && resolve && options.resolver) {
        try {
          await image.resolveChain(options.resolver, options, [image.id], options.maxDepth ?? DEFAULT_MAX_DEPTH);
        } catch (e) {
          // Every error here is the chain's (a parent missing, refused or damaged), not this disk's.
          if (!(options.tolerateBrokenChain && e instanceof VhdError)) throw e;
          // Keep the part of the chain that opened; record the break on the disk that has it.
          let last = image;
          while (last.parent) last = last.parent;
          const f = findingFrom(e, 'error');
          last.findings.push(f);
          options.onFinding?.(f);
        }
      }
      return image;
    } catch (e) {
      await image.close();
      throw e;
    }
  }

  /** Opens this one file: footer, header, BAT, locators; no parent. */
  private static async openOne(source: ByteSource, options: OpenOptions): Promise<VhdImage> {
    const file = source.name;
    const findings: Finding[] = [];
    const report = (e: VhdError) => void noteFinding(e.inFile(file), options, findings);
    try {
      const image = await VhdImage.decode(source, report, options.sizeFrom ?? 'footer');
      image.findings.push(...findings);
      return image;
    } catch (e) {
      if (e instanceof VhdError) e.inFile(file);
      throw e;
    }
  }

  private static async decode(source: ByteSource, report: (e: VhdError) => void, sizeFrom: SizeSource): Promise<VhdImage> {
    const { footer, footerOffset: mainOffset, head } = await chooseFooter(source, report);
    const type = diskTypeName(footer.diskType)!;
    if (type === 'fixed') {
      const virtualSize = fixedVirtualSize(footer, mainOffset, sizeFrom, report);
      checkGeometry(footer, mainOffset, virtualSize, report);
      const image = new VhdImage(source, { type, footer, footerOffset: mainOffset, virtualSize });
      image.dataEnd = mainOffset;
      return image;
    }
    const virtualSize = Number(footer.currentSize);
    checkGeometry(footer, mainOffset, virtualSize, report);

    const { header, headerOffset, tableOffset, declared, bat, allocated, dataEnd } = await decodeDynamic(source, head, footer, mainOffset, virtualSize, report);

    const image = new VhdImage(source, { type, footer, footerOffset: mainOffset, header, headerOffset, bat, allocated });
    image.dataEnd = dataEnd;
    if (type === 'differencing') image.locators.push(...(await decodeLocators(source, header, headerOffset, image.parentName ?? '', report)));
    image.validateBlocks(report, [
      [0, 512, 'footer copy'],
      [headerOffset, headerOffset + HEADER_SIZE, 'dynamic header'],
      [tableOffset, tableOffset + batByteSize(declared), 'BAT'],
      ...image.locators.map((l) => [l.dataOffset, l.dataOffset + Math.max(l.dataLength, 1), `parent locator ${l.index}`] as [number, number, string]),
    ]);
    return image;
  }

  /** Checks every allocated block lies inside the file and overlaps neither another block nor metadata. */
  private validateBlocks(report: (e: VhdError) => void, metadata: Array<[number, number, string]>): void {
    const bat = this.bat!;
    const span = this.bitmapSize + this.blockSize;
    const tableOffset = Number(this.header!.tableOffset);
    const inside: number[] = [];
    for (let k = 0; k < this.allocated.length; k++) {
      const i = this.allocated[k];
      const sector = bat[i];
      const start = sector * 512;
      if (start + span > this.dataEnd) {
        const e = new VhdError(
          ErrorCodes.BAT_ENTRY_PAST_EOF,
          `points to sector ${sector}; the block ends at ${start + span}, past the end of the data (${this.dataEnd} bytes)`,
          { structure: `BAT entry ${i}`, offset: tableOffset + i * 4, file: this.name },
        );
        this.badBlocks.set(i, e);
        report(e);
        continue;
      }
      const hit = metadata.filter(([a, b]) => start < b && start + span > a);
      if (hit.length > 0) {
        const list = hit.map(([a, b, what]) => `the ${what} (bytes ${a}–${b})`).join(' and ');
        report(
          new VhdError(ErrorCodes.BAT_ENTRY_OVERLAPS_METADATA, `block at sector ${sector} (bytes ${start}–${start + span}) overlaps ${list}`, {
            structure: `BAT entry ${i}`,
            offset: tableOffset + i * 4,
          }),
        );
      }
      inside.push(i);
    }
    // Overlaps between blocks: sort by position, compare neighbours.
    const order = Uint32Array.from(inside).sort((x, y) => bat[x] - bat[y]);
    for (let k = 1; k < order.length; k++) {
      const prev = order[k - 1];
      const cur = order[k];
      if (bat[cur] * 512 < bat[prev] * 512 + span) {
        report(
          new VhdError(ErrorCodes.BAT_ENTRY_OVERLAP, `block ${cur} at sector ${bat[cur]} overlaps block ${prev} at sector ${bat[prev]}`, {
            structure: `BAT entry ${cur}`,
            offset: tableOffset + cur * 4,
          }),
        );
      }
    }
  }

  /** Candidate parent paths in the order they are tried: relative locators, absolute ones, then the header's name. */
  parentCandidates(): string[] {
    const out: string[] = [];
    const add = (p: string | undefined) => {
      if (p === undefined || p === '') return;
      const slash = toSlashPath(p);
      if (!out.includes(slash)) out.push(slash);
    };
    const withPaths = this.locators.filter((l) => l.path !== undefined);
    for (const l of withPaths) if (isRelativeCode(l.platformCode) || !isAbsoluteSlashPath(toSlashPath(l.path!))) add(l.path);
    for (const l of withPaths) if (!isRelativeCode(l.platformCode) && isAbsoluteSlashPath(toSlashPath(l.path!))) add(l.path);
    const name = this.parentName;
    if (name) add(baseName(name));
    return out;
  }

  private async resolveChain(resolver: SourceResolver, options: OpenOptions, seen: string[], depthLeft: number): Promise<void> {
    if (this.type !== 'differencing') return;
    if (depthLeft <= 1) {
      throw new VhdError(ErrorCodes.CHAIN_TOO_DEEP, `the chain is deeper than ${options.maxDepth ?? DEFAULT_MAX_DEPTH} disks`, {
        file: this.name,
        structure: 'chain',
      });
    }
    const want = this.header!.parentUniqueId;
    const candidates = this.parentCandidates();
    // The first candidate that exists is the parent: it must open and carry the UUID this child
    // names, or the chain is broken there. Only candidates that do not exist, or lie outside the
    // allowed directories, pass the search on. A later candidate is never taken in its place: an
    // absolute locator still naming the folder a chain was copied from would make every reader read,
    // and a merge write, the original while the copy's parent is damaged, half copied or mid-merge.
    const refused: VhdError[] = [];
    for (const candidate of candidates) {
      let found: Awaited<ReturnType<SourceResolver['open']>>;
      try {
        found = await resolver.open(this.name, candidate);
      } catch (e) {
        if (e instanceof VhdError && e.code === ErrorCodes.PARENT_NOT_ALLOWED) {
          refused.push(e);
          continue;
        }
        throw e;
      }
      if (!found) continue;
      if (seen.includes(found.id)) {
        await found.source.close();
        throw new VhdError(ErrorCodes.CHAIN_CYCLE, `the parent chain loops back to ${found.id}`, {
          file: this.name,
          structure: 'chain',
        });
      }
      let parent: VhdImage;
      try {
        parent = await VhdImage.openOne(found.source, options);
      } catch (e) {
        await found.source.close();
        throw e;
      }
      parent.id = found.id;
      if (!equalBytes(parent.footer.uniqueId, want)) {
        const expected = uuidToString(want);
        const actual = parent.uuid;
        await parent.close();
        throw new VhdError(ErrorCodes.PARENT_UUID_MISMATCH, `parent UUID ${expected} does not match ${found.source.name} (UUID ${actual})`, {
          file: this.name,
          structure: 'dynamic header',
          offset: this.headerOffset! + HEADER.parentUniqueId.offset,
          expected,
          actual,
        });
      }
      this.parent = parent;
      if (parent.virtualSize !== this.virtualSize) {
        const e = new VhdError(
          ErrorCodes.PARENT_SIZE_MISMATCH,
          `the parent ${parent.name} is ${parent.virtualSize} bytes, the child ${this.virtualSize}`,
          { file: this.name, structure: 'chain' },
        );
        noteFinding(e, options, this.findings);
      }
      await parent.resolveChain(resolver, options, [...seen, found.id], depthLeft - 1);
      return;
    }
    const expected = uuidToString(want);
    if (refused.length > 0) throw refused[0];
    throw new VhdError(
      ErrorCodes.PARENT_MISSING,
      `parent ${expected} not found (tried ${candidates.length > 0 ? candidates.join(', ') : 'no names: no locators and no parent name'})`,
      { file: this.name, structure: 'dynamic header', offset: this.headerOffset! + HEADER.parentUniqueId.offset, expected },
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Reading

  /**
   * Reads virtual bytes [position, position + into.length) of this disk's chain into `into`.
   */
  async read(into: Uint8Array, position: number): Promise<void> {
    if (position < 0 || position + into.length > this.virtualSize) {
      throw new VhdError(ErrorCodes.RANGE, `read of ${into.length} bytes at ${position} is outside the virtual disk (${this.virtualSize} bytes)`, {
        file: this.name,
      });
    }
    if (into.length === 0) return;
    if (this.type === 'fixed') return this.source.read(into, position);
    // One read per block piece, issued together (a read spans few blocks: its buffer bounds them),
    // so the device sees the whole request at once, as it would for one contiguous read.
    const bs = this.blockSize;
    const pieces: Promise<void>[] = [];
    let done = 0;
    while (done < into.length) {
      const pos = position + done;
      const block = Math.floor(pos / bs);
      const inBlock = pos - block * bs;
      const n = Math.min(bs - inBlock, into.length - done);
      pieces.push(this.readInBlock(into.subarray(done, done + n), block, inBlock));
      done += n;
      if (pieces.length >= MAX_PARALLEL_PIECES) {
        await Promise.all(pieces);
        pieces.length = 0;
      }
    }
    await Promise.all(pieces);
  }

  private async readInBlock(into: Uint8Array, block: number, inBlock: number): Promise<void> {
    const sector = this.bat![block];
    if (sector === BAT_UNUSED) {
      if (this.type === 'differencing') return this.readParent(into, block * this.blockSize + inBlock);
      into.fill(0);
      return;
    }
    const bad = this.badBlocks.get(block);
    if (bad) throw bad;
    const dataStart = sector * 512 + this.bitmapSize;
    if (this.type === 'dynamic') return this.source.read(into, dataStart + inBlock);
    // Differencing: set bits come from this file, clear ones from the parent, one read per run.
    const bitmap = await this.bitmap(block);
    const first = Math.floor(inBlock / 512);
    const last = Math.ceil((inBlock + into.length) / 512);
    const runs: Array<[number, number, boolean]> = [];
    forEachBitRun(bitmap, first, last, (s, e, present) => {
      runs.push([Math.max(inBlock, s * 512), Math.min(inBlock + into.length, e * 512), present]);
    });
    if (runs.length <= MAX_RUN_READS) {
      await Promise.all(
        runs.map(([a, b, present]) => {
          const part = into.subarray(a - inBlock, b - inBlock);
          return present ? this.source.read(part, dataStart + a) : this.readParent(part, block * this.blockSize + a);
        }),
      );
      return;
    }
    // A fragmented bitmap: two large reads (this file's span, the parent's span) and a merge in
    // memory beat thousands of sector-sized reads.
    const parentBytes = new Uint8Array(into.length);
    await Promise.all([this.source.read(into, dataStart + inBlock), this.readParent(parentBytes, block * this.blockSize + inBlock)]);
    for (const [a, b, present] of runs) if (!present) into.set(parentBytes.subarray(a - inBlock, b - inBlock), a - inBlock);
  }

  private async readParent(into: Uint8Array, position: number): Promise<void> {
    const parent = this.parent;
    if (!parent) {
      throw new VhdError(ErrorCodes.PARENT_MISSING, `sectors at ${position} come from the parent ${this.parentUuid}, which is not open`, {
        file: this.name,
        structure: 'chain',
      });
    }
    // A parent smaller than the child reads as zeros past its end.
    const inside = Math.max(0, Math.min(into.length, parent.virtualSize - position));
    if (inside > 0) await parent.read(into.subarray(0, inside), position);
    if (inside < into.length) into.fill(0, inside);
  }

  /** The sector bitmap of an allocated block (cached). */
  async bitmap(block: number): Promise<Uint8Array> {
    const cached = this.bitmapCache.get(block);
    if (cached) return cached;
    const sector = this.bat![block];
    const bad = this.badBlocks.get(block);
    if (bad) throw bad;
    const bitmap = new Uint8Array(this.bitmapSize);
    await this.source.read(bitmap, sector * 512);
    if ((this.bitmapCache.size + 1) * this.bitmapSize > BITMAP_CACHE_BYTES) this.bitmapCache.clear();
    this.bitmapCache.set(block, bitmap);
    return bitmap;
  }

  /** File offset of an allocated block's data, or undefined when the block is not in this file. */
  blockDataOffset(block: number): number | undefined {
    const sector = this.bat?.[block];
    if (sector === undefined || sector === BAT_UNUSED) return undefined;
    return sector * 512 + this.bitmapSize;
  }

  // ---------------------------------------------------------------------------------------------
  // Extents

  /**
   * Virtual byte ranges this file itself holds, at block granularity (the whole disk for a fixed
   * disk). Cost follows the BAT, not the virtual size.
   */
  ownBlockRanges(): Range[] {
    if (this.type === 'fixed') return this.virtualSize > 0 ? [[0, this.virtualSize]] : [];
    // Runs of consecutive allocated blocks, from the allocated indices: cost follows the data.
    const out: Range[] = [];
    const bs = this.blockSize;
    const idx = this.allocated;
    for (let k = 0; k < idx.length; ) {
      const first = idx[k];
      let end = first + 1;
      k++;
      while (k < idx.length && idx[k] === end) {
        end++;
        k++;
      }
      out.push([first * bs, Math.min(end * bs, this.virtualSize)]);
    }
    return out;
  }

  /**
   * Virtual byte ranges this file holds, exact to the sector: for a differencing disk, the sectors
   * whose bitmap bit is set; otherwise the same as ownBlockRanges. Only those inside [start, end)
   * when given (clipped to it): windows of a large child, one at a time, in bounded memory.
   */
  async ownSectorRanges(start = 0, end = this.virtualSize): Promise<Range[]> {
    if (this.type !== 'differencing') {
      const out: Range[] = [];
      for (const [a, b] of this.ownBlockRanges()) if (b > start && a < end) out.push([Math.max(a, start), Math.min(b, end)]);
      return out;
    }
    const out: Range[] = [];
    const bs = this.blockSize;
    const sectorsPerBlock = bs / 512;
    // Only the blocks that meet [start, end): a window of a large child costs what it holds.
    const first = lowerBound(this.allocated, Math.floor(start / bs));
    const stop = lowerBound(this.allocated, Math.ceil(end / bs));
    // Bitmaps are small reads scattered over the file: fetch a batch of them together (the device
    // sees a queue, not one round trip at a time), then scan.
    for (let k = first; k < stop; k += BITMAP_BATCH) {
      const batch = Array.from(this.allocated.subarray(k, Math.min(stop, k + BITMAP_BATCH)));
      const bitmaps = await Promise.all(batch.map((block) => this.bitmap(block)));
      batch.forEach((block, i) => {
        const base = block * bs;
        forEachBitRun(bitmaps[i], 0, sectorsPerBlock, (s, e, present) => {
          if (present) out.push([Math.max(start, base + s * 512), Math.min(base + e * 512, this.virtualSize, end)]);
        });
      });
    }
    return normalizeRanges(out);
  }

  /**
   * Where the chain may hold data: the union of every layer's block ranges, clipped to this disk's
   * virtual size. Everything outside reads as zeros.
   */
  dataRanges(): Range[] {
    const all: Range[] = [];
    for (const d of this.chain) for (const r of d.ownBlockRanges()) all.push([r[0], Math.min(r[1], this.virtualSize)]);
    return normalizeRanges(all);
  }

  async close(): Promise<void> {
    const parent = this.parent;
    this.parent = undefined;
    await this.source.close();
    if (parent) await parent.close();
  }
}
