/**
 * Crash safety of `merge` (src/ops/merge.ts, header comment: journal first, then data, then
 * metadata, then the journal removed; "a merge killed at any instant is completed by running it
 * again").
 *
 * 1. Real processes, random SIGKILL: a chain (64 MiB parent with 2 MiB blocks, ~24 MiB of child
 *    data in partial blocks, some over allocated parent blocks, some new), and one whose child is
 *    larger than the parent (the BAT moves). `node dist/cli/main.js merge child.vhd --json` is
 *    killed after a random delay (0, tiny, anywhere in a typical run, or shortly after the journal
 *    appears); then the same command runs again (sometimes killed once more, sometimes with
 *    --resume) until it exits 0. Afterwards: the parent equals the model, `check --strict` exits 0,
 *    no journal / lock / temp file is left, the child is byte-identical to its pristine copy. And
 *    after every kill that leaves no journal, the parent is either pristine or fully merged.
 *    The kills are classified (before the journal, journal only, data, metadata, after completion)
 *    and the counts printed.
 * 2. Every crash point, deterministically: an in-process fault injector makes the target's n-th
 *    write/truncate/fsync (and everything after it) fail, as if the process died there; single
 *    crashes at every point and double crashes (a crash, then a crash of the rerun), then a clean
 *    run; same checks.
 * 3. Real processes with a preload hook (`node --import`) that SIGKILLs the CLI at an exact point:
 *    right after the moved BAT's header is written, then again early in the rerun's data phase;
 *    and in the middle of writing the journal (between its temporary file and the rename).
 * 4. The pool (`--workers 2`; odd iterations of 1 run that way too, reruns either way): the same hook
 *    (Node runs it in worker threads as well) logs every operation on the target with its thread:
 *    every worker write completes before the main thread's data fsync starts, and every metadata
 *    write comes after that fsync. Then real processes killed right after the workers' n-th write, at
 *    points spread over the data phase (sometimes again in the rerun): no metadata was written yet,
 *    and the rerun (on the pool or on the main thread) leaves the same file as an uninterrupted merge.
 *
 * The CLI runs from dist/: `npm run build` first (npm test does it in pretest).
 */
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamicWriter } from '../src/disk/writer.js';
import { bitmapByteSize, setBits } from '../src/format/bitmap.js';
import { decodeHeader } from '../src/format/header.js';
import { FileSink } from '../src/io/file.js';
import { check } from '../src/ops/check.js';
import { newUuid, parentLinkFor } from '../src/ops/create.js';
import { journalPath, lockPath, type MergeJournal } from '../src/ops/journal.js';
import { merge } from '../src/ops/merge.js';
import { openDisk } from '../src/ops/open.js';
import { mulberry32, type ProcessRun, readVirtual, repoRoot, runAndInterrupt, tmpDir } from './helpers.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const CLI = path.join(repoRoot, 'dist/cli/main.js');
const hasQemuIo = spawnSync('qemu-io', ['--version']).status === 0;
const KiB = 1024;
const MiB = 1024 * 1024;
const SECTOR = 512;

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/cli/main.js is missing: run "npm run build" first (npm test does it in pretest)');
});

// -------------------------------------------------------------------------------------------------
// Helpers


/** A run of child sectors: first sector and its bytes (a whole number of sectors). */
type Run = [number, Uint8Array];

interface Chain {
  /** Where it was built (removed afterwards: runs use copies, found only through relative locators). */
  parent: string;
  child: string;
  parentBytes: Buffer;
  childBytes: Buffer;
  /** Content of the parent after a correct merge. */
  model: Uint8Array;
  /** Target file after an uninterrupted merge. */
  reference?: Buffer;
  /** Pristine BAT offset and entries (for classifying metadata writes). */
  tableOffset: number;
  tableEntries: number;
}

/**
 * Builds parent.vhd (dynamic) and child.vhd in a temporary folder, keeps their bytes and removes the
 * folder: copies made for each run then find their parent only through the relative locator (the
 * absolute one names a file that is gone), so a run can never touch another copy. Parent: `allocated` blocks of random data.
 * Child: `childBlocks`, each holding `runsPerBlock` odd-length runs of random sectors at random
 * places (0xEE garbage under the clear bits).
 */
async function buildChain(
  o: { parentSize: number; childSize: number; blockSize: number; allocated: number[]; childBlocks: number[]; runsPerBlock: number; maxRun: number; seed: number },
): Promise<Chain> {
  const dir = tmpDir('vhdkit-crash-build-');
  const rnd = mulberry32(o.seed);
  const bs = o.blockSize;
  const parent = path.join(dir, 'parent.vhd');
  const child = path.join(dir, 'child.vhd');
  const content = new Uint8Array(o.parentSize);
  for (const b of o.allocated) randomFillSync(content, b * bs, Math.min(bs, o.parentSize - b * bs));
  const puuid = newUuid();
  let sink = await FileSink.open(parent, 'wx');
  let w = await DynamicWriter.create(sink, { virtualSize: o.parentSize, blockSize: bs, uuid: puuid });
  for (const b of [...o.allocated].reverse()) await w.writeBlock(b, content.slice(b * bs, Math.min((b + 1) * bs, o.parentSize)));
  await w.finish();
  await sink.close();
  const pimg = await openDisk(parent);
  const link = parentLinkFor(child, parent, pimg.footer.uniqueId, pimg.footer.timestamp);
  await pimg.close();

  const model = new Uint8Array(o.childSize);
  model.set(content);
  sink = await FileSink.open(child, 'wx');
  w = await DynamicWriter.create(sink, { virtualSize: o.childSize, blockSize: bs, uuid: newUuid(), parent: link });
  for (const b of o.childBlocks) {
    const len = Math.min(bs, o.childSize - b * bs);
    const data = new Uint8Array(len).fill(0xee);
    const bitmap = new Uint8Array(bitmapByteSize(bs));
    const runs: Run[] = [];
    for (let k = 0; k < o.runsPerBlock; k++) {
      const count = Math.min(len / SECTOR, 1 + 2 * Math.floor(rnd() * (o.maxRun / 2)));
      const first = Math.floor(rnd() * (len / SECTOR - count + 1));
      const bytes = randomFillSync(new Uint8Array(count * SECTOR));
      runs.push([first, bytes]);
    }
    for (const [first, bytes] of runs) {
      data.set(bytes, first * SECTOR);
      setBits(bitmap, first, first + bytes.length / SECTOR);
      model.set(bytes, b * bs + first * SECTOR);
    }
    await w.writeBlock(b, data, bitmap);
  }
  await w.finish();
  await sink.close();
  const header = decodeHeader(fs.readFileSync(parent).subarray(512, 1536));
  const chain: Chain = {
    parent,
    child,
    parentBytes: fs.readFileSync(parent),
    childBytes: fs.readFileSync(child),
    model,
    tableOffset: Number(header.tableOffset),
    tableEntries: header.maxTableEntries,
  };
  fs.rmSync(dir, { recursive: true, force: true });
  return chain;
}

