/**
 * qemu-img as an external oracle for fixed and dynamic disks (never for differencing chains: qemu
 * ignores the parent, so chains are flattened by vhdkit first and checked against the expected
 * content of the fixtures and the corpus).
 *
 * - images vhdkit creates open in qemu-img with the same virtual size (this rests on vhdkit's
 *   geometry convention: the spec's CHS when it describes the size exactly, else the maximum
 *   geometry, which makes qemu use the footer's current size);
 * - vhdkit's dynamic (2M, 512K, 4K blocks) and fixed outputs read back through
 *   `qemu-img convert -f vpc -O raw` byte-identical to vhdkit's own `convert --to raw` and to the
 *   expected SHA-256;
 * - qemu-made dynamic and fixed VHDs (with and without force_size) read in vhdkit as the raw;
 * - `qemu-img compare` finds vhdkit's dynamic and fixed outputs of one source identical.
 *
 * vhdkit runs as the real CLI (dist/cli/main.js, built by `npm run build`).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { check } from '../src/ops/check.js';
import { openDisk } from '../src/ops/open.js';
import { corpusDir, corpusExpected, corpusPresent, fixturesDir, hasQemu, readCorpusFile, repoRoot, tmpDir, type FixturesExpected, runProcess, type ProcessRun } from './helpers.js';

if (!hasQemu) console.warn('interop.test.ts: SKIPPED — qemu-img is not on PATH (install qemu-utils to run the qemu oracle tests)');
if (hasQemu && !corpusPresent) console.warn(`interop.test.ts: corpus part SKIPPED — the conformance corpus is not at ${corpusDir}`);

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;

// -------------------------------------------------------------------------------------------------
// Local helpers



const run = (cmd: string, args: string[], cwd: string, timeoutMs = 60_000) => runProcess(cmd, args, { cwd, timeoutMs });

async function ok(cmd: string, args: string[], cwd: string): Promise<ProcessRun> {
  const r = await run(cmd, args, cwd);
  expect(r.code, `${path.basename(cmd)} ${args.join(' ')}\nexit ${r.code}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`).toBe(0);
  return r;
}

const vhdkit = (args: string[], cwd: string) => ok(process.execPath, [CLI, ...args], cwd);
const qemuImg = (args: string[], cwd: string) => ok('qemu-img', args, cwd);

function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    fs.createReadStream(file)
      .on('data', (b) => h.update(b))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

async function qemuVirtualSize(file: string, cwd: string): Promise<number> {
  const r = await qemuImg(['info', '-f', 'vpc', '--output', 'json', file], cwd);
  return JSON.parse(r.stdout)['virtual-size'];
}

async function qemuInfo(file: string, cwd: string): Promise<Record<string, any>> {
  return JSON.parse((await qemuImg(['info', '-f', 'vpc', '--output', 'json', file], cwd)).stdout);
}

/** `qemu-img convert -f vpc -O raw` of a VHD; returns the raw's path. */
async function qemuToRaw(vhd: string, cwd: string): Promise<string> {
  const out = `${vhd}.qemu.raw`;
  await qemuImg(['convert', '-f', 'vpc', '-O', 'raw', vhd, out], cwd);
  return out;
}

/** vhdkit's own output must pass its strict check (in process: spawning node costs ~0.5 s here). */
async function expectStrictOk(file: string): Promise<void> {
  const r = await check(file, { strict: true });
  expect(r.errors, file).toEqual([]);
  expect(r.ok).toBe(true);
}

let fx = '';
let expected: FixturesExpected;
const F = (rel: string) => path.join(fx, rel);

