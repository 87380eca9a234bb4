/**
 * `vhdkit upload` killed at random instants (real processes, SIGKILL), then run again; and
 * `--verify` against blobs tampered with after a complete upload. Against a real Azurite
 * (fixtures/azurite.mjs), started once for this file.
 *
 * 1. A 64 MiB disk of random data (every chunk must be sent) uploaded by the CLI with
 *    `--concurrency 2 --journal-dir D`, SIGKILLed after a random 100–1500 ms, or shortly after its
 *    local journal first appears (so that some kills leave a watermark), once or twice, then run
 *    again to completion. Azurite in memory takes 64 MiB in well under the second after which the
 *    first watermark is saved, so the killed runs see a slower network: a preload hook
 *    (`node --import`) holds back the body of each page write for 250 ms. After each kill: `generations` lists the blob as 'uploading' with a hint
 *    (or 'complete' when the run had finished, or not at all when it died before creating it).
 *    After the rerun: the blob is exact (content, footer, Content-MD5), the rerun resumed from at
 *    least the journal's watermark and sent no more than the rest of the plan plus what two
 *    requests in flight can hold, and the journal is gone. At least one rerun resumed (> 0).
 *    The seed is printed; VHDKIT_CRASH_SEED=n repeats a run's kill times.
 * 2. `--verify`: verified: true on a fresh upload and on "already complete"; after a page of the
 *    blob is overwritten (data, a zero chunk, the zero padding past an odd-sized source, the
 *    footer), `upload --verify` of the same disk exits 1 with VERIFY_MISMATCH, while `upload`
 *    without it still says "already complete".
 *
 * The CLI runs from dist/: `npm run build` first (npm test does it in pretest).
 */
import { pathToFileURL } from 'node:url';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { convert } from '../src/ops/convert.js';
import { generations } from '../src/ops/generations.js';
import type { UploadResult } from '../src/ops/upload.js';
import { destroyPool } from '../src/pool/pool.js';
import { mulberry32, type ProcessRun, repoRoot, runAndInterrupt, startTestAzurite, tmpDir, type TestAzurite } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const KiB = 1024;
const MiB = 1024 * 1024;
const SECTOR = 512;
const CONCURRENCY = 2;

let az: TestAzurite;
let svc: BlobServiceClient;
let work: string;
/** Preload for the CLI: page writes (Put Page, update) are held back VHDKIT_TEST_PAGE_DELAY_MS before their body goes out. */
let slowNetwork: string;
const PAGE_DELAY_MS = 250;

const SLOW_NETWORK = `import http from 'node:http';
const delay = Number(process.env.VHDKIT_TEST_PAGE_DELAY_MS || 0);
const end = http.ClientRequest.prototype.end;
http.ClientRequest.prototype.end = function (...args) {
  const put = this.method === 'PUT' && /[?&]comp=page/.test(this.path) && String(this.getHeader('x-ms-page-write')) === 'update';
  if (delay > 0 && put) {
    setTimeout(() => end.apply(this, args), delay);
    return this;
  }
  return end.apply(this, args);
};
`;

beforeAll(async () => {
  az = await startTestAzurite();
  svc = BlobServiceClient.fromConnectionString(az.connectionString);
  work = tmpDir('vhdkit-upload-crash-');
  slowNetwork = path.join(work, 'slow-network.mjs');
  fs.writeFileSync(slowNetwork, SLOW_NETWORK);
});

afterAll(async () => {
  await destroyPool();
  await az?.stop();
});

type Exit = ProcessRun;

