/**
 * Where outputs may go. One guard for every command that writes: an output that is an input (or a
 * disk of an input's chain, or another output of the same command) is refused before anything is
 * read or written, whatever names it (a symlink, a hard link, `./x` for `x`), with or without
 * --force; and an output path that cannot hold a file is an IO error naming the path and why.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, VhdError } from '../errors.js';

/** A path an operation reads or writes, and what it is to the user ("the input", "--manifest"). */
export interface RolePath {
  path: string;
  role: string;
}

/**
 * What a path is on disk: the device and inode of the file it names (symlinks followed, so hard
 * links and symlinks of one file agree), or for a file not yet there its canonical path (the
 * folder's real path and the name), which two spellings of one new file share.
 */
export function fileIdentity(p: string): string {
  try {
    const st = fs.statSync(p);
    return `inode ${st.dev}:${st.ino}`;
  } catch {
    const abs = path.resolve(p);
    let dir = path.dirname(abs);
    try {
      dir = fs.realpathSync(dir);
    } catch {
      // a folder that is not there: the path as given, resolved
    }
    return `path ${path.join(dir, path.basename(abs))}`;
  }
}

/**
 * The suffixes of vhdkit's own files beside a disk (merge journals and locks, read marks, copy work
 * files), defined once here for the modules that make them (ops/journal, ops/merge/copy) and the guard below.
 */
export const OWN_SUFFIX = { journal: '.vhdkit-merge.json', lock: '.vhdkit-lock', read: '.vhdkit-read.', copy: '.vhdkit-copy', takeover: '.takeover', temp: '.tmp' } as const;

const quote = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Names of vhdkit's own files beside a disk, with the temporary names they are made under. */
const OWN_NAMES = new RegExp(
  `(${quote(OWN_SUFFIX.journal)}(${quote(OWN_SUFFIX.temp)})?|${quote(OWN_SUFFIX.lock)}(\\.\\d+${quote(OWN_SUFFIX.temp)}|${quote(OWN_SUFFIX.takeover)})?|${quote(OWN_SUFFIX.read)}\\d+\\.[0-9a-f]+|${quote(OWN_SUFFIX.copy)})$`,
);

/** An errno-like cause, so that an IO error built here gets the exit code of a system one. */
function errno(code: string): Error {
  return Object.assign(new Error(code), { code });
}

/**
 * Refuses an output path that cannot be a file: one ending in a separator (a folder), an existing
 * folder, a path whose folder is missing or is a file. IO errors naming the path; nothing touched.
 */
export function checkOutputPath(p: string, role = 'output'): void {
  const fail = (code: string, why: string) => {
    throw new VhdError(ErrorCodes.IO, `cannot write the ${role} here: ${why} (${code})`, { file: p, cause: errno(code) });
  };
  if (p === '') fail('ENOENT', 'the path is empty');
  if (OWN_NAMES.test(path.basename(p))) {
    throw new VhdError(ErrorCodes.USAGE, `the ${role} has a name vhdkit uses for its own locks, marks and journals beside a disk (which it removes when stale); choose another name`, { file: p });
  }
  const endsInSeparator = /[\\/]$/.test(p);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') fail('ENOTDIR', `a part of the path before the name is a file, not a folder`);
    if (code !== 'ENOENT') fail(code ?? 'EIO', `stat failed (${(e as Error).message})`);
  }
  if (endsInSeparator) fail(st ? 'EISDIR' : 'ENOENT', st ? 'the path ends in a separator and names a folder; give a file name' : 'the path ends in a separator (a folder) and that folder does not exist; give a file name');
  if (st?.isDirectory()) fail('EISDIR', 'the path is a folder; give a file name');
  if (st && !st.isFile()) {
    const kind = st.isBlockDevice() ? 'a block device' : st.isCharacterDevice() ? 'a character device' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'not a regular file';
    throw new VhdError(ErrorCodes.USAGE, `the ${role} is ${kind}: vhdkit writes an output as a new file (a temporary name, then a rename) and never replaces one that is not a regular file; give a file name`, { file: p });
  }
  const dir = path.dirname(path.resolve(p));
  let dst: fs.Stats;
  try {
    dst = fs.statSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'ENOENT';
    return fail(code, code === 'ENOTDIR' ? `a part of ${dir} is a file, not a folder` : `folder ${dir} does not exist`);
  }
  if (!dst.isDirectory()) fail('ENOTDIR', `${dir} is a file, not a folder`);
}

/** A folder the command reads (merge --search): IO naming it when it is missing or a file. */
export function checkInputFolder(dir: string, role: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new VhdError(ErrorCodes.IO, `cannot read the ${role} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: dir, cause: e });
  }
  if (!st.isDirectory()) throw new VhdError(ErrorCodes.IO, `cannot read the ${role}: it is a file, not a folder (ENOTDIR)`, { file: dir, cause: errno('ENOTDIR') });
}

/**
 * A folder outputs go into, made when missing (with its parents): IO naming it when it is a file,
 * lies under a file, or cannot be made or written (read-only, no permission).
 */
export function checkOutputFolder(dir: string, role: string): void {
  if (dir === '') throw new VhdError(ErrorCodes.USAGE, `the ${role} is an empty path`);
  const fail = (code: string, why: string, cause?: unknown) => {
    throw new VhdError(ErrorCodes.IO, `cannot use the ${role}: ${why} (${code})`, { file: dir, cause: cause ?? errno(code) });
  };
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    if (code === 'EEXIST' || code === 'ENOTDIR') fail('ENOTDIR', 'it, or a folder above it, is a file', errno('ENOTDIR'));
    fail(code, `it cannot be made (${(e as Error).message.replace(/^[A-Z0-9]+: /, '')})`, e);
  }
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    fail((e as NodeJS.ErrnoException).code ?? 'EACCES', 'it cannot be written', e);
  }
}

/**
 * The guard: each output must be none of the inputs and none of the other outputs (by identity,
 * see fileIdentity), and must be a path that can hold a file (checkOutputPath). Throws USAGE
 * naming both paths; with or without --force, nothing is written.
 */
export function guardOutputs(outputs: RolePath[], inputs: RolePath[]): void {
  refuseOverlap(outputs, inputs);
  for (const o of outputs) checkOutputPath(o.path, o.role);
}

/** The identity half of guardOutputs, for files in folders the command creates (journals). */
export function refuseOverlap(outputs: RolePath[], inputs: RolePath[]): void {
  const seen = new Map<string, RolePath>();
  for (const i of inputs) if (!seen.has(fileIdentity(i.path))) seen.set(fileIdentity(i.path), i);
  for (const o of outputs) {
    const id = fileIdentity(o.path);
    const other = seen.get(id);
    if (other) {
      const same = other.path === o.path ? '' : ` (${other.path})`;
      throw new VhdError(
        ErrorCodes.USAGE,
        `the ${o.role} is the same file as the ${other.role}${same}: an output never replaces a file the command reads or writes; choose another path`,
        { file: o.path },
      );
    }
    seen.set(id, o);
  }
}

/** The inputs of a guard for an opened disk: the file and every disk of its chain below it. */
export function chainRoles(chain: ReadonlyArray<{ name: string; id?: string }>, what: string): RolePath[] {
  return chain.map((d, i) => ({ path: d.id ?? d.name, role: i === 0 ? what : `${what}'s ${i === 1 ? 'parent' : 'ancestor'}` }));
}
