/**
 * The blob-metadata schema of a vhdkit upload, in one place for `upload` (which writes it) and
 * `generations` (which lists it). Azure metadata keys are C# identifiers: vhdkit's are lower case
 * and start with "vhdkit"; values are strings, names percent-encoded.
 *
 * A blob is a vhdkit upload when `vhdkit` is "1". Its state is "copying" (a server-side copy of the
 * base onto it is running), "uploading" (pages are being sent; `plan` names the plan and `done` its
 * watermark) or "complete" (every page, the Content-MD5 and the manifest sidecar are there). Only a
 * complete upload with a digest is ever taken as a base or counted as a generation's content.
 */

/** The metadata keys. */
export const Meta = {
  marker: 'vhdkit',
  state: 'vhdkitstate',
  plan: 'vhdkitplan',
  done: 'vhdkitdone',
  method: 'vhdkitmethod',
  digest: 'vhdkitdigest',
  chunk: 'vhdkitchunk',
  manifest: 'vhdkitmanifest',
  vsize: 'vhdkitvsize',
  uuid: 'vhdkituuid',
  stamp: 'vhdkitstamp',
  base: 'vhdkitbase',
  baseDigest: 'vhdkitbasedigest',
  baseManifest: 'vhdkitbasemanifest',
  baseUuid: 'vhdkitbaseuuid',
  baseStamp: 'vhdkitbasestamp',
  baseChunk: 'vhdkitbasechunk',
  baseSize: 'vhdkitbasesize',
  differing: 'vhdkitdiffering',
  data: 'vhdkitdata',
  completed: 'vhdkitcompleted',
} as const;

export type UploadState = 'copying' | 'uploading' | 'complete';

/** What an upload was based on, as its metadata records it. */
export interface BaseRecord {
  /** "." (the destination itself: its previous generation), "NAME" (same container) or "container/NAME". */
  ref: string;
  digest: string;
  /** The base's manifest sidecar blob. */
  manifest: string;
  /** UUID and quick identity of the disk the base was uploaded from. */
  uuid: string;
  stamp: string;
  chunkSize: number;
  /** The base blob's size (virtual size + footer). */
  size: number;
}

/** Everything an upload's metadata says. */
export interface UploadRecord {
  state: UploadState;
  /** The plan's identity and its watermark (while not complete). */
  plan?: string;
  done?: number;
  method: string;
  digest: string;
  chunkSize: number;
  /** The manifest sidecar blob (absent when the credential could not create it). */
  manifest?: string;
  /** The source's virtual size (the blob holds it rounded up, plus the footer). */
  virtualSize: number;
  uuid: string;
  stamp: string;
  base?: BaseRecord;
  /** Bytes that differ from the base, bytes holding data, when it was completed (complete uploads). */
  differing?: number;
  data?: number;
  completed?: string;
}

export function isVhdkitUpload(m: Record<string, string>): boolean {
  return m[Meta.marker] === '1';
}

export function isCompleteUpload(m: Record<string, string>): boolean {
  return isVhdkitUpload(m) && m[Meta.state] === 'complete' && !!m[Meta.digest];
}

/** A manifest sidecar blob (not a disk): its metadata names the upload it belongs to. */
export function isManifestSidecar(m: Record<string, string>): boolean {
  return m[Meta.manifest] !== undefined && !isVhdkitUpload(m);
}

const num = (v: string | undefined): number | undefined => (v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : undefined);
const name = (v: string | undefined): string | undefined => (v ? decodeURIComponent(v) : undefined);

/** The base an upload's metadata records, if any. */
export function readBase(m: Record<string, string>): BaseRecord | undefined {
  const ref = name(m[Meta.base]);
  if (ref === undefined) return undefined;
  return {
    ref,
    digest: m[Meta.baseDigest] ?? '',
    manifest: name(m[Meta.baseManifest]) ?? '',
    uuid: m[Meta.baseUuid] ?? '',
    stamp: m[Meta.baseStamp] ?? '',
    chunkSize: num(m[Meta.baseChunk]) ?? 0,
    size: num(m[Meta.baseSize]) ?? 0,
  };
}

/** An upload's metadata as a record; undefined for a blob vhdkit did not write. */
export function readRecord(m: Record<string, string>): UploadRecord | undefined {
  if (!isVhdkitUpload(m)) return undefined;
  const state = m[Meta.state];
  return {
    state: state === 'complete' && m[Meta.digest] ? 'complete' : state === 'copying' ? 'copying' : 'uploading',
    plan: m[Meta.plan],
    done: num(m[Meta.done]),
    method: m[Meta.method] ?? '',
    digest: m[Meta.digest] ?? '',
    chunkSize: num(m[Meta.chunk]) ?? 0,
    manifest: name(m[Meta.manifest]),
    virtualSize: num(m[Meta.vsize]) ?? 0,
    uuid: m[Meta.uuid] ?? '',
    stamp: m[Meta.stamp] ?? '',
    base: readBase(m),
    differing: num(m[Meta.differing]),
    data: num(m[Meta.data]),
    completed: m[Meta.completed],
  };
}

/** The metadata of a record (fields left undefined are left out). */
export function writeRecord(r: UploadRecord): Record<string, string> {
  const out: Record<string, string> = { [Meta.marker]: '1', [Meta.state]: r.state };
  const put = (key: string, v: string | number | undefined) => {
    if (v !== undefined) out[key] = String(v);
  };
  put(Meta.plan, r.plan);
  put(Meta.done, r.done);
  put(Meta.method, r.method);
  put(Meta.digest, r.digest);
  put(Meta.chunk, r.chunkSize);
  put(Meta.manifest, r.manifest === undefined ? undefined : encodeURIComponent(r.manifest));
  put(Meta.vsize, r.virtualSize);
  put(Meta.uuid, r.uuid);
  put(Meta.stamp, r.stamp);
  if (r.base) {
    put(Meta.base, encodeURIComponent(r.base.ref));
    put(Meta.baseDigest, r.base.digest);
    put(Meta.baseManifest, encodeURIComponent(r.base.manifest));
    put(Meta.baseUuid, r.base.uuid);
    put(Meta.baseStamp, r.base.stamp);
    put(Meta.baseChunk, r.base.chunkSize);
    put(Meta.baseSize, r.base.size);
  }
  put(Meta.differing, r.differing);
  put(Meta.data, r.data);
  put(Meta.completed, r.completed);
  return out;
}
