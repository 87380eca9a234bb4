/**
 * `upload`: a disk (any form, chains included) to an Azure page blob as a fixed VHD, sending only
 * what the destination does not already hold.
 *
 * Steps (each leaves the blob in a state the next run recognises from its metadata):
 *   1. Decide what to send. Every upload has a hash manifest of the new content (chunked xxh64, see
 *      src/format/manifest.ts); the plan compares it chunk by chunk with what the blob will hold
 *      before any page is written:
 *        - nothing (a new blob): every non-zero chunk is written, zero chunks are never sent;
 *        - a base (`--base`, or the blob itself with `--snapshot`): the base's manifest, stored
 *          beside it. Chunks whose hash differs are written, chunks that became zero are cleared;
 *        - a differencing child of the disk the base was uploaded from: exactly the child's sectors
 *          (bitmaps), no hashing of the whole disk; the new manifest is the base's with the
 *          touched chunks re-hashed.
 *   2. Prepare the blob: created empty, or a server-side copy of the base (polled to completion),
 *      resized to the new size. Metadata says "uploading" with the plan's identity.
 *   3. Send the plan in ascending offset order: page writes of at most 4 MiB (512-aligned, adjacent
 *      chunks coalesced), clears for ranges that must become zero, then the footer. A watermark
 *      (everything below it has landed) goes to a local journal every second and to the blob's
 *      metadata every few seconds: a rerun after a crash resumes from the higher of the two.
 *   4. Mark it complete: Content-MD5 of the whole VHD (computed in a worker while sending), the
 *      manifest sidecar, then metadata "complete". A blob without that last step is never taken
 *      for a complete one (not as a base, not by `generations`).
 */
import { heldSectors } from '../disk/chain.js';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import xxhash from 'xxhash-wasm';
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import { VhdImage } from '../disk/image.js';
import { normalizeRanges, type Range } from '../disk/ranges.js';
import type { VirtualDisk } from '../disk/source.js';
import { footerBytes, MAX_VIRTUAL_SIZE } from '../disk/writer.js';
import { alignedBuffer, isZero } from '../io/aligned.js';
import { fileStamp } from '../io/file.js';
import { durableTemp, writeJsonDurably } from '../io/durable.js';
import { checkOutputFolder, refuseOverlap } from '../io/paths.js';
import { getPool } from '../pool/pool.js';
import type { DiskRef } from '../pool/tasks.js';
import { type BlobLocation, type ConnectOptions, parseDestination, publicUrl, siblingLocation } from '../azure/destination.js';
import { type BlobProps, containerClient, MAX_PAGE_WRITE, newCounters, PageBlob, statusOf } from '../azure/pageblob.js';
import type { RetryOptions } from '../azure/retry.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { azureSize } from './convert.js';
import { DEFAULT_CHUNK_SIZE, hash } from './hash.js';
import { alive, hasPendingMerge, holdLocks } from './journal.js';
import { type ChunkSource, emptyManifest, ManifestFile, manifestDigestHex, WINDOW_CHUNKS } from './manifest-file.js';
import { inputRoles, openAny, type OpenDiskOptions, type SourceFormat } from './open.js';

const MiB = 1024 * 1024;
/** Azure's page writes are at most 4 MiB; clears have no such limit, but keep each request modest. */
const MAX_CLEAR = 1024 * MiB;
/** How often the watermark is saved: local journal / blob metadata. */
const JOURNAL_EVERY_MS = 1000;
const METADATA_EVERY_MS = 5000;

export const DEFAULT_CONCURRENCY = 8;

export interface UploadOptions extends OperationOptions, OpenDiskOptions {
  /** Connection string for a "container/blob" destination (default: AZURE_STORAGE_CONNECTION_STRING). */
  connectionString?: string;
  /** Start from a server-side copy of this blob and send only what differs from it. */
  base?: string;
  /** Keep generations as snapshots of the destination blob: dedup against its current content, snapshot when done. */
  snapshot?: boolean;
  /** Round the virtual size up to a whole MiB (default true, as Azure requires for disks). */
  resize?: boolean;
  /** Compute and set the Content-MD5 of the whole VHD (default true). */
  md5?: boolean;
  /** Read back the blob when done and compare it chunk by chunk with the manifest. */
  verify?: boolean;
  /** Replace a destination blob that is not an unfinished upload of the same disk. */
  overwrite?: boolean;
  /** Requests in flight (default 8). */
  concurrency?: number;
  /** Manifest chunk size of an upload without a base (with one, the base's is used). */
  chunkSize?: number;
  /** Worker threads for hashing and the MD5 (default: the cores). */
  workers?: number;
  from?: SourceFormat;
  /** Where the local upload journals live (default: $XDG_STATE_HOME/vhdkit or ~/.local/state/vhdkit). */
  journalDir?: string;
  /** Extra Azure SDK pipeline factories (tests inject faults with one). */
  policies?: unknown[];
  retry?: RetryOptions;
  /** Told when a step starts: "hash", "copy", "upload", "finish", "verify". */
  onPhase?: (phase: string) => void;
}

export type UploadMethod = 'full' | 'chunks' | 'sectors';

export interface UploadResult {
  source: string;
  /** container/blob at account URL (no secret). */
  destination: string;
  blobSize: number;
  virtualSize: number;
  method: UploadMethod;
  base: string | null;
  snapshot: string | null;
  /** Payload bytes sent in page writes (this run). */
  bytesUploaded: number;
  /** Bytes cleared with Clear Pages (this run). */
  bytesCleared: number;
  /** Bytes the plan writes in all (a resumed run sends only the part past its watermark). */
  bytesPlanned: number;
  /** A naive upload's bytes: the whole VHD. */
  bytesFullUpload: number;
  /** Bytes of the new content that differ from the base (its chunks, or the child's sectors). */
  bytesDiffering: number;
  requests: number;
  retries: number;
  /** Where this run started (0 unless resumed). */
  resumedFrom: number;
  alreadyComplete: boolean;
  digest: string;
  chunkSize: number;
  contentMd5: string | null;
  /** The manifest sidecar blob (null when the credential could not create it). */
  manifest: string | null;
  verified: boolean | null;
  seconds: number;
  warnings: Finding[];
}

