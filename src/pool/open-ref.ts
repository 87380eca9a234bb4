/** Opening a DiskRef, with a small per-thread cache keyed by file identity (size and mtime). */
import fs from 'node:fs';
import type { VirtualDisk } from '../disk/source.js';
import { openAny } from '../ops/open.js';
import type { DiskRef } from './tasks.js';

const cache = new Map<string, { stamp: string; disk: Promise<VirtualDisk> }>();
const MAX_OPEN = 16;

export async function openRef(ref: DiskRef): Promise<VirtualDisk> {
  const st = fs.statSync(ref.file);
  const key = `${ref.format}\0${ref.file}\0${(ref.allowedDirs ?? []).join('\0')}`;
  const stamp = `${st.size}:${st.mtimeMs}:${st.ino}`;
  const hit = cache.get(key);
  if (hit && hit.stamp === stamp) return hit.disk;
  if (hit) {
    cache.delete(key);
    hit.disk.then((d) => d.close()).catch(() => {});
  }
  if (cache.size >= MAX_OPEN) {
    const [oldKey, old] = cache.entries().next().value!;
    cache.delete(oldKey);
    old.disk.then((d) => d.close()).catch(() => {});
  }
  const disk = openAny(ref.file, ref.format, { allowedDirs: ref.allowedDirs }).then((r) => r.disk);
  cache.set(key, { stamp, disk });
  disk.catch(() => cache.delete(key));
  return disk;
}

export async function closeAllRefs(): Promise<void> {
  const all = [...cache.values()];
  cache.clear();
  await Promise.all(all.map((e) => e.disk.then((d) => d.close()).catch(() => {})));
}
