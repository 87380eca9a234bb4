/**
 * The random-access seam: every byte vhdkit reads or writes goes through these. File, memory and
 * (later) Azure blob implementations; the format and disk layers never see anything else.
 */
export interface ByteSource {
  /** A name for messages: a path, a blob URL without its query, or "memory:NAME". */
  readonly name: string;
  /** Current size in bytes. */
  readonly size: number;
  /**
   * Fills `into` completely from `position`. A read past the end throws SHORT_READ naming the offset;
   * use `readAt` when a short read is acceptable.
   */
  read(into: Uint8Array, position: number): Promise<void>;
  /** Reads up to `into.length` bytes; returns how many were read (less only at the end). */
  readAt(into: Uint8Array, position: number): Promise<number>;
  /**
   * Optional: sorted, disjoint [start, end) ranges outside which the source reads as zeros (a sparse
   * file's data extents); undefined when unknown.
   */
  dataExtents?(): Array<[number, number]> | undefined;
  close(): Promise<void>;
}

export interface ByteSink extends ByteSource {
  write(from: Uint8Array, position: number): Promise<void>;
  truncate(size: number): Promise<void>;
  /** Flushes data and metadata to stable storage. */
  sync(): Promise<void>;
}

/** Opens the parents of differencing disks; the disk layer asks, the I/O layer answers. */
export interface SourceResolver {
  /**
   * Resolves `candidate` (a slash path from a locator or header, relative or absolute) against the
   * directory of `from` (the child's name) and opens it. Returns undefined if no such file exists.
   * Throws PARENT_NOT_ALLOWED when the file exists outside the directories resolution is confined to.
   */
  open(from: string, candidate: string): Promise<{ source: ByteSource; id: string } | undefined>;
}
