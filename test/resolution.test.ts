/**
 * Parent resolution: the first candidate that exists is the parent (it must open and carry the
 * child's parent UUID); only missing candidates and ones outside the allowed directories pass the
 * search on.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { DynamicWriter } from '../src/disk/writer.js';
import { FileSink } from '../src/io/file.js';
import { create } from '../src/ops/create.js';
import { openDisk } from '../src/ops/open.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhdkit-resolution-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function childWithLocators(file: string, parent: string, locators: Array<{ code: 'W2ku' | 'W2ru' | 'MacX'; path: string }>): Promise<void> {
  const p = await openDisk(parent);
  const sink = await FileSink.open(file, 'wx');
  const w = await DynamicWriter.create(sink, {
    virtualSize: p.virtualSize,
    uuid: new Uint8Array(16).fill(0x42),
    parent: { uuid: p.footer.uniqueId, timestamp: p.footer.timestamp, name: path.basename(parent), locators },
  });
  await w.finish();
  await sink.close();
  await p.close();
}

describe('parent resolution', () => {
  it('the first candidate that exists is the parent: one that is not a VHD, or another disk, stops the search even when a later locator names the parent', async () => {
    const d = path.join(dir, 'a');
    fs.mkdirSync(path.join(d, 'real'), { recursive: true });
    const base = path.join(d, 'real', 'base.vhd');
    await create(base, { size: 4 * 1024 * 1024 });
    const child = path.join(d, 'child.vhd');
    await childWithLocators(child, base, [
      { code: 'W2ru', path: '.\\decoy.vhd' },
      { code: 'W2ku', path: base },
    ]);
    // Missing: passed on to the next locator.
    const img = await openDisk(child);
    expect(img.chain.map((c) => c.id)).toEqual([fs.realpathSync(child), fs.realpathSync(base)]);
    await img.close();
    for (const [what, bytes, code] of [
      ['a text file', Buffer.from('this is not a disk\n'.repeat(100)), ErrorCodes.NOT_VHD],
      ['an empty file (a copy just begun)', Buffer.alloc(0), ErrorCodes.FILE_TOO_SMALL],
      ['a fixed disk cut short (a copy not finished)', Buffer.alloc(3 * 1024 * 1024), ErrorCodes.NOT_VHD],
    ] as const) {
      fs.writeFileSync(path.join(d, 'decoy.vhd'), bytes);
      const e = await openDisk(child).then(
        () => undefined,
        (x: unknown) => x as VhdError,
      );
      expect(e?.code, what).toBe(code);
      expect(e?.file, what).toBe(path.join(d, 'decoy.vhd'));
    }
    // Another disk there: its UUID is not the one the child names.
    fs.rmSync(path.join(d, 'decoy.vhd'));
    await create(path.join(d, 'decoy.vhd'), { size: 4 * 1024 * 1024 });
    const m = await openDisk(child).then(
      () => undefined,
      (x: unknown) => x as VhdError,
    );
    expect(m?.code).toBe(ErrorCodes.PARENT_UUID_MISMATCH);
    expect(m?.message).toContain('decoy.vhd');
    // info still describes the child, the broken link under its findings.
    const { info } = await import('../src/ops/info.js');
    fs.writeFileSync(path.join(d, 'decoy.vhd'), Buffer.alloc(0));
    const i = await info(child);
    expect(i.findings.map((f) => f.code)).toContain(ErrorCodes.FILE_TOO_SMALL);
  });

  it('a folder where the first candidate names the parent is the broken link (NOT_VHD naming it), not skipped', async () => {
    const d = path.join(dir, 'folder-candidate');
    fs.mkdirSync(path.join(d, 'decoy.vhd'), { recursive: true });
    const base = path.join(d, 'base.vhd');
    await create(base, { size: 4 * 1024 * 1024 });
    const child = path.join(d, 'child.vhd');
    await childWithLocators(child, base, [
      { code: 'W2ru', path: '.\\decoy.vhd' },
      { code: 'W2ku', path: base },
    ]);
    const e = await openDisk(child).then(
      () => undefined,
      (x: unknown) => x as VhdError,
    );
    expect(e?.code).toBe(ErrorCodes.NOT_VHD);
    expect(e?.message).toContain(path.join(d, 'decoy.vhd'));
    expect(e?.message).toContain('a folder');
  });

  it('a disk opened, then written before its lock is taken: refuseChangedSinceOpened says LOCKED naming it', async () => {
    const { refuseChangedSinceOpened } = await import('../src/ops/open.js');
    const f = path.join(dir, 'changed.vhd');
    await create(f, { size: 4 * 1024 * 1024 });
    const img = await openDisk(f);
    try {
      expect(() => refuseChangedSinceOpened([img], 'this merge')).not.toThrow();
      fs.utimesSync(f, new Date(), new Date(Date.now() + 5000));
      let caught: unknown;
      try {
        refuseChangedSinceOpened([img], 'this merge');
      } catch (x) {
        caught = x;
      }
      expect(caught).toMatchObject({ code: ErrorCodes.LOCKED, file: fs.realpathSync(f) });
    } finally {
      await img.close();
    }
  });

  it('reports the unusable candidate when nothing else is the parent', async () => {
    const d = path.join(dir, 'b');
    fs.mkdirSync(d, { recursive: true });
    const base = path.join(d, 'base.vhd');
    await create(base, { size: 4 * 1024 * 1024 });
    fs.writeFileSync(path.join(d, 'decoy.vhd'), 'this is not a disk\n'.repeat(100));
    const child = path.join(d, 'child.vhd');
    await childWithLocators(child, base, [{ code: 'W2ru', path: '.\\decoy.vhd' }]);
    fs.rmSync(base);
    const e = await openDisk(child).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(VhdError);
    expect((e as VhdError).code).toBe(ErrorCodes.NOT_VHD);
    expect((e as VhdError).message).toContain('decoy.vhd');
  });

  it('a copied chain whose parent is damaged is refused, never read (or merged) through the folder it was copied from', async () => {
    const { merge } = await import('../src/ops/merge.js');
    const { journalPath } = await import('../src/ops/journal.js');
    const d = path.join(dir, 'copied');
    const orig = path.join(d, 'orig');
    fs.mkdirSync(orig, { recursive: true });
    await create(path.join(orig, 'base.vhd'), { size: 4 * 1024 * 1024 });
    // Relative first, then the absolute path of the original: both name a parent with the right UUID.
    await childWithLocators(path.join(orig, 'child.vhd'), path.join(orig, 'base.vhd'), [
      { code: 'W2ru', path: '.\\base.vhd' },
      { code: 'W2ku', path: path.join(orig, 'base.vhd') },
    ]);
    const copy = path.join(d, 'copy');
    fs.cpSync(orig, copy, { recursive: true });
    const healthy = await openDisk(path.join(copy, 'child.vhd'));
    expect(healthy.parent?.id).toBe(fs.realpathSync(path.join(copy, 'base.vhd')));
    await healthy.close();
    // The copy's parent breaks (here its dynamic header; a merge caught mid-write looks the same).
    const fd = fs.openSync(path.join(copy, 'base.vhd'), 'r+');
    fs.writeSync(fd, Buffer.from('XXXXXXXX'), 0, 8, 512);
    fs.closeSync(fd);
    const before = fs.readFileSync(path.join(orig, 'base.vhd'));
    const e = await openDisk(path.join(copy, 'child.vhd')).then(
      () => undefined,
      (x: unknown) => x as VhdError,
    );
    expect(e?.code).toBe(ErrorCodes.HEADER_COOKIE);
    expect(e?.file).toBe(path.join(copy, 'base.vhd'));
    const m = await merge(path.join(copy, 'child.vhd'), { workers: 0 }).then(
      () => undefined,
      (x: unknown) => x as VhdError,
    );
    expect(m?.file).toBe(path.join(copy, 'base.vhd'));
    expect(fs.readFileSync(path.join(orig, 'base.vhd')).equals(before)).toBe(true);
    expect(fs.existsSync(journalPath(path.join(orig, 'base.vhd')))).toBe(false);
    // With a merge journal beside it, the refusal says a merge is pending there.
    fs.writeFileSync(journalPath(path.join(copy, 'base.vhd')), JSON.stringify({ version: 1, kind: 'vhdkit-merge' }));
    const p = await openDisk(path.join(copy, 'child.vhd')).then(
      () => undefined,
      (x: unknown) => x as VhdError,
    );
    expect(p?.code).toBe(ErrorCodes.MERGE_PENDING);
    expect(p?.file).toBe(path.join(copy, 'base.vhd'));
  });

  it('with allowed directories, a candidate outside them is skipped in favour of one inside', async () => {
    const d = path.join(dir, 'c');
    fs.mkdirSync(path.join(d, 'outside'), { recursive: true });
    fs.mkdirSync(path.join(d, 'inside'), { recursive: true });
    const outside = path.join(d, 'outside', 'base.vhd');
    await create(outside, { size: 4 * 1024 * 1024 });
    const inside = path.join(d, 'inside', 'base.vhd');
    fs.copyFileSync(outside, inside); // same UUID: either file is a valid parent
    const child = path.join(d, 'inside', 'child.vhd');
    // Relative locators are tried first: the first candidate is outside, the second inside.
    await childWithLocators(child, outside, [
      { code: 'W2ru', path: '..\\outside\\base.vhd' },
      { code: 'W2ku', path: inside },
    ]);
    const unconfined = await openDisk(child);
    expect(unconfined.parent?.id).toBe(fs.realpathSync(outside));
    await unconfined.close();
    const img = await openDisk(child, { allowedDirs: [path.join(d, 'inside')] });
    expect(img.parent?.id).toBe(fs.realpathSync(inside));
    await img.close();
    // Confined to a folder holding neither: refused, naming the directory rule.
    const e = await openDisk(child, { allowedDirs: [path.join(d, 'elsewhere')] }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect((e as VhdError).code).toBe(ErrorCodes.PARENT_NOT_ALLOWED);
  });
});

describe('a first candidate that exists but cannot be read is the broken link (IO), never skipped (as nobody)', () => {
  const CLI = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'dist', 'cli', 'main.js');
  for (const [what, setup, named] of [
    ['an unreadable file (mode 000)', (d: string) => fs.chmodSync(path.join(d, 'decoy.vhd'), 0o000), 'decoy.vhd'],
    ['a file in a folder that cannot be searched (mode 000)', (d: string) => fs.chmodSync(path.join(d, 'shut'), 0o000), 'shut'],
  ] as const) {
    it(`${what}: hash and check say IO EACCES naming it, and do not read the parent a later locator names`, async (ctx) => {
      if (process.getuid?.() !== 0) return ctx.skip(); // needs root to run the CLI as nobody (root ignores permissions)
      const d = path.join(dir, `eacces-${named}`);
      fs.mkdirSync(path.join(d, 'shut'), { recursive: true });
      const base = path.join(d, 'base.vhd');
      await create(base, { size: 4 * 1024 * 1024 });
      fs.copyFileSync(base, path.join(d, 'decoy.vhd')); // the parent, copied: its UUID matches
      fs.copyFileSync(base, path.join(d, 'shut', 'base.vhd'));
      const child = path.join(d, 'child.vhd');
      const first = named === 'shut' ? '.\\shut\\base.vhd' : '.\\decoy.vhd';
      await childWithLocators(child, base, [
        { code: 'W2ru', path: first },
        { code: 'W2ku', path: base },
      ]);
      for (let p = d; p !== path.dirname(dir); p = path.dirname(p)) fs.chmodSync(p, 0o755);
      for (const f of ['base.vhd', 'decoy.vhd', 'child.vhd', 'shut/base.vhd']) fs.chmodSync(path.join(d, f), 0o644);
      setup(d);
      try {
        for (const cmd of [['hash', 'child.vhd'], ['check', 'child.vhd']]) {
          const { runProcess } = await import('./helpers.js');
          const r = await runProcess(process.execPath, [CLI, ...cmd], { cwd: d, uid: 65534, gid: 65534 });
          const out = (r.stdout + r.stderr).trim();
          expect(r.code, out).not.toBe(0);
          expect(out).toContain('EACCES');
          expect(out).toContain(named);
          expect(out).toContain('[IO]');
        }
      } finally {
        fs.chmodSync(path.join(d, 'shut'), 0o755);
      }
    });
  }
});

describe('messages stay on one line', () => {
  it('a parent name and locator with line breaks and escapes are shown escaped', async () => {
    const d = path.join(dir, 'nl');
    fs.mkdirSync(d, { recursive: true });
    const base = path.join(d, 'base.vhd');
    await create(base, { size: 1024 * 1024 });
    const child = path.join(d, 'child.vhd');
    await childWithLocators(child, base, [{ code: 'W2ru', path: '.\\evil\nname\u2028x\u001b[31m.vhd' }]);
    fs.rmSync(base);
    const e = (await openDisk(child).then(
      () => undefined,
      (x: unknown) => x,
    )) as VhdError;
    expect(e).toBeInstanceOf(VhdError);
    expect(e.code).toBe(ErrorCodes.PARENT_MISSING);
    expect(e.message).not.toMatch(/[\n\r\u2028\u001b]/);
    expect(e.message).toContain('evil\\x0aname\\u2028x\\x1b[31m.vhd');
  });
});

describe('a disk with a merge pending', () => {
  it('is reported by info and check, and refused as a source by convert, hash and diff', async () => {
    const { info } = await import('../src/ops/info.js');
    const { check } = await import('../src/ops/check.js');
    const { convert } = await import('../src/ops/convert.js');
    const { hash } = await import('../src/ops/hash.js');
    const { diff } = await import('../src/ops/diff.js');
    const { journalPath } = await import('../src/ops/journal.js');
    const d = path.join(dir, 'pending');
    fs.mkdirSync(d, { recursive: true });
    const base = path.join(d, 'base.vhd');
    const child = path.join(d, 'child.vhd');
    await create(base, { size: 2 * 1024 * 1024 });
    await create(child, { parent: base });
    fs.writeFileSync(journalPath(base), JSON.stringify({ version: 1, kind: 'vhdkit-merge' }));
    expect((await info(child)).findings.map((f) => f.code)).toContain(ErrorCodes.MERGE_PENDING);
    const c = await check(base);
    expect(c.ok).toBe(false);
    expect(c.errors.map((f) => f.code)).toContain(ErrorCodes.MERGE_PENDING);
    const refused = async (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: unknown) => (e as VhdError).code,
      );
    expect(await refused(convert(child, path.join(d, 'out.raw'), { to: 'raw' }))).toBe(ErrorCodes.MERGE_PENDING);
    expect(fs.existsSync(path.join(d, 'out.raw'))).toBe(false);
    expect(await refused(hash(base, { workers: 0 }))).toBe(ErrorCodes.MERGE_PENDING);
    expect(await refused(diff(base, child, { workers: 0 }))).toBe(ErrorCodes.MERGE_PENDING);
    fs.rmSync(journalPath(base));
    expect((await check(base)).ok).toBe(true);
  });
});
