/**
 * bench/compare.mjs: what CI runs on the previous and the new benchmark result. Its parsing of the
 * three result shapes, the direction of each metric, the tolerance, the targets and the exit codes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot, runProcess, tmpDir } from './helpers.js';

// A plain JavaScript module of the bench, without type declarations.
type Metric = { name: string; value: number | null; better: 'higher' | 'lower'; target?: string; unit: string; wrong?: boolean };
type Row = { name: string; before: number | null; after: number | null; change: number | null; verdict: string; target?: string; meets?: boolean };
const { compare, failures, metricsOf, parseTarget } = (await import('../bench/compare.mjs')) as {
  compare(before: Metric[], after: Metric[], o?: { tolerance?: number }): Row[];
  failures(rows: Row[], o?: { targets?: boolean }): Row[];
  metricsOf(result: unknown): Metric[];
  parseTarget(t: string): { atLeast: boolean; bound: number } | undefined;
};

const SCRIPT = path.join(repoRoot, 'bench/compare.mjs');

/** A bench/run.mjs result with the given ratios (and one peak RSS). */
const runResult = (ratios: Record<string, number | null>, rss = 100) => ({
  date: '2026-11-26T00:00:00Z',
  scenarios: Object.fromEntries(
    Object.entries(ratios).map(([name, ratio]) => [
      name,
      { vhdkit: { seconds: 1, peakRssMiB: rss }, reference: ratio === null ? null : { seconds: ratio }, ratio, target: name.startsWith('hash') ? '≥ 1.0x' : '' },
    ]),
  ),
});

const mergeResult = (ratio: number | null, engineRatio: number | null, { correct = true, rss = 64, quick = false } = {}) => ({
  quick,
  rows: [
    { name: 'merge vs vhd-lib', vhdkit: { seconds: 0.5, peakRssMiB: rss, correct }, ratio, engineRatio, target: '≥ 2.0x' },
    { name: 'partial blocks', vhdkit: { seconds: 0.2 }, ratio: null, target: 'correct' },
  ],
});

const uploadResult = (vsChangedChunks: number, ratioSend: number) => ({
  size: 1024,
  rows: [
    { row: 'bytes: vhdkit --base (chunks)', bytes: 1, ofFull: 0.15, vsChangedChunks, target: '≤ 1.1x changed chunks' },
    { row: "bytes: AzCopy's strategy (non-zero 4 MiB chunks)", bytes: 9, ofFull: 1 },
    { row: 'speed: full upload', bytes: 2, ratioSend, ratioSendNoMd5: 1, ratioWhole: 0.8, peakRssMiB: 198 },
  ],
});

