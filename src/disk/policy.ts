/**
 * Lenient versus strict, as a table rather than scattered ifs. Each recoverable finding has a
 * severity: an error means the file breaks the specification in a way that can lose or misplace
 * data (`check` fails); a warning means it is unusual but readable (`check --strict` fails).
 * Reading commands go on past both, printing them, unless `--strict`.
 */
import { ErrorCodes, type ErrorCode, type Finding, findingFrom, type VhdError } from '../errors.js';

const WARNINGS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCodes.FOOTER_511,
  ErrorCodes.FOOTER_VERSION,
  ErrorCodes.FOOTER_SAVED_STATE,
  ErrorCodes.FOOTER_DATA_OFFSET,
  ErrorCodes.HEADER_VERSION,
  ErrorCodes.BAT_TOO_LARGE,
  ErrorCodes.LOCATOR_NAME_MISMATCH,
  ErrorCodes.LOCATOR_UNKNOWN_PLATFORM,
  ErrorCodes.LOCATOR_NONE,
  ErrorCodes.PARENT_SIZE_MISMATCH,
  ErrorCodes.FILE_SIZE_MISMATCH,
  ErrorCodes.GEOMETRY_SIZE,
  ErrorCodes.BLOCK_PAST_SIZE,
  ErrorCodes.RAW_WITH_FOOTER,
]);

export function severityOf(code: ErrorCode): 'error' | 'warning' {
  return WARNINGS.has(code) ? 'warning' : 'error';
}

/** How findings are handled: `strict` refuses on any, `onFinding` hears each as it is made. */
export interface FindingPolicy {
  strict?: boolean;
  onFinding?: (finding: Finding) => void;
}

/**
 * The one place a recoverable finding is handled: under `strict` it is thrown (the command refuses);
 * otherwise it becomes a finding of its severity, kept in `into` and passed to `onFinding`.
 */
export function noteFinding(e: VhdError, policy: FindingPolicy, into: Finding[]): Finding {
  if (policy.strict) throw e;
  const f = findingFrom(e, severityOf(e.code));
  into.push(f);
  policy.onFinding?.(f);
  return f;
}
