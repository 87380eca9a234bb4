/**
 * The command line as users and scripts meet it: `node dist/cli/main.js …` run as a real child
 * process (so `npm run build` must have run; `npm test` does it in pretest), in a temp working dir.
 * Covers the contract of DESIGN.md "The command line": `--json` shapes (one document on stdout,
 * nothing else), exit codes (0 ok, 1 problems found, 2 usage or unreadable input), one-line errors
 * without stacks unless `--debug`, create/convert outputs, atomic outputs (nothing left behind on
 * failure), and that every image vhdkit writes passes its own `check --strict`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { FileSink } from '../src/io/file.js';
import { check } from '../src/ops/check.js';
import { openDisk } from '../src/ops/open.js';
import { fixturesDir, repoRoot, sha256OfDisk, tmpDir, type FixturesExpected, runProcess, type ProcessRun } from './helpers.js';

const run = (cmd: string, args: string[], cwd: string, timeoutMs = 60_000) =>
  runProcess(cmd, args, { cwd, timeoutMs, env: { ...process.env, FORCE_COLOR: '0' } });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;

// -------------------------------------------------------------------------------------------------
// Local helpers: run a process, hash files, list leftovers



/** Runs `vhdkit ARGS` in `cwd`. */
function vhdkit(args: string[], cwd: string): Promise<ProcessRun> {
  return run(process.execPath, [CLI, ...args], cwd);
}

/** Parses the whole stdout as one JSON document (fails the test with the text when it is not). */
function json(r: ProcessRun): any {
  try {
    return JSON.parse(r.stdout);
  } catch (e) {
    throw new Error(`stdout is not exactly one JSON document (${(e as Error).message}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

function describeRun(r: ProcessRun): string {
  return `exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}\nstdout: ${r.stdout.slice(0, 2000)}\nstderr: ${r.stderr.slice(0, 2000)}`;
}

function expectExit(r: ProcessRun, code: number): void {
  expect(r.code, describeRun(r)).toBe(code);
}

function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    fs.createReadStream(file)
      .on('data', (b) => h.update(b))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

function sha256Bytes(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/**
 * Every image vhdkit creates or converts must pass its own strict check. `expectStrictOk` runs the
 * CLI (exit code and JSON); for bulk outputs `expectStrictOkInProcess` runs the same `check` in this
 * process, as spawning node costs ~0.5 s here.
 */
async function expectStrictOkInProcess(file: string): Promise<void> {
  const r = await check(file, { strict: true });
  expect(r.errors, file).toEqual([]);
  expect(r.ok).toBe(true);
}

/** SHA-256 of a VHD's (or chain's) virtual content, read in this process. */
async function sha256OfVhd(file: string): Promise<string> {
  const img = await openDisk(file);
  try {
    return await sha256OfDisk(img);
  } finally {
    await img.close();
  }
}

async function expectStrictOk(file: string, cwd: string): Promise<void> {
  const r = await vhdkit(['check', file, '--strict', '--json'], cwd);
  expectExit(r, 0);
  const j = json(r);
  expect(j.ok).toBe(true);
  expect(j.errors).toEqual([]);
}

async function infoJson(file: string, cwd: string): Promise<any> {
  const r = await vhdkit(['info', file, '--json'], cwd);
  expectExit(r, 0);
  return json(r);
}

/** A one-line error on stderr, without a stack trace. */
function expectOneLineError(r: ProcessRun): void {
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^vhdkit: /);
  expect(r.stderr).not.toContain('    at ');
}

let fx = '';
let expected: FixturesExpected;
const F = (rel: string) => path.join(fx, rel);

beforeAll(async () => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does it in pretest)`);
  const newestSrc = Math.max(
    ...fs
      .readdirSync(path.join(repoRoot, 'src'), { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => fs.statSync(path.join(e.parentPath, e.name)).mtimeMs),
  );
  if (fs.statSync(CLI).mtimeMs < newestSrc) console.warn('cli.test.ts: dist/ is older than src/: run "npm run build" to test the current sources');
  ({ dir: fx, expected } = await fixturesDir());
});

// -------------------------------------------------------------------------------------------------

