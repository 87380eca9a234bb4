/**
 * No path a user can type loses data (issue 17, classes 1 and 2), through the real CLI:
 * - USAGE: an output that is the input, a disk of its chain or another output of the command is
 *   refused before anything is written, whatever names it (the path itself, `./x`, a symlink, a hard
 *   link), with and without --force; every file is byte-identical afterwards.
 * - IO: an output in a missing folder, ending in `/`, through a file, on a read-only mount or on a
 *   full file system is one `[IO]` line naming the path and the operation (never "internal error"),
 *   the documented exit code, and nothing left behind.
 * The same guard and mapping through the library (VhdError codes).
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codedError, ErrorCodes, exitCodeOf, VhdError } from '../src/errors.js';
import { checkOutputPath, guardOutputs } from '../src/io/paths.js';
import { convert } from '../src/ops/convert.js';
import { hash } from '../src/ops/hash.js';
import { merge } from '../src/ops/merge.js';
import { rejection, repoRoot, runProcess, snapshotTree, tmpDir, type ProcessRun } from './helpers.js';

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;
const CONN = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;';

let dir: string;

function vhdkit(args: string[], cwd = dir): Promise<ProcessRun> {
  return runProcess(process.execPath, [CLI, ...args], { cwd, timeoutMs: 60_000, env: { ...process.env, FORCE_COLOR: '0' } });
}

function describeRun(r: ProcessRun): string {
  return `exit ${r.code}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`;
}

const snapshot = snapshotTree;

/** One line on stderr, `vhdkit: … [CODE]`, no stack, no "internal error". */
function expectOneCodedLine(r: ProcessRun, code: string): string {
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, describeRun(r)).toHaveLength(1);
  expect(lines[0], describeRun(r)).toMatch(new RegExp(`^vhdkit: .*\\[${code}\\]$`));
  expect(lines[0]).not.toMatch(/internal error|\n\s+at /);
  return lines[0];
}

beforeAll(async () => {
  dir = tmpDir('vhdkit-outputs-');
  // gen1: 4 MiB of patterned data in an 8 MiB disk; base.vhd its dynamic form; child.vhd a child of it
  // holding 1 MiB of new data (made by diff --out); other.raw a different full disk.
  const gen1 = Buffer.alloc(8 * MiB);
  for (let i = 0; i < 4 * MiB; i++) gen1[i] = (i * 7 + (i >> 12)) & 0xff;
  fs.writeFileSync(path.join(dir, 'gen1.raw'), gen1);
  const gen2 = Buffer.from(gen1);
  gen2.fill(0x5a, 5 * MiB, 6 * MiB);
  fs.writeFileSync(path.join(dir, 'gen2.raw'), gen2);
  for (const args of [
    ['convert', 'gen1.raw', 'base.vhd', '--to', 'dynamic'],
    ['diff', 'base.vhd', 'gen2.raw', '--out', 'child.vhd'],
  ]) {
    const r = await vhdkit(args);
    expect(r.code, describeRun(r)).toBe(0);
  }
  fs.symlinkSync('base.vhd', path.join(dir, 'base-link.vhd'));
  fs.symlinkSync('child.vhd', path.join(dir, 'child-link.vhd'));
  fs.linkSync(path.join(dir, 'base.vhd'), path.join(dir, 'base-hard.vhd'));
  fs.linkSync(path.join(dir, 'child.vhd'), path.join(dir, 'child-hard.vhd'));
  fs.mkdirSync(path.join(dir, 'sub'));
});

// -------------------------------------------------------------------------------------------------
// Class 1: an output never lands on an input.

/** The spellings of one file: the path, ./path, a symlink, a hard link, through a folder and back. */
const spellings = (name: 'base' | 'child') => [`${name}.vhd`, `./${name}.vhd`, `${name}-link.vhd`, `${name}-hard.vhd`, `sub/../${name}.vhd`];

