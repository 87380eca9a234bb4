/**
 * Structure-aware fuzzing of the command line (issue 17, class 4). Real images (the fixtures and,
 * when present, the corpus) get damage aimed at their footers, dynamic header, BAT, locators and
 * bitmaps (test/damage.ts: fields set to edge values, bytes, truncation; checksums fixed up or not),
 * are written to real files, and every command runs on them: info, check, hash, convert, diff of the
 * disk against its own conversion, and merge --into-copy for differencing disks. For every command:
 * - the exit code is 0, 1 or 2; stdout is one JSON document; stderr is empty or one `vhdkit: … [CODE]`
 *   line with a code of ErrorCodes (no stack, no "internal error");
 * - bounded time and memory;
 * - no input is modified (every file's SHA-256 before and after);
 * - what convert wrote is what the disk reads as: diff of the two finds no change, hash gives one
 *   digest, and qemu-img (an independent reader, right for fixed and dynamic disks) reads the same
 *   bytes wherever it and `check` both accept the file.
 * Commands run in this process through the CLI's own entry (cli/app main), every 20th case also as
 * a real `node dist/cli/main.js` process, which must print the same.
 *
 * `npm test` runs a few hundred cases (VHDKIT_FUZZ_SEED sets the seed, printed at the start);
 * `npm run fuzz -- --minutes N` runs for N minutes (nightly CI).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/app.js';
import { ErrorCodes } from '../src/errors.js';
import { byteEdit, cut, type Damage, damaged, fieldEdit, layoutOf, type Subject } from './damage.js';
import { corpusDir, corpusPresent, fixturesDir, hasQemu, readCorpusFile, repoRoot, runProcess, snapshotTree, tmpDir } from './helpers.js';

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const CODES = new Set<string>(Object.values(ErrorCodes));
const MINUTES = Number(process.env.VHDKIT_FUZZ_MINUTES ?? 0) || 0;
const SEED = Number(process.env.VHDKIT_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
/** Cases in `npm test`. */
const CASES = Number(process.env.VHDKIT_FUZZ_CASES ?? 240);
const COMMAND_MS = 20_000;
const RSS_GROWTH = 512 * 1024 * 1024;
const REAL_EVERY = 20;

