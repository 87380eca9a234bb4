/**
 * Property-based bad-input tests: real images with random damage, biased to the metadata (footers,
 * dynamic header, BAT, parent locators, sector bitmaps). Whatever the damage, opening and reading
 * either fails with a VhdError whose code is one of ErrorCodes, or succeeds and then behaves like a
 * disk (sizes sane, findings coded, zeros outside dataRanges). It never throws anything else, never
 * hangs and never allocates wildly.
 */
import fc from 'fast-check';
import { byteEdit, cut, type Damage, damaged, fieldEdit, fixChecksums, layoutOf, type Subject, u32, u64 } from './damage.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { VhdImage } from '../src/disk/image.js';
import { MemoryResolver, MemorySink } from '../src/io/memory.js';
import { info } from '../src/ops/info.js';
import { check } from '../src/ops/check.js';
import { corpusDir, corpusPresent, fixturesDir, forceGc, readCorpusFile, sha256Hex, tmpDir } from './helpers.js';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const MiB = 1024 * 1024;
const READ_CAP = 64 * MiB;
const ALLOC_LIMIT = 256 * MiB;
const RUN_TIMEOUT_MS = 5_000;
/** VHDKIT_MUTATION_SCALE=10 runs ten times as many cases (for a long exploratory run). */
const SCALE = Math.max(1, Number(process.env.VHDKIT_MUTATION_SCALE ?? 1) || 1);
const TEST_TIMEOUT_MS = 60_000 * SCALE;
const CODES = new Set<string>(Object.values(ErrorCodes));

// -------------------------------------------------------------------------------------------------
// The property

