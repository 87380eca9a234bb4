/** vhdkit public API. */
export { ErrorCodes, VhdError, isVhdError, type ErrorCode, type Finding, type VhdErrorContext } from './errors.js';

// Operations
export { openDisk, openAny, type OpenDiskOptions, type SourceFormat } from './ops/open.js';
export { info, describe, type DiskInfo, type ParentInfo, type ChainMember } from './ops/info.js';
export { check, type CheckResult } from './ops/check.js';
export { create, parentLinkFor, type CreateOptions, type CreateResult } from './ops/create.js';
export { convert, azureSize, type ConvertOptions, type ConvertResult, type TargetFormat } from './ops/convert.js';
export { hash, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, type HashOptions, type HashResult } from './ops/hash.js';
export { diff, type DiffOptions, type DiffResult } from './ops/diff.js';
export { merge, mergeBatch, findSiblings, type MergeOptions, type MergeResult, type MergeBatchOptions, type MergeBatchItem, type MergeBatchResult } from './ops/merge.js';
export { journalPath, lockPath, acquireLock, acquireSharedLock, hasPendingMerge, type MergeJournal } from './ops/journal.js';
export { upload, isCompleteUpload, DEFAULT_CONCURRENCY, type UploadOptions, type UploadResult, type UploadMethod } from './ops/upload.js';
export { generations, type Generation, type GenerationsOptions, type GenerationsResult } from './ops/generations.js';
export { parseDestination, parseContainer, type BlobLocation } from './azure/destination.js';
export { redactSecrets, type RetryOptions } from './azure/retry.js';
export type { Progress, OperationOptions } from './ops/common.js';
export { getPool, destroyPool, defaultWorkers, type PoolOptions } from './pool/pool.js';
export { decodeManifestHeader, encodeManifestHeader, manifestSize, MANIFEST_HEADER, type ManifestHeader } from './format/manifest.js';

// Disk layer
export { VhdImage, type OpenOptions, type ParentLocatorInfo } from './disk/image.js';
export { RawDisk, type VirtualDisk } from './disk/source.js';
export { FixedWriter, DynamicWriter, type DynamicOptions, type ParentLink } from './disk/writer.js';
export { type Range, normalizeRanges } from './disk/ranges.js';
export { severityOf } from './disk/policy.js';

// I/O seam
export { FileSink, FileResolver, openFile, writeAtomically } from './io/file.js';
export { MemorySink, MemoryResolver, memorySource } from './io/memory.js';
export { alignedBuffer, isZero } from './io/aligned.js';
export type { ByteSource, ByteSink, SourceResolver } from './io/types.js';

// Pure format codecs
export * as format from './format/index.js';
