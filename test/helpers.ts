/**
 * Shared test helpers: the conformance corpus (unpacked once per test process), the project's
 * own fixtures (generated once per test process), hashing of virtual disks, temp dirs and qemu
 * detection. Every temp dir made here is removed when the process exits.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { fileURLToPath } from 'node:url';
import { gunzipSync, createGunzip } from 'node:zlib';
import { afterAll, expect } from 'vitest';
import { VhdError } from '../src/errors.js';

/** The repository root (/work/main). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The suites run the CLI and the pool's worker from dist/ (compiled by npm run build, which npm test
 * runs first). A dist older than a source file would test yesterday's code: fail clearly instead.
 */
function assertDistFresh(): void {
  const built = path.join(repoRoot, 'dist', 'cli', 'main.js');
  if (!fs.existsSync(built)) throw new Error('dist/ is missing: run "npm run build" (npm test does it first)');
  const builtAt = fs.statSync(built).mtimeMs;
  const walk = (dir: string): string[] =>
    fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
  const newer = walk(path.join(repoRoot, 'src')).filter((f) => fs.statSync(f).mtimeMs > builtAt);
  if (newer.length > 0) {
    throw new Error(`dist/ is older than ${newer.length} source file(s) (${path.relative(repoRoot, newer[0])}…): run "npm run build" (npm test does it first)`);
  }
}
assertDistFresh();

/** The shared, read-only conformance corpus (`../shared/corpus` from the repository root). */
export const corpusDir = path.resolve(repoRoot, '../shared/corpus');

/** Whether the corpus is there (its expected.json at least). */
export const corpusPresent = fs.existsSync(path.join(corpusDir, 'expected.json'));

/** qemu-img is on PATH and runs. */
export const hasQemu = (() => {
  const r = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
})();

// -------------------------------------------------------------------------------------------------
// Temp dirs, removed at exit

const tempDirs: string[] = [];
let cleanupInstalled = false;

function cleanup(): void {
  for (const d of tempDirs.splice(0)) {
    try {
      fs.rmSync(d, { recursive: true, force: true });
    } catch {
      // best effort: nothing else can be done at exit
    }
  }
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', cleanup);
  // vitest stops its fork workers with SIGTERM, which skips 'exit': clean up, then let the signal
  // take its default course (this listener is gone by then).
  process.once('SIGTERM', () => {
    cleanup();
    process.kill(process.pid, 'SIGTERM');
  });
}

// Also clean up after the test file that imported these helpers (this registers on the file's suite).
afterAll(() => {
  cleanup();
  corpusUnpacked = undefined;
  fixturesMade = undefined;
});

/** A fresh directory under os.tmpdir(), removed (with its contents) when the process exits. */
export function tmpDir(prefix = 'vhdkit-test-'): string {
  installCleanup();
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}

// -------------------------------------------------------------------------------------------------
// Corpus

export interface CorpusSample {
  stored_as: string;
  file_sha256: string;
  file_size: number;
  header: Record<string, any>;
  content: Record<string, any>;
}

export interface CorpusExpected {
  samples: Record<string, CorpusSample>;
}

/** The corpus's expected.json (throws when the corpus is absent). */
export function corpusExpected(): CorpusExpected {
  return JSON.parse(fs.readFileSync(path.join(corpusDir, 'expected.json'), 'utf8')) as CorpusExpected;
}

function listGz(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listGz(dir, r));
    else if (e.isFile() && e.name.endsWith('.vhd.gz')) out.push(r);
  }
  return out.sort();
}

let corpusUnpacked: Promise<string> | undefined;

/**
 * Decompresses every `*.vhd.gz` of the corpus into one temp dir (once per process), keeping the
 * relative paths, so chains find their siblings. Returns the dir.
 */
