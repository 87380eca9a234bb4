import { ErrorCodes, VhdError } from '../errors.js';
import type { ByteSink, ByteSource, SourceResolver } from './types.js';

/** An in-memory byte sink that grows as written. */
export class MemorySink implements ByteSink {
  private data: Uint8Array;
  private length: number;
  constructor(
    readonly name: string,
    initial?: Uint8Array,
  ) {
    this.data = initial ? initial.slice() : new Uint8Array(0);
    this.length = this.data.length;
  }
  get size(): number {
    return this.length;
  }
  bytes(): Uint8Array {
    return this.data.subarray(0, this.length);
  }
  async read(into: Uint8Array, position: number): Promise<void> {
    const n = await this.readAt(into, position);
    if (n < into.length) {
      throw new VhdError(ErrorCodes.SHORT_READ, `read of ${into.length} bytes got ${n}: the file is ${this.length} bytes`, {
        file: this.name,
        offset: position,
      });
    }
  }
  async readAt(into: Uint8Array, position: number): Promise<number> {
    if (position >= this.length) return 0;
    const n = Math.min(into.length, this.length - position);
    into.set(this.data.subarray(position, position + n));
    return n;
  }
  async write(from: Uint8Array, position: number): Promise<void> {
    const end = position + from.length;
    if (end > this.data.length) {
      const grown = new Uint8Array(Math.max(end, this.data.length * 2));
      grown.set(this.data.subarray(0, this.length));
      this.data = grown;
    }
    this.data.set(from, position);
    if (end > this.length) this.length = end;
  }
  async truncate(size: number): Promise<void> {
    if (size > this.data.length) {
      const grown = new Uint8Array(size);
      grown.set(this.data.subarray(0, this.length));
      this.data = grown;
    } else if (size > this.length) {
      this.data.fill(0, this.length, size);
    }
    this.length = size;
  }
  async sync(): Promise<void> {}
  async close(): Promise<void> {}
}

export function memorySource(name: string, bytes: Uint8Array): ByteSource {
  return new MemorySink(name, bytes);
}

/** Resolves parents among named in-memory files ("dir/base.vhd"); names are slash paths. */
export class MemoryResolver implements SourceResolver {
  constructor(private readonly files: Map<string, Uint8Array>) {}
  async open(from: string, candidate: string): Promise<{ source: ByteSource; id: string } | undefined> {
    const dir = from.includes('/') ? from.slice(0, from.lastIndexOf('/')) : '';
    const joined = candidate.startsWith('/') ? candidate : normalize(dir ? `${dir}/${candidate}` : candidate);
    const bytes = this.files.get(joined);
    if (!bytes) return undefined;
    return { source: new MemorySink(joined, bytes), id: joined };
  }
}

function normalize(p: string): string {
  const out: string[] = [];
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  return out.join('/');
}
