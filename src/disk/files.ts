/**
 * Disks from files: a VHD with its chain resolved through the file system, or a raw image. The
 * bridge from paths to the disk layer for every layer above (the pool's workers open their own
 * disks through it); files are reached only through io. What an interrupted merge means for a disk
 * (its journal) is the operations' business: ops/open adds it.
 */
import { ErrorCodes, VhdError } from '../errors.js';
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
      return { disk: new RawDisk(await FileSink.open(file, 'r')), format: 'raw' };
    }
    throw e;
  }
}