export function unpackCorpus(): Promise<string> {
  corpusUnpacked ??= (async () => {
    if (!corpusPresent) throw new Error(`the corpus is not at ${corpusDir}`);
    const out = tmpDir('vhdkit-corpus-');
    for (const rel of listGz(corpusDir)) {
      const target = path.join(out, rel.slice(0, -'.gz'.length));
      fs.mkdirSync(path.dirname(target), { recursive: true });
      await pipeline(fs.createReadStream(path.join(corpusDir, rel)), createGunzip(), fs.createWriteStream(target));
    }
    return out;
  })();
  return corpusUnpacked;
}

/** The decompressed bytes of one corpus sample, e.g. `readCorpusFile('blktap/c5.vhd')`, without a temp dir. */
export function readCorpusFile(rel: string): Buffer {
  return gunzipSync(fs.readFileSync(path.join(corpusDir, `${rel}.gz`)));
}

// -------------------------------------------------------------------------------------------------
// Fixtures

export interface FixtureImage {
  type: 'fixed' | 'dynamic' | 'differencing';
  virtualSize: number;
  sha256: string;
  parentIgnoredSha256?: string;
  chain?: string[];
  blockSize: number | null;
  allocatedBlocks: number | null;
  fileSize: number;
  uniqueId: string;
  timestamp: number;
  madeBy?: string;
  note?: string;
}

export interface FixturesExpected {
  version: number;
  generator: string;
  qemu: boolean;
  images: Record<string, FixtureImage>;
  raw: Record<string, string>;
  corrupt: Array<{ code: string; file: string; note?: string; chainSha256?: string }>;
  supportFiles: Array<{ file: string; role: string; sha256?: string }>;
}

let fixturesMade: Promise<{ dir: string; expected: FixturesExpected }> | undefined;

/**
 * Runs fixtures/make-fixtures.mjs once per process into a temp dir (with the qemu-made images when
 * qemu-img is available) and returns the dir and the expected answers.
 */
export function fixturesDir(): Promise<{ dir: string; expected: FixturesExpected }> {
  fixturesMade ??= (async () => {
    const dir = tmpDir('vhdkit-fixtures-');
    // @ts-ignore: a plain ESM script without type declarations
    const mod = (await import('../fixtures/make-fixtures.mjs')) as {
      makeFixtures(outDir: string, options: { qemu?: boolean }): Promise<FixturesExpected>;
    };
    const expected = await mod.makeFixtures(dir, { qemu: hasQemu });
    return { dir, expected };
  })();
  return fixturesMade;
}

// -------------------------------------------------------------------------------------------------
// Hashing

const CHUNK = 4 * 1024 * 1024;

/** SHA-256 (hex) of a virtual disk's whole content, read in 4 MiB chunks. */
export async function sha256OfDisk(img: { virtualSize: number; read(into: Uint8Array, position: number): Promise<void> }): Promise<string> {
  const h = createHash('sha256');
  const buf = new Uint8Array(Math.min(CHUNK, Math.max(img.virtualSize, 1)));
  for (let pos = 0; pos < img.virtualSize; pos += CHUNK) {
    const n = Math.min(CHUNK, img.virtualSize - pos);
    const view = buf.subarray(0, n);
    await img.read(view, pos);
    h.update(view);
  }
  return h.digest('hex');
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

// -------------------------------------------------------------------------------------------------
// Memory measurements

let gcFn: (() => void) | undefined;

/** Runs a full garbage collection (exposing `gc` on first use), so memory measurements start clean. */
export function forceGc(): void {
  if (!gcFn) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') gcFn = g;
    else {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc') as () => void;
    }
  }
  gcFn();
}

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32), for reproducible test data. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ProcessRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stderrBytes: Buffer;
  /** Wall time of the process. */
  ms: number;
}

/** Runs a process to its end, collecting its output; SIGKILL after `timeoutMs`. */
export function runProcess(
  cmd: string,
  args: string[],
  options: { cwd: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; uid?: number; gid?: number },
): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, uid: options.uid, gid: options.gid });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stderrBytes = Buffer.concat(err);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: stderrBytes.toString('utf8'), stderrBytes, ms: performance.now() - started });
    });
  });
}

