/**
 * The Azure edge without a server: destinations, secret redaction, the retry policy's decisions,
 * Azure's page rules, and the plan's manifest windows. (Everything that talks to a server is in
 * upload.test.ts, against a real Azurite.)
 */
import { RestError } from '@azure/storage-blob';
import { describe, expect, it } from 'vitest';
import { accountUrlFromConnectionString, parseContainer, parseDestination, siblingLocation } from '../src/azure/destination.js';
import { checkBlobSize, checkPages, MAX_PAGE_BLOB } from '../src/azure/pageblob.js';
import { azureError, isTransient, redactSecrets, RetryCounter, withRetry } from '../src/azure/retry.js';
import { ErrorCodes, VhdError } from '../src/errors.js';

const SAS = 'sv=2022-11-02&ss=b&srt=co&sp=rwdlac&se=2030-01-01T00:00:00Z&st=2026-01-01T00:00:00Z&spr=https&sig=AbCdEf%2BsecretSignature%3D';
const KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const CS = `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${KEY};EndpointSuffix=core.windows.net`;

describe('destinations', () => {
  it('takes a host-style blob URL with a SAS apart, keeping the SAS out of the display', () => {
    const d = parseDestination(`https://acct.blob.core.windows.net/images/gen2/disk.vhd?${SAS}`);
    expect(d).toMatchObject({ accountUrl: 'https://acct.blob.core.windows.net', container: 'images', blob: 'gen2/disk.vhd', sas: SAS, tokenCredential: false });
    expect(d.display).toBe('images/gen2/disk.vhd at https://acct.blob.core.windows.net');
    expect(d.display).not.toContain('sig');
  });

  it('reads path-style URLs (Azurite, an IP or localhost) with the account as the first segment', () => {
    const d = parseDestination(`http://127.0.0.1:10000/devstoreaccount1/images/base?${SAS}`);
    expect(d).toMatchObject({ accountUrl: 'http://127.0.0.1:10000/devstoreaccount1', container: 'images', blob: 'base' });
  });

  it('uses DefaultAzureCredential for a URL without a query', () => {
    expect(parseDestination('https://acct.blob.core.windows.net/images/base').tokenCredential).toBe(true);
  });

  it('takes container/blob with a connection string, from the option or the environment', () => {
    const d = parseDestination('images/base.vhd', { connectionString: CS });
    expect(d).toMatchObject({ accountUrl: 'https://acct.blob.core.windows.net', container: 'images', blob: 'base.vhd', connectionString: CS });
    const saved = process.env.AZURE_STORAGE_CONNECTION_STRING;
    process.env.AZURE_STORAGE_CONNECTION_STRING = CS;
    try {
      expect(parseDestination('images/x').container).toBe('images');
    } finally {
      if (saved === undefined) delete process.env.AZURE_STORAGE_CONNECTION_STRING;
      else process.env.AZURE_STORAGE_CONNECTION_STRING = saved;
    }
  });

  it('refuses what Azure would refuse, with a usage error', () => {
    const saved = process.env.AZURE_STORAGE_CONNECTION_STRING;
    delete process.env.AZURE_STORAGE_CONNECTION_STRING;
    try {
      for (const bad of ['images/base', 'noslash', 'Images/base', 'ab/base', 'images/trailing.', 'https://acct.blob.core.windows.net/images', 'https://acct.blob.core.windows.net/images/b?foo=bar']) {
        expect(() => parseDestination(bad), bad).toThrow(VhdError);
        try {
          parseDestination(bad);
        } catch (e) {
          expect((e as VhdError).code).toBe(ErrorCodes.USAGE);
        }
      }
    } finally {
      if (saved !== undefined) process.env.AZURE_STORAGE_CONNECTION_STRING = saved;
    }
  });

  it('derives account URLs from connection strings', () => {
    expect(accountUrlFromConnectionString(CS)).toBe('https://acct.blob.core.windows.net');
    expect(accountUrlFromConnectionString('AccountName=a;AccountKey=k;BlobEndpoint=http://127.0.0.1:5/devstoreaccount1/')).toBe('http://127.0.0.1:5/devstoreaccount1');
    expect(accountUrlFromConnectionString('UseDevelopmentStorage=true')).toBe('http://127.0.0.1:10000/devstoreaccount1');
  });

  it('names a base next to the destination: same container, another container, or a URL', () => {
    const d = parseDestination(`https://acct.blob.core.windows.net/images/gen2?${SAS}`);
    expect(siblingLocation(d, 'base')).toMatchObject({ container: 'images', blob: 'base', sas: SAS });
    expect(siblingLocation(d, 'archive/base')).toMatchObject({ container: 'archive', blob: 'base' });
    expect(siblingLocation(d, 'https://other.blob.core.windows.net/cont1/b1').accountUrl).toBe('https://other.blob.core.windows.net');
  });

  it('parses containers for generations', () => {
    expect(parseContainer('images', { connectionString: CS })).toMatchObject({ container: 'images', accountUrl: 'https://acct.blob.core.windows.net' });
    expect(parseContainer(`https://acct.blob.core.windows.net/images?${SAS}`)).toMatchObject({ container: 'images', sas: SAS });
    expect(() => parseContainer('https://acct.blob.core.windows.net/images/blob')).toThrow(/must name a container/);
  });
});

