#!/usr/bin/env node
/** The vhdkit bin: runs the command line of this process (cli/app). */
import { hideBin } from 'yargs/helpers';
import { main } from './app.js';

main(hideBin(process.argv)).catch((e: unknown) => {
  process.stderr.write(`vhdkit: internal error: ${(e as Error)?.message ?? String(e)}\n`);
  process.exitCode = 1;
});