/** A fresh copy of the pristine pair in a new folder. */
function freshCopy(c: Chain): { dir: string; parent: string; child: string } {
  const dir = tmpDir('vhdkit-crash-run-');
  const parent = path.join(dir, 'parent.vhd');
  const child = path.join(dir, 'child.vhd');
  fs.writeFileSync(parent, c.parentBytes);
  fs.writeFileSync(child, c.childBytes);
  return { dir, parent, child };
}


function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  if (a.length !== b.length) return `length ${a.length}, want ${b.length}`;
  if (Buffer.compare(a, b) === 0) return undefined;
  let i = 0;
  while (a[i] === b[i]) i++;
  return `first difference at byte ${i} (sector ${Math.floor(i / SECTOR)}): ${a[i]} vs ${b[i]}`;
}

/** Files a merge must not leave behind: journal, its temporary file, lock, copies' temporary files. */
function leftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => /vhdkit-(merge|lock)|\.tmp$/.test(n));
}

type Exit = ProcessRun;

/**
 * Runs the CLI; `killAfterMs` SIGKILLs it after that delay, `killAfterJournalMs` that long after the
 * journal file appears (polled).
 */
function runCli(args: string[], cwd: string, o: { killAfterMs?: number; killAfterJournalMs?: number; journal?: string; env?: NodeJS.ProcessEnv; nodeArgs?: string[] } = {}): Promise<Exit> {
  const jf = o.journal;
  return runAndInterrupt(process.execPath, [...(o.nodeArgs ?? []), CLI, ...args], {
    cwd,
    env: { ...process.env, ...o.env },
    killAfterMs: o.killAfterMs,
    killAfterConditionMs: o.killAfterJournalMs,
    condition: jf ? () => fs.existsSync(jf) : undefined,
  });
}

/** Whether the metadata step (BAT entries, moved BAT or header, new footer) has started, judged from the file. */
function metadataStarted(file: Buffer, j: MergeJournal, c: Chain): boolean {
  const footer = Buffer.from(j.footer, 'base64');
  if (file.length >= j.newEnd && file.subarray(j.newEnd - 512, j.newEnd).equals(footer)) return true;
  if (j.header !== undefined) {
    const header = Buffer.from(j.header, 'base64');
    if (file.subarray(j.headerOffset!, j.headerOffset! + header.length).equals(header)) return true;
    const bat = file.subarray(j.batOffset!, Math.min(file.length, j.batOffset! + j.batEntries! * 4));
    if (bat.some((v) => v !== 0)) return true;
  }
  const batNow = file.subarray(c.tableOffset, c.tableOffset + c.tableEntries * 4);
  const batThen = c.parentBytes.subarray(c.tableOffset, c.tableOffset + c.tableEntries * 4);
  return !batNow.equals(batThen);
}

// -------------------------------------------------------------------------------------------------
// 1. Real processes, random SIGKILL

type KillClass = 'before-journal' | 'journal-only' | 'data' | 'metadata' | 'after-completion' | 'no-kill';