/** Metadata keys (Azure wants C# identifiers; vhdkit's are lower case and start with "vhdkit"). */
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
  differing: 'vhdkitdiffering',
  data: 'vhdkitdata',
  completed: 'vhdkitcompleted',
} as const;

export function isCompleteUpload(meta: Record<string, string>): boolean {
  return meta[Meta.marker] === '1' && meta[Meta.state] === 'complete' && !!meta[Meta.digest];
}

/** A source file's quick identity: what changes when the file is written (size, mtime, UUID). */
function stampOfChain(disk: VirtualDisk, from = 0, file?: string): string {
  const parts: string[] = [];
  const files = disk instanceof VhdImage ? disk.chain.slice(from).map((d) => [d.uuid, d.source.name]) : [['raw', file ?? '']];
  for (const [id, name] of files) {
    const st = fs.statSync(name);
    parts.push(`${id}:${st.size}:${Math.round(st.mtimeMs)}`);
  }
  return createHash('sha256').update(parts.join('|')).digest('hex').slice(0, 32);
}

function defaultJournalDir(): string {
  const state = process.env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state');
  return path.join(state, 'vhdkit', 'uploads');
}

interface LocalJournal {
  kind: 'vhdkit-upload';
  destination: string;
  plan: string;
  done: number;
  /** The id of the blob lease this upload holds (or held, when it was killed), and its process. */
  lease?: string;
  pid?: number;
  host?: string;
}

class UploadJournal {
  readonly file: string;
  /**
   * The lease id to propose: the one a killed run of this machine held (its process gone), else a
   * new one. An upload to the same blob running now keeps its id to itself: this one then meets its
   * lease and stops (LOCKED). A journal folder shared by several machines (a home on NFS) only lends
   * ids between runs of one host.
   */
  leaseId: string;
  /** The id came from a killed run: switch the lease to a fresh one as soon as it is held (two reruns may have read it). */
  orphan: boolean;
  /** What a previous run left (read once: from here on only this run writes the file). */
  private readonly found: LocalJournal | undefined;
  constructor(dir: string, destination: string) {
    this.file = uploadJournalPath(dir, destination);
    const j = (this.found = this.load());
    this.orphan =
      typeof j?.lease === 'string' && /^[0-9a-f-]{36}$/.test(j.lease) && j.host === os.hostname() && typeof j.pid === 'number' && j.pid !== process.pid && !alive(j.pid);
    this.leaseId = this.orphan ? j!.lease! : randomUUID();
  }
  private load(): LocalJournal | undefined {
    try {
      const j = JSON.parse(fs.readFileSync(this.file, 'utf8')) as LocalJournal;
      return j.kind === 'vhdkit-upload' ? j : undefined;
    } catch {
      return undefined;
    }
  }
  /** The watermark a previous run of this plan saved (0 if none). */
  read(plan: string): number {
    const j = this.found;
    return j && j.plan === plan && Number.isSafeInteger(j.done) ? j.done : 0;
  }
  write(destination: string, plan: string, done: number): void {
    writeJsonDurably(this.file, { kind: 'vhdkit-upload', destination, plan, done, lease: this.leaseId, pid: process.pid, host: os.hostname() } satisfies LocalJournal);
  }
  remove(): void {
    fs.rmSync(this.file, { force: true });
  }
}

/** One step of the plan, in ascending offset order. */
interface Op {
  kind: 'write' | 'clear' | 'footer';
  start: number;
  end: number;
}

/**
 * The plan of a chunk comparison: for each chunk, what the blob holds before (the base's chunk, or
 * zeros) and what it must hold after. Chunks past the base's content but inside the base blob (its
 * footer, the partial tail) hold unknown bytes: they are written or cleared whatever their hash.
 * Adjacent writes coalesce up to 4 MiB, adjacent clears up to MAX_CLEAR.
 */
async function* chunkPlan(next: ChunkSource, base: ChunkSource, baseBlobSize: number, from: number): AsyncGenerator<Op> {
  const cs = next.header.chunkSize;
  const chunks = next.header.chunks;
  const vs = next.header.virtualSize;
  const baseVs = base.header.virtualSize;
  let pending: Op | undefined;
  for (let first = Math.floor(from / cs); first < chunks; first += WINDOW_CHUNKS) {
    const n = Math.min(WINDOW_CHUNKS, chunks - first);
    const [a, b] = await Promise.all([next.window(first, n), base.window(first, n)]);
    for (let i = 0; i < n; i++) {
      const start = (first + i) * cs;
      const end = Math.min(vs, start + cs);
      // What the blob holds here before this upload writes anything:
      const known = end <= baseVs && i < b.hashes.length; // the base's chunk, hash known
      const zeroBefore = known ? b.zero[i] === 1 : start >= baseBlobSize; // past the base blob: zeros
      let kind: Op['kind'] | undefined;
      if (a.zero[i]) kind = zeroBefore ? undefined : 'clear';
      else kind = known && !zeroBefore && a.hashes[i] === b.hashes[i] ? undefined : 'write';
      if (!kind) continue;
      const s = Math.max(start, from);
      if (s >= end) continue;
      const limit = kind === 'write' ? MAX_PAGE_WRITE : MAX_CLEAR;
      if (pending && pending.kind === kind && pending.end === s && end - pending.start <= limit) pending.end = end;
      else {
        if (pending) yield pending;
        pending = { kind, start: s, end };
      }
    }
  }
  if (pending) yield pending;
}

