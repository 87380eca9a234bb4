/**
 * The project's own fixtures (fixtures/make-fixtures.mjs): good images must read to the SHA-256 of
 * the generator's model, chains must resolve (confined or not), and every corrupt image must produce
 * the code its name begins with. The reading suite runs over both I/O backends (file and memory).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ErrorCodes, VhdError, type Finding } from '../src/errors.js';
import { VhdImage, type OpenOptions } from '../src/disk/image.js';
import { MemoryResolver, MemorySink } from '../src/io/memory.js';
import { openDisk, type OpenDiskOptions } from '../src/ops/open.js';
import { check } from '../src/ops/check.js';
import { fixturesDir, forceGc, hasQemu, sha256Hex, sha256OfDisk, tmpDir, type FixturesExpected } from './helpers.js';

// The generator runs at collection time so that the test lists below can name every fixture.
const { dir, expected } = await fixturesDir();
const E: FixturesExpected = expected;

const goodImages = Object.keys(E.images);
const chainImages = goodImages.filter((n) => E.images[n].type === 'differencing');
/** Codes that make the input unusable: check() throws for them instead of reporting. */
const UNUSABLE = new Set<string>([ErrorCodes.NOT_VHD, ErrorCodes.FILE_TOO_SMALL]);

/** Every file of the fixture tree, by relative slash path (the memory backend's "disk"). */
function loadTree(root: string): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.name.endsWith('.vhd')) out.set(r, new Uint8Array(fs.readFileSync(path.join(root, r))));
    }
  };
  walk('');
  return out;
}
const tree = loadTree(dir);

interface Backend {
  name: 'file' | 'memory';
  open(rel: string, options?: Omit<OpenOptions, 'resolver'>): Promise<VhdImage>;
  /** The fixture-relative name of an opened disk. */
  rel(img: VhdImage): string;
}

const backends: Backend[] = [
  {
    name: 'file',
    open: (rel, options = {}) => openDisk(path.join(dir, rel), options),
    rel: (img) => path.relative(dir, img.id).split(path.sep).join('/'),
  },
  {
    name: 'memory',
    open: (rel, options = {}) => {
      const bytes = tree.get(rel);
      if (!bytes) throw new Error(`no fixture ${rel}`);
      return VhdImage.open(new MemorySink(rel, bytes), { ...options, resolver: new MemoryResolver(tree) });
    },
    rel: (img) => img.id,
  },
];

async function rejection(p: Promise<unknown>): Promise<VhdError> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof VhdError)) throw e;
    return e;
  }
  throw new Error('expected a VhdError, but the promise resolved');
}

