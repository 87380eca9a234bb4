/**
 * A destination URL without a SAS: vhdkit signs in with DefaultAzureCredential, end to end, with
 * nothing mocked inside vhdkit or the Azure SDK:
 *
 * - Azurite serves HTTPS (a self-signed certificate made here with openssl, trusted by the CLI
 *   through NODE_EXTRA_CA_CERTS) and accepts bearer tokens ("--oauth basic": it checks a token's
 *   issuer, audience and lifetime, not its signature);
 * - the token comes through DefaultAzureCredential's Azure CLI step: an `az` on PATH that answers
 *   `az account get-access-token` as the real one does, with a token for https://storage.azure.com.
 *
 * The CLI uploads a disk to the URL, checks it with --verify, and lists it with `generations`; a
 * token for another audience is refused (AZURE_AUTH, exit 1) and the token never appears in output.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot, runProcess, tmpDir } from './helpers.js';

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;
const hasOpenssl = spawnSync('sh', ['-c', 'command -v openssl']).status === 0;

interface Server {
  endpoint: string;
  connectionString: string;
  stop(): Promise<void>;
}

let dir = '';
let az: Server | undefined;
let cert = '';

function b64url(x: unknown): string {
  return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
}

/** A JWT as Entra ID issues them for Azure Storage (unsigned: Azurite's basic OAuth does not check signatures). */
function token(audience: string): string {
  const now = Math.floor(Date.now() / 1000);
  const claims = { aud: audience, iss: 'https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/', iat: now - 60, nbf: now - 60, exp: now + 3600, oid: 'vhdkit-test' };
  return `${b64url({ alg: 'RS256', typ: 'JWT' })}.${b64url(claims)}.${b64url('not-a-signature')}`;
}

/** A folder holding an `az` that answers get-access-token with a token for `audience`. */
function fakeAzureCli(name: string, audience: string): string {
  const bin = path.join(dir, name);
  fs.mkdirSync(bin, { recursive: true });
  const answer = JSON.stringify({
    accessToken: token(audience),
    expiresOn: new Date(Date.now() + 3600_000).toISOString().replace('T', ' ').slice(0, 19),
    expires_on: Math.floor(Date.now() / 1000) + 3600,
    subscription: '00000000-0000-0000-0000-000000000000',
    tenant: '72f988bf-86f1-41af-91ab-2d7cd011db47',
    tokenType: 'Bearer',
  });
  fs.writeFileSync(path.join(bin, 'az'), `#!/bin/sh\nif [ "$1 $2" = "account get-access-token" ]; then echo '${answer}'; exit 0; fi\necho "az: $*: not faked" >&2\nexit 1\n`, { mode: 0o755 });
  return bin;
}

function cli(args: string[], bin: string) {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, NODE_EXTRA_CA_CERTS: cert };
  for (const k of ['AZURE_STORAGE_CONNECTION_STRING', 'AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_CLIENT_SECRET']) delete env[k];
  return runProcess(process.execPath, [CLI, ...args], { cwd: dir, timeoutMs: 60_000, env });
}

beforeAll(async () => {
  if (!hasOpenssl) return;
  dir = tmpDir('vhdkit-token-');
  cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl could not make a certificate: ${r.stderr}`);
  // @ts-ignore: a plain ESM script without type declarations
  const { startAzurite } = (await import('../fixtures/azurite.mjs')) as { startAzurite(o: object): Promise<Server> };
  az = await startAzurite({ https: { cert, key }, oauth: true, extentMemoryLimit: 512 });
});

afterAll(async () => {
  await az?.stop();
});

if (!hasOpenssl) console.warn('azure-token.test.ts: openssl not found; the DefaultAzureCredential test is skipped');

describe.skipIf(!hasOpenssl)('a URL without a SAS: DefaultAzureCredential (through the Azure CLI step), against Azurite over HTTPS with OAuth', () => {
  it('uploads, verifies and lists with the signed-in identity; a token for another audience is AZURE_AUTH, and no token is printed', async () => {
    const disk = path.join(dir, 'disk.raw');
    const content = Buffer.alloc(3 * MiB);
    for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE(i * 2654435761 >>> 0, i);
    fs.writeFileSync(disk, content);
    const url = `${az!.endpoint}/tokens/disk.vhd`;
    const good = fakeAzureCli('bin-good', 'https://storage.azure.com');

    const up = await cli(['upload', disk, url, '--verify', '--json'], good);
    expect(up.code, up.stderr).toBe(0);
    const r = JSON.parse(up.stdout);
    expect(r).toMatchObject({ method: 'full', verified: true, blobSize: 3 * MiB + 512 });
    // What landed, read back with the account key (a different credential).
    const keyed = new BlobServiceClient(az!.endpoint, new StorageSharedKeyCredential('devstoreaccount1', 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='));
    // This test process did not start trusting the certificate (NODE_EXTRA_CA_CERTS is read at start):
    // for this one read, it accepts the server's certificate unchecked.
    const before = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
    let bytes: Buffer;
    try {
      bytes = await keyed.getContainerClient('tokens').getBlobClient('disk.vhd').downloadToBuffer();
    } finally {
      if (before === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
      else process.env.NODE_TLS_REJECT_UNAUTHORIZED = before;
    }
    expect(bytes.length).toBe(3 * MiB + 512);
    expect(Buffer.compare(bytes.subarray(0, content.length), content)).toBe(0);
    expect(bytes.subarray(content.length, content.length + 8).toString('latin1')).toBe('conectix');

    const list = await cli(['generations', `${az!.endpoint}/tokens`, '--json'], good);
    expect(list.code, list.stderr).toBe(0);
    const g = JSON.parse(list.stdout);
    expect(g.generations.map((x: { blob: string; state: string }) => [x.blob, x.state])).toEqual([['disk.vhd', 'complete']]);

    const wrong = fakeAzureCli('bin-wrong', 'https://management.azure.com');
    const denied = await cli(['upload', disk, `${az!.endpoint}/tokens/other.vhd`], wrong);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/AZURE_AUTH/);
    // Every token begins with the same header; the claims part begins with the audience.
    const pieces = [b64url({ alg: 'RS256', typ: 'JWT' }), ...['https://storage.azure.com', 'https://management.azure.com'].map((a) => token(a).split('.')[1].slice(0, 40))];
    for (const run of [up, list, denied]) for (const piece of pieces) expect(run.stdout + run.stderr).not.toContain(piece);
  });
});