describe('SIGKILL at random instants, then the same merge again', () => {
  const seed = Number(process.env.VHDKIT_CRASH_SEED ?? Date.now() % 1_000_000);
  const rnd = mulberry32(seed);
  const chains: Record<'same' | 'grow', Chain> = {} as never;
  const typical: Record<'same' | 'grow', { wallMs: number; mergeMs: number }> = {} as never;
  /** The same with the data copied by two pool workers (odd iterations run that way). */
  const typicalPool: Record<'same' | 'grow', { wallMs: number; mergeMs: number }> = {} as never;
  const counts: Record<KillClass, number> = { 'before-journal': 0, 'journal-only': 0, data: 0, metadata: 0, 'after-completion': 0, 'no-kill': 0 };
  let doubleKills = 0;
  let resumes = 0;

  beforeAll(async () => {
    // 64 MiB, 2 MiB blocks, every third block allocated; the child touches 26 blocks (~1 MiB each).
    const touched = Array.from({ length: 32 }, (_, b) => b).filter((b) => b % 5 !== 4);
    chains.same = await buildChain({
      parentSize: 64 * MiB,
      childSize: 64 * MiB,
      blockSize: 2 * MiB,
      allocated: Array.from({ length: 32 }, (_, b) => b).filter((b) => b % 3 === 0),
      childBlocks: touched,
      runsPerBlock: 3,
      maxRun: 1400,
      seed: seed + 1,
    });
    // The child is larger: 48 MiB parent (24 BAT entries), 96 MiB child (48): the BAT moves.
    chains.grow = await buildChain({
      parentSize: 48 * MiB,
      childSize: 96 * MiB,
      blockSize: 2 * MiB,
      allocated: Array.from({ length: 24 }, (_, b) => b).filter((b) => b % 4 === 0),
      childBlocks: Array.from({ length: 48 }, (_, b) => b).filter((b) => b % 2 === 0 || b === 47),
      runsPerBlock: 3,
      maxRun: 1200,
      seed: seed + 2,
    });
    // One uninterrupted run of each, on the main thread and on the pool: the reference result (the
    // same file both ways) and the typical durations.
    for (const k of ['same', 'grow'] as const) {
      for (const pool of [false, true]) {
        const run = freshCopy(chains[k]);
        const r = await runCli(['merge', 'child.vhd', '--json', '--workers', pool ? '2' : '0'], run.dir);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        (pool ? typicalPool : typical)[k] = { wallMs: r.ms, mergeMs: JSON.parse(r.stdout).seconds * 1000 };
        if (!pool) chains[k].reference = fs.readFileSync(run.parent);
        else expect(firstDifference(fs.readFileSync(run.parent), chains[k].reference!), 'pool result vs main-thread result').toBeUndefined();
        expect(firstDifference(await readVirtual(run.parent), chains[k].model)).toBeUndefined();
        fs.rmSync(run.dir, { recursive: true, force: true });
      }
    }
    expect(chains.grow.tableEntries).toBe(24);
  });

  afterAll(() => {
    console.log(
      `merge-crash (seed ${seed}; set VHDKIT_CRASH_SEED to repeat): typical run ${JSON.stringify(typical)}, on the pool ${JSON.stringify(typicalPool)}; kills landed: ${JSON.stringify(counts)}; ` +
        `reruns killed again: ${doubleKills}; --resume used: ${resumes}`,
    );
  });

  /** One iteration: kill, observe, rerun until done, check everything. Returns the problems found. */
  async function iteration(kind: 'same' | 'grow', i: number): Promise<string[]> {
    const c = chains[kind];
    // Odd iterations are killed while the pool's workers copy (reruns pick either way at random).
    const pool = i % 2 === 1;
    const t = pool ? typicalPool[kind] : typical[kind];
    const run = freshCopy(c);
    const journal = journalPath(run.parent);
    const problems: string[] = [];
    const say = (m: string) => problems.push(`${kind} #${i}: ${m}`);

    // The kill: at once, after a few ms, anywhere in a typical run, near its end, or within the
    // merge proper (counted from the moment the journal appears; most of a run is node starting up).
    const pick = rnd();
    let how: { killAfterMs?: number; killAfterJournalMs?: number } = {};
    if (i === 0) how = { killAfterMs: 0 };
    else if (pick < 0.1) how = { killAfterMs: 1 + Math.floor(rnd() * 5) };
    else if (pick < 0.3) how = { killAfterMs: Math.floor(rnd() * t.wallMs) };
    else if (pick < 0.45) how = { killAfterMs: Math.floor(t.wallMs - 1.5 * t.mergeMs + rnd() * 1.5 * t.mergeMs + 10) };
    else how = { killAfterJournalMs: Math.floor(rnd() * (t.mergeMs * 1.1)) };
    const first = await runCli(['merge', 'child.vhd', '--json', ...(pool ? ['--workers', '2'] : [])], run.dir, { ...how, journal });

    // Observe the state the kill left.
    let cls: KillClass;
    const file = fs.readFileSync(run.parent);
    const hasJournal = fs.existsSync(journal);
    if (first.signal !== 'SIGKILL') {
      cls = 'no-kill';
      if (first.code !== 0) say(`uninterrupted run failed: ${first.stderr}`);
    } else if (!hasJournal) {
      if (file.equals(c.parentBytes)) cls = 'before-journal';
      else if (file.equals(c.reference!)) cls = 'after-completion';
      else {
        const diff = firstDifference(await readVirtual(run.parent).catch(() => new Uint8Array()), c.model);
        if (diff === undefined && (await check(run.parent, { strict: true })).ok) cls = 'after-completion';
        else {
          cls = 'data';
          say(`killed after ${JSON.stringify(how)}: NO journal, but the parent is neither pristine nor fully merged (${diff ?? 'check fails'})`);
        }
      }
    } else {
      const j = JSON.parse(fs.readFileSync(journal, 'utf8')) as MergeJournal;
      if (file.equals(c.parentBytes)) cls = 'journal-only';
      else cls = metadataStarted(file, j, c) ? 'metadata' : 'data';
    }
    counts[cls]++;

    // Run the same merge again until it succeeds (sometimes killing the first rerun too).
    let done = first.signal === null && first.code === 0;
    for (let attempt = 0; !done && attempt < 5; attempt++) {
      const pending = fs.existsSync(journal);
      const args = ['merge', 'child.vhd', '--json', '--workers', rnd() < 0.5 ? '2' : '0'];
      if (pending && rnd() < 0.4) {
        args.push('--resume');
        resumes++;
      }
      const killAgain = attempt === 0 && rnd() < 0.25;
      const r = await runCli(args, run.dir, killAgain ? { killAfterMs: Math.floor(rnd() * t.wallMs) } : {});
      if (r.signal === 'SIGKILL') {
        doubleKills++;
        continue;
      }
      if (r.code !== 0) {
        say(`rerun ${attempt} (${args.join(' ')}) after a kill in "${cls}" exited ${r.code}: ${r.stderr.trim()}`);
        break;
      }
      const out = JSON.parse(r.stdout);
      if (pending && out.resumed !== true) say(`a pending journal was not reported as resumed`);
      done = true;
    }
    if (!done) say('the merge never completed');

    // The end state.
    const left = leftovers(run.dir);
    if (left.length > 0) say(`left behind after the kill in "${cls}": ${left.join(', ')}`);
    if (!fs.readFileSync(run.child).equals(c.childBytes)) say('the child changed');
    const diff = firstDifference(await readVirtual(run.parent).catch((e) => new TextEncoder().encode(String(e))), c.model);
    if (diff) say(`after a kill in "${cls}": parent content ${diff}`);
    else if (!fs.readFileSync(run.parent).equals(c.reference!)) say(`after a kill in "${cls}": the parent file differs from an uninterrupted merge's`);
    const chk = await runCli(['check', '--strict', 'parent.vhd'], run.dir);
    if (chk.code !== 0) say(`after a kill in "${cls}": check --strict exited ${chk.code}: ${chk.stdout.trim()} ${chk.stderr.trim()}`);
    fs.rmSync(run.dir, { recursive: true, force: true });
    return problems;
  }

  it('parent same size as the child: 18 kills', async () => {
    const problems: string[] = [];
    for (let i = 0; i < 18; i++) problems.push(...(await iteration('same', i)));
    expect(problems).toEqual([]);
  });

  it('child larger than the parent (BAT moves): 12 kills', async () => {
    const problems: string[] = [];
    for (let i = 0; i < 12; i++) problems.push(...(await iteration('grow', i)));
    expect(problems).toEqual([]);
  });
});

// -------------------------------------------------------------------------------------------------
// 2. Every crash point, in process

/**
 * Makes the target's I/O fail from its `at`-th write/truncate/fsync on (0-based), as if the process
 * had died right before it: nothing after that point reaches the file.
 */
async function crashingMerge(child: string, target: string, at: number): Promise<{ crashed: boolean; ops: number }> {
  const real = fs.realpathSync(target);
  const proto = FileSink.prototype as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const saved: Record<string, (...a: unknown[]) => Promise<unknown>> = {};
  let ops = 0;
  let crashed = false;
  for (const m of ['write', 'truncate', 'sync']) {
    saved[m] = proto[m];
    proto[m] = async function (this: FileSink, ...args: unknown[]) {
      if (path.resolve(this.name) === real) {
        if (crashed || ops >= at) {
          crashed = true;
          throw new Error('simulated crash');
        }
        ops++;
      }
      return saved[m].apply(this, args);
    };
  }
  try {
    await merge(child);
  } catch (e) {
    if (!crashed) throw e;
  } finally {
    for (const m of Object.keys(saved)) proto[m] = saved[m];
  }
  return { crashed, ops };
}

