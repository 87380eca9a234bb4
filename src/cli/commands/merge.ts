import fs from 'node:fs';
import type { CommandModule } from 'yargs';
import { ErrorCodes, VhdError } from '../../errors.js';
import { withChain, withGlobal } from '../options.js';
import { errorJson, EXIT_PROBLEMS, exitCodeFor, type GlobalArgs, interruptSignal, printFindings, printJson, printLines, progressBar, reportError, safe } from '../output.js';
import { formatSize } from '../sizes.js';

interface Args extends GlobalArgs {
  child?: string[];
  to?: string;
  force?: boolean;
  search?: string[];
  'into-copy'?: string;
  'delete-child'?: boolean;
  resume?: boolean;
  'from-list'?: string;
  concurrency?: number;
  'parent-dir'?: string[];
  workers?: number;
}

export const mergeCommand: CommandModule<object, Args> = {
  command: 'merge [child..]',
  describe: 'coalesce a differencing child into its parent in place: sector-exact, crash-safe, resumable',
  builder: (y) =>
    withChain(withGlobal(y))
      .positional('child', { type: 'string', array: true, describe: 'differencing disk(s) to merge into their parents' })
      .option('to', { type: 'string', describe: 'merge into this ancestor, every disk in between included, in one pass' })
      .option('force', { type: 'boolean', default: false, describe: 'merge even though other children depend on the parent (they will be broken)' })
      .option('search', { type: 'string', array: true, describe: 'more folders to search for other children of the parent' })
      .option('into-copy', { type: 'string', describe: 'merge into a copy of the parent made at this path; the parent stays untouched' })
      .option('delete-child', { type: 'boolean', default: false, describe: 'delete the child (and with --to the disks in between) after merging' })
      .option('resume', { type: 'boolean', default: false, describe: 'only complete an interrupted merge (running the same command again does too)' })
      .option('from-list', { type: 'string', describe: 'read the children to merge from this file: one path per line, relative to the current folder; blank lines and # comments skipped' })
      .option('concurrency', { type: 'number', default: 2, describe: 'merges run at once in a batch' })
      .option('workers', { type: 'number', describe: 'worker threads that copy the data (default: none for a child under 4 GiB, else one per core; 0 = none)' })
      .example('$0 merge patch1.vhd', 'merge patch1.vhd into its parent')
      .example('$0 merge gen3.vhd --to base.vhd --delete-child', 'merge a whole chain into the base')
      .example('$0 merge patch1.vhd --into-copy base-merged.vhd', 'leave base.vhd and its other children alone') as never,
  handler: async (args) => {
    try {
      const { checkConcurrency, merge, mergeBatch } = await import('../../ops/merge.js');
      const children = [...(args.child ?? [])];
      const concurrency = checkConcurrency(args.concurrency);
      const list = args['from-list'];
      if (list !== undefined) {
        let text: string;
        try {
          text = fs.readFileSync(list, 'utf8');
        } catch (e) {
          throw new VhdError(ErrorCodes.IO, `cannot read the list of children (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: list, cause: e });
        }
        children.push(...text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')));
      }
      if (children.length === 0) throw new VhdError(ErrorCodes.USAGE, 'give the child disk to merge (or --from-list FILE)');
      if (children.length > 1 && (args.to || args['into-copy'])) {
        throw new VhdError(ErrorCodes.USAGE, '--to and --into-copy name one target: use them with one child');
      }
      const signal = interruptSignal();
      const opts = (bar?: ReturnType<typeof progressBar>) => ({
        to: args.to,
        force: args.force,
        search: args.search,
        intoCopy: args['into-copy'],
        deleteChild: args['delete-child'],
        resume: args.resume,
        allowedDirs: args['parent-dir'],
        strict: args.strict,
        workers: args.workers,
        signal,
        onProgress: bar?.update,
      });
      if (children.length === 1) {
        const bar = progressBar('merge', args);
        const r = await merge(children[0], opts(bar));
        bar.done();
        if (args.json) return printJson(r);
        printFindings(r.warnings, args);
        printLines([
          `${r.resumed ? 'completed the interrupted merge of' : 'merged'} ${r.sources.join(' + ')} into ${r.target}: ${r.sectorsMerged} sectors (${formatSize(r.bytesWritten)}), ${r.blocksAllocated} blocks allocated, ${r.blocksUpdated} updated, in ${r.seconds.toFixed(2)} s`,
          ...(r.deleted.length ? [`deleted ${r.deleted.join(', ')}`] : []),
          ...(r.invalidated.length ? [`note: ${r.invalidated.join(', ')} no longer read as before on their own (their parent changed); delete them or keep them only under the child`] : []),
        ]);
        return;
      }
      // A batch: bounded concurrency, go on past failures, one report at the end (mergeBatch).
      let finished = 0;
      const bar = progressBar(() => `merge ${finished}/${children.length}`, args, { rate: false });
      const batch = await mergeBatch(children, {
        ...opts(),
        concurrency,
        onProgress: bar.update,
        onResult: (item) => {
          finished++;
          bar.clear();
          if (args.json) return;
          const r = item.result;
          const line = r
            ? `ok     ${item.child} -> ${r.target} (${r.sectorsMerged} sectors, ${r.seconds.toFixed(2)} s)`
            : `FAILED ${item.child}: ${item.error instanceof Error ? item.error.message : String(item.error)}`;
          process.stdout.write(`${safe(line)}\n`);
        },
      });
      bar.done();
      const { results, ...totals } = batch;
      const summary = {
        ...totals,
        results: results.map(({ child, ok, result, error, start, end }) =>
          ok ? { ...result, ok, start, end } : { child, ok, error: errorJson(error), exitCode: exitCodeFor(error), start, end },
        ),
      };
      if (args.json) printJson(summary);
      else printLines([`${batch.merged} merged, ${batch.failed} failed`]);
      if (batch.failed > 0) process.exitCode = EXIT_PROBLEMS;
    } catch (e) {
      reportError(e, args);
    }
  },
};
