/**
 * `generations`: the vhdkit uploads in a container — blobs and their snapshots — with what each is
 * based on, its size, how many bytes differ from its base, when it was completed, and a hint to
 * merge when a child has grown past a share of its base.
 */
import { withCodedErrors } from '../errors.js';
import { type ConnectOptions, parseContainer } from '../azure/destination.js';
import { containerClient, LEASE_SECONDS, newCounters } from '../azure/pageblob.js';
import { withRetry } from '../azure/retry.js';
import type { OperationOptions } from './common.js';
import { isManifestSidecar, isVhdkitUpload, readRecord } from './upload/metadata.js';

export interface GenerationsOptions extends OperationOptions, ConnectOptions {
  /** Hint a merge when a generation differs from its base in more than this share of the base's data (default 0.5). */
  mergeThreshold?: number;
  /** Only blobs whose names start with this. */
  prefix?: string;
}

export interface Generation {
  blob: string;
  /** Snapshot time, for a generation kept as a snapshot (--snapshot uploads); null for the live blob. */
  snapshot: string | null;
  state: 'complete' | 'uploading' | 'copying';
  /** What it was uploaded against: a blob name, "NAME (previous generation)" for snapshots, or null. */
  base: string | null;
  method: string | null;
  virtualSize: number;
  blobSize: number;
  /** Bytes holding data (non-zero chunks). */
  dataBytes: number | null;
  /** Bytes that differ from the base (null without one). */
  differingBytes: number | null;
  digest: string | null;
  contentMd5: string | null;
  completed: string | null;
  lastModified: string | null;
  /** A suggestion, or null. */
  hint: string | null;
}

export interface GenerationsResult {
  container: string;
  generations: Generation[];
  /** Blobs in the container that are not vhdkit uploads (not listed above). */
  otherBlobs: number;
}

export function generations(container: string, options: GenerationsOptions = {}): Promise<GenerationsResult> {
  return withCodedErrors(() => listGenerations(container, options));
}

async function listGenerations(container: string, options: GenerationsOptions): Promise<GenerationsResult> {
  const loc = parseContainer(container, options);
  const client = await containerClient(loc, options);
  const counters = newCounters();
  const items: Array<{ name: string; snapshot?: string; metadata: Record<string, string>; size: number; md5?: string; modified?: Date; leased?: 'finite' | 'infinite' }> = [];
  let otherBlobs = 0;
  await withRetry(
    `${loc.container}: list blobs`,
    async (abortSignal) => {
      items.length = 0;
      otherBlobs = 0;
      counters.requests++;
      for await (const b of client.listBlobsFlat({ includeMetadata: true, includeSnapshots: true, prefix: options.prefix, abortSignal })) {
        const m = b.metadata ?? {};
        if (!isVhdkitUpload(m) || b.properties.blobType !== 'PageBlob') {
          if (!isManifestSidecar(m)) otherBlobs++;
          continue;
        }
        items.push({
          name: b.name,
          snapshot: b.snapshot || undefined,
          metadata: m,
          size: b.properties.contentLength ?? 0,
          md5: b.properties.contentMD5 ? Buffer.from(b.properties.contentMD5).toString('base64') : undefined,
          modified: b.properties.lastModified,
          leased: b.properties.leaseState === 'leased' ? (b.properties.leaseDuration === 'infinite' ? 'infinite' : 'finite') : undefined,
        });
      }
    },
    { signal: options.signal, ...options.retry, counter: counters.retries },
  );
  const threshold = options.mergeThreshold ?? 0.5;
  const byName = new Map<string, Record<string, string>>();
  for (const it of items) if (!it.snapshot) byName.set(it.name, it.metadata);
  const out: Generation[] = items.map((it) => {
    const r = readRecord(it.metadata)!;
    const complete = r.state === 'complete';
    const baseRef = r.base?.ref ?? null;
    const base = baseRef === '.' ? `${it.name} (previous generation)` : baseRef;
    const differing = baseRef && r.differing !== undefined ? r.differing : null;
    let hint: string | null = null;
    if (!complete && it.leased === 'infinite') {
      hint = 'unfinished upload, under an infinite lease (another tool holds it; it never lapses by itself): break the lease if nothing uses the blob, then run the same "vhdkit upload" again';
    } else if (!complete && it.leased) {
      // A writer's lease: held by a running upload, or by one killed less than a lease ago.
      hint = `unfinished upload, leased: being written now, or its writer stopped less than ${LEASE_SECONDS} s ago; if no upload of it is running, run the same "vhdkit upload" again to complete it`;
    } else if (!complete) hint = `unfinished upload: run the same "vhdkit upload" again to complete it`;
    else if (differing !== null && baseRef && baseRef !== '.') {
      const baseData = byName.has(baseRef) ? readRecord(byName.get(baseRef)!)?.data : undefined;
      if (baseData && differing > threshold * baseData) {
        hint = `differs from ${baseRef} in ${Math.round((100 * differing) / baseData)}% of the base's data: merge this generation into its base locally ("vhdkit merge") and upload the result as the new base`;
      }
    }
    return {
      blob: it.name,
      snapshot: it.snapshot ?? null,
      state: r.state,
      base,
      method: r.method || null,
      virtualSize: r.virtualSize || it.size - 512,
      blobSize: it.size,
      dataBytes: r.data ?? null,
      differingBytes: differing,
      digest: complete ? r.digest : null,
      contentMd5: complete ? (it.md5 ?? null) : null,
      completed: r.completed ?? null,
      lastModified: it.modified ? it.modified.toISOString() : null,
      hint,
    };
  });
  // Oldest first within a blob (snapshots in time order, the live blob last), blobs by name.
  out.sort((a, b) => (a.blob === b.blob ? (a.snapshot ?? '\uffff').localeCompare(b.snapshot ?? '\uffff') : a.blob.localeCompare(b.blob)));
  return { container: loc.display, generations: out, otherBlobs };
}