describe.concurrent('info --json', { timeout: 60_000 }, () => {
  it('a fixed disk: type, sizes, uuid, no parent, a chain of one; stdout is one JSON document', async () => {
    const r = await vhdkit(['info', 'fixed-1m.vhd', '--json'], fx);
    expectExit(r, 0);
    expect(r.stderr).toBe('');
    const j = json(r);
    const e = expected.images['fixed-1m.vhd'];
    expect(j.type).toBe('fixed');
    expect(j.virtualSize).toBe(e.virtualSize);
    expect(j.blockSize).toBeNull();
    expect(j.uuid).toBe(e.uniqueId);
    expect(j.fileSize).toBe(e.fileSize);
    expect(j.parent).toBeNull();
    expect(j.chain).toHaveLength(1);
    expect(j.chain[0]).toMatchObject({ type: 'fixed', uuid: e.uniqueId, virtualSize: e.virtualSize });
  });

  it('a dynamic disk: block size, allocated blocks', async () => {
    const j = await infoJson('dynamic-512k-blocks.vhd', fx);
    const e = expected.images['dynamic-512k-blocks.vhd'];
    expect(j.type).toBe('dynamic');
    expect(j.virtualSize).toBe(e.virtualSize);
    expect(j.blockSize).toBe(524288);
    expect(j.allocatedBlocks).toBe(e.allocatedBlocks);
    expect(j.uuid).toBe(e.uniqueId);
    expect(j.parent).toBeNull();
    expect(j.chain).toHaveLength(1);
  });

  it('a child: parent {uuid, path = the real path of the resolved parent}, chain of two', async () => {
    const j = await infoJson('chain/child.vhd', fx);
    expect(j.type).toBe('differencing');
    expect(j.virtualSize).toBe(expected.images['chain/child.vhd'].virtualSize);
    expect(j.uuid).toBe(expected.images['chain/child.vhd'].uniqueId);
    expect(j.parent).not.toBeNull();
    expect(j.parent.uuid).toBe(expected.images['chain/base.vhd'].uniqueId);
    expect(j.parent.path).toBe(fs.realpathSync(F('chain/base.vhd')));
    expect(j.chain.map((c: any) => c.uuid)).toEqual([
      expected.images['chain/child.vhd'].uniqueId,
      expected.images['chain/base.vhd'].uniqueId,
    ]);
  });

  it('a grandchild: the whole chain, this disk first, down to the base', async () => {
    const r = await vhdkit(['info', 'chain/grandchild.vhd', '--json'], fx);
    expectExit(r, 0);
    expect(r.stderr).toBe('');
    const j = json(r);
    expect(j.type).toBe('differencing');
    expect(j.parent.uuid).toBe(expected.images['chain/child.vhd'].uniqueId);
    expect(j.parent.path).toBe(fs.realpathSync(F('chain/child.vhd')));
    expect(j.chain).toHaveLength(3);
    expect(j.chain.map((c: any) => c.type)).toEqual(['differencing', 'differencing', 'dynamic']);
    expect(j.chain.map((c: any) => c.uuid)).toEqual(
      ['chain/grandchild.vhd', 'chain/child.vhd', 'chain/base.vhd'].map((n) => expected.images[n].uniqueId),
    );
  });

  it('a child found only by its header parent name still resolves', async () => {
    const j = await infoJson('chain-nolocator/child.vhd', fx);
    expect(j.parent.path).toBe(fs.realpathSync(F('chain-nolocator/parent.vhd')));
    expect(j.chain).toHaveLength(2);
  });

  it('with --json, findings go into the document, not onto stderr', async () => {
    const r = await vhdkit(['info', 'footer511.vhd', '--json'], fx);
    expectExit(r, 0);
    expect(r.stderr).toBe('');
    const j = json(r);
    expect(j.virtualSize).toBe(MiB);
    expect(j.findings.map((f: any) => f.code)).toContain('FOOTER_511');
  });

  it('a parent reached through a symlink is reported by its real path', async () => {
    const d = fs.realpathSync(tmpDir('vhdkit-cli-'));
    fs.mkdirSync(path.join(d, 'store'));
    fs.mkdirSync(path.join(d, 'work'));
    fs.copyFileSync(F('chain/base.vhd'), path.join(d, 'store', 'real-base.vhd'));
    fs.symlinkSync(path.join(d, 'store', 'real-base.vhd'), path.join(d, 'work', 'base.vhd'));
    expectExit(await vhdkit(['create', 'work/child.vhd', '--parent', 'work/base.vhd'], d), 0);
    const j = await infoJson('work/child.vhd', d);
    expect(j.parent.path).toBe(path.join(d, 'store', 'real-base.vhd'));
  });
});

// -------------------------------------------------------------------------------------------------