/** The plan of a differencing child: its own sectors, in pieces of at most 4 MiB on 4 MiB boundaries. */
/** The union of the sectors `levels` hold, clipped to `size`, a window at a time (disk/chain). */
export const chainSectorRanges = heldSectors;

async function* sectorPlan(ranges: AsyncIterable<Range>, from: number): AsyncGenerator<Op> {
  for await (const [a, b] of ranges) {
    let s = Math.max(a, from);
    while (s < b) {
      const e = Math.min(b, (Math.floor(s / MAX_PAGE_WRITE) + 1) * MAX_PAGE_WRITE);
      yield { kind: 'write', start: s, end: e };
      s = e;
    }
  }
}

/** The end of every plan: zeros past the source's end (where a base held data), then the footer. */
async function* withTail(body: AsyncGenerator<Op>, tail: Op[], from: number): AsyncGenerator<Op> {
  yield* body;
  for (const op of tail) if (op.end > from) yield { ...op, start: Math.max(op.start, from) };
}

/** Bytes per kind in the whole plan, and how many of them lie at or past `from` (what a resumed run sends). */
async function planTotals(ops: AsyncGenerator<Op>, from: number): Promise<{ write: number; clear: number; footer: number; remaining: number }> {
  const t = { write: 0, clear: 0, footer: 0, remaining: 0 };
  for await (const op of ops) {
    t[op.kind] += op.end - op.start;
    if (op.end > from) t.remaining += op.end - Math.max(op.start, from);
  }
  return t;
}

/** The local journal of uploads to `destination` (a blob URL without its SAS). */
function uploadJournalPath(dir: string, destination: string): string {
  return path.join(dir, `${createHash('sha256').update(destination).digest('hex').slice(0, 32)}.json`);
}

export function upload(file: string, destination: string, options: UploadOptions = {}): Promise<UploadResult> {
  return withCodedErrors(() => uploadDisk(file, destination, options));
}