beforeAll(async () => {
  if (!hasQemu) return;
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does it in pretest)`);
  ({ dir: fx, expected } = await fixturesDir());
});

// -------------------------------------------------------------------------------------------------

describe.skipIf(!hasQemu)('qemu-img opens what vhdkit creates, with the same virtual size', { timeout: 60_000, concurrent: true }, () => {
  // Sizes whose spec CHS is exact (10479616 = 301×4×17×512) and sizes it cannot describe (rounded
  // down by CHS: vhdkit must then write the maximum geometry for qemu to use the current size).
  const cases: Array<[size: string, bytes: number, types: Array<'dynamic' | 'fixed'>]> = [
    ['512', 512, ['fixed']],
    ['1536', 1536, ['dynamic', 'fixed']],
    ['3146240', 3 * MiB + 512, ['dynamic', 'fixed']],
    ['10M', 10 * MiB, ['dynamic', 'fixed']],
    ['10479616', 10479616, ['dynamic', 'fixed']],
    ['10486272', 10 * MiB + 512, ['dynamic', 'fixed']],
    ['64M', 64 * MiB, ['dynamic']],
    ['200G', 200 * 1024 * MiB, ['dynamic']], // past the largest CHS geometry (~127 GiB)
  ];
  for (const [size, bytes, types] of cases) {
    for (const type of types) {
      it(`create --size ${size} --type ${type}`, async () => {
        const d = tmpDir('vhdkit-interop-');
        const r = await vhdkit(['create', 'disk.vhd', '--size', size, '--type', type, '--json'], d);
        const created = JSON.parse(r.stdout);
        expect(created.virtualSize).toBe(bytes);
        expect(await qemuVirtualSize('disk.vhd', d)).toBe(created.virtualSize);
        await expectStrictOk(path.join(d, 'disk.vhd'));
        if (bytes <= 16 * MiB) {
          // an empty disk reads back as zeros of exactly the virtual size
          const raw = await qemuToRaw('disk.vhd', d);
          const b = fs.readFileSync(path.join(d, raw));
          expect(b.length).toBe(bytes);
          expect(b.every((x) => x === 0)).toBe(true);
        }
      });
    }
  }

  for (const [bs, bytes] of [['512K', 512 * 1024], ['4K', 4096]] as const) {
    it(`create --block-size ${bs}: qemu sees the cluster size and virtual size`, async () => {
      const d = tmpDir('vhdkit-interop-');
      await vhdkit(['create', 'disk.vhd', '--size', '3146240', '--block-size', bs], d);
      const q = await qemuInfo('disk.vhd', d);
      expect(q['virtual-size']).toBe(3 * MiB + 512);
      expect(q['cluster-size']).toBe(bytes);
    });
  }
});

// -------------------------------------------------------------------------------------------------

interface Target {
  to: 'dynamic' | 'fixed';
  blockSize?: string;
}
const ALL_TARGETS: Target[] = [{ to: 'dynamic' }, { to: 'dynamic', blockSize: '512K' }, { to: 'dynamic', blockSize: '4K' }, { to: 'fixed' }];

/**
 * Converts `src` with vhdkit to raw (the reference) and to each target; reads each target back with
 * qemu-img; all must equal `sha256` (and the virtual size `size`). Every mismatch is collected
 * first, so one wrong output does not hide the state of the others.
 */
async function roundTrip(src: string, sha256: string, size: number, targets: Target[]): Promise<void> {
  const d = tmpDir('vhdkit-interop-');
  const wrong: string[] = [];
  const same = (what: string, got: unknown, want: unknown) => {
    if (got !== want) wrong.push(`${what}: got ${String(got)}, expected ${String(want)}`);
  };
  await vhdkit(['convert', src, 'ref.raw', '--to', 'raw'], d);
  const ref = path.join(d, 'ref.raw');
  same('vhdkit convert --to raw: size', fs.statSync(ref).size, size);
  same('vhdkit convert --to raw: sha256', await sha256File(ref), sha256);
  await Promise.all(
    targets.map(async (t, k) => {
      const label = `--to ${t.to}${t.blockSize ? ` --block-size ${t.blockSize}` : ''}`;
      const out = `out${k}-${t.to}${t.blockSize ? `-${t.blockSize}` : ''}.vhd`;
      await vhdkit(['convert', src, out, '--to', t.to, ...(t.blockSize ? ['--block-size', t.blockSize] : [])], d);
      await expectStrictOk(path.join(d, out));
      const q = await qemuInfo(out, d);
      same(`${label}: qemu virtual-size`, q['virtual-size'], size);
      const bs = t.blockSize ? { '2M': 2 * MiB, '512K': 512 * 1024, '4K': 4096 }[t.blockSize] : undefined;
      if (t.to === 'dynamic' && bs) same(`${label}: qemu cluster-size`, q['cluster-size'], bs);
      if (t.to === 'fixed') same(`${label}: file size`, fs.statSync(path.join(d, out)).size, size + 512);
      const raw = path.join(d, await qemuToRaw(out, d));
      same(`${label} read by qemu-img: size`, fs.statSync(raw).size, size);
      same(`${label} read by qemu-img: sha256`, await sha256File(raw), sha256);
    }),
  );
  expect(wrong, `${path.basename(src)}:\n${wrong.join('\n')}`).toEqual([]);
}

describe.skipIf(!hasQemu)('vhdkit convert → qemu-img reads the same bytes (fixtures)', { timeout: 60_000, concurrent: true }, () => {
  it('dynamic-2m-blocks.raw → dynamic 2M (default), 512K, 4K and fixed', async () => {
    await roundTrip(F('dynamic-2m-blocks.raw'), expected.raw['dynamic-2m-blocks.raw'], 9 * MiB, ALL_TARGETS);
  });

  it('fixed-1m.raw → dynamic and fixed', async () => {
    await roundTrip(F('fixed-1m.raw'), expected.raw['fixed-1m.raw'], MiB, [{ to: 'dynamic' }, { to: 'fixed' }]);
  });

  for (const [name, targets] of [
    ['dynamic-512k-blocks.vhd', [{ to: 'dynamic' }, { to: 'dynamic', blockSize: '4K' }, { to: 'fixed' }]],
    ['dynamic-4k-blocks.vhd', [{ to: 'dynamic' }, { to: 'dynamic', blockSize: '2M' }, { to: 'fixed' }]],
    ['footer511.vhd', [{ to: 'dynamic' }, { to: 'fixed' }]],
    ['chain/grandchild.vhd', [{ to: 'dynamic' }, { to: 'dynamic', blockSize: '512K' }, { to: 'fixed' }]],
    ['chain-sectors/child.vhd', [{ to: 'dynamic' }, { to: 'fixed' }]],
  ] as Array<[string, Target[]]>) {
    it(`${name} → ${targets.map((t) => t.to + (t.blockSize ? ` ${t.blockSize}` : '')).join(', ')}`, async () => {
      const e = expected.images[name];
      await roundTrip(F(name), e.sha256, e.virtualSize, targets);
    });
  }
});

// -------------------------------------------------------------------------------------------------

/** Corpus samples written to a temp dir (with their chain), without unpacking the whole corpus. */
function corpusFiles(rels: string[]): string {
  const d = tmpDir('vhdkit-interop-corpus-');
  for (const rel of rels) {
    const target = path.join(d, rel);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, readCorpusFile(rel));
  }
  return d;
}

describe.skipIf(!hasQemu || !corpusPresent)('vhdkit convert → qemu-img reads the same bytes (corpus)', { timeout: 60_000, concurrent: true }, () => {
  const cases: Array<[rel: string, extra: string[], targets: Target[]]> = [
    ['windows/dissect-win10-dynamic.vhd', [], [{ to: 'dynamic' }, { to: 'fixed' }]],
    ['windows/dissect-win10-fixed.vhd', [], [{ to: 'dynamic', blockSize: '512K' }]],
    // qemu's own image: size = CHS size (10514432, not a multiple of 64 KiB), data in its last sector
    ['qemu-img/qemu-dynamic.vhd', [], [{ to: 'dynamic' }, { to: 'fixed' }]],
    ['qemu-img/qemu-forcesize.vhd', [], [{ to: 'dynamic', blockSize: '4K' }, { to: 'fixed' }]],
    ['dfvfs/ext2.vhd', [], [{ to: 'dynamic' }]],
    // chains flattened: the content is the chain's, qemu only sees the flat output
    ['blktap/grandchild.vhd', ['blktap/child.vhd', 'blktap/base.vhd'], [{ to: 'dynamic' }, { to: 'fixed' }]],
    ['blktap/c5.vhd', ['blktap/p5.vhd'], [{ to: 'dynamic', blockSize: '512K' }, { to: 'fixed' }]],
  ];
  for (const [rel, chain, targets] of cases) {
    it(`${rel} → ${targets.map((t) => t.to + (t.blockSize ? ` ${t.blockSize}` : '')).join(', ')}`, async () => {
      const sample = corpusExpected().samples[rel];
      const d = corpusFiles([rel, ...chain]);
      await roundTrip(path.join(d, rel), sample.content.sha256, sample.content.size, targets);
    });
  }
});

// -------------------------------------------------------------------------------------------------

describe.skipIf(!hasQemu)('qemu-img convert -O vpc → vhdkit reads the raw', { timeout: 60_000, concurrent: true }, () => {
  /** 3 MiB + 512 bytes (no CHS geometry fits it exactly), data at the start, the middle and in the last sector. */
  function makeRaw(file: string): Buffer {
    const size = 3 * MiB + 512;
    const b = Buffer.alloc(size);
    let x = 0x1234567;
    const fill = (at: number, n: number) => {
      for (let i = 0; i < n; i++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        b[at + i] = (x >>> 24) | 1;
      }
    };
    fill(0, 4096);
    fill(MiB + 1000, 70_000);
    fill(size - 512, 512);
    fs.writeFileSync(file, b);
    return b;
  }

  for (const subformat of ['dynamic', 'fixed'] as const) {
    for (const forceSize of [false, true]) {
      it(`subformat=${subformat}${forceSize ? ',force_size=on' : ''}`, async () => {
        const d = tmpDir('vhdkit-interop-');
        const raw = makeRaw(path.join(d, 'src.raw'));
        await qemuImg(['convert', '-f', 'raw', '-O', 'vpc', '-o', `subformat=${subformat}${forceSize ? ',force_size=on' : ''}`, 'src.raw', 'q.vhd'], d);
        const qSize = await qemuVirtualSize('q.vhd', d);
        if (forceSize) expect(qSize).toBe(raw.length);
        else expect(qSize).toBeGreaterThanOrEqual(raw.length); // rounded up to its CHS geometry

        const info = JSON.parse((await vhdkit(['info', 'q.vhd', '--json'], d)).stdout);
        expect(info.type).toBe(subformat);
        expect(info.virtualSize).toBe(qSize);
        const chk = await run(process.execPath, [CLI, 'check', 'q.vhd', '--json'], d);
        expect(chk.code, chk.stdout + chk.stderr).toBe(0);

        // vhdkit's reader (in process), then its CLI conversion to raw
        const img = await openDisk(path.join(d, 'q.vhd'));
        const read = Buffer.alloc(qSize);
        try {
          await img.read(read, 0);
        } finally {
          await img.close();
        }
        expect(read.subarray(0, raw.length).equals(raw), 'vhdkit reads the raw as the common prefix').toBe(true);
        expect(read.subarray(raw.length).every((v) => v === 0), 'vhdkit reads the CHS padding as zeros').toBe(true);

        await vhdkit(['convert', 'q.vhd', 'back.raw', '--to', 'raw'], d);
        const back = fs.readFileSync(path.join(d, 'back.raw'));
        expect(back.length).toBe(qSize);
        expect(back.subarray(0, raw.length).equals(raw), 'vhdkit convert --to raw: the common prefix equals the raw').toBe(true);
        expect(back.subarray(raw.length).every((v) => v === 0), 'the CHS padding reads as zeros').toBe(true);
      });
    }
  }
});

// -------------------------------------------------------------------------------------------------

describe.skipIf(!hasQemu)('qemu-img compare of vhdkit outputs', { timeout: 60_000, concurrent: true }, () => {
  for (const [name, src] of [
    ['dynamic-2m-blocks.raw', () => F('dynamic-2m-blocks.raw')],
    ['chain/grandchild.vhd', () => F('chain/grandchild.vhd')],
  ] as const) {
    it(`dynamic and fixed conversions of ${name} are identical`, async () => {
      const d = tmpDir('vhdkit-interop-');
      await Promise.all([vhdkit(['convert', src(), 'd.vhd', '--to', 'dynamic'], d), vhdkit(['convert', src(), 'f.vhd', '--to', 'fixed'], d)]);
      const r = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'vpc', 'd.vhd', 'f.vhd'], d);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain('Images are identical');
    });
  }

  it('and compare does tell different content apart (control)', async () => {
    const d = tmpDir('vhdkit-interop-');
    await Promise.all([
      vhdkit(['convert', F('chain/grandchild.vhd'), 'gc.vhd', '--to', 'dynamic'], d),
      vhdkit(['convert', F('chain/child.vhd'), 'c.vhd', '--to', 'fixed'], d),
    ]);
    const r = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'vpc', 'gc.vhd', 'c.vhd'], d);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stdout).toContain('Content mismatch');
  });
});
