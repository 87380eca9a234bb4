/** vhdkit command line: thin yargs commands over the library; the only place that prints. */
import yargs from 'yargs';
import { checkCommand } from './commands/check.js';
import { convertCommand } from './commands/convert.js';
import { createCommand } from './commands/create.js';
import { diffCommand } from './commands/diff.js';
import { generationsCommand } from './commands/generations.js';
import { hashCommand } from './commands/hash.js';
import { infoCommand } from './commands/info.js';
import { mergeCommand } from './commands/merge.js';
import { uploadCommand } from './commands/upload.js';
import { EXIT_USAGE } from './output.js';

/** Runs one command line (without the node and script arguments); sets process.exitCode. */
export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName('vhdkit')
    .usage('$0 <command> [options]\n\nFast, safe tools for Microsoft VHD disk images.')
    .command(infoCommand)
    .command(checkCommand)
    .command(createCommand)
    .command(convertCommand)
    .command(hashCommand)
    .command(diffCommand)
    .command(mergeCommand)
    .command(uploadCommand)
    .command(generationsCommand)
    .demandCommand(1, 'give a command: info, check, create, convert, hash, diff, merge, upload or generations')
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err, y) => {
      if (err) throw err;
      // One line, as every error (yargs spreads some over several).
      process.stderr.write(`vhdkit: ${String(msg).trim().replace(/\s*\n\s*/g, ' ')} (run "vhdkit --help" for usage) [USAGE]\n`);
      process.exit(EXIT_USAGE);
    })
    .parseAsync();
}