describe('a crash at every write of the merge, then once more in the rerun', () => {
  async function smallChain(grow: boolean): Promise<Chain> {
    return buildChain({
      parentSize: 4 * MiB,
      childSize: grow ? 8 * MiB : 4 * MiB,
      blockSize: 512 * KiB,
      allocated: [1, 3, 6],
      childBlocks: grow ? [0, 1, 5, 9, 14, 15] : [0, 1, 5, 6, 7],
      runsPerBlock: 3,
      maxRun: 300,
      seed: grow ? 7 : 8,
    });
  }

  async function verify(c: Chain, run: { dir: string; parent: string; child: string }, what: string): Promise<string[]> {
    const problems: string[] = [];
    const diff = firstDifference(await readVirtual(run.parent).catch((e) => new TextEncoder().encode(String(e))), c.model);
    if (diff) problems.push(`${what}: content ${diff}`);
    const chk = await check(run.parent, { strict: true });
    if (!chk.ok) problems.push(`${what}: check --strict: ${[...new Set(chk.errors.map((e) => e.code))].join(', ')}`);
    const left = leftovers(run.dir);
    if (left.length) problems.push(`${what}: left behind ${left.join(', ')}`);
    if (!fs.readFileSync(run.child).equals(c.childBytes)) problems.push(`${what}: the child changed`);
    return problems;
  }

  for (const grow of [false, true]) {
    it(`${grow ? 'BAT moves' : 'BAT in place'}: single crashes at every point, double crashes`, async () => {
      const c = await smallChain(grow);
      // How many target I/O operations a clean merge does.
      const probe = freshCopy(c);
      const { ops: total, crashed } = await crashingMerge(probe.child, probe.parent, Number.MAX_SAFE_INTEGER);
      expect(crashed).toBe(false);
      expect(await verify(c, probe, 'clean run')).toEqual([]);
      expect(total).toBeGreaterThan(8);
      fs.rmSync(probe.dir, { recursive: true, force: true });

      const problems: string[] = [];
      const seconds = [0, 1, 2, 3, Math.floor(total / 2)];
      for (let a = 0; a <= total; a++) {
        for (const b of [undefined, ...seconds]) {
          const run = freshCopy(c);
          const r1 = await crashingMerge(run.child, run.parent, a);
          if (a < total) expect(r1.crashed).toBe(true);
          // A crash without a journal must leave the parent pristine (the journal comes first).
          if (!fs.existsSync(journalPath(run.parent)) && !fs.readFileSync(run.parent).equals(c.parentBytes)) {
            const d = firstDifference(await readVirtual(run.parent), c.model);
            if (d) problems.push(`crash at ${a}: no journal, half state (${d})`);
          }
          if (b !== undefined && fs.existsSync(journalPath(run.parent))) await crashingMerge(run.child, run.parent, b);
          let finalError = '';
          try {
            await merge(run.child);
          } catch (e) {
            finalError = String((e as Error).message);
          }
          const what = `crash at op ${a}${b !== undefined ? `, rerun crashed at op ${b}` : ''} (of ${total})`;
          if (finalError) problems.push(`${what}: the last run failed: ${finalError}`);
          else problems.push(...(await verify(c, run, what)));
          fs.rmSync(run.dir, { recursive: true, force: true });
        }
      }
      expect(problems).toEqual([]);
    });
  }
});

// -------------------------------------------------------------------------------------------------
// 3. Real processes killed at exact points (preload hook)

// Node runs --import modules in worker threads too: in the pool's workers this hook patches their own
// FileSink. VHDKIT_CRASH_AT and _AFTER_WRITE_AT count the main thread's operations on the target;
// VHDKIT_CRASH_WORKER_WRITE_AT kills right after the n-th write to it by any worker thread (1 = the
// first; the threads count in one file, VHDKIT_CRASH_COUNTER, a byte appended per write);
// VHDKIT_CRASH_LOG appends every operation on the target, with its thread, when it starts and when
// it has completed.
const HOOK = `
import fs from 'node:fs';
import path from 'node:path';
import { isMainThread, threadId } from 'node:worker_threads';
import { FileSink } from ${JSON.stringify(pathToFileURL(path.join(repoRoot, 'dist/io/file.js')).href)};
const target = process.env.VHDKIT_CRASH_FILE;
const at = process.env.VHDKIT_CRASH_AT === undefined ? -1 : Number(process.env.VHDKIT_CRASH_AT);
const afterWriteAt = process.env.VHDKIT_CRASH_AFTER_WRITE_AT === undefined ? -1 : Number(process.env.VHDKIT_CRASH_AFTER_WRITE_AT);
// Which write at that offset (1 = the first): every run first restores the original header at 512.
let afterWriteNth = process.env.VHDKIT_CRASH_AFTER_WRITE_NTH === undefined ? 1 : Number(process.env.VHDKIT_CRASH_AFTER_WRITE_NTH);
const workerWriteAt = process.env.VHDKIT_CRASH_WORKER_WRITE_AT === undefined ? -1 : Number(process.env.VHDKIT_CRASH_WORKER_WRITE_AT);
const counter = process.env.VHDKIT_CRASH_COUNTER;
const workerWrote = () => {
  if (workerWriteAt < 1 || !counter) return;
  fs.appendFileSync(counter, 'w');
  if (fs.statSync(counter).size >= workerWriteAt) die();
};
const log = process.env.VHDKIT_CRASH_LOG;
const die = () => { process.kill(process.pid, 'SIGKILL'); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10000); };
const note = (m, phase, args) => {
  if (log) fs.appendFileSync(log, JSON.stringify({ thread: isMainThread ? 'main' : 'worker ' + threadId, m, phase, offset: typeof args[1] === 'number' ? args[1] : undefined, bytes: args[0]?.length }) + '\\n');
};
let n = 0;
for (const m of ['write', 'truncate', 'sync']) {
  const orig = FileSink.prototype[m];
  FileSink.prototype[m] = async function (...args) {
    const mine = target && path.resolve(this.name) === target;
    if (mine && isMainThread && n++ === at) die();
    if (mine) note(m, 'start', args);
    const r = await orig.apply(this, args);
    if (mine) note(m, 'done', args);
    if (mine && isMainThread && m === 'write' && args[1] === afterWriteAt && --afterWriteNth === 0) die();
    if (mine && !isMainThread && m === 'write') workerWrote();
    return r;
  };
}
// The pool's workers write with blocking calls: logged and counted as writes too.
const writeBlocking = FileSink.prototype.writeBlocking;
FileSink.prototype.writeBlocking = function (...args) {
  const mine = target && path.resolve(this.name) === target;
  if (mine) note('write', 'start', args);
  const r = writeBlocking.apply(this, args);
  if (mine) note('write', 'done', args);
  if (mine && !isMainThread) workerWrote();
  return r;
};
// VHDKIT_CRASH_ON_JOURNAL_RENAME=N: killed instead of the N-th rename of a journal into place;
// VHDKIT_CRASH_AFTER_JOURNAL_RENAME=N: right after it.
if (process.env.VHDKIT_CRASH_ON_JOURNAL_RENAME || process.env.VHDKIT_CRASH_AFTER_JOURNAL_RENAME) {
  const orig = fs.renameSync;
  let on = Number(process.env.VHDKIT_CRASH_ON_JOURNAL_RENAME ?? 0);
  let after = Number(process.env.VHDKIT_CRASH_AFTER_JOURNAL_RENAME ?? 0);
  fs.renameSync = function (from, to) {
    const journal = String(to).endsWith('.vhdkit-merge.json');
    if (journal && --on === 0) die();
    const r = orig.call(this, from, to);
    if (journal && --after === 0) die();
    return r;
  };
}
// VHDKIT_CRASH_AFTER_DELETE_AT=N: killed right after the N-th .vhd file is removed.
if (process.env.VHDKIT_CRASH_AFTER_DELETE_AT) {
  const orig = fs.rmSync;
  let left = Number(process.env.VHDKIT_CRASH_AFTER_DELETE_AT);
  fs.rmSync = function (p, o) {
    const r = orig.call(this, p, o);
    if (/\.vhd$/.test(String(p)) && --left === 0) die();
    return r;
  };
}
`;

