/**
 * The README is the user's entry point: its quick start must work and every example in it must run.
 * This suite runs the quick start into a scratch folder inside the checkout, then every `npx vhdkit`
 * line of the README's shell examples (through the built CLI), then the library example.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const root = path.resolve(import.meta.dirname, '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
// A scratch folder inside the checkout, so `import 'vhdkit'` resolves to this package (self-reference).
const work = path.join(root, '.vitest-tmp', `readme-${process.pid}`);

function blocks(lang: string): string[] {
  const out: string[] = [];
  const re = new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g');
  for (let m = re.exec(readme); m; m = re.exec(readme)) out.push(m[1]);
  return out;
}

function splitArgs(line: string): string[] {
  return line.trim().split(/\s+/);
}

// The upload examples run against a real Azurite, as a reader with AZURE_STORAGE_CONNECTION_STRING set would.
let azurite: { connectionString: string; stop: () => Promise<void> } | undefined;
let env: NodeJS.ProcessEnv = process.env;

beforeAll(async () => {
  // @ts-expect-error: a plain .mjs helper shared with the quick start
  const { startAzurite } = await import('../fixtures/azurite.mjs');
  azurite = await startAzurite({ extentMemoryLimit: 1024 });
  env = { ...process.env, AZURE_STORAGE_CONNECTION_STRING: azurite!.connectionString, XDG_STATE_HOME: path.join(work, '.state') };
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  const r = spawnSync(process.execPath, [path.join(root, 'fixtures', 'quickstart.mjs'), path.join(work, 'vhdkit-quickstart')], {
    cwd: work,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`quick start failed (${r.status}): ${r.stderr}\n${r.stdout}`);
});

afterAll(async () => {
  await azurite?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

describe('README', () => {
  it('gives `npm ci && npm run quickstart` as the quick start and `npm test` as the test command', () => {
    expect(readme).toContain('npm ci && npm run quickstart');
    expect(readme).toMatch(/```sh\nnpm test\n```/);
  });

  it('quick start proves that base + patch reads back as generation 2, byte for byte', () => {
    const a = fs.readFileSync(path.join(work, 'vhdkit-quickstart', 'gen2.raw'));
    const b = fs.readFileSync(path.join(work, 'vhdkit-quickstart', 'roundtrip.raw'));
    expect(b.length).toBe(64 * 1024 * 1024);
    expect(Buffer.compare(a, b)).toBe(0);
  });

  const examples = blocks('sh')
    .flatMap((b) => b.split('\n'))
    .filter((l) => l.startsWith('npx vhdkit '));

  it('has CLI examples for every command', () => {
    for (const cmd of ['info', 'check', 'create', 'convert', 'hash', 'diff', 'merge', 'upload', 'generations']) expect(examples.some((l) => l.startsWith(`npx vhdkit ${cmd} `))).toBe(true);
  });

  // In order: later examples use files made by earlier ones, as a reader following along would.
  it('runs every CLI example successfully, in order', () => {
    for (const line of examples) {
      const args = splitArgs(line).slice(2);
      const r = spawnSync(process.execPath, [cli, ...args], { cwd: work, encoding: 'utf8', env });
      expect(r.status, `${line}\n${r.stderr}`).toBe(0);
      if (args.includes('--json')) expect(() => JSON.parse(r.stdout)).not.toThrow();
    }
    // The examples made what they say they make.
    const made = JSON.parse(spawnSync(process.execPath, [cli, 'info', 'vhdkit-quickstart/patch2.vhd', '--json'], { cwd: work, encoding: 'utf8' }).stdout);
    expect(made.type).toBe('differencing');
    expect(made.chain).toHaveLength(2);
    const empty = JSON.parse(spawnSync(process.execPath, [cli, 'info', 'vhdkit-quickstart/empty.vhd', '--json'], { cwd: work, encoding: 'utf8' }).stdout);
    expect(empty.virtualSize).toBe(10 * 2 ** 30);
    expect(empty.allocatedBlocks).toBe(0);
    // The merge examples: the copy holds generation 2, the original base is untouched.
    const digest = (f: string) =>
      JSON.parse(spawnSync(process.execPath, [cli, 'hash', f, '--json'], { cwd: work, encoding: 'utf8' }).stdout).digest as string;
    expect(digest('vhdkit-quickstart/gen2-merged.vhd')).toBe(digest('vhdkit-quickstart/gen2.raw'));
    expect(digest('vhdkit-quickstart/base.vhd')).toBe(digest('vhdkit-quickstart/disk.raw'));
    expect(fs.existsSync(path.join(work, 'vhdkit-quickstart', 'patch3.vhd'))).toBe(false);
    // The upload examples: four generations listed, gen2 sent as the child's sectors.
    const gens = JSON.parse(spawnSync(process.execPath, [cli, 'generations', 'images', '--json'], { cwd: work, encoding: 'utf8', env }).stdout);
    const names = gens.generations.map((g: { blob: string }) => g.blob);
    expect(names).toEqual(expect.arrayContaining(['base', 'gen2', 'gen3', 'current']));
    const gen2 = gens.generations.find((g: { blob: string }) => g.blob === 'gen2');
    expect(gen2).toMatchObject({ state: 'complete', base: 'base', method: 'sectors' });
    expect(gens.generations.some((g: { blob: string; snapshot: string | null }) => g.blob === 'current' && g.snapshot)).toBe(true);
  });

  it('runs the library example', () => {
    const js = blocks('js')[0];
    expect(js).toContain("from 'vhdkit'");
    const file = path.join(work, 'vhdkit-quickstart', 'example.mjs');
    fs.writeFileSync(file, js);
    const r = spawnSync(process.execPath, [file], { cwd: path.dirname(file), encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('differencing 67108864');
    const flat = fs.readFileSync(path.join(work, 'vhdkit-quickstart', 'chain.raw'));
    expect(Buffer.compare(flat, fs.readFileSync(path.join(work, 'vhdkit-quickstart', 'gen2.raw')))).toBe(0);
    expect(r.stdout).toMatch(/^digest [0-9a-f]{16}$/m);
    expect(r.stdout).toMatch(/^changed sectors 1088$/m);
    // The merged copy holds the child's chain content; the parent is untouched (it still differs).
    const q = path.join(work, 'vhdkit-quickstart');
    expect(r.stdout).toMatch(/^merged [1-9]\d* sectors into .*patch1-merged\.vhd$/m);
    const digest = (f: string) => JSON.parse(spawnSync(process.execPath, [cli, 'hash', f, '--json'], { cwd: q, encoding: 'utf8' }).stdout).digest;
    expect(digest('patch1-merged.vhd')).toBe(digest('chain.raw'));
    expect(digest('base.vhd')).not.toBe(digest('chain.raw'));
  });
});
