
export interface Progress {
  /** Bytes of work done and in all (for convert: bytes of data ranges read). */
  done: number;
  total: number;
}

export interface OperationOptions {
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
}

export { throwIfAborted } from '../errors.js';