describe.concurrent('check', { timeout: 60_000 }, () => {
  for (const good of ['fixed-1m.vhd', 'dynamic-2m-blocks.vhd', 'dynamic-4k-blocks.vhd', 'dynamic-512k-blocks.vhd', 'chain/grandchild.vhd', 'chain-sectors/child.vhd']) {
    it(`${good}: exit 0, ok:true, no errors`, async () => {
      const r = await vhdkit(['check', good, '--json'], fx);
      expectExit(r, 0);
      const j = json(r);
      expect(j).toMatchObject({ ok: true, errors: [] });
      expect(Array.isArray(j.warnings)).toBe(true);
    });
  }

  it('the chain of a grandchild is checked and listed, this disk first', async () => {
    const j = json(await vhdkit(['check', 'chain/grandchild.vhd', '--json'], fx));
    expect(j.chain).toHaveLength(3);
    expect(path.resolve(fx, j.chain[0])).toBe(F('chain/grandchild.vhd'));
    expect(fs.realpathSync(path.resolve(fx, j.chain[1]))).toBe(fs.realpathSync(F('chain/child.vhd')));
    expect(fs.realpathSync(path.resolve(fx, j.chain[2]))).toBe(fs.realpathSync(F('chain/base.vhd')));
  });

  /** Corrupt fixtures whose defect a check must report as an error, with the offset of the structure at fault. */
  const cases: Array<{ file: string; code: string; offset: (size: number) => number[] | null }> = [
    // either footer copy (or its checksum field)
    { file: 'corrupt/FOOTER_CHECKSUM--both-copies.vhd', code: 'FOOTER_CHECKSUM', offset: (s) => [0, 64, s - 512, s - 512 + 64] },
    { file: 'corrupt/BAT_ENTRY_OVERLAP--entries-0-1.vhd', code: 'BAT_ENTRY_OVERLAP', offset: () => null },
    { file: 'corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd', code: 'BAT_ENTRY_PAST_EOF', offset: () => null },
    { file: 'corrupt/BAT_TOO_LARGE--2-billion.vhd', code: 'BAT_TOO_LARGE', offset: () => null },
    { file: 'corrupt/HEADER_CHECKSUM--plus-one.vhd', code: 'HEADER_CHECKSUM', offset: () => null },
    { file: 'corrupt/HEADER_BLOCK_SIZE--3-MiB.vhd', code: 'HEADER_BLOCK_SIZE', offset: () => null },
    { file: 'corrupt/PARENT_MISSING--child.vhd', code: 'PARENT_MISSING', offset: () => null },
    { file: 'corrupt/PARENT_UUID_MISMATCH--child.vhd', code: 'PARENT_UUID_MISMATCH', offset: () => null },
  ];
  for (const c of cases) {
    it(`${path.basename(c.file)}: exit 1, errors[] has ${c.code} with a message and an offset in the file`, async () => {
      const r = await vhdkit(['check', c.file, '--json'], fx);
      expectExit(r, 1);
      const j = json(r);
      expect(j.ok).toBe(false);
      const hit = j.errors.find((e: any) => e.code === c.code);
      expect(hit, JSON.stringify(j.errors)).toBeDefined();
      expect(typeof hit.message).toBe('string');
      expect(hit.message.length).toBeGreaterThan(10);
      const size = fs.statSync(F(c.file)).size;
      expect(Number.isSafeInteger(hit.offset), `offset of ${JSON.stringify(hit)}`).toBe(true);
      expect(hit.offset).toBeGreaterThanOrEqual(0);
      expect(hit.offset).toBeLessThan(size);
      const allowed = c.offset(size);
      if (allowed) expect(allowed).toContain(hit.offset);
      for (const e of j.errors) expect(Object.keys(e)).toEqual(expect.arrayContaining(['code', 'message']));
    });
  }

  it('every corrupt fixture that opens is reported with its code and exit 1 (human output too)', async () => {
    const usable = expected.corrupt.filter((c) => c.code !== 'NOT_VHD' && c.code !== 'FILE_TOO_SMALL');
    const results = await Promise.all(usable.map((c) => vhdkit(['check', c.file, '--json'], fx)));
    usable.forEach((c, i) => {
      expect(results[i].code, `${c.file}: ${describeRun(results[i])}`).toBe(1);
      const j = json(results[i]);
      expect(j.ok).toBe(false);
      expect([...j.errors, ...j.warnings].map((f: any) => f.code), c.file).toContain(c.code);
    });
    const human = await vhdkit(['check', 'corrupt/BAT_ENTRY_OVERLAP--entries-0-1.vhd'], fx);
    expectExit(human, 1);
    expect(human.stdout).toContain('[BAT_ENTRY_OVERLAP]');
  });

  for (const [file, code] of [
    ['chain-nolocator/child.vhd', 'LOCATOR_NONE'],
    ['footer511.vhd', 'FOOTER_511'],
  ] as const) {
    it(`--strict turns a warning into an error: ${file} (${code})`, async () => {
      const lenient = await vhdkit(['check', file, '--json'], fx);
      expectExit(lenient, 0);
      const lj = json(lenient);
      expect(lj.ok).toBe(true);
      expect(lj.errors).toEqual([]);
      expect(lj.warnings.map((w: any) => w.code)).toContain(code);

      const strict = await vhdkit(['check', file, '--strict', '--json'], fx);
      expectExit(strict, 1);
      const sj = json(strict);
      expect(sj.ok).toBe(false);
      expect(sj.errors.map((e: any) => e.code)).toContain(code);

      const strictHuman = await vhdkit(['check', file, '--strict'], fx);
      expectExit(strictHuman, 1);
    });
  }
});

// -------------------------------------------------------------------------------------------------

