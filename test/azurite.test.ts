/**
 * The Azure emulator the tests and the quick start use must not lie. Azurite 3.35.0 gave a blob made
 * by Copy Blob its source's page-range list itself, so every page written to (or cleared in) the copy
 * changed the source too; real Azure keeps them apart. `npm ci` applies fixtures/patches (with
 * patch-package, pinned to the exact Azurite version; a different version fails the install). These
 * tests keep it fixed where users meet it: the installed `azurite-blob` bin and the project's launcher.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot, startTestAzurite, type TestAzurite } from './helpers.js';

const PAGE = 512;

/** Page blob A with page 0 written, copied to B (Copy Blob, polled), page 1 written to B and page 0 cleared in B: A must read as before. */
async function copyKeepsSourceApart(container: ContainerClient, name: string): Promise<void> {
  const a = container.getPageBlobClient(`${name}-a`);
  const b = container.getPageBlobClient(`${name}-b`);
  await a.create(4 * PAGE);
  await a.uploadPages(Buffer.alloc(PAGE, 0xaa), 0, PAGE);
  const poller = await b.beginCopyFromURL(a.url);
  await poller.pollUntilDone();
  await b.uploadPages(Buffer.alloc(PAGE, 0xbb), PAGE, PAGE);
  await b.clearPages(0, PAGE);
  const source = await a.downloadToBuffer();
  const copy = await b.downloadToBuffer();
  expect([...source.subarray(0, 2 * PAGE)].some((x, i) => x !== (i < PAGE ? 0xaa : 0)), 'the source changed when its copy was written').toBe(false);
  expect(copy.subarray(0, PAGE).every((x) => x === 0) && copy.subarray(PAGE, 2 * PAGE).every((x) => x === 0xbb), 'the copy holds its own writes').toBe(true);
  const ranges = (await a.getPageRanges()).pageRange ?? [];
  expect(ranges.map((r) => [r.offset, r.count]), 'the source lists only its own page').toEqual([[0, PAGE - 1]]);
}

describe('Azurite as installed by npm ci behaves like Azure for Copy Blob', () => {
  it('the installed Azurite is the version the patch was made for, and the patch is applied', () => {
    const version = JSON.parse(fs.readFileSync(path.join(repoRoot, 'node_modules/azurite/package.json'), 'utf8')).version;
    const patches = fs.readdirSync(path.join(repoRoot, 'fixtures/patches'));
    expect(patches).toEqual([`azurite+${version}.patch`]);
    const store = fs.readFileSync(path.join(repoRoot, 'node_modules/azurite/dist/src/blob/persistence/LokiBlobMetadataStore.js'), 'utf8');
    expect(store.match(/vhdkit: a copy owns its page list/g)).toHaveLength(2);
  });

  describe('through the project launcher (fixtures/azurite.mjs)', () => {
    let az: TestAzurite;
    beforeAll(async () => {
      az = await startTestAzurite();
    });
    afterAll(async () => {
      await az?.stop();
    });
    it('a page written to a copy and a page cleared in it leave the source as it was', async () => {
      const container = BlobServiceClient.fromConnectionString(az.connectionString).getContainerClient('quirk');
      await container.create();
      await copyKeepsSourceApart(container, 'launcher');
    });
  });

  it('through node_modules/.bin/azurite-blob, as a user starts it', async () => {
    const bin = path.join(repoRoot, 'node_modules/.bin/azurite-blob');
    const child = spawn(bin, ['--blobHost', '127.0.0.1', '--blobPort', '0', '--inMemoryPersistence', '--skipApiVersionCheck', '--disableTelemetry', '--loose'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`azurite-blob did not start: ${out}`)), 30_000);
        const onData = (d: Buffer) => {
          out += d.toString();
          const m = /listens on https?:\/\/127\.0\.0\.1:(\d+)/.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.on('exit', (code) => reject(new Error(`azurite-blob exited ${code}: ${out}`)));
      });
      const key = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
      const cs = `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${key};BlobEndpoint=http://127.0.0.1:${port}/devstoreaccount1;`;
      const container = BlobServiceClient.fromConnectionString(cs).getContainerClient('quirk');
      await container.create();
      await copyKeepsSourceApart(container, 'bin');
    } finally {
      child.removeAllListeners('exit');
      child.kill('SIGKILL');
    }
  });
});