/** The `done` of the upload journal in `dir` (0 while there is none, or it is being replaced). */
function journalDoneIn(dir: string): number {
  try {
    const name = fs.readdirSync(dir).find((n) => n.endsWith('.json'));
    return name ? Number(JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')).done) || 0 : 0;
  } catch {
    return 0;
  }
}

/**
 * Runs the CLI; `killAfterMs` SIGKILLs it (or sends `signal`) that long after the spawn,
 * `killAfterJournalMs` that long after a file first appears in `journalDir`, `killAfterWatermarkMs`
 * that long after the journal first records a watermark above 0 (both polled every millisecond).
 */
function runCli(
  args: string[],
  o: { killAfterMs?: number; killAfterJournalMs?: number; killAfterWatermarkMs?: number; journalDir?: string; slow?: boolean; signal?: NodeJS.Signals } = {},
): Promise<Exit> {
  const node = o.slow ? ['--import', pathToFileURL(slowNetwork).href] : [];
  const env = o.slow ? { ...process.env, VHDKIT_TEST_PAGE_DELAY_MS: String(PAGE_DELAY_MS) } : process.env;
  const dir = o.journalDir;
  const journalThere = dir ? () => fs.existsSync(dir) && fs.readdirSync(dir).some((n) => n.endsWith('.json')) : undefined;
  const watermarkThere = dir ? () => journalDoneIn(dir) > 0 : undefined;
  return runAndInterrupt(process.execPath, [...node, CLI, ...args], {
    cwd: work,
    env,
    signal: o.signal,
    killAfterMs: o.killAfterMs,
    killAfterConditionMs: o.killAfterWatermarkMs ?? o.killAfterJournalMs,
    condition: o.killAfterWatermarkMs !== undefined ? watermarkThere : journalThere,
  });
}

async function download(container: string, blob: string): Promise<Buffer> {
  return svc.getContainerClient(container).getBlobClient(blob).downloadToBuffer();
}

function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  if (a.length !== b.length) return `length ${a.length}, want ${b.length}`;
  if (Buffer.compare(a, b) === 0) return undefined;
  let i = 0;
  while (a[i] === b[i]) i++;
  return `first difference at byte ${i} (4 MiB piece ${Math.floor(i / (4 * MiB))})`;
}

/** The blob is content, zeros to `virtualSize`, a fixed-VHD footer, and its Content-MD5 is its MD5. */
async function expectExactBlob(container: string, blob: string, content: Uint8Array, virtualSize: number): Promise<void> {
  const bytes = await download(container, blob);
  expect(bytes.length).toBe(virtualSize + 512);
  const body = Buffer.alloc(virtualSize);
  body.set(content);
  expect(firstDifference(bytes.subarray(0, virtualSize), body), `${blob}: content`).toBeUndefined();
  const f = bytes.subarray(virtualSize);
  expect(f.subarray(0, 8).toString('latin1')).toBe('conectix');
  expect(f.readUInt32BE(0x3c)).toBe(2);
  expect(f.readBigUInt64BE(0x30)).toBe(BigInt(virtualSize));
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 0x40 || i >= 0x44) sum += f[i];
  expect(f.readUInt32BE(0x40), `${blob}: footer checksum`).toBe(~sum >>> 0);
  const props = await svc.getContainerClient(container).getBlobClient(blob).getProperties();
  expect(props.contentMD5 && Buffer.from(props.contentMD5).toString('base64'), `${blob}: Content-MD5`).toBe(createHash('md5').update(bytes).digest('base64'));
}

/** A dynamic VHD of `content` (made through a raw file and `convert`). */
async function makeDisk(name: string, content: Uint8Array): Promise<string> {
  const raw = path.join(work, `${name}.raw`);
  const vhd = path.join(work, `${name}.vhd`);
  fs.writeFileSync(raw, content);
  await convert(raw, vhd, { to: 'dynamic', from: 'raw' });
  fs.rmSync(raw);
  return vhd;
}

// -------------------------------------------------------------------------------------------------

