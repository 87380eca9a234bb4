/**
 * The base of an upload: a complete vhdkit blob given with --base, or the destination's previous
 * generation (--snapshot), as read from its metadata, with what a server-side copy of it needs.
 */
import { ErrorCodes, VhdError } from '../../errors.js';
import { type BlobLocation, publicUrl } from '../../azure/destination.js';
import type { PageBlob } from '../../azure/pageblob.js';
import { type BaseRecord, isCompleteUpload, Meta } from './metadata.js';

export interface BaseInfo extends BaseRecord {
  display: string;
  blob: PageBlob;
  /** URL for a server-side copy (with a SAS when one is needed). */
  copySource: string;
}

/** The base that blob `baseLoc` (metadata `m`, `size` bytes) is for an upload to `loc`. */
export function baseInfo(baseLoc: BlobLocation, loc: BlobLocation, m: Record<string, string>, size: number, blob: PageBlob): BaseInfo {
  const ref = baseLoc === loc ? '.' : baseLoc.container === loc.container && baseLoc.accountUrl === loc.accountUrl ? baseLoc.blob : `${baseLoc.container}/${baseLoc.blob}`;
  const sas = baseLoc.sas ?? (loc.sas && baseLoc.accountUrl === loc.accountUrl ? loc.sas : undefined);
  return {
    ref,
    display: displayOf(ref, loc),
    blob,
    digest: m[Meta.digest],
    manifest: decodeURIComponent(m[Meta.manifest]),
    uuid: m[Meta.uuid] ?? '',
    stamp: m[Meta.stamp] ?? '',
    chunkSize: Number(m[Meta.chunk]),
    size,
    copySource: sas ? `${publicUrl(baseLoc)}?${sas}` : publicUrl(baseLoc),
  };
}

/** The base of an interrupted --snapshot generation, from what its metadata recorded. */
export function recordedBase(loc: BlobLocation, record: BaseRecord, blob: PageBlob): BaseInfo {
  return { ...record, display: displayOf('.', loc), blob, copySource: publicUrl(loc) };
}

function displayOf(ref: string, loc: BlobLocation): string {
  return ref === '.' ? `${loc.blob} (previous generation)` : ref;
}

/** The blob given with --base, if it can be one: complete, with its manifest beside it. */
export function checkGivenBase(name: string, m: Record<string, string> | undefined): void {
  if (!m) throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${name} does not exist`);
  if (!isCompleteUpload(m)) {
    throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${name} is not a complete vhdkit upload (its metadata has no "complete" state); upload the base with vhdkit first`);
  }
  if (!m[Meta.manifest]) {
    throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${name} has no hash manifest beside it (it was uploaded with a SAS that did not cover one); upload it again with a container SAS or a connection string`);
  }
}
