/**
 * Decoding one VHD file's structures from a byte source: which footer holds (the trailing one, the
 * copy at offset 0, or a 511-byte one), the dynamic header and the BAT with every untrusted number
 * bounded before it allocates or seeks, and the parent locators. Problems that leave the file
 * readable are reported; the others throw. Used by VhdImage (image.ts), which adds the chain.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { batTable, BAT_UNUSED } from '../format/bat.js';
import { decodeFooter, type Footer, FOOTER_SIZE } from '../format/footer.js';
import { decodeHeader, type DynamicHeader, HEADER_SIZE, isUnusedLocator, locatorEntryOffset } from '../format/header.js';
import { equalBytes, printableTag, toSafeNumber } from '../format/layout.js';
import { baseName, decodeLocatorPath, KNOWN_PLATFORMS, locatorSpaceBytes } from '../format/locator.js';
import type { ByteSource } from '../io/types.js';
import { checkBatSpan, checkExtraEntries } from './sizes.js';

/** The largest BAT vhdkit will hold in memory: 2^28 entries (1 GiB) — 512 TiB of 2 MiB blocks. */
const MAX_BAT_ENTRIES = 1 << 28;

export interface ParentLocatorInfo {
  index: number;
  platformCode: string;
  /** Byte offset of the locator's data. */
  dataOffset: number;
  dataLength: number;
  /** Bytes reserved, whatever unit the writer used for `platformDataSpace`. */
  dataSpaceBytes: number;
  path?: string;
}

/** The footer in force and where it is, with the file's first 1024 bytes (footer copy, header). */
export async function chooseFooter(source: ByteSource, report: (e: VhdError) => void): Promise<{ footer: Footer; footerOffset: number; head: Uint8Array }> {
  const size = source.size;
  if (size < 511) {
    throw new VhdError(ErrorCodes.FILE_TOO_SMALL, `${size} bytes is too small to be a VHD (a footer alone is 512 bytes)`, {
      structure: 'file',
    });
  }
  // One read of the head (footer copy and dynamic header), one of the tail (footer, 511-byte footer).
  const head = new Uint8Array(Math.min(size, FOOTER_SIZE + HEADER_SIZE));
  await source.read(head, 0);
  const tailLength = Math.min(size, 1024);
  const tail = new Uint8Array(tailLength);
  await source.read(tail, size - tailLength);

  const hasCookie = (b: Uint8Array, at: number) =>
    at >= 0 && at + 8 <= b.length && String.fromCharCode(...b.subarray(at, at + 8)) === 'conectix';

  // The trailing footer: 512 bytes at the end, or 511 (old Virtual PC) when the file size says so.
  let trailing: { bytes: Uint8Array; offset: number } | undefined;
  if (hasCookie(tail, tailLength - 512)) {
    trailing = { bytes: tail.slice(tailLength - 512), offset: size - 512 };
  } else if (hasCookie(tail, tailLength - 511)) {
    const bytes = new Uint8Array(512);
    bytes.set(tail.subarray(tailLength - 511));
    trailing = { bytes, offset: size - 511 };
    report(
      new VhdError(ErrorCodes.FOOTER_511, 'the footer is 511 bytes long (as old Virtual PC wrote it); read with a zero last byte', {
        structure: 'footer',
        offset: size - 511,
      }),
    );
  }
  const copyAt0 = hasCookie(head, 0) && size >= 1024 ? head.slice(0, 512) : undefined;

  if (!trailing && !copyAt0) {
    throw new VhdError(ErrorCodes.NOT_VHD, 'not a VHD: no footer cookie "conectix" here or at offset 0', {
      structure: 'footer',
      offset: Math.max(0, size - 512),
    });
  }

  // Decode the candidates; remember which one holds.
  const decodeWith = (bytes: Uint8Array, offset: number) => {
    const local: VhdError[] = [];
    const footer = decodeFooter(bytes, offset, (e) => local.push(e));
    return { footer, local, checksumOk: !local.some((e) => e.code === ErrorCodes.FOOTER_CHECKSUM) };
  };
  let main: ReturnType<typeof decodeWith> | undefined;
  let mainOffset = 0;
  let trailingError: VhdError | undefined;
  if (trailing) {
    try {
      main = decodeWith(trailing.bytes, trailing.offset);
      mainOffset = trailing.offset;
    } catch (e) {
      if (!(e instanceof VhdError) || !copyAt0) throw e;
      trailingError = e;
    }
  }
  // A fixed disk's content may start with "conectix" by chance; only a dynamic footer counts at 0.
  let copy: ReturnType<typeof decodeWith> | undefined;
  if (copyAt0) {
    try {
      const c = decodeWith(copyAt0, 0);
      if (c.footer.diskType !== 2) copy = c;
    } catch (e) {
      if (!main) throw e;
    }
  }
  if (!main && !copy) {
    if (trailingError) throw trailingError;
    throw new VhdError(ErrorCodes.NOT_VHD, 'not a VHD: no usable footer at the start or the end of the file', { structure: 'file' });
  }
  if (main && main.footer.diskType !== 2 && copy) {
    if (!equalBytes(trailing!.bytes, copyAt0!)) {
      report(
        new VhdError(ErrorCodes.FOOTER_COPY_MISMATCH, 'the footer copy at offset 0 differs from the footer at the end of the file', {
          structure: 'footer copy',
          offset: 0,
        }),
      );
      // Prefer whichever copy has a valid checksum; the trailing one when both do.
      if (!main.checksumOk && copy.checksumOk) {
        main = copy;
        mainOffset = 0;
      }
    }
  } else if (!main && copy) {
    // No trailing footer: the file was cut short, or its end overwritten (an interrupted writer).
    report(
      new VhdError(
        ErrorCodes.FILE_TRUNCATED,
        `no footer at the end of the file (${size} bytes); using the copy at offset 0`,
        { structure: 'footer', offset: Math.max(0, size - 512) },
      ),
    );
    main = copy;
    mainOffset = 0;
  } else if (main && main.footer.diskType !== 2 && !copy) {
    report(
      new VhdError(ErrorCodes.FOOTER_COPY_MISMATCH, 'a dynamic disk must start with a copy of its footer; offset 0 holds none', {
        structure: 'footer copy',
        offset: 0,
      }),
    );
  }
  for (const e of main!.local) report(e);
  return { footer: main!.footer, footerOffset: mainOffset, head };
}