/** Deterministic positions for the capped read mode. */
function positions(seed: number, n: number): number[] {
  let a = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    out.push(((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
  return out;
}

const ZEROS = new Uint8Array(MiB);

function isZero(v: Uint8Array): boolean {
  for (let o = 0; o < v.length; o += MiB) {
    const n = Math.min(MiB, v.length - o);
    if (Buffer.compare(Buffer.from(v.buffer, v.byteOffset + o, n), Buffer.from(ZEROS.buffer, 0, n)) !== 0) return false;
  }
  return true;
}

/** The parts of [from, to) outside the sorted, disjoint `ranges`. */
function gaps(ranges: Array<[number, number]>, from: number, to: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let p = from;
  for (const [a, b] of ranges) {
    if (b <= p) continue;
    if (a >= to) break;
    if (a > p) out.push([p, a]);
    p = Math.max(p, b);
    if (p >= to) break;
  }
  if (p < to) out.push([p, to]);
  return out;
}

function assertVhdError(e: unknown, what: string): asserts e is VhdError {
  if (!(e instanceof VhdError)) {
    const err = e as Error;
    throw new Error(`${what} threw a non-VhdError: ${err?.name}: ${err?.message}\n${err?.stack ?? ''}`);
  }
  expect(CODES.has(e.code), `code ${e.code}`).toBe(true);
  expect(e.message.includes('\n'), `one-line message: ${e.message}`).toBe(false);
}

export interface Outcome {
  opened: boolean;
  code?: string;
  sha256?: string;
}

/**
 * Opens `open` among `files` through MemorySink + MemoryResolver and reads the virtual disk (all of
 * it up to 64 MiB; otherwise 20 ranges). Returns what happened; throws on a property violation.
 */
async function exercise(files: Map<string, Uint8Array>, open: string, seed = 1): Promise<Outcome> {
  const before = process.memoryUsage().arrayBuffers;
  const checkMemory = () => {
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(grown, `arrayBuffers grew by ${grown} bytes`).toBeLessThan(ALLOC_LIMIT);
  };
  let img: VhdImage;
  try {
    img = await VhdImage.open(new MemorySink(open, files.get(open)!), { resolver: new MemoryResolver(files) });
  } catch (e) {
    checkMemory();
    assertVhdError(e, 'open');
    return { opened: false, code: e.code };
  }
  try {
    checkMemory();
    const size = img.virtualSize;
    expect(Number.isSafeInteger(size) && size >= 0 && size % 512 === 0, `virtual size ${size}`).toBe(true);
    for (const f of img.allFindings) {
      expect(CODES.has(f.code), `finding code ${f.code}`).toBe(true);
      expect(['error', 'warning']).toContain(f.severity);
    }
    // Strict is "refuse on any finding": it opens exactly when the lenient open found nothing.
    const codes = new Set(img.allFindings.map((f) => f.code));
    let strictError: unknown;
    try {
      const strict = await VhdImage.open(new MemorySink(open, files.get(open)!), { resolver: new MemoryResolver(files), strict: true });
      await strict.close();
    } catch (e) {
      strictError = e;
    }
    if (codes.size === 0) {
      if (strictError) throw new Error(`strict open failed where the lenient one found nothing: ${(strictError as Error).message}`);
    } else {
      if (strictError === undefined) expect.fail(`strict open succeeded despite findings ${[...codes].join(', ')}`);
      assertVhdError(strictError, 'strict open');
      expect([...codes], 'strict error code among the findings').toContain(strictError.code);
    }
    const ranges = img.dataRanges();
    let prev = 0;
    for (const [a, b] of ranges) {
      expect(Number.isSafeInteger(a) && Number.isSafeInteger(b) && a >= prev && b > a && b <= size, `range [${a}, ${b})`).toBe(true);
      prev = b;
    }
    try {
      if (size <= READ_CAP) {
        const h = createHash('sha256');
        const chunk = new Uint8Array(Math.min(MiB, Math.max(size, 1)));
        for (let pos = 0; pos < size; pos += MiB) {
          const view = chunk.subarray(0, Math.min(MiB, size - pos));
          await img.read(view, pos);
          h.update(view);
          // Outside dataRanges every byte is zero.
          for (const [a, b] of gaps(ranges, pos, pos + view.length)) {
            if (!isZero(view.subarray(a - pos, b - pos))) expect.fail(`non-zero bytes in [${a}, ${b}), outside dataRanges`);
          }
        }
        checkMemory();
        return { opened: true, sha256: h.digest('hex') };
      }
      const ps = positions(seed, 40);
      const buf = new Uint8Array(MiB);
      const again = new Uint8Array(MiB);
      for (let i = 0; i < 20; i++) {
        const len = Math.max(512, Math.floor(ps[2 * i + 1] * MiB) & ~511);
        const pos = Math.floor((ps[2 * i] * Math.max(0, size - len)) / 512) * 512;
        const n = Math.min(len, size - pos);
        if (n <= 0) continue;
        await img.read(buf.subarray(0, n), pos);
        await img.read(again.subarray(0, n), pos);
        expect(Buffer.compare(Buffer.from(buf.buffer, 0, n), Buffer.from(again.buffer, 0, n)), `reads at ${pos} agree`).toBe(0);
        for (const [a, b] of gaps(ranges, pos, pos + n)) {
          if (!isZero(buf.subarray(a - pos, b - pos))) expect.fail(`non-zero bytes in [${a}, ${b}), outside dataRanges`);
        }
      }
      checkMemory();
      return { opened: true };
    } catch (e) {
      if (e instanceof Error && e.name === 'AssertionError') throw e;
      checkMemory();
      assertVhdError(e, 'read');
      return { opened: true, code: e.code };
    }
  } finally {
    await img.close();
  }
}

// -------------------------------------------------------------------------------------------------

const subjects: Subject[] = [];

function addSubject(name: string, open: string, target: string, files: Map<string, Uint8Array>, sha256: string) {
  subjects.push({ name, open, target, files, sha256, ...layoutOf(files.get(target)!) });
}

const { dir, expected } = await fixturesDir();
{
  const read = (rel: string) => new Uint8Array(fs.readFileSync(path.join(dir, rel)));
  const one = (rel: string) => new Map([[rel, read(rel)]]);
  addSubject('dynamic-512k-blocks.vhd', 'dynamic-512k-blocks.vhd', 'dynamic-512k-blocks.vhd', one('dynamic-512k-blocks.vhd'), expected.images['dynamic-512k-blocks.vhd'].sha256);
  addSubject('fixed-1m.vhd', 'fixed-1m.vhd', 'fixed-1m.vhd', one('fixed-1m.vhd'), expected.images['fixed-1m.vhd'].sha256);
  const chain = new Map([
    ['chain/child.vhd', read('chain/child.vhd')],
    ['chain/base.vhd', read('chain/base.vhd')],
  ]);
  const childSha = expected.images['chain/child.vhd'].sha256;
  addSubject('chain/child.vhd', 'chain/child.vhd', 'chain/child.vhd', chain, childSha);
  addSubject('chain/child.vhd (damaged base)', 'chain/child.vhd', 'chain/base.vhd', chain, childSha);
}
if (corpusPresent) {
  const c5 = new Map([
    ['blktap/c5.vhd', new Uint8Array(readCorpusFile('blktap/c5.vhd'))],
    ['blktap/p5.vhd', new Uint8Array(readCorpusFile('blktap/p5.vhd'))],
  ]);
  const sha = 'a9e512705bef8689da0b4151e21b453ebe196feba5817c100934ef6fe2ae36bc';
  addSubject('corpus blktap/c5.vhd', 'blktap/c5.vhd', 'blktap/c5.vhd', c5, sha);
  addSubject('corpus blktap/c5.vhd (damaged p5)', 'blktap/c5.vhd', 'blktap/p5.vhd', c5, sha);
} else {
  console.warn(`mutation.test.ts: corpus not at ${corpusDir}; blktap/c5.vhd is left out of the subjects`);
}

const subjectIndex = fc.integer({ min: 0, max: subjects.length - 1 });

/** Outcomes per property, printed with VHDKIT_MUTATION_STATS=1 (to see what the damage reaches). */
const stats = new Map<string, number>();

async function runDamage(d: Damage): Promise<void> {
  const s = subjects[d.subject];
  const out = await exercise(damaged(s, d), s.open, d.subject * 7919 + JSON.stringify(d).length);
  const key = `${d.kind}: ${out.opened ? 'opened' : 'refused'}${out.code ? ` ${out.code}` : ''}`;
  stats.set(key, (stats.get(key) ?? 0) + 1);
}

afterAll(() => {
  if (process.env.VHDKIT_MUTATION_STATS) console.log([...stats].sort().map(([k, n]) => `${n}\t${k}`).join('\n'));
});

const fcParams = (numRuns: number) => ({ numRuns: numRuns * SCALE, timeout: RUN_TIMEOUT_MS, endOnFailure: true });

describe('damaged images: a VhdError or a working disk, nothing else', () => {
  beforeAll(() => {
    forceGc();
  });

  it.each(subjects.map((s) => [s.name, s] as const))('undamaged %s reads to its SHA-256 with no errors', async (_name, s) => {
    const out = await exercise(s.files, s.open);
    expect(out).toEqual({ opened: true, sha256: s.sha256 });
    const img = await VhdImage.open(new MemorySink(s.open, s.files.get(s.open)!), { resolver: new MemoryResolver(s.files) });
    expect(img.allFindings.filter((f) => f.severity === 'error')).toEqual([]);
    await img.close();
    // The layout parse aimed at real structures.
    expect(s.regions.length).toBeGreaterThanOrEqual(s.name.startsWith('fixed') ? 3 : 6);
  });

  it(
    'random bytes in the footer, header, BAT, locators and bitmaps',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            kind: fc.constant('bytes' as const),
            subject: subjectIndex,
            edits: fc.array(byteEdit, { minLength: 1, maxLength: 6 }),
            fix: fc.boolean(),
          }),
          runDamage,
        ),
        fcParams(300),
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'random truncation',
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.record({ kind: fc.constant('truncate' as const), subject: subjectIndex, keep: cut }), runDamage),
        fcParams(200),
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'u32 fields overwritten with extreme values (0, 0xFFFFFFFF, 0x7FFFFFFF, huge)',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            kind: fc.constant('fields' as const),
            subject: subjectIndex,
            edits: fc.array(fieldEdit, { minLength: 1, maxLength: 3 }),
            fix: fc.boolean(),
          }),
          runDamage,
        ),
        fcParams(300),
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'everything at once',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            kind: fc.constant('mixed' as const),
            subject: subjectIndex,
            bytes: fc.array(byteEdit, { maxLength: 4 }),
            fields: fc.array(fieldEdit, { maxLength: 3 }),
            keep: fc.oneof(fc.constant(1000), cut),
            fix: fc.boolean(),
          }),
          runDamage,
        ),
        fcParams(200),
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe('damaged files through info() and check()', () => {
  const UNUSABLE = new Set<string>([ErrorCodes.IO, ErrorCodes.NOT_VHD, ErrorCodes.FILE_TOO_SMALL]);
  let root = '';
  beforeAll(() => {
    root = tmpDir('vhdkit-mutation-');
    subjects.forEach((s, i) => {
      for (const [name, bytes] of s.files) {
        const p = path.join(root, String(i), name);
        fs.mkdirSync(path.dirname(p), { recursive: true });
        fs.writeFileSync(p, bytes);
      }
    });
  });

  it(
    'info() and check() agree, and fail only with VhdErrors (check only for unusable input)',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            kind: fc.constant('mixed' as const),
            subject: subjectIndex,
            bytes: fc.array(byteEdit, { maxLength: 4 }),
            fields: fc.array(fieldEdit, { maxLength: 2 }),
            keep: fc.oneof(fc.constant(1000), fc.constant(1000), cut),
            fix: fc.boolean(),
          }),
          async (d) => {
            const s = subjects[d.subject];
            const files = damaged(s, d);
            fs.writeFileSync(path.join(root, String(d.subject), s.target), files.get(s.target)!);
            const file = path.join(root, String(d.subject), s.open);
            let infoCodes: string[] | undefined;
            let infoError: VhdError | undefined;
            try {
              const di = await info(file);
              expect(JSON.parse(JSON.stringify(di)).file).toBe(file);
              expect(['fixed', 'dynamic', 'differencing']).toContain(di.type);
              expect(Number.isSafeInteger(di.virtualSize)).toBe(true);
              expect(di.chain[0].file).toBe(file);
              infoCodes = di.findings.map((f) => f.code);
            } catch (e) {
              assertVhdError(e, 'info');
              infoError = e;
            }
            try {
              const r = await check(file);
              expect(r.ok).toBe(r.errors.length === 0);
              const listed = [...r.errors, ...r.warnings].map((f) => f.code);
              for (const c of listed) expect(CODES.has(c)).toBe(true);
              if (infoCodes) expect([...listed].sort()).toEqual([...infoCodes].sort());
              if (infoError) expect(r.errors.map((f) => f.code)).toContain(infoError.code);
            } catch (e) {
              if (e instanceof Error && e.name === 'AssertionError') throw e;
              assertVhdError(e, 'check');
              expect(UNUSABLE.has(e.code), `check threw ${e.code}: ${e.message}`).toBe(true);
              expect(infoError?.code).toBe(e.code);
            }
          },
        ),
        fcParams(100),
      );
    },
    TEST_TIMEOUT_MS,
  );
});