describe.concurrent('bad input and usage errors', { timeout: 60_000 }, () => {
  const MARKER = 'ZQX-secret-marker-7f3a9c';
  let d = '';
  beforeAll(() => {
    d = tmpDir('vhdkit-cli-');
    fs.writeFileSync(path.join(d, 'notes.txt'), `${MARKER} some private text\n`.repeat(200));
    // A text file that looks like a VHD at first sight: the footer cookie at both ends, text around it.
    const fake = Buffer.alloc(8192, `${MARKER}\n`);
    fake.write('conectix', 0, 'latin1');
    fake.write('conectix', 8192 - 512, 'latin1');
    fs.writeFileSync(path.join(d, 'fake.vhd'), fake);
  });

  it('info on a text file: exit 2, one line naming the file with NOT_VHD, no stack, no file content', async () => {
    const r = await vhdkit(['info', 'notes.txt'], d);
    expectExit(r, 2);
    expectOneLineError(r);
    expect(r.stderr).toContain('notes.txt');
    expect(r.stderr).toContain('NOT_VHD');
    expect(r.stderr).not.toContain(MARKER);
    expect(r.stdout).not.toContain(MARKER);
  });

  it('--debug adds the stack trace', async () => {
    const r = await vhdkit(['info', 'notes.txt', '--debug'], d);
    expectExit(r, 2);
    expect(r.stderr).toContain('NOT_VHD');
    expect(r.stderr).toContain('    at ');
    expect(r.stderr).not.toContain(MARKER);
  });

  it('info --json on a text file: exit 2, stdout is one JSON document with the error code', async () => {
    const r = await vhdkit(['info', 'notes.txt', '--json'], d);
    expectExit(r, 2);
    const j = json(r);
    expect(j.ok).toBe(false);
    expect(j.error.code).toBe('NOT_VHD');
    expect(r.stdout + r.stderr).not.toContain(MARKER);
  });

  it('check on a text file: exit 2 (unreadable input), not 1', async () => {
    const r = await vhdkit(['check', 'notes.txt'], d);
    expectExit(r, 2);
    expectOneLineError(r);
    expect(r.stderr).toContain('NOT_VHD');
    expect(r.stderr).not.toContain(MARKER);
  });

  it('a text file with footer cookies: no byte of its content is echoed', async () => {
    for (const cmd of [['info', 'fake.vhd'], ['check', 'fake.vhd', '--json']]) {
      const r = await vhdkit(cmd, d);
      expect(r.code, describeRun(r)).not.toBe(0);
      expect(r.stderr, cmd.join(' ')).not.toContain(MARKER);
      expect(r.stdout, cmd.join(' ')).not.toContain(MARKER);
      expect(r.stderr).not.toContain('    at ');
    }
  });

  it('a missing file: exit 2, one line naming it', async () => {
    for (const cmd of ['info', 'check']) {
      const r = await vhdkit([cmd, 'no-such-disk.vhd'], d);
      expectExit(r, 2);
      expectOneLineError(r);
      expect(r.stderr).toContain('no-such-disk.vhd');
    }
  });

  it('an unknown command, an unknown option, no command: exit 2, no stack', async () => {
    const cases = [['frobnicate', 'x.vhd'], ['info', 'notes.txt', '--no-such-option'], []];
    const runs = await Promise.all(cases.map((args) => vhdkit(args, d)));
    runs.forEach((r, k) => {
      expect(r.code, `${cases[k].join(' ')}: ${describeRun(r)}`).toBe(2);
      expect(r.stderr.length).toBeGreaterThan(0);
      expect(r.stderr).not.toContain('    at ');
      expect(r.stdout).toBe('');
    });
  });

  it('create without --size (or --parent): exit 2, nothing created', async () => {
    const r = await vhdkit(['create', 'x.vhd'], d);
    expectExit(r, 2);
    expectOneLineError(r);
    expect(r.stderr).toContain('--size');
    expect(fs.existsSync(path.join(d, 'x.vhd'))).toBe(false);
  });

  it('--size 12X: exit 2 with a message that quotes the bad size', async () => {
    const r = await vhdkit(['create', 'y.vhd', '--size', '12X'], d);
    expectExit(r, 2);
    expectOneLineError(r);
    expect(r.stderr).toContain('12X');
    expect(r.stderr).toContain('--size');
    expect(fs.existsSync(path.join(d, 'y.vhd'))).toBe(false);
  });

  it('sizes that are not a VHD size (not a multiple of 512, zero, past 2040 GiB) and bad block sizes: exit 2', async () => {
    const cases = [
      ['--size', '1000'],
      ['--size', '0'],
      ['--size', '3000G'],
      ['--size', '10M', '--block-size', '3M'],
      ['--size', '10M', '--block-size', '256'],
    ];
    const runs = await Promise.all(cases.map((args, k) => vhdkit(['create', `z${k}.vhd`, ...args], d)));
    runs.forEach((r, k) => {
      expect(r.code, `${cases[k].join(' ')}: ${describeRun(r)}`).toBe(2);
      expectOneLineError(r);
      expect(fs.existsSync(path.join(d, `z${k}.vhd`))).toBe(false);
    });
  });

  it('convert without --to (or --azure), --azure with --to dynamic, an unknown format: exit 2', async () => {
    const cases = [[], ['--azure', '--to', 'dynamic'], ['--to', 'vmdk']];
    const runs = await Promise.all(cases.map((args, k) => vhdkit(['convert', F('fixed-1m.vhd'), `out${k}.vhd`, ...args], d)));
    runs.forEach((r, k) => {
      expect(r.code, `${cases[k].join(' ')}: ${describeRun(r)}`).toBe(2);
      expect(r.stderr).not.toContain('    at ');
      expect(fs.existsSync(path.join(d, `out${k}.vhd`))).toBe(false);
    });
  });

  it('strings from the file (parent name, locator paths) never reach the terminal as control characters', async () => {
    // A child whose header parent name and locator carry terminal escape sequences (OSC title, clear screen).
    const file = path.join(d, 'escape.vhd');
    const sink = await FileSink.open(file, 'wx');
    const w = await DynamicWriter.create(sink, {
      virtualSize: MiB,
      blockSize: 512 * 1024,
      uuid: new Uint8Array(16).fill(1),
      parent: {
        uuid: new Uint8Array(16).fill(2),
        timestamp: 5,
        name: 'evil\x1b]0;PWNED\x07name.vhd',
        locators: [{ code: 'W2ru', path: '.\\evil\x1b[2Jx.vhd' }],
      },
    });
    await w.finish();
    await sink.close();
    for (const cmd of [['info', 'escape.vhd'], ['check', 'escape.vhd'], ['convert', 'escape.vhd', 'escape.raw', '--to', 'raw']]) {
      const r = await vhdkit(cmd, d);
      const all = r.stdout + r.stderr;
      // (asserted as a boolean so that a failure report does not itself replay the escapes)
      expect(/[\x00-\x08\x0b-\x1f\x7f]/.test(all), `${cmd.join(' ')} printed control characters: ${JSON.stringify(all)}`).toBe(false);
    }
  });
});

// -------------------------------------------------------------------------------------------------