/**
 * Runs a process and interrupts it at a chosen instant, for crash tests: `killAfterMs` after the
 * spawn, or `killAfterConditionMs` after `condition()` first holds (polled every millisecond); 0 or
 * less interrupts at once. SIGKILL unless `signal` says otherwise. No timeout: the test's own bounds it.
 */
export function runAndInterrupt(
  cmd: string,
  args: string[],
  o: { cwd: string; env?: NodeJS.ProcessEnv; killAfterMs?: number; killAfterConditionMs?: number; condition?: () => boolean; signal?: NodeJS.Signals },
): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timer: NodeJS.Timeout | undefined;
    let poll: NodeJS.Timeout | undefined;
    const kill = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(o.signal ?? 'SIGKILL');
    };
    const killAfter = (ms: number) => {
      if (ms <= 0) kill();
      else timer = setTimeout(kill, ms);
    };
    if (o.killAfterMs !== undefined) killAfter(o.killAfterMs);
    else if (o.killAfterConditionMs !== undefined && o.condition) {
      const { condition, killAfterConditionMs } = o;
      poll = setInterval(() => {
        if (!condition()) return;
        clearInterval(poll);
        poll = undefined;
        killAfter(killAfterConditionMs);
      }, 1);
    }
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (poll) clearInterval(poll);
      const stderrBytes = Buffer.concat(err);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: stderrBytes.toString('utf8'), stderrBytes, ms: performance.now() - started });
    });
  });
}

/** The whole virtual content of a disk (VHD, chain or raw), read through vhdkit's reader. */
export async function readVirtual(file: string): Promise<Buffer> {
  const { openAny } = await import('../src/ops/open.js');
  const { disk } = await openAny(file);
  try {
    const out = Buffer.alloc(disk.virtualSize);
    if (out.length > 0) await disk.read(out, 0);
    return out;
  } finally {
    await disk.close();
  }
}

// -------------------------------------------------------------------------------------------------
// Azurite, real: one per test file, stopped in afterAll

export interface TestAzurite {
  pid: number;
  port: number;
  endpoint: string;
  connectionString: string;
  sasUrl(container: string, blob: string, permissions?: string): string;
  containerSas(container: string, permissions?: string): string;
  stop(): Promise<void>;
}

/** Checks that the build is there (suites spawn dist/cli/main.js) and starts Azurite (fixtures/azurite.mjs). */
export async function startTestAzurite(): Promise<TestAzurite> {
  for (const f of ['dist/cli/main.js', 'dist/pool/worker.js']) {
    if (!fs.existsSync(path.join(repoRoot, f))) throw new Error(`${f} is missing: run "npm run build" first (npm test does it in pretest)`);
  }
  // @ts-ignore: a plain ESM script without type declarations
  const { startAzurite } = (await import('../fixtures/azurite.mjs')) as { startAzurite(): Promise<TestAzurite> };
  return startAzurite();
}

/** The VhdError a promise rejects with (fails the test when it resolves or rejects with anything else). */
export async function rejection(p: Promise<unknown>): Promise<VhdError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VhdError);
    return e as VhdError;
  }
  throw new Error('expected a VhdError, but the promise resolved');
}

/**
 * Every entry under `root` and what it holds, keyed by its path relative to `root`: a regular file
 * by its SHA-256, a symlink by its target, anything else by its kind. What a test says must not change.
 */
export function snapshotTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = fs.lstatSync(p);
      const key = path.relative(root, p);
      if (st.isDirectory()) walk(p);
      else if (st.isSymbolicLink()) out.set(key, `-> ${fs.readlinkSync(p)}`);
      else if (st.isFile()) out.set(key, createHash('sha256').update(fs.readFileSync(p)).digest('hex'));
      else out.set(key, st.isFIFO() ? 'fifo' : 'other');
    }
  };
  walk(root);
  return out;
}
