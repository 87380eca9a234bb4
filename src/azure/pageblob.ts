/**
 * The page-blob target: every request vhdkit makes to Azure Storage for an upload goes through
 * here, so Azure's rules are enforced once, whatever the server lets through (Azurite accepts page
 * writes over 4 MiB, past the end of the blob, and blobs over 8 TiB; Azure does not):
 *   - page writes 512-aligned, at most 4 MiB, inside the blob;
 *   - page blobs at most 8 TiB, sizes a multiple of 512;
 *   - every request retried by one policy (./retry.ts), and counted.
 * Messages name the blob without its URL query: a SAS never reaches an error or a log.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import {
  AnonymousCredential,
  BlobServiceClient,
  type ContainerClient,
  newPipeline,
  type PageBlobClient,
  StorageSharedKeyCredential,
} from '@azure/storage-blob';
import { abortError, ErrorCodes, VhdError } from '../errors.js';
import { type BlobLocation, type ConnectOptions, connectionStringParts } from './destination.js';
import { backoffDelay, isTransient, type RetryOptions, RetryCounter, sleep, withRetry } from './retry.js';

export const PAGE = 512;
export const MAX_PAGE_WRITE = 4 * 1024 * 1024;
export const MAX_PAGE_BLOB = 8 * 1024 ** 4;
/** A writer's lease: the longest finite one Azure grants, renewed at a third of it. */
export const LEASE_SECONDS = 60;
const LEASE_RENEW_MS = 20_000;

export interface BlobProps {
  size: number;
  metadata: Record<string, string>;
  contentMd5?: string;
  copyStatus?: string;
  copyId?: string;
  copyStatusDescription?: string;
  lastModified?: Date;
  blobType?: string;
  etag?: string;
  leased?: boolean;
  /** Leased without an end (Azure's infinite lease: a disk attached to a VM, another tool's lock). */
  leaseInfinite?: boolean;
}

export interface Counters {
  requests: number;
  bytesUploaded: number;
  bytesCleared: number;
  retries: RetryCounter;
}

export function newCounters(): Counters {
  return { requests: 0, bytesUploaded: 0, bytesCleared: 0, retries: new RetryCounter() };
}

const serviceClients = new Map<string, BlobServiceClient>();

/** One service client per account and credential, with the SDK's retry off (ours is the only one). */
export async function serviceClient(loc: BlobLocation, options: ConnectOptions = {}): Promise<BlobServiceClient> {
  const key = `${loc.accountUrl}\n${loc.sas ?? ''}\n${loc.connectionString ?? ''}\n${loc.tokenCredential ? 't' : ''}`;
  const cached = options.policies ? undefined : serviceClients.get(key);
  if (cached) return cached;
  let credential: StorageSharedKeyCredential | AnonymousCredential | import('@azure/core-auth').TokenCredential;
  let url = loc.accountUrl;
  if (loc.connectionString) {
    const parts = connectionStringParts(loc.connectionString);
    const sas = parts.get('sharedaccesssignature');
    if (parts.get('usedevelopmentstorage') === 'true') {
      credential = new StorageSharedKeyCredential(
        'devstoreaccount1',
        'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==',
      );
    } else if (parts.get('accountkey')) {
      const account = parts.get('accountname');
      if (!account) throw new VhdError(ErrorCodes.USAGE, 'the connection string has an AccountKey but no AccountName');
      credential = new StorageSharedKeyCredential(account, parts.get('accountkey')!);
    } else if (sas) {
      credential = new AnonymousCredential();
      url = `${url}?${sas.replace(/^\?/, '')}`;
    } else {
      throw new VhdError(ErrorCodes.USAGE, 'the connection string has neither AccountKey nor SharedAccessSignature');
    }
  } else if (loc.sas) {
    credential = new AnonymousCredential();
    url = `${url}?${loc.sas}`;
  } else {
    // Loaded only when used: @azure/identity is large and most runs use a SAS or a connection string.
    const { DefaultAzureCredential } = await import('@azure/identity');
    credential = new DefaultAzureCredential();
  }
  const pipeline = newPipeline(credential as StorageSharedKeyCredential, {
    retryOptions: { maxTries: 1 },
    userAgentOptions: { userAgentPrefix: 'vhdkit' },
  });
  if (options.policies) pipeline.factories.push(...(options.policies as typeof pipeline.factories));
  const client = new BlobServiceClient(url, pipeline);
  if (!options.policies) serviceClients.set(key, client);
  return client;
}

