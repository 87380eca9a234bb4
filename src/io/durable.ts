/**
 * Durable small files, once, for every journal: JSON written under a fixed temporary name beside its
 * place, fsynced, renamed over it, and the folder fsynced. A crash at any instant leaves the old
 * record or the new one, never a torn one (a leftover temporary file is overwritten by the next write).
 */
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, systemReason, VhdError } from '../errors.js';
import { OWN_SUFFIX } from './paths.js';

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

/** The temporary name writeJsonDurably uses for `file` (outputs are guarded against it too). */
export function durableTemp(file: string): string {
  return `${file}${OWN_SUFFIX.temp}`;
}

/**
 * Runs `body`, naming `file` in the system errors it throws that name no path (write and fsync
 * errors carry none), so that every IO error says where.
 */
function atPath<T>(file: string, body: () => T): T {
  try {
    return body();
  } catch (e) {
    if (e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && (e as NodeJS.ErrnoException).path === undefined) {
      Object.assign(e, { path: file });
    }
    throw e;
  }
}

/**
 * Runs `body`, which writes `file` through the temporary name `tmp`: a system error on `tmp` (or on
 * its rename or link into place) becomes an IO error naming `file`, the file the user knows, with
 * the temporary name as a detail.
 */
export function viaTemp<T>(file: string, tmp: string, body: () => T): T {
  try {
    return body();
  } catch (e) {
    const x = e as NodeJS.ErrnoException & { dest?: string };
    if (!(e instanceof Error) || typeof x.code !== 'string' || x.path !== tmp) throw e;
    const step = x.dest !== undefined ? `${x.syscall} of its temporary file ${path.basename(tmp)} into place` : `${x.syscall} of its temporary file ${path.basename(tmp)}`;
    throw new VhdError(ErrorCodes.IO, `${step} failed (${systemReason(x)})`, { file, cause: e });
  }
}

/**
 * Writes a file whole under a name that must not exist: created exclusively (never through a
 * symlink or over another file), removed again if the write fails; fsynced when `durable`.
 */
export function writeNewFile(file: string, content: string, durable = false): void {
  atPath(file, () => {
    const fd = fs.openSync(file, 'wx', 0o644);
    try {
      fs.writeSync(fd, content);
      if (durable) fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw e;
    }
    fs.closeSync(fd);
  });
}

/** Writes `value` as JSON to `file` durably (see above). One writer per file at a time (the caller's lock). */
export function writeJsonDurably(file: string, value: unknown): void {
  const tmp = durableTemp(file);
  viaTemp(file, tmp, () => {
    // A leftover of a killed run is replaced; a symlink there is removed, never followed.
    fs.rmSync(tmp, { force: true });
    writeNewFile(tmp, JSON.stringify(value), true);
    fs.renameSync(tmp, file);
  });
  fsyncDir(path.dirname(path.resolve(file)));
}

/** The errors of link(2) on a file system without hard links (FAT, some network and FUSE mounts). */
export function noHardLinks(code: string | undefined): boolean {
  return code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS';
}

/**
 * Moves `from` to `to`, which must not exist: a hard link made at `to` (which fails when anything is
 * there, even a file made a moment ago by another process), then `from` removed. False when `to`
 * exists. Where the file system has no hard links, a check and a rename (a window remains there).
 */
export function renameNoReplace(from: string, to: string): boolean {
  try {
    fs.linkSync(from, to);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!noHardLinks(code) && code !== 'EXDEV') throw e;
    try {
      fs.lstatSync(to);
      return false;
    } catch {
      fs.renameSync(from, to);
      return true;
    }
  }
  fs.rmSync(from, { force: true });
  return true;
}
