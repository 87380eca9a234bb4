/**
 * Hostile and careless use, as a review found it (issue 17): each case once lost data, left a
 * damaging file behind, silently skipped a check or gave the wrong exit code. Through the real CLI
 * unless said otherwise; every case also checks what must not have changed.
 *
 * - merge: a batch that merges a disk away and into it at once (USAGE, before anything runs); a merge
 *   into a disk another merge is reading (LOCKED: merges hold shared locks on what they read); the
 *   journal's temporary name as a symlink to the child, or a chain disk (USAGE); --search that is
 *   not a folder (IO); a parent that cannot be written leaves no journal (IO EACCES, as nobody); a
 *   journal or lock that cannot be written names itself, its temporary file only as a detail (IO);
 *   --workers beyond 256 (USAGE).
 * - outputs: a FIFO or a device is never replaced, a dangling symlink is an existing output; a
 *   manifest named as a chain disk's merge journal (USAGE); upload's --journal-dir that is a file, or
 *   under one, is refused before anything is sent (IO).
 * - inputs: a folder is IO EISDIR, exit 2.
 * - sizes: allocated blocks past the virtual size (BLOCK_PAST_SIZE) and a VHD with bytes after its
 *   footer read as raw (RAW_WITH_FOOTER) are warnings, errors under --strict.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../src/errors.js';
import { acquireLock } from '../src/ops/journal.js';
import { merge } from '../src/ops/merge.js';
import { create } from '../src/ops/create.js';
import { rejection, repoRoot, runProcess, snapshotTree, tmpDir, type ProcessRun } from './helpers.js';

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;
const CONN = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;';
const root = process.getuid?.() === 0;

let top: string;
const vhdkit = (args: string[], cwd: string, uid?: number): Promise<ProcessRun> =>
  runProcess(process.execPath, [CLI, ...args], { cwd, timeoutMs: 60_000, ...(uid !== undefined ? { uid, gid: uid } : {}) });
const show = (r: ProcessRun) => `exit ${r.code}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`;

const snapshot = snapshotTree;

/** One line `vhdkit: … [CODE]` on stderr and the exit code. */
function expectRefused(r: ProcessRun, exit: number, code: string): string {
  expect(r.code, show(r)).toBe(exit);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, show(r)).toHaveLength(1);
  expect(lines[0], show(r)).toMatch(new RegExp(`^vhdkit: .*\\[${code}\\]$`));
  return lines[0];
}

/** A chain in a folder of its own: base.vhd (4 MiB of data) <- c1.vhd (1 MiB new) <- c2.vhd (1 MiB new). */
async function chain(name: string): Promise<string> {
  const dir = path.join(top, name);
  fs.mkdirSync(dir);
  const g = Buffer.alloc(8 * MiB);
  for (let i = 0; i < 4 * MiB; i++) g[i] = (i * 13) & 0xff;
  fs.writeFileSync(path.join(dir, 'g1.raw'), g);
  g.fill(0x22, 5 * MiB, 6 * MiB);
  fs.writeFileSync(path.join(dir, 'g2.raw'), g);
  g.fill(0x33, 6 * MiB, 7 * MiB);
  fs.writeFileSync(path.join(dir, 'g3.raw'), g);
  for (const args of [
    ['convert', 'g1.raw', 'base.vhd', '--to', 'dynamic'],
    ['diff', 'base.vhd', 'g2.raw', '--out', 'c1.vhd'],
    ['diff', 'c1.vhd', 'g3.raw', '--out', 'c2.vhd'],
  ]) {
    const r = await vhdkit(args, dir);
    expect(r.code, show(r)).toBe(0);
  }
  for (const f of ['g1.raw', 'g2.raw']) fs.rmSync(path.join(dir, f));
  return dir;
}

beforeAll(() => {
  top = tmpDir('vhdkit-hostile-');
  fs.chmodSync(top, 0o755);
});