interface WritingOption {
  what: string;
  /** The command line writing `out`; `force` adds the option that replaces an existing output. */
  args: (out: string) => string[];
  force?: string;
  /** Files of the input's chain the output must not be. */
  inputs: Array<'base' | 'child'>;
}

const WRITERS: WritingOption[] = [
  { what: 'convert <dst>', args: (o) => ['convert', 'child.vhd', o, '--to', 'raw'], force: '--force', inputs: ['child', 'base'] },
  { what: 'hash --manifest', args: (o) => ['hash', 'child.vhd', '--manifest', o], force: '--force', inputs: ['child', 'base'] },
  { what: 'diff --out', args: (o) => ['diff', 'child.vhd', 'gen2.raw', '--out', o], force: '--force', inputs: ['child', 'base'] },
  { what: 'create --parent', args: (o) => ['create', o, '--parent', 'child.vhd'], force: '--force', inputs: ['child', 'base'] },
  { what: 'merge --into-copy', args: (o) => ['merge', 'child.vhd', '--into-copy', o], inputs: ['child', 'base'] },
];

describe('USAGE: an output that is an input or a disk of its chain is refused, with or without --force', () => {
  for (const w of WRITERS) {
    it(`${w.what}: every spelling of the input and of its parent, nothing written`, async () => {
      const before = snapshot(dir);
      for (const name of w.inputs) {
        for (const out of spellings(name)) {
          for (const force of w.force ? [false, true] : [false]) {
            const r = await vhdkit([...w.args(out), ...(force ? [w.force!] : [])]);
            expect(r.code, `${w.what} ${out}${force ? ' --force' : ''}\n${describeRun(r)}`).toBe(2);
            const line = expectOneCodedLine(r, 'USAGE');
            expect(line).toContain(out);
            expect(line).toMatch(/same file as the (input|old disk|parent|child)/);
            expect(snapshot(dir), `${w.what} ${out}: a file changed or was left behind`).toEqual(before);
          }
        }
      }
    });
  }

  it('diff --out: the new disk (and its own chain) is an input too', async () => {
    const before = snapshot(dir);
    const r = await vhdkit(['diff', 'base.vhd', 'child.vhd', '--out', 'child-link.vhd', '--force']);
    expect(r.code, describeRun(r)).toBe(2);
    expect(expectOneCodedLine(r, 'USAGE')).toContain('same file as the new disk');
    expect(snapshot(dir)).toEqual(before);
  });

  it('upload: a --journal-dir whose journal file is a disk of the chain is refused before anything is sent', async () => {
    // The journal of images/x is <sha256 of its URL, 32 hex>.json in --journal-dir: make that a hard link of base.vhd.
    const jdir = path.join(dir, 'journals');
    fs.mkdirSync(jdir, { recursive: true });
    const url = 'http://127.0.0.1:9/devstoreaccount1/images/x';
    const journal = path.join(jdir, `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.json`);
    fs.rmSync(journal, { force: true });
    fs.linkSync(path.join(dir, 'base.vhd'), journal);
    try {
      const before = snapshot(dir);
      const r = await vhdkit(['upload', 'child.vhd', 'images/x', '--connection-string', CONN, '--journal-dir', jdir]);
      expect(r.code, describeRun(r)).toBe(2);
      expect(expectOneCodedLine(r, 'USAGE')).toMatch(/upload journal is the same file as the input's parent/);
      expect(r.stderr).not.toContain('AccountKey');
      expect(snapshot(dir)).toEqual(before);
    } finally {
      fs.rmSync(jdir, { recursive: true, force: true });
    }
  });

  it('a good output beside them is written (the guard refuses only what it must)', async () => {
    const r = await vhdkit(['hash', 'child-link.vhd', '--manifest', 'child.manifest']);
    expect(r.code, describeRun(r)).toBe(0);
    expect(fs.statSync(path.join(dir, 'child.manifest')).size).toBeGreaterThan(64);
    fs.rmSync(path.join(dir, 'child.manifest'));
  });
});

describe('the guard in the library', () => {
  it('guardOutputs: input, chain, and two outputs that are one file, by inode or by canonical path', () => {
    const at = (n: string) => path.join(dir, n);
    const codeOf = (f: () => void) => {
      try {
        f();
      } catch (e) {
        return (e as VhdError).code;
      }
      return 'none';
    };
    expect(codeOf(() => guardOutputs([{ path: at('base-hard.vhd'), role: 'output' }], [{ path: at('base.vhd'), role: 'input' }]))).toBe('USAGE');
    expect(codeOf(() => guardOutputs([{ path: at('sub/../base-link.vhd'), role: 'output' }], [{ path: at('base.vhd'), role: 'input' }]))).toBe('USAGE');
    // Two outputs not yet there, spelled differently: one file.
    expect(codeOf(() => guardOutputs([{ path: at('new.vhd'), role: 'a' }, { path: at('sub/../new.vhd'), role: 'b' }], []))).toBe('USAGE');
    expect(codeOf(() => guardOutputs([{ path: at('new.vhd'), role: 'a' }, { path: at('new2.vhd'), role: 'b' }], [{ path: at('base.vhd'), role: 'input' }]))).toBe('none');
  });

  it('convert, hash and merge refuse with USAGE naming the output; nothing changes', async () => {
    const before = snapshot(dir);
    const e1 = await rejection(convert(path.join(dir, 'child.vhd'), path.join(dir, 'base-link.vhd'), { to: 'raw', force: true }));
    expect(e1.code).toBe(ErrorCodes.USAGE);
    expect(e1.file).toBe(path.join(dir, 'base-link.vhd'));
    const e2 = await rejection(hash(path.join(dir, 'child.vhd'), { manifest: path.join(dir, 'child-hard.vhd'), force: true, workers: 0 }));
    expect(e2.code).toBe(ErrorCodes.USAGE);
    const e3 = await rejection(merge(path.join(dir, 'child.vhd'), { intoCopy: path.join(dir, 'base.vhd') }));
    expect(e3.code).toBe(ErrorCodes.USAGE);
    expect(snapshot(dir)).toEqual(before);
  });
});

// -------------------------------------------------------------------------------------------------
// Class 2: every file-system error is an [IO] error naming the path and the operation.

/** Each writing command, writing to `out` (a path given by the test). */
const IO_WRITERS: Array<{ what: string; args: (out: string) => string[] }> = [
  { what: 'convert', args: (o) => ['convert', 'child.vhd', o, '--to', 'fixed'] },
  { what: 'hash --manifest', args: (o) => ['hash', 'gen1.raw', '--manifest', o, '--chunk-size', '512'] },
  { what: 'diff --out', args: (o) => ['diff', 'base.vhd', 'gen2.raw', '--out', o] },
  { what: 'create', args: (o) => ['create', o, '--size', '64M', '--type', 'fixed'] },
  { what: 'create --parent', args: (o) => ['create', o, '--parent', 'base.vhd'] },
  { what: 'merge --into-copy', args: (o) => ['merge', 'child.vhd', '--into-copy', o] },
];

/** Bad places for an output, and the errno each must report. */
const BAD_PLACES: Array<{ what: string; out: string; errno: string; exit: number }> = [
  { what: 'a missing folder', out: 'nope/out.vhd', errno: 'ENOENT', exit: 2 },
  { what: 'a path ending in / whose folder is missing', out: 'nope/', errno: 'ENOENT', exit: 2 },
  { what: 'a path ending in / that is a folder', out: 'sub/', errno: 'EISDIR', exit: 2 },
  { what: 'an existing folder', out: 'sub', errno: 'EISDIR', exit: 2 },
  { what: 'a path through a file', out: 'gen1.raw/out.vhd', errno: 'ENOTDIR', exit: 2 },
];

describe('IO: an output path that cannot hold a file', () => {
  for (const w of IO_WRITERS) {
    it(`${w.what}: a missing folder, a trailing /, a folder, a path through a file`, async () => {
      const before = snapshot(dir);
      for (const p of BAD_PLACES) {
        const r = await vhdkit([...w.args(p.out), ...(w.what.startsWith('merge') ? [] : ['--force'])]);
        expect(r.code, `${w.what} into ${p.what}\n${describeRun(r)}`).toBe(p.exit);
        const line = expectOneCodedLine(r, 'IO');
        expect(line, p.what).toContain(p.out.replace(/\/$/, ''));
        expect(line, p.what).toContain(p.errno);
        expect(snapshot(dir), `${w.what} into ${p.what}: something was written`).toEqual(before);
      }
      expect(fs.existsSync(path.join(dir, 'nope'))).toBe(false);
    });
  }
});

/** Mounts a tmpfs (root only); undefined, with the reason printed, where that cannot be done. */
function mountTmpfs(where: string, options: string): boolean {
  fs.mkdirSync(where, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', where], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.log(`outputs.test.ts: cannot mount a tmpfs here (${(r.stderr || r.error?.message || 'not root').trim()}); the read-only and full file-system cases are skipped`);
    return false;
  }
  return true;
}

describe('IO: a read-only mount and a full file system (tmpfs, where root)', () => {
  let ro = '';
  let full = '';
  let tight = '';
  let mounted = false;
  beforeAll(() => {
    if (process.getuid?.() !== 0) {
      console.log('outputs.test.ts: not root: the read-only and full file-system cases are skipped');
      return;
    }
    ro = path.join(dir, 'ro');
    full = path.join(dir, 'full');
    tight = path.join(dir, 'tight');
    mounted = mountTmpfs(ro, 'size=16m') && mountTmpfs(full, 'size=1m') && mountTmpfs(tight, 'size=16m');
    if (mounted) {
      // A chain on the read-only mount, for an in-place merge there.
      for (const f of ['base.vhd', 'child.vhd']) fs.copyFileSync(path.join(dir, f), path.join(ro, f));
      spawnSync('mount', ['-o', 'remount,ro', ro]);
    }
  });
  afterAll(() => {
    for (const m of [ro, full, tight]) if (m) spawnSync('umount', [m]);
  });

  it('merge in place on a read-only mount: IO (EROFS) naming the lock it could not take; the chain unchanged', async (ctx) => {
    if (!mounted) return ctx.skip();
    const before = snapshot(ro);
    const r = await vhdkit(['merge', path.join(ro, 'child.vhd')]);
    expect(r.code, describeRun(r)).toBe(1);
    const line = expectOneCodedLine(r, 'IO');
    expect(line).toContain('EROFS');
    expect(line).toContain(path.join(ro, 'base.vhd'));
    expect(snapshot(ro)).toEqual(before);
  });

  it('merge in place on a file system with no space at all: IO naming the lock file it could not write, nothing left', async (ctx) => {
    if (!mounted) return ctx.skip();
    const at = path.join(tight, 'nospace');
    fs.mkdirSync(at);
    for (const f of ['base.vhd', 'child.vhd']) fs.copyFileSync(path.join(dir, f), path.join(at, f));
    const before = snapshot(at);
    spawnSync('dd', ['if=/dev/zero', `of=${path.join(tight, 'filler0')}`, 'bs=64k'], { encoding: 'utf8' }); // to the last byte
    try {
      const r = await vhdkit(['merge', path.join(at, 'child.vhd')]);
      expect(r.code, describeRun(r)).toBe(1);
      const line = expectOneCodedLine(r, 'IO');
      expect(line).toContain('ENOSPC');
      // The first file it writes: the shared lock on the child it reads (then the parent's lock).
      expect(line).toMatch(new RegExp(`${at.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/(child|base)\\.vhd\\.vhdkit-(read|lock)`));
      expect(snapshot(at)).toEqual(before);
    } finally {
      fs.rmSync(path.join(tight, 'filler0'), { force: true });
      fs.rmSync(at, { recursive: true, force: true });
    }
  });

  it('merge in place running out of space mid-merge: IO (ENOSPC), MERGE_PENDING, and the same command completes it once there is room', async (ctx) => {
    if (!mounted) return ctx.skip();
    for (const f of ['base.vhd', 'child.vhd']) fs.copyFileSync(path.join(dir, f), path.join(tight, f));
    const want = JSON.parse((await vhdkit(['hash', path.join(tight, 'child.vhd'), '--json'])).stdout).digest;
    // Leave 256 KiB: the lock and the journal fit, the child's new 2 MiB block (1 MiB of data) does not.
    const st = fs.statfsSync(tight);
    const filler = path.join(tight, 'filler');
    fs.writeFileSync(filler, Buffer.alloc(st.bavail * st.bsize - 256 * 1024));
    const r = await vhdkit(['merge', path.join(tight, 'child.vhd')]);
    expect(r.code, describeRun(r)).toBe(1);
    const line = expectOneCodedLine(r, 'IO');
    expect(line).toContain('ENOSPC');
    expect(line).toContain(path.join(tight, 'base.vhd'));
    const check = await vhdkit(['check', path.join(tight, 'base.vhd'), '--json']);
    expect(check.stdout).toContain('MERGE_PENDING');
    fs.rmSync(filler);
    const again = await vhdkit(['merge', path.join(tight, 'child.vhd'), '--json']);
    expect(again.code, describeRun(again)).toBe(0);
    expect(JSON.parse(again.stdout).resumed).toBe(true);
    const strict = await vhdkit(['check', path.join(tight, 'base.vhd'), '--strict']);
    expect(strict.code, describeRun(strict)).toBe(0);
    expect(JSON.parse((await vhdkit(['hash', path.join(tight, 'base.vhd'), '--json'])).stdout).digest).toBe(want);
  });

  for (const w of IO_WRITERS) {
    it(`${w.what}: EROFS exits 1 naming the file; ENOSPC exits 1 and leaves no temporary file`, async (ctx) => {
      if (!mounted) return ctx.skip();
      const before = snapshot(dir);
      const r1 = await vhdkit(w.args(path.join(ro, 'out.vhd')));
      expect(r1.code, describeRun(r1)).toBe(1);
      const l1 = expectOneCodedLine(r1, 'IO');
      expect(l1).toContain(ro);
      expect(l1).toContain('EROFS');
      // The small file system filled to its last byte first (dd stops at ENOSPC): the first data written fails.
      const filler = path.join(full, 'filler');
      spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k', 'count=64'], { encoding: 'utf8' });
      try {
        const r2 = await vhdkit(w.args(path.join(full, 'out.vhd')));
        expect(r2.code, describeRun(r2)).toBe(1);
        const l2 = expectOneCodedLine(r2, 'IO');
        expect(l2).toContain('ENOSPC');
        expect(l2).toContain(full);
        expect(fs.readdirSync(full), 'a temporary or partial file was left on the full file system').toEqual(['filler']);
      } finally {
        fs.rmSync(filler, { force: true });
      }
      expect(snapshot(dir)).toEqual(before);
    });
  }
});

describe('IO: EACCES (a folder the user may not write, as an unprivileged user)', () => {
  it('every writing command: exit 2, one [IO] line naming the output and EACCES; nothing written', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip(); // needs root to run the CLI as nobody (root ignores permissions)
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked, { recursive: true });
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(locked, 0o555);
    const before = snapshot(dir);
    for (const w of IO_WRITERS) {
      const r = await runProcess(process.execPath, [CLI, ...w.args(path.join(locked, 'out.vhd'))], { cwd: dir, timeoutMs: 60_000, uid: 65534, gid: 65534 });
      expect(r.code, `${w.what}\n${describeRun(r)}`).toBe(2);
      const line = expectOneCodedLine(r, 'IO');
      expect(line).toContain(path.join(locked, 'out.vhd'));
      expect(line).toContain('EACCES');
    }
    expect(snapshot(dir)).toEqual(before);
  });
});

