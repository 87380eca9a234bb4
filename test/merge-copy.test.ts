/**
 * `merge --into-copy` interrupted at any point: running it again ends with the merged copy, and the
 * original parent is never written.
 */
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { FileSink } from '../src/io/file.js';
import { create, parentLinkFor } from '../src/ops/create.js';
import { hash } from '../src/ops/hash.js';
import { merge } from '../src/ops/merge.js';
import { openDisk } from '../src/ops/open.js';
import { mulberry32, repoRoot } from './helpers.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const cli = path.join(repoRoot, 'dist', 'cli', 'main.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhdkit-merge-copy-'));
const MiB = 1024 * 1024;
let pristine: { parent: Buffer; child: Buffer; sibling: Buffer; digest: string };

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const sha = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex');

/** base (64 MiB, a few blocks) ← child (partial blocks, 24 MiB of data) and ← sibling. */
beforeAll(async () => {
  const d = path.join(dir, 'pristine');
  fs.mkdirSync(d);
  const base = path.join(d, 'base.vhd');
  await create(base, { size: 64 * MiB });
  const r = mulberry32(5);
  const parent = await openDisk(base);
  const child = path.join(d, 'child.vhd');
  const sink = await FileSink.open(child, 'wx');
  const w = await DynamicWriter.create(sink, {
    virtualSize: 64 * MiB,
    uuid: crypto.randomBytes(16),
    parent: parentLinkFor(child, base, parent.footer.uniqueId, parent.footer.timestamp),
  });
  await parent.close();
  for (let b = 0; b < 32; b += 2) {
    const data = new Uint8Array(2 * MiB);
    for (let i = 0; i < data.length; i += 4096) data[i] = (r() * 255) | 1;
    const bitmap = new Uint8Array(512);
    for (let s = 0; s < 4096; s++) if (r() < 0.7) bitmap[s >> 3] |= 0x80 >> (s & 7);
    await w.writeBlock(b, data, bitmap);
  }
  await w.finish();
  await sink.close();
  await create(path.join(d, 'sibling.vhd'), { parent: base });
  pristine = {
    parent: fs.readFileSync(base),
    child: fs.readFileSync(child),
    sibling: fs.readFileSync(path.join(d, 'sibling.vhd')),
    digest: (await hash(child, { workers: 0 })).digest,
  };
});

function fresh(name: string): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'base.vhd'), pristine.parent);
  fs.writeFileSync(path.join(d, 'child.vhd'), pristine.child);
  fs.writeFileSync(path.join(d, 'sibling.vhd'), pristine.sibling);
  return d;
}

describe('merge --into-copy, interrupted', () => {
  it('a leftover working copy without a journal is discarded and the merge starts over', async () => {
    const d = fresh('leftover');
    fs.writeFileSync(path.join(d, '.merged.vhd.vhdkit-copy'), 'half a copy');
    const r = await merge(path.join(d, 'child.vhd'), { intoCopy: path.join(d, 'merged.vhd') });
    expect(r.target).toBe(path.join(d, 'merged.vhd'));
    expect((await hash(path.join(d, 'merged.vhd'), { workers: 0 })).digest).toBe(pristine.digest);
    expect(fs.readdirSync(d).sort()).toEqual(['base.vhd', 'child.vhd', 'merged.vhd', 'sibling.vhd']);
  });

  it('killed at random instants, then run again: the copy holds the merged content, the originals are untouched', async () => {
    const r = mulberry32(17);
    const outcomes = { killedBeforeDone: 0, finishedFirst: 0 };
    for (let round = 0; round < 10; round++) {
      const d = fresh(`kill-${round}`);
      const args = [cli, 'merge', 'child.vhd', '--into-copy', 'merged.vhd', '--json'];
      const first = spawn(process.execPath, args, { cwd: d, stdio: 'ignore' });
      const delay = Math.floor(r() * 1200);
      const timer = setTimeout(() => first.kill('SIGKILL'), delay);
      const code = await new Promise<number | null>((resolve) => first.on('exit', (c) => resolve(c)));
      clearTimeout(timer);
      if (code === 0) outcomes.finishedFirst++;
      else if (code !== null) throw new Error(`round ${round}: the first run exited with ${code}, not killed`);
      else outcomes.killedBeforeDone++;
      if (code !== 0) {
        const again = spawnSync(process.execPath, args, { cwd: d, encoding: 'utf8' });
        expect(again.status, `round ${round}, killed after ${delay} ms: ${again.stderr}`).toBe(0);
      }
      expect((await hash(path.join(d, 'merged.vhd'), { workers: 0 })).digest, `round ${round}`).toBe(pristine.digest);
      expect(sha(fs.readFileSync(path.join(d, 'base.vhd')))).toBe(sha(pristine.parent));
      expect(sha(fs.readFileSync(path.join(d, 'sibling.vhd')))).toBe(sha(pristine.sibling));
      expect(sha(fs.readFileSync(path.join(d, 'child.vhd')))).toBe(sha(pristine.child));
      expect(fs.readdirSync(d).sort()).toEqual(['base.vhd', 'child.vhd', 'merged.vhd', 'sibling.vhd']);
      const chk = spawnSync(process.execPath, [cli, 'check', '--strict', 'merged.vhd'], { cwd: d, encoding: 'utf8' });
      expect(chk.status, chk.stdout).toBe(0);
    }
    console.log(`merge --into-copy kills: ${JSON.stringify(outcomes)}`);
    expect(outcomes.killedBeforeDone).toBeGreaterThan(0);
  });
});