describe('merge', () => {
  it('a batch merging c1 into base and c2 into c1 is refused before any merge runs (USAGE naming both), in either order', async () => {
    const dir = await chain('batch');
    const before = snapshot(dir);
    for (const args of [['c2.vhd', 'c1.vhd'], ['c1.vhd', 'c2.vhd']]) {
      const r = await vhdkit(['merge', ...args, '--delete-child'], dir);
      const line = expectRefused(r, 2, 'USAGE');
      expect(line).toContain('c1.vhd');
      expect(line).toContain('c2.vhd');
      expect(snapshot(dir)).toEqual(before);
    }
    // One after the other, as the message says, the content of c2's chain ends in base.
    const want = JSON.parse((await vhdkit(['hash', 'c2.vhd', '--json'], dir)).stdout).digest;
    expect((await vhdkit(['merge', 'c2.vhd', '--to', 'base.vhd', '--delete-child'], dir)).code).toBe(0);
    expect(JSON.parse((await vhdkit(['hash', 'base.vhd', '--json'], dir)).stdout).digest).toBe(want);
  });

  it('a merge reads under shared locks: while c1 is being merged into (its lock held), merging c1 away is LOCKED', async () => {
    const dir = await chain('locks');
    const before = snapshot(dir);
    const release = acquireLock(path.join(dir, 'c1.vhd'), 'merge');
    try {
      const e = await rejection(merge(path.join(dir, 'c1.vhd')));
      expect(e.code).toBe(ErrorCodes.LOCKED);
      expect(e.message).toContain('c1.vhd');
    } finally {
      release();
    }
    expect(snapshot(dir)).toEqual(before);
  });

  it('a merge into a disk that hash, convert or diff is reading is LOCKED while they read; they read it unchanged, and the merge runs after', async () => {
    const { hash } = await import('../src/ops/hash.js');
    const { convert } = await import('../src/ops/convert.js');
    const { diff } = await import('../src/ops/diff.js');
    const dir = await chain('readers');
    const want = (await hash(path.join(dir, 'c2.vhd'), { workers: 0 })).digest;
    const readers: Array<[string, (onProgress: () => void) => Promise<unknown>]> = [
      ['hash', (onProgress) => hash(path.join(dir, 'c2.vhd'), { workers: 0, onProgress })],
      ['convert', (onProgress) => convert(path.join(dir, 'c2.vhd'), path.join(dir, 'out.raw'), { to: 'raw', onProgress, force: true })],
      ['diff', (onProgress) => diff(path.join(dir, 'base.vhd'), path.join(dir, 'c2.vhd'), { workers: 0, onProgress })],
    ];
    for (const [what, read] of readers) {
      const before = snapshot(dir);
      // Mid-read (the reader's thread held in its progress callback), another process merges c2 into c1.
      let during: ProcessRun | undefined;
      await read(() => {
        if (during) return;
        const r = spawnSync(process.execPath, [CLI, 'merge', 'c2.vhd', '--force'], { cwd: dir, encoding: 'utf8' });
        during = { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, ms: 0 } as ProcessRun;
      });
      expect(during, what).toBeDefined();
      expect(expectRefused(during!, 1, 'LOCKED'), what).toMatch(/c1\.vhd.*(hash|convert|diff)/);
      for (const f of ['base.vhd', 'c1.vhd', 'c2.vhd']) expect(snapshot(dir).get(f), `${what}: ${f}`).toBe(before.get(f));
    }
    expect((await hash(path.join(dir, 'out.raw'), { workers: 0 })).digest).toBe(want);
    const after = await vhdkit(['merge', 'c2.vhd', '--force'], dir);
    expect(after.code, show(after)).toBe(0);
    expect(fs.readdirSync(dir).filter((n) => n.includes('vhdkit-'))).toEqual([]);
  });

  it.runIf(root)('a reader that cannot make its read marks (a read-only mount of the folder) still never reports a mixture: LOCKED when a merge wrote meanwhile', async (ctx) => {
    const { hash } = await import('../src/ops/hash.js');
    const { convert } = await import('../src/ops/convert.js');
    const out = tmpDir('vhdkit-hostile-ro-out-');
    const readers: Array<[string, (file: string, onProgress: () => void) => Promise<unknown>]> = [
      ['hash', (file, onProgress) => hash(file, { workers: 0, onProgress })],
      ['convert', (file, onProgress) => convert(file, path.join(out, 'c1.raw'), { to: 'raw', onProgress })],
    ];
    for (const [what, read] of readers) {
      const dir = await chain(`readers-ro-${what}`);
      const ro = tmpDir('vhdkit-hostile-ro-');
      if (spawnSync('mount', ['--bind', dir, ro]).status !== 0) return ctx.skip();
      try {
        if (spawnSync('mount', ['-o', 'remount,ro,bind', ro]).status !== 0) return ctx.skip();
        // A merge into c1 (through the writable path) in the middle of the read, by another process.
        let merged: number | null = null;
        const e = await rejection(
          read(path.join(ro, 'c1.vhd'), () => {
            if (merged !== null) return;
            merged = spawnSync(process.execPath, [CLI, 'merge', 'c2.vhd', '--force', '-q'], { cwd: dir }).status;
          }),
        );
        expect(merged, what).toBe(0);
        expect(e.code, `${what}: ${e.message}`).toBe(ErrorCodes.LOCKED);
        expect(e.message, what).toContain('changed while this');
        expect(fs.existsSync(path.join(out, 'c1.raw')), what).toBe(false);
      } finally {
        spawnSync('umount', ['-l', ro]); // lazily: the pool's cache of open files may still hold it
      }
    }
  });

  it("the journal's temporary name taken by a symlink to the child, or by a disk of the chain: USAGE, nothing written", async () => {
    const dir = await chain('journal-tmp');
    fs.symlinkSync('c1.vhd', path.join(dir, 'base.vhd.vhdkit-merge.json.tmp'));
    const before = snapshot(dir);
    const r = await vhdkit(['merge', 'c1.vhd'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toContain("merge journal's temporary file");
    expect(snapshot(dir)).toEqual(before);
    fs.rmSync(path.join(dir, 'base.vhd.vhdkit-merge.json.tmp'));
    // A manifest named as a disk's merge journal would make the chain look mid-merge.
    const m = await vhdkit(['hash', 'c2.vhd', '--manifest', 'c1.vhd.vhdkit-merge.json'], dir);
    expect(expectRefused(m, 2, 'USAGE')).toMatch(/merge journal name|a name vhdkit uses for its own/);
    expect(fs.existsSync(path.join(dir, 'c1.vhd.vhdkit-merge.json'))).toBe(false);
  });

  it('--search that is missing or a file is IO (exit 2), not a silently skipped sibling check', async () => {
    const dir = await chain('search');
    const before = snapshot(dir);
    for (const [search, errno] of [
      ['kids-typo', 'ENOENT'],
      ['g3.raw', 'ENOTDIR'],
    ]) {
      const r = await vhdkit(['merge', 'c2.vhd', '--search', search], dir);
      const line = expectRefused(r, 2, 'IO');
      expect(line).toContain(search);
      expect(line).toContain(errno);
    }
    expect(snapshot(dir)).toEqual(before);
  });

  it.runIf(root)('a parent that cannot be written (as nobody, mode 444): IO EACCES, exit 2, and no journal is left', async () => {
    const dir = await chain('readonly-parent');
    fs.chmodSync(dir, 0o777);
    for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
    fs.chmodSync(path.join(dir, 'c1.vhd'), 0o444);
    const before = snapshot(dir);
    const r = await vhdkit(['merge', 'c2.vhd'], dir, 65534);
    const line = expectRefused(r, 2, 'IO');
    expect(line).toContain('EACCES');
    expect(line).toContain('c1.vhd');
    expect(snapshot(dir)).toEqual(before);
    const c = await vhdkit(['check', 'c1.vhd', '--strict'], dir);
    expect(c.code, show(c)).toBe(0);
  });

  it.runIf(root)("a folder where the lock cannot be made (as nobody, mode 555): IO naming the lock, its temporary file as a detail, nothing changed", async () => {
    const dir = await chain('readonly-folder');
    for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o666);
    fs.chmodSync(dir, 0o555);
    const before = snapshot(dir);
    try {
      const r = await vhdkit(['merge', 'c2.vhd'], dir, 65534);
      const line = expectRefused(r, 2, 'IO');
      expect(line).toMatch(/c1\.vhd\.vhdkit-lock: open of its temporary file c1\.vhd\.vhdkit-lock\.\d+\.tmp failed \(EACCES/);
      expect(snapshot(dir)).toEqual(before);
    } finally {
      fs.chmodSync(dir, 0o755);
    }
  });

  it("a journal or lock that cannot be written is an IO error naming it, not its temporary file", async () => {
    const dir = tmpDir('vhdkit-hostile-temp-');
    const notFolder = path.join(dir, 'plain-file');
    fs.writeFileSync(notFolder, 'x');
    const { writeJsonDurably } = await import('../src/io/durable.js');
    let caught: unknown;
    try {
      writeJsonDurably(path.join(notFolder, 'j.json'), { a: 1 });
    } catch (e) {
      caught = e;
    }
    expect(caught).toMatchObject({ code: ErrorCodes.IO, file: path.join(notFolder, 'j.json') });
    expect((caught as Error).message).toMatch(/of its temporary file j\.json\.tmp failed \(ENOTDIR/);
    const lock = await rejection(Promise.resolve().then(() => acquireLock(path.join(notFolder, 'd.vhd'), 'merge')));
    expect(lock).toMatchObject({ code: ErrorCodes.IO, file: path.join(notFolder, 'd.vhd.vhdkit-lock') });
    expect(lock.message).toMatch(/of its temporary file d\.vhd\.vhdkit-lock\.\d+\.tmp failed \(ENOTDIR/);
  });

  it('--workers beyond 256 is USAGE at once, for merge and hash', async () => {
    const dir = await chain('workers');
    for (const args of [
      ['merge', 'c2.vhd', '--workers', '1000000000'],
      ['merge', 'c2.vhd', '--into-copy', 'x.vhd', '--workers', '100000'],
      ['hash', 'c2.vhd', '--workers', '1000000000'],
    ]) {
      const r = await vhdkit(args, dir);
      expect(expectRefused(r, 2, 'USAGE')).toContain('--workers must be a whole number from 0 to 256');
      expect(r.ms).toBeLessThan(20_000);
    }
    expect(fs.existsSync(path.join(dir, 'x.vhd'))).toBe(false);
  });
});

describe('merge, second review', () => {
  /** P <- C <- {G, G2}: C holds 1 MiB, G and G2 1 MiB each, in one folder. */
  async function family(name: string): Promise<string> {
    const dir = await chain(name);
    for (const [a, b] of [['base.vhd', 'P.vhd'], ['c1.vhd', 'C.vhd'], ['c2.vhd', 'G.vhd']]) fs.renameSync(path.join(dir, a), path.join(dir, b));
    // c1's and c2's locators name base.vhd and c1.vhd: rebuild the chain under the new names.
    fs.rmSync(path.join(dir, 'C.vhd'));
    fs.rmSync(path.join(dir, 'G.vhd'));
    const g = fs.readFileSync(path.join(dir, 'g3.raw'));
    g.fill(0x77, 2 * MiB, 3 * MiB);
    fs.writeFileSync(path.join(dir, 'g4.raw'), g);
    for (const args of [
      ['create', 'C.vhd', '--parent', 'P.vhd'],
      ['diff', 'C.vhd', 'g3.raw', '--out', 'G.vhd'],
      ['diff', 'C.vhd', 'g4.raw', '--out', 'G2.vhd'],
    ]) {
      const r = await vhdkit(args, dir);
      expect(r.code, show(r)).toBe(0);
    }
    return dir;
  }

  it('disks that read through what a merge changes or deletes are named and the merge refused (SIBLINGS): --to over a disk with another child, --delete-child of a parent', async () => {
    const dir = await family('dependents');
    const before = snapshot(dir);
    const to = await vhdkit(['merge', 'G.vhd', '--to', 'P.vhd'], dir);
    expect(expectRefused(to, 2, 'SIBLINGS')).toContain('G2.vhd');
    const del = await vhdkit(['merge', 'C.vhd', '--delete-child'], dir);
    const line = expectRefused(del, 2, 'SIBLINGS');
    expect(line).toContain('--delete-child would delete the parent of');
    expect(line).toContain('G.vhd');
    expect(line).toContain('G2.vhd');
    const copy = await vhdkit(['merge', 'C.vhd', '--into-copy', 'merged.vhd', '--delete-child'], dir);
    expect(expectRefused(copy, 2, 'SIBLINGS')).toContain('G2.vhd');
    expect(snapshot(dir)).toEqual(before);
    // Into a copy without deleting anything: nothing else reads through the copy.
    expect((await vhdkit(['merge', 'G.vhd', '--to', 'P.vhd', '--into-copy', 'flat.vhd'], dir)).code).toBe(0);
  });

  it('--to in place without --delete-child would leave the disks between reading wrong: SIBLINGS naming them, nothing written; --force merges and names them', async () => {
    const dir = await chain('between');
    const before = snapshot(dir);
    const line = expectRefused(await vhdkit(['merge', 'c2.vhd', '--to', 'base.vhd'], dir), 2, 'SIBLINGS');
    expect(line).toContain('the disks between the child and the target would read wrong after the merge');
    expect(line).toContain('c1.vhd');
    expect(line).toContain('--delete-child');
    expect(snapshot(dir)).toEqual(before);
    const want = JSON.parse((await vhdkit(['hash', 'c2.vhd', '--json'], dir)).stdout).digest;
    const forced = await vhdkit(['merge', 'c2.vhd', '--to', 'base.vhd', '--force'], dir);
    expect(forced.code, show(forced)).toBe(0);
    expect(forced.stdout).toMatch(/note: .*c1\.vhd no longer read as before/);
    expect(JSON.parse((await vhdkit(['hash', 'base.vhd', '--json'], dir)).stdout).digest).toBe(want);
  });

  it.runIf(spawnSync('qemu-io', ['--version']).status === 0)('an interrupted merge whose child was written since (a new block): the rerun merges it as it is now, with a warning, and deletes it only then', async () => {
    const dir = await chain('written-since');
    fs.rmSync(path.join(dir, 'c2.vhd'));
    const ac = new AbortController();
    const e = await rejection(merge(path.join(dir, 'c1.vhd'), { deleteChild: true, signal: ac.signal, onProgress: () => ac.abort(new Error('test interruption')) }));
    expect(e.code).toBe(ErrorCodes.ABORTED);
    // Written while the merge was stopped: block 3 (7 MiB on), which neither c1 nor base held.
    const q = spawnSync('qemu-io', ['-f', 'vpc', path.join(dir, 'c1.vhd'), '-c', 'write -P 0xab 7340032 262144']);
    expect(q.status, q.stderr?.toString()).toBe(0);
    const want = Buffer.alloc(8 * MiB);
    for (let i = 0; i < 4 * MiB; i++) want[i] = (i * 13) & 0xff;
    want.fill(0x22, 5 * MiB, 6 * MiB);
    want.fill(0xab, 7 * MiB, 7 * MiB + 262144);
    const r = await merge(path.join(dir, 'c1.vhd'), { deleteChild: true });
    expect(r.resumed).toBe(true);
    expect(r.warnings.map((w) => w.message).join('\n')).toMatch(/c1\.vhd.*changed since the interrupted merge into .*base\.vhd began; merged again/);
    expect(fs.existsSync(path.join(dir, 'c1.vhd'))).toBe(false);
    fs.writeFileSync(path.join(dir, 'want.raw'), want);
    const digest = async (f: string) => JSON.parse((await vhdkit(['hash', f, '--json'], dir)).stdout).digest;
    expect(await digest('base.vhd'), 'base reads as c1 did when merged').toBe(await digest('want.raw'));
    expect((await vhdkit(['check', 'base.vhd', '--strict'], dir)).code).toBe(0);
  });

  const hasQemuIo = spawnSync('qemu-io', ['--version']).status === 0;
  for (const to of [false, true]) {
    it.runIf(hasQemuIo)(`--delete-child${to ? ' --to' : ''}: a child written by another program while the merge runs is kept (and what it reads through), with warnings`, async () => {
      const dir = await chain(`written-during-${to}`);
      if (!to) fs.rmSync(path.join(dir, 'c2.vhd'));
      const child = path.join(dir, to ? 'c2.vhd' : 'c1.vhd');
      let wrote = false;
      const r = await merge(child, {
        deleteChild: true,
        ...(to ? { to: path.join(dir, 'base.vhd') } : {}),
        onProgress: () => {
          if (wrote) return;
          wrote = true;
          const q = spawnSync('qemu-io', ['-f', 'vpc', child, '-c', 'write -P 0xab 7340032 65536']);
          expect(q.status, q.stderr?.toString()).toBe(0);
        },
      });
      expect(wrote).toBe(true);
      expect(r.deleted).toEqual([]);
      const said = r.warnings.map((w) => w.message).join('\n');
      expect(said).toMatch(new RegExp(`${path.basename(child)}: not deleted: it changed after it was merged`));
      if (to) expect(said).toMatch(/c1\.vhd: not deleted: .*c2\.vhd reads through it/);
      for (const f of to ? ['c1.vhd', 'c2.vhd'] : ['c1.vhd']) expect(fs.existsSync(path.join(dir, f)), f).toBe(true);
      expect(fs.readdirSync(dir).filter((n) => n.includes('vhdkit-'))).toEqual([]);
    });
  }

  it('--into-copy --resume with nothing pending: USAGE naming the copy, and no copy made; --to into a copy invalidates nothing', async () => {
    const dir = await chain('copy-resume');
    const r = await vhdkit(['merge', 'c2.vhd', '--to', 'base.vhd', '--into-copy', 'flat.vhd', '--resume'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toMatch(/flat\.vhd: no merge into this copy is pending/);
    expect(fs.readdirSync(dir).filter((n) => n.includes('flat'))).toEqual([]);
    const ok = await vhdkit(['merge', 'c2.vhd', '--to', 'base.vhd', '--into-copy', 'flat.vhd', '--json'], dir);
    expect(ok.code, show(ok)).toBe(0);
    expect(JSON.parse(ok.stdout).invalidated).toEqual([]);
  });

  it('a disk with a merge pending, named through a symlink: MERGE_PENDING all the same (the journal is beside the real file)', async () => {
    const dir = await chain('pending-alias');
    fs.rmSync(path.join(dir, 'c2.vhd'));
    fs.symlinkSync('base.vhd', path.join(dir, 'alias.vhd'));
    const ac = new AbortController();
    expect((await rejection(merge(path.join(dir, 'c1.vhd'), { signal: ac.signal, onProgress: () => ac.abort(new Error('test interruption')) }))).code).toBe(ErrorCodes.ABORTED);
    for (const args of [['hash', 'alias.vhd'], ['convert', 'alias.vhd', 'out.raw', '--to', 'raw']]) expectRefused(await vhdkit(args, dir), 2, 'MERGE_PENDING');
    expect(fs.existsSync(path.join(dir, 'out.raw'))).toBe(false);
    const chk = await vhdkit(['check', 'alias.vhd'], dir);
    expect(chk.stdout + chk.stderr).toContain('MERGE_PENDING');
    expect(chk.code).toBe(1);
  });

  it('a merge that begins and ends between a reader\'s open and its read marks: the reader is LOCKED naming the disk (identity taken at the open)', async () => {
    const dir = await chain('open-then-merge');
    const { holdReading, openAny } = await import('../src/ops/open.js');
    const { disk } = await openAny(path.join(dir, 'c2.vhd'));
    try {
      expect((await merge(path.join(dir, 'c1.vhd'), { force: true })).sectorsMerged).toBeGreaterThan(0);
      const e = await rejection(Promise.resolve().then(() => holdReading(disk, path.join(dir, 'c2.vhd'), 'hash')));
      expect(e.code).toBe(ErrorCodes.LOCKED);
      expect(e.file).toBe(path.join(dir, 'base.vhd'));
      expect(e.message).toContain('it changed while this hash read it');
    } finally {
      await disk.close();
    }
  });

  it('--delete-child while another process reads the child (an upload\'s shared lock): LOCKED, nothing deleted', async () => {
    const dir = await chain('delete-read');
    const { acquireSharedLock } = await import('../src/ops/journal.js');
    const release = acquireSharedLock(path.join(dir, 'c2.vhd'), 'upload');
    try {
      const e = await rejection(merge(path.join(dir, 'c2.vhd'), { intoCopy: path.join(dir, 'x.vhd'), deleteChild: true }));
      expect(e.code).toBe(ErrorCodes.LOCKED);
      expect(fs.existsSync(path.join(dir, 'c2.vhd'))).toBe(true);
      expect(fs.existsSync(path.join(dir, 'x.vhd'))).toBe(false);
    } finally {
      release();
    }
  });

  it('a second --into-copy into the same copy while one runs (its work file locked): LOCKED, the copy left to the first', async () => {
    const dir = await chain('copy-race');
    const release = acquireLock(path.join(dir, '.x.vhd.vhdkit-copy'), 'merge');
    try {
      const e = await rejection(merge(path.join(dir, 'c2.vhd'), { intoCopy: path.join(dir, 'x.vhd') }));
      expect(e.code).toBe(ErrorCodes.LOCKED);
      expect(fs.existsSync(path.join(dir, 'x.vhd'))).toBe(false);
    } finally {
      release();
    }
  });

  it('a stale lock is taken over by one process at a time: a fresh takeover mark means LOCKED, an old one is cleared', async () => {
    const dir = await chain('takeover');
    const lock = path.join(dir, 'c1.vhd.vhdkit-lock');
    const dead = JSON.stringify({ pid: 2 ** 22 + 12345, host: (await import('node:os')).hostname(), what: 'merge', since: new Date().toISOString() });
    fs.writeFileSync(lock, dead);
    fs.writeFileSync(`${lock}.takeover`, '{}');
    expect(() => acquireLock(path.join(dir, 'c1.vhd'), 'merge')).toThrow(expect.objectContaining({ code: ErrorCodes.LOCKED }));
    const old = new Date(Date.now() - 60_000);
    fs.utimesSync(`${lock}.takeover`, old, old);
    const release = acquireLock(path.join(dir, 'c1.vhd'), 'merge');
    expect(JSON.parse(fs.readFileSync(lock, 'utf8')).pid).toBe(process.pid);
    release();
    expect(fs.existsSync(`${lock}.takeover`)).toBe(false);
  });

  it("outputs named like vhdkit's own locks, marks, journals and work files are refused (USAGE)", async () => {
    const dir = await chain('own-names');
    for (const name of ['c1.vhd.vhdkit-lock', 'c1.vhd.vhdkit-read.123.abcdef', 'base.vhd.vhdkit-merge.json.tmp', 'base.vhd.vhdkit-lock.42.tmp', '.x.vhd.vhdkit-copy']) {
      const r = await vhdkit(['convert', 'c2.vhd', name, '--to', 'raw'], dir);
      expect(expectRefused(r, 2, 'USAGE'), name).toContain('a name vhdkit uses for its own');
      expect(fs.existsSync(path.join(dir, name))).toBe(false);
    }
    const m = await vhdkit(['merge', 'c2.vhd', '--into-copy', 'base.vhd.vhdkit-lock'], dir);
    expectRefused(m, 2, 'USAGE');
  });

  it('a file name with a newline is printed escaped, on one line', async () => {
    const dir = await chain('newline');
    fs.copyFileSync(path.join(dir, 'g3.raw'), path.join(dir, 'a\nb.raw'));
    const r = await vhdkit(['hash', 'a\nb.raw'], dir);
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout).toContain('a\\x0ab.raw');
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(2);
  });
});

describe('outputs and inputs', () => {
  it('a FIFO output is never replaced (USAGE, with --force); a dangling symlink is an existing output', async () => {
    const dir = await chain('special');
    spawnSync('mkfifo', [path.join(dir, 'pipe')]);
    fs.symlinkSync('missing.raw', path.join(dir, 'dangling'));
    const before = snapshot(dir);
    expect(before.get('pipe')).toBe('fifo');
    const r = await vhdkit(['convert', 'c2.vhd', 'pipe', '--to', 'raw', '--force'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toContain('is a FIFO');
    const d = await vhdkit(['convert', 'c2.vhd', 'dangling', '--to', 'raw'], dir);
    expectRefused(d, 2, 'OUTPUT_EXISTS');
    expect(snapshot(dir)).toEqual(before);
  });

  it.runIf(root)('a character device output is never replaced, even with --force', async () => {
    const dir = await chain('device');
    spawnSync('mknod', [path.join(dir, 'null'), 'c', '1', '3']);
    const r = await vhdkit(['convert', 'c2.vhd', 'null', '--to', 'raw', '--force'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toContain('is a character device');
    expect(fs.statSync(path.join(dir, 'null')).isCharacterDevice()).toBe(true);
  });

  it("upload: a --journal-dir that is a file, or under one, is IO (exit 2) before anything is sent", async () => {
    const dir = await chain('journal-dir');
    for (const jd of ['g3.raw', 'g3.raw/sub']) {
      const r = await vhdkit(['upload', 'c2.vhd', 'images/x', '--connection-string', CONN, '--journal-dir', jd], dir);
      const line = expectRefused(r, 2, 'IO');
      expect(line).toContain('journal folder');
      expect(line).toContain('ENOTDIR');
      expect(r.stderr).not.toContain('AccountKey');
    }
  });

  it("upload: an input named as the journal's temporary file in --journal-dir is refused (USAGE), nothing sent or changed", async () => {
    const dir = await chain('journal-tmp-upload');
    const url = 'http://127.0.0.1:9/devstoreaccount1/images/x';
    const tmp = path.join(dir, `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.json.tmp`);
    fs.linkSync(path.join(dir, 'c2.vhd'), tmp);
    const before = snapshot(dir);
    const r = await vhdkit(['upload', 'c2.vhd', 'images/x', '--connection-string', CONN, '--journal-dir', '.'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toContain("upload journal's temporary file is the same file as the input");
    expect(snapshot(dir)).toEqual(before);
  });

  it('a folder as the input is IO EISDIR, exit 2, for every command', async () => {
    const dir = await chain('folder-input');
    fs.mkdirSync(path.join(dir, 'sub'));
    for (const args of [['info', 'sub'], ['hash', 'sub'], ['convert', 'sub', 'o.raw', '--to', 'raw'], ['diff', 'sub', 'c2.vhd'], ['merge', 'sub']]) {
      const r = await vhdkit(args, dir);
      expect(expectRefused(r, 2, 'IO')).toContain('EISDIR');
    }
  });
});

/** Sets the current size in both footers of a dynamic or differencing VHD (checksums fixed up). */
function setCurrentSize(file: string, size: number): void {
  const b = fs.readFileSync(file);
  for (const at of [0, b.length - 512]) {
    b.writeBigUInt64BE(BigInt(size), at + 48);
    b.writeUInt32BE(0, at + 64);
    let sum = 0;
    for (let i = at; i < at + 512; i++) sum += b[i];
    b.writeUInt32BE(~sum >>> 0, at + 64);
  }
  fs.writeFileSync(file, b);
}

describe('a merge that grows its target reads as the chain did past the old size', () => {
  /** T: `size` of 0xAB; C: a child of T of the same size with 4 KiB of 0x11 at 0; then T cut to `cut`. */
  async function grown(name: string, size: number, cut: number): Promise<string> {
    const dir = path.join(top, name);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 't.raw'), Buffer.alloc(size, 0xab));
    const c = Buffer.alloc(size, 0xab);
    c.fill(0x11, 0, 4096);
    fs.writeFileSync(path.join(dir, 'c.raw'), c);
    for (const args of [
      ['convert', 't.raw', 'T.vhd', '--to', 'dynamic'],
      ['diff', 'T.vhd', 'c.raw', '--out', 'C.vhd'],
    ]) {
      const r = await vhdkit(args, dir);
      expect(r.code, show(r)).toBe(0);
    }
    setCurrentSize(path.join(dir, 'T.vhd'), cut);
    return dir;
  }

  for (const [what, size, cut] of [
    ['the rest of the block holding the old end (PARENT_SIZE_MISMATCH)', 4 * MiB, 3 * MiB],
    ['stale blocks past the old size (BLOCK_PAST_SIZE)', 8 * MiB, 4 * MiB],
  ] as const) {
    it(`${what}: zeros there after the merge, as the child read them`, async () => {
      const dir = await grown(what.startsWith('the rest') ? 'grow-partial' : 'grow-stale', size, cut);
      const before = JSON.parse((await vhdkit(['hash', 'C.vhd', '--json'], dir)).stdout);
      expect(before.virtualSize).toBe(size);
      const r = await vhdkit(['merge', 'C.vhd'], dir);
      expect(r.code, show(r)).toBe(0);
      const after = JSON.parse((await vhdkit(['hash', 'T.vhd', '--json'], dir)).stdout);
      expect(after.virtualSize).toBe(size);
      expect(after.digest, 'T after the merge reads as C did').toBe(before.digest);
      const strict = await vhdkit(['check', 'T.vhd', '--strict'], dir);
      expect(strict.code, show(strict)).toBe(0);
    });
  }

  for (const kind of ['dynamic', 'fixed'] as const) it(`--to over a disk smaller than a ${kind} target: the chain read zeros past that disk, and so does the merged target`, async () => {
    const dir = path.join(top, `mask-${kind}`);
    fs.mkdirSync(dir);
    const t = Buffer.alloc(4 * MiB, 0xab);
    fs.writeFileSync(path.join(dir, 't.raw'), t);
    t.fill(0x11, 0, 4096);
    fs.writeFileSync(path.join(dir, 'a.raw'), t);
    t.fill(0x22, 3 * MiB + 8192, 3 * MiB + 12288);
    fs.writeFileSync(path.join(dir, 'b.raw'), t);
    for (const args of [
      kind === 'dynamic' ? ['convert', 't.raw', 'T.vhd', '--to', 'dynamic', '--block-size', '512K'] : ['convert', 't.raw', 'T.vhd', '--to', 'fixed'],
      ['diff', 'T.vhd', 'a.raw', '--out', 'A.vhd'],
      ['diff', 'A.vhd', 'b.raw', '--out', 'B.vhd'],
    ]) {
      const r = await vhdkit(args, dir);
      expect(r.code, show(r)).toBe(0);
    }
    setCurrentSize(path.join(dir, 'A.vhd'), MiB + 512);
    const before = JSON.parse((await vhdkit(['hash', 'B.vhd', '--json'], dir)).stdout).digest;
    const r = await vhdkit(['merge', 'B.vhd', '--to', 'T.vhd', '--delete-child'], dir);
    expect(r.code, show(r)).toBe(0);
    expect(JSON.parse((await vhdkit(['hash', 'T.vhd', '--json'], dir)).stdout).digest, 'T reads as B did').toBe(before);
    expect((await vhdkit(['check', 'T.vhd', '--strict'], dir)).code).toBe(0);
  });

  it('a differencing target whose own parent is larger than it would show that parent through: refused (USAGE), nothing written', async () => {
    const dir = path.join(top, 'grow-diff');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'b.raw'), Buffer.alloc(8 * MiB, 0xab));
    for (const args of [
      ['convert', 'b.raw', 'B.vhd', '--to', 'dynamic'],
      ['create', 'T.vhd', '--parent', 'B.vhd'],
      ['create', 'C.vhd', '--parent', 'T.vhd'],
    ]) {
      const r = await vhdkit(args, dir);
      expect(r.code, show(r)).toBe(0);
    }
    setCurrentSize(path.join(dir, 'T.vhd'), 4 * MiB);
    const before = snapshot(dir);
    const r = await vhdkit(['merge', 'C.vhd', '--force'], dir);
    expect(expectRefused(r, 2, 'USAGE')).toContain('would then show through');
    expect(snapshot(dir)).toEqual(before);
  });
});

describe('sizes', () => {
  it('BLOCK_PAST_SIZE: a block allocated past the current size is a warning naming its BAT entry; --strict refuses', async () => {
    const dir = path.join(top, 'past-size');
    fs.mkdirSync(dir);
    const raw = Buffer.alloc(8 * MiB);
    raw.fill(0x44, 6 * MiB + 4096, 6 * MiB + 8192); // in block 3 (6-8 MiB)
    raw.fill(0x11, 0, 4096);
    fs.writeFileSync(path.join(dir, 'r.raw'), raw);
    expect((await vhdkit(['convert', 'r.raw', 'd.vhd', '--to', 'dynamic'], dir)).code).toBe(0);
    // Both footers say 6 MiB: the BAT keeps its 4 entries, the last one allocated.
    const b = fs.readFileSync(path.join(dir, 'd.vhd'));
    for (const at of [0, b.length - 512]) {
      b.writeBigUInt64BE(BigInt(6 * MiB), at + 48);
      b.writeUInt32BE(0, at + 64);
      let sum = 0;
      for (let i = at; i < at + 512; i++) sum += b[i];
      b.writeUInt32BE(~sum >>> 0, at + 64);
    }
    fs.writeFileSync(path.join(dir, 'd.vhd'), b);
    const c = JSON.parse((await vhdkit(['check', 'd.vhd', '--json'], dir)).stdout);
    expect(c.ok).toBe(true);
    expect(c.warnings.map((w: { code: string }) => w.code)).toEqual(['BLOCK_PAST_SIZE']);
    expect(c.warnings.find((w: { code: string }) => w.code === 'BLOCK_PAST_SIZE').message).toContain('1 allocated block past the virtual size (6291456 bytes), from BAT entry 3');
    const conv = await vhdkit(['convert', 'd.vhd', 'd.raw', '--to', 'raw'], dir);
    expect(conv.code, show(conv)).toBe(0);
    expect(conv.stderr).toContain('[BLOCK_PAST_SIZE]');
    expect(fs.statSync(path.join(dir, 'd.raw')).size).toBe(6 * MiB);
    expectRefused(await vhdkit(['convert', 'd.vhd', 'd2.raw', '--to', 'raw', '--strict'], dir), 2, 'BLOCK_PAST_SIZE');
  });

  it('RAW_WITH_FOOTER: a fixed VHD with bytes after its footer, not named .vhd, reads as raw with a warning; --strict refuses', async () => {
    const dir = path.join(top, 'raw-footer');
    fs.mkdirSync(dir);
    await create(path.join(dir, 'f.vhd'), { size: MiB, type: 'fixed' });
    fs.writeFileSync(path.join(dir, 'f.img'), Buffer.concat([fs.readFileSync(path.join(dir, 'f.vhd')), Buffer.alloc(512, 0x55)]));
    const r = await vhdkit(['hash', 'f.img'], dir);
    expect(r.code, show(r)).toBe(0);
    expect(r.stderr).toMatch(/a VHD footer is at offset 1048576, 512 bytes before the end.*\[RAW_WITH_FOOTER\]/);
    expectRefused(await vhdkit(['hash', 'f.img', '--strict'], dir), 2, 'RAW_WITH_FOOTER');
    // The word by chance in data (no valid footer) is no finding.
    const junk = Buffer.alloc(MiB);
    junk.write('conectix', MiB - 2000, 'latin1');
    fs.writeFileSync(path.join(dir, 'j.img'), junk);
    expect((await vhdkit(['hash', 'j.img', '--strict'], dir)).code).toBe(0);
  });
});