describe('IO errors in the library', () => {
  it('codedError: a system error becomes IO naming the path and the operation; other errors pass unchanged', () => {
    let sys: unknown;
    try {
      fs.renameSync(path.join(dir, 'nope', 'a'), path.join(dir, 'b'));
    } catch (e) {
      sys = e;
    }
    const coded = codedError(sys) as VhdError;
    expect(coded).toBeInstanceOf(VhdError);
    expect(coded.code).toBe(ErrorCodes.IO);
    expect(coded.message).toContain(path.join(dir, 'nope', 'a'));
    expect(coded.message).toMatch(/rename to .*b failed \(ENOENT: no such file or directory\)/);
    // Errors the matrix cannot provoke on one file system: a rename across devices, too many open files.
    for (const [code, syscall] of [['EXDEV', 'rename'], ['EMFILE', 'open']] as const) {
      const e = Object.assign(new Error(`${code}: some reason, ${syscall} '/a/b'`), { code, syscall, path: '/a/b', dest: syscall === 'rename' ? '/c/d' : undefined });
      const c = codedError(e) as VhdError;
      expect(c.code).toBe(ErrorCodes.IO);
      expect(c.message).toBe(syscall === 'rename' ? `/a/b: rename to /c/d failed (${code}: some reason)` : `/a/b: open failed (${code}: some reason)`);
    }
    const bug = new TypeError('x is undefined');
    expect(codedError(bug)).toBe(bug);
  });

  it('exit codes come from one table beside the codes: IO by its errno, refusals 2, failures 1, bugs 1', () => {
    const io = (code: string) => new VhdError(ErrorCodes.IO, 'x', { cause: Object.assign(new Error(code), { code }) });
    expect(['ENOENT', 'EACCES', 'EISDIR', 'ENOTDIR', 'EPERM'].map((c) => exitCodeOf(io(c)))).toEqual([2, 2, 2, 2, 2]);
    expect(['ENOSPC', 'EROFS', 'EXDEV', 'EMFILE', 'EIO'].map((c) => exitCodeOf(io(c)))).toEqual([1, 1, 1, 1, 1]);
    for (const c of ['USAGE', 'SIBLINGS', 'BLOB_EXISTS', 'MERGE_PENDING', 'TARGET_DAMAGED', 'FOOTER_SIZE', 'PARENT_SIZE_MISMATCH'] as const) expect(exitCodeOf(new VhdError(c, 'x')), c).toBe(2);
    for (const c of ['ABORTED', 'LOCKED', 'AZURE', 'AZURE_AUTH', 'VERIFY_MISMATCH'] as const) expect(exitCodeOf(new VhdError(c, 'x')), c).toBe(1);
    expect(exitCodeOf(new TypeError('a bug'))).toBe(1);
  });

  it('checkOutputPath: a trailing / is a folder, refused when missing and when present', () => {
    const codeOf = (p: string) => {
      try {
        checkOutputPath(p);
        return 'ok';
      } catch (e) {
        return `${(e as VhdError).code} ${((e as VhdError).cause as { code?: string })?.code}`;
      }
    };
    expect(codeOf(path.join(dir, 'nope') + '/')).toBe('IO ENOENT');
    expect(codeOf(path.join(dir, 'sub') + '/')).toBe('IO EISDIR');
    expect(codeOf(path.join(dir, 'gen1.raw', 'x'))).toBe('IO ENOTDIR');
    expect(codeOf(path.join(dir, 'fresh.vhd'))).toBe('ok');
  });
});

