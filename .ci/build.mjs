#!/usr/bin/env node
/**
 * Second step of `npm run build`, after tsc: replaces dist/cli/main.js (the bin) with one file that
 * holds src/cli and yargs. Loading yargs and its helpers as ~60 small ES modules took most of every
 * run's startup. Everything else stays tsc's output and is imported from dist/ as before:
 *
 * - the library (src/ outside src/cli): the commands' imports of it, static and lazy, point to its
 *   compiled modules (`../../ops/info.js` in src/cli/commands becomes `../ops/info.js`), so the CLI
 *   and the library share one copy of every module (one VhdError class, one FileSink that a
 *   `node --import` hook can patch), and the pool still finds dist/pool/worker.js beside itself;
 * - every package but yargs (piscina, xxhash-wasm, @azure/*, …) loads from node_modules.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const src = path.join(root, 'src');
const cliDir = path.join(src, 'cli');
const dist = path.join(root, 'dist');
const bin = path.join(dist, 'cli/main.js');

const inside = (dir, file) => file.startsWith(dir + path.sep);

/** Relative imports from src/cli to the rest of src/ stay imports, of the compiled file in dist/. */
const libraryFromDist = {
  name: 'library-from-dist',
  setup(build) {
    build.onResolve({ filter: /^\./ }, (args) => {
      const target = path.resolve(args.resolveDir, args.path);
      if (!inside(src, args.importer) || inside(cliDir, target)) return undefined;
      const compiled = path.join(dist, path.relative(src, target));
      return { path: path.relative(path.dirname(bin), compiled).split(path.sep).join('/'), external: true };
    });
  },
};

/** Of the packages that src/cli imports, only yargs is bundled (with what it imports). */
const onlyYargs = {
  name: 'only-yargs',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => {
      if (!inside(src, args.importer)) return undefined;
      if (args.path === 'yargs' || args.path.startsWith('yargs/')) return undefined;
      return { external: true };
    });
  },
};

/**
 * yargs' ESM platform shim imports node:assert for two internal checks, and derives two places from its own file: where to start looking upward for
 * the package.json whose version `--version` prints (the folder above the `node_modules` holding
 * yargs; the current directory when there is none, as in a bundle), and its `locales` folder. Here
 * the first is the bundle's folder (the nearest package.json above dist/cli/ is vhdkit's own), the
 * second is the installed yargs package's (a dependency, so it is there; English without it).
 */
const SHIM = /[\\/]yargs[\\/]lib[\\/]platform-shims[\\/]esm\.mjs$/;
const SHIM_EDITS = [
  // node:assert (4 ms to load) only for two internal sanity checks: loaded when one fails.
  [
    "import { notStrictEqual, strictEqual } from 'assert'",
    "const notStrictEqual = (a, b, m) => { if (a === b) require('node:assert').notStrictEqual(a, b, m); };\n" +
      "const strictEqual = (a, b, m) => { if (a !== b) require('node:assert').strictEqual(a, b, m); };",
  ],
  [
    "const mainFilename = __dirname.substring(0, __dirname.lastIndexOf('node_modules'));",
    "const mainFilename = fileURLToPath(new URL('.', import.meta.url));",
  ],
  [
    "directory: resolve(__dirname, '../../../locales'),",
    "directory: (() => { try { return fileURLToPath(new URL('./locales', import.meta.resolve('yargs'))); } catch { return resolve(mainFilename, 'locales'); } })(),",
  ],
];
const yargsShimPaths = {
  name: 'yargs-shim-paths',
  setup(build) {
    build.onLoad({ filter: SHIM }, async (args) => {
      let text = await fs.promises.readFile(args.path, 'utf8');
      for (const [from, to] of SHIM_EDITS) {
        if (!text.includes(from)) throw new Error(`${args.path}: expected text not found (a new yargs?): ${from}`);
        text = text.replace(from, to);
      }
      return { contents: text, loader: 'js' };
    });
  },
};

/**
 * string-width (yargs, cliui and wrap-ansi measure every help line with it) builds an Intl.Segmenter
 * and a RegExp of all emoji sequences when it loads: ~30 ms on every run, since yargs lays out the
 * help text of the command it runs. Each import of it gets a stand-in that answers printable ASCII
 * itself (width = length: string-width 8.3's own first test, and what 7.x computes for such text)
 * and loads the real module on the first other string.
 */
const REAL = Symbol('real string-width');
const lazyStringWidth = {
  name: 'lazy-string-width',
  setup(build) {
    build.onResolve({ filter: /^string-width$/ }, async (args) => {
      if (args.pluginData === REAL) return undefined;
      const real = await build.resolve(args.path, { kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: REAL });
      if (real.errors.length > 0) return { errors: real.errors };
      return { path: real.path, namespace: 'lazy-string-width' };
    });
    build.onLoad({ filter: /.*/, namespace: 'lazy-string-width' }, (args) => ({
      loader: 'js',
      resolveDir: path.dirname(args.path),
      contents: [
        'let real;',
        'export default function stringWidth(string, options) {',
        "  if (typeof string === 'string' && /^[\\u0020-\\u007E]*$/.test(string)) return string.length;",
        `  real ??= require(${JSON.stringify(args.path)}).default;`,
        '  return real(string, options);',
        '}',
      ].join('\n'),
    }));
  },
};

const result = await esbuild.build({
  entryPoints: [path.join(cliDir, 'main.ts')],
  outfile: bin,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  tsconfig: path.join(root, 'tsconfig.json'),
  sourcemap: 'linked',
  sourcesContent: false,
  write: false,
  absWorkingDir: root,
  logLevel: 'warning',
  plugins: [libraryFromDist, onlyYargs, yargsShimPaths, lazyStringWidth],
});

// Each file is replaced whole (written aside, then renamed): a vhdkit started during a build never
// reads a half-written bin.
for (const file of result.outputFiles) {
  const aside = `${file.path}.${process.pid}.tmp`;
  fs.writeFileSync(aside, file.contents, { mode: file.path === bin ? 0o755 : 0o644 });
  fs.renameSync(aside, file.path);
}