describe.concurrent('create', { timeout: 60_000 }, () => {
  it('dynamic 64M: JSON result, info agrees, no blocks allocated, passes check --strict', async () => {
    const d = tmpDir('vhdkit-cli-');
    const r = await vhdkit(['create', 'd.vhd', '--size', '64M', '--json'], d);
    expectExit(r, 0);
    const j = json(r);
    expect(j).toMatchObject({ type: 'dynamic', virtualSize: 64 * MiB, blockSize: 2 * MiB, parent: null });
    const i = await infoJson('d.vhd', d);
    expect(i).toMatchObject({ type: 'dynamic', virtualSize: 64 * MiB, blockSize: 2 * MiB, allocatedBlocks: 0, totalBlocks: 32, uuid: j.uuid, parent: null });
    expect(fs.statSync(path.join(d, 'd.vhd')).size).toBeLessThan(64 * 1024);
    await expectStrictOk('d.vhd', d);
  });

  it('dynamic 10G stays small on disk', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['create', 'big.vhd', '--size', '10G'], d), 0);
    const i = await infoJson('big.vhd', d);
    expect(i).toMatchObject({ type: 'dynamic', virtualSize: 10 * 1024 * MiB, blockSize: 2 * MiB, totalBlocks: 5120, allocatedBlocks: 0 });
    expect(fs.statSync(path.join(d, 'big.vhd')).size).toBeLessThan(MiB);
    await expectStrictOk('big.vhd', d);
  });

  it('fixed 64M: file = size + 512, reads back as zeros', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['create', 'f.vhd', '--size', '64M', '--type', 'fixed'], d), 0);
    expect(fs.statSync(path.join(d, 'f.vhd')).size).toBe(64 * MiB + 512);
    const i = await infoJson('f.vhd', d);
    expect(i).toMatchObject({ type: 'fixed', virtualSize: 64 * MiB, blockSize: null, parent: null });
    await expectStrictOk('f.vhd', d);
    expectExit(await vhdkit(['convert', 'f.vhd', 'f.raw', '--to', 'raw'], d), 0);
    expect(await sha256File(path.join(d, 'f.raw'))).toBe(sha256Bytes(new Uint8Array(64 * MiB)));
  });

  for (const [bs, bytes] of [['512K', 512 * 1024], ['4K', 4096]] as const) {
    it(`--block-size ${bs}`, async () => {
      const d = tmpDir('vhdkit-cli-');
      expectExit(await vhdkit(['create', 'b.vhd', '--size', '10M', '--block-size', bs], d), 0);
      const i = await infoJson('b.vhd', d);
      expect(i).toMatchObject({ type: 'dynamic', virtualSize: 10 * MiB, blockSize: bytes, totalBlocks: (10 * MiB) / bytes, allocatedBlocks: 0 });
      await expectStrictOk('b.vhd', d);
    });
  }

  it('--parent: a differencing child whose info names the parent; the empty child reads as the parent', async () => {
    const d = fs.realpathSync(tmpDir('vhdkit-cli-'));
    fs.copyFileSync(F('chain/base.vhd'), path.join(d, 'base.vhd'));
    const r = await vhdkit(['create', 'child.vhd', '--parent', 'base.vhd', '--json'], d);
    expectExit(r, 0);
    expect(json(r)).toMatchObject({ type: 'differencing', virtualSize: 8 * MiB });
    const i = await infoJson('child.vhd', d);
    expect(i.type).toBe('differencing');
    expect(i.virtualSize).toBe(expected.images['chain/base.vhd'].virtualSize);
    expect(i.parent.uuid).toBe(expected.images['chain/base.vhd'].uniqueId);
    expect(i.parent.path).toBe(path.join(d, 'base.vhd'));
    expect(i.chain).toHaveLength(2);
    await expectStrictOk('child.vhd', d);
    expectExit(await vhdkit(['convert', 'child.vhd', 'child.raw', '--to', 'raw'], d), 0);
    expect(await sha256File(path.join(d, 'child.raw'))).toBe(expected.images['chain/base.vhd'].sha256);

    // a grandchild of the child: chain of three
    expectExit(await vhdkit(['create', 'gc.vhd', '--parent', 'child.vhd'], d), 0);
    const g = await infoJson('gc.vhd', d);
    expect(g.chain).toHaveLength(3);
    expect(g.parent.path).toBe(path.join(d, 'child.vhd'));
    await expectStrictOk('gc.vhd', d);
  });

  it('a child and its parent moved together (another dir, parent in a sibling dir) still resolve', async () => {
    const d = fs.realpathSync(tmpDir('vhdkit-cli-'));
    fs.mkdirSync(path.join(d, 'a', 'bases'), { recursive: true });
    fs.mkdirSync(path.join(d, 'a', 'kids'));
    fs.copyFileSync(F('chain/base.vhd'), path.join(d, 'a', 'bases', 'base.vhd'));
    expectExit(await vhdkit(['create', 'a/kids/child.vhd', '--parent', 'a/bases/base.vhd'], d), 0);
    fs.renameSync(path.join(d, 'a'), path.join(d, 'b'));
    const i = await infoJson('b/kids/child.vhd', d);
    expect(i.parent.path).toBe(path.join(d, 'b', 'bases', 'base.vhd'));
    await expectStrictOk('b/kids/child.vhd', d);
  });

  it('--parent of a missing or non-VHD parent, or with --size: exit 2, nothing created', async () => {
    const d = tmpDir('vhdkit-cli-');
    fs.writeFileSync(path.join(d, 'text.vhd'), 'hello\n'.repeat(1000));
    fs.copyFileSync(F('chain/base.vhd'), path.join(d, 'base.vhd'));
    for (const args of [['--parent', 'missing.vhd'], ['--parent', 'text.vhd'], ['--parent', 'base.vhd', '--size', '8M']]) {
      const r = await vhdkit(['create', 'kid.vhd', ...args], d);
      expect(r.code, `${args.join(' ')}: ${describeRun(r)}`).toBe(2);
      expectOneLineError(r);
    }
    expect(fs.readdirSync(d).sort()).toEqual(['base.vhd', 'text.vhd']);
  });

  it('refuses to overwrite an existing file (exit 2, file unchanged) unless --force', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['create', 'd.vhd', '--size', '64M'], d), 0);
    const before = await sha256File(path.join(d, 'd.vhd'));
    for (const args of [['--size', '32M'], ['--size', '32M', '--type', 'fixed']]) {
      const r = await vhdkit(['create', 'd.vhd', ...args], d);
      expectExit(r, 2);
      expectOneLineError(r);
      expect(r.stderr).toContain('OUTPUT_EXISTS');
      expect(await sha256File(path.join(d, 'd.vhd'))).toBe(before);
    }
    const forced = await vhdkit(['create', 'd.vhd', '--size', '32M', '--force'], d);
    expectExit(forced, 0);
    expect((await infoJson('d.vhd', d)).virtualSize).toBe(32 * MiB);
    await expectStrictOk('d.vhd', d);
    expect(fs.readdirSync(d)).toEqual(['d.vhd']);
  });
});

