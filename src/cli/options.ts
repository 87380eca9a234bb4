/** Option groups shared by commands, composed into each command's builder. */
import type { Argv } from 'yargs';

export function withGlobal<T>(y: Argv<T>) {
  return y
    .option('json', { type: 'boolean', default: false, describe: 'print one JSON document on stdout, nothing else there' })
    .option('quiet', { type: 'boolean', alias: 'q', default: false, describe: 'no progress bar' })
    .option('debug', { type: 'boolean', default: false, describe: 'print stack traces of errors' });
}

export function withChain<T>(y: Argv<T>) {
  return y
    .option('strict', { type: 'boolean', default: false, describe: 'treat warnings as errors' })
    .option('parent-dir', {
      type: 'string',
      array: true,
      describe: 'only resolve parents inside these directories (repeatable)',
    });
}

export function withWorkers<T>(y: Argv<T>) {
  return y.option('workers', { type: 'number', describe: 'worker threads (default: the number of cores; 0 = none)' });
}