/** The dynamic header and the BAT of a dynamic or differencing disk whose footer is `footer`. */
export async function decodeDynamic(
  source: ByteSource,
  head: Uint8Array,
  footer: Footer,
  mainOffset: number,
  virtualSize: number,
  report: (e: VhdError) => void,
): Promise<{ header: DynamicHeader; headerOffset: number; tableOffset: number; declared: number; bat: Uint32Array; allocated: Uint32Array; dataEnd: number }> {
  const size = source.size;
  // Dynamic and differencing: the dynamic header.
  const headerOffset = toSafeNumber(footer.dataOffset, ErrorCodes.FOOTER_DATA_OFFSET, 'footer', 'data offset', mainOffset + 16);
  if (headerOffset % 512 !== 0 || headerOffset + HEADER_SIZE > size) {
    throw new VhdError(
      ErrorCodes.HEADER_PAST_EOF,
      `the footer places the dynamic header at ${headerOffset}, ${headerOffset % 512 !== 0 ? 'not sector aligned' : `past the end of the file (${size} bytes)`}`,
      { structure: 'footer', offset: mainOffset + 16, field: 'dataOffset' },
    );
  }
  let headerBytes: Uint8Array;
  if (headerOffset + HEADER_SIZE <= head.length) headerBytes = head.subarray(headerOffset, headerOffset + HEADER_SIZE);
  else {
    headerBytes = new Uint8Array(HEADER_SIZE);
    await source.read(headerBytes, headerOffset);
  }
  const header = decodeHeader(headerBytes, headerOffset, report);
  const dataEnd = mainOffset === 0 ? size : mainOffset;

  // The BAT: bound every number before it allocates or seeks.
  const tableOffset = toSafeNumber(header.tableOffset, ErrorCodes.HEADER_TABLE_OFFSET, 'dynamic header', 'table offset', headerOffset + 16);
  if (tableOffset >= size) {
    throw new VhdError(ErrorCodes.HEADER_TABLE_OFFSET, `BAT offset ${tableOffset} is past the end of the file (${size} bytes)`, {
      structure: 'dynamic header',
      offset: headerOffset + 16,
      field: 'tableOffset',
    });
  }
  const declared = header.maxTableEntries;
  const needed = checkBatSpan(
    { declared, blockSize: header.blockSize, virtualSize, tableOffset, fileSize: size, headerOffset, maxEntries: MAX_BAT_ENTRIES },
    report,
  );
  const table = batTable(needed);
  await source.read(table.bytes, tableOffset);
  const { bat, allocated } = table.decode();
  if (declared > needed) {
    const past = await entriesPastSize(source, tableOffset, needed, declared);
    checkExtraEntries({ declared, needed, ...past, virtualSize, tableOffset, headerOffset }, report);
  }

  return { header, headerOffset, tableOffset, declared, bat, allocated, dataEnd };
}

