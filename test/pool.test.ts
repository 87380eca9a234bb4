/**
 * The worker pool (src/pool) as hash and diff use it.
 *
 * - Cancellation: an AbortSignal aborted after the first progress callback makes hash and diff
 *   reject with VhdError ABORTED and leaves no manifest, child or temporary file — also when every
 *   other task has already finished by then, and the pool keeps working afterwards.
 * - Clean shutdown: a process that hashes (or diffs) with the pool and does nothing else exits by
 *   itself, code 0, within seconds — also after a worker error or an abort.
 * - Worker errors arrive as VhdError (not a plain Error) with the same code, file and offset as
 *   the inline run gives; the CLI maps them to the same exit code.
 * - `workers: 0` and `workers: 2` give the same results; getPool sizes; bad `workers` → USAGE.
 *
 * The pool runs the compiled worker from dist/: `npm run build` first (npm test does it in pretest).
 * The large disks (8 GiB virtual, 224 MiB allocated) are built with DynamicWriter in a temp dir.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { FileSink } from '../src/io/file.js';
import { diff } from '../src/ops/diff.js';
import { hash } from '../src/ops/hash.js';
import { defaultWorkers, destroyPool, getPool, INLINE_BELOW } from '../src/pool/pool.js';
import { packTasks, TASK_BYTES } from '../src/pool/schedule.js';
import { fixturesDir, repoRoot, tmpDir, runProcess, type ProcessRun } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const DIST_HASH = path.join(repoRoot, 'dist/ops/hash.js');
const DIST_DIFF = path.join(repoRoot, 'dist/ops/diff.js');
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BLOCK = 2 * MiB;

// -------------------------------------------------------------------------------------------------
// Local helpers

let dir = '';
let A = ''; // 8 GiB dynamic, 112 blocks (224 MiB) allocated in 4 runs of 28 blocks
let B = ''; // the same layout and data, except a few bytes in some blocks
let fx = '';

/** Builds the two large sparse disks: both writers fed from one random buffer per block. */
async function makeLargePair(a: string, b: string): Promise<void> {
  const virtualSize = 8 * GiB;
  const sa = await FileSink.open(a, 'wx');
  const sb = await FileSink.open(b, 'wx');
  const wa = await DynamicWriter.create(sa, { virtualSize, blockSize: BLOCK, uuid: crypto.randomBytes(16) });
  const wb = await DynamicWriter.create(sb, { virtualSize, blockSize: BLOCK, uuid: crypto.randomBytes(16) });
  const data = new Uint8Array(BLOCK);
  let k = 0;
  for (const start of [0, 700, 1900, 3500]) {
    for (let blk = start; blk < start + 28; blk++, k++) {
      crypto.randomFillSync(data);
      await wa.writeBlock(blk, data);
      if (k % 9 === 4) data[(k * 4099) % BLOCK] ^= 0x5a; // one byte differs in b
      await wb.writeBlock(blk, data);
    }
  }
  await wa.finish();
  await wb.finish();
  await sa.close();
  await sb.close();
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

/** A fresh, empty output directory (for manifests and children). */
function outDir(name: string): string {
  return fs.mkdtempSync(path.join(dir, `${name}-`));
}

const run = (cmd: string, args: string[], cwd: string, killAfterMs = 30_000) => runProcess(cmd, args, { cwd, timeoutMs: killAfterMs });

/** Runs an ES module snippet in a fresh node process. */
const nodeEval = (code: string, cwd: string) => run(process.execPath, ['--input-type=module', '-e', code], cwd);

const show = (r: ProcessRun) => `exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''} after ${r.ms.toFixed(0)} ms\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`;

beforeAll(async () => {
  if (!fs.existsSync(path.join(repoRoot, 'dist/pool/worker.js'))) {
    throw new Error('dist/pool/worker.js is missing: run "npm run build" first (npm test does it in pretest)');
  }
  dir = tmpDir('vhdkit-pool-');
  fs.mkdirSync(path.join(dir, 'big'));
  A = path.join(dir, 'big', 'a.vhd');
  B = path.join(dir, 'big', 'b.vhd');
  await makeLargePair(A, B);
  ({ dir: fx } = await fixturesDir());
});

afterAll(async () => {
  await destroyPool();
});

// -------------------------------------------------------------------------------------------------
// Cancellation

describe('cancellation: abort after the first progress callback', () => {
  for (const workers of [2, 0]) {
    it(`hash --manifest (${workers} workers): rejects with VhdError ABORTED; no manifest, no temp file`, async () => {
      const out = outDir(`hash-abort-${workers}`);
      const ac = new AbortController();
      let calls = 0;
      const e = await rejection(
        hash(A, {
          workers,
          manifest: path.join(out, 'a.vhdhash'),
          signal: ac.signal,
          onProgress: () => {
            calls++;
            ac.abort();
          },
        }),
      );
      expect(calls).toBeGreaterThanOrEqual(1);
      expect(e).toBeInstanceOf(VhdError);
      expect((e as VhdError).code).toBe(ErrorCodes.ABORTED);
      expect(fs.readdirSync(out)).toEqual([]);
      expect(fs.readdirSync(path.dirname(A)).sort()).toEqual(['a.vhd', 'b.vhd']);
    });

    it(`diff --out (${workers} workers): rejects with VhdError ABORTED; no child, no temp file`, async () => {
      const out = outDir(`diff-abort-${workers}`);
      const ac = new AbortController();
      let calls = 0;
      const e = await rejection(
        diff(A, B, {
          workers,
          out: path.join(out, 'child.vhd'),
          signal: ac.signal,
          onProgress: () => {
            calls++;
            ac.abort();
          },
        }),
      );
      expect(calls).toBeGreaterThanOrEqual(1);
      expect(e).toBeInstanceOf(VhdError);
      expect((e as VhdError).code).toBe(ErrorCodes.ABORTED);
      expect(fs.readdirSync(out)).toEqual([]);
      expect(fs.readdirSync(path.dirname(A)).sort()).toEqual(['a.vhd', 'b.vhd']);
    });
  }

  it('a signal aborted before the call: hash and diff reject with ABORTED at once, nothing written', async () => {
    const out = outDir('pre-aborted');
    const signal = AbortSignal.abort();
    const e1 = await rejection(hash(A, { workers: 2, manifest: path.join(out, 'm'), signal }));
    const e2 = await rejection(diff(A, B, { workers: 2, out: path.join(out, 'c.vhd'), signal }));
    expect((e1 as VhdError)?.code).toBe(ErrorCodes.ABORTED);
    expect((e2 as VhdError)?.code).toBe(ErrorCodes.ABORTED);
    expect(e1).toBeInstanceOf(VhdError);
    expect(e2).toBeInstanceOf(VhdError);
    expect(fs.readdirSync(out)).toEqual([]);
  });

  describe('when the other tasks have already finished by the time of the abort', () => {
    // One 32 MiB run (the first task, slow) and one small block far away (the second task, which
    // finishes first on the other worker). The abort comes in the first task's progress callback,
    // when the second task's result is already back: the operation must still reject.
    let C = '';
    let D = '';
    beforeAll(async () => {
      C = path.join(dir, 'race-c.vhd');
      D = path.join(dir, 'race-d.vhd');
      for (const [f, flip] of [
        [C, false],
        [D, true],
      ] as const) {
        const sink = await FileSink.open(f, 'wx');
        const w = await DynamicWriter.create(sink, { virtualSize: 1 * GiB, blockSize: BLOCK, uuid: crypto.randomBytes(16) });
        const data = new Uint8Array(BLOCK);
        for (const blk of [...Array.from({ length: 16 }, (_, i) => i), 300]) {
          data.fill(blk + 1);
          if (flip && blk === 300) data[5] ^= 1;
          await w.writeBlock(blk, data);
        }
        await w.finish();
        await sink.close();
      }
      await hash(C, { workers: 2 }); // a warm pool: both workers up
    });

    for (let round = 0; round < 3; round++) {
      it(`hash --manifest (2 workers), round ${round + 1}: rejects with ABORTED and writes no manifest`, async () => {
        const out = outDir('race-hash');
        const ac = new AbortController();
        const e = await rejection(hash(C, { workers: 2, manifest: path.join(out, 'm'), signal: ac.signal, onProgress: () => ac.abort() }));
        expect(e, 'hash resolved although its signal was aborted during the operation').toBeInstanceOf(VhdError);
        expect((e as VhdError).code).toBe(ErrorCodes.ABORTED);
        expect(fs.readdirSync(out)).toEqual([]);
      });

      it(`diff (2 workers), round ${round + 1}: rejects with ABORTED`, async () => {
        const ac = new AbortController();
        const e = await rejection(diff(C, D, { workers: 2, signal: ac.signal, onProgress: () => ac.abort() }));
        expect(e, 'diff resolved although its signal was aborted during the operation').toBeInstanceOf(VhdError);
        expect((e as VhdError).code).toBe(ErrorCodes.ABORTED);
      });
    }
  });

  it('after aborts the pool still works: the same digest and ranges as before', async () => {
    const h0 = await hash(A, { workers: 0 });
    const ac = new AbortController();
    await rejection(hash(A, { workers: 2, signal: ac.signal, onProgress: () => ac.abort() }));
    const h2 = await hash(A, { workers: 2 });
    expect(h2.digest).toBe(h0.digest);
    const d2 = await diff(A, B, { workers: 2 });
    expect(d2.ranges.length).toBeGreaterThan(0);
  });
});

// -------------------------------------------------------------------------------------------------
// Clean shutdown

describe('clean shutdown: a process that only uses the pool exits by itself', () => {
  it('hash with 2 workers: exit 0 within 10 s, with the in-process digest', async () => {
    const code = `
      import { hash } from ${JSON.stringify(`file://${DIST_HASH}`)};
      const t = performance.now();
      const r = await hash(${JSON.stringify(A)}, { workers: 2 });
      console.log(JSON.stringify({ digest: r.digest, workers: r.workers, ms: performance.now() - t }));
    `;
    const r = await nodeEval(code, dir);
    expect(r.code, show(r)).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.workers).toBe(2);
    expect(j.digest).toBe((await hash(A, { workers: 0 })).digest);
    console.log(`pool.test.ts: hash in a child process took ${j.ms.toFixed(0)} ms; the process exited after ${r.ms.toFixed(0)} ms`);
    expect(r.ms).toBeLessThan(10_000);
  });

  it('diff with 2 workers, after a worker error, and after an abort: each exits 0 by itself within 10 s', async () => {
    const code = `
      import { hash } from ${JSON.stringify(`file://${DIST_HASH}`)};
      import { diff } from ${JSON.stringify(`file://${DIST_DIFF}`)};
      const d = await diff(${JSON.stringify(A)}, ${JSON.stringify(B)}, { workers: 2 });
      let failed = null;
      try { await hash(${JSON.stringify(path.join(fx, 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd'))}, { workers: 2 }); } catch (e) { failed = e.message; }
      const ac = new AbortController();
      let aborted = null;
      try { await hash(${JSON.stringify(A)}, { workers: 2, signal: ac.signal, onProgress: () => ac.abort() }); } catch (e) { aborted = e.code ?? e.message; }
      console.log(JSON.stringify({ ranges: d.ranges.length, failed, aborted }));
    `;
    const r = await nodeEval(code, dir);
    expect(r.code, show(r)).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ranges).toBeGreaterThan(0);
    expect(j.failed).toBeTruthy();
    expect(j.aborted).toBe('ABORTED');
    expect(r.ms, show(r)).toBeLessThan(10_000);
  });
});

describe("the pool's error events", () => {
  // piscina emits 'error' on the pool for the result of a task it no longer knows: a task aborted
  // while its worker ran it, whose result was already on its way (seen about once in 600 aborts in
  // a loop of aborted hashes, then the process died of the uncaught error, once with a V8 fatal
  // error because a replacement worker was still loading). That event is expected and ignored;
  // any other error the pool emits is a fault and must still surface.
  const DIST_POOL = path.join(repoRoot, 'dist/pool/pool.js');
  const emitting = (message: string) => `
    import { getPool, destroyPool } from ${JSON.stringify(`file://${DIST_POOL}`)};
    import { hash } from ${JSON.stringify(`file://${DIST_HASH}`)};
    const pool = getPool({ workers: 2 });
    const piscina = await pool.ready;
    piscina.emit('error', new Error(${JSON.stringify(message)}));
    await new Promise((r) => setTimeout(r, 50));
    const r = await hash(${JSON.stringify(A)}, { workers: 2 });
    console.log(JSON.stringify({ digest: r.digest }));
    await destroyPool();
  `;

  it("a late result (\"Unexpected message from Worker\") is ignored: the process goes on and the pool still hashes right", async () => {
    const r = await nodeEval(emitting('Unexpected message from Worker: { taskId: 7, result: {} }'), dir);
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse(r.stdout).digest).toBe((await hash(A, { workers: 0 })).digest);
  });

  it('any other pool error surfaces as an uncaught error: exit 1, the message on stderr, no result', async () => {
    const r = await nodeEval(emitting('the pool broke'), dir);
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain('the pool broke');
    expect(r.stdout).toBe('');
  });
});

// -------------------------------------------------------------------------------------------------
// Worker errors

describe('errors thrown in a worker arrive as VhdError', () => {
  let truncated = '';
  beforeAll(async () => {
    // A valid dynamic disk cut in the middle of its last block's data: opens leniently (the footer
    // copy at 0 stands in), a read of that block fails.
    const whole = path.join(dir, 'whole.vhd');
    const sink = await FileSink.open(whole, 'wx');
    const w = await DynamicWriter.create(sink, { virtualSize: 16 * MiB, blockSize: 512 * 1024, uuid: crypto.randomBytes(16) });
    const data = new Uint8Array(512 * 1024);
    for (const blk of [0, 5, 9]) {
      crypto.randomFillSync(data);
      await w.writeBlock(blk, data);
    }
    await w.finish();
    await sink.close();
    truncated = path.join(dir, 'truncated.vhd');
    const bytes = fs.readFileSync(whole);
    fs.writeFileSync(truncated, bytes.subarray(0, bytes.length - 512 - 200 * 1024));
  });

  it('BAT entry past EOF (fixture corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd), hash with 2 workers: VhdError BAT_ENTRY_PAST_EOF naming the file and an offset', async () => {
    const file = path.join(fx, 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd');
    const inline = await rejection(hash(file, { workers: 0 }));
    expect(inline).toBeInstanceOf(VhdError);
    expect((inline as VhdError).code).toBe(ErrorCodes.BAT_ENTRY_PAST_EOF);
    const e = await rejection(hash(file, { workers: 2 }));
    expect(e, `got ${Object.prototype.toString.call(e)} ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`).toBeInstanceOf(VhdError);
    const v = e as VhdError;
    expect(v.code).toBe(ErrorCodes.BAT_ENTRY_PAST_EOF);
    expect(v.message).toContain(file);
    expect(v.message).toMatch(/at offset \d+/);
    expect(v.file).toBe(file);
    expect(typeof v.offset).toBe('number');
    // The same error as the inline run.
    expect({ code: v.code, message: v.message, offset: v.offset, file: v.file }).toEqual({
      code: (inline as VhdError).code,
      message: (inline as VhdError).message,
      offset: (inline as VhdError).offset,
      file: (inline as VhdError).file,
    });
  });

  it('a dynamic disk truncated mid-data, hash and diff with 2 workers: a VhdError equal to the inline one', async () => {
    const whole = path.join(dir, 'whole.vhd');
    for (const op of ['hash', 'diff'] as const) {
      const go = (workers: number) => (op === 'hash' ? hash(truncated, { workers }) : diff(whole, truncated, { workers }));
      const inline = await rejection(go(0));
      const pooled = await rejection(go(2));
      expect(inline, `${op} inline`).toBeInstanceOf(VhdError);
      expect(pooled, `${op} with workers: ${(pooled as Error)?.constructor?.name}: ${(pooled as Error)?.message}`).toBeInstanceOf(VhdError);
      const [i, p] = [inline as VhdError, pooled as VhdError];
      expect([ErrorCodes.BAT_ENTRY_PAST_EOF, ErrorCodes.FILE_TRUNCATED, ErrorCodes.SHORT_READ]).toContain(i.code);
      expect(p.code).toBe(i.code);
      expect(p.message).toBe(i.message);
      expect(p.message).toContain(truncated);
      expect(p.message).toMatch(/offset \d+/);
    }
  });

  it('CLI: the same exit code and one-line "[CODE]" error with --workers 2 as with --workers 0', async () => {
    const r0 = await run(process.execPath, [CLI, 'hash', 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd', '--workers', '0'], fx);
    const r2 = await run(process.execPath, [CLI, 'hash', 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd', '--workers', '2'], fx);
    expect(r0.code, show(r0)).toBe(2);
    expect(r0.stderr).toContain('[BAT_ENTRY_PAST_EOF]');
    expect(r2.stderr, show(r2)).toContain('[BAT_ENTRY_PAST_EOF]');
    expect(r2.stderr).not.toContain('internal error');
    expect(r2.code, show(r2)).toBe(r0.code);
  });
});

// -------------------------------------------------------------------------------------------------
// Sizes and equivalence

describe('workers 0 and 2 are equivalent; pool sizes', () => {
  it('hash of the large disk: the same digest, chunks, zero chunks and bytes read', async () => {
    const r0 = await hash(A, { workers: 0 });
    const r2 = await hash(A, { workers: 2 });
    expect(r0.workers).toBe(0);
    expect(r2.workers).toBe(2);
    const pick = (r: typeof r0) => ({ digest: r.digest, chunks: r.chunks, zeroChunks: r.zeroChunks, bytesRead: r.bytesRead, virtualSize: r.virtualSize });
    expect(pick(r2)).toEqual(pick(r0));
    expect(r0.bytesRead, 'cost follows the allocated data, not the 8 GiB').toBe(112 * BLOCK);
    expect(r0.zeroChunks).toBe(r0.chunks - (112 * BLOCK) / (64 * 1024));
  });

  it('diff of the large disks: the same ranges, method and byte counts; one changed sector per altered block', async () => {
    const d0 = await diff(A, B, { workers: 0 });
    const d2 = await diff(A, B, { workers: 2 });
    const pick = (r: typeof d0) => ({ ranges: r.ranges, method: r.method, changedBytes: r.changedBytes, bytesCompared: r.bytesCompared });
    expect(pick(d2)).toEqual(pick(d0));
    // k % 9 === 4 for k in 0..111: 12 altered blocks, one byte each, so 12 single sectors.
    expect(d0.changedSectors).toBe(12);
    expect(d0.ranges).toHaveLength(12);
    expect(d0.bytesCompared).toBe(112 * BLOCK);
  });

  it('packTasks: small ranges share a task of at most max bytes, in order; long ranges are cut at the task size', () => {
    const every2 = Array.from({ length: 40 }, (_, i): [number, number] => [i * 2 * BLOCK, i * 2 * BLOCK + BLOCK]);
    const tasks = packTasks(every2, TASK_BYTES);
    expect(tasks.map((t) => t.length)).toEqual([16, 16, 8]);
    expect(tasks.flat()).toEqual(every2);
    const long = packTasks([[0, BLOCK], [10 * BLOCK, 10 * BLOCK + 40 * MiB], [90 * MiB, 90 * MiB + 512]], TASK_BYTES);
    expect(long).toEqual([
      [[0, BLOCK], [10 * BLOCK, 10 * BLOCK + 30 * MiB]],
      [[10 * BLOCK + 30 * MiB, 10 * BLOCK + 40 * MiB], [90 * MiB, 90 * MiB + 512]],
    ]);
    expect(packTasks([], TASK_BYTES)).toEqual([]);
  });

  it('scattered blocks (every other one, zero chunks inside some): the same digest and manifest bytes at 0 and 2 workers and from the raw form', async () => {
    // 48 blocks of 2 MiB, every other block of a 192 MiB disk: tasks hold 16 separate ranges each.
    const vhd = path.join(dir, 'scattered.vhd');
    const raw = path.join(dir, 'scattered.raw');
    const virtualSize = 96 * 2 * BLOCK;
    const sink = await FileSink.open(vhd, 'wx');
    const w = await DynamicWriter.create(sink, { virtualSize, blockSize: BLOCK, uuid: crypto.randomBytes(16) });
    const flat = Buffer.alloc(virtualSize);
    const data = new Uint8Array(BLOCK);
    for (let blk = 1; blk < 96; blk += 2) {
      crypto.randomFillSync(data);
      if (blk % 3 === 0) data.fill(0, 65536 * (blk % 32), 65536 * (blk % 32) + 65536); // one zero chunk
      await w.writeBlock(blk, data);
      flat.set(data, blk * BLOCK);
    }
    await w.finish();
    await sink.close();
    fs.writeFileSync(raw, flat);
    const out = outDir('scattered');
    const r0 = await hash(vhd, { workers: 0, manifest: path.join(out, 'm0') });
    const r2 = await hash(vhd, { workers: 2, manifest: path.join(out, 'm2') });
    const rr = await hash(raw, { workers: 2, manifest: path.join(out, 'mr') });
    expect(r2.digest).toBe(r0.digest);
    expect(rr.digest).toBe(r0.digest);
    expect(r0.bytesRead).toBe(48 * BLOCK);
    expect(r0.zeroChunks).toBe(r0.chunks - 48 * 32 + 16);
    const m0 = fs.readFileSync(path.join(out, 'm0'));
    expect(fs.readFileSync(path.join(out, 'm2')).equals(m0)).toBe(true);
    expect(fs.readFileSync(path.join(out, 'mr')).equals(m0)).toBe(true);
  });

  it('getPool({workers: N}) reports N workers (0 = inline), the default is the cores, the same size gives the same pool', () => {
    expect(getPool({ workers: 0 }).workers).toBe(0);
    const p1 = getPool({ workers: 1 });
    expect(p1.workers).toBe(1);
    const p3 = getPool({ workers: 3 });
    expect(p3.workers).toBe(3);
    expect(p3.concurrency).toBeGreaterThanOrEqual(3);
    const p2 = getPool({ workers: 2 });
    expect(p2.workers).toBe(2);
    expect(getPool({ workers: 2 })).toBe(p2);
    const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
    expect(defaultWorkers()).toBe(Math.max(1, cores));
    expect(getPool().workers).toBe(defaultWorkers());
  });

  it(`inputs under ${INLINE_BELOW / MiB} MiB of data run on the main thread unless workers is given; larger ones on the default pool`, async () => {
    const small = fs.readdirSync(fx).find((n) => n.endsWith('.vhd'))!;
    const inlineRun = await hash(path.join(fx, small));
    expect(inlineRun.bytesRead).toBeLessThan(INLINE_BELOW);
    expect(inlineRun.workers).toBe(0);
    const asked = await hash(path.join(fx, small), { workers: 2 });
    expect(asked.workers).toBe(2);
    expect(asked.digest).toBe(inlineRun.digest);
    const big = await hash(A); // 224 MiB of data
    expect(big.workers).toBe(defaultWorkers());
    const d = await diff(A, B);
    expect(d.workers).toBe(defaultWorkers());
  });

  it("a worker's results go back by transfer: marked movable for piscina, without loading the whole piscina package", async () => {
    // In a thread of its own, as piscina runs it: piscina's worker module loaded first, then ours.
    const code = `
      import { Worker } from 'node:worker_threads';
      const body = \`
        const { parentPort } = await import('node:worker_threads');
        const { createRequire } = await import('node:module');
        const req = createRequire(${JSON.stringify(path.join(repoRoot, 'package.json'))});
        const main = req.resolve('piscina');
        const common = req(main.replace(/main\\.js$/, 'common.js'));
        req(main.replace(/main\\.js$/, 'worker.js'));
        const before = Object.keys(req.cache).filter((k) => k.includes('piscina')).length;
        const w = await import(${JSON.stringify(pathToFileURL(path.join(repoRoot, 'dist/pool/worker.js')).href)});
        const task = { disk: { file: ${JSON.stringify(A)}, format: 'vhd' }, chunkSize: 65536, ranges: [[0, 4 * 1024 * 1024]] };
        const r = await w.hash(task);
        const value = r[Symbol.for('Piscina.valueOf')];
        const buffers = r[Symbol.for('Piscina.transferable')];
        const after = Object.keys(req.cache).filter((k) => k.includes('piscina')).length;
        parentPort.postMessage({ movable: common.isMovable(r), chunks: value.hashes.length, transfers: buffers.length, sameBuffer: buffers[0] === value.hashes.buffer, loadedMore: after - before });
      \`;
      const t = new Worker(body, { eval: true, type: 'module' });
      t.on('message', (m) => { console.log(JSON.stringify(m)); process.exit(0); });
      t.on('error', (e) => { console.error(e); process.exit(1); });
    `;
    const r = await nodeEval(code, dir);
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ movable: true, chunks: 64, transfers: 2, sameBuffer: true, loadedMore: 0 });
  });

  it('a resized pool still runs tasks (1 → 2 → 1 workers: the same digest)', async () => {
    const ds = [];
    for (const workers of [1, 2, 1]) ds.push((await hash(A, { workers })).digest);
    expect(new Set(ds).size).toBe(1);
  });

  it('bad workers values (-1, 1.5, NaN, Infinity) → USAGE, from getPool, hash and diff', async () => {
    for (const workers of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      let thrown: unknown;
      try {
        getPool({ workers });
      } catch (e) {
        thrown = e;
      }
      expect(thrown, `getPool({workers: ${workers}})`).toBeInstanceOf(VhdError);
      expect((thrown as VhdError).code).toBe(ErrorCodes.USAGE);
      const out = outDir('bad-workers');
      const h = await rejection(hash(path.join(fx, 'fixed-1m.vhd'), { workers, manifest: path.join(out, 'm') }));
      expect((h as VhdError)?.code, `hash workers ${workers}`).toBe(ErrorCodes.USAGE);
      const d = await rejection(diff(path.join(fx, 'chain/base.vhd'), path.join(fx, 'chain/child.vhd'), { workers, out: path.join(out, 'c.vhd') }));
      expect((d as VhdError)?.code, `diff workers ${workers}`).toBe(ErrorCodes.USAGE);
      expect(fs.readdirSync(out)).toEqual([]);
    }
  });

  it('CLI: --workers -1 and --workers 1.5 exit 2 with a USAGE line', async () => {
    for (const w of ['-1', '1.5']) {
      const r = await run(process.execPath, [CLI, 'hash', 'fixed-1m.vhd', '--workers', w], fx);
      expect(r.code, show(r)).toBe(2);
      expect(r.stderr).toContain('[USAGE]');
      expect(r.stdout).toBe('');
    }
  });
});
