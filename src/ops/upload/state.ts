/**
 * What the destination blob holds, classified once, so that the upload takes one path per case
 * (pure: no I/O, unit-tested with fast-check in test/upload-state.test.ts).
 *
 * Before the content is hashed, `chooseBase` says what the new content is compared with: a blob
 * given with --base, the blob's own previous generation (--snapshot), the base an interrupted
 * --snapshot generation recorded, or nothing. Once the plan's identity is known, `classifyBlob` says
 * what to do with the blob:
 *   complete     it already holds this content, complete: nothing to send
 *   refuse       it holds something else and --overwrite was not given (BLOB_EXISTS)
 *   resume       an unfinished upload of this very plan: go on from its watermark
 *   resume-copy  the same, interrupted while the server-side copy of the base ran
 *   copy         start from a server-side copy of the base (onto the blob when it exists)
 *   in-place     keep what the blob holds and write the differences over it (--snapshot over its
 *                previous generation, or --overwrite of an interrupted generation of another disk)
 *   create       a new, empty blob (replacing the existing one with --overwrite)
 */
import { isCompleteUpload, isVhdkitUpload, Meta, readBase, type BaseRecord } from './metadata.js';

/** The destination blob as read before anything is written (undefined: it does not exist). */
export interface BlobView {
  blobType?: string;
  metadata: Record<string, string>;
  size: number;
}

export interface BaseRequest {
  /** --base was given. */
  given: boolean;
  snapshot: boolean;
  overwrite: boolean;
  /** The quick identity of the disk being uploaded now. */
  stamp: string;
}

export type BaseChoice =
  | { kind: 'given' | 'previous' | 'none'; dirty: boolean }
  | { kind: 'recorded'; base: BaseRecord; dirty: false }
  | { kind: 'refuse'; message: string };

/** An upload of vhdkit that has not completed. */
export function isUnfinished(current: BlobView | undefined): boolean {
  return current !== undefined && isVhdkitUpload(current.metadata) && current.metadata[Meta.state] !== 'complete';
}

export function chooseBase(current: BlobView | undefined, r: BaseRequest): BaseChoice {
  if (current?.blobType && current.blobType !== 'PageBlob') {
    return { kind: 'refuse', message: `is a ${current.blobType}, not a page blob; remove it or choose another name` };
  }
  const unfinished = isUnfinished(current);
  const m = current?.metadata ?? {};
  // An interrupted generation of another disk, written in place over the previous one: what the
  // blob holds is a mixture, known chunk by chunk to nobody. Replacing it (--overwrite) rewrites
  // every chunk, clearing the zero ones; the snapshots of earlier generations are untouched.
  const dirty = r.snapshot && unfinished && m[Meta.stamp] !== r.stamp;
  if (dirty && !r.overwrite) return { kind: 'refuse', message: 'holds an unfinished upload of another disk; add --overwrite to replace it' };
  if (r.given) return { kind: 'given', dirty };
  if (r.snapshot && current && isCompleteUpload(m) && m[Meta.manifest]) return { kind: 'previous', dirty };
  if (r.snapshot && unfinished && m[Meta.base] === '.' && m[Meta.stamp] === r.stamp) {
    // An interrupted --snapshot generation of this disk: its base (the previous generation) is
    // recorded in the metadata, and the rerun continues its plan.
    return { kind: 'recorded', base: readBase(m)!, dirty: false };
  }
  return { kind: 'none', dirty };
}

export interface BlobRequest {
  /** The plan's identity and the content's digest, and the size the blob must have. */
  planId: string;
  digest: string;
  blobSize: number;
  /** The base's reference ("." for the blob's own previous generation), if there is a base. */
  baseRef?: string;
  dirty: boolean;
  snapshot: boolean;
  overwrite: boolean;
}

export type BlobState =
  | { kind: 'complete' }
  | { kind: 'refuse'; message: string }
  | { kind: 'resume'; done: number }
  | { kind: 'resume-copy'; done: number }
  | { kind: 'copy'; over: boolean }
  | { kind: 'in-place' }
  | { kind: 'create'; over: boolean };

export function classifyBlob(current: BlobView | undefined, r: BlobRequest): BlobState {
  const m = current?.metadata ?? {};
  // Already there: the same content, complete (--overwrite sends it again, e.g. after a failed --verify).
  if (current && !r.overwrite && isCompleteUpload(m) && m[Meta.digest] === r.digest && current.size === r.blobSize) return { kind: 'complete' };
  const resumable = isUnfinished(current) && m[Meta.plan] === r.planId;
  const ownBase = r.snapshot && r.baseRef === '.';
  if (current && !resumable && !r.overwrite && !(ownBase && isCompleteUpload(m))) {
    const what = isCompleteUpload(m) ? 'holds another vhdkit upload' : isVhdkitUpload(m) ? 'holds an unfinished upload of another disk' : 'already exists';
    return { kind: 'refuse', message: `${what}; add --overwrite to replace it${r.snapshot ? '' : ', or --snapshot to keep it as the previous generation'}` };
  }
  if (resumable) {
    const done = Math.min(r.blobSize, Math.max(0, Number(m[Meta.done] ?? 0) || 0));
    return m[Meta.state] === 'copying' ? { kind: 'resume-copy', done } : { kind: 'resume', done };
  }
  if (r.baseRef !== undefined && r.baseRef !== '.') return { kind: 'copy', over: current !== undefined };
  if (r.baseRef !== undefined || r.dirty) return { kind: 'in-place' };
  return { kind: 'create', over: current !== undefined };
}