describe('targeted damage (regressions and extremes)', () => {
  const dyn = () => subjects.find((s) => s.name === 'dynamic-512k-blocks.vhd')!;
  const child = () => subjects.find((s) => s.name === 'chain/child.vhd')!;
  const hdrOf = (b: Uint8Array) => u64(b, b.length - 512 + 16);

  async function withField(s: Subject, at: (b: Uint8Array) => number, value: number, fix = true): Promise<Outcome> {
    const b = s.files.get(s.target)!.slice();
    const o = at(b);
    b[o] = value >>> 24;
    b[o + 1] = (value >>> 16) & 0xff;
    b[o + 2] = (value >>> 8) & 0xff;
    b[o + 3] = value & 0xff;
    if (fix) fixChecksums(b, s);
    const files = new Map(s.files);
    files.set(s.target, b);
    return exercise(files, s.open);
  }

  it.each([0, 0xffffffff, 0x7fffffff, 2_000_000_000])('maxTableEntries %d: refused or read, without a big allocation', async (v) => {
    const out = await withField(dyn(), (b) => hdrOf(b) + 28, v);
    if (v === 0) expect(out.code).toBe(ErrorCodes.BAT_TOO_SMALL);
    else expect(out.code).toBe(ErrorCodes.BAT_TOO_LARGE);
  });

  it.each([0, 511, 3 * MiB, 0x80000000, 0xffffffff])('block size %d is HEADER_BLOCK_SIZE', async (v) => {
    const out = await withField(dyn(), (b) => hdrOf(b) + 32, v);
    expect(out).toEqual({ opened: false, code: ErrorCodes.HEADER_BLOCK_SIZE });
  });

  it('every BAT entry of the child pointing at 0x7FFFFFFF sectors: opens, reads fail with BAT_ENTRY_PAST_EOF', async () => {
    const s = child();
    const b = s.files.get(s.target)!.slice();
    const hdr = hdrOf(b);
    const table = u64(b, hdr + 16);
    const entries = u32(b, hdr + 28);
    for (let i = 0; i < entries; i++) if (u32(b, table + 4 * i) !== 0xffffffff) b.set([0x7f, 0xff, 0xff, 0xff], table + 4 * i);
    const files = new Map(s.files);
    files.set(s.target, b);
    const out = await exercise(files, s.open);
    expect(out).toEqual({ opened: true, code: ErrorCodes.BAT_ENTRY_PAST_EOF });
  });

  it('a child whose locators and name all point at itself is a CHAIN_CYCLE, promptly', async () => {
    const s = child();
    const b = s.files.get(s.target)!.slice();
    const hdr = hdrOf(b);
    // Parent name "child.vhd" (UTF-16BE), no locators.
    b.fill(0, hdr + 64, hdr + 64 + 512 + 192);
    const name = 'child.vhd';
    for (let i = 0; i < name.length; i++) b[hdr + 64 + 2 * i + 1] = name.charCodeAt(i);
    // The parent UUID is the child's own.
    b.set(b.subarray(b.length - 512 + 68, b.length - 512 + 84), hdr + 40);
    fixChecksums(b, s);
    const files = new Map(s.files);
    files.set(s.target, b);
    const t0 = performance.now();
    const out = await exercise(files, s.open);
    expect(out).toEqual({ opened: false, code: ErrorCodes.CHAIN_CYCLE });
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  it('damage that changes no byte changes nothing', async () => {
    for (const s of subjects) {
      const b = s.files.get(s.target)!;
      const files = damaged(s, { kind: 'bytes', subject: subjects.indexOf(s), edits: [{ sel: 0, at: 0, bytes: [b[b.length - 512]] }], fix: false });
      const out = await exercise(files, s.open);
      expect(out).toEqual({ opened: true, sha256: s.sha256 });
      expect(sha256Hex(files.get(s.target)!)).toBe(sha256Hex(b));
    }
  });
});