/** Node arguments that preload HOOK (written to a fresh folder) in the CLI and its worker threads. */
function hookNodeArgs(prefix: string): string[] {
  const hook = path.join(tmpDir(prefix), 'crash-hook.mjs');
  fs.writeFileSync(hook, HOOK);
  return ['--import', pathToFileURL(hook).href];
}

describe('real processes killed at exact points', () => {
  let hookArgs: string[];
  let c: Chain;

  beforeAll(async () => {
    hookArgs = hookNodeArgs('vhdkit-crash-hook-');
    c = await buildChain({
      parentSize: 6 * MiB,
      childSize: 16 * MiB,
      blockSize: 2 * MiB,
      allocated: [0, 2],
      childBlocks: [0, 1, 2, 4, 7],
      runsPerBlock: 4,
      maxRun: 500,
      seed: 11,
    });
  });

  it('the hook kills where it is told (sanity)', async () => {
    const run = freshCopy(c);
    const env = { VHDKIT_CRASH_FILE: fs.realpathSync(run.parent), VHDKIT_CRASH_AT: '0' };
    const r = await runCli(['merge', 'child.vhd'], run.dir, { env, nodeArgs: hookArgs });
    expect(r.signal).toBe('SIGKILL');
    expect(fs.existsSync(journalPath(run.parent))).toBe(true); // the journal comes before the first target write
    expect(fs.readFileSync(run.parent).equals(c.parentBytes)).toBe(true);
    expect(fs.existsSync(lockPath(run.parent))).toBe(true); // a killed holder leaves its lock
    const again = await runCli(['merge', 'child.vhd', '--json'], run.dir);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).resumed).toBe(true);
    expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
    expect(leftovers(run.dir)).toEqual([]);
  });

  it('an interrupted merge run again with a --delete-child it was not started with: USAGE, nothing deleted; without it, it completes', async () => {
    const run = freshCopy(c);
    const r1 = await runCli(['merge', 'child.vhd'], run.dir, { env: { VHDKIT_CRASH_FILE: fs.realpathSync(run.parent), VHDKIT_CRASH_AT: '2' }, nodeArgs: hookArgs });
    expect(r1.signal).toBe('SIGKILL');
    const r2 = await runCli(['merge', 'child.vhd', '--delete-child'], run.dir);
    expect(r2.code, r2.stderr).toBe(2);
    expect(r2.stderr).toMatch(/started without --delete-child.*\[USAGE\]/);
    expect(fs.readFileSync(run.child).equals(c.childBytes)).toBe(true);
    expect(fs.existsSync(journalPath(run.parent))).toBe(true);
    const r3 = await runCli(['merge', 'child.vhd'], run.dir);
    expect(r3.code, r3.stderr).toBe(0);
    expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
    expect(fs.existsSync(run.child)).toBe(true);
  });

  it('killed mid-data, its folder then copied (or moved) elsewhere: the merge completes there and writes nothing at the old path', async () => {
    for (const how of ['copied', 'moved'] as const) {
      const run = freshCopy(c);
      const r1 = await runCli(['merge', 'child.vhd'], run.dir, { env: { VHDKIT_CRASH_FILE: fs.realpathSync(run.parent), VHDKIT_CRASH_AT: '4' }, nodeArgs: hookArgs });
      expect(r1.signal, how).toBe('SIGKILL');
      expect(fs.existsSync(journalPath(run.parent)), how).toBe(true);
      const elsewhere = path.join(tmpDir('vhdkit-crash-moved-'), 'gen');
      if (how === 'copied') fs.cpSync(run.dir, elsewhere, { recursive: true });
      else fs.renameSync(run.dir, elsewhere);
      // What lives at the old path now is another disk: the journal's recorded path names it.
      const other = Buffer.alloc(c.parentBytes.length + 1024 * 1024, 0x5a);
      fs.mkdirSync(run.dir, { recursive: true });
      fs.writeFileSync(run.parent, other);
      const r2 = await runCli(['merge', 'child.vhd', '--json'], elsewhere);
      expect(r2.code, `${how}: ${r2.stderr}`).toBe(0);
      expect(JSON.parse(r2.stdout).resumed, how).toBe(true);
      expect(firstDifference(await readVirtual(path.join(elsewhere, 'parent.vhd')), c.model), how).toBeUndefined();
      expect(fs.readFileSync(run.parent).equals(other), `${how}: the file at the old path was written`).toBe(true);
      expect(leftovers(elsewhere), how).toEqual([]);
    }
  });

  it('killed right after the moved BAT and the new header are written, then early in the rerun: the third run completes correctly', async () => {
    const run = freshCopy(c);
    const target = fs.realpathSync(run.parent);
    // 1st run: killed right after the new dynamic header is written at offset 512 (metadata step, BAT
    // moved): a fresh merge writes there once. (A resumed run first puts the original header back.)
    const r1 = await runCli(['merge', 'child.vhd'], run.dir, {
      env: { VHDKIT_CRASH_FILE: target, VHDKIT_CRASH_AFTER_WRITE_AT: '512', VHDKIT_CRASH_AFTER_WRITE_NTH: '1' },
      nodeArgs: hookArgs,
    });
    expect(r1.signal).toBe('SIGKILL');
    const j = JSON.parse(fs.readFileSync(journalPath(run.parent), 'utf8')) as MergeJournal;
    expect(j.header).toBeDefined(); // this chain does move the BAT
    expect(metadataStarted(fs.readFileSync(run.parent), j, c)).toBe(true);
    // 2nd run: killed before its 4th target operation (the data was durable, the journal says so:
    // it writes only the metadata again, and is killed inside it).
    const r2 = await runCli(['merge', 'child.vhd'], run.dir, { env: { VHDKIT_CRASH_FILE: target, VHDKIT_CRASH_AT: '3' }, nodeArgs: hookArgs });
    expect(r2.signal).toBe('SIGKILL');
    // 3rd run: must complete the merge and leave the model.
    const r3 = await runCli(['merge', 'child.vhd', '--json'], run.dir);
    expect(r3.stderr).toBe('');
    expect(r3.code).toBe(0);
    expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
    const chk = await runCli(['check', '--strict', 'parent.vhd'], run.dir);
    expect(chk.stdout).toContain('OK');
    expect(chk.code).toBe(0);
    expect(leftovers(run.dir)).toEqual([]);
  });

  for (const [when, env, headerLost] of [
    ['while the journal is marked copied', { VHDKIT_CRASH_ON_JOURNAL_RENAME: '2' }, false],
    ['right after the journal says the data is copied', { VHDKIT_CRASH_AFTER_JOURNAL_RENAME: '2' }, false],
    ['right after the journal says the data is copied, the header then lost', { VHDKIT_CRASH_AFTER_JOURNAL_RENAME: '2' }, true],
  ] as const) {
    it(`killed ${when}: the rerun completes; it copies the data again only when the journal did not say so`, async () => {
      const run = freshCopy(c);
      const r1 = await runCli(['merge', 'child.vhd'], run.dir, { env, nodeArgs: hookArgs });
      expect(r1.signal).toBe('SIGKILL');
      const j = JSON.parse(fs.readFileSync(journalPath(run.parent), 'utf8')) as MergeJournal;
      const copied = 'VHDKIT_CRASH_AFTER_JOURNAL_RENAME' in env;
      expect(j.step).toBe(copied ? 'copied' : undefined);
      // Nothing of the metadata yet, the data durable: the BAT and footer are still the parent's.
      expect(metadataStarted(fs.readFileSync(run.parent), j, c)).toBe(false);
      if (headerLost) {
        // Unopenable now: the rerun completes the metadata forward (the new header with the moved BAT).
        expect(j.header).toBeDefined();
        const fd = fs.openSync(run.parent, 'r+');
        fs.writeSync(fd, Buffer.alloc(512), 0, 512, j.headerOffset!);
        fs.closeSync(fd);
        const chk = await runCli(['check', 'parent.vhd'], run.dir);
        expect(chk.stdout + chk.stderr).toContain('MERGE_PENDING');
      }
      const r2 = await runCli(['merge', 'child.vhd', '--json'], run.dir);
      expect(r2.stderr).toBe('');
      expect(r2.code).toBe(0);
      const out = JSON.parse(r2.stdout);
      expect(out.resumed).toBe(true);
      if (copied) expect(out.bytesWritten, 'the data is not copied again').toBe(0);
      else expect(out.bytesWritten).toBeGreaterThan(0);
      expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
      expect((await runCli(['check', '--strict', 'parent.vhd'], run.dir)).code).toBe(0);
      expect(fs.readFileSync(run.child).equals(c.childBytes)).toBe(true);
      expect(leftovers(run.dir)).toEqual([]);
    });
  }

  it('killed while the journal is being put in place: the parent is pristine, the rerun completes, nothing is left behind', async () => {
    const run = freshCopy(c);
    const r1 = await runCli(['merge', 'child.vhd'], run.dir, { env: { VHDKIT_CRASH_ON_JOURNAL_RENAME: '1' }, nodeArgs: hookArgs });
    expect(r1.signal).toBe('SIGKILL');
    expect(fs.existsSync(journalPath(run.parent))).toBe(false);
    expect(fs.readFileSync(run.parent).equals(c.parentBytes)).toBe(true);
    const r2 = await runCli(['merge', 'child.vhd', '--json'], run.dir);
    expect(r2.code).toBe(0);
    expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
    expect(fs.readFileSync(run.child).equals(c.childBytes)).toBe(true);
    // The journal's temporary file of the killed run must not stay next to the disk forever.
    expect(leftovers(run.dir)).toEqual([]);
  });
});