// -------------------------------------------------------------------------------------------------

describe.concurrent('convert', { timeout: 60_000 }, () => {
  it('raw → dynamic (default 2M blocks) → raw is byte-identical to the raw', async () => {
    const d = tmpDir('vhdkit-cli-');
    const r = await vhdkit(['convert', F('dynamic-2m-blocks.raw'), 'd.vhd', '--to', 'dynamic', '--json'], d);
    expectExit(r, 0);
    expect(r.stderr).toBe('');
    const j = json(r);
    expect(j).toMatchObject({ sourceFormat: 'raw', to: 'dynamic', virtualSize: 9 * MiB });
    const i = await infoJson('d.vhd', d);
    expect(i).toMatchObject({ type: 'dynamic', virtualSize: 9 * MiB, blockSize: 2 * MiB });
    // the raw has data in blocks 0, 2 and 4 only: zero blocks stay unallocated
    expect(i.allocatedBlocks).toBe(expected.images['dynamic-2m-blocks.vhd'].allocatedBlocks);
    await expectStrictOk('d.vhd', d);
    expectExit(await vhdkit(['convert', 'd.vhd', 'back.raw', '--to', 'raw'], d), 0);
    expect(fs.readFileSync(path.join(d, 'back.raw')).equals(fs.readFileSync(F('dynamic-2m-blocks.raw')))).toBe(true);
  });

  it('dynamic → fixed: file = virtual size + 512, same content', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['convert', F('dynamic-2m-blocks.vhd'), 'f.vhd', '--to', 'fixed'], d), 0);
    const e = expected.images['dynamic-2m-blocks.vhd'];
    expect(fs.statSync(path.join(d, 'f.vhd')).size).toBe(e.virtualSize + 512);
    expect(await infoJson('f.vhd', d)).toMatchObject({ type: 'fixed', virtualSize: e.virtualSize });
    await expectStrictOk('f.vhd', d);
    expectExit(await vhdkit(['convert', 'f.vhd', 'f.raw', '--to', 'raw'], d), 0);
    expect(await sha256File(path.join(d, 'f.raw'))).toBe(e.sha256);
  });

  it('a chain (grandchild) → raw equals the expected content', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['convert', F('chain/grandchild.vhd'), 'gc.raw', '--to', 'raw'], d), 0);
    expect(fs.statSync(path.join(d, 'gc.raw')).size).toBe(8 * MiB);
    expect(await sha256File(path.join(d, 'gc.raw'))).toBe(expected.images['chain/grandchild.vhd'].sha256);
  });

  it('every good fixture → raw is byte-identical to the model; → fixed and → dynamic keep the content and pass check --strict', async () => {
    const d = tmpDir('vhdkit-cli-');
    const names = Object.keys(expected.images);
    // every mismatch is collected, so that one wrong output does not hide the state of the others
    const wrong: string[] = [];
    await Promise.all(
      names.map(async (n, k) => {
        const r = await vhdkit(['convert', F(n), `${k}.raw`, '--to', 'raw'], d);
        expect(r.code, `${n}: ${describeRun(r)}`).toBe(0);
        const size = fs.statSync(path.join(d, `${k}.raw`)).size;
        if (size !== expected.images[n].virtualSize) wrong.push(`${n} → raw: ${size} bytes, expected ${expected.images[n].virtualSize}`);
        const sha = await sha256File(path.join(d, `${k}.raw`));
        if (sha !== expected.images[n].sha256) wrong.push(`${n} → raw: sha256 ${sha}, expected ${expected.images[n].sha256}`);
      }),
    );
    // VHD outputs of a few different shapes (partial last block, 4K blocks, 511-byte footer, a chain)
    const some = ['dynamic-512k-blocks.vhd', 'dynamic-4k-blocks.vhd', 'footer511.vhd', 'chain/grandchild.vhd', 'chain-sectors/child.vhd'];
    for (const n of some) {
      for (const to of ['dynamic', 'fixed']) {
        const out = path.join(d, `${n.replace(/\W/g, '_')}.${to}.vhd`);
        const r = await vhdkit(['convert', F(n), out, '--to', to], d);
        expect(r.code, `${n} → ${to}: ${describeRun(r)}`).toBe(0);
        await expectStrictOkInProcess(out);
        const sha = await sha256OfVhd(out);
        if (sha !== expected.images[n].sha256) wrong.push(`${n} → ${to}: content sha256 ${sha}, expected ${expected.images[n].sha256}`);
      }
    }
    expect(wrong, wrong.join('\n')).toEqual([]);
  });

  it('--azure: fixed, virtual size rounded up to a whole MiB (file = N MiB + 512), content kept, check --strict passes', async () => {
    const d = tmpDir('vhdkit-cli-');
    const src = 'dynamic-512k-blocks.vhd'; // 3 MiB + 512 bytes
    const r = await vhdkit(['convert', F(src), 'az.vhd', '--azure', '--json'], d);
    expectExit(r, 0);
    const j = json(r);
    expect(j).toMatchObject({ to: 'fixed', virtualSize: 4 * MiB });
    expect(fs.statSync(path.join(d, 'az.vhd')).size).toBe(4 * MiB + 512);
    const i = await infoJson('az.vhd', d);
    expect(i).toMatchObject({ type: 'fixed', virtualSize: 4 * MiB });
    await expectStrictOk('az.vhd', d);
    expectExit(await vhdkit(['convert', 'az.vhd', 'az.raw', '--to', 'raw'], d), 0);
    const raw = fs.readFileSync(path.join(d, 'az.raw'));
    const vs = expected.images[src].virtualSize;
    expect(raw.length).toBe(4 * MiB);
    expect(sha256Bytes(raw.subarray(0, vs))).toBe(expected.images[src].sha256);
    expect(raw.subarray(vs).every((b) => b === 0)).toBe(true);
  });

  it('--azure of a chain already a whole number of MiB keeps its size', async () => {
    const d = tmpDir('vhdkit-cli-');
    expectExit(await vhdkit(['convert', F('chain/grandchild.vhd'), 'az.vhd', '--azure'], d), 0);
    expect(fs.statSync(path.join(d, 'az.vhd')).size).toBe(8 * MiB + 512);
    await expectStrictOk('az.vhd', d);
    expectExit(await vhdkit(['convert', 'az.vhd', 'az.raw', '--to', 'raw'], d), 0);
    expect(await sha256File(path.join(d, 'az.raw'))).toBe(expected.images['chain/grandchild.vhd'].sha256);
  });

  it('a corrupt VHD input: exit 2, no output and no temp file left', async () => {
    const cases = [
      ['corrupt/BAT_TOO_LARGE--2-billion.vhd', 'raw'],
      ['corrupt/BAT_TOO_LARGE--2-billion.vhd', 'dynamic'],
      ['corrupt/BAT_ENTRY_PAST_EOF--entry1.vhd', 'fixed'],
      ['corrupt/PARENT_MISSING--child.vhd', 'raw'],
      ['corrupt/HEADER_BLOCK_SIZE--zero.vhd', 'dynamic'],
    ];
    const dirs = cases.map(() => tmpDir('vhdkit-cli-'));
    const runs = await Promise.all(cases.map(([c, to], k) => vhdkit(['convert', F(c), 'out.img', '--to', to], dirs[k])));
    runs.forEach((r, k) => {
      const [c, to] = cases[k];
      expect(r.code, `${c} → ${to}: ${describeRun(r)}`).toBe(2);
      expectOneLineError(r);
      expect(r.stderr).toContain(`[${c.slice('corrupt/'.length).split('--')[0]}]`); // the code, not just the file name
      expect(fs.readdirSync(dirs[k]), `${c} → ${to}`).toEqual([]);
    });
  });

  it('with --strict, an input with a structural error is refused: exit 2, nothing left', async () => {
    const d = tmpDir('vhdkit-cli-');
    const r = await vhdkit(['convert', F('corrupt/BAT_ENTRY_OVERLAP--entries-0-1.vhd'), 'out.raw', '--to', 'raw', '--strict'], d);
    expectExit(r, 2);
    expect(r.stderr).toContain('BAT_ENTRY_OVERLAP');
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('a text file named x.vhd is not taken for a raw image: exit 2, nothing left', async () => {
    const d = tmpDir('vhdkit-cli-');
    fs.writeFileSync(path.join(d, 'x.vhd'), 'just some text, not a disk\n'.repeat(100));
    for (const to of ['raw', 'dynamic']) {
      const r = await vhdkit(['convert', 'x.vhd', `out-${to}.img`, '--to', to], d);
      expect(r.code, describeRun(r)).toBe(2);
      expectOneLineError(r);
      expect(r.stderr).toContain('NOT_VHD');
      expect(fs.readdirSync(d)).toEqual(['x.vhd']);
    }
  });

  it('a failure after the output was started (raw past the 2040 GiB VHD limit) leaves nothing behind', async () => {
    const d = tmpDir('vhdkit-cli-');
    // sparse: costs no space
    fs.closeSync(fs.openSync(path.join(d, 'huge.raw'), 'w'));
    fs.truncateSync(path.join(d, 'huge.raw'), 2041 * 1024 * 1024 * 1024);
    for (const args of [['--to', 'fixed'], ['--to', 'dynamic'], ['--azure']]) {
      const r = await vhdkit(['convert', 'huge.raw', 'out.vhd', ...args], d);
      expect(r.code, `${args.join(' ')}: ${describeRun(r)}`).toBe(2);
      expectOneLineError(r);
      expect(fs.readdirSync(d)).toEqual(['huge.raw']);
    }
  });

  it('refuses to convert onto its input (same path, another spelling, a symlink), even with --force', async () => {
    const d = tmpDir('vhdkit-cli-');
    fs.copyFileSync(F('dynamic-2m-blocks.vhd'), path.join(d, 'in.vhd'));
    fs.symlinkSync('in.vhd', path.join(d, 'link.vhd'));
    const before = await sha256File(path.join(d, 'in.vhd'));
    for (const [dst, extra] of [
      ['in.vhd', []],
      ['./in.vhd', ['--force']],
      [path.join(d, 'in.vhd'), ['--force']],
      ['link.vhd', ['--force']],
    ] as const) {
      const r = await vhdkit(['convert', 'in.vhd', dst, '--to', 'fixed', ...extra], d);
      expect(r.code, `${dst} ${extra.join(' ')}: ${describeRun(r)}`).toBe(2);
      expectOneLineError(r);
    }
    expect(await sha256File(path.join(d, 'in.vhd'))).toBe(before);
    expect(fs.readdirSync(d).sort()).toEqual(['in.vhd', 'link.vhd']);
  });

  it('refuses to replace an existing output (exit 2, unchanged) unless --force', async () => {
    const d = tmpDir('vhdkit-cli-');
    fs.writeFileSync(path.join(d, 'out.raw'), 'precious');
    const r = await vhdkit(['convert', F('fixed-1m.vhd'), 'out.raw', '--to', 'raw'], d);
    expectExit(r, 2);
    expect(r.stderr).toContain('OUTPUT_EXISTS');
    expect(fs.readFileSync(path.join(d, 'out.raw'), 'utf8')).toBe('precious');
    expect(fs.readdirSync(d)).toEqual(['out.raw']);
    expectExit(await vhdkit(['convert', F('fixed-1m.vhd'), 'out.raw', '--to', 'raw', '--force'], d), 0);
    expect(await sha256File(path.join(d, 'out.raw'))).toBe(expected.raw['fixed-1m.raw']);
  });

  it('--block-size for a dynamic output: 512K and 4K, same content', async () => {
    const d = tmpDir('vhdkit-cli-');
    for (const [bs, bytes] of [['512K', 524288], ['4K', 4096]] as const) {
      expectExit(await vhdkit(['convert', F('chain/grandchild.vhd'), `${bs}.vhd`, '--to', 'dynamic', '--block-size', bs], d), 0);
      expect((await infoJson(`${bs}.vhd`, d)).blockSize).toBe(bytes);
      await expectStrictOkInProcess(path.join(d, `${bs}.vhd`));
      expect(await sha256OfVhd(path.join(d, `${bs}.vhd`))).toBe(expected.images['chain/grandchild.vhd'].sha256);
    }
  });
});

