/**
 * Sizes that disagree are findings, never silent truncation (issue 17, class 3): the footer's
 * current size, the file's length, the CHS geometry, the BAT's span and the parent's size, each
 * finding named by its code, with the policy of the README's table: a warning where the data still
 * reads one way (check passes, --strict refuses, reading commands warn), an error where it cannot;
 * `--size-from file` reads a fixed disk by its file. The same policy for check, convert, hash,
 * merge and upload.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes, VhdError } from '../src/errors.js';
import { checkBatSpan, checkExtraEntries, checkGeometry, fixedVirtualSize } from '../src/disk/sizes.js';
import { decodeFooter } from '../src/format/footer.js';
import { create } from '../src/ops/create.js';
import { openDisk } from '../src/ops/open.js';
import { hasQemu, repoRoot, runProcess, tmpDir, type ProcessRun } from './helpers.js';

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const MiB = 1024 * 1024;
const CONN = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;';
let dir: string;

const vhdkit = (args: string[]): Promise<ProcessRun> => runProcess(process.execPath, [CLI, ...args], { cwd: dir, timeoutMs: 60_000 });
const show = (r: ProcessRun) => `exit ${r.code}\nstdout: ${r.stdout.slice(0, 1500)}\nstderr: ${r.stderr.slice(0, 1500)}`;
const json = (r: ProcessRun) => JSON.parse(r.stdout);

/** A fixed VHD of `size` bytes of patterned data, then `extra` more bytes (or fewer, if negative) before its footer. */
async function fixedWith(name: string, size: number, extra: number, fill = 0x33): Promise<{ file: string; data: Buffer }> {
  const file = path.join(dir, name);
  const tmp = `${file}.made`;
  fs.rmSync(tmp, { force: true });
  await create(tmp, { size, type: 'fixed' });
  const made = fs.readFileSync(tmp);
  fs.rmSync(tmp);
  const footer = made.subarray(made.length - 512);
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i += 512) data.writeUInt32BE(i / 512, i);
  const body = extra >= 0 ? Buffer.concat([data, Buffer.alloc(extra, fill)]) : data.subarray(0, size + extra);
  fs.writeFileSync(file, Buffer.concat([body, footer]));
  return { file, data: body };
}

beforeAll(() => {
  dir = tmpDir('vhdkit-sizes-');
});