describe('benchmark results (--out) are checked before a benchmark runs', () => {
  it('a path into --work through a symlinked folder is inside it too', async () => {
    const work = path.join(dir, 'bench-real-work');
    fs.mkdirSync(work, { recursive: true });
    fs.symlinkSync(work, path.join(dir, 'bench-link'));
    const out = path.join(dir, 'bench-link', 'r.json');
    const r = await runProcess(process.execPath, [path.join(repoRoot, 'bench', 'run.mjs'), '--quick', '--work', work, '--out', out], { cwd: dir, timeoutMs: 30_000 });
    expect(r.code, describeRun(r)).toBe(2);
    expect(r.stderr).toContain('inside the scratch folder');
    expect(fs.readdirSync(work)).toEqual([]);
  });

  for (const script of ['run.mjs', 'merge.mjs', 'upload.mjs']) {
    it(`bench/${script}: inside --work, ending in /, a folder, through a file: exit 2 at once, one line naming it`, async () => {
      const work = path.join(dir, `bench-work-${script}`);
      for (const [out, why] of [
        [path.join(work, 'r.json'), 'inside the scratch folder'],
        [`${path.join(dir, 'sub')}/`, 'ends in a separator'],
        [path.join(dir, 'sub'), 'is a folder'],
        [path.join(dir, 'gen1.raw', 'r.json'), 'ENOTDIR'],
      ]) {
        const r = await runProcess(process.execPath, [path.join(repoRoot, 'bench', script), '--quick', '--work', work, '--out', out], { cwd: dir, timeoutMs: 30_000 });
        expect(r.code, describeRun(r)).toBe(2);
        expect(r.stderr.trim().split('\n'), describeRun(r)).toHaveLength(1);
        expect(r.stderr).toContain(`--out ${out}`);
        expect(r.stderr).toContain(why);
        expect(r.ms, 'refused before measuring').toBeLessThan(10_000);
      }
      expect(fs.existsSync(work)).toBe(false);
    });

    it(`bench/${script}: a --work folder that holds other files and no benchmark made: exit 2 at once, nothing in it touched`, async () => {
      const work = path.join(dir, `precious-${script}`);
      fs.mkdirSync(work);
      fs.writeFileSync(path.join(work, 'important.vhd'), 'keep me');
      const before = snapshot(work);
      const r = await runProcess(process.execPath, [path.join(repoRoot, 'bench', script), '--quick', '--work', work, '--out', path.join(dir, `r-${script}.json`)], { cwd: dir, timeoutMs: 30_000 });
      expect(r.code, describeRun(r)).toBe(2);
      expect(r.stderr.trim().split('\n'), describeRun(r)).toHaveLength(1);
      expect(r.stderr).toContain(`--work ${work}: not empty and not a scratch folder`);
      expect(snapshot(work)).toEqual(before);
    });
  }
});

describe('an output made by another process while this one writes it', () => {
  it('is never replaced without --force (OUTPUT_EXISTS, its content kept, no temporary file left); with --force it is', async () => {
    const { writeAtomically } = await import('../src/io/file.js');
    const dir = tmpDir('vhdkit-outputs-race-');
    const out = path.join(dir, 'out.vhd');
    const theirs = Buffer.from('the other run wrote this first\n');
    const write = (overwrite: boolean) =>
      writeAtomically(
        out,
        async (sink) => {
          await sink.write(new Uint8Array(4096).fill(1), 0);
          fs.writeFileSync(out, theirs); // the other process lands its output meanwhile
        },
        { overwrite },
      );
    const e = await rejection(write(false));
    expect(e.code).toBe(ErrorCodes.OUTPUT_EXISTS);
    expect(e.file).toBe(out);
    expect(e.message).toContain('another process made it');
    expect(fs.readFileSync(out).equals(theirs)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(['out.vhd']);
    await write(true);
    expect(fs.statSync(out).size).toBe(4096);
    expect(fs.readdirSync(dir)).toEqual(['out.vhd']);
  });
});