async function uploadDisk(file: string, destination: string, options: UploadOptions): Promise<UploadResult> {
  const started = performance.now();
  const warnings: Finding[] = [];
  const signal = options.signal;
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) {
    throw new VhdError(ErrorCodes.USAGE, `--concurrency must be a whole number from 1 to 256, got ${concurrency}`);
  }
  if (options.snapshot && options.base) throw new VhdError(ErrorCodes.USAGE, '--snapshot keeps generations in one blob: it cannot be combined with --base');
  const connect: ConnectOptions = { connectionString: options.connectionString, policies: options.policies, retry: options.retry };
  const loc = parseDestination(destination, connect);
  // Where the journal goes is checked (and made) before anything is read or sent.
  const journalDir = options.journalDir ?? defaultJournalDir();
  checkOutputFolder(journalDir, 'journal folder (--journal-dir)');
  const counters = newCounters();
  const retry = { ...options.retry, signal };
  const container = await containerClient(loc, connect);
  const blob = new PageBlob(container, loc, counters, retry);

  const pool = getPool({ workers: options.workers });
  const { disk, format } = await openAny(file, options.from ?? 'auto', {
    ...options,
    onFinding: (f) => {
      warnings.push(f);
      options.onFinding?.(f);
    },
  });
  try {
    const journalFile = uploadJournalPath(journalDir, publicUrl(loc));
    refuseOverlap([{ path: journalFile, role: 'upload journal' }, { path: durableTemp(journalFile), role: "upload journal's temporary file" }], inputRoles(disk, file));
  } catch (e) {
    await disk.close();
    throw e;
  }
  const chainFiles = disk instanceof VhdImage ? disk.chain.map((d) => d.source.name) : [file];
  const opened = chainFiles.map(fileStamp);
  const releases: Array<() => void> = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vhdkit-upload-'));
  try {
    // A merge into any disk of the chain would change what is being sent: hold their shared locks
    // (other uploads of the same files may run at the same time; a merge may not).
    releases.push(...holdLocks(chainFiles, { shared: 'upload', during: 'the upload' }, warnings));
    // A merge into the chain that began (or ended) between opening the disk and taking the locks:
    // what was read of its structure may be stale.
    for (const [i, f] of chainFiles.entries()) {
      if (hasPendingMerge(f)) throw new VhdError(ErrorCodes.MERGE_PENDING, 'a merge into it began while this upload opened it; complete it (vhdkit merge --resume), then upload', { file: f });
      if (fileStamp(f) !== opened[i]) throw new VhdError(ErrorCodes.LOCKED, 'it changed while this upload opened it (a merge?); run the upload again', { file: f });
    }
    return await run();
  } finally {
    await blob.releaseLease();
    for (const r of releases) r();
    await disk.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }

  async function run(): Promise<UploadResult> {
    const sourceSize = disk.virtualSize;
    const virtualSize = options.resize === false ? sourceSize : azureSize(sourceSize);
    if (virtualSize % 512 !== 0) throw new VhdError(ErrorCodes.AZURE_LIMIT, `virtual size ${virtualSize} is not a multiple of 512 bytes`, { file });
    if (virtualSize > MAX_VIRTUAL_SIZE) {
      throw new VhdError(ErrorCodes.AZURE_LIMIT, `virtual size ${virtualSize} exceeds the 2040 GiB a VHD can hold; Azure cannot take this disk as a VHD`, { file });
    }
    const blobSize = virtualSize + 512;
    const ref: DiskRef = { file, format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom };
    const sourceStamp = stampOfChain(disk, 0, file);
    const uuid = disk instanceof VhdImage ? disk.footer.uniqueId : createHash('md5').update(`vhdkit raw ${sourceStamp}`).digest().subarray(0, 16);
    // The footer is a function of the source: the same disk always makes the same blob (and MD5).
    const footer = footerBytes({
      type: 'fixed',
      virtualSize,
      uuid,
      timestamp: disk instanceof VhdImage ? new Date(946684800000 + disk.footer.timestamp * 1000) : new Date(946684800000),
    });

    // ---- what the blob holds now, and what it will be based on --------------------------------
    let current = await blob.props();
    if (current?.blobType && current.blobType !== 'PageBlob') {
      throw new VhdError(ErrorCodes.BLOB_EXISTS, `${blob.name} is a ${current.blobType}, not a page blob; remove it or choose another name`);
    }
    const unfinished = current?.metadata[Meta.marker] === '1' && current.metadata[Meta.state] !== 'complete';
    let base: BaseInfo | undefined;
    if (options.base) {
      const baseLoc = siblingLocation(loc, options.base, connect);
      if (baseLoc.container === loc.container && baseLoc.blob === loc.blob && baseLoc.accountUrl === loc.accountUrl) {
        throw new VhdError(ErrorCodes.USAGE, `--base ${options.base} is the destination itself; use --snapshot to keep generations in one blob`);
      }
      const baseBlob = new PageBlob(await containerClient(baseLoc, connect), baseLoc, counters, retry);
      let props: BlobProps | undefined;
      try {
        props = await baseBlob.props();
      } catch (e) {
        // A base given by name is reached with the destination's SAS (siblingLocation passes it on).
        if (e instanceof VhdError && e.code === ErrorCodes.AZURE_AUTH && loc.sas && (!baseLoc.sas || baseLoc.sas === loc.sas)) {
          throw new VhdError(ErrorCodes.AZURE_AUTH, `${e.message} (the destination's SAS does not cover the base: give --base as a URL with its own SAS, or use a container SAS)`);
        }
        throw e;
      }
      if (!props) throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${baseBlob.name} does not exist`);
      if (!isCompleteUpload(props.metadata)) {
        throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${baseBlob.name} is not a complete vhdkit upload (its metadata has no "complete" state); upload the base with vhdkit first`);
      }
      if (!props.metadata[Meta.manifest]) {
        throw new VhdError(ErrorCodes.BASE_INVALID, `base blob ${baseBlob.name} has no hash manifest beside it (it was uploaded with a SAS that did not cover one); upload it again with a container SAS or a connection string`);
      }
      base = baseInfo(baseLoc, loc, props.metadata, props.size, baseBlob);
    } else if (options.snapshot && current && isCompleteUpload(current.metadata) && current.metadata[Meta.manifest]) {
      base = baseInfo(loc, loc, current.metadata, current.size, blob);
    } else if (options.snapshot && unfinished && current!.metadata[Meta.base] === '.' && current!.metadata[Meta.stamp] === sourceStamp) {
      // An interrupted --snapshot generation of this disk: its base (the previous generation) is
      // recorded in the metadata, and the rerun continues its plan.
      base = recordedBase(loc, current!.metadata, blob);
    }
    // An interrupted generation of another disk, written in place over the previous one: what the
    // blob holds is a mixture, known chunk by chunk to nobody. Replacing it (--overwrite) rewrites
    // every chunk, clearing the zero ones; the snapshots of earlier generations are untouched.
    const dirty = options.snapshot && unfinished && current!.metadata[Meta.stamp] !== sourceStamp;
    if (dirty && !options.overwrite) {
      throw new VhdError(ErrorCodes.BLOB_EXISTS, `${blob.name} holds an unfinished upload of another disk; add --overwrite to replace it`);
    }

    // ---- the manifest of the new content, and the plan ------------------------------------------
    options.onPhase?.('hash');
    let method: UploadMethod = base ? 'chunks' : 'full';
    const chunkSize = base ? base.chunkSize : (options.chunkSize ?? DEFAULT_CHUNK_SIZE);
    let baseManifest: ChunkSource = emptyManifest(0, chunkSize);
    if (base) {
      const basePath = path.join(tmp, 'base.manifest');
      if (!(await base.blob.downloadSidecar(base.manifest, basePath))) {
        throw new VhdError(ErrorCodes.BASE_INVALID, `${base.blob.name}: its hash manifest ${base.manifest} is missing; upload the base again with vhdkit`);
      }
      const m = await ManifestFile.open(basePath);
      baseManifest = m;
      if (manifestDigestHex(m.header) !== base.digest || m.header.chunkSize !== chunkSize) {
        throw new VhdError(ErrorCodes.BASE_INVALID, `${base.blob.name}: its manifest ${base.manifest} does not match the digest in its metadata`);
      }
    }
    const newPath = path.join(tmp, 'new.manifest');
    /** For the 'sectors' method: the child's sectors, in order, a window at a time. */
    let sectorRanges: (() => AsyncGenerator<Range>) | undefined;
    const ancestorIndex =
      base && disk instanceof VhdImage && disk.type === 'differencing' ? disk.chain.findIndex((d, i) => i > 0 && d.uuid === base!.uuid) : -1;
    if (base && ancestorIndex > 0 && disk instanceof VhdImage && baseManifest instanceof ManifestFile && disk.virtualSize === baseManifest.header.virtualSize) {
      // A child of the disk the base was uploaded from: send its sectors, if the ancestor is still
      // what the base holds (its quick identity unchanged, or else its hash equal).
      let same = stampOfChain(disk, ancestorIndex) === base.stamp;
      if (!same) {
        const ancestor = disk.chain[ancestorIndex];
        const r = await hash(ancestor.source.name, { chunkSize, workers: options.workers, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom, signal });
        same = r.digest === base.digest;
        if (!same) {
          warnings.push({
            code: ErrorCodes.BASE_INVALID,
            severity: 'warning',
            message: `${ancestor.source.name}: differs from what base blob ${base.blob.name} holds (digest ${r.digest}, blob ${base.digest}); comparing whole chunks instead of sending the child's sectors`,
          });
        }
      }
      if (same) {
        method = 'sectors';
        const levels = disk.chain.slice(0, ancestorIndex);
        const size = disk.virtualSize;
        sectorRanges = () => chainSectorRanges(levels, size);
        await deriveManifest(disk, path.join(tmp, 'base.manifest'), sectorRanges(), newPath, signal);
      }
    }
    if (method !== 'sectors') {
      await hash(file, { chunkSize, workers: options.workers, from: format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom, manifest: newPath, force: true, signal, onProgress: options.onProgress });
    }
    const next = await ManifestFile.open(newPath);
    try {
      const digest = manifestDigestHex(next.header);
      // Everything that decides the plan: a rerun with the same identity continues it.
      const planId = createHash('sha256')
        .update([sourceStamp, digest, virtualSize, method, chunkSize, base ? `${base.ref}@${base.digest}` : 'none', options.resize === false].join('\n'))
        .digest('hex')
        .slice(0, 32);

      const journal = new UploadJournal(journalDir, publicUrl(loc));
      // Already there: the same content, complete (--overwrite sends it again, e.g. after a failed --verify).
      if (current && !options.overwrite && isCompleteUpload(current.metadata) && current.metadata[Meta.digest] === digest && current.size === blobSize) {
        journal.remove(); // a run killed after marking the blob complete, before removing its journal
        options.onPhase?.('verify');
        const verified = options.verify ? await verifyBlob(blob, next, footer, virtualSize, concurrency, signal) : null;
        return summary({ method, digest, chunkSize, virtualSize, blobSize, alreadyComplete: true, contentMd5: current.contentMd5 ?? null, manifest: current.metadata[Meta.manifest] ? decodeURIComponent(current.metadata[Meta.manifest]) : null, verified, planned: 0, differing: 0, resumedFrom: blobSize, snapshot: null, base: current.metadata[Meta.base] ? decodeURIComponent(current.metadata[Meta.base]) : null });
      }
      const resumable = unfinished && current!.metadata[Meta.plan] === planId;
      const isOwnBase = options.snapshot && base !== undefined && base.ref === '.';
      if (current && !resumable && !options.overwrite && !(isOwnBase && isCompleteUpload(current.metadata))) {
        const what = isCompleteUpload(current.metadata) ? 'holds another vhdkit upload' : current.metadata[Meta.marker] ? 'holds an unfinished upload of another disk' : 'already exists';
        throw new VhdError(ErrorCodes.BLOB_EXISTS, `${blob.name} ${what}; add --overwrite to replace it${options.snapshot ? '' : ', or --snapshot to keep it as the previous generation'}`);
      }

      let resumeFrom = 0;
      if (resumable) resumeFrom = Math.min(blobSize, Math.max(Number(current!.metadata[Meta.done] ?? 0) || 0, journal.read(planId)));

      const sidecarName = `${loc.blob}.${digest}.vhdkit-manifest`;
      const meta = (state: string, done: number): Record<string, string> => ({
        [Meta.marker]: '1',
        [Meta.state]: state,
        [Meta.plan]: planId,
        [Meta.done]: String(done),
        [Meta.method]: method,
        [Meta.digest]: digest,
        [Meta.chunk]: String(chunkSize),
        [Meta.manifest]: encodeURIComponent(sidecarName),
        [Meta.vsize]: String(sourceSize),
        [Meta.uuid]: disk instanceof VhdImage ? disk.uuid : '',
        [Meta.stamp]: sourceStamp,
        ...(base ? baseMetadata(base) : {}),
      });

      // ---- the blob: leased, then created, copied from the base, or continued ---------------------
      // The upload holds the blob's lease while it writes: a second writer (another upload to the
      // same name) is refused (LOCKED) instead of mixing its pages with these. The lease id goes to
      // the local journal as soon as it is held, so a rerun after a kill takes the lease back at
      // once. A blob that was there when the plan was made is leased only if it has not changed
      // since (its ETag). Azure refuses Copy Blob onto a blob under a finite lease, and any lease
      // operation while a copy onto it is pending: a copy from the base therefore runs unleased
      // (onto a blob that existed, just after checking it under a lease, then broken), and the lease
      // is taken when the copy has ended, with a check that the blob is still this upload's.
      const leased = async (ifMatch?: string) => {
        await blob.acquireLease(journal.leaseId, ifMatch, journal.orphan);
        journal.leaseId = blob.leaseId!;
        journal.orphan = false;
        journal.write(publicUrl(loc), planId, resumeFrom);
      };
      const ours = async () => {
        const now = await blob.props();
        if (now?.metadata[Meta.plan] !== planId) {
          throw new VhdError(ErrorCodes.LOCKED, `${blob.name} was written by another writer at the same time as this upload; run it again to see what it holds`);
        }
      };
      /** Makes the blob (or starts the copy onto it), then leases it and checks it is this upload's. */
      const claim = async (make: () => Promise<void>, copy: boolean) => {
        try {
          await make();
        } catch (e) {
          // There already: made by another writer meanwhile, or by an attempt of ours whose
          // response was lost. Whose it is shows below, under the lease.
          const status = statusOf(e);
          if (!(e instanceof VhdError) || (status !== 409 && status !== 412)) throw e;
        }
        if (copy) await blob.waitForCopy();
        await leased();
        await ours();
      };
      const startCopy = (onlyIfNew: boolean) => () => blob.startCopy(base!.copySource, meta('copying', 0), onlyIfNew);
      /** A copy onto a blob that exists: checked under the lease (ETag), which is broken for the copy. */
      const copyOver = async (ifMatch?: string) => {
        await blob.acquireLease(journal.leaseId, ifMatch, journal.orphan);
        journal.orphan = false;
        await blob.breakLease();
        await claim(startCopy(false), true);
      };
      const copyRunning = resumable && current!.metadata[Meta.state] === 'copying';
      const copyFromBase = !resumable && base !== undefined && base.ref !== '.';
      if (current && !copyRunning && !copyFromBase) await leased(current.etag);
      if (!resumable) {
        options.onPhase?.('copy');
        if (copyFromBase) {
          await blob.ensureContainer();
          if (current) await copyOver(current.etag);
          else await claim(startCopy(true), true);
          await blob.setContentMd5(undefined);
          await blob.setMetadata(meta('uploading', 0));
        } else if (base || dirty) {
          await blob.setMetadata(meta('uploading', 0));
          await blob.setContentMd5(undefined);
        } else {
          await blob.ensureContainer();
          const create = () => blob.create(blobSize, meta('uploading', 0), !current);
          if (current) await create();
          else await claim(create, false);
        }
        current = await blob.props();
      } else if (copyRunning) {
        options.onPhase?.('copy');
        let failed = false;
        try {
          await blob.waitForCopy();
        } catch (e) {
          if (!(e instanceof VhdError) || e.code !== ErrorCodes.AZURE) throw e;
          failed = true;
        }
        if (failed) await copyOver(); // a failed or aborted copy: start it again
        else {
          await leased();
          await ours();
        }
        await blob.setContentMd5(undefined);
        await blob.setMetadata(meta('uploading', resumeFrom));
        current = await blob.props();
      }
      if (!current) throw new VhdError(ErrorCodes.AZURE, `${blob.name}: the blob vanished while being prepared`);
      if (current.size !== blobSize) await blob.resize(blobSize);
      blob.size = blobSize;

      // ---- send ---------------------------------------------------------------------------------
      options.onPhase?.('upload');
      const baseBlobSize = base ? base.size : dirty ? current.size : 0;
      const tail: Op[] = [];
      if (baseBlobSize > sourceSize && sourceSize < virtualSize) tail.push({ kind: 'clear', start: sourceSize, end: virtualSize });
      tail.push({ kind: 'footer', start: virtualSize, end: blobSize });
      const makePlan = (from: number): AsyncGenerator<Op> =>
        withTail(sectorRanges ? sectorPlan(sectorRanges(), from) : chunkPlan(next, baseManifest, baseBlobSize, from), tail, from);
      const totals = await planTotals(makePlan(0), resumeFrom);
      const md5 = options.md5 === false ? undefined : pool.md5({ disk: ref, virtualSize, footer }, signal);
      md5?.catch(() => {}); // awaited below; a failure is reported there
      await send(makePlan(resumeFrom), {
        disk,
        blob,
        footer,
        concurrency,
        signal,
        total: totals.remaining,
        onProgress: options.onProgress,
        saveWatermark: async (done, toBlob) => {
          journal.write(publicUrl(loc), planId, done);
          if (toBlob) await blob.setMetadata(meta('uploading', done));
        },
      });

      // ---- complete -----------------------------------------------------------------------------
      options.onPhase?.('finish');
      const contentMd5 = md5 ? (await md5).md5 : null;
      throwIfAborted(signal);
      await blob.setContentMd5(contentMd5 ?? undefined);
      let manifestName: string | null = sidecarName;
      try {
        await blob.uploadSidecar(sidecarName, newPath);
      } catch (e) {
        // A SAS for one blob cannot create another: the upload is complete, but cannot be a base.
        if (!(e instanceof VhdError && e.code === ErrorCodes.AZURE_AUTH)) throw e;
        manifestName = null;
        warnings.push({
          code: ErrorCodes.AZURE_AUTH,
          severity: 'warning',
          message: `${blob.name}: the credential may not create the manifest blob ${sidecarName} beside it (a SAS for one blob); the upload is complete, but cannot serve as a --base`,
        });
      }
      // The sectors plan writes exactly the child's sectors (its tail clears are not differences).
      const differing = sectorRanges ? totals.write : totals.write + totals.clear;
      const dataBytes = Math.min(virtualSize, (next.header.chunks - next.header.zeroChunks) * chunkSize);
      const final: Record<string, string> = {
        ...meta('complete', blobSize),
        [Meta.differing]: String(differing),
        [Meta.data]: String(dataBytes),
        [Meta.completed]: new Date().toISOString(),
      };
      delete final[Meta.done];
      delete final[Meta.plan];
      if (!manifestName) delete final[Meta.manifest];
      await blob.setMetadata(final);
      const snapshot = options.snapshot ? await blob.snapshot(final) : null;
      journal.remove();
      options.onPhase?.('verify');
      const verified = options.verify ? await verifyBlob(blob, next, footer, virtualSize, concurrency, signal) : null;
      return summary({
        method,
        digest,
        chunkSize,
        virtualSize,
        blobSize,
        alreadyComplete: false,
        contentMd5,
        manifest: manifestName,
        verified,
        planned: totals.write + totals.footer,
        differing,
        resumedFrom: resumeFrom,
        snapshot,
        base: base ? base.display : null,
      });
    } finally {
      await next.close().catch(() => {});
      if (baseManifest instanceof ManifestFile) await baseManifest.close().catch(() => {});
    }

    function summary(s: {
      method: UploadMethod;
      digest: string;
      chunkSize: number;
      virtualSize: number;
      blobSize: number;
      alreadyComplete: boolean;
      contentMd5: string | null;
      manifest: string | null;
      verified: boolean | null;
      planned: number;
      differing: number;
      resumedFrom: number;
      snapshot: string | null;
      base: string | null;
    }): UploadResult {
      return {
        source: file,
        destination: loc.display,
        blobSize: s.blobSize,
        virtualSize: s.virtualSize,
        method: s.method,
        base: s.base,
        snapshot: s.snapshot,
        bytesUploaded: counters.bytesUploaded,
        bytesCleared: counters.bytesCleared,
        bytesPlanned: s.planned,
        bytesFullUpload: s.blobSize,
        bytesDiffering: s.differing,
        requests: counters.requests,
        retries: counters.retries.retries,
        resumedFrom: s.resumedFrom,
        alreadyComplete: s.alreadyComplete,
        digest: s.digest,
        chunkSize: s.chunkSize,
        contentMd5: s.contentMd5,
        manifest: s.manifest,
        verified: s.verified,
        seconds: (performance.now() - started) / 1000,
        warnings,
      };
    }
  }
}

