/**
 * `upload`: a disk (any form, chains included) to an Azure page blob as a fixed VHD, sending only
 * what the destination does not already hold.
 *
 * Steps (each leaves the blob in a state the next run recognises from its metadata, the schema in
 * upload/metadata.ts):
 *   1. Classify what the blob holds (upload/state.ts, pure): what the new content is compared with
 *      (nothing, a --base blob, the blob's own previous generation with --snapshot), and then one of
 *      complete, refuse, resume, resume a copy, copy from the base, in place, create.
 *   2. Decide what to send. Every upload has a hash manifest of the new content (chunked xxh64, see
 *      src/format/manifest.ts); the plan (upload/plan.ts) compares it chunk by chunk with what the
 *      blob will hold before any page is written: with no base every non-zero chunk is written and
 *      zero chunks are never sent; with a base, chunks whose hash differs are written and chunks that
 *      became zero are cleared; for a differencing child of the disk the base was uploaded from,
 *      exactly the child's sectors (its bitmaps, read once), and the new manifest is the base's with
 *      the touched chunks re-hashed.
 *   3. Prepare the blob by the path its state calls for: created empty, a server-side copy of the
 *      base (polled to completion), or continued; leased; resized. Metadata says "uploading".
 *   4. Send the plan in ascending offset order (upload/send.ts): page writes of at most 4 MiB,
 *      clears, then the footer. A watermark (everything below it has landed) goes to the local
 *      journal (upload/journal.ts) every second and to the blob's metadata every few seconds: a
 *      rerun after a crash resumes from the higher of the two.
 *   5. Mark it complete: Content-MD5 of the whole VHD (computed in a worker while sending), the
 *      manifest sidecar, then metadata "complete". A blob without that last step is never taken
 *      for a complete one (not as a base, not by `generations`).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import { VhdImage } from '../disk/image.js';
import type { VirtualDisk } from '../disk/source.js';
import { footerBytes, MAX_VIRTUAL_SIZE } from '../disk/writer.js';
import { durableTemp } from '../io/durable.js';
import { checkOutputFolder, refuseOverlap } from '../io/paths.js';
import { getPool, type TaskRunner } from '../pool/pool.js';
import type { DiskRef } from '../pool/tasks.js';
import { type BlobLocation, type ConnectOptions, parseDestination, publicUrl, siblingLocation } from '../azure/destination.js';
import { type BlobProps, containerClient, newCounters, PageBlob, statusOf } from '../azure/pageblob.js';
import type { RetryOptions } from '../azure/retry.js';
import { throwIfAborted, type OperationOptions } from './common.js';
import { azureSize } from './convert.js';
import { ManifestFile } from './manifest-file.js';
import { holdReading, inputRoles, openAny, type OpenDiskOptions, type ReadHold, type SourceFormat } from './open.js';
import { type BaseInfo, baseInfo, checkGivenBase, recordedBase } from './upload/base.js';
import { type Content, planContent, stampOfChain, type UploadMethod } from './upload/content.js';
import { defaultJournalDir, UploadJournal, uploadJournalPath } from './upload/journal.js';
import { Meta, readBase, type UploadRecord, writeRecord } from './upload/metadata.js';
import { chunkPlan, type Op, planTotals, sectorPlan, withTail } from './upload/plan.js';
import { send, verifyBlob } from './upload/send.js';
import { type BaseChoice, type BlobState, chooseBase, classifyBlob } from './upload/state.js';

export { isCompleteUpload } from './upload/metadata.js';

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

export type { UploadMethod } from './upload/content.js';

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



export function upload(file: string, destination: string, options: UploadOptions = {}): Promise<UploadResult> {
  return withCodedErrors(() => uploadDisk(file, destination, options));
}

/** What every step of one upload reads. */
interface Upload {
  file: string;
  options: UploadOptions;
  connect: ConnectOptions;
  loc: BlobLocation;
  blob: PageBlob;
  counters: ReturnType<typeof newCounters>;
  retry: RetryOptions & { signal?: AbortSignal };
  pool: TaskRunner;
  disk: VirtualDisk;
  format: 'vhd' | 'raw';
  journalDir: string;
  /** A private folder for the manifests, removed when the upload ends. */
  tmp: string;
  concurrency: number;
  warnings: Finding[];
  started: number;
  /** The read marks on the source's files. */
  hold: ReadHold;
}