// -------------------------------------------------------------------------------------------------

const hasScript = spawnSync('script', ['--version'], { encoding: 'utf8' }).status === 0;

describe.concurrent('progress output', { timeout: 60_000 }, () => {
  it('not a TTY: --json leaves stderr empty (no progress bar), stdout one JSON document', async () => {
    const d = tmpDir('vhdkit-cli-');
    const r = await vhdkit(['convert', F('dynamic-2m-blocks.raw'), 'out.vhd', '--to', 'dynamic', '--json'], d);
    expectExit(r, 0);
    expect(r.stderr).toBe('');
    expect(json(r).to).toBe('dynamic');
  });

  it('not a TTY, human output: no carriage returns or bar on stderr', async () => {
    const d = tmpDir('vhdkit-cli-');
    const r = await vhdkit(['convert', F('chain/grandchild.vhd'), 'out.raw', '--to', 'raw'], d);
    expectExit(r, 0);
    expect(r.stderr).not.toContain('\r');
    expect(r.stderr).not.toContain('[#');
  });

  it.skipIf(!hasScript)('on a TTY a bar is drawn on stderr, stdout stays pure JSON; --quiet hides the bar', async () => {
    const d = tmpDir('vhdkit-cli-');
    const cmd = (extra: string, out: string) =>
      `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} convert ${JSON.stringify(F('dynamic-2m-blocks.raw'))} ${out}.vhd --to dynamic --json ${extra} > ${out}.json`;
    const tty = await run('script', ['-qec', cmd('', 'a'), '/dev/null'], d);
    expectExit(tty, 0);
    expect(tty.stdout).toMatch(/convert \[[#.]+\]/);
    expect(JSON.parse(fs.readFileSync(path.join(d, 'a.json'), 'utf8')).to).toBe('dynamic');
    const quiet = await run('script', ['-qec', cmd('--quiet', 'b'), '/dev/null'], d);
    expectExit(quiet, 0);
    expect(quiet.stdout).not.toMatch(/convert \[/);
    expect(JSON.parse(fs.readFileSync(path.join(d, 'b.json'), 'utf8')).to).toBe('dynamic');
  });
});

// -------------------------------------------------------------------------------------------------

describe('interrupted conversion', { timeout: 60_000 }, () => {
  it('Ctrl-C (SIGINT) during convert: exits non-zero and leaves no output and no temp file', async () => {
    const d = tmpDir('vhdkit-cli-');
    fs.closeSync(fs.openSync(path.join(d, 'big.raw'), 'w'));
    fs.truncateSync(path.join(d, 'big.raw'), 64 * 1024 * MiB); // sparse
    // Holes read as data (VHDKIT_NO_SEEK_DATA): 64 GiB take far longer than the wait below to read.
    const env = { ...process.env, VHDKIT_NO_SEEK_DATA: '1' };
    const child = spawn(process.execPath, [CLI, 'convert', 'big.raw', 'out.raw', '--to', 'raw'], { cwd: d, stdio: 'ignore', env });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    // wait until the temp output exists, i.e. the copy has begun
    const t0 = Date.now();
    while (!fs.readdirSync(d).some((n) => n.endsWith('.tmp')) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
    expect(fs.readdirSync(d).some((n) => n.endsWith('.tmp'))).toBe(true);
    child.kill('SIGINT');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const { code, signal } = await exited;
    clearTimeout(timer);
    expect(signal === 'SIGINT' || (code !== null && code !== 0), `code ${code} signal ${signal}`).toBe(true);
    expect(fs.readdirSync(d)).toEqual(['big.raw']);
  });
});

describe('usage errors from the argument parser', () => {
  it('are one line ending in [USAGE], exit 2, whatever yargs makes of them', async () => {
    const d = tmpDir('vhdkit-cli-usage-');
    for (const args of [
      ['convert', 'a.raw', 'x.vhd', '--to', 'bogus'],
      ['info'],
      ['frobnicate'],
      ['hash', 'a.vhd', '--no-such-flag'],
      [],
      // One value given twice: never an array that passes a choices check (a raw image written as "dynamic").
      ['convert', 'a.raw', 'x.vhd', '--to', 'dynamic', '--to', 'dynamic'],
      ['merge', 'c.vhd', '--into-copy', 'a.vhd', '--into-copy', 'b.vhd'],
      ['diff', 'a.vhd', 'b.vhd', '--out', 'o1.vhd', '--out', 'o2.vhd'],
    ]) {
      const r = await vhdkit(args, d);
      expectExit(r, 2);
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines, `${args.join(' ')}: ${r.stderr}`).toHaveLength(1);
      expect(lines[0]).toMatch(/^vhdkit: .+ \(run "vhdkit --help" for usage\) \[USAGE\]$/);
    }
    expect(fs.readdirSync(d)).toEqual([]);
  });
});