describe('FILE_SIZE_MISMATCH: a fixed disk whose file holds more than its footer says', () => {
  let file: string;
  let data: Buffer;
  beforeAll(async () => {
    ({ file, data } = await fixedWith('more.vhd', 4 * MiB, MiB));
  });

  it('check: a warning naming both sizes (ok); --strict: an error, exit 1', async () => {
    const r = await vhdkit(['check', file, '--json']);
    expect(r.code, show(r)).toBe(0);
    const j = json(r);
    expect(j.ok).toBe(true);
    expect(j.warnings.map((w: { code: string }) => w.code)).toEqual([ErrorCodes.FILE_SIZE_MISMATCH]);
    expect(j.warnings[0].message).toContain(`${5 * MiB} bytes of data before its footer, ${MiB} more than the current size ${4 * MiB}`);
    expect(j.warnings[0].offset).toBe(5 * MiB + 48);
    const s = await vhdkit(['check', file, '--strict', '--json']);
    expect(s.code, show(s)).toBe(1);
    expect(json(s).errors.map((w: { code: string }) => w.code)).toEqual([ErrorCodes.FILE_SIZE_MISMATCH]);
  });

  it('convert reads the footer\'s size and says so; --size-from file reads every byte of the file\'s data; --strict refuses', async () => {
    const r = await vhdkit(['convert', file, 'more-footer.raw', '--to', 'raw']);
    expect(r.code, show(r)).toBe(0);
    expect(r.stderr).toMatch(/warning: .*more than the current size .*\[FILE_SIZE_MISMATCH\]/);
    expect(fs.readFileSync(path.join(dir, 'more-footer.raw')).equals(data.subarray(0, 4 * MiB))).toBe(true);

    const f = await vhdkit(['convert', file, 'more-file.raw', '--to', 'raw', '--size-from', 'file']);
    expect(f.code, show(f)).toBe(0);
    expect(f.stderr).toMatch(/reading 5242880 \(--size-from file\) \[FILE_SIZE_MISMATCH\]/);
    expect(fs.readFileSync(path.join(dir, 'more-file.raw')).equals(data)).toBe(true);

    const s = await vhdkit(['convert', file, 'more-strict.raw', '--to', 'raw', '--strict']);
    expect(s.code, show(s)).toBe(2);
    expect(s.stderr.trim()).toMatch(/^vhdkit: .*more\.vhd: footer at offset \d+: .*\[FILE_SIZE_MISMATCH\]$/);
    expect(fs.existsSync(path.join(dir, 'more-strict.raw'))).toBe(false);
  });

  it('hash and info agree with convert, by either size (workers read the disk as the main thread does)', async () => {
    const byFooter = json(await vhdkit(['hash', file, '--json', '--workers', '2']));
    const byFile = json(await vhdkit(['hash', file, '--json', '--workers', '2', '--size-from', 'file']));
    expect(byFooter.virtualSize).toBe(4 * MiB);
    expect(byFile.virtualSize).toBe(5 * MiB);
    expect(json(await vhdkit(['hash', 'more-footer.raw', '--json'])).digest).toBe(byFooter.digest);
    expect(json(await vhdkit(['hash', 'more-file.raw', '--json'])).digest).toBe(byFile.digest);
    expect(json(await vhdkit(['info', file, '--json', '--size-from', 'file'])).virtualSize).toBe(5 * MiB);
  });

  it.runIf(hasQemu)('qemu-img reads the footer\'s size too (-f vpc), as the default does', async () => {
    const r = await runProcess('qemu-img', ['info', '-f', 'vpc', '--output=json', file], { cwd: dir });
    expect(JSON.parse(r.stdout)['virtual-size']).toBe(4 * MiB);
  });
});

describe('FOOTER_SIZE: a fixed disk whose file holds less than its footer says', () => {
  let file: string;
  let data: Buffer;
  beforeAll(async () => {
    ({ file, data } = await fixedWith('less.vhd', 4 * MiB, -MiB));
  });

  it('check: an error; convert: refused (exit 2) naming --size-from; --size-from file reads what is there, with a warning', async () => {
    const c = await vhdkit(['check', file, '--json']);
    expect(c.code, show(c)).toBe(1);
    expect(json(c).errors.map((e: { code: string }) => e.code)).toEqual([ErrorCodes.FOOTER_SIZE]);
    const r = await vhdkit(['convert', file, 'less.raw', '--to', 'raw']);
    expect(r.code, show(r)).toBe(2);
    expect(r.stderr).toMatch(/does not fit before the footer.*--size-from file reads those 3145728.*\[FOOTER_SIZE\]/);
    const f = await vhdkit(['convert', file, 'less.raw', '--to', 'raw', '--size-from', 'file']);
    expect(f.code, show(f)).toBe(0);
    expect(f.stderr).toContain('[FILE_SIZE_MISMATCH]');
    expect(fs.readFileSync(path.join(dir, 'less.raw')).equals(data)).toBe(true);
  });
});

describe('GEOMETRY_SIZE: CHS describing more sectors than the disk has', () => {
  it('a warning (the current size is used); the maximum geometry of large-disk writers is not one', async () => {
    const { file } = await fixedWith('chs.vhd', 4 * MiB, 0);
    const bytes = fs.readFileSync(file);
    const tail = bytes.length - 512;
    // 1000/16/63 = 516,096,000 bytes on a 4 MiB disk; the checksum fixed up so only the geometry is wrong.
    bytes.writeUInt16BE(1000, tail + 56);
    bytes[tail + 58] = 16;
    bytes[tail + 59] = 63;
    const fix = (b: Buffer) => {
      b.writeUInt32BE(0, tail + 64);
      let sum = 0;
      for (let i = tail; i < tail + 512; i++) sum += b[i];
      b.writeUInt32BE(~sum >>> 0, tail + 64);
    };
    fix(bytes);
    fs.writeFileSync(file, bytes);
    const j = json(await vhdkit(['check', file, '--json']));
    expect(j.ok).toBe(true);
    expect(j.warnings.map((w: { code: string }) => w.code)).toEqual([ErrorCodes.GEOMETRY_SIZE]);
    expect(j.warnings[0].message).toContain('geometry 1000/16/63 describes 516096000 bytes');
    bytes.writeUInt16BE(65535, tail + 56);
    bytes[tail + 58] = 16;
    bytes[tail + 59] = 255;
    fix(bytes);
    fs.writeFileSync(file, bytes);
    const m = json(await vhdkit(['check', file, '--strict', '--json']));
    expect(m.ok).toBe(true);
  });
});

