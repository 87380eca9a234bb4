/**
 * Where a benchmark writes its JSON result (--out): checked before the run starts, so that a bad path
 * fails in a second, not after minutes of measuring; written under a temporary name and renamed.
 * A result inside the benchmark's scratch folder (--work), where its inputs are made and removed, or
 * a path ending in / or naming a folder, is refused (exit 2, one line).
 */
import fs from 'node:fs';
import path from 'node:path';

export function resultFile(given, fallback, work) {
  const file = path.resolve(given ?? fallback);
  const refuse = (why) => {
    console.error(`bench: --out ${given ?? file}: ${why}`);
    process.exit(2);
  };
  if (given !== undefined && /[\\/]$/.test(given)) refuse('ends in a separator (a folder); give a file name');
  // Compared by real paths: a symlinked folder into --work is inside it too.
  const real = (p) => {
    let head = path.resolve(p);
    const rest = [];
    for (;;) {
      try {
        return path.join(fs.realpathSync(head), ...rest.reverse());
      } catch {
        const up = path.dirname(head);
        if (up === head) return path.resolve(p);
        rest.push(path.basename(head));
        head = up;
      }
    }
  };
  const inside = (dir) => real(file) === real(dir) || real(file).startsWith(real(dir) + path.sep);
  if (work !== undefined && inside(work)) refuse(`is inside the scratch folder --work ${work}, whose files the benchmark makes and removes`);
  try {
    if (fs.statSync(file).isDirectory()) refuse('is a folder; give a file name');
  } catch (e) {
    if (e.code !== 'ENOENT') refuse(e.message);
  }
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.accessSync(path.dirname(file), fs.constants.W_OK);
  } catch (e) {
    refuse(`cannot write in ${path.dirname(file)} (${e.code})`);
  }
  return file;
}

/** The mark a benchmark leaves in a scratch folder it made: only such a folder's files are ever removed. */
export const SCRATCH_MARK = '.vhdkit-bench-scratch';

/**
 * Takes `work` as the benchmark's scratch folder, where it makes and removes files: a new or empty
 * folder, or one a benchmark made before (its mark). Any other folder is refused (exit 2, one line)
 * before anything in it is touched: a mistyped --work never loses what it names.
 */
export function claimScratch(work) {
  let names;
  try {
    names = fs.readdirSync(work);
  } catch (e) {
    if (e.code !== 'ENOENT') {
      console.error(`bench: --work ${work}: cannot use it as the scratch folder (${e.code ?? e.message})`);
      process.exit(2);
    }
    names = [];
  }
  if (names.length > 0 && !names.includes(SCRATCH_MARK)) {
    console.error(`bench: --work ${work}: not empty and not a scratch folder a vhdkit benchmark made (no ${SCRATCH_MARK}); give a new or empty folder`);
    process.exit(2);
  }
  try {
    fs.mkdirSync(work, { recursive: true });
    fs.writeFileSync(path.join(work, SCRATCH_MARK), 'made by a vhdkit benchmark: its files are made and removed here\n');
  } catch (e) {
    console.error(`bench: --work ${work}: cannot use it as the scratch folder (${e.code ?? e.message})`);
    process.exit(2);
  }
}

export function writeResult(file, results) {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, JSON.stringify(results, null, 2));
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    console.error(`bench: cannot write the results to ${file} (${e.code ?? e.message})`);
    process.exit(1);
  }
}
