import type { CommandModule } from 'yargs';
import { withChain, withGlobal, withSizeFrom, withWorkers } from '../options.js';
import { type GlobalArgs, operationContext, printFindings, printJson, printLines, reportError } from '../output.js';
import { formatSize, parseSize } from '../sizes.js';

interface Args extends GlobalArgs {
  disk: string;
  destination: string;
  'connection-string'?: string;
  base?: string;
  snapshot?: boolean;
  resize?: boolean;
  md5?: boolean;
  verify?: boolean;
  overwrite?: boolean;
  concurrency?: number;
  'chunk-size'?: string;
  workers?: number;
  from?: 'auto' | 'vhd' | 'raw';
  'journal-dir'?: string;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
}

export const uploadCommand: CommandModule<object, Args> = {
  command: 'upload <disk> <destination>',
  describe: 'upload a disk to an Azure page blob as a fixed VHD: sparse, deduplicated against a base, resumable',
  builder: (y) =>
    withWorkers(withSizeFrom(withChain(withGlobal(y))))
      .positional('disk', { type: 'string', demandOption: true, describe: 'a VHD (any type, chains followed) or a raw image' })
      .positional('destination', {
        type: 'string',
        demandOption: true,
        describe: 'a page-blob URL with a SAS token, container/blob with a connection string, or a blob URL (DefaultAzureCredential)',
      })
      .option('connection-string', { type: 'string', describe: 'storage connection string (default: AZURE_STORAGE_CONNECTION_STRING)' })
      .option('base', { type: 'string', describe: 'start from a server-side copy of this blob (NAME, container/NAME or URL) and send only what differs' })
      .option('snapshot', { type: 'boolean', default: false, describe: 'keep generations as snapshots of the destination blob (deduplicated against its current content)' })
      .option('resize', { type: 'boolean', default: true, describe: 'round the virtual size up to a whole MiB, as Azure requires (--no-resize keeps it)' })
      .option('md5', { type: 'boolean', default: true, describe: 'set the Content-MD5 of the whole VHD when complete (--no-md5 skips it)' })
      .option('verify', { type: 'boolean', default: false, describe: 'read the blob back when done and compare it with the source chunk by chunk' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace a destination blob that is not an unfinished upload of this disk' })
      .option('concurrency', { type: 'number', default: 8, describe: 'requests in flight' })
      .option('chunk-size', { type: 'string', describe: 'hash manifest chunk size without a base (default 64K; with a base, the base\'s)' })
      .option('from', { choices: ['auto', 'vhd', 'raw'] as const, default: 'auto' as const, describe: 'input format' })
      .option('journal-dir', { type: 'string', describe: 'where local upload journals live (default ~/.local/state/vhdkit/uploads)' })
      .example('$0 upload base.vhd images/base --connection-string "$CS"', 'first generation: every non-zero chunk')
      .example('$0 upload gen2.vhd images/gen2 --base base', 'a new generation: only what differs from the base blob')
      .example('$0 upload gen2.vhd "https://acct.blob.core.windows.net/images/gen2.vhd?sv=…&sig=…"', 'to a blob URL with a SAS token') as never,
  handler: async (args) => {
    try {
      const { upload } = await import('../../ops/upload.js');
      const op = operationContext('upload', args);
      const r = await upload(args.disk, args.destination, {
        connectionString: args['connection-string'],
        base: args.base,
        snapshot: args.snapshot,
        resize: args.resize,
        md5: args.md5,
        verify: args.verify,
        overwrite: args.overwrite,
        concurrency: args.concurrency,
        chunkSize: args['chunk-size'] !== undefined ? parseSize(args['chunk-size'], '--chunk-size') : undefined,
        workers: args.workers,
        from: args.from,
        journalDir: args['journal-dir'],
        ...op.common,
      });
      op.done();
      if (args.json) return printJson(r);
      printFindings(r.warnings, args);
      const pct = (n: number) => `${((100 * n) / r.bytesFullUpload).toFixed(2)}%`;
      printLines([
        r.alreadyComplete
          ? `${r.destination}: already holds this disk (digest ${r.digest}); nothing sent`
          : `${r.destination}: ${r.method === 'full' ? 'uploaded' : `uploaded against ${r.base} (${r.method === 'sectors' ? "the child's sectors" : 'changed chunks'})`}${r.resumedFrom > 0 ? `, resumed at ${formatSize(r.resumedFrom)}` : ''}${r.snapshot ? `, snapshot ${r.snapshot}` : ''}`,
        `sent ${formatSize(r.bytesUploaded)} (${pct(r.bytesUploaded)} of a full ${formatSize(r.bytesFullUpload)} upload), cleared ${formatSize(r.bytesCleared)}, ${r.requests} requests${r.retries ? `, ${r.retries} retried` : ''}, ${r.seconds.toFixed(2)} s`,
        `digest ${r.digest}${r.contentMd5 ? `, Content-MD5 ${r.contentMd5}` : ''}${r.verified ? ', verified' : ''}`,
      ]);
    } catch (e) {
      reportError(e, args);
    }
  },
};
