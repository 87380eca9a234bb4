import type { CommandModule } from 'yargs';
import { withChain, withGlobal, withSizeFrom } from '../options.js';
import { EXIT_PROBLEMS, type GlobalArgs, printJson, printLines, reportError } from '../output.js';

interface Args extends GlobalArgs {
  disk: string;
  'parent-dir'?: string[];
  'size-from'?: 'footer' | 'file';
}

export const checkCommand: CommandModule<object, Args> = {
  command: 'check <disk>',
  describe: 'validate the structure of a disk and its chain (exit 1 when problems are found)',
  builder: (y) => withSizeFrom(withChain(withGlobal(y))).positional('disk', { type: 'string', demandOption: true, describe: 'a VHD file' }) as never,
  handler: async (args) => {
    try {
      const { check } = await import('../../ops/check.js');
      const r = await check(args.disk, { strict: args.strict, allowedDirs: args['parent-dir'], sizeFrom: args['size-from'] });
      if (args.json) printJson({ ok: r.ok, errors: r.errors, warnings: r.warnings, chain: r.chain });
      else {
        const lines = [...r.errors.map((f) => `error: ${f.message} [${f.code}]`), ...r.warnings.map((f) => `warning: ${f.message} [${f.code}]`)];
        lines.push(
          r.ok
            ? `${args.disk}: OK${r.warnings.length ? ` (${r.warnings.length} warning${r.warnings.length > 1 ? 's' : ''})` : ''}`
            : `${args.disk}: ${r.errors.length} problem${r.errors.length > 1 ? 's' : ''} found`,
        );
        printLines(lines);
      }
      if (!r.ok) process.exitCode = EXIT_PROBLEMS;
    } catch (e) {
      reportError(e, args);
    }
  },
};