export async function containerClient(loc: BlobLocation, options: ConnectOptions = {}): Promise<ContainerClient> {
  return (await serviceClient(loc, options)).getContainerClient(loc.container);
}

/** The HTTP status behind an error of a request (a VhdError from the retry policy, or the SDK's own). */
export function statusOf(e: unknown): number | undefined {
  if (e instanceof VhdError) return (typeof e.actual === 'number' ? e.actual : undefined) ?? (e.cause as { statusCode?: number })?.statusCode;
  return (e as { statusCode?: number })?.statusCode;
}

/** A page blob, its size as vhdkit knows it, and the rules Azure applies to it. */
export class PageBlob {
  size = 0;
  readonly client: PageBlobClient;
  /** The lease this process holds on the blob (acquireLease); every write carries it. */
  leaseId: string | undefined;
  private renewal: ReturnType<typeof setInterval> | undefined;
  /** Aborts a renewal in flight (or in its backoff) when the lease is released. */
  private renewals: AbortController | undefined;
  /** How often the lease is renewed (tests shorten it). */
  renewEveryMs = LEASE_RENEW_MS;

  constructor(
    readonly container: ContainerClient,
    readonly loc: BlobLocation,
    readonly counters: Counters,
    readonly retry: RetryOptions & { signal?: AbortSignal } = {},
    snapshot?: string,
  ) {
    const c = container.getPageBlobClient(loc.blob);
    this.client = snapshot ? c.withSnapshot(snapshot) : c;
  }

  get name(): string {
    return `${this.loc.container}/${this.loc.blob}`;
  }

  /** One request, retried by the policy, counted. */
  request<T>(what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return withRetry(
      `${this.name}: ${what}`,
      (signal) => {
        this.counters.requests++;
        return fn(signal);
      },
      { ...this.retry, counter: this.counters.retries },
    );
  }

  /** Properties, or undefined when the blob does not exist. */
  async props(): Promise<BlobProps | undefined> {
    try {
      const p = await this.request('get properties', (abortSignal) => this.client.getProperties({ abortSignal }));
      this.size = p.contentLength ?? 0;
      return {
        size: p.contentLength ?? 0,
        metadata: p.metadata ?? {},
        contentMd5: p.contentMD5 ? Buffer.from(p.contentMD5).toString('base64') : undefined,
        copyStatus: p.copyStatus,
        copyId: p.copyId,
        copyStatusDescription: p.copyStatusDescription,
        lastModified: p.lastModified,
        blobType: p.blobType,
        etag: p.etag,
        leased: p.leaseState === 'leased',
        leaseInfinite: p.leaseState === 'leased' && p.leaseDuration === 'infinite',
      };
    } catch (e) {
      if (e instanceof VhdError && statusOf(e) === 404) return undefined;
      throw e;
    }
  }

  /** Creates the container if missing; a SAS scoped to the blob may not allow it, and need not. */
  async ensureContainer(): Promise<void> {
    try {
      await this.request('create container', (abortSignal) => this.container.createIfNotExists({ abortSignal }));
    } catch (e) {
      if (!(e instanceof VhdError && e.code === ErrorCodes.AZURE_AUTH)) throw e;
    }
  }

  private get lease(): { leaseId: string } | undefined {
    return this.leaseId ? { leaseId: this.leaseId } : undefined;
  }

  /**
   * Creates (or, holding its lease, replaces) the blob, empty, with this size and metadata. With
   * `onlyIfNew`, fails with `exists()` true when a blob of that name is there (one made by another
   * writer meanwhile, or by an attempt of this call whose response was lost: the caller tells).
   */
  async create(size: number, metadata: Record<string, string>, onlyIfNew = false): Promise<void> {
    checkBlobSize(size, this.name);
    const conditions = { ...this.lease, ...(onlyIfNew ? { ifNoneMatch: '*' } : {}) };
    await this.request('create page blob', (abortSignal) => this.client.create(size, { metadata, abortSignal, conditions }));
    this.size = size;
  }

  async resize(size: number): Promise<void> {
    checkBlobSize(size, this.name);
    await this.request(`resize to ${size} bytes`, (abortSignal) => this.client.resize(size, { abortSignal, conditions: this.lease }));
    this.size = size;
  }

