import type { CommandModule } from 'yargs';
import { ErrorCodes, VhdError } from '../../errors.js';
import { withChain, withGlobal, withSizeFrom } from '../options.js';
import { type GlobalArgs, operationContext, printFindings, printJson, printLines, reportError } from '../output.js';
import { formatSize, parseSize } from '../sizes.js';

interface Args extends GlobalArgs {
  src: string;
  dst: string;
  to?: 'raw' | 'fixed' | 'dynamic';
  from?: 'auto' | 'vhd' | 'raw';
  azure?: boolean;
  'block-size'?: string;
  force?: boolean;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
}

export const convertCommand: CommandModule<object, Args> = {
  command: 'convert <src> <dst>',
  describe: 'convert any disk or chain, or a raw image, to raw, fixed or dynamic',
  builder: (y) =>
    withSizeFrom(withChain(withGlobal(y)))
      .positional('src', { type: 'string', demandOption: true, describe: 'a VHD (any type, chains followed) or a raw image' })
      .positional('dst', { type: 'string', demandOption: true, describe: 'the output file (written under a temporary name, then renamed)' })
      .option('to', { choices: ['raw', 'fixed', 'dynamic'] as const, describe: 'output format' })
      .option('from', { choices: ['auto', 'vhd', 'raw'] as const, default: 'auto' as const, describe: 'input format (auto: a VHD footer means VHD)' })
      .option('azure', { type: 'boolean', default: false, describe: 'fixed VHD for Azure: size rounded up to a whole MiB, limits checked' })
      .option('block-size', { type: 'string', describe: 'block size of a dynamic output (default: the source\'s, or 2M)' })
      .option('force', { type: 'boolean', default: false, describe: 'replace an existing output' })
      .example('$0 convert disk.vhd disk.raw --to raw', 'flatten a disk or a whole chain to a raw image')
      .example('$0 convert disk.raw disk.vhd --to dynamic', 'a raw image to a sparse dynamic VHD')
      .example('$0 convert child.vhd upload.vhd --azure', 'an Azure-ready fixed VHD') as never,
  handler: async (args) => {
    try {
      if (!args.to && !args.azure) throw new VhdError(ErrorCodes.USAGE, 'give the output format with --to raw|fixed|dynamic (or --azure)');
      const { convert } = await import('../../ops/convert.js');
      const op = operationContext('convert', args);
      const r = await convert(args.src, args.dst, {
        to: args.to ?? 'fixed',
        from: args.from,
        azure: args.azure,
        blockSize: args['block-size'] !== undefined ? parseSize(args['block-size'], '--block-size') : undefined,
        force: args.force,
        ...op.common,
      });
      op.done();
      if (args.json) return printJson(r);
      printFindings(r.warnings, args);
      printLines([
        `${r.output}: ${r.to}, ${formatSize(r.virtualSize)} virtual; read ${formatSize(r.bytesRead)}, wrote ${formatSize(r.bytesWritten)} of data in ${r.seconds.toFixed(2)} s`,
      ]);
    } catch (e) {
      reportError(e, args);
    }
  },
};
