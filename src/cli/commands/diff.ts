import type { CommandModule } from 'yargs';
import { withChain, withGlobal, withSizeFrom, withWorkers } from '../options.js';
import { type GlobalArgs, operationContext, printFindings, printJson, printLines, reportError } from '../output.js';
import { formatSize, parseSize } from '../sizes.js';

interface Args extends GlobalArgs {
  old: string;
  new: string;
  out?: string;
  workers?: number;
  force?: boolean;
  'block-size'?: string;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
  'max-ranges'?: number;
}

export const diffCommand: CommandModule<object, Args> = {
  command: 'diff <old> <new>',
  describe: 'changed byte ranges between two disks; with --out, a differencing child of <old> equal to <new>',
  builder: (y) =>
    withWorkers(withSizeFrom(withChain(withGlobal(y))))
      .positional('old', { type: 'string', demandOption: true, describe: 'the earlier disk (VHD, chain or raw)' })
      .positional('new', { type: 'string', demandOption: true, describe: 'the later disk (VHD, chain or raw)' })
      .option('out', { type: 'string', describe: 'write a differencing VHD whose parent is <old> and whose content equals <new>' })
      .option('block-size', { type: 'string', describe: 'block size of the child (default: the parent\'s)' })
      .option('force', { type: 'boolean', default: false, describe: 'replace an existing --out file' })
      .option('max-ranges', { type: 'number', default: 20, describe: 'ranges listed in the human output (all are in --json)' })
      .example('$0 diff gen1.vhd gen2.vhd --json', 'the changed ranges as JSON')
      .example('$0 diff gen1.vhd gen2-full.vhd --out gen2.vhd', 'turn a full build into a small patch of gen1') as never,
  handler: async (args) => {
    try {
      const { diff } = await import('../../ops/diff.js');
      const op = operationContext('diff', args);
      const r = await diff(args.old, args.new, {
        out: args.out,
        workers: args.workers,
        force: args.force,
        blockSize: args['block-size'] !== undefined ? parseSize(args['block-size'], '--block-size') : undefined,
        ...op.common,
      });
      op.done();
      if (args.json) return printJson(r);
      printFindings(r.warnings, args);
      const lines = [
        `${r.ranges.length} changed range${r.ranges.length === 1 ? '' : 's'}, ${formatSize(r.changedBytes)} (${r.changedSectors} sectors) of ${formatSize(r.virtualSize)}; compared ${formatSize(r.bytesCompared)} by ${r.method} in ${r.seconds.toFixed(2)} s`,
      ];
      const max = args['max-ranges'] ?? 20;
      for (const [s, e] of r.ranges.slice(0, max)) lines.push(`  [${s}, ${e})  ${formatSize(e - s)}`);
      if (r.ranges.length > max) lines.push(`  … ${r.ranges.length - max} more (use --json)`);
      if (r.out) lines.push(`wrote ${r.out.file}: differencing child of ${args.old}, ${r.out.blocks} blocks, ${formatSize(r.out.fileSize)}`);
      printLines(lines);
    } catch (e) {
      reportError(e, args);
    }
  },
};
