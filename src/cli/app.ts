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
  const cli = yargs(argv);
  try {
    await parse(cli);
  } catch (e) {
    // Thrown by the middleware below (synchronously, or through the parse's promise).
    if ((e as { usage?: boolean })?.usage) usageError((e as Error).message);
    throw e;
  }
}

function parse(cli: ReturnType<typeof yargs>): Promise<unknown> {
  return cli
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
    .middleware((args) => {
      // An option that takes one value given twice would reach a command as an array (and pass a
      // choices check as one): refused, naming it.
      const o = (cli as unknown as { getOptions(): { array: string[]; key: Record<string, unknown> } }).getOptions();
      const arrays = new Set(o.array);
      for (const key of Object.keys(o.key)) {
        const value = (args as Record<string, unknown>)[key];
        if (Array.isArray(value) && !arrays.has(key)) throw Object.assign(new Error(`--${key} was given more than once (${value.join(', ')}); give it once`), { usage: true });
      }
    }, true)
    .demandCommand(1, 'give a command: info, check, create, convert, hash, diff, merge, upload or generations')
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err, y) => {
      if (err && !(err as { usage?: boolean }).usage) throw err;
      usageError(err ? err.message : msg);
    })
    .parseAsync();
}

/** A usage error: one line (yargs spreads some over several), exit 2. */
function usageError(msg: string): never {
  process.stderr.write(`vhdkit: ${String(msg).trim().replace(/\s*\n\s*/g, ' ')} (run "vhdkit --help" for usage) [USAGE]\n`);
  process.exit(EXIT_USAGE);
}