async function uploadDisk(file: string, destination: string, options: UploadOptions): Promise<UploadResult> {
  const started = performance.now();
  const warnings: Finding[] = [];
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
  const retry = { ...options.retry, signal: options.signal };
  const container = await containerClient(loc, connect);
  const blob = new PageBlob(container, loc, counters, retry);
  // A bad --workers is refused before anything is opened; the threads start loading meanwhile.
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
  const releases: Array<() => void> = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vhdkit-upload-'));
  try {
    // A merge into any disk of the chain would change what is being sent: hold their shared locks
    // (other uploads of the same files may run at the same time; a merge may not).
    const hold = holdReading(disk, file, 'upload', warnings);
    releases.push(() => hold.release());
    return await run({ file, options, connect, loc, blob, counters, retry, pool, disk, format, journalDir, tmp, concurrency, warnings, started, hold });
  } finally {
    await blob.releaseLease();
    for (const r of releases) r();
    await disk.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The source as the blob will hold it: sizes, identity and the footer. */
interface Source {
  size: number;
  virtualSize: number;
  blobSize: number;
  ref: DiskRef;
  stamp: string;
  uuid: string;
  footer: Uint8Array;
}

function describeSource(u: Upload): Source {
  const { disk, file, options } = u;
  const size = disk.virtualSize;
  const virtualSize = options.resize === false ? size : azureSize(size);
  if (virtualSize % 512 !== 0) throw new VhdError(ErrorCodes.AZURE_LIMIT, `virtual size ${virtualSize} is not a multiple of 512 bytes`, { file });
  if (virtualSize > MAX_VIRTUAL_SIZE) {
    throw new VhdError(ErrorCodes.AZURE_LIMIT, `virtual size ${virtualSize} exceeds the 2040 GiB a VHD can hold; Azure cannot take this disk as a VHD`, { file });
  }
  const stamp = stampOfChain(disk, 0, file);
  const image = disk instanceof VhdImage ? disk : undefined;
  const uuid = image ? image.footer.uniqueId : createHash('md5').update(`vhdkit raw ${stamp}`).digest().subarray(0, 16);
  // The footer is a function of the source: the same disk always makes the same blob (and MD5).
  const footer = footerBytes({ type: 'fixed', virtualSize, uuid, timestamp: image ? new Date(946684800000 + image.footer.timestamp * 1000) : new Date(946684800000) });
  const ref: DiskRef = { file, format: u.format, allowedDirs: options.allowedDirs, sizeFrom: options.sizeFrom };
  return { size, virtualSize, blobSize: virtualSize + 512, ref, stamp, uuid: image ? image.uuid : '', footer };
}

/** The base the choice names: the --base blob (checked), the blob's previous generation, or the recorded one. */
async function resolveBase(u: Upload, choice: BaseChoice, current: BlobProps | undefined): Promise<BaseInfo | undefined> {
  const { options, loc, connect } = u;
  if (choice.kind === 'previous') return baseInfo(loc, loc, current!.metadata, current!.size, u.blob);
  if (choice.kind === 'recorded') return recordedBase(loc, choice.base, u.blob);
  if (choice.kind !== 'given') return undefined;
  const baseLoc = siblingLocation(loc, options.base!, connect);
  if (baseLoc.container === loc.container && baseLoc.blob === loc.blob && baseLoc.accountUrl === loc.accountUrl) {
    throw new VhdError(ErrorCodes.USAGE, `--base ${options.base} is the destination itself; use --snapshot to keep generations in one blob`);
  }
  const baseBlob = new PageBlob(await containerClient(baseLoc, connect), baseLoc, u.counters, u.retry);
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
  checkGivenBase(baseBlob.name, props?.metadata);
  return baseInfo(baseLoc, loc, props!.metadata, props!.size, baseBlob);
}

async function run(u: Upload): Promise<UploadResult> {
  const { options, blob, loc } = u;
  const source = describeSource(u);
  const { blobSize, virtualSize } = source;
  // ---- what the blob holds now, and what the new content is compared with -------------------
  const current = await blob.props();
  const choice = chooseBase(current, { given: options.base !== undefined, snapshot: !!options.snapshot, overwrite: !!options.overwrite, stamp: source.stamp });
  if (choice.kind === 'refuse') throw new VhdError(ErrorCodes.BLOB_EXISTS, `${blob.name} ${choice.message}`);
  const base = await resolveBase(u, choice, current);
  options.onPhase?.('hash');
  const content = await planContent({ ...u, verify: () => u.hold.verify() }, base);
  try {
    const { method, chunkSize, digest } = content;
    // Everything that decides the plan: a rerun with the same identity continues it.
    const planId = createHash('sha256')
      .update([source.stamp, digest, virtualSize, method, chunkSize, base ? `${base.ref}@${base.digest}` : 'none', options.resize === false].join('\n'))
      .digest('hex')
      .slice(0, 32);
    const journal = new UploadJournal(u.journalDir, publicUrl(loc));
    const state = classifyBlob(current, { planId, digest, blobSize, baseRef: base?.ref, dirty: choice.dirty, snapshot: !!options.snapshot, overwrite: !!options.overwrite });
    if (state.kind === 'refuse') throw new VhdError(ErrorCodes.BLOB_EXISTS, `${blob.name} ${state.message}`);
    if (state.kind === 'complete') {
      journal.remove(); // a run killed after marking the blob complete, before removing its journal
      options.onPhase?.('verify');
      const verified = options.verify ? await verifyBlob(blob, content.next, source.footer, virtualSize, u.concurrency, options.signal) : null;
      const m = current!.metadata;
      return summary(u, content, source, { alreadyComplete: true, contentMd5: current!.contentMd5 ?? null, manifest: m[Meta.manifest] ? decodeURIComponent(m[Meta.manifest]) : null, verified, planned: 0, differing: 0, resumedFrom: blobSize, snapshot: null, base: readBase(m)?.ref ?? null });
    }
    const resumeFrom = state.kind === 'resume' || state.kind === 'resume-copy' ? Math.min(blobSize, Math.max(state.done, journal.read(planId))) : 0;
    const record = (s: UploadRecord['state'], done: number): UploadRecord => ({
      state: s,
      plan: planId,
      done,
      method,
      digest,
      chunkSize,
      manifest: sidecarName(loc, digest),
      virtualSize: source.size,
      uuid: source.uuid,
      stamp: source.stamp,
      base,
    });
    const claim = new BlobClaim(blob, journal, publicUrl(loc), planId, resumeFrom, base?.copySource, (s, done) => writeRecord(record(s, done)));
    const prepared = await prepareBlob(u, claim, state, current, blobSize);
    if (prepared.size !== blobSize) await blob.resize(blobSize);
    blob.size = blobSize;
    const baseBlobSize = base ? base.size : choice.dirty ? prepared.size : 0;
    const totals = await sendContent(u, content, source, { journal, planId, resumeFrom, baseBlobSize, meta: (done) => writeRecord(record('uploading', done)) });
    return await finish(u, content, source, { totals, resumeFrom, base, record: record('complete', blobSize), journal });
  } finally {
    await content.next.close().catch(() => {});
    if (content.baseManifest instanceof ManifestFile) await content.baseManifest.close().catch(() => {});
  }
}

function sidecarName(loc: BlobLocation, digest: string): string {
  return `${loc.blob}.${digest}.vhdkit-manifest`;
}

/**
 * Holding the blob: its lease (proposed from the local journal, so a rerun after a kill takes it back
 * at once) and the check that what it holds is this upload's plan.
 */
class BlobClaim {
  constructor(
    private readonly blob: PageBlob,
    private readonly journal: UploadJournal,
    private readonly url: string,
    private readonly planId: string,
    readonly resumeFrom: number,
    private readonly copySource: string | undefined,
    readonly meta: (state: UploadRecord['state'], done: number) => Record<string, string>,
  ) {}
  async lease(ifMatch?: string): Promise<void> {
    await this.blob.acquireLease(this.journal.leaseId, ifMatch, this.journal.orphan);
    this.journal.leaseId = this.blob.leaseId!;
    this.journal.orphan = false;
    this.journal.write(this.url, this.planId, this.resumeFrom);
  }
  async ours(): Promise<void> {
    const now = await this.blob.props();
    if (now?.metadata[Meta.plan] !== this.planId) {
      throw new VhdError(ErrorCodes.LOCKED, `${this.blob.name} was written by another writer at the same time as this upload; run it again to see what it holds`);
    }
  }
  /** Makes the blob (or starts the copy onto it), then leases it and checks it is this upload's. */
  async claim(make: () => Promise<void>, copy: boolean): Promise<void> {
    try {
      await make();
    } catch (e) {
      // There already: made by another writer meanwhile, or by an attempt of ours whose response
      // was lost. Whose it is shows below, under the lease.
      const status = statusOf(e);
      if (!(e instanceof VhdError) || (status !== 409 && status !== 412)) throw e;
    }
    if (copy) await this.blob.waitForCopy();
    await this.lease();
    await this.ours();
  }
  startCopy(onlyIfNew: boolean): () => Promise<void> {
    return () => this.blob.startCopy(this.copySource!, this.meta('copying', 0), onlyIfNew);
  }
  /** A copy onto a blob that exists: checked under the lease (ETag), which is broken for the copy. */
  async copyOver(ifMatch?: string): Promise<void> {
    await this.blob.acquireLease(this.journal.leaseId, ifMatch, this.journal.orphan);
    this.journal.orphan = false;
    await this.blob.breakLease();
    await this.claim(this.startCopy(false), true);
  }
}

/**
 * Brings the blob to "uploading this plan", leased, by the one path its state calls for. Azure
 * refuses Copy Blob onto a blob under a finite lease, and any lease operation while a copy onto it
 * is pending: a copy from the base therefore runs unleased (onto a blob that existed, just after
 * checking it under a lease, then broken), and the lease is taken when the copy has ended, with a
 * check that the blob is still this upload's. Returns the blob's properties afterwards.
 */
async function prepareBlob(u: Upload, claim: BlobClaim, state: BlobState, current: BlobProps | undefined, blobSize: number): Promise<BlobProps> {
  const { blob, options } = u;
  const phase = () => options.onPhase?.('copy');
  switch (state.kind) {
    case 'resume':
      await claim.lease(current!.etag);
      return current!;
    case 'resume-copy': {
      phase();
      let failed = false;
      try {
        await blob.waitForCopy();
      } catch (e) {
        if (!(e instanceof VhdError) || e.code !== ErrorCodes.AZURE) throw e;
        failed = true;
      }
      if (failed) await claim.copyOver(); // a failed or aborted copy: start it again
      else {
        await claim.lease();
        await claim.ours();
      }
      await blob.setContentMd5(undefined);
      await blob.setMetadata(claim.meta('uploading', claim.resumeFrom));
      break;
    }
    case 'copy':
      phase();
      await blob.ensureContainer();
      if (state.over) await claim.copyOver(current!.etag);
      else await claim.claim(claim.startCopy(true), true);
      await blob.setContentMd5(undefined);
      await blob.setMetadata(claim.meta('uploading', 0));
      break;
    case 'in-place':
      await claim.lease(current!.etag);
      phase();
      await blob.setMetadata(claim.meta('uploading', 0));
      await blob.setContentMd5(undefined);
      break;
    case 'create': {
      if (state.over) await claim.lease(current!.etag);
      phase();
      await blob.ensureContainer();
      const create = () => blob.create(blobSize, claim.meta('uploading', 0), !state.over);
      if (state.over) await create();
      else await claim.claim(create, false);
      break;
    }
    default:
      throw new Error(`prepareBlob: ${state.kind} is decided before the blob is prepared`);
  }
  const now = await blob.props();
  if (!now) throw new VhdError(ErrorCodes.AZURE, `${blob.name}: the blob vanished while being prepared`);
  return now;
}

/** Sends the plan from `resumeFrom` on, the whole VHD's MD5 computed in a worker meanwhile. */
async function sendContent(
  u: Upload,
  content: Content,
  source: Source,
  s: { journal: UploadJournal; planId: string; resumeFrom: number; baseBlobSize: number; meta: (done: number) => Record<string, string> },
): Promise<{ totals: Awaited<ReturnType<typeof planTotals>>; md5: string | null }> {
  const { options, blob, loc } = u;
  options.onPhase?.('upload');
  const tail: Op[] = [];
  if (s.baseBlobSize > source.size && source.size < source.virtualSize) tail.push({ kind: 'clear', start: source.size, end: source.virtualSize });
  tail.push({ kind: 'footer', start: source.virtualSize, end: source.blobSize });
  const sectors = content.sectors;
  const makePlan = (from: number): AsyncGenerator<Op> =>
    withTail(sectors ? sectorPlan(sectors, from) : chunkPlan(content.next, content.baseManifest, s.baseBlobSize, from), tail, from);
  const totals = await planTotals(makePlan(0), s.resumeFrom);
  const md5 = options.md5 === false ? undefined : u.pool.md5({ disk: source.ref, virtualSize: source.virtualSize, footer: source.footer }, options.signal);
  md5?.catch(() => {}); // awaited below; a failure is reported there
  await send(makePlan(s.resumeFrom), {
    disk: u.disk,
    blob,
    footer: source.footer,
    concurrency: u.concurrency,
    signal: options.signal,
    total: totals.remaining,
    onProgress: options.onProgress,
    saveWatermark: async (done, toBlob) => {
      s.journal.write(publicUrl(loc), s.planId, done);
      if (toBlob) await blob.setMetadata(s.meta(done));
    },
  });
  return { totals, md5: md5 ? (await md5).md5 : null };
}

/**
 * Marks the upload complete: the Content-MD5, the manifest sidecar, then the "complete" metadata
 * (the last step: a blob without it is never taken for a complete one); then the snapshot
 * (--snapshot), the local journal removed, and the blob read back (--verify).
 */
async function finish(
  u: Upload,
  content: Content,
  source: Source,
  f: { totals: { totals: Awaited<ReturnType<typeof planTotals>>; md5: string | null }; resumeFrom: number; base: BaseInfo | undefined; record: UploadRecord; journal: UploadJournal },
): Promise<UploadResult> {
  const { options, blob } = u;
  const { totals, md5: contentMd5 } = f.totals;
  options.onPhase?.('finish');
  throwIfAborted(options.signal);
  u.hold.verify(); // what was sent is what the source held throughout, or the blob is not marked complete
  await blob.setContentMd5(contentMd5 ?? undefined);
  let manifest: string | null = f.record.manifest!;
  try {
    await blob.uploadSidecar(manifest, content.newPath);
  } catch (e) {
    // A SAS for one blob cannot create another: the upload is complete, but cannot be a base.
    if (!(e instanceof VhdError && e.code === ErrorCodes.AZURE_AUTH)) throw e;
    u.warnings.push({
      code: ErrorCodes.AZURE_AUTH,
      severity: 'warning',
      message: `${blob.name}: the credential may not create the manifest blob ${manifest} beside it (a SAS for one blob); the upload is complete, but cannot serve as a --base`,
    });
    manifest = null;
  }
  // The sectors plan writes exactly the child's sectors (its tail clears are not differences).
  const differing = content.sectors ? totals.write : totals.write + totals.clear;
  const header = content.next.header;
  const final = writeRecord({
    ...f.record,
    plan: undefined,
    done: undefined,
    manifest: manifest ?? undefined,
    differing,
    data: Math.min(source.virtualSize, (header.chunks - header.zeroChunks) * content.chunkSize),
    completed: new Date().toISOString(),
  });
  await blob.setMetadata(final);
  const snapshot = options.snapshot ? await blob.snapshot(final) : null;
  f.journal.remove();
  options.onPhase?.('verify');
  const verified = options.verify ? await verifyBlob(blob, content.next, source.footer, source.virtualSize, u.concurrency, options.signal) : null;
  return summary(u, content, source, {
    alreadyComplete: false,
    contentMd5,
    manifest,
    verified,
    planned: totals.write + totals.footer,
    differing,
    resumedFrom: f.resumeFrom,
    snapshot,
    base: f.base ? f.base.display : null,
  });
}

function summary(
  u: Upload,
  content: Content,
  source: Source,
  s: { alreadyComplete: boolean; contentMd5: string | null; manifest: string | null; verified: boolean | null; planned: number; differing: number; resumedFrom: number; snapshot: string | null; base: string | null },
): UploadResult {
  return {
    source: u.file,
    destination: u.loc.display,
    blobSize: source.blobSize,
    virtualSize: source.virtualSize,
    method: content.method,
    base: s.base,
    snapshot: s.snapshot,
    bytesUploaded: u.counters.bytesUploaded,
    bytesCleared: u.counters.bytesCleared,
    bytesPlanned: s.planned,
    bytesFullUpload: source.blobSize,
    bytesDiffering: s.differing,
    requests: u.counters.requests,
    retries: u.counters.retries.retries,
    resumedFrom: s.resumedFrom,
    alreadyComplete: s.alreadyComplete,
    digest: content.digest,
    chunkSize: content.chunkSize,
    contentMd5: s.contentMd5,
    manifest: s.manifest,
    verified: s.verified,
    seconds: (performance.now() - u.started) / 1000,
    warnings: u.warnings,
  };
}
