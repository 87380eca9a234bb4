/** `check`: structural validation of a disk and its chain. */
import { ErrorCodes, type Finding, VhdError, withCodedErrors } from '../errors.js';
import { openDisk, type OpenDiskOptions } from './open.js';

export interface CheckResult {
  file: string;
  ok: boolean;
  errors: Finding[];
  warnings: Finding[];
  /** The disks checked, this one first. */
  chain: string[];
}

/** Errors that mean "this is not something check can look at": the caller's input is unusable. */
const UNUSABLE: ReadonlySet<string> = new Set([ErrorCodes.IO, ErrorCodes.NOT_VHD, ErrorCodes.FILE_TOO_SMALL]);

export function isUnusableInput(e: unknown): boolean {
  return e instanceof VhdError && UNUSABLE.has(e.code);
}

/**
 * Checks `file`. Every finding of the disk and its chain is listed; a structure too broken to open
 * becomes an error of the result. `strict` turns warnings into errors. Throws only for input that is
 * not a disk at all (missing file, not a VHD).
 */
export function check(file: string, options: OpenDiskOptions & { strict?: boolean } = {}): Promise<CheckResult> {
  return withCodedErrors(() => checkDisk(file, options));
}

async function checkDisk(file: string, options: OpenDiskOptions & { strict?: boolean }): Promise<CheckResult> {
  const { strict, ...open } = options;
  let findings: Finding[] = [];
  let chain: string[] = [file];
  try {
    const img = await openDisk(file, { ...open, strict: false, tolerateBrokenChain: true });
    findings = img.allFindings;
    chain = img.chain.map((d) => d.name);
    await img.close();
  } catch (e) {
    if (!(e instanceof VhdError) || (isUnusableInput(e) && (e.file === undefined || e.file === file))) throw e;
    findings = [{ code: e.code, severity: 'error', message: e.message, ...(e.file ? { file: e.file } : {}), ...(e.offset !== undefined ? { offset: e.offset } : {}) }];
  }
  const errors = findings.filter((f) => f.severity === 'error' || strict);
  const warnings = strict ? [] : findings.filter((f) => f.severity === 'warning');
  return { file, ok: errors.length === 0, errors, warnings, chain };
}
