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

/** For commands that read disks without writing them: which size of a fixed disk wins. */
export function withSizeFrom<T>(y: Argv<T>) {
  return y.option('size-from', {
    choices: ['footer', 'file'] as const,
    default: 'footer' as const,
    describe: "a fixed disk's virtual size: its footer's current size, or the bytes its file holds before the footer",
  });
}

export function withWorkers<T>(y: Argv<T>) {
  return y.option('workers', { type: 'number', describe: 'worker threads (default: the number of cores; 0 = none)' });
}
