import { ErrorCodes, VhdError } from '../errors.js';

export interface Progress {
  /** Bytes of work done and in all (for convert: bytes of data ranges read). */
  done: number;
  total: number;
}

export interface OperationOptions {
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new VhdError(ErrorCodes.ABORTED, 'operation aborted', { cause: signal.reason });
}
