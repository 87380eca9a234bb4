/**
 * One root error class for everything vhdkit reports. Each error carries a stable string `code`
 * (scripts match on it), the structure and offset that explain it, and optionally the field,
 * the expected and actual values and a `cause`.
 *
 * Messages are built from that context so that every error reads as one line:
 *   "disk.vhd: BAT entry 17 at offset 1604: points to sector 81920, past the end of the file (40960 sectors)"
 */

/** Stable error and finding codes. Never rename one: scripts and tests depend on them. */
export const ErrorCodes = {
  // not a VHD / cannot be read at all
  NOT_VHD: 'NOT_VHD',
  FILE_TOO_SMALL: 'FILE_TOO_SMALL',
  FILE_TRUNCATED: 'FILE_TRUNCATED',
  SHORT_READ: 'SHORT_READ',
  IO: 'IO',
  // footer
  FOOTER_COOKIE: 'FOOTER_COOKIE',
  FOOTER_CHECKSUM: 'FOOTER_CHECKSUM',
  FOOTER_VERSION: 'FOOTER_VERSION',
  FOOTER_DISK_TYPE: 'FOOTER_DISK_TYPE',
  FOOTER_DATA_OFFSET: 'FOOTER_DATA_OFFSET',
  FOOTER_SIZE: 'FOOTER_SIZE',
  FILE_SIZE_MISMATCH: 'FILE_SIZE_MISMATCH',
  GEOMETRY_SIZE: 'GEOMETRY_SIZE',
  FOOTER_COPY_MISMATCH: 'FOOTER_COPY_MISMATCH',
  FOOTER_511: 'FOOTER_511',
  FOOTER_SAVED_STATE: 'FOOTER_SAVED_STATE',
  // dynamic header
  HEADER_COOKIE: 'HEADER_COOKIE',
  HEADER_CHECKSUM: 'HEADER_CHECKSUM',
  HEADER_VERSION: 'HEADER_VERSION',
  HEADER_BLOCK_SIZE: 'HEADER_BLOCK_SIZE',
  HEADER_TABLE_OFFSET: 'HEADER_TABLE_OFFSET',
  HEADER_PAST_EOF: 'HEADER_PAST_EOF',
  // block allocation table
  BAT_TOO_SMALL: 'BAT_TOO_SMALL',
  BAT_TOO_LARGE: 'BAT_TOO_LARGE',
  BLOCK_PAST_SIZE: 'BLOCK_PAST_SIZE',
  RAW_WITH_FOOTER: 'RAW_WITH_FOOTER',
  BAT_PAST_EOF: 'BAT_PAST_EOF',
  BAT_ENTRY_PAST_EOF: 'BAT_ENTRY_PAST_EOF',
  BAT_ENTRY_OVERLAP: 'BAT_ENTRY_OVERLAP',
  BAT_ENTRY_OVERLAPS_METADATA: 'BAT_ENTRY_OVERLAPS_METADATA',
  // parent locators and chains
  LOCATOR_PAST_EOF: 'LOCATOR_PAST_EOF',
  LOCATOR_OVERLAP: 'LOCATOR_OVERLAP',
  LOCATOR_INVALID: 'LOCATOR_INVALID',
  LOCATOR_NAME_MISMATCH: 'LOCATOR_NAME_MISMATCH',
  LOCATOR_UNKNOWN_PLATFORM: 'LOCATOR_UNKNOWN_PLATFORM',
  LOCATOR_NONE: 'LOCATOR_NONE',
  PARENT_MISSING: 'PARENT_MISSING',
  PARENT_UUID_MISMATCH: 'PARENT_UUID_MISMATCH',
  PARENT_TIMESTAMP_MISMATCH: 'PARENT_TIMESTAMP_MISMATCH',
  PARENT_SIZE_MISMATCH: 'PARENT_SIZE_MISMATCH',
  PARENT_NOT_ALLOWED: 'PARENT_NOT_ALLOWED',
  CHAIN_CYCLE: 'CHAIN_CYCLE',
  CHAIN_TOO_DEEP: 'CHAIN_TOO_DEEP',
  // writing, conversion, usage
  USAGE: 'USAGE',
  SIZE_INVALID: 'SIZE_INVALID',
  AZURE_LIMIT: 'AZURE_LIMIT',
  OUTPUT_EXISTS: 'OUTPUT_EXISTS',
  RANGE: 'RANGE',
  ABORTED: 'ABORTED',
  // merge
  MERGE_PENDING: 'MERGE_PENDING',
  MERGE_JOURNAL: 'MERGE_JOURNAL',
  LOCKED: 'LOCKED',
  SIBLINGS: 'SIBLINGS',
  TARGET_DAMAGED: 'TARGET_DAMAGED',
  // Azure upload
  AZURE: 'AZURE',
  AZURE_AUTH: 'AZURE_AUTH',
  BLOB_EXISTS: 'BLOB_EXISTS',
  BASE_INVALID: 'BASE_INVALID',
  VERIFY_MISMATCH: 'VERIFY_MISMATCH',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/**
 * The exit code of each error, as the command line contract has it: 1 when the operation ran and
 * failed (stopped, another process holds the disk, the service refused, what landed differs, the
 * disk or file system failed), 2 for usage errors, unreadable or unusable input and refusals that
 * protect data (SIBLINGS, MERGE_PENDING, TARGET_DAMAGED, BLOB_EXISTS: nothing was done, say
 * something else). IO depends on the system error: a path that names nothing usable (ENOENT,
 * EACCES, EISDIR, ENOTDIR, EPERM) is 2, anything else (ENOSPC, EROFS, EIO…) 1.
 */
const EXIT_1: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ABORTED',
  'LOCKED',
  'AZURE',
  'AZURE_AUTH',
  'VERIFY_MISMATCH',
]);
const IO_INPUT_ERRNO: ReadonlySet<string> = new Set(['ENOENT', 'EACCES', 'EISDIR', 'ENOTDIR', 'EPERM']);