/** Fails (instead of hanging the run) when `p` does not settle within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

async function readAll(img: VhdImage): Promise<Uint8Array> {
  const out = new Uint8Array(img.virtualSize);
  const step = 1 << 20;
  for (let pos = 0; pos < img.virtualSize; pos += step) await img.read(out.subarray(pos, Math.min(pos + step, img.virtualSize)), pos);
  return out;
}

const codesOf = (findings: Finding[]) => findings.map((f) => f.code);

it('the generator made the documented set', () => {
  for (const n of ['fixed-1m.vhd', 'footer511.vhd', 'dynamic-2m-blocks.vhd', 'dynamic-4k-blocks.vhd', 'dynamic-512k-blocks.vhd']) {
    expect(goodImages).toContain(n);
  }
  expect(chainImages).toEqual(
    expect.arrayContaining(['chain/child.vhd', 'chain/grandchild.vhd', 'chain-nolocator/child.vhd', 'chain-sectors/child.vhd']),
  );
  expect(E.corrupt.length).toBeGreaterThanOrEqual(20);
  for (const c of E.corrupt) expect(Object.values(ErrorCodes)).toContain(c.code);
});

describe.each(backends)('$name backend', (backend) => {
  const opened: VhdImage[] = [];
  const open = async (rel: string, options?: Omit<OpenOptions, 'resolver'>) => {
    const img = await backend.open(rel, options);
    opened.push(img);
    return img;
  };
  afterAll(async () => {
    for (const img of opened.splice(0)) await img.close();
  });

  it.each(goodImages)('%s reads to its sha256', async (rel) => {
    const want = E.images[rel];
    const img = await open(rel);
    expect(img.type).toBe(want.type);
    expect(img.virtualSize).toBe(want.virtualSize);
    expect(img.source.size).toBe(want.fileSize);
    if (want.blockSize !== null) expect(img.blockSize).toBe(want.blockSize);
    if (want.allocatedBlocks !== null) expect(img.allocatedBlocks).toBe(want.allocatedBlocks);
    if (want.uniqueId) expect(img.uuid).toBe(want.uniqueId);
    if (want.madeBy !== 'qemu-img') expect(img.footer.timestamp).toBe(want.timestamp);
    expect(img.chain.map((d) => backend.rel(d))).toEqual(want.chain ?? [rel]);
    // Good images carry no error, whatever the backend.
    expect(img.allFindings.filter((f) => f.severity === 'error')).toEqual([]);

    const content = await readAll(img);
    expect(sha256Hex(content)).toBe(want.sha256);
    expect(await sha256OfDisk(img)).toBe(want.sha256);
    if (want.parentIgnoredSha256) expect(want.sha256).not.toBe(want.parentIgnoredSha256);

    // Outside dataRanges() every byte is zero.
    let prev = 0;
    for (const [a, b] of [...img.dataRanges(), [img.virtualSize, img.virtualSize] as [number, number]]) {
      expect(a).toBeGreaterThanOrEqual(prev);
      expect(content.subarray(prev, a).every((x) => x === 0), `zeros in [${prev}, ${a})`).toBe(true);
      prev = b;
    }
  });

  it('footer511.vhd carries a FOOTER_511 warning', async () => {
    const img = await open('footer511.vhd');
    const f = img.findings.find((x) => x.code === ErrorCodes.FOOTER_511);
    expect(f?.severity).toBe('warning');
  });

  it('chain-nolocator/child.vhd resolves by the header name with a LOCATOR_NONE warning', async () => {
    const img = await open('chain-nolocator/child.vhd');
    expect(img.locators).toEqual([]);
    expect(img.parentName).toBe('parent.vhd');
    expect(img.findings.find((f) => f.code === ErrorCodes.LOCATOR_NONE)?.severity).toBe('warning');
    expect(img.parent && backend.rel(img.parent)).toBe('chain-nolocator/parent.vhd');
  });

  it('chain-sectors/child.vhd: locator space given in sectors (1) means 512 bytes', async () => {
    const img = await open('chain-sectors/child.vhd');
    expect(img.locators.map((l) => l.platformCode)).toEqual(['W2ku', 'W2ru']);
    for (const l of img.locators) {
      expect(img.header!.parentLocators[l.index].platformDataSpace).toBe(1);
      expect(l.dataSpaceBytes).toBe(512);
    }
    expect(img.locators.map((l) => l.path)).toEqual(['C:\\images\\parent.vhd', '.\\parent.vhd']);
    expect(codesOf(img.findings)).not.toContain(ErrorCodes.LOCATOR_INVALID);
    expect(img.parent && backend.rel(img.parent)).toBe('chain-sectors/parent.vhd');
  });

  it('chain/child.vhd: locators decode; the W2ku drive path is skipped, the relative ones resolve', async () => {
    const img = await open('chain/child.vhd');
    expect(Object.fromEntries(img.locators.map((l) => [l.platformCode, l.path]))).toEqual({
      W2ku: 'C:\\images\\base.vhd',
      W2ru: '.\\base.vhd',
      MacX: './base.vhd',
    });
    expect(img.parentUuid).toBe(E.images['chain/base.vhd'].uniqueId);
    expect(img.parent!.uuid).toBe(E.images['chain/base.vhd'].uniqueId);
  });

  it('chain/child.vhd: ownSectorRanges are sector exact, inside ownBlockRanges', async () => {
    const img = await open('chain/child.vhd');
    const sectors = await img.ownSectorRanges();
    const blocks = img.ownBlockRanges();
    const spb = 4096;
    // The child's writes (make-fixtures.mjs): sectors 2*spb+7 (1), 2*spb+1000 (21), 5 (1), 100 (13), 2050 (3), 3000 (1).
    const writes: Array<[number, number]> = [
      [5, 1],
      [100, 13],
      [2050, 3],
      [3000, 1],
      [2 * spb + 7, 1],
      [2 * spb + 1000, 21],
    ];
    expect(sectors).toEqual(writes.map(([s, n]) => [s * 512, (s + n) * 512]));
    expect(blocks).toEqual([[0, 2 << 20], [4 << 20, 6 << 20]]);
  });

  it('grandchild with maxDepth 2 is CHAIN_TOO_DEEP; with 3 it opens', async () => {
    const e = await rejection(backend.open('chain/grandchild.vhd', { maxDepth: 2 }));
    expect(e.code).toBe(ErrorCodes.CHAIN_TOO_DEEP);
    const img = await open('chain/grandchild.vhd', { maxDepth: 3 });
    expect(img.chain).toHaveLength(3);
  });

  it('a child opened alone (resolveParents:false) reads its own sectors and refuses the others', async () => {
    const img = await open('chain/child.vhd', { resolveParents: false });
    expect(img.parent).toBeUndefined();
    // Sectors 100..112 are the child's own (random data, never a zero byte, never the 0xEE filler).
    const own = new Uint8Array(13 * 512);
    await img.read(own, 100 * 512);
    expect(own.every((b) => b !== 0)).toBe(true);
    expect(own.every((b) => b === 0xee)).toBe(false);
    const e = await rejection(img.read(new Uint8Array(512), 6 * 512));
    expect(e.code).toBe(ErrorCodes.PARENT_MISSING);
  });

  it.each(E.corrupt)('corrupt $file produces $code', async ({ code, file }) => {
    let img: VhdImage | undefined;
    try {
      img = await within(backend.open(file), 10_000, `opening ${file}`);
    } catch (e) {
      expect(e).toBeInstanceOf(VhdError);
      expect((e as VhdError).code).toBe(code);
      expect((e as VhdError).message).toContain(path.basename(file).slice(0, 12));
      return;
    }
    opened.push(img);
    expect(codesOf(img.allFindings)).toContain(code);
  });

  it.each(E.corrupt)('strict reading of $file fails with $code', async ({ code, file }) => {
    const e = await rejection(within(backend.open(file, { strict: true }), 10_000, `opening ${file}`));
    expect(e.code).toBe(code);
  });

  it('LOCATOR_PAST_EOF--w2ru.vhd: a lenient reader skips the bad locator and reads the chain', async () => {
    const c = E.corrupt.find((x) => x.code === ErrorCodes.LOCATOR_PAST_EOF)!;
    const img = await open(c.file);
    expect(img.parent && backend.rel(img.parent)).toBe('corrupt/locparent.vhd');
    expect(await sha256OfDisk(img)).toBe(c.chainSha256);
  });

  it('CHAIN_CYCLE terminates, from either half of the cycle', async () => {
    for (const f of ['corrupt/CHAIN_CYCLE--a.vhd', 'corrupt/cycle-b.vhd']) {
      const e = await rejection(within(backend.open(f), 5_000, `opening ${f}`));
      expect(e.code).toBe(ErrorCodes.CHAIN_CYCLE);
    }
    // Tolerated: the disk opens with what resolved, and the break is recorded.
    const img = await within(open('corrupt/CHAIN_CYCLE--a.vhd', { tolerateBrokenChain: true }), 5_000, 'tolerant open');
    expect(codesOf(img.allFindings)).toContain(ErrorCodes.CHAIN_CYCLE);
    expect(img.chain.length).toBeLessThanOrEqual(2);
  });

  it('PARENT_MISSING tolerated: the child opens alone, reads its own sectors, refuses its parent’s', async () => {
    const img = await open('corrupt/PARENT_MISSING--child.vhd', { tolerateBrokenChain: true });
    expect(img.parent).toBeUndefined();
    const f = img.findings.find((x) => x.code === ErrorCodes.PARENT_MISSING);
    expect(f?.severity).toBe('error');
    const own = new Uint8Array(512);
    await img.read(own, 3 * 512); // the child wrote sector 3 (random data, never a zero byte)
    expect(own.every((b) => b !== 0)).toBe(true);
    expect(own.every((b) => b === 0xee)).toBe(false);
    expect((await rejection(img.read(new Uint8Array(512), 0))).code).toBe(ErrorCodes.PARENT_MISSING);
  });

  it.each(E.supportFiles.filter((s) => s.sha256))('support file $file reads to its sha256', async ({ file, sha256 }) => {
    const img = await open(file);
    expect(img.type).toBe('dynamic');
    expect(await sha256OfDisk(img)).toBe(sha256);
  });
});

if (!hasQemu) console.warn('fixtures.test.ts: qemu-img not found; the qemu-made fixtures and the qemu oracle are SKIPPED');

describe.skipIf(!hasQemu)('qemu-img as an oracle for fixed and dynamic fixtures', () => {
  const plain = goodImages.filter((n) => E.images[n].type !== 'differencing');

  it('the qemu-made fixtures exist', () => {
    expect(E.qemu).toBe(true);
    expect(goodImages).toEqual(expect.arrayContaining(['qemu/dynamic.vhd', 'qemu/fixed.vhd']));
  });

  it.each(plain)('%s: qemu-img convert gives the content vhdkit reads', async (rel) => {
    const out = path.join(tmpDir('vhdkit-qemu-'), 'out.raw');
    const r = spawnSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path.join(dir, rel), out], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const raw = fs.readFileSync(out);
    const img = await openDisk(path.join(dir, rel));
    try {
      expect(raw.length).toBe(img.virtualSize);
      expect(sha256Hex(raw)).toBe(await sha256OfDisk(img));
      expect(sha256Hex(raw)).toBe(E.images[rel].sha256);
    } finally {
      await img.close();
    }
  });
});

describe('files only', () => {
  const opened: VhdImage[] = [];
  const open = async (file: string, options?: OpenDiskOptions) => {
    const img = await openDisk(file, options);
    opened.push(img);
    return img;
  };
  afterAll(async () => {
    for (const img of opened.splice(0)) await img.close();
  });

  describe('confined parent resolution (allowedDirs)', () => {
    it.each(chainImages)('%s resolves when confined to its own folder', async (rel) => {
      const folder = path.join(dir, path.dirname(rel));
      const img = await open(path.join(dir, rel), { allowedDirs: [folder] });
      expect(img.chain.map((d) => path.relative(dir, d.id).split(path.sep).join('/'))).toEqual(E.images[rel].chain);
      expect(await sha256OfDisk(img)).toBe(E.images[rel].sha256);
    });

    it.each(chainImages)('%s is refused with PARENT_NOT_ALLOWED when confined elsewhere', async (rel) => {
      const elsewhere = tmpDir('vhdkit-allowed-');
      const e = await rejection(openDisk(path.join(dir, rel), { allowedDirs: [elsewhere] }));
      expect(e.code).toBe(ErrorCodes.PARENT_NOT_ALLOWED);
      expect(e.message).toContain(path.basename(E.images[rel].chain![1]));
    });

    it('a symlink from the allowed folder to a parent outside it is refused', async () => {
      const confined = tmpDir('vhdkit-confined-');
      fs.copyFileSync(path.join(dir, 'chain/child.vhd'), path.join(confined, 'child.vhd'));
      fs.symlinkSync(path.join(dir, 'chain/base.vhd'), path.join(confined, 'base.vhd'));
      const e = await rejection(openDisk(path.join(confined, 'child.vhd'), { allowedDirs: [confined] }));
      expect(e.code).toBe(ErrorCodes.PARENT_NOT_ALLOWED);
      // Unconfined, the same layout opens through the link.
      const img = await open(path.join(confined, 'child.vhd'));
      expect(await sha256OfDisk(img)).toBe(E.images['chain/child.vhd'].sha256);
    });
  });

  it.each(chainImages)('%s: parentIgnoredSha256 differs from the content read', async (rel) => {
    const want = E.images[rel];
    const img = await open(path.join(dir, rel));
    const sha = await sha256OfDisk(img);
    expect(sha).toBe(want.sha256);
    expect(sha).not.toBe(want.parentIgnoredSha256);
  });

  it('raw companions hold the same content as their images', async () => {
    expect(E.raw['fixed-1m.raw']).toBe(E.images['fixed-1m.vhd'].sha256);
    expect(E.raw['dynamic-2m-blocks.raw']).toBe(E.images['dynamic-2m-blocks.vhd'].sha256);
    const raw = fs.readFileSync(path.join(dir, 'dynamic-2m-blocks.raw'));
    const img = await open(path.join(dir, 'dynamic-2m-blocks.vhd'));
    const buf = new Uint8Array(raw.length);
    await img.read(buf, 0);
    expect(Buffer.compare(Buffer.from(buf), raw)).toBe(0);
  });

  describe('check() of every corrupt fixture', () => {
    it.each(E.corrupt)('$file: $code', async ({ code, file }) => {
      const p = within(check(path.join(dir, file)), 10_000, `check ${file}`);
      if (UNUSABLE.has(code)) {
        const e = await rejection(p);
        expect(e.code).toBe(code);
        return;
      }
      const r = await p;
      const listed = [...r.errors, ...r.warnings].map((f) => f.code);
      expect(listed).toContain(code);
      expect(r.ok).toBe(r.errors.length === 0);
      // Whatever its severity, a defect fails a strict check.
      const strict = await check(path.join(dir, file), { strict: true });
      expect(strict.ok).toBe(false);
      expect(strict.errors.map((f) => f.code)).toContain(code);
      expect(strict.warnings).toEqual([]);
    });

    it.each(goodImages)('%s is ok', async (rel) => {
      const r = await check(path.join(dir, rel));
      expect(r.errors).toEqual([]);
      expect(r.ok).toBe(true);
      expect(r.chain).toHaveLength(E.images[rel].chain?.length ?? 1);
    });
  });

  it('BAT_TOO_LARGE--2-billion fails without allocating or reading the table it claims (bytes read counted, not time)', async () => {
    const file = path.join(dir, 'corrupt/BAT_TOO_LARGE--2-billion.vhd');
    forceGc();
    const before = process.memoryUsage().arrayBuffers;
    const e = await rejection(openDisk(file));
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(e.code).toBe(ErrorCodes.BAT_TOO_LARGE);
    expect(e.message).toContain('2000000000');
    expect(grown).toBeLessThan(64 * 1024 * 1024);
    // The same file through a source that counts what is read: the head and the tail, nothing more.
    let read = 0;
    const source = new MemorySink('counted.vhd', fs.readFileSync(file));
    const plain = source.read.bind(source);
    source.read = (into: Uint8Array, position: number) => ((read += into.length), plain(into, position));
    const again = await rejection(VhdImage.open(source));
    expect(again.code).toBe(ErrorCodes.BAT_TOO_LARGE);
    expect(read).toBeLessThanOrEqual(4096);
  });

  it('PARENT_NOT_ALLOWED and CHAIN_* are tolerated by check() as errors, not thrown', async () => {
    const r = await check(path.join(dir, 'chain/child.vhd'), { allowedDirs: [tmpDir('vhdkit-allowed-')] });
    expect(r.ok).toBe(false);
    expect(r.errors.map((f) => f.code)).toContain(ErrorCodes.PARENT_NOT_ALLOWED);
  });
});
