/**
 * Opening a DiskRef, with a small per-thread cache. An entry stays valid while every file of the
 * disk's chain keeps its size, mtime and inode: a parent changed under an unchanged child reopens.
 */
import { fileStamp } from '../io/file.js';
import type { VirtualDisk } from '../disk/source.js';
import { VhdImage } from '../disk/image.js';
import { openFileAs } from '../disk/files.js';
import type { DiskRef } from './tasks.js';

interface Entry {
  files: string[];
  stamp: string;
  disk: Promise<VirtualDisk>;
}

const cache = new Map<string, Entry>();
const MAX_OPEN = 16;

function stampOf(files: string[]): string {
  return files.map(fileStamp).join('|');
}

function drop(key: string): void {
  const e = cache.get(key);
  if (!e) return;
  cache.delete(key);
  e.disk.then((d) => d.close()).catch(() => {});
}

export async function openRef(ref: DiskRef): Promise<VirtualDisk> {
  const key = `${ref.format}\0${ref.sizeFrom ?? 'footer'}\0${ref.file}\0${(ref.allowedDirs ?? []).join('\0')}`;
  const hit = cache.get(key);
  if (hit && stampOf(hit.files) === hit.stamp) return hit.disk;
  drop(key);
  if (cache.size >= MAX_OPEN) drop(cache.keys().next().value!);
  const stampBefore = stampOf([ref.file]);
  const entry: Entry = { files: [ref.file], stamp: stampBefore, disk: openFileAs(ref.file, ref.format, { allowedDirs: ref.allowedDirs, sizeFrom: ref.sizeFrom }).then((r) => r.disk) };
  cache.set(key, entry);
  try {
    const disk = await entry.disk;
    if (disk instanceof VhdImage) {
      entry.files = disk.chain.map((d) => d.source.name);
      entry.stamp = stampOf(entry.files);
    }
    return disk;
  } catch (e) {
    if (cache.get(key) === entry) cache.delete(key);
    throw e;
  }
}

export async function closeAllRefs(): Promise<void> {
  const all = [...cache.values()];
  cache.clear();
  await Promise.all(all.map((e) => e.disk.then((d) => d.close()).catch(() => {})));
}