describe('SIGKILL at random instants, then the same upload again', () => {
  const C = 'crash';
  const size = 64 * MiB;
  const seed = Number(process.env.VHDKIT_CRASH_SEED ?? Date.now() % 1_000_000);
  const rnd = mulberry32(seed);
  let content: Buffer;
  let disk: string;
  let reference: UploadResult;
  let referenceMs = 0;

  beforeAll(async () => {
    content = randomFillSync(Buffer.alloc(size));
    disk = await makeDisk('crash', content);
    // An uninterrupted run, for the plan's size and a feel for the timing.
    const r = await runCli(['upload', disk, `${C}/reference.vhd`, '--json', '--concurrency', String(CONCURRENCY), '--journal-dir', path.join(work, 'j-ref'), '--connection-string', az.connectionString], { slow: true });
    expect(r.code, r.stderr).toBe(0);
    reference = JSON.parse(r.stdout) as UploadResult;
    referenceMs = r.ms;
    expect(reference.bytesUploaded).toBe(size + 512);
    console.log(`upload-crash: seed ${seed}; an uninterrupted CLI upload of ${size / MiB} MiB took ${Math.round(r.ms)} ms (page writes held ${PAGE_DELAY_MS} ms)`);
    await expectExactBlob(C, 'reference.vhd', content, size);
  });

  it('killed once or twice (or interrupted), the rerun completes it exactly, resuming from the watermark', async () => {
    type Kill = { afterMs?: number; afterJournalMs?: number; afterWatermarkMs?: number; signal?: 'SIGINT' };
    const anywhere = (): Kill => ({ afterMs: 100 + Math.floor(rnd() * Math.max(1400, referenceMs - 100)) });
    // Once the journal has recorded a watermark: some rerun always resumes from one (with kills only
    // "anywhere", all four landed before the first watermark about one run in ten).
    const late = (): Kill => ({ afterWatermarkMs: Math.floor(rnd() * 200) });
    const trials: Kill[][] = [
      [anywhere()],
      [anywhere()],
      [late()],
      [{ afterJournalMs: Math.floor(rnd() * 150) }],
      [{ afterJournalMs: Math.floor(rnd() * 150) }, anywhere()],
      // Ctrl-C: the run stops by itself (exit 1, ABORTED) with requests in flight.
      [{ afterJournalMs: Math.floor(rnd() * 300), signal: 'SIGINT' }],
    ];
    const summary: string[] = [];
    let resumed = 0;
    let sawUploading = 0;
    for (const [i, kills] of trials.entries()) {
      const blob = `t${i}.vhd`;
      const journalDir = path.join(work, `j${i}`);
      const args = ['upload', disk, `${C}/${blob}`, '--json', '--concurrency', String(CONCURRENCY), '--journal-dir', journalDir, '--connection-string', az.connectionString];
      let finishedEarly = false;
      let journalDone = 0;
      for (const k of kills) {
        const run = await runCli(args, { killAfterMs: k.afterMs, killAfterJournalMs: k.afterJournalMs, killAfterWatermarkMs: k.afterWatermarkMs, journalDir, slow: true, signal: k.signal });
        if (k.signal === 'SIGINT' && run.code === 1) {
          expect(JSON.parse(run.stdout)).toMatchObject({ ok: false, error: { code: 'ABORTED' } });
        } else if (run.signal !== 'SIGKILL') {
          // It finished before the kill came.
          expect(run.code, run.stderr).toBe(0);
          finishedEarly = true;
          break;
        }
        const journals = fs.existsSync(journalDir) ? fs.readdirSync(journalDir).filter((n) => n.endsWith('.json')) : [];
        if (journals.length > 0) journalDone = JSON.parse(fs.readFileSync(path.join(journalDir, journals[0]), 'utf8')).done;
        const g = await generations(C, { connectionString: az.connectionString, prefix: blob });
        if (g.generations.length > 0) {
          const [gen] = g.generations;
          expect(['uploading', 'complete']).toContain(gen.state);
          if (gen.state === 'uploading') {
            sawUploading++;
            expect(gen.hint).toMatch(/unfinished upload.*vhdkit upload/);
            expect(gen.digest).toBeNull();
          }
        } else {
          expect(journalDone).toBe(0); // no blob yet: nothing can have been sent
        }
      }
      const final = await runCli(args);
      expect(final.code, final.stderr).toBe(0);
      const r = JSON.parse(final.stdout) as UploadResult;
      if (finishedEarly) {
        expect(r).toMatchObject({ alreadyComplete: true, bytesUploaded: 0 });
      } else if (!r.alreadyComplete) {
        expect(r.resumedFrom).toBeGreaterThanOrEqual(journalDone);
        expect(r.bytesPlanned).toBe(reference.bytesPlanned);
        // Everything past the watermark is sent again; nothing more than that (plus what two
        // requests in flight can hold) is sent.
        expect(r.bytesUploaded + r.resumedFrom).toBeLessThanOrEqual(r.bytesPlanned + CONCURRENCY * 4 * MiB);
        expect(r.bytesUploaded + r.resumedFrom).toBeGreaterThanOrEqual(r.bytesPlanned);
        if (r.resumedFrom > 0) resumed++;
      }
      await expectExactBlob(C, blob, content, size);
      expect(fs.existsSync(journalDir) ? fs.readdirSync(journalDir) : [], `${blob}: the journal is removed when complete (kills: ${JSON.stringify(kills)}, result ${final.stdout.slice(0, 400)})`).toEqual([]);
      const g = await generations(C, { connectionString: az.connectionString, prefix: blob });
      expect(g.generations.map((x) => x.state)).toEqual(['complete']);
      const when = (k: Kill) => (k.afterMs !== undefined ? `${k.afterMs} ms` : k.afterWatermarkMs !== undefined ? `watermark+${k.afterWatermarkMs} ms` : `journal+${k.afterJournalMs} ms`);
      summary.push(`${blob}: ${kills.map((k) => `${k.signal ?? 'SIGKILL'} at ${when(k)}`).join(', ')} → ${finishedEarly ? 'finished before the kill' : r.alreadyComplete ? 'complete at the kill' : `resumed from ${(r.resumedFrom / MiB).toFixed(1)} MiB (journal ${(journalDone / MiB).toFixed(1)}), sent ${(r.bytesUploaded / MiB).toFixed(1)} MiB`}`);
    }
    console.log(`upload-crash (seed ${seed}):\n  ${summary.join('\n  ')}`);
    expect(resumed, 'at least one rerun resumed from a watermark').toBeGreaterThan(0);
    expect(sawUploading, "at least one kill left an 'uploading' blob").toBeGreaterThan(0);
  });
});

