/**
 * Durable small files, once, for every journal: JSON written under a fixed temporary name beside its
 * place, fsynced, renamed over it, and the folder fsynced. A crash at any instant leaves the old
 * record or the new one, never a torn one (a leftover temporary file is overwritten by the next write).
 */
import fs from 'node:fs';
import path from 'node:path';

/** fsyncs a folder (the rename of a file in it); a no-op where folders cannot be fsynced. */
export function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // not every platform can fsync a directory
  }
}

/** Writes `value` as JSON to `file` durably (see above). One writer per file at a time (the caller's lock). */
export function writeJsonDurably(file: string, value: unknown): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, JSON.stringify(value));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(path.resolve(file)));
}