  /**
   * Takes the blob's lease with `id` (a rerun proposes the id its killed run held, and gets the lease
   * back at once), then renews it until released: while held, no other writer can change the blob.
   * With `ifMatch`, only if the blob is still at that ETag. With `rotate` (an id read from a journal,
   * which another rerun may have read too), the lease is switched at once to a fresh id that only one
   * of them can switch to. Another writer's lease, a change since `ifMatch`, or a copy still running
   * onto the blob (Azure refuses lease operations then) is LOCKED.
   */
  async acquireLease(id: string, ifMatch?: string, rotate = false): Promise<void> {
    await this.acquire(id, ifMatch);
    let held = id;
    if (rotate) {
      const fresh = randomUUID();
      try {
        await this.request('change lease', (abortSignal) => this.client.getBlobLeaseClient(id).changeLease(fresh, { abortSignal }));
      } catch (e) {
        if (statusOf(e) !== 409) throw e;
        // Either another rerun switched it first, or our own switch landed and its answer was lost:
        // acquiring with the fresh id succeeds only in the second case.
        await this.acquire(fresh);
      }
      held = fresh;
    }
    this.leaseId = held;
    this.stopRenewals();
    const renewals = new AbortController();
    this.renewals = renewals;
    this.renewal = setInterval(() => {
      // A renewal that fails for good lets the lease lapse: the next write then fails, naming it.
      withRetry(
        `${this.name}: renew lease`,
        (abortSignal) => {
          this.counters.requests++;
          return this.client.getBlobLeaseClient(held).renewLease({ abortSignal });
        },
        { ...this.retry, signal: renewals.signal, counter: this.counters.retries },
      ).catch(() => {});
    }, this.renewEveryMs);
    this.renewal.unref?.();
  }

  /** One Acquire Lease; another writer's lease, or a change since `ifMatch`, is LOCKED. */
  private async acquire(id: string, ifMatch?: string): Promise<void> {
    try {
      await this.request('acquire lease', (abortSignal) =>
        this.client.getBlobLeaseClient(id).acquireLease(LEASE_SECONDS, { abortSignal, conditions: ifMatch ? { ifMatch } : undefined }),
      );
    } catch (e) {
      const status = statusOf(e);
      if (status === 409) throw await this.leasedError();
      if (status === 412) throw new VhdError(ErrorCodes.LOCKED, `${this.name} was changed by another writer while this upload was planning; run it again`);
      throw e;
    }
  }

  /** Why another writer's lease stops this one, as precisely as the blob's properties tell. */
  private async leasedError(): Promise<VhdError> {
    const p = await this.props().catch(() => undefined);
    if (p?.copyStatus === 'pending') {
      return new VhdError(ErrorCodes.LOCKED, `${this.name}: a server-side copy onto it is still running (Azure refuses leases meanwhile); run this again once it has ended`);
    }
    if (p?.leaseInfinite) {
      return new VhdError(
        ErrorCodes.LOCKED,
        `${this.name} holds an infinite lease (a disk attached to a VM, or another tool's lock), which never lapses by itself; break it (az storage blob lease break) only if nothing uses the blob`,
      );
    }
    return new VhdError(
      ErrorCodes.LOCKED,
      `${this.name} is leased by another writer (an upload to it running elsewhere?); wait for that to end, or for its lease to lapse (${LEASE_SECONDS} s after its writer stopped)`,
    );
  }

  /** Ends the blob's lease at once, whoever holds it (Copy Blob refuses a blob under a finite lease). */
  async breakLease(): Promise<void> {
    this.stopRenewals();
    this.leaseId = undefined;
    await this.request('break lease', (abortSignal) => this.client.getBlobLeaseClient().breakLease(0, { abortSignal }));
  }

  private stopRenewals(): void {
    clearInterval(this.renewal);
    this.renewal = undefined;
    this.renewals?.abort();
    this.renewals = undefined;
  }

  /** Gives the lease up (best effort, within 10 s: one that cannot be released lapses by itself). */
  async releaseLease(): Promise<void> {
    this.stopRenewals();
    const id = this.leaseId;
    if (!id) return;
    this.leaseId = undefined;
    try {
      this.counters.requests++;
      await this.client.getBlobLeaseClient(id).releaseLease({ abortSignal: AbortSignal.timeout(10_000) });
    } catch {
      // it lapses within LEASE_SECONDS
    }
  }

