/**
 * The MD5 of a whole fixed VHD as it will lie in a page blob: the virtual content (the disk's data
 * ranges read, the holes between them fed as zeros without reading), zeros up to the blob's virtual
 * size, then the footer. Azure's uploaders mark a finished upload with this Content-MD5; it runs in
 * a worker while the upload sends pages.
 */
import { createHash } from 'node:crypto';
import type { VirtualDisk } from '../disk/source.js';
import { alignedBuffer } from '../io/aligned.js';
import { READ_UNIT, type DiskRef } from './tasks.js';

export interface Md5Task {
  disk: DiskRef;
  /** The blob's virtual size (≥ the disk's): content past the disk's end is zeros. */
  virtualSize: number;
  footer: Uint8Array;
}

export interface Md5Result {
  /** Base64, as Content-MD5 wants it. */
  md5: string;
  bytesRead: number;
}

let buffer: Uint8Array | undefined;
let zeros: Uint8Array | undefined;

export async function runMd5Task(task: Md5Task, disk: VirtualDisk): Promise<Md5Result> {
  buffer ??= alignedBuffer(READ_UNIT);
  zeros ??= new Uint8Array(READ_UNIT);
  const md5 = createHash('md5');
  let at = 0;
  let bytesRead = 0;
  const feedZeros = (end: number) => {
    while (at < end) {
      const n = Math.min(zeros!.length, end - at);
      md5.update(zeros!.subarray(0, n));
      at += n;
    }
  };
  for (const [start, end] of disk.dataRanges()) {
    feedZeros(start);
    for (let p = start; p < end; p += READ_UNIT) {
      const n = Math.min(READ_UNIT, end - p);
      const view = buffer.subarray(0, n);
      await disk.read(view, p);
      md5.update(view);
      bytesRead += n;
    }
    at = end;
  }
  feedZeros(task.virtualSize);
  md5.update(task.footer);
  return { md5: md5.digest('base64'), bytesRead };
}