describe('merge --into-copy: a finished copy, a copy that is stale, and --delete-child', () => {
  it('run again on an unchanged chain: done, nothing merged; after the child was written to since: OUTPUT_EXISTS, the old copy kept', async () => {
    const d = fresh('stale');
    const child = path.join(d, 'child.vhd');
    const out = path.join(d, 'merged.vhd');
    await merge(child, { intoCopy: out, workers: 0 });
    const again = await merge(child, { intoCopy: out, workers: 0 });
    expect(again).toMatchObject({ resumed: true, sectorsMerged: 0, sources: [fs.realpathSync(child)] });
    const copy = fs.readFileSync(out);
    // The child written to (a VM ran on it): its mtime moves; the copy no longer holds the merge of it.
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(child, later, later);
    const e = await merge(child, { intoCopy: out, workers: 0 }).then(
      () => undefined,
      (x: unknown) => x as { code?: string },
    );
    expect(e?.code).toBe('OUTPUT_EXISTS');
    expect(fs.readFileSync(out).equals(copy)).toBe(true);
  });

  it('--delete-child: the children go only once the copy has its name; a rerun after that point deletes them', async () => {
    const d = fresh('delete-late');
    const child = path.join(d, 'child.vhd');
    const out = path.join(d, 'merged.vhd');
    // Another process takes the copy's name while the merge runs: refused, the child kept, the merged work file kept.
    let intruded = false;
    const e = await merge(child, {
      intoCopy: out,
      deleteChild: true,
      workers: 0,
      onProgress: () => {
        if (!intruded) fs.writeFileSync(out, 'made by another process');
        intruded = true;
      },
    }).then(
      () => undefined,
      (x: unknown) => x as { code?: string; message?: string },
    );
    expect(e?.code).toBe('OUTPUT_EXISTS');
    expect(e?.message).toContain('another process made it');
    expect(fs.readFileSync(child).equals(pristine.child)).toBe(true);
    expect(fs.readFileSync(out, 'utf8')).toBe('made by another process');
    fs.rmSync(out);
    // The state a run killed after the rename leaves (the copy in place, the child still there),
    // made here by a merge without --delete-child: the rerun with it only deletes.
    await merge(child, { intoCopy: out, workers: 0 });
    const real = fs.realpathSync(child);
    const r = await merge(child, { intoCopy: out, deleteChild: true, workers: 0 });
    expect(r).toMatchObject({ resumed: true, sectorsMerged: 0, deleted: [real] });
    // Killed inside the rename itself (the copy linked at its name, the work name not yet removed).
    const d2 = fresh('delete-mid-rename');
    await merge(path.join(d2, 'child.vhd'), { intoCopy: path.join(d2, 'merged.vhd'), workers: 0 });
    fs.linkSync(path.join(d2, 'merged.vhd'), path.join(d2, '.merged.vhd.vhdkit-copy'));
    const r2 = await merge(path.join(d2, 'child.vhd'), { intoCopy: path.join(d2, 'merged.vhd'), deleteChild: true, workers: 0 });
    expect(r2).toMatchObject({ resumed: true, sectorsMerged: 0 });
    expect(r2.deleted).toHaveLength(1);
    expect(fs.readdirSync(d2).sort()).toEqual(['base.vhd', 'merged.vhd', 'sibling.vhd']);
    expect((await hash(path.join(d2, 'merged.vhd'), { workers: 0 })).digest).toBe(pristine.digest);
    expect(fs.existsSync(child)).toBe(false);
    expect((await hash(out, { workers: 0 })).digest).toBe(pristine.digest);
    expect(fs.readdirSync(d).sort()).toEqual(['base.vhd', 'merged.vhd', 'sibling.vhd']);
  });
});