  /** One Put Page: 512-aligned, at most 4 MiB, inside the blob. */
  async writePages(data: Uint8Array, offset: number): Promise<void> {
    checkPages(offset, data.length, this.size, this.name, MAX_PAGE_WRITE);
    await this.request(`write ${data.length} bytes of pages at ${offset}`, (abortSignal) =>
      this.client.uploadPages(Buffer.from(data.buffer, data.byteOffset, data.length), offset, data.length, { abortSignal, conditions: this.lease }),
    );
    this.counters.bytesUploaded += data.length;
  }

  /** One Clear Pages: 512-aligned, inside the blob (no size limit). */
  async clearPages(offset: number, length: number): Promise<void> {
    checkPages(offset, length, this.size, this.name, Infinity);
    await this.request(`clear ${length} bytes of pages at ${offset}`, (abortSignal) => this.client.clearPages(offset, length, { abortSignal, conditions: this.lease }));
    this.counters.bytesCleared += length;
  }

  async setMetadata(metadata: Record<string, string>): Promise<void> {
    await this.request('set metadata', (abortSignal) => this.client.setMetadata(metadata, { abortSignal, conditions: this.lease }));
  }

  /** Sets Content-MD5 (base64) or clears it (undefined); the other HTTP headers are reset with it. */
  async setContentMd5(md5: string | undefined): Promise<void> {
    await this.request('set Content-MD5', (abortSignal) =>
      this.client.setHTTPHeaders(
        { blobContentType: 'application/octet-stream', blobContentMD5: md5 ? Buffer.from(md5, 'base64') : undefined },
        { abortSignal, conditions: this.lease },
      ),
    );
  }