describe('bench/compare.mjs', () => {
  it('parses targets: the first bound and its direction', () => {
    expect(parseTarget('≥ 0.9x')).toEqual({ atLeast: true, bound: 0.9 });
    expect(parseTarget('≥ 0.91x (≤ 1.1x cost)')).toEqual({ atLeast: true, bound: 0.91 });
    expect(parseTarget('≤ 1.1x changed chunks')).toEqual({ atLeast: false, bound: 1.1 });
    expect(parseTarget('correct')).toBeUndefined();
    expect(parseTarget('')).toBeUndefined();
  });

  it('reads the three result shapes; rows without a number are left out', () => {
    const run = metricsOf(runResult({ 'hash a': 1.2, 'diff b': null }));
    expect(run.map((m) => m.name)).toEqual(['hash a', 'hash a: peak RSS', 'diff b: peak RSS']);
    const merge = metricsOf(mergeResult(2.5, 2.0));
    expect(merge.map((m) => [m.name, m.better])).toEqual([
      ['merge vs vhd-lib', 'higher'],
      ['merge vs vhd-lib: engine', 'higher'],
      ['merge vs vhd-lib: peak RSS', 'lower'],
    ]);
    const upload = metricsOf(uploadResult(1.0, 0.9));
    expect(upload.some((m) => m.name.includes('AzCopy')), "a peer's strategy is not a vhdkit result").toBe(false);
    expect(upload.find((m) => m.name.endsWith('vs changed chunks'))!.better).toBe('lower');
    expect(upload.find((m) => m.name.endsWith('send vs bare uploadPages'))!.better).toBe('higher');
    expect(() => metricsOf({ something: 1 })).toThrow(/not a vhdkit benchmark result/);
  });

  it('a row whose output was wrong is WRONG; a row the new run lacks is GONE; both fail, as worse rows do', () => {
    const rows = compare(metricsOf(mergeResult(2.4, 2.0)), metricsOf(mergeResult(null, null, { correct: false })));
    expect(rows.map((r) => `${r.name} ${r.verdict}`)).toEqual(['merge vs vhd-lib wrong', 'merge vs vhd-lib: engine gone', 'merge vs vhd-lib: peak RSS gone']);
    expect(failures(rows)).toHaveLength(3);
    expect(failures(compare(metricsOf(mergeResult(2.4, 2.0)), metricsOf(mergeResult(2.4, 2.0))))).toEqual([]);
  });

  it('memory that grew by more than the tolerance is worse (the change is after/before − 1); growth from 0 is worse', () => {
    const rows = compare(metricsOf(mergeResult(2.4, 2.0, { rss: 100 })), metricsOf(mergeResult(2.4, 2.0, { rss: 130 })), { tolerance: 0.25 });
    const rss = rows.find((r) => r.name.endsWith('peak RSS'))!;
    expect(rss.verdict).toBe('worse');
    expect(rss.change).toBeCloseTo(0.3);
    const zero = compare(
      [{ name: 'x', value: 0, better: 'lower', unit: 'x' }],
      [{ name: 'x', value: 0.5, better: 'lower', unit: 'x' }],
    );
    expect(zero[0]).toMatchObject({ verdict: 'worse', change: null });
  });

  it('a ratio that fell, bytes that grew and memory that grew are worse; within the tolerance they are the same', () => {
    const rows = compare(metricsOf(uploadResult(1.0, 1.0)), metricsOf(uploadResult(1.5, 0.7)), { tolerance: 0.2 });
    const by = (suffix: string) => rows.find((r) => r.name.endsWith(suffix))!;
    expect(by('vs changed chunks').verdict).toBe('worse'); // more bytes sent
    expect(by('vs changed chunks').meets).toBe(false); // 1.5 > 1.1
    expect(by('send vs bare uploadPages').verdict).toBe('worse'); // 0.7 vs 1.0
    expect(by('whole vs bare uploadPages').verdict).toBe('same');
    const better = compare(metricsOf(runResult({ 'hash a': 1.0 }, 200)), metricsOf(runResult({ 'hash a': 1.3 }, 100)));
    expect(better.map((r) => r.verdict)).toEqual(['better', 'better']);
    const added = compare(metricsOf(runResult({ 'hash a': 1.0 })), metricsOf(runResult({ 'hash b': 1.0 })));
    expect(added.map((r) => `${r.name} ${r.verdict}`)).toEqual([
      'hash b new',
      'hash b: peak RSS new',
      'hash a gone',
      'hash a: peak RSS gone',
    ]);
  });

  it('CLI: exit 0 when nothing got worse, 1 when something did or (--targets) a target is missed, 2 on bad input', async () => {
    const dir = tmpDir('vhdkit-compare-');
    const write = (name: string, value: unknown) => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, JSON.stringify(value));
      return f;
    };
    const a = write('a.json', mergeResult(2.4, 2.0));
    const same = write('same.json', mergeResult(2.3, 2.1));
    const worse = write('worse.json', mergeResult(1.5, 2.0));
    const cli = (...args: string[]) => runProcess(process.execPath, [SCRIPT, ...args], { cwd: dir, timeoutMs: 30_000 });

    const ok = await cli(a, same);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/merge vs vhd-lib\s+2\.40x → 2\.30x\s+-4%\s+same\s+target ≥ 2\.0x: met/);
    expect(ok.stdout).toMatch(/0 worse beyond 25%, 0 wrong, 0 gone/);

    const bad = await cli(a, worse);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/merge vs vhd-lib\s+2\.40x → 1\.50x\s+-38%\s+WORSE/);
    expect((await cli(a, worse, '--tolerance', '0.5')).code).toBe(0);

    const target = write('target.json', mergeResult(1.9, 2.0));
    expect((await cli(target, target)).code).toBe(0);
    const missed = await cli(target, target, '--targets');
    expect(missed.code).toBe(1);
    expect(missed.stdout).toMatch(/1 target\(s\) missed/);

    const json = await cli(a, worse, '--json');
    expect(JSON.parse(json.stdout).worse).toBe(1);

    const wrong = write('wrong.json', mergeResult(null, null, { correct: false }));
    const w = await cli(a, wrong);
    expect(w.code).toBe(1);
    expect(w.stdout).toMatch(/merge vs vhd-lib\s+2\.40x → —\s+WRONG/);
    expect(w.stdout).toMatch(/1 wrong, 2 gone/);

    expect((await cli(a, worse, '--tolerance=0.5')).code).toBe(0);
    const notJson = write('x.json', 'not a result');
    const e1 = await cli(a, notJson);
    expect(e1.code).toBe(2);
    expect(e1.stderr).toMatch(/x\.json: not a vhdkit benchmark result/);
    expect((await cli(a)).code).toBe(2);
    expect((await cli(a, same, '--tolerance', '25')).stderr).toMatch(/fraction from 0 to 1/);
    expect((await cli(a, same, '--tolerance')).code).toBe(2);
    expect((await cli(a, same, '--frobnicate')).stderr).toMatch(/unknown option --frobnicate/);
    const upload = write('upload.json', uploadResult(1, 1));
    expect((await cli(a, upload)).stderr).toMatch(/a\.json comes from bench\/merge\.mjs, .*upload\.json from bench\/upload\.mjs/);
    const quick = write('quick.json', mergeResult(2.4, 2.0, { quick: true }));
    expect((await cli(a, quick)).stderr).toMatch(/--quick/);
  });
});
