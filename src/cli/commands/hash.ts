import type { CommandModule } from 'yargs';
import { withChain, withGlobal, withSizeFrom, withWorkers } from '../options.js';
import { type GlobalArgs, operationContext, printFindings, printJson, printLines, reportError } from '../output.js';
import { formatSize, parseSize } from '../sizes.js';

interface Args extends GlobalArgs {
  disk: string;
  manifest?: string;
  'chunk-size'?: string;
  workers?: number;
  from?: 'auto' | 'vhd' | 'raw';
  force?: boolean;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
}

export const hashCommand: CommandModule<object, Args> = {
  command: 'hash <disk>',
  describe: 'per-chunk hashes of the virtual content and one digest, the same for the same content in any form',
  builder: (y) =>
    withWorkers(withSizeFrom(withChain(withGlobal(y))))
      .positional('disk', { type: 'string', demandOption: true, describe: 'a VHD (any type, chains followed) or a raw image' })
      .option('manifest', { type: 'string', describe: 'write the binary hash manifest to this file' })
      .option('chunk-size', { type: 'string', describe: 'chunk size, a power of two (default 64K)' })
      .option('from', { choices: ['auto', 'vhd', 'raw'] as const, default: 'auto' as const, describe: 'input format' })
      .option('force', { type: 'boolean', default: false, describe: 'replace an existing manifest' })
      .example('$0 hash disk.vhd', 'the content digest of a disk or chain')
      .example('$0 hash gen2.vhd --manifest gen2.vhdhash --json', 'keep the per-chunk hashes for deduplication') as never,
  handler: async (args) => {
    try {
      const { hash } = await import('../../ops/hash.js');
      const op = operationContext('hash', args);
      const r = await hash(args.disk, {
        manifest: args.manifest,
        chunkSize: args['chunk-size'] !== undefined ? parseSize(args['chunk-size'], '--chunk-size') : undefined,
        workers: args.workers,
        from: args.from,
        force: args.force,
        ...op.common,
      });
      op.done();
      if (args.json) return printJson(r);
      printFindings(r.warnings, args);
      printLines([
        `${r.digest}  ${r.file}`,
        `${r.chunks} chunks of ${formatSize(r.chunkSize)}, ${r.zeroChunks} zero; read ${formatSize(r.bytesRead)} in ${r.seconds.toFixed(2)} s on ${r.workers || 'no'} worker${r.workers === 1 ? '' : 's'}${r.manifest ? `; manifest ${r.manifest}` : ''}`,
      ]);
    } catch (e) {
      reportError(e, args);
    }
  },
};