describe('--delete-child of a chain killed while it deletes (--to, in place and into a copy)', () => {
  let hookArgs: string[];
  let top: string;
  /** base <- c1 <- c2, 8 MiB, each child 1 MiB of its own; `want`: the chain's content. */
  let want: Buffer;

  beforeAll(async () => {
    hookArgs = hookNodeArgs('vhdkit-crash-delete-hook-');
    top = tmpDir('vhdkit-crash-delete-');
    const g = Buffer.alloc(8 * MiB);
    for (let i = 0; i < 4 * MiB; i++) g[i] = (i * 7) & 0xff;
    fs.writeFileSync(path.join(top, 'g1.raw'), g);
    g.fill(0x22, 5 * MiB, 6 * MiB);
    fs.writeFileSync(path.join(top, 'g2.raw'), g);
    g.fill(0x33, 6 * MiB, 7 * MiB);
    g.fill(0x44, 0, 4096);
    fs.writeFileSync(path.join(top, 'g3.raw'), g);
    want = g;
    for (const args of [
      ['convert', 'g1.raw', 'base.vhd', '--to', 'dynamic'],
      ['diff', 'base.vhd', 'g2.raw', '--out', 'c1.vhd'],
      ['diff', 'c1.vhd', 'g3.raw', '--out', 'c2.vhd'],
    ]) {
      const r = await runCli(args, top);
      expect(r.code, r.stderr).toBe(0);
    }
  });

  function fresh(name: string): string {
    const d = path.join(top, name);
    fs.mkdirSync(d);
    for (const f of ['base.vhd', 'c1.vhd', 'c2.vhd']) fs.copyFileSync(path.join(top, f), path.join(d, f));
    return d;
  }

  const kills = [
    ['after the child is deleted', { VHDKIT_CRASH_AFTER_DELETE_AT: '1' }],
    ['after both are deleted, before the journal goes', { VHDKIT_CRASH_AFTER_DELETE_AT: '2' }],
    // Journal renames: the plan (1), the data copied (2), the deleting step (3).
    ['while the journal is marked for deleting (nothing deleted yet)', { VHDKIT_CRASH_ON_JOURNAL_RENAME: '3' }],
  ] as const;
  for (const intoCopy of [false, true]) {
    for (const [when, env] of kills) {
      it(`${intoCopy ? 'into a copy' : 'in place'}, killed ${when}: the same command run again finishes, the target reads as the chain did, nothing is left`, async () => {
        const d = fresh(`${intoCopy ? 'copy' : 'place'}-${env.VHDKIT_CRASH_AFTER_DELETE_AT ?? 'j'}`);
        const cmd = ['merge', 'c2.vhd', '--to', 'base.vhd', '--delete-child', ...(intoCopy ? ['--into-copy', 'flat.vhd'] : [])];
        const target = path.join(d, intoCopy ? 'flat.vhd' : 'base.vhd');
        const r1 = await runCli(cmd, d, { env, nodeArgs: hookArgs });
        expect(r1.signal, r1.stderr).toBe('SIGKILL');
        if (env.VHDKIT_CRASH_AFTER_DELETE_AT !== undefined) {
          // The merge is complete; the journal says what is left, and readers say so.
          expect(fs.existsSync(path.join(d, 'c2.vhd'))).toBe(false);
          const chk = await runCli(['check', path.basename(target)], d);
          expect(chk.code).toBe(1);
          expect(chk.stdout + chk.stderr).toMatch(/deleting the disks it merged \(--delete-child\) was interrupted.*\[MERGE_PENDING\]/);
        }
        const r2 = await runCli([...cmd, '--json'], d);
        expect(r2.stderr).toBe('');
        expect(r2.code).toBe(0);
        const out = JSON.parse(r2.stdout);
        expect(out.resumed).toBe(true);
        expect(out.target).toBe(fs.realpathSync(target));
        for (const f of ['c1.vhd', 'c2.vhd']) expect(fs.existsSync(path.join(d, f)), f).toBe(false);
        expect(firstDifference(await readVirtual(target), want)).toBeUndefined();
        if (intoCopy) expect(fs.readFileSync(path.join(d, 'base.vhd')).equals(fs.readFileSync(path.join(top, 'base.vhd')))).toBe(true);
        expect((await runCli(['check', '--strict', path.basename(target)], d)).code).toBe(0);
        expect(leftovers(d)).toEqual([]);
        // And once more: nothing left to finish; the child is simply missing.
        const r3 = await runCli(cmd, d);
        expect(r3.code).toBe(2);
        expect(r3.stderr).toMatch(/c2\.vhd.*\[IO\]/);
      });
    }
  }

  it('killed after the child is deleted, the folder then moved: the same command finishes there', async () => {
    const d = fresh('moved');
    const cmd = ['merge', 'c2.vhd', '--to', 'base.vhd', '--delete-child'];
    expect((await runCli(cmd, d, { env: { VHDKIT_CRASH_AFTER_DELETE_AT: '1' }, nodeArgs: hookArgs })).signal).toBe('SIGKILL');
    const moved = path.join(top, 'moved-here');
    fs.renameSync(d, moved);
    const r = await runCli([...cmd, '--json'], moved);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).deleted).toEqual([path.join(fs.realpathSync(moved), 'c1.vhd')]);
    expect(fs.readdirSync(moved).sort()).toEqual(['base.vhd']);
    expect(firstDifference(await readVirtual(path.join(moved, 'base.vhd')), want)).toBeUndefined();
  });

  it('the child named through a symlink, killed after it is deleted: the same command (through the link) finishes', async () => {
    const d = fresh('linked');
    fs.symlinkSync('c2.vhd', path.join(d, 'top.vhd'));
    const cmd = ['merge', 'top.vhd', '--to', 'base.vhd', '--delete-child'];
    expect((await runCli(cmd, d, { env: { VHDKIT_CRASH_AFTER_DELETE_AT: '1' }, nodeArgs: hookArgs })).signal).toBe('SIGKILL');
    const r = await runCli(cmd, d);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.existsSync(path.join(d, 'c1.vhd'))).toBe(false);
    expect(leftovers(d)).toEqual([]);
  });

  it.runIf(hasQemuIo)('a disk written after it was merged (killed before its deletion) is kept, with a warning naming it', async () => {
    const d = fresh('written');
    const cmd = ['merge', 'c2.vhd', '--to', 'base.vhd', '--delete-child'];
    expect((await runCli(cmd, d, { env: { VHDKIT_CRASH_AFTER_DELETE_AT: '1' }, nodeArgs: hookArgs })).signal).toBe('SIGKILL');
    const q = spawnSync('qemu-io', ['-f', 'vpc', path.join(d, 'c1.vhd'), '-c', 'write -P 0xab 7340032 65536']);
    expect(q.status, q.stderr?.toString()).toBe(0);
    const r = await runCli(cmd, d);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/c1\.vhd: not deleted: it changed after it was merged into .*base\.vhd/);
    expect(fs.existsSync(path.join(d, 'c1.vhd'))).toBe(true);
    expect(leftovers(d)).toEqual([]);
  });

  it('a journal at its deleting step never deletes a disk put in place of one it merged (another UUID)', async () => {
    const d = fresh('replaced');
    const cmd = ['merge', 'c2.vhd', '--to', 'base.vhd', '--delete-child'];
    const r1 = await runCli(cmd, d, { env: { VHDKIT_CRASH_AFTER_DELETE_AT: '1' }, nodeArgs: hookArgs });
    expect(r1.signal).toBe('SIGKILL');
    // c1.vhd replaced by another disk before the rerun.
    fs.rmSync(path.join(d, 'c1.vhd'));
    fs.copyFileSync(path.join(top, 'g1.raw'), path.join(d, 'g1.raw'));
    expect((await runCli(['convert', 'g1.raw', 'c1.vhd', '--to', 'dynamic'], d)).code).toBe(0);
    const r2 = await runCli([...cmd, '--json'], d);
    expect(r2.code, r2.stderr).toBe(0);
    expect(JSON.parse(r2.stdout).deleted).toEqual([]);
    expect(fs.existsSync(path.join(d, 'c1.vhd'))).toBe(true);
    expect(leftovers(d)).toEqual([]);
  });
});


