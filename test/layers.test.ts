/**
 * The layers of DESIGN.md point one way, and stay so: every import in src (static, dynamic, type-only,
 * re-exports) is checked against the layer it comes from.
 *   cli → ops → pool → disk → format / io;  azure beside ops' lower layers;  errors.ts at the bottom.
 * format imports nothing but format and errors (no node:*, no packages); io nothing above it; disk
 * no node:* (files only through io); pool nothing from ops or cli; nothing but cli imports cli.
 * Operations know no VHD layout: src/ops imports none of format/bat, bitmap, header, footer,
 * geometry and layout (vhdkit's own format/manifest is allowed); the disk layer owns them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers.js';

const SRC = path.join(repoRoot, 'src');

type Layer = 'errors' | 'index' | 'format' | 'io' | 'disk' | 'pool' | 'azure' | 'ops' | 'cli';

/** What each layer may import from src (by layer). */
const ALLOWED: Record<Layer, Layer[]> = {
  errors: ['errors'],
  format: ['format', 'errors'],
  io: ['io', 'errors'],
  disk: ['disk', 'format', 'io', 'errors'],
  pool: ['pool', 'disk', 'format', 'io', 'errors'],
  azure: ['azure', 'errors'],
  ops: ['ops', 'pool', 'disk', 'format', 'io', 'azure', 'errors'],
  cli: ['cli', 'ops', 'pool', 'disk', 'format', 'io', 'azure', 'errors'],
  index: ['ops', 'pool', 'disk', 'format', 'io', 'azure', 'errors'],
};
/** Layers that may import Node's modules and packages. */
const OUTSIDE: Record<Layer, 'none' | 'node' | 'all'> = {
  errors: 'none',
  format: 'none',
  disk: 'none',
  io: 'node',
  pool: 'all',
  azure: 'all',
  ops: 'all',
  cli: 'all',
  index: 'none',
};

const LAYOUTS = ['format/bat', 'format/bitmap', 'format/header', 'format/footer', 'format/geometry', 'format/layout'];

function layerOf(rel: string): Layer {
  if (rel === 'errors.ts') return 'errors';
  if (rel === 'index.ts') return 'index';
  const top = rel.split('/')[0];
  if (['format', 'io', 'disk', 'pool', 'azure', 'ops', 'cli'].includes(top)) return top as Layer;
  throw new Error(`src/${rel}: in no layer of DESIGN.md`);
}

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : /\.ts$/.test(e.name) ? [p] : [];
  });
}

/** Every module specifier a file imports or re-exports (static, dynamic, type-only). */
function specifiers(text: string): string[] {
  const out: string[] = [];
  const patterns = [/\b(?:import|export)\s+(?:type\s+)?[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g, /^\s*import\s+['"]([^'"]+)['"]/gm];
  for (const re of patterns) for (const m of text.matchAll(re)) out.push(m[1]);
  return out;
}

interface Edge {
  from: string;
  to: string;
  fromLayer: Layer;
  toLayer?: Layer;
}

function edges(): Edge[] {
  const out: Edge[] = [];
  for (const file of sources(SRC)) {
    const rel = path.relative(SRC, file).split(path.sep).join('/');
    for (const spec of specifiers(fs.readFileSync(file, 'utf8'))) {
      if (spec.startsWith('.')) {
        const target = path.relative(SRC, path.resolve(path.dirname(file), spec)).split(path.sep).join('/').replace(/\.js$/, '');
        if (target.startsWith('..')) throw new Error(`src/${rel} imports ${spec}, outside src`);
        out.push({ from: rel, to: target, fromLayer: layerOf(rel), toLayer: layerOf(`${target}.ts`) });
      } else {
        out.push({ from: rel, to: spec, fromLayer: layerOf(rel) });
      }
    }
  }
  return out;
}

describe('layers point one way', () => {
  const all = edges();

  it('the walk sees the imports (sanity: a few known edges)', () => {
    expect(all.length).toBeGreaterThan(150);
    expect(all.some((e) => e.from === 'ops/convert.ts' && e.to === 'io/file')).toBe(true);
    expect(all.some((e) => e.from === 'cli/app.ts' && e.to === 'cli/commands/info')).toBe(true);
  });

  it('no layer imports a layer above it', () => {
    const bad = all.filter((e) => e.toLayer !== undefined && !ALLOWED[e.fromLayer].includes(e.toLayer)).map((e) => `src/${e.from} (${e.fromLayer}) imports ${e.to} (${e.toLayer})`);
    expect(bad).toEqual([]);
  });

  it('format, disk and errors import nothing from outside src; io only Node itself', () => {
    const bad = all
      .filter((e) => e.toLayer === undefined)
      .filter((e) => OUTSIDE[e.fromLayer] === 'none' || (OUTSIDE[e.fromLayer] === 'node' && !e.to.startsWith('node:')))
      .map((e) => `src/${e.from} (${e.fromLayer}) imports ${e.to}`);
    expect(bad).toEqual([]);
  });

  it('operations import no VHD layout (format/bat, bitmap, header, footer, geometry, layout): the disk layer owns them', () => {
    expect(all.filter((e) => e.fromLayer === 'ops' && LAYOUTS.includes(e.to)).map((e) => `src/${e.from} imports ${e.to}`)).toEqual([]);
  });
});
