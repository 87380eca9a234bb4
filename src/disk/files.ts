/**
 * Disks from files: a VHD with its chain resolved through the file system, or a raw image. The
 * bridge from paths to the disk layer for every layer above (the pool's workers open their own
 * disks through it); files are reached only through io. What an interrupted merge means for a disk
 * (its journal) is the operations' business: ops/open adds it.
 */
import { ErrorCodes, VhdError } from '../errors.js';
import { noteFinding } from './policy.js';
import { decodeFooter, FOOTER_SIZE } from '../format/footer.js';
import { FileResolver, FileSink, realPathOf } from '../io/file.js';
import { VhdImage, type OpenOptions } from './image.js';
import { RawDisk, type VirtualDisk } from './source.js';

export interface FileOpenOptions extends Omit<OpenOptions, 'resolver'> {
  /** Confine parent resolution to these directories. */
  allowedDirs?: string[];
}

export type SourceFormat = 'auto' | 'vhd' | 'raw';

/** Opens a VHD file and, for a differencing disk (unless `resolveParents: false`), its whole chain. */
export async function openVhdFile(file: string, options: FileOpenOptions = {}): Promise<VhdImage> {
  const source = await FileSink.open(file, 'r');
  try {
    return await VhdImage.open(source, {
      ...options,
      resolver: new FileResolver({ allowedDirs: options.allowedDirs }),
      id: realPathOf(file),
      resolveParents: options.resolveParents ?? true,
    });
  } catch (e) {
    await source.close();
    throw e;
  }
}

/** A footer that decodes with its checksum right (not the word "conectix" by chance in data). */
function validFooter(bytes: Uint8Array): boolean {
  let bad = false;
  try {
    decodeFooter(bytes, 0, (e) => {
      if (e.code === ErrorCodes.FOOTER_CHECKSUM) bad = true;
    });
  } catch {
    return false;
  }
  return !bad;
}

/** How far from the end a VHD footer is looked for in a file taken as raw. */
const FOOTER_SEARCH = 64 * 1024;

/**
 * A file taken as a raw image that holds a VHD footer near its end (a VHD with bytes appended after
 * its footer, by a copy or a download gone wrong): RAW_WITH_FOOTER, a warning, since its content is
 * then read with the VHD's metadata in it.
 */
async function footerInside(source: FileSink, options: FileOpenOptions): Promise<void> {
  const n = Math.min(source.size, FOOTER_SEARCH);
  if (n < 512) return;
  const tail = new Uint8Array(n);
  await source.read(tail, source.size - n);
  const at = Buffer.from(tail.buffer, tail.byteOffset, n).lastIndexOf('conectix');
  if (at < 0 || at + FOOTER_SIZE > n || !validFooter(tail.subarray(at, at + FOOTER_SIZE))) return;
  const offset = source.size - n + at;
  const e = new VhdError(
    ErrorCodes.RAW_WITH_FOOTER,
    `read as a raw image, but a VHD footer is at offset ${offset}, ${source.size - offset - 512} bytes before the end: this may be a VHD with bytes appended after its footer (cut the file at ${offset + 512} to read it as one)`,
    { file: source.name, structure: 'file', offset },
  );
  noteFinding(e, options, []);
}

/**
 * Opens a disk for reading: a VHD (any type, chains resolved, by `openVhd`) or a raw image. `auto`
 * takes a file with a VHD footer as a VHD and anything else as raw, except a file named *.vhd or
 * *.avhd (Hyper-V), which must be a VHD.
 */
export async function openFileAs(
  file: string,
  format: SourceFormat = 'auto',
  options: FileOpenOptions = {},
  openVhd: (file: string, options: FileOpenOptions) => Promise<VhdImage> = openVhdFile,
): Promise<{ disk: VirtualDisk; format: 'vhd' | 'raw' }> {
  if (format === 'raw') return { disk: new RawDisk(await FileSink.open(file, 'r')), format: 'raw' };
  try {
    return { disk: await openVhd(file, options), format: 'vhd' };
  } catch (e) {
    const notVhd = e instanceof VhdError && (e.code === ErrorCodes.NOT_VHD || e.code === ErrorCodes.FILE_TOO_SMALL);
    if (format === 'auto' && notVhd && !/\.a?vhd$/i.test(file)) {
      const sink = await FileSink.open(file, 'r');
      try {
        await footerInside(sink, options);
      } catch (err) {
        await sink.close();
        throw err;
      }
      return { disk: new RawDisk(sink), format: 'raw' };
    }
    throw e;
  }
}