describe('PARENT_SIZE_MISMATCH: one policy for check, convert, hash, merge and upload', () => {
  let child: string;
  let parent: string;
  beforeAll(async () => {
    parent = path.join(dir, 'p.vhd');
    child = path.join(dir, 'c.vhd');
    const uuid = new Uint8Array(16).fill(7);
    uuid[6] = 0x47;
    uuid[8] = 0x87;
    await create(parent, { size: 8 * MiB, uuid });
    await create(child, { parent });
    // The parent replaced by a larger disk with the same identity (a parent resized under its child).
    const bigger = path.join(dir, 'p-big.vhd');
    await create(bigger, { size: 16 * MiB, uuid });
    const head = fs.readFileSync(parent).subarray(0, 512);
    const big = fs.readFileSync(bigger);
    // Keep the original time stamp, so that only the size disagrees.
    const ts = decodeFooter(head).timestamp;
    for (const at of [0, big.length - 512]) {
      big.writeUInt32BE(ts, at + 24);
      big.writeUInt32BE(0, at + 64);
      let sum = 0;
      for (let i = at; i < at + 512; i++) sum += big[i];
      big.writeUInt32BE(~sum >>> 0, at + 64);
    }
    fs.writeFileSync(parent, big);
    fs.rmSync(bigger);
  });

  it('a warning everywhere: check passes (exit 0), convert and hash read on, warning; --strict refuses each with the code', async () => {
    const c = json(await vhdkit(['check', child, '--json']));
    expect(c.ok).toBe(true);
    expect(c.warnings.map((w: { code: string }) => w.code)).toContain(ErrorCodes.PARENT_SIZE_MISMATCH);
    const cs = await vhdkit(['check', child, '--strict']);
    expect(cs.code, show(cs)).toBe(1);
    for (const args of [
      ['convert', child, 'c.raw', '--to', 'raw'],
      ['hash', child],
    ]) {
      const r = await vhdkit(args);
      expect(r.code, show(r)).toBe(0);
      expect(r.stderr).toContain('[PARENT_SIZE_MISMATCH]');
      const s = await vhdkit([...args.map((a) => (a === 'c.raw' ? 'c2.raw' : a)), '--strict']);
      expect(s.code, show(s)).toBe(2);
      expect(s.stderr.trim()).toMatch(/\[PARENT_SIZE_MISMATCH\]$/);
    }
    // upload --strict refuses before it reaches the service (an address where nothing listens).
    const u = await vhdkit(['upload', child, 'images/c', '--connection-string', CONN, '--strict']);
    expect(u.code, show(u)).toBe(2);
    expect(u.stderr.trim()).toMatch(/\[PARENT_SIZE_MISMATCH\]$/);
    expect(u.stderr).not.toContain('AccountKey');
  });

  it('merge: --strict refuses and changes nothing; without it the merge warns and completes', async () => {
    const before = fs.readFileSync(parent);
    const s = await vhdkit(['merge', child, '--into-copy', 'merged.vhd', '--strict']);
    expect(s.code, show(s)).toBe(2);
    expect(s.stderr.trim()).toMatch(/\[PARENT_SIZE_MISMATCH\]$/);
    expect(fs.readFileSync(parent).equals(before)).toBe(true);
    const r = await vhdkit(['merge', child, '--into-copy', 'merged.vhd']);
    expect(r.code, show(r)).toBe(0);
    expect(r.stderr).toContain('[PARENT_SIZE_MISMATCH]');
    expect(fs.readFileSync(parent).equals(before)).toBe(true);
  });
});