interface Run {
  args: string[];
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** One command line through the CLI's entry in this process, its output captured. */
async function cli(args: string[]): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const ow = process.stdout.write;
  const ew = process.stderr.write;
  process.stdout.write = ((c: string | Uint8Array) => (out.push(String(c)), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => (err.push(String(c)), true)) as typeof process.stderr.write;
  process.exitCode = 0;
  const started = performance.now();
  try {
    await main(args);
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { args, code, stdout: out.join(''), stderr: err.join(''), ms: performance.now() - started };
}

function show(r: Run): string {
  return `vhdkit ${r.args.join(' ')}: exit ${r.code}\nstdout: ${r.stdout.slice(0, 1200)}\nstderr: ${r.stderr.slice(0, 1200)}`;
}

/** The contract every command keeps, whatever its input. Returns the JSON document. */
function expectContract(r: Run): any {
  expect([0, 1, 2], show(r)).toContain(r.code);
  expect(r.ms, `${show(r)}\ntook ${r.ms} ms`).toBeLessThan(COMMAND_MS);
  let doc: any;
  try {
    doc = JSON.parse(r.stdout);
  } catch {
    expect.fail(`stdout is not one JSON document\n${show(r)}`);
  }
  if (r.stderr !== '') {
    const lines = r.stderr.replace(/\n$/, '').split('\n');
    expect(lines, show(r)).toHaveLength(1);
    const m = /^vhdkit: (.*) \[([A-Z0-9_]+)\]$/.exec(lines[0]);
    expect(m, `not one coded line\n${show(r)}`).not.toBeNull();
    expect(CODES.has(m![2]), `unknown code ${m![2]}`).toBe(true);
    expect(lines[0]).not.toMatch(/internal error|\bat .*\.(ts|js):\d+/);
    expect(r.code, show(r)).not.toBe(0);
    expect(doc.ok, show(r)).toBe(false);
    expect(doc.error.code).toBe(m![2]);
  }
  return doc;
}


const snapshot = snapshotTree;

// -------------------------------------------------------------------------------------------------
// Subjects

const subjects: Subject[] = [];
function addSubject(name: string, open: string, target: string, files: Map<string, Uint8Array>) {
  subjects.push({ name, open, target, files, sha256: '', ...layoutOf(files.get(target)!) });
}
{
  const { dir } = await fixturesDir();
  const read = (rel: string) => new Uint8Array(fs.readFileSync(path.join(dir, rel)));
  for (const f of ['fixed-1m.vhd', 'dynamic-512k-blocks.vhd', 'dynamic-4k-blocks.vhd']) addSubject(f, f, f, new Map([[f, read(f)]]));
  const chain = new Map([
    ['chain/child.vhd', read('chain/child.vhd')],
    ['chain/base.vhd', read('chain/base.vhd')],
  ]);
  addSubject('chain/child.vhd', 'chain/child.vhd', 'chain/child.vhd', chain);
  addSubject('chain/child.vhd (damaged base)', 'chain/child.vhd', 'chain/base.vhd', chain);
}
if (corpusPresent) {
  for (const f of ['windows/dissect-win10-dynamic.vhd', 'windows/dissect-win10-fixed.vhd', 'blktap/fixed4.vhd']) {
    addSubject(`corpus ${f}`, f, f, new Map([[f, new Uint8Array(readCorpusFile(f))]]));
  }
  const c5 = new Map([
    ['blktap/c5.vhd', new Uint8Array(readCorpusFile('blktap/c5.vhd'))],
    ['blktap/p5.vhd', new Uint8Array(readCorpusFile('blktap/p5.vhd'))],
  ]);
  addSubject('corpus blktap/c5.vhd', 'blktap/c5.vhd', 'blktap/c5.vhd', c5);
  addSubject('corpus blktap/c5.vhd (damaged p5)', 'blktap/c5.vhd', 'blktap/p5.vhd', c5);
} else {
  console.warn(`fuzz.test.ts: corpus not at ${corpusDir}; only the fixtures are fuzzed`);
}

const damage: fc.Arbitrary<Damage> = fc.oneof(
  fc.record({ kind: fc.constant('fields' as const), subject: fc.nat(), edits: fc.array(fieldEdit, { minLength: 1, maxLength: 3 }), fix: fc.boolean() }),
  fc.record({ kind: fc.constant('bytes' as const), subject: fc.nat(), edits: fc.array(byteEdit, { minLength: 1, maxLength: 6 }), fix: fc.boolean() }),
  fc.record({ kind: fc.constant('truncate' as const), subject: fc.nat(), keep: cut }),
  fc.record({
    kind: fc.constant('mixed' as const),
    subject: fc.nat(),
    bytes: fc.array(byteEdit, { maxLength: 4 }),
    fields: fc.array(fieldEdit, { maxLength: 3 }),
    keep: fc.oneof(fc.constant(1000), cut),
    fix: fc.boolean(),
  }),
);

// -------------------------------------------------------------------------------------------------
// One case

let root = '';
let caseNo = 0;
const stats = new Map<string, number>();
const count = (key: string) => stats.set(key, (stats.get(key) ?? 0) + 1);

/** qemu-img's reading of a fixed or dynamic disk (raw bytes), or undefined where it refuses it. */
function qemuRead(file: string, out: string): Buffer | undefined {
  const r = spawnSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', file, out], { timeout: COMMAND_MS, encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  try {
    return fs.readFileSync(out);
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/**
 * The size qemu-img gives a VHD whose footer vhdkit read as `size` bytes: the CHS size unless the
 * creator is one qemu trusts for its current size ('win ', 'qem2', 'd2v ', 'CTXS', 'tap\0') or the
 * geometry is the maximum (qemu's vpc.c, "use_chs").
 */
function qemuVirtualSize(file: Buffer, size: number): number {
  const at = file.length >= 512 && file.toString('latin1', file.length - 512, file.length - 504) === 'conectix' ? file.length - 512 : 0;
  const creator = file.toString('latin1', at + 28, at + 32);
  const [c, h, s] = [file.readUInt16BE(at + 56), file[at + 58], file[at + 59]];
  const trusted = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'].includes(creator);
  return trusted || (c === 65535 && h === 16 && s === 255) ? size : c * h * s * 512;
}

async function runCase(d: Damage): Promise<void> {
  const s = subjects[d.subject % subjects.length];
  const n = caseNo++;
  const dir = path.join(root, 'case');
  fs.rmSync(dir, { recursive: true, force: true });
  for (const [rel, bytes] of damaged(s, d)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), bytes);
  }
  const inputs = snapshot(dir);
  const disk = path.join(dir, s.open);
  const out = path.join(root, 'out.raw');
  const copy = path.join(root, 'copy.vhd');
  fs.rmSync(out, { force: true });
  fs.rmSync(copy, { force: true });
  const rss = process.memoryUsage().rss;

  const info = expectContract(await cli(['info', disk, '--json']));
  const check = expectContract(await cli(['check', disk, '--json']));
  const hash = expectContract(await cli(['hash', disk, '--json', '--workers', '0']));
  const conv = await cli(['convert', disk, out, '--to', 'raw', '--json']);
  expectContract(conv);
  count(`${s.name}: check ${check.ok === true ? 'ok' : check.ok === false ? (check.errors?.[0]?.code ?? check.error?.code) : '?'}, convert ${conv.code === 0 ? 'ok' : JSON.parse(conv.stdout).error.code}`);
  if (conv.code === 0) {
    // What convert wrote is the disk's content: no difference, one digest.
    const df = expectContract(await cli(['diff', disk, out, '--json']));
    if (df.ok !== false) expect(df.changedBytes, `diff of ${s.open} against its conversion`).toBe(0);
    const h2 = expectContract(await cli(['hash', out, '--json', '--workers', '0']));
    if (hash.digest) expect(h2.digest, 'hash of the conversion').toBe(hash.digest);
    // qemu-img, where it is right (not differencing disks: it ignores the parent) and both accept.
    if (hasQemu && info.type !== 'differencing' && info.type !== undefined && check.ok === true) {
      const q = qemuRead(disk, path.join(root, 'qemu.raw'));
      if (q) {
        const v = fs.readFileSync(out);
        // qemu reads some disks by their CHS geometry (its creator table); the bytes both read must agree.
        const size = qemuVirtualSize(fs.readFileSync(disk), v.length);
        count(`qemu compared${size === v.length ? '' : ' (by CHS)'}`);
        expect(q.length, `qemu-img reads ${q.length} bytes of ${s.open}, vhdkit ${v.length}, qemu's rule ${size}`).toBe(size);
        const common = Math.min(q.length, v.length);
        expect(Buffer.compare(q.subarray(0, common), v.subarray(0, common)), `qemu-img and vhdkit read ${s.open} differently`).toBe(0);
      }
    }
  }
  if (info.type === 'differencing') expectContract(await cli(['merge', disk, '--into-copy', copy, '--json']));

  expect(snapshot(dir), `an input of ${s.name} was modified`).toEqual(inputs);
  expect(process.memoryUsage().rss - rss, 'RSS growth').toBeLessThan(RSS_GROWTH);

  if (n % REAL_EVERY === 0) {
    // The real process prints what the in-process run printed.
    for (const args of [['check', disk, '--json'], ['info', disk, '--json']]) {
      const inProcess = await cli(args);
      const real = await runProcess(process.execPath, [CLI, ...args], { cwd: root, timeoutMs: COMMAND_MS });
      expect({ code: real.code, stdout: real.stdout, stderr: real.stderr }, `vhdkit ${args.join(' ')} as a process`).toEqual({
        code: inProcess.code,
        stdout: inProcess.stdout,
        stderr: inProcess.stderr,
      });
    }
    count('real process compared');
  }
}

/** The CLI's Ctrl-C handlers, installed in this process by the in-process runs: removed at the end. */
const signalListeners = { SIGINT: process.listeners('SIGINT'), SIGTERM: process.listeners('SIGTERM') };

beforeAll(() => {
  root = tmpDir('vhdkit-fuzz-');
  console.log(`fuzz.test.ts: seed ${SEED} (VHDKIT_FUZZ_SEED=${SEED} repeats it), ${subjects.length} subjects, ${MINUTES ? `${MINUTES} minutes` : `${CASES} cases`}`);
});

afterAll(() => {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    for (const l of process.listeners(sig)) if (!signalListeners[sig].includes(l)) process.removeListener(sig, l);
  }
  console.log(`fuzz.test.ts: ${caseNo} cases\n${[...stats].sort().map(([k, v]) => `  ${String(v).padStart(5)}  ${k}`).join('\n')}`);
});

describe('the command line on damaged images', () => {
  it('undamaged subjects pass check and convert, and qemu-img agrees where it is right', async () => {
    for (const [i] of subjects.entries()) {
      const before = caseNo;
      await runCase({ kind: 'fields', subject: i, edits: [], fix: false });
      expect(caseNo).toBe(before + 1);
    }
    expect(stats.get('qemu compared') ?? 0, 'qemu-img compared at least the fixtures').toBeGreaterThanOrEqual(hasQemu ? 3 : 0);
  }, 120_000);

  it(
    'exit 0/1/2, one coded line, one JSON document, bounded, inputs unmodified, conversions read the same',
    async () => {
      await fc.assert(fc.asyncProperty(damage, runCase), {
        seed: SEED,
        numRuns: MINUTES ? 1e9 : CASES,
        interruptAfterTimeLimit: MINUTES ? MINUTES * 60_000 : undefined,
        markInterruptAsFailure: false,
        endOnFailure: true,
      });
    },
    MINUTES ? MINUTES * 60_000 + 600_000 : 600_000,
  );
});