  /**
   * Creates a snapshot with `metadata`. Create Snapshot is not idempotent: when an attempt fails in a
   * way that may have reached the server (a lost response), the snapshots are listed and the one
   * carrying this call's token is taken instead of making another.
   */
  async snapshot(metadata: Record<string, string>): Promise<string> {
    const token = randomBytes(8).toString('hex');
    const md = { ...metadata, vhdkitsnap: token };
    const maxTries = this.retry.maxTries ?? 8;
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await withRetry(
          `${this.name}: create snapshot`,
          (abortSignal) => {
            this.counters.requests++;
            return this.client.createSnapshot({ metadata: md, abortSignal });
          },
          { ...this.retry, maxTries: 1 },
        );
        if (!r.snapshot) throw new VhdError(ErrorCodes.AZURE, `${this.name}: the service returned no snapshot time`);
        return r.snapshot;
      } catch (e) {
        const cause = e instanceof VhdError ? e.cause : e;
        if (attempt >= maxTries || !isTransient(cause)) throw e;
        this.counters.retries.retries++;
        const made = await this.findSnapshot(token);
        if (made) return made;
        await sleep(backoffDelay(attempt, this.retry), this.retry.signal).catch(() => {
          throw abortError(this.retry.signal);
        });
      }
    }
  }

  /** The snapshot of this blob whose metadata carries `token`, if there is one. */
  private async findSnapshot(token: string): Promise<string | undefined> {
    return this.request('list snapshots', async (abortSignal) => {
      for await (const b of this.container.listBlobsFlat({ prefix: this.loc.blob, includeSnapshots: true, includeMetadata: true, abortSignal })) {
        if (b.name === this.loc.blob && b.snapshot && b.metadata?.vhdkitsnap === token) return b.snapshot;
      }
      return undefined;
    });
  }

  /**
   * Starts a server-side copy from `sourceUrl` onto this blob (replacing it), with `metadata`;
   * `onlyIfNew` as for `create`. The blob must not be under a finite lease (Azure refuses the copy,
   * lease id or not; see breakLease). `waitForCopy` then polls it to its end.
   */
  async startCopy(sourceUrl: string, metadata: Record<string, string>, onlyIfNew = false): Promise<void> {
    const conditions = onlyIfNew ? { ifNoneMatch: '*' } : undefined;
    await this.request('start server-side copy', async (abortSignal) => {
      const poller = await this.client.beginCopyFromURL(sourceUrl, { metadata, abortSignal, conditions, intervalInMs: 1 << 30 });
      poller.stopPolling();
      return undefined;
    });
  }

  /** Polls a copy onto this blob until it ends; an aborted or failed copy is an error. */
  async waitForCopy(onProgress?: (done: number, total: number) => void): Promise<void> {
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      const p = await this.props();
      if (!p) throw new VhdError(ErrorCodes.AZURE, `${this.name}: the blob vanished during the server-side copy`);
      if (p.copyStatus === 'success' || p.copyStatus === undefined) return;
      if (p.copyStatus !== 'pending') {
        throw new VhdError(ErrorCodes.AZURE, `${this.name}: the server-side copy ended "${p.copyStatus}": ${p.copyStatusDescription ?? 'no reason given'}`);
      }
      const progress = /^(\d+)\/(\d+)$/.exec((await this.client.getProperties()).copyProgress ?? '');
      if (progress && onProgress) onProgress(Number(progress[1]), Number(progress[2]));
      await new Promise((r) => setTimeout(r, delay));
      if (this.retry.signal?.aborted) throw abortError(this.retry.signal);
    }
  }

  /**
   * The blob's valid page ranges as [start, end) byte ranges, sorted and merged (Azurite gives
   * inclusive ends and does not merge neighbours; the Azure API gives inclusive ends too).
   */
  async pageRanges(offset = 0, count?: number): Promise<Array<[number, number]>> {
    const out: Array<[number, number]> = [];
    await this.request('list page ranges', async (abortSignal) => {
      out.length = 0;
      for await (const r of this.client.listPageRanges(offset, count, { abortSignal })) out.push([r.start, r.end + 1]);
    });
    out.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const r of out) {
      const last = merged[merged.length - 1];
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else merged.push(r);
    }
    return merged;
  }

  /** Reads `into.length` bytes at `offset`. */
  async read(into: Uint8Array, offset: number): Promise<void> {
    await this.request(`read ${into.length} bytes at ${offset}`, (abortSignal) =>
      this.client.downloadToBuffer(Buffer.from(into.buffer, into.byteOffset, into.length), offset, into.length, { abortSignal, concurrency: 1 }),
    );
  }

  /** A block blob beside this one (the hash manifest sidecar). */
  sidecar(name: string) {
    return this.container.getBlockBlobClient(name);
  }

  async uploadSidecar(name: string, file: string): Promise<void> {
    await this.request(`upload ${name}`, (abortSignal) =>
      this.sidecar(name).uploadFile(file, {
        blockSize: 4 * 1024 * 1024,
        concurrency: 4,
        abortSignal,
        blobHTTPHeaders: { blobContentType: 'application/vnd.vhdkit.hash-manifest' },
        metadata: { vhdkitmanifest: '1', vhdkitfor: this.loc.blob.replace(/[^\x20-\x7e]/g, '?') },
      }),
    );
  }

  async downloadSidecar(name: string, file: string): Promise<boolean> {
    try {
      await this.request(`download ${name}`, (abortSignal) => this.sidecar(name).downloadToFile(file, 0, undefined, { abortSignal }));
      return true;
    } catch (e) {
      if (e instanceof VhdError && statusOf(e) === 404) return false;
      throw e;
    }
  }
}

export function checkBlobSize(size: number, name: string): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0) {
    throw new VhdError(ErrorCodes.AZURE_LIMIT, `${name}: a page blob's size must be a positive multiple of 512 bytes, not ${size}`);
  }
  if (size > MAX_PAGE_BLOB) {
    throw new VhdError(ErrorCodes.AZURE_LIMIT, `${name}: ${size} bytes is more than a page blob can hold (8 TiB)`);
  }
}

export function checkPages(offset: number, length: number, blobSize: number, name: string, max: number): void {
  if (offset % PAGE !== 0 || length % PAGE !== 0 || length <= 0) {
    throw new VhdError(ErrorCodes.AZURE_LIMIT, `${name}: page range of ${length} bytes at ${offset} is not 512-byte aligned`);
  }
  if (length > max) throw new VhdError(ErrorCodes.AZURE_LIMIT, `${name}: page write of ${length} bytes at ${offset} is over Azure's 4 MiB limit`);
  if (offset + length > blobSize) {
    throw new VhdError(ErrorCodes.AZURE_LIMIT, `${name}: page range ${offset}–${offset + length} is past the end of the ${blobSize}-byte blob`);
  }
}