describe('disk/sizes (pure)', () => {
  const footer = (currentSize: number, geometry = { cylinders: 1, heads: 1, sectorsPerTrack: 1 }) => ({ currentSize: BigInt(currentSize), geometry }) as never;
  const collect = () => {
    const found: VhdError[] = [];
    return { found, report: (e: VhdError) => found.push(e) };
  };

  it('fixedVirtualSize: footer wins by default; the file with sizeFrom file; a footer larger than the file throws', () => {
    const a = collect();
    expect(fixedVirtualSize(footer(4096), 4096, 'footer', a.report)).toBe(4096);
    expect(a.found).toEqual([]);
    const b = collect();
    expect(fixedVirtualSize(footer(4096), 8192, 'footer', b.report)).toBe(4096);
    expect(b.found.map((e) => e.code)).toEqual([ErrorCodes.FILE_SIZE_MISMATCH]);
    const c = collect();
    expect(fixedVirtualSize(footer(4096), 8192 + 100, 'file', c.report)).toBe(8192);
    expect(c.found.map((e) => e.code)).toEqual([ErrorCodes.FILE_SIZE_MISMATCH, ErrorCodes.FILE_SIZE_MISMATCH]);
    expect(() => fixedVirtualSize(footer(8192), 4096, 'footer', () => {})).toThrow(expect.objectContaining({ code: ErrorCodes.FOOTER_SIZE }));
  });

  it('checkGeometry: smaller CHS and the maximum geometry are fine; a larger one is GEOMETRY_SIZE', () => {
    const a = collect();
    checkGeometry(footer(0, { cylinders: 2, heads: 2, sectorsPerTrack: 2 }), 0, 4096, a.report);
    checkGeometry(footer(0, { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }), 0, 4096, a.report);
    expect(a.found).toEqual([]);
    checkGeometry(footer(0, { cylinders: 3, heads: 2, sectorsPerTrack: 2 }), 0, 4096, a.report);
    expect(a.found.map((e) => e.code)).toEqual([ErrorCodes.GEOMETRY_SIZE]);
  });

  it('checkBatSpan: too few entries throws, a table past the file throws; checkExtraEntries: unused ones warn, allocated ones are BLOCK_PAST_SIZE', () => {
    const t = { blockSize: 2 * MiB, virtualSize: 8 * MiB, tableOffset: 1536, fileSize: 1 * MiB, headerOffset: 512, maxEntries: 1 << 20 };
    expect(() => checkBatSpan({ ...t, declared: 3 }, () => {})).toThrow(expect.objectContaining({ code: ErrorCodes.BAT_TOO_SMALL }));
    const a = collect();
    expect(checkBatSpan({ ...t, declared: 8 }, a.report)).toBe(4);
    expect(a.found).toEqual([]);
    const extra = { declared: 8, needed: 4, virtualSize: 8 * MiB, tableOffset: 1536, headerOffset: 512 };
    checkExtraEntries({ ...extra, used: 0, first: -1 }, a.report);
    checkExtraEntries({ ...extra, used: 2, first: 5 }, a.report);
    checkExtraEntries({ ...extra, declared: 4, used: 0, first: -1 }, a.report);
    expect(a.found.map((e) => e.code)).toEqual([ErrorCodes.BAT_TOO_LARGE, ErrorCodes.BLOCK_PAST_SIZE]);
    expect(a.found[1].offset).toBe(1536 + 20);
    expect(() => checkBatSpan({ ...t, declared: 4, fileSize: 1540 }, () => {})).toThrow(expect.objectContaining({ code: ErrorCodes.BAT_PAST_EOF }));
  });

  it('openDisk with sizeFrom reads the fixed disk by its file', async () => {
    const { file } = await fixedWith('lib.vhd', MiB, 4096);
    const d = await openDisk(file, { sizeFrom: 'file' });
    try {
      expect(d.virtualSize).toBe(MiB + 4096);
      expect(d.findings.map((f) => f.code)).toEqual([ErrorCodes.FILE_SIZE_MISMATCH]);
    } finally {
      await d.close();
    }
  });
});