/** What an upload is based on: a complete vhdkit blob (or the destination's previous generation). */
interface BaseInfo {
  /** "." (the destination itself, --snapshot), "NAME" (same container) or "container/NAME". */
  ref: string;
  display: string;
  blob: PageBlob;
  digest: string;
  /** The sidecar blob holding its hash manifest. */
  manifest: string;
  /** UUID and quick identity of the disk it was uploaded from. */
  uuid: string;
  stamp: string;
  chunkSize: number;
  /** The base blob's size (virtual size + footer). */
  size: number;
  /** URL for a server-side copy (with a SAS when one is needed). */
  copySource: string;
}

function baseInfo(baseLoc: BlobLocation, loc: BlobLocation, m: Record<string, string>, size: number, blob: PageBlob): BaseInfo {
  const ref = baseLoc === loc ? '.' : baseLoc.container === loc.container && baseLoc.accountUrl === loc.accountUrl ? baseLoc.blob : `${baseLoc.container}/${baseLoc.blob}`;
  const sas = baseLoc.sas ?? (loc.sas && baseLoc.accountUrl === loc.accountUrl ? loc.sas : undefined);
  return {
    ref,
    display: ref === '.' ? `${loc.blob} (previous generation)` : ref,
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

const BASE_KEYS = { ref: 'vhdkitbase', digest: 'vhdkitbasedigest', manifest: 'vhdkitbasemanifest', uuid: 'vhdkitbaseuuid', stamp: 'vhdkitbasestamp', chunk: 'vhdkitbasechunk', size: 'vhdkitbasesize' } as const;

function baseMetadata(b: BaseInfo): Record<string, string> {
  return {
    [BASE_KEYS.ref]: encodeURIComponent(b.ref),
    [BASE_KEYS.digest]: b.digest,
    [BASE_KEYS.manifest]: encodeURIComponent(b.manifest),
    [BASE_KEYS.uuid]: b.uuid,
    [BASE_KEYS.stamp]: b.stamp,
    [BASE_KEYS.chunk]: String(b.chunkSize),
    [BASE_KEYS.size]: String(b.size),
  };
}

/** The base of an interrupted --snapshot generation, from what its metadata recorded. */
function recordedBase(loc: BlobLocation, m: Record<string, string>, blob: PageBlob): BaseInfo {
  return {
    ref: '.',
    display: `${loc.blob} (previous generation)`,
    blob,
    digest: m[BASE_KEYS.digest],
    manifest: decodeURIComponent(m[BASE_KEYS.manifest] ?? ''),
    uuid: m[BASE_KEYS.uuid] ?? '',
    stamp: m[BASE_KEYS.stamp] ?? '',
    chunkSize: Number(m[BASE_KEYS.chunk]),
    size: Number(m[BASE_KEYS.size]),
    copySource: publicUrl(loc),
  };
}

/**
 * The manifest of a child from its base's: a copy of the base manifest with every chunk the child's
 * sectors touch re-hashed from the chain (read on the main thread: this is the child's data only).
 */
async function deriveManifest(disk: VirtualDisk, basePath: string, ranges: AsyncIterable<Range>, out: string, signal?: AbortSignal): Promise<void> {
  fs.copyFileSync(basePath, out);
  const m = await ManifestFile.open(out, true);
  try {
    const { h64Raw } = await xxhash();
    const cs = m.header.chunkSize;
    const vs = m.header.virtualSize;
    const buf = alignedBuffer(cs);
    let last = -1;
    for await (const [a, b] of ranges) {
      for (let c = Math.max(Math.floor(a / cs), last + 1); c * cs < b; c++) {
        throwIfAborted(signal);
        const view = buf.subarray(0, Math.min(cs, vs - c * cs));
        await disk.read(view, c * cs);
        const zero = isZero(view);
        await m.setChunk(c, zero ? 0n : h64Raw(view, 0n), zero);
        last = c;
      }
    }
    await m.finish();
  } finally {
    await m.close();
  }
}

interface SendOptions {
  disk: VirtualDisk;
  blob: PageBlob;
  footer: Uint8Array;
  concurrency: number;
  signal?: AbortSignal;
  total: number;
  onProgress?: (p: { done: number; total: number }) => void;
  /** Saves the watermark: to the local journal always, to the blob's metadata when `toBlob`. */
  saveWatermark: (done: number, toBlob: boolean) => Promise<void>;
}

/**
 * Runs the plan with `concurrency` requests in flight and a bounded set of 4 MiB buffers. The
 * watermark is the start of the oldest operation still in flight or failed (or the end of the
 * last one issued): everything below it has landed.
 */
async function send(plan: AsyncGenerator<Op>, o: SendOptions): Promise<void> {
  const free: Uint8Array[] = [];
  const inFlight = new Map<number, Promise<void>>();
  const starts = new Set<number>();
  let issuedEnd = -1;
  let done = 0;
  let failure: unknown;
  let lastJournal = performance.now();
  let lastMeta = performance.now();
  let savingMeta: Promise<void> | undefined;

  const watermark = (): number => (starts.size > 0 ? Math.min(...starts) : issuedEnd);

  const maybeSave = () => {
    const now = performance.now();
    if (now - lastJournal < JOURNAL_EVERY_MS) return;
    lastJournal = now;
    const mark = watermark();
    if (mark < 0) return;
    const toBlob = now - lastMeta >= METADATA_EVERY_MS && !savingMeta;
    if (toBlob) lastMeta = now;
    const p = o.saveWatermark(mark, toBlob).catch((e) => {
      failure ??= e;
    });
    if (toBlob) savingMeta = p.finally(() => (savingMeta = undefined));
  };

  const runOp = async (op: Op): Promise<void> => {
    const length = op.end - op.start;
    if (op.kind === 'clear') {
      await o.blob.clearPages(op.start, length);
    } else if (op.kind === 'footer') {
      await o.blob.writePages(o.footer, op.start);
    } else {
      const buffer = free.pop() ?? alignedBuffer(MAX_PAGE_WRITE);
      try {
        const view = buffer.subarray(0, length);
        await o.disk.read(view, op.start);
        if (isZero(view)) {
          await o.blob.clearPages(op.start, length);
        } else {
          await o.blob.writePages(view, op.start);
        }
      } finally {
        free.push(buffer);
      }
    }
    done += length;
    o.onProgress?.({ done, total: o.total });
  };

  for await (const op of plan) {
    if (failure) break;
    if (o.signal?.aborted) break;
    while (inFlight.size >= o.concurrency) await Promise.race(inFlight.values());
    if (failure) break;
    const id = op.start;
    starts.add(id);
    issuedEnd = op.end;
    const p = runOp(op)
      .then(
        () => {
          starts.delete(id);
        },
        (e) => {
          // A failed (or aborted) operation keeps its start in `starts`: the watermark saved from
          // here on stays below it, so a rerun sends it again.
          failure ??= e;
        },
      )
      .finally(() => {
        inFlight.delete(id);
        maybeSave();
      });
    inFlight.set(id, p);
  }
  await Promise.all(inFlight.values());
  await savingMeta;
  if (failure) throw failure;
  throwIfAborted(o.signal);
  if (issuedEnd >= 0) await o.saveWatermark(issuedEnd, false);
}

/**
 * Reads the blob back and compares it with the manifest chunk by chunk: every chunk that should hold
 * data, and every page range the blob reports (which must then hold what the manifest says, or
 * zeros past the source's end), is downloaded and hashed; the footer must match byte for byte.
 */
async function verifyBlob(
  blob: PageBlob,
  manifest: ManifestFile,
  footer: Uint8Array,
  virtualSize: number,
  concurrency: number,
  signal?: AbortSignal,
): Promise<boolean> {
  const { h64Raw } = await xxhash();
  const cs = manifest.header.chunkSize;
  const vs = manifest.header.virtualSize;
  const pages = await blob.pageRanges(0, virtualSize);
  // Window by window (bounded memory for any disk size): the chunks that should hold data, and
  // those where the blob reports pages.
  const windowBytes = WINDOW_CHUNKS * cs;
  let mismatch: VhdError | undefined;
  let p = 0;
  for (let w0 = 0; w0 < virtualSize && !mismatch; w0 += windowBytes) {
    const w1 = Math.min(virtualSize, w0 + windowBytes);
    const toCheck: Range[] = [];
    while (p < pages.length && pages[p][1] <= w0) p++;
    for (let q = p; q < pages.length && pages[q][0] < w1; q++) {
      toCheck.push([Math.max(w0, Math.floor(pages[q][0] / cs) * cs), Math.min(w1, Math.ceil(pages[q][1] / cs) * cs)]);
    }
    const w = await manifest.window(w0 / cs, WINDOW_CHUNKS);
    for (let i = 0; i < w.zero.length; i++) if (!w.zero[i]) toCheck.push([w0 + i * cs, Math.min(vs, w0 + (i + 1) * cs)]);
    const pieces: Range[] = [];
    for (const [x0, x1] of normalizeRanges(toCheck)) for (let x = x0; x < x1; x += MAX_PAGE_WRITE) pieces.push([x, Math.min(x1, x + MAX_PAGE_WRITE)]);
    await verifyPieces(pieces);
  }
  if (mismatch) throw mismatch;
  const tail = new Uint8Array(512);
  await blob.read(tail, virtualSize);
  if (Buffer.compare(Buffer.from(tail), Buffer.from(footer)) !== 0) {
    throw new VhdError(ErrorCodes.VERIFY_MISMATCH, 'the footer differs from the expected fixed-VHD footer', { file: blob.name, offset: virtualSize });
  }
  return true;

  async function verifyPieces(pieces: Range[]): Promise<void> {
    let next = 0;
    const check = async () => {
      const buf = new Uint8Array(MAX_PAGE_WRITE);
      while (next < pieces.length && !mismatch) {
        throwIfAborted(signal);
        const [a, b] = pieces[next++];
        const view = buf.subarray(0, b - a);
        await blob.read(view, a);
        const firstChunk = Math.floor(a / cs);
        const w = await manifest.window(firstChunk, Math.ceil((b - a) / cs));
        for (let x = a; x < b; x += cs) {
          const i = Math.floor(x / cs) - firstChunk;
          const piece = view.subarray(x - a, Math.min(b, x + cs, Math.max(x, vs)) - a);
          const rest = view.subarray(Math.min(b, Math.max(x, vs)) - a, Math.min(b, x + cs) - a); // past the source: zeros
          const zero = isZero(piece);
          const expectZero = i >= w.zero.length || w.zero[i] === 1;
          const ok = (expectZero ? zero : !zero && h64Raw(piece, 0n) === w.hashes[i]) && isZero(rest);
          if (!ok) {
            mismatch ??= new VhdError(ErrorCodes.VERIFY_MISMATCH, `chunk ${firstChunk + i} (bytes ${x}–${Math.min(b, x + cs)}) differs from the source`, {
              file: blob.name,
              offset: x,
            });
            return;
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, 8)) }, check));
  }
}
