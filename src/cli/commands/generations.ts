import type { CommandModule } from 'yargs';
import { withGlobal } from '../options.js';
import { type GlobalArgs, interruptSignal, printJson, printLines, reportError } from '../output.js';
import { formatSize } from '../sizes.js';

interface Args extends GlobalArgs {
  container: string;
  'connection-string'?: string;
  prefix?: string;
  'merge-threshold'?: number;
}

export const generationsCommand: CommandModule<object, Args> = {
  command: 'generations <container>',
  describe: 'the generations uploaded to a container: base, size, bytes differing from the base, date, merge hints',
  builder: (y) =>
    withGlobal(y)
      .positional('container', { type: 'string', demandOption: true, describe: 'a container name (with a connection string) or a container URL' })
      .option('connection-string', { type: 'string', describe: 'storage connection string (default: AZURE_STORAGE_CONNECTION_STRING)' })
      .option('prefix', { type: 'string', describe: 'only blobs whose names start with this' })
      .option('merge-threshold', { type: 'number', default: 0.5, describe: "hint a merge when a generation differs from its base in more than this share of the base's data" })
      .example('$0 generations images', 'list the generations in the container "images"') as never,
  handler: async (args) => {
    try {
      const { generations } = await import('../../ops/generations.js');
      const r = await generations(args.container, {
        connectionString: args['connection-string'],
        prefix: args.prefix,
        mergeThreshold: args['merge-threshold'],
        signal: interruptSignal(),
      });
      if (args.json) return printJson(r);
      const lines = [`${r.container}: ${r.generations.length} generation${r.generations.length === 1 ? '' : 's'}`];
      for (const g of r.generations) {
        const name = g.snapshot ? `${g.blob}@${g.snapshot}` : g.blob;
        const differing = g.differingBytes !== null ? `, differs from ${g.base} in ${formatSize(g.differingBytes)}` : '';
        lines.push(
          `  ${name}  ${g.state}  ${formatSize(g.virtualSize)}${g.dataBytes !== null ? `, ${formatSize(g.dataBytes)} data` : ''}${differing}${g.completed ? `, ${g.completed}` : ''}`,
        );
        if (g.hint) lines.push(`    hint: ${g.hint}`);
      }
      printLines(lines);
    } catch (e) {
      reportError(e, args);
    }
  },
};