describe('secrets', () => {
  it('redacts SAS signatures and fields, account keys and bearer tokens from any text', () => {
    const text = `PUT https://acct.blob.core.windows.net/c/b?${SAS} with ${CS} and Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.abc and SharedKey acct:${KEY}`;
    const out = redactSecrets(text);
    expect(out).not.toContain('secretSignature');
    expect(out).not.toContain(KEY);
    expect(out).not.toContain('eyJ0eXAiOiJKV1Qi');
    expect(out).toContain('sig=REDACTED');
    expect(out).toContain('AccountKey=REDACTED');
    // Ordinary words survive.
    expect(redactSecrets('Bearer token authentication is not permitted')).toBe('Bearer token authentication is not permitted');
  });

  it('builds Azure errors without the URL or its SAS', () => {
    const e = new RestError(`Server failed to authenticate https://acct.blob.core.windows.net/c/b?${SAS}`, { statusCode: 403, code: 'AuthenticationFailed' });
    const v = azureError(e, 'images/b: write pages');
    expect(v.code).toBe(ErrorCodes.AZURE_AUTH);
    expect(v.message).toContain('HTTP 403 AuthenticationFailed');
    expect(v.message).not.toContain('secretSignature');
  });
});

describe('retry policy', () => {
  it('retries only what Azure documents as transient', () => {
    expect(isTransient(new RestError('busy', { statusCode: 503, code: 'ServerBusy' }))).toBe(true);
    expect(isTransient(new RestError('timeout', { statusCode: 500, code: 'OperationTimedOut' }))).toBe(true);
    expect(isTransient(new RestError('socket hang up', { code: 'ECONNRESET' }))).toBe(true);
    expect(isTransient(Object.assign(new Error('read ETIMEDOUT'), { code: 'ETIMEDOUT' }))).toBe(true);
    expect(isTransient(new RestError('forbidden', { statusCode: 403 }))).toBe(false);
    expect(isTransient(new RestError('not found', { statusCode: 404 }))).toBe(false);
    expect(isTransient(new RestError('lease', { statusCode: 412 }))).toBe(false);
    expect(isTransient(new RestError('bad', { statusCode: 400, code: 'InvalidPageRange' }))).toBe(false);
    expect(isTransient(Object.assign(new Error('no credential in network'), { name: 'CredentialUnavailableError' }))).toBe(false);
  });

  it('retries transient failures with backoff and counts them, then succeeds', async () => {
    const counter = new RetryCounter();
    let calls = 0;
    const r = await withRetry(
      'x',
      async () => {
        calls++;
        if (calls < 4) throw new RestError('busy', { statusCode: 503 });
        return 'ok';
      },
      { baseDelayMs: 1, maxDelayMs: 2, counter },
    );
    expect(r).toBe('ok');
    expect(calls).toBe(4);
    expect(counter.retries).toBe(3);
  });

  it('gives up after maxTries, and at once on a permanent error', async () => {
    let calls = 0;
    await expect(
      withRetry('images/b: write', async () => {
        calls++;
        throw new RestError('busy', { statusCode: 503, code: 'ServerBusy' });
      }, { maxTries: 3, baseDelayMs: 1 }),
    ).rejects.toThrow(/images\/b: write failed after 3 tries: HTTP 503 ServerBusy/);
    expect(calls).toBe(3);
    calls = 0;
    await expect(
      withRetry('x', async () => {
        calls++;
        throw new RestError('conflict', { statusCode: 409 });
      }, { baseDelayMs: 1 }),
    ).rejects.toMatchObject({ code: ErrorCodes.AZURE });
    expect(calls).toBe(1);
  });

  it('abandons a try that hangs past its timeout and tries again', async () => {
    let calls = 0;
    const r = await withRetry(
      'x',
      (signal) =>
        new Promise<string>((resolve, reject) => {
          calls++;
          if (calls > 1) return resolve('second');
          signal.addEventListener('abort', () => reject(new Error('aborted')));
        }),
      { tryTimeoutMs: 30, baseDelayMs: 1 },
    );
    expect(r).toBe('second');
  });

  it('stops on the caller’s abort', async () => {
    const c = new AbortController();
    const p = withRetry('x', async () => {
      c.abort();
      throw new RestError('busy', { statusCode: 503 });
    }, { signal: c.signal, baseDelayMs: 1 });
    await expect(p).rejects.toMatchObject({ code: ErrorCodes.ABORTED });
  });
});

describe("Azure's page rules, enforced whatever the server accepts", () => {
  it('page writes: 512-aligned, at most 4 MiB, inside the blob', () => {
    expect(() => checkPages(0, 4 * 1024 * 1024, 8 * 1024 * 1024, 'b', 4 * 1024 * 1024)).not.toThrow();
    expect(() => checkPages(0, 4 * 1024 * 1024 + 512, 16 * 1024 * 1024, 'b', 4 * 1024 * 1024)).toThrow(/over Azure's 4 MiB limit/);
    expect(() => checkPages(100, 512, 4096, 'b', 4 * 1024 * 1024)).toThrow(/not 512-byte aligned/);
    expect(() => checkPages(0, 1000, 4096, 'b', 4 * 1024 * 1024)).toThrow(/not 512-byte aligned/);
    expect(() => checkPages(4096, 512, 4096, 'b', 4 * 1024 * 1024)).toThrow(/past the end of the 4096-byte blob/);
  });

  it('blob sizes: multiples of 512, at most 8 TiB', () => {
    expect(() => checkBlobSize(MAX_PAGE_BLOB, 'b')).not.toThrow();
    expect(() => checkBlobSize(MAX_PAGE_BLOB + 512, 'b')).toThrow(/8 TiB/);
    expect(() => checkBlobSize(1000, 'b')).toThrow(/multiple of 512/);
  });
});