describe('--verify', () => {
  const C = 'verify';

  /**
   * Uploads `content` with --verify, overwrites one page of the blob with `tamper`, then checks that
   * only `upload --verify` notices. `full` adds the slower checks (verify on "already complete",
   * the human-readable error line).
   */
  async function tamperCase(name: string, content: Buffer, tamper: (virtualSize: number) => [number, Buffer], full = false): Promise<void> {
    const disk = await makeDisk(`verify-${name}`, content);
    const journalDir = path.join(work, `jv-${name}`);
    const args = ['upload', disk, `${C}/${name}.vhd`, '--json', '--journal-dir', journalDir, '--connection-string', az.connectionString];
    const first = await runCli([...args, '--verify']);
    expect(first.code, first.stderr).toBe(0);
    const r1 = JSON.parse(first.stdout) as UploadResult;
    expect(r1).toMatchObject({ verified: true, alreadyComplete: false });
    await expectExactBlob(C, `${name}.vhd`, content, r1.virtualSize);
    if (full) {
      const again = await runCli([...args, '--verify']);
      expect(again.code, again.stderr).toBe(0);
      expect(JSON.parse(again.stdout)).toMatchObject({ verified: true, alreadyComplete: true, bytesUploaded: 0 });
    }

    const [offset, junk] = tamper(r1.virtualSize);
    await svc.getContainerClient(C).getPageBlobClient(`${name}.vhd`).uploadPages(junk, offset, junk.length);
    const plain = await runCli(args);
    expect(plain.code, plain.stderr).toBe(0);
    expect(JSON.parse(plain.stdout)).toMatchObject({ alreadyComplete: true, verified: null });
    const checked = await runCli([...args, '--verify']);
    expect(checked.code, `${name}: ${checked.stdout}`).toBe(1);
    expect(JSON.parse(checked.stdout)).toMatchObject({ ok: false, error: { code: 'VERIFY_MISMATCH' } });
    expect(checked.stderr).toMatch(/VERIFY_MISMATCH/);
    if (full) {
      const human = await runCli([...args.filter((a) => a !== '--json'), '--verify']);
      expect(human.code).toBe(1);
      expect(human.stderr).toMatch(/^vhdkit: .*differs.*\[VERIFY_MISMATCH\]/);
      expect(human.stdout).toBe('');
    }
  }

  const sparse = (size: number): Buffer => {
    const b = Buffer.alloc(size);
    randomFillSync(b, 0, 3 * MiB);
    randomFillSync(b, 10 * MiB + 4 * KiB, 200 * KiB);
    return b;
  };

  it('a data page overwritten', async () => {
    await tamperCase('data', sparse(24 * MiB), () => [MiB + 4 * KiB, Buffer.alloc(SECTOR, 0x42)], true);
  });

  it('junk written into a zero chunk', async () => {
    await tamperCase('zero', sparse(24 * MiB), () => [17 * MiB, Buffer.alloc(SECTOR, 0x42)]);
  });

  it('junk in the zero padding past an odd-sized source', async () => {
    await tamperCase('padding', sparse(20 * MiB + 7 * SECTOR), (vs) => {
      expect(vs).toBe(21 * MiB);
      return [21 * MiB - SECTOR, Buffer.alloc(SECTOR, 0x42)];
    });
  });

  it('the footer overwritten', async () => {
    await tamperCase('footer', sparse(24 * MiB), (vs) => [vs, Buffer.alloc(SECTOR, 0x42)]);
  });
});
