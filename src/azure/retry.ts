/**
 * Retry policy for every request vhdkit sends to Azure Storage, in one place. The SDK's own retry
 * policy is switched off (maxTries 1) so that this is the only one: it retries what Azure documents
 * as transient (503 ServerBusy, 500 OperationTimedOut/InternalError, 408, connection resets and
 * timeouts) with exponential backoff and full jitter, counts retries for the summary, and never
 * retries anything else (403 authentication, 404, 409 conflicts, 412 lease/condition failures,
 * 400 bad requests): those are errors in what was asked, not in the weather.
 */
import { abortError, ErrorCodes, VhdError } from '../errors.js';

export interface RetryOptions {
  /** Attempts per request, the first included (default 8). */
  maxTries?: number;
  /** First backoff (default 500 ms); doubled each retry up to maxDelayMs, with full jitter. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** One attempt's time limit (default 120 s): a request that hangs is abandoned and retried. */
  tryTimeoutMs?: number;
}

/** Network error codes that mean "the request may not have arrived; send it again". */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'REQUEST_SEND_ERROR',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'TRY_TIMEOUT',
]);
const TRANSIENT_STATUS = new Set([408, 500, 502, 503, 504]);

export interface AzureErrorLike {
  statusCode?: number;
  code?: string;
  name?: string;
  message?: string;
  details?: { errorCode?: string };
}

/** Credential errors of @azure/identity: never retried, reported as AZURE_AUTH. */
function isCredentialError(err: AzureErrorLike): boolean {
  return /CredentialUnavailable|AuthenticationError|AuthenticationRequired/i.test(err?.name ?? '') || /Bearer token authentication is not permitted/i.test(err?.message ?? '');
}

export function isTransient(e: unknown): boolean {
  const err = e as AzureErrorLike;
  if (!err || typeof err !== 'object') return false;
  if (isCredentialError(err)) return false;
  if (err.statusCode !== undefined && TRANSIENT_STATUS.has(err.statusCode)) return true;
  if (err.code && TRANSIENT_CODES.has(err.code)) return true;
  if (err.statusCode === undefined && /socket hang up|ECONNRESET|network|timed? ?out/i.test(err.message ?? '')) return true;
  return false;
}

export class RetryCounter {
  retries = 0;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The pause before retry `n` (1-based): exponential, capped, with full jitter. */
export function backoffDelay(n: number, options: RetryOptions = {}): number {
  return Math.random() * Math.min(options.maxDelayMs ?? 30_000, (options.baseDelayMs ?? 500) * 2 ** (n - 1));
}

/**
 * Runs `attempt` until it succeeds, fails with a non-transient error, or runs out of tries. Each
 * attempt gets its own AbortSignal that fires on the caller's abort or the per-try timeout.
 */
export async function withRetry<T>(
  what: string,
  attempt: (signal: AbortSignal) => Promise<T>,
  options: RetryOptions & { signal?: AbortSignal; counter?: RetryCounter } = {},
): Promise<T> {
  const maxTries = options.maxTries ?? 8;
  const tryTimeout = options.tryTimeoutMs ?? 120_000;
  for (let n = 1; ; n++) {
    if (options.signal?.aborted) throw abortError(options.signal);
    const timeout = AbortSignal.timeout(tryTimeout);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    try {
      return await attempt(signal);
    } catch (e) {
      if (options.signal?.aborted) throw abortError(options.signal);
      const timedOut = timeout.aborted;
      if ((!timedOut && !isTransient(e)) || n >= maxTries) throw azureError(e, what, n);
      if (options.counter) options.counter.retries++;
      await sleep(backoffDelay(n, options), options.signal).catch(() => {
        throw abortError(options.signal);
      });
    }
  }
}

/** An Azure failure as a VhdError: status, the service's error code, what was being done. No URLs (they may hold a SAS). */
export function azureError(e: unknown, what: string, tries = 1): VhdError {
  if (e instanceof VhdError) return e;
  const err = e as AzureErrorLike;
  const service = err?.details?.errorCode ?? (typeof err?.code === 'string' ? err.code : undefined);
  const status = err?.statusCode;
  const reason = [status ? `HTTP ${status}` : undefined, service].filter(Boolean).join(' ') || err?.name || 'error';
  const text = redactSecrets(String(err?.message ?? e).split('\n')[0]).slice(0, 300);
  const after = tries > 1 ? ` after ${tries} tries` : '';
  if (isCredentialError(err)) {
    return new VhdError(
      ErrorCodes.AZURE_AUTH,
      `${what} failed: ${err.name ?? 'credential error'}: ${text} (a blob URL without a SAS uses DefaultAzureCredential, which needs an https URL and a signed-in identity: az login, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET; or give a SAS URL or --connection-string)`,
      { cause: e },
    );
  }
  const code = status === 403 || status === 401 ? ErrorCodes.AZURE_AUTH : ErrorCodes.AZURE;
  return new VhdError(code, `${what} failed${after}: ${reason}${text && text !== reason ? `: ${text}` : ''}`, { cause: e, actual: status });
}

/** Removes SAS signatures, account keys and bearer tokens from any text that might be shown. */
export function redactSecrets(text: string): string {
  return text
    .replace(/([?&](?:sig|se|st|sp|sv|sr|ss|srt|spr|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid|sdd|ses)=)[^&\s"']*/gi, '$1REDACTED')
    .replace(/(AccountKey=)[^;\s"']*/gi, '$1REDACTED')
    .replace(/(SharedAccessSignature=)[^;\s"']*/gi, '$1REDACTED')
    .replace(/(Bearer\s+)[A-Za-z0-9._~+/=-]{20,}/g, '$1REDACTED')
    .replace(/(SharedKey\s+[^:\s]+:)[A-Za-z0-9+/=]+/g, '$1REDACTED');
}
