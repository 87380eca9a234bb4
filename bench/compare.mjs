#!/usr/bin/env node
// Compares two result files of the same benchmark (bench/run.mjs, bench/merge.mjs or
// bench/upload.mjs) and says what got worse: for CI, which keeps the previous run's JSON.
//
//   node bench/compare.mjs BEFORE.json AFTER.json [--tolerance 0.25] [--targets] [--json]
//
// Every number compared is one the benchmark itself reports as a ratio against a peer or the
// device limit in the same run (so runs on different days or machines stay comparable), the bytes
// an upload sends against the changed chunks, and peak memory. A metric is WORSE when it moved the
// wrong way by more than --tolerance (a fraction from 0 to 1, default 0.25: on the shared 2-core VMs
// these were measured on, the same ratio moves by ±10–30% from run to run). A row whose result was
// wrong (vhdkit's output failed verification) is WRONG; a row the new run lacks is GONE; both fail.
// --targets also checks the AFTER run against the targets its rows carry ("≥ 0.9x", "≤ 1.1x ...").
// Exit code: 0 nothing worse, wrong or gone (and, with --targets, every target met), 1 otherwise,
// 2 on bad input (unreadable files, two different benchmarks, a quick run against a full one).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Which benchmark wrote a result, and with which settings that change its numbers. */
export function kindOf(result) {
  if (result && typeof result.scenarios === 'object' && result.scenarios !== null) return { kind: 'bench', quick: !!result.quick };
  if (Array.isArray(result?.rows) && result.rows.some((r) => typeof r?.name === 'string')) return { kind: 'merge', quick: !!result.quick };
  if (Array.isArray(result?.rows) && result.rows.some((r) => typeof r?.row === 'string')) return { kind: 'upload', quick: !!result.quick, size: result.size ?? null };
  throw new Error('not a vhdkit benchmark result (no "scenarios" and no "rows")');
}

/**
 * The metrics of one result file: `{ name, value, better: 'higher' | 'lower', target?, unit, wrong? }`.
 * Rows without a number (skipped, correctness-only) are left out; a row whose vhdkit output failed
 * verification is kept with `wrong: true` (its ratio is null then).
 */
