#!/usr/bin/env node
/**
 * npm run fuzz -- [--minutes N] [--seed S]: the command-line fuzz test (test/fuzz.test.ts) for N
 * minutes (default 10) instead of the few hundred cases of `npm test`; for nightly CI. Prints the
 * seed; a failure prints the counterexample and exits 1.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const value = (name, fallback) => {
  const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return fallback;
  return args[i].includes('=') ? args[i].split('=')[1] : args[i + 1];
};
const minutes = Number(value('--minutes', '10'));
const seed = value('--seed', undefined);
if (!Number.isFinite(minutes) || minutes <= 0) {
  console.error(`fuzz: --minutes must be a positive number, got ${value('--minutes')}`);
  process.exit(2);
}
if (seed !== undefined && !/^\d+$/.test(seed)) {
  console.error(`fuzz: --seed must be a whole number, got ${seed}`);
  process.exit(2);
}
const env = { ...process.env, VHDKIT_FUZZ_MINUTES: String(minutes), ...(seed !== undefined ? { VHDKIT_FUZZ_SEED: seed } : {}) };
const vitest = path.join(root, 'node_modules', '.bin', 'vitest');
const r = spawnSync(vitest, ['run', 'test/fuzz.test.ts'], { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