// -------------------------------------------------------------------------------------------------
// 4. The pool: write order seen from every thread, and real processes killed while workers write

describe('the data copies on the pool: order of writes, and kills while workers write', () => {
  let hookArgs: string[];
  let c: Chain;
  /** Worker writes of an uninterrupted pool merge, per worker thread. */
  let perWorker: number[];
  /** Worker writes of an uninterrupted pool merge, all threads. */
  let workerWrites: number;

  interface Op {
    thread: string;
    m: 'write' | 'truncate' | 'sync';
    phase: 'start' | 'done';
    offset?: number;
    bytes?: number;
  }

  const readLog = (file: string): Op[] =>
    fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Op);

  beforeAll(async () => {
    hookArgs = hookNodeArgs('vhdkit-crash-pool-hook-');
    // ~20 MiB of child data in partial blocks over allocated and new parent blocks; the child is
    // larger than the parent (the BAT moves): five or six tasks of 4 MiB, two workers.
    c = await buildChain({
      parentSize: 32 * MiB,
      childSize: 48 * MiB,
      blockSize: 2 * MiB,
      allocated: Array.from({ length: 16 }, (_, b) => b).filter((b) => b % 3 === 0),
      childBlocks: Array.from({ length: 24 }, (_, b) => b).filter((b) => b % 6 !== 5),
      runsPerBlock: 3,
      maxRun: 1400,
      seed: 21,
    });
    const run = freshCopy(c);
    const r = await runCli(['merge', 'child.vhd', '--json', '--workers', '0'], run.dir);
    expect(r.code).toBe(0);
    c.reference = fs.readFileSync(run.parent);
    expect(firstDifference(await readVirtual(run.parent), c.model)).toBeUndefined();
  });

  it('every worker write has completed before the data fsync starts; every metadata write comes after it', async () => {
    const run = freshCopy(c);
    const log = path.join(run.dir, 'ops.log');
    const env = { VHDKIT_CRASH_FILE: fs.realpathSync(run.parent), VHDKIT_CRASH_LOG: log };
    const r = await runCli(['merge', 'child.vhd', '--json', '--workers', '2'], run.dir, { env, nodeArgs: hookArgs });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).workers).toBe(2);
    expect(fs.readFileSync(run.parent).equals(c.reference!)).toBe(true);
    const ops = readLog(log);
    const main = (i: number) => ops[i].thread === 'main';
    // A fresh merge: the main thread cuts and extends the file (two truncates), the workers copy,
    // the main thread fsyncs, then writes the BAT, header and footer, truncates and fsyncs again.
    const dataSync = ops.findIndex((o, i) => main(i) && o.m === 'sync' && o.phase === 'start');
    const dataSynced = ops.findIndex((o, i) => i > dataSync && main(i) && o.m === 'sync' && o.phase === 'done');
    expect(dataSync).toBeGreaterThan(0);
    const workerOps = ops.map((o, i) => [o, i] as const).filter(([o]) => o.thread !== 'main');
    expect(workerOps.length).toBeGreaterThan(0);
    expect(workerOps.every(([o]) => o.m === 'write')).toBe(true); // workers never truncate or sync
    expect(Math.max(...workerOps.map(([, i]) => i))).toBeLessThan(dataSync);
    const writers = new Set(workerOps.map(([o]) => o.thread));
    expect(writers.size).toBe(2); // tasks in flight on both workers
    const mainWrites = ops.map((o, i) => [o, i] as const).filter(([o, i]) => main(i) && o.m === 'write');
    expect(mainWrites.length).toBeGreaterThan(0);
    expect(Math.min(...mainWrites.map(([, i]) => i))).toBeGreaterThan(dataSynced);
    // Every truncate of the main thread before the data phase precedes the first worker write.
    const firstWorker = Math.min(...workerOps.map(([, i]) => i));
    expect(ops.slice(0, firstWorker).filter((o) => o.m === 'truncate' && o.phase === 'done')).toHaveLength(2);
    perWorker = [...writers].map((w) => workerOps.filter(([o]) => o.thread === w && o.phase === 'done').length);
    workerWrites = workerOps.length / 2;
    console.log(`pool merge: ${workerOps.length / 2} worker writes (${perWorker.join(' + ')}), ${mainWrites.length / 2} main-thread writes after the data fsync`);
  });

  it('killed right after a worker write, at points spread over the data phase, then run again (on the pool or not): the merge completes exactly', async () => {
    const all = workerWrites;
    const points = [...new Set([1, 2, 3, 5, 8, Math.floor(all / 4), Math.floor(all / 2), Math.floor((3 * all) / 4), all - 2, all - 1].filter((n) => n >= 1 && n < all))];
    const problems: string[] = [];
    for (const [k, at] of points.entries()) {
      const run = freshCopy(c);
      const target = fs.realpathSync(run.parent);
      const say = (m: string) => problems.push(`killed after worker write ${at}: ${m}`);
      const counter = path.join(run.dir, 'writes.count');
      const r1 = await runCli(['merge', 'child.vhd', '--json', '--workers', '2'], run.dir, {
        env: { VHDKIT_CRASH_FILE: target, VHDKIT_CRASH_WORKER_WRITE_AT: String(at), VHDKIT_CRASH_COUNTER: counter },
        nodeArgs: hookArgs,
      });
      if (r1.signal !== 'SIGKILL') say(`not killed (exit ${r1.code}: ${r1.stderr.trim()})`);
      if (!fs.existsSync(journalPath(run.parent))) say('no journal');
      else {
        // Killed in the data phase: the main thread had written no metadata yet.
        const j = JSON.parse(fs.readFileSync(journalPath(run.parent), 'utf8')) as MergeJournal;
        if (metadataStarted(fs.readFileSync(run.parent), j, c)) say('metadata written before the data was complete');
      }
      // The rerun: on the main thread, on the pool, or on the pool killed once more in a worker.
      const mode = k % 3;
      if (mode === 2) {
        fs.rmSync(counter, { force: true });
        const r2 = await runCli(['merge', 'child.vhd', '--workers', '2'], run.dir, {
          env: { VHDKIT_CRASH_FILE: target, VHDKIT_CRASH_WORKER_WRITE_AT: String(Math.max(1, Math.floor(at / 2))), VHDKIT_CRASH_COUNTER: counter },
          nodeArgs: hookArgs,
        });
        if (r2.signal !== 'SIGKILL') say(`the rerun was not killed (exit ${r2.code})`);
      }
      const r3 = await runCli(['merge', 'child.vhd', '--json', '--workers', mode === 0 ? '0' : '2'], run.dir);
      if (r3.code !== 0) say(`the last run exited ${r3.code}: ${r3.stderr.trim()}`);
      else if (JSON.parse(r3.stdout).resumed !== true) say('not reported as resumed');
      const diff = firstDifference(await readVirtual(run.parent).catch((e) => new TextEncoder().encode(String(e))), c.model);
      if (diff) say(`content ${diff}`);
      if (!fs.readFileSync(run.parent).equals(c.reference!)) say('the parent file differs from an uninterrupted merge');
      const chk = await runCli(['check', '--strict', 'parent.vhd'], run.dir);
      if (chk.code !== 0) say(`check --strict exited ${chk.code}: ${chk.stdout.trim()}`);
      fs.rmSync(counter, { force: true });
      if (leftovers(run.dir).length) say(`left behind: ${leftovers(run.dir).join(', ')}`);
      if (!fs.readFileSync(run.child).equals(c.childBytes)) say('the child changed');
      fs.rmSync(run.dir, { recursive: true, force: true });
    }
    console.log(`pool kills after worker writes ${points.join(', ')} (of ${all})`);
    expect(problems).toEqual([]);
  });
});
