/** The only place that prints: JSON documents, human lines, warnings, errors, progress bars. */
import { redactSecrets } from '../azure/retry.js';
import { codedError, exitCodeOf, type Finding, VhdError } from '../errors.js';
import type { Progress } from '../ops/common.js';

export interface GlobalArgs {
  json?: boolean;
  quiet?: boolean;
  debug?: boolean;
  strict?: boolean;
}

export function printJson(value: unknown): void {
  process.stdout.write(`${redactSecrets(JSON.stringify(value, null, 2))}\n`);
}

/**
 * Makes text from files (parent names, locator paths) safe for a terminal: control characters are
 * shown as escapes instead of being interpreted. JSON output is escaped by JSON itself.
 */
export function safe(text: string): string {
  // Secrets never reach the terminal, whatever a message carries (a SAS in a URL, a key in a string).
  return redactSecrets(text).replace(/[\x00-\x08\x0a-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

export function printLines(lines: string[]): void {
  process.stdout.write(`${lines.map(safe).join('\n')}\n`);
}

export function printFindings(findings: Finding[], args: GlobalArgs): void {
  if (args.json) return;
  for (const f of findings) process.stderr.write(`vhdkit: ${f.severity}: ${safe(f.message)} [${f.code}]\n`);
}

/** Exit codes of the contract: 0 success; 1 problems found or the operation failed; 2 usage or unreadable input. */
export const EXIT_OK = 0;
export const EXIT_PROBLEMS = 1;
export const EXIT_USAGE = 2;

/** The exit code of an error: the table beside the codes (errors.ts exitCodeOf). */
export function exitCodeFor(error: unknown): number {
  return exitCodeOf(codedError(error));
}

/** An error as JSON: a VhdError's code, message, file, structure and offset; anything else INTERNAL. */
export function errorJson(error: unknown): Record<string, unknown> {
  const e = codedError(error);
  return e instanceof VhdError ? e.toJSON() : { code: 'INTERNAL', message: String((e as Error)?.message ?? e) };
}

/** Prints an error as one line (a stack only with --debug) and sets the exit code. */
export function reportError(error: unknown, args: GlobalArgs): void {
  const e = codedError(error);
  const code = exitCodeFor(e);
  if (args.json) process.stdout.write(`${JSON.stringify({ ok: false, error: errorJson(e) }, null, 2)}\n`);
  const text = e instanceof VhdError ? `${e.message} [${e.code}]` : `internal error: ${(e as Error)?.message ?? String(e)}`;
  process.stderr.write(`vhdkit: ${safe(text)}\n`);
  if (args.debug && e instanceof Error && e.stack) process.stderr.write(`${redactSecrets(e.stack)}\n`);
  process.exitCode = code;
}

/**
 * A progress bar on stderr when it is a terminal and not --quiet; a no-op otherwise. `label` may be
 * a function, read at every redraw; `clear()` wipes the bar before a line is printed (the next update
 * draws it again).
 */
export function progressBar(
  label: string | (() => string),
  args: GlobalArgs,
  /** `rate: false` for progress that is not in bytes (no MiB/s shown). */
  how: { rate?: boolean } = {},
): { update: (p: Progress) => void; clear: () => void; done: () => void } {
  if (args.quiet || !process.stderr.isTTY) return { update: () => {}, clear: () => {}, done: () => {} };
  let last = 0;
  let shown = false;
  const started = Date.now();
  const draw = (p: Progress) => {
    shown = true;
    const width = 30;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
    const filled = Math.round(frac * width);
    const secs = (Date.now() - started) / 1000;
    const rate = secs > 0 ? p.done / secs / 2 ** 20 : 0;
    const speed = how.rate === false ? '' : `${rate.toFixed(0)} MiB/s `;
    process.stderr.write(`\r${typeof label === 'function' ? label() : label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${speed}`);
  };
  return {
    update: (p) => {
      const now = Date.now();
      if (now - last < 100 && p.done < p.total) return;
      last = now;
      draw(p);
    },
    clear: () => {
      if (shown) process.stderr.write('\r\x1b[K');
      shown = false;
      last = 0;
    },
    done: () => process.stderr.write('\r\x1b[K'),
  };
}

let controller: AbortController | undefined;

/**
 * An AbortSignal tied to SIGINT and SIGTERM: the first signal asks the running operation to stop
 * (it removes its temporary output and exits 1); a second one exits at once.
 */
export function interruptSignal(): AbortSignal {
  if (!controller) {
    const c = new AbortController();
    controller = c;
    const onSignal = (name: NodeJS.Signals) => {
      if (c.signal.aborted) process.exit(130);
      process.stderr.write(`\nvhdkit: ${name}: stopping (press again to exit at once)\n`);
      c.abort(new Error(`interrupted by ${name}`));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  return controller.signal;
}

/**
 * What every long operation gets from the command line: strictness, parent confinement, a progress
 * bar on a terminal and the interrupt signal. Call `done()` when the operation returns.
 */
export function operationContext(label: string, args: GlobalArgs & { 'parent-dir'?: string[]; 'size-from'?: 'footer' | 'file' }) {
  const bar = progressBar(label, args);
  return {
    common: { strict: args.strict, allowedDirs: args['parent-dir'], sizeFrom: args['size-from'], onProgress: bar.update, signal: interruptSignal() },
    done: bar.done,
  };
}