export function metricsOf(result) {
  const out = [];
  const add = (name, value, better, { target, unit = 'x' } = {}) => {
    if (typeof value === 'number' && Number.isFinite(value)) out.push({ name, value, better, target: target || undefined, unit });
  };
  const { kind } = kindOf(result);
  if (kind === 'bench') {
    for (const [name, s] of Object.entries(result.scenarios)) {
      add(name, s?.ratio, 'higher', { target: s?.target });
      add(`${name}: peak RSS`, s?.vhdkit?.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  } else if (kind === 'merge') {
    for (const r of result.rows) {
      if (typeof r?.name !== 'string') continue;
      if (r.vhdkit && r.vhdkit.correct === false) {
        out.push({ name: r.name, value: null, better: 'higher', target: r.target || undefined, unit: 'x', wrong: true });
        continue;
      }
      add(r.name, r.ratio, 'higher', { target: r.target });
      add(`${r.name}: engine`, r.engineRatio, 'higher');
      add(`${r.name}: peak RSS`, r.vhdkit?.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  } else {
    // Only vhdkit's own rows: the peers' strategies and the chunk references are not vhdkit results.
    for (const r of result.rows) {
      if (typeof r?.row !== 'string') continue;
      if (!r.row.startsWith('bytes: vhdkit') && !r.row.startsWith('speed:')) continue;
      add(`${r.row}: vs changed chunks`, r.vsChangedChunks, 'lower', { target: r.target });
      add(`${r.row}: of a full upload`, r.ofFull, 'lower');
      add(`${r.row}: send vs bare uploadPages`, r.ratioSend, 'higher');
      add(`${r.row}: send vs bare uploadPages, --no-md5`, r.ratioSendNoMd5, 'higher');
      add(`${r.row}: whole vs bare uploadPages`, r.ratioWhole, 'higher');
      add(`${r.row}: peak RSS`, r.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  }
  return out;
}

/** Parses a target such as "≥ 0.9x", "≥ 0.91x (≤ 1.1x cost)" or "≤ 1.1x changed chunks": its first bound. */
export function parseTarget(target) {
  const m = /^\s*(≥|>=|≤|<=)\s*([0-9]+(?:\.[0-9]+)?)\s*x\b/.exec(target ?? '');
  if (!m) return undefined;
  return { atLeast: m[1] === '≥' || m[1] === '>=', bound: Number(m[2]) };
}

/**
 * Compares two metric lists: one entry per metric present in either. `change` is after/before − 1
 * (null when either is missing or the old value is 0); the verdict follows the metric's direction.
 */
export function compare(before, after, { tolerance = 0.25 } = {}) {
  const old = new Map(before.map((m) => [m.name, m]));
  const rows = [];
  for (const m of after) {
    const b = old.get(m.name);
    old.delete(m.name);
    const t = parseTarget(m.target);
    if (m.wrong) {
      rows.push({ name: m.name, before: b?.value ?? null, after: null, unit: m.unit, change: null, verdict: 'wrong', target: m.target, meets: t ? false : undefined });
      continue;
    }
    const meets = t ? (t.atLeast ? m.value >= t.bound : m.value <= t.bound) : undefined;
    if (!b || b.wrong) {
      rows.push({ name: m.name, before: null, after: m.value, unit: m.unit, change: null, verdict: 'new', target: m.target, meets });
      continue;
    }
    const change = b.value === 0 ? null : m.value / b.value - 1;
    let verdict;
    if (m.better === 'higher') verdict = m.value < b.value * (1 - tolerance) ? 'worse' : m.value > b.value * (1 + tolerance) ? 'better' : 'same';
    else verdict = m.value > b.value * (1 + tolerance) || (b.value === 0 && m.value > 0) ? 'worse' : m.value < b.value * (1 - tolerance) ? 'better' : 'same';
    rows.push({ name: m.name, before: b.value, after: m.value, unit: m.unit, change, verdict, target: m.target, meets });
  }
  for (const b of old.values()) rows.push({ name: b.name, before: b.value ?? null, after: null, unit: b.unit, change: null, verdict: 'gone' });
  return rows;
}

/** The rows that fail a comparison: worse, wrong or gone (and, with targets, missed targets). */
export function failures(rows, { targets = false } = {}) {
  return rows.filter((r) => r.verdict === 'worse' || r.verdict === 'wrong' || r.verdict === 'gone' || (targets && r.meets === false));
}

function fmt(v, unit) {
  if (v === null || v === undefined) return '—';
  return unit === 'x' ? `${v.toFixed(2)}x` : `${v.toFixed(0)}${unit}`;
}

function parseArgs(argv) {
  const files = [];
  let tolerance = 0.25;
  let targets = false;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--targets') targets = true;
    else if (a === '--json') json = true;
    else if (a === '--tolerance' || a.startsWith('--tolerance=')) {
      const text = a === '--tolerance' ? argv[++i] : a.slice('--tolerance='.length);
      if (text === undefined || !/^[0-9]*\.?[0-9]+$/.test(text)) throw new Error(`--tolerance wants a fraction from 0 to 1 (0.25 for 25%), got ${text ?? 'nothing'}`);
      tolerance = Number(text);
      if (!(tolerance >= 0 && tolerance < 1)) throw new Error(`--tolerance wants a fraction from 0 to 1 (0.25 for 25%), got ${text}`);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else files.push(a);
  }
  if (files.length !== 2) throw new Error('give two result files: BEFORE.json AFTER.json');
  return { files, tolerance, targets, json };
}

async function main(argv) {
  let args;
  let rows;
  try {
    args = parseArgs(argv);
    const load = (f) => {
      try {
        const result = JSON.parse(fs.readFileSync(f, 'utf8'));
        return { kind: kindOf(result), metrics: metricsOf(result) };
      } catch (e) {
        throw new Error(`${f}: ${e.message}`);
      }
    };
    const [a, b] = args.files.map(load);
    const script = { bench: 'bench/run.mjs', merge: 'bench/merge.mjs', upload: 'bench/upload.mjs' };
    if (a.kind.kind !== b.kind.kind) throw new Error(`${args.files[0]} comes from ${script[a.kind.kind]}, ${args.files[1]} from ${script[b.kind.kind]}`);
    if (a.kind.quick !== b.kind.quick) throw new Error(`one run is --quick and the other is not: their datasets differ`);
    if ((a.kind.size ?? null) !== (b.kind.size ?? null)) throw new Error(`the runs used different disk sizes (${a.kind.size} and ${b.kind.size})`);
    rows = compare(a.metrics, b.metrics, { tolerance: args.tolerance });
  } catch (e) {
    process.stderr.write(`compare: ${e.message}\nusage: node bench/compare.mjs BEFORE.json AFTER.json [--tolerance 0.25] [--targets] [--json]\n`);
    return 2;
  }
  const { files, tolerance, targets, json } = args;
  const failed = failures(rows, { targets });
  const count = (v) => rows.filter((r) => r.verdict === v).length;
  const missed = rows.filter((r) => r.meets === false).length;
  if (json) {
    process.stdout.write(`${JSON.stringify({ tolerance, rows, worse: count('worse'), wrong: count('wrong'), gone: count('gone'), targetsMissed: missed, failed: failed.length }, null, 2)}\n`);
  } else {
    const w = Math.min(78, Math.max(...rows.map((r) => r.name.length)));
    console.log(`${path.basename(files[0])} → ${path.basename(files[1])} (tolerance ${(tolerance * 100).toFixed(0)}%)`);
    for (const r of rows) {
      const change = r.change === null ? '' : `${r.change >= 0 ? '+' : ''}${(r.change * 100).toFixed(0)}%`;
      const target = r.target ? `  target ${r.target}: ${r.meets === undefined ? '—' : r.meets ? 'met' : 'MISSED'}` : '';
      const verdict = ['worse', 'wrong', 'gone'].includes(r.verdict) ? r.verdict.toUpperCase() : r.verdict;
      console.log(`${r.name.slice(0, w).padEnd(w)}  ${fmt(r.before, r.unit).padStart(8)} → ${fmt(r.after, r.unit).padEnd(8)} ${change.padStart(5)}  ${verdict}${target}`);
    }
    console.log(`${count('worse')} worse beyond ${(tolerance * 100).toFixed(0)}%, ${count('wrong')} wrong, ${count('gone')} gone${targets ? `, ${missed} target(s) missed` : ''}`);
  }
  return failed.length > 0 ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
