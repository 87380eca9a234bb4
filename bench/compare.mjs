#!/usr/bin/env node
// Compares two result files of the same benchmark (bench/run.mjs, bench/merge.mjs or
// bench/upload.mjs) and says what got worse: for CI, which keeps the previous run's JSON.
//
//   node bench/compare.mjs BEFORE.json AFTER.json [--tolerance 0.25] [--targets] [--json]
//
// Every number compared is one the benchmark itself reports as a ratio against a peer or the
// device limit in the same run (so runs on different days or machines stay comparable), plus peak
// memory and bytes sent. A metric regresses when it is worse than before by more than --tolerance
// (a fraction, default 0.25: on the shared 2-core VMs these were measured on, the same ratio moves by ±10–30% from run to run).
// --targets also checks the AFTER run against the targets its rows carry ("≥ 0.9x", "≤ 1.1x ...").
// Exit code: 0 nothing regressed (and, with --targets, every target met), 1 otherwise, 2 bad input.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The metrics of one result file: `{ name, value, better: 'higher' | 'lower', target?, unit }`.
 * Rows without a number (skipped, failed, correctness-only) are left out.
 */
export function metricsOf(result) {
  const out = [];
  const add = (name, value, better, { target, unit = 'x' } = {}) => {
    if (typeof value === 'number' && Number.isFinite(value)) out.push({ name, value, better, target: target || undefined, unit });
  };
  if (result && typeof result.scenarios === 'object' && result.scenarios !== null) {
    // bench/run.mjs
    for (const [name, s] of Object.entries(result.scenarios)) {
      add(name, s?.ratio, 'higher', { target: s?.target });
      add(`${name}: peak RSS`, s?.vhdkit?.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  } else if (Array.isArray(result?.rows) && result.rows.some((r) => typeof r?.name === 'string')) {
    // bench/merge.mjs
    for (const r of result.rows) {
      if (typeof r?.name !== 'string') continue;
      add(r.name, r.ratio, 'higher', { target: r.target });
      add(`${r.name}: engine`, r.engineRatio, 'higher');
      add(`${r.name}: peak RSS`, r.vhdkit?.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  } else if (Array.isArray(result?.rows) && result.rows.some((r) => typeof r?.row === 'string')) {
    // bench/upload.mjs
    for (const r of result.rows) {
      if (typeof r?.row !== 'string') continue;
      add(`${r.row}: vs changed chunks`, r.vsChangedChunks, 'lower', { target: r.target });
      add(`${r.row}: of a full upload`, r.ofFull, 'lower');
      add(`${r.row}: send vs bare uploadPages`, r.ratioSend, 'higher');
      add(`${r.row}: send vs bare uploadPages, --no-md5`, r.ratioSendNoMd5, 'higher');
      add(`${r.row}: whole vs bare uploadPages`, r.ratioWhole, 'higher');
      add(`${r.row}: peak RSS`, r.peakRssMiB, 'lower', { unit: ' MiB' });
    }
  } else {
    throw new Error('not a vhdkit benchmark result (no "scenarios" and no "rows")');
  }
  return out;
}

/** Parses a target such as "≥ 0.9x", "≥ 0.91x (≤ 1.1x cost)" or "≤ 1.1x changed chunks": its first bound. */
export function parseTarget(target) {
  const m = /^\s*(≥|>=|≤|<=)\s*([0-9]+(?:\.[0-9]+)?)\s*x\b/.exec(target ?? '');
  if (!m) return undefined;
  return { atLeast: m[1] === '≥' || m[1] === '>=', bound: Number(m[2]) };
}

/** Compares two metric lists: one entry per metric present in either. */
export function compare(before, after, { tolerance = 0.25 } = {}) {
  const old = new Map(before.map((m) => [m.name, m]));
  const rows = [];
  for (const m of after) {
    const b = old.get(m.name);
    old.delete(m.name);
    const t = parseTarget(m.target);
    const meets = t ? (t.atLeast ? m.value >= t.bound : m.value <= t.bound) : undefined;
    if (!b) {
      rows.push({ name: m.name, before: null, after: m.value, unit: m.unit, change: null, verdict: 'new', target: m.target, meets });
      continue;
    }
    // change > 0: better, < 0: worse, as a fraction of the old value.
    const change = b.value === 0 ? 0 : m.better === 'higher' ? m.value / b.value - 1 : b.value / m.value - 1;
    const verdict = change < -tolerance ? 'worse' : change > tolerance ? 'better' : 'same';
    rows.push({ name: m.name, before: b.value, after: m.value, unit: m.unit, change, verdict, target: m.target, meets });
  }
  for (const b of old.values()) rows.push({ name: b.name, before: b.value, after: null, unit: b.unit, change: null, verdict: 'gone' });
  return rows;
}

function fmt(v, unit) {
  if (v === null || v === undefined) return '—';
  return unit === 'x' ? `${v.toFixed(2)}x` : `${v.toFixed(0)}${unit}`;
}

async function main(argv) {
  const files = argv.filter((a, i) => !a.startsWith('--') && argv[i - 1] !== '--tolerance');
  const ti = argv.indexOf('--tolerance');
  const tolerance = ti >= 0 ? Number(argv[ti + 1]) : 0.25;
  if (files.length !== 2 || !(tolerance >= 0)) {
    process.stderr.write('usage: node bench/compare.mjs BEFORE.json AFTER.json [--tolerance 0.25] [--targets] [--json]\n');
    return 2;
  }
  const load = (f) => {
    try {
      return metricsOf(JSON.parse(fs.readFileSync(f, 'utf8')));
    } catch (e) {
      throw Object.assign(new Error(`${f}: ${e.message}`), { usage: true });
    }
  };
  let rows;
  try {
    rows = compare(load(files[0]), load(files[1]), { tolerance });
  } catch (e) {
    process.stderr.write(`compare: ${e.message}\n`);
    return 2;
  }
  const checkTargets = argv.includes('--targets');
  const worse = rows.filter((r) => r.verdict === 'worse');
  const missed = rows.filter((r) => r.meets === false);
  if (argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ tolerance, rows, worse: worse.length, targetsMissed: missed.length }, null, 2)}\n`);
  } else {
    const w = Math.min(78, Math.max(...rows.map((r) => r.name.length)));
    console.log(`${path.basename(files[0])} → ${path.basename(files[1])} (tolerance ${(tolerance * 100).toFixed(0)}%)`);
    for (const r of rows) {
      const change = r.change === null ? '' : `${r.change >= 0 ? '+' : ''}${(r.change * 100).toFixed(0)}%`;
      const target = r.target ? `  target ${r.target}: ${r.meets ? 'met' : 'MISSED'}` : '';
      console.log(`${r.name.slice(0, w).padEnd(w)}  ${fmt(r.before, r.unit).padStart(8)} → ${fmt(r.after, r.unit).padEnd(8)} ${change.padStart(5)}  ${r.verdict.toUpperCase() === 'WORSE' ? 'WORSE' : r.verdict}${target}`);
    }
    console.log(`${worse.length} worse beyond ${(tolerance * 100).toFixed(0)}%${checkTargets ? `, ${missed.length} target(s) missed` : ''}`);
  }
  return worse.length > 0 || (checkTargets && missed.length > 0) ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
