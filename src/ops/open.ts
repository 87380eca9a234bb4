/** Opening disks from files: the bridge from paths to the disk layer. */
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, findingFrom, VhdError } from '../errors.js';
import { hasPendingMerge, journalPath } from './journal.js';
import { VhdImage, type OpenOptions } from '../disk/image.js';
import { RawDisk, type VirtualDisk } from '../disk/source.js';
import { FileResolver, FileSink } from '../io/file.js';

export interface OpenDiskOptions extends Omit<OpenOptions, 'resolver'> {
  /** Confine parent resolution to these directories. */
  allowedDirs?: string[];
}

/**
 * Opens a VHD file and, for a differencing disk, its whole chain. A disk of the chain with a merge
 * pending on it (an interrupted `vhdkit merge`) gets a MERGE_PENDING finding: its content is only
 * right again once that merge is run again.
 */
export async function openDisk(file: string, options: OpenDiskOptions = {}): Promise<VhdImage> {
  let image: VhdImage;
  try {
    image = await openDiskOnly(file, options);
  } catch (e) {
    // A merge killed at the wrong instant can leave its target unopenable until it is run again (the
    // file cut before its header is put back): say that, not only what is broken.
    const broken = e instanceof VhdError ? (e.file ?? file) : undefined;
    if (broken !== undefined && e instanceof VhdError && e.code !== ErrorCodes.MERGE_PENDING && hasPendingMerge(broken)) {
      throw new VhdError(
        ErrorCodes.MERGE_PENDING,
        `a merge into this disk was interrupted and left it unopenable until that merge is completed (${e.detail} [${e.code}]); run the same "vhdkit merge" again to complete it (journal ${journalPath(broken)})`,
        { file: broken, structure: e.structure, offset: e.offset, cause: e },
      );
    }
    throw e;
  }
  for (const d of image.chain) {
    if (!hasPendingMerge(d.name)) continue;
    const e = new VhdError(ErrorCodes.MERGE_PENDING, `a merge into this disk was interrupted; run the same "vhdkit merge" again to complete it (journal ${journalPath(d.name)})`, {
      file: d.name,
    });
    if (options.strict) {
      await image.close();
      throw e;
    }
    const f = findingFrom(e, 'error');
    d.findings.push(f);
    options.onFinding?.(f);
  }
  return image;
}

async function openDiskOnly(file: string, options: OpenDiskOptions): Promise<VhdImage> {
  const source = await FileSink.open(file, 'r');
  try {
    return await VhdImage.open(source, {
      ...options,
      resolver: new FileResolver({ allowedDirs: options.allowedDirs }),
      id: realPath(file),
      resolveParents: options.resolveParents ?? true,
    });
  } catch (e) {
    await source.close();
    throw e;
  }
}

export type SourceFormat = 'auto' | 'vhd' | 'raw';

/**
 * Opens a disk for reading: a VHD (any type, chains resolved) or a raw image. `auto` takes a file
 * with a VHD footer as a VHD and anything else as raw, except a file named *.vhd or *.avhd (Hyper-V), which must be a VHD.
 */
export async function openAny(
  file: string,
  format: SourceFormat = 'auto',
  options: OpenDiskOptions = {},
): Promise<{ disk: VirtualDisk; format: 'vhd' | 'raw' }> {
  if (format === 'raw') return { disk: new RawDisk(await FileSink.open(file, 'r')), format: 'raw' };
  try {
    const disk = await openDisk(file, options);
    // A disk mid-merge reads as neither its old nor its new self: refuse to take content from it.
    const pending = disk.allFindings.find((f) => f.code === ErrorCodes.MERGE_PENDING);
    if (pending) {
      await disk.close();
      throw new VhdError(ErrorCodes.MERGE_PENDING, pending.message.replace(/^.*?: /, ''), { file: pending.file });
    }
    return { disk, format: 'vhd' };
  } catch (e) {
    const notVhd = e instanceof VhdError && (e.code === ErrorCodes.NOT_VHD || e.code === ErrorCodes.FILE_TOO_SMALL);
    if (format === 'auto' && notVhd && !/\.a?vhd$/i.test(file)) {
      return { disk: new RawDisk(await FileSink.open(file, 'r')), format: 'raw' };
    }
    throw e;
  }
}

/** True when two paths name the same file (following symlinks); false if either is missing. */
export function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.statSync(a);
    const sb = fs.statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return path.resolve(a) === path.resolve(b);
  }
}

function realPath(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return path.resolve(file);
  }
}