/** Allocated BAT entries past the ones the virtual size needs: how many, and the first (-1 when none). */
async function entriesPastSize(source: ByteSource, tableOffset: number, needed: number, declared: number): Promise<{ used: number; first: number }> {
  const chunk = new Uint8Array(1024 * 1024);
  let used = 0;
  let first = -1;
  for (let i = needed; i < declared; i += chunk.length / 4) {
    const n = Math.min(chunk.length / 4, declared - i);
    const view = chunk.subarray(0, n * 4);
    await source.read(view, tableOffset + i * 4);
    const dv = new DataView(view.buffer, 0, n * 4);
    for (let k = 0; k < n; k++) {
      if (dv.getUint32(k * 4) === BAT_UNUSED) continue;
      if (first < 0) first = i + k;
      used++;
    }
  }
  return { used, first };
}

/** The parent locators of a differencing disk's header, their paths decoded and checked. */
export async function decodeLocators(source: ByteSource, header: DynamicHeader, headerOffset: number, name: string, report: (e: VhdError) => void): Promise<ParentLocatorInfo[]> {
  const size = source.size;
  const locators: ParentLocatorInfo[] = [];
  header.parentLocators.forEach((entry, index) => {
    if (isUnusedLocator(entry)) return;
    const entryOffset = headerOffset + locatorEntryOffset(index);
    if (!KNOWN_PLATFORMS.includes(entry.platformCode)) {
      report(
        new VhdError(ErrorCodes.LOCATOR_UNKNOWN_PLATFORM, `unknown platform code "${printableTag(entry.platformCode)}"; ignored`, {
          structure: `parent locator ${index}`,
          offset: entryOffset,
        }),
      );
      return;
    }
    const dataOffset = Number(entry.platformDataOffset);
    locators.push({
      index,
      platformCode: entry.platformCode,
      dataOffset,
      dataLength: entry.platformDataLength,
      dataSpaceBytes: locatorSpaceBytes(entry.platformDataSpace),
    });
  });
  for (const loc of locators) {
    const entryOffset = headerOffset + locatorEntryOffset(loc.index);
    const structure = `parent locator ${loc.index} (${loc.platformCode})`;
    if (loc.dataLength === 0 || loc.dataLength > 65536) {
      report(new VhdError(ErrorCodes.LOCATOR_INVALID, `data length ${loc.dataLength} is not a plausible path length`, { structure, offset: entryOffset }));
      continue;
    }
    if (loc.dataOffset + loc.dataLength > size) {
      report(
        new VhdError(ErrorCodes.LOCATOR_PAST_EOF, `data at ${loc.dataOffset} (${loc.dataLength} bytes) runs past the end of the file (${size} bytes)`, {
          structure,
          offset: entryOffset,
        }),
      );
      continue;
    }
    if (loc.dataLength > loc.dataSpaceBytes) {
      report(
        new VhdError(ErrorCodes.LOCATOR_INVALID, `data length ${loc.dataLength} exceeds the space reserved (${loc.dataSpaceBytes} bytes)`, {
          structure,
          offset: entryOffset,
        }),
      );
    }
    const data = new Uint8Array(loc.dataLength);
    await source.read(data, loc.dataOffset);
    try {
      const path = decodeLocatorPath(loc.platformCode, data);
      if (path === undefined || path === '') continue;
      loc.path = path;
    } catch {
      report(new VhdError(ErrorCodes.LOCATOR_INVALID, 'data is not a valid path in its encoding', { structure, offset: loc.dataOffset }));
    }
  }
  // Overlapping locator areas.
  const areas = locators.filter((l) => l.path !== undefined).sort((a, b) => a.dataOffset - b.dataOffset);
  for (let k = 1; k < areas.length; k++) {
    if (areas[k].dataOffset < areas[k - 1].dataOffset + areas[k - 1].dataLength) {
      report(
        new VhdError(ErrorCodes.LOCATOR_OVERLAP, `data overlaps that of parent locator ${areas[k - 1].index}`, {
          structure: `parent locator ${areas[k].index}`,
          offset: areas[k].dataOffset,
        }),
      );
    }
  }
  if (locators.length === 0) {
    report(
      new VhdError(ErrorCodes.LOCATOR_NONE, `no parent locators; the parent can only be found by its name "${name}" next to the child`, {
        structure: 'parent locator table',
        offset: headerOffset + locatorEntryOffset(0),
      }),
    );
  }
  for (const loc of locators) {
    if (loc.path !== undefined && name !== '' && baseName(loc.path).toLowerCase() !== baseName(name).toLowerCase()) {
      report(
        new VhdError(ErrorCodes.LOCATOR_NAME_MISMATCH, `names "${loc.path}" but the header's parent name is "${name}"`, {
          structure: `parent locator ${loc.index} (${loc.platformCode})`,
          offset: loc.dataOffset,
        }),
      );
    }
  }
  return locators;
}
