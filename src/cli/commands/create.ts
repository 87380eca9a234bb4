import type { CommandModule } from 'yargs';
import { ErrorCodes, VhdError } from '../../errors.js';
import { withGlobal } from '../options.js';
import { type GlobalArgs, printJson, printLines, reportError } from '../output.js';
import { formatSize, parseSize } from '../sizes.js';

interface Args extends GlobalArgs {
  disk: string;
  size?: string;
  type?: 'dynamic' | 'fixed';
  'block-size'?: string;
  parent?: string;
  force?: boolean;
}

export const createCommand: CommandModule<object, Args> = {
  command: 'create <disk>',
  describe: 'create an empty disk (--size), or a differencing child of a parent (--parent)',
  builder: (y) =>
    withGlobal(y)
      .positional('disk', { type: 'string', demandOption: true, describe: 'the new VHD file' })
      .option('size', { type: 'string', describe: 'virtual size: bytes or 512K, 64M, 10G, 1T' })
      .option('type', { choices: ['dynamic', 'fixed'] as const, describe: 'disk type (default dynamic)' })
      .option('block-size', { type: 'string', describe: 'block size of a dynamic disk (default 2M; a power of two)' })
      .option('parent', { type: 'string', describe: 'make a differencing child of this disk' })
      .option('force', { type: 'boolean', default: false, describe: 'replace an existing file' })
      .example('$0 create base.vhd --size 10G', 'a 10 GiB dynamic disk')
      .example('$0 create patch1.vhd --parent base.vhd', 'a differencing child of base.vhd') as never,
  handler: async (args) => {
    try {
      if (args.size === undefined && args.parent === undefined) {
        throw new VhdError(ErrorCodes.USAGE, 'give --size for a new disk or --parent for a differencing child');
      }
      const { create } = await import('../../ops/create.js');
      const r = await create(args.disk, {
        size: args.size !== undefined ? parseSize(args.size, '--size') : undefined,
        type: args.type,
        blockSize: args['block-size'] !== undefined ? parseSize(args['block-size'], '--block-size') : undefined,
        parent: args.parent,
        force: args.force,
      });
      if (args.json) return printJson(r);
      printLines([
        `created ${r.file}: ${r.type}, ${formatSize(r.virtualSize)}${r.blockSize ? `, ${formatSize(r.blockSize)} blocks` : ''}, uuid ${r.uuid}${r.parent ? `, parent ${r.parent.file}` : ''}`,
      ]);
    } catch (e) {
      reportError(e, args);
    }
  },
};