/** The exit code for an error (1 or 2; anything that is not a VhdError is a bug: 1). */
export function exitCodeOf(e: unknown): 1 | 2 {
  if (!(e instanceof VhdError)) return 1;
  if (e.code === ErrorCodes.IO) {
    const errno = (e.cause as { code?: unknown } | undefined)?.code;
    return typeof errno === 'string' && IO_INPUT_ERRNO.has(errno) ? 2 : 1;
  }
  return EXIT_1.has(e.code) ? 1 : 2;
}

export interface VhdErrorContext {
  /** The file (or blob, or "memory") the error is about. Attached by the layer that knows it. */
  file?: string;
  /** The structure: "footer", "dynamic header", "BAT entry 17", "parent locator 2", ... */
  structure?: string;
  /** Byte offset in the file of the structure or field at fault. */
  offset?: number;
  field?: string;
  expected?: unknown;
  actual?: unknown;
  cause?: unknown;
}

/**
 * Messages are one line whatever the files say: control characters and line separators that come
 * from a file (a parent name, a locator path) are shown as escapes.
 */
export function oneLine(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, (c) => {
    const n = c.charCodeAt(0);
    return n < 0x100 ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

export class VhdError extends Error {
  override name = 'VhdError';
  readonly code: ErrorCode;
  /** The message without the file / structure / offset prefix. */
  readonly detail: string;
  file?: string;
  readonly structure?: string;
  readonly offset?: number;
  readonly field?: string;
  readonly expected?: unknown;
  readonly actual?: unknown;

  constructor(code: ErrorCode, detail: string, context: VhdErrorContext = {}) {
    super(oneLine(detail), context.cause === undefined ? undefined : { cause: context.cause });
    this.code = code;
    this.detail = oneLine(detail);
    this.file = context.file;
    this.structure = context.structure;
    this.offset = context.offset;
    this.field = context.field;
    this.expected = context.expected;
    this.actual = context.actual;
    this.message = this.compose();
  }

  /** Names the file this error is about (once; the innermost file wins). Returns `this`. */
  inFile(file: string): this {
    if (this.file === undefined) {
      this.file = file;
      this.message = this.compose();
    }
    return this;
  }

  private compose(): string {
    let where = '';
    if (this.structure !== undefined) where = this.structure;
    if (this.offset !== undefined) where += `${where ? ' ' : ''}at offset ${this.offset}`;
    const parts = [this.file === undefined ? undefined : oneLine(this.file), where].filter((p) => p !== undefined && p !== '');
    return parts.length > 0 ? `${parts.join(': ')}: ${this.detail}` : this.detail;
  }

  toJSON(): Record<string, unknown> {
    const out: Record<string, unknown> = { code: this.code, message: this.message };
    if (this.file !== undefined) out.file = this.file;
    if (this.structure !== undefined) out.structure = this.structure;
    if (this.offset !== undefined) out.offset = this.offset;
    if (this.field !== undefined) out.field = this.field;
    return out;
  }
}

export function isVhdError(e: unknown): e is VhdError {
  return e instanceof VhdError;
}

/** Attach a file name to a VhdError on its way out; other errors pass unchanged. */
export function inFile<T>(e: T, file: string): T {
  if (e instanceof VhdError) e.inFile(file);
  return e;
}

/**
 * A recoverable or fatal finding about a disk. Open collects them; `check` reports them;
 * `--strict` promotes warnings to errors.
 */
export interface Finding {
  code: ErrorCode;
  severity: 'error' | 'warning';
  message: string;
  file?: string;
  offset?: number;
}

export function findingFrom(e: VhdError, severity: 'error' | 'warning'): Finding {
  const f: Finding = { code: e.code, severity, message: e.message };
  if (e.file !== undefined) f.file = e.file;
  if (e.offset !== undefined) f.offset = e.offset;
  return f;
}

/** The one ABORTED error: the operation stopped because `signal` was aborted. */
export function abortError(signal?: AbortSignal, detail = 'operation aborted', context: VhdErrorContext = {}): VhdError {
  return new VhdError(ErrorCodes.ABORTED, detail, { ...context, cause: context.cause ?? signal?.reason });
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Node's system errors (fs and friends) carry these; nothing else is taken for one. */
interface SystemError extends Error {
  code: string;
  syscall?: string;
  path?: string;
  dest?: string;
}

function isSystemError(e: unknown): e is SystemError {
  return e instanceof Error && typeof (e as SystemError).code === 'string' && /^E[A-Z0-9]+$/.test((e as SystemError).code) && typeof (e as SystemError).syscall === 'string';
}

/**
 * A file-system error (ENOENT, ENOSPC, EROFS, EXDEV, EMFILE…) as an IO error naming the path and
 * the operation, whatever step raised it; anything else is returned as it is. Every operation's
 * errors pass through here on their way out, so "internal error" is left for real bugs.
 */
export function codedError(e: unknown): unknown {
  if (!isSystemError(e)) return e;
  const what = e.dest !== undefined ? `${e.syscall} to ${e.dest}` : e.syscall;
  return new VhdError(ErrorCodes.IO, `${what} failed (${systemReason(e)})`, { file: e.path, cause: e });
}

/** "ENOSPC: no space left on device" from a Node system error (its syscall and paths left out). */
export function systemReason(e: { code?: string; message: string }): string {
  const text = e.message.replace(/^[A-Z0-9]+: /, '').replace(/,\s*\w+\s*('.*)?$/, '');
  return e.code ? `${e.code}: ${text}` : text;
}

/** Runs `body`, turning the system errors it throws into IO errors (codedError). */
export async function withCodedErrors<T>(body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (e) {
    throw codedError(e);
  }
}
